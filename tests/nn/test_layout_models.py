"""Layers and models run on the graph's plan (native kernels on CPU) with the plain path's results.

No layer takes a plan: the same model code is called on a graph planned for the native backend and
on the same graph forced onto the plain XLA path (``with_backend(graph, "xla")``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jgrad
from jgrad.gradients import propagate
from jgrad.ops import backend_of, with_backend


def _graphs_and_features(seed=0, n=30, e=160, f=5):
    rng = np.random.default_rng(seed)
    senders, receivers = rng.integers(0, n, e), rng.integers(0, n, e)
    receivers[:40] = 2  # a hub
    graph = jgrad.Graph.from_edges(senders, receivers, n, edge_weight=rng.uniform(0.5, 1.5, e))
    planned, plain = with_backend(graph, "native"), with_backend(graph, "xla")
    assert (backend_of(planned), backend_of(plain)) == ("native", "xla")
    return planned, plain, jnp.asarray(rng.standard_normal((n, f)))


def _assert_trees_close(got, want, rtol, atol):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("norm,add_self_loops", [("sym", True), ("row", False), ("none", True)])
def test_propagate_on_a_planned_graph_matches_the_plain_path(x64, norm, add_self_loops):
    planned, plain, x = _graphs_and_features()

    def loss(graph, x, w):
        g = graph.with_edge_weight(w)
        return jnp.sum(jnp.tanh(propagate(g, x, norm=norm, add_self_loops=add_self_loops)))

    grad = jax.jit(jax.grad(loss, (1, 2)))
    _assert_trees_close(grad(planned, x, planned.edge_weight), grad(plain, x, plain.edge_weight), 1e-12, 1e-12)


@pytest.mark.parametrize("make", [
    lambda: jgrad.nn.GCN(5, 8, 3, rngs=nnx.Rngs(0)),
    lambda: jgrad.nn.GraphSAGE(5, 8, 3, aggregator="mean", dropout=0.0, rngs=nnx.Rngs(0)),
    lambda: jgrad.nn.GraphSAGE(5, 8, 3, aggregator="sum", dropout=0.0, rngs=nnx.Rngs(0)),
    lambda: jgrad.nn.GraphSAGE(5, 8, 3, aggregator="max", dropout=0.0, rngs=nnx.Rngs(0)),
    lambda: jgrad.nn.GIN(5, 8, 3, n_layers=2, dropout=0.0, rngs=nnx.Rngs(0)),
    lambda: jgrad.nn.GAT(5, 4, 3, heads=2, dropout=0.0, rngs=nnx.Rngs(0)),
    lambda: jgrad.nn.GAT(5, 4, 3, heads=2, dropout=0.0, edge_weight_mode="normalise", rngs=nnx.Rngs(0)),
], ids=["gcn", "sage-mean", "sage-sum", "sage-max", "gin", "gat", "gat-normalise"])
def test_models_on_a_planned_graph_give_the_same_logits_and_gradients(x64, make):
    planned, plain, x = _graphs_and_features(seed=3)
    model = make()
    graphdef, params = nnx.split(model)

    def loss(params, graph, w):
        return jnp.sum(jnp.tanh(nnx.merge(graphdef, params)(graph.with_edge_weight(w), x)))

    step = jax.jit(jax.value_and_grad(loss, (0, 2)))
    _assert_trees_close(step(params, planned, planned.edge_weight), step(params, plain, plain.edge_weight),
                        1e-9, 1e-12)


def test_adjacency_grad_of_a_model_on_a_planned_graph_equals_the_plain_one(x64):
    planned, plain, x = _graphs_and_features(seed=2)
    kernel = jnp.asarray(np.random.default_rng(2).standard_normal((5, 3)))

    def loss(g):
        return jnp.sum(jnp.tanh(propagate(g, propagate(g, x) @ kernel)))

    np.testing.assert_allclose(jgrad.adjacency_grad(loss, planned).dense(),
                               jgrad.adjacency_grad(loss, plain).dense(), rtol=1e-10, atol=1e-12)


def test_gat_layers_aggregate_on_the_plan_inside_jit():
    planned, _, x = _graphs_and_features(seed=4)
    layer = jgrad.nn.GATConv(5, 4, heads=2, rngs=nnx.Rngs(0))
    seen = []
    aggregate = jgrad.ops._kernels.plan_gspmm

    def spy(plan, *args):
        seen.append(plan.n_edges)
        return aggregate(plan, *args)

    import unittest.mock
    with unittest.mock.patch.object(jgrad.ops._kernels, "plan_gspmm", spy):
        nnx.jit(lambda layer, graph, x: layer(graph, x))(layer, planned, x)
    assert seen == [planned.n_edges]  # on the plan; the self loops are terms of the attention, not edges
