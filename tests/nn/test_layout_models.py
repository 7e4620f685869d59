"""Layers and models run their aggregations on a layout (native kernels on CPU) with the same results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jgrad
from jgrad.gradients import propagate
from jgrad.ops import plan_layout


def _graph_and_features(seed=0, n=30, e=160, f=5):
    rng = np.random.default_rng(seed)
    senders, receivers = rng.integers(0, n, e), rng.integers(0, n, e)
    receivers[:40] = 2  # a hub
    graph = jgrad.Graph.from_edges(senders, receivers, n, edge_weight=rng.uniform(0.5, 1.5, e))
    return graph, jnp.asarray(rng.standard_normal((n, f)))


@pytest.mark.parametrize("norm,add_self_loops", [("sym", True), ("sym", False), ("row", False), ("none", True)])
def test_propagate_on_a_layout_matches_the_default_path(x64, norm, add_self_loops):
    graph, x = _graph_and_features()
    layout = plan_layout(graph)

    def loss(x, w, layout):
        g = graph.with_edge_weight(w)
        return jnp.sum(jnp.tanh(propagate(g, x, norm=norm, add_self_loops=add_self_loops, layout=layout)))

    for got, want in zip(jax.grad(loss, (0, 1))(x, graph.edge_weight, layout),
                         jax.grad(loss, (0, 1))(x, graph.edge_weight, None)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_gcn_model_with_a_layout_gives_the_same_logits_and_parameter_gradients(x64):
    graph, x = _graph_and_features(seed=1)
    layout = plan_layout(graph)
    model = jgrad.nn.GCN(5, 8, 3, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    def loss(params, layout):
        return jnp.sum(nnx.merge(graphdef, params)(graph, x, layout=layout) ** 2)

    np.testing.assert_allclose(model(graph, x, layout=layout), model(graph, x), rtol=1e-6, atol=1e-8)
    got, want = jax.grad(loss)(params, layout), jax.grad(loss)(params, None)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_adjacency_grad_of_a_model_on_a_layout_equals_the_default_one(x64):
    graph, x = _graph_and_features(seed=2)
    layout = plan_layout(graph)
    kernel = jnp.asarray(np.random.default_rng(2).standard_normal((5, 3)))

    def loss(g, layout):
        return jnp.sum(jnp.tanh(propagate(g, propagate(g, x, layout=layout) @ kernel, layout=layout)))

    got = jgrad.adjacency_grad(lambda g: loss(g, layout), graph).dense()
    want = jgrad.adjacency_grad(lambda g: loss(g, None), graph).dense()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda: jgrad.nn.GraphSAGE(5, 8, 3, aggregator="mean", dropout=0.0, rngs=nnx.Rngs(0)),
    lambda: jgrad.nn.GraphSAGE(5, 8, 3, aggregator="sum", dropout=0.0, rngs=nnx.Rngs(0)),
    lambda: jgrad.nn.GIN(5, 8, 3, n_layers=2, dropout=0.0, rngs=nnx.Rngs(0)),
], ids=["sage-mean", "sage-sum", "gin"])
def test_sage_and_gin_with_a_layout_give_the_same_logits_and_gradients(x64, make):
    graph, x = _graph_and_features(seed=3)
    layout = plan_layout(graph)
    model = make()
    graphdef, params = nnx.split(model)

    def loss(params, w, layout):
        return jnp.sum(jnp.tanh(nnx.merge(graphdef, params)(graph.with_edge_weight(w), x, layout=layout)))

    np.testing.assert_allclose(model(graph, x, layout=layout), model(graph, x), rtol=1e-10, atol=1e-12)
    got = jax.grad(loss, (0, 1))(params, graph.edge_weight, layout)
    want = jax.grad(loss, (0, 1))(params, graph.edge_weight, None)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_graph_conv_on_a_layout_matches_and_max_aggregation_refuses_one(x64):
    graph, x = _graph_and_features(seed=4)
    layout = plan_layout(graph)
    layer = jgrad.nn.GraphConv(5, 4, rngs=nnx.Rngs(1))
    np.testing.assert_allclose(layer(graph, x, layout=layout), layer(graph, x), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="sage_conv: a layout runs sum and mean aggregations only"):
        jgrad.nn.SAGEConv(5, 4, aggregator="max", rngs=nnx.Rngs(1))(graph, x, layout=layout)
