"""Bucketed mini-batch graph classification compiles once per bucket, not once per batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jgrad
from jgrad.train import (fit_graph_classification, graph_classification_loss, init_params, make_graph_batches,
                         make_optimizer)

TRACES = []


class CountingGIN(nnx.Module):
    """GIN with a sum readout that records each trace of its forward pass."""

    def __init__(self, *, rngs):
        self.gin = jgrad.nn.GIN(2, 8, 2, n_layers=2, dropout=0.0, readout="sum", rngs=rngs)

    def __call__(self, graph, x, *, key=None):
        TRACES.append(graph.n_nodes)
        return self.gin(graph, x, key=key)


def ring(n):
    nodes = np.arange(n)
    return jgrad.Graph.from_edges(np.concatenate([nodes, (nodes + 1) % n]),
                                  np.concatenate([(nodes + 1) % n, nodes]), n_nodes=n)


def path(n):
    nodes = np.arange(n - 1)
    return jgrad.Graph.from_edges(np.concatenate([nodes, nodes + 1]), np.concatenate([nodes + 1, nodes]), n_nodes=n)


def test_bucketed_training_compiles_a_bounded_number_of_times():
    rng = np.random.default_rng(0)
    sizes = rng.integers(4, 16, size=40)  # 10 batches in 3 buckets of (nodes, edges)
    graphs = [ring(int(n)) if i % 2 else path(int(n)) for i, n in enumerate(sizes)]
    features = [np.ones((g.n_nodes, 2), np.float32) for g in graphs]
    labels = [i % 2 for i in range(len(graphs))]
    batches = make_graph_batches(graphs, features, labels, batch_size=4)
    shapes = {(b.graph.n_nodes, b.graph.n_edges, b.graph.n_graphs) for b in batches}
    assert len(batches) == 10 and len(shapes) < len(batches)
    TRACES.clear()
    _, state, history = fit_graph_classification(lambda rngs: CountingGIN(rngs=rngs), batches,
                                                 make_optimizer(0.01), epochs=3)
    n_init_traces = 1  # the abstract model built by init_params does not call the model
    assert len(TRACES) - n_init_traces + 1 == len(shapes)
    assert int(state.step) == 3 * len(batches)
    assert len(history) == 3 and all(np.isfinite(h["loss"]) for h in history)


def test_graph_batches_mask_the_padding_graph():
    graphs = [ring(5), path(3)]
    batches = make_graph_batches(graphs, [jnp.ones((5, 2)), jnp.ones((3, 2))], [1, 0], batch_size=2)
    (batch,) = batches
    assert batch.label_mask.tolist() == [True, True, False]
    assert batch.labels.tolist() == [0, 1, 0]  # sorted by size: the path first
    assert batch.features.shape == (batch.graph.n_nodes, 2)


def test_every_batch_has_the_same_graph_count_and_the_step_traces_once():
    # 10 graphs in batches of 4: 4, 4 and a last batch of 2. One node and edge bucket (minimum=64), so
    # only the graph count could tell the batches apart.
    graphs = [ring(3 + i % 3) if i % 2 else path(3 + i % 3) for i in range(10)]
    features = [np.ones((g.n_nodes, 2), np.float32) for g in graphs]
    labels = [i % 2 for i in range(len(graphs))]
    batches = make_graph_batches(graphs, features, labels, batch_size=4, minimum=64)
    assert [int(b.label_mask.sum()) for b in batches] == [4, 4, 2]
    assert {(b.graph.n_nodes, b.graph.n_edges, b.graph.n_graphs) for b in batches} == {(64, 64, 5)}
    for b in batches:
        assert b.labels.shape == b.label_mask.shape == b.graph.graph_mask.shape == (5,)
        np.testing.assert_array_equal(b.label_mask, b.graph.graph_mask)
    TRACES.clear()
    _, state, history = fit_graph_classification(lambda rngs: CountingGIN(rngs=rngs), batches,
                                                 make_optimizer(0.01), epochs=2)
    assert len(TRACES) == 1  # one trace of the train step serves all three batches
    assert int(state.step) == 2 * len(batches)
    assert all(np.isfinite(h["loss"]) for h in history)


@pytest.mark.parametrize("readout", ["sum", "mean", "max"])
def test_empty_padding_graphs_change_neither_loss_nor_gradient(readout):
    graphs = [ring(5), path(3), ring(4)]
    features = [np.arange(2 * g.n_nodes, dtype=np.float32).reshape(-1, 2) / 10 for g in graphs]
    labels = [1, 0, 1]
    (wide,) = make_graph_batches(graphs, features, labels, batch_size=6)  # 3 graphs, then 4 padding graphs
    (tight,) = make_graph_batches(graphs, features, labels, batch_size=3)  # 3 graphs, then 1 padding graph
    assert wide.graph.n_graphs == 7 and tight.graph.n_graphs == 4
    assert wide.label_mask.tolist() == [True] * 3 + [False] * 4
    assert wide.labels.tolist()[3:] == [0] * 4
    np.testing.assert_array_equal(wide.graph.n_node_per_graph[4:], 0)  # empty padding graphs
    model_def, params = init_params(
        lambda rngs: jgrad.nn.GIN(2, 8, 2, n_layers=2, dropout=0.0, readout=readout, rngs=rngs),
        jax.random.key(0)[None])
    params = jax.tree.map(lambda leaf: leaf[0], params)

    def loss(p, b):
        return graph_classification_loss(model_def, p, b, None)

    (wide_loss, wide_metrics), wide_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, wide)
    (tight_loss, tight_metrics), tight_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, tight)
    assert np.isfinite(float(wide_loss))
    np.testing.assert_allclose(wide_loss, tight_loss, rtol=1e-6)
    np.testing.assert_allclose(wide_metrics["acc"], tight_metrics["acc"])
    for a, b in zip(jax.tree.leaves(wide_grad), jax.tree.leaves(tight_grad)):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
