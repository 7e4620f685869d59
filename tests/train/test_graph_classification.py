"""Bucketed mini-batch graph classification compiles once per bucket, not once per batch."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

import jgrad
from jgrad.train import fit_graph_classification, make_graph_batches, make_optimizer

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
