"""adjacency_grad: compiled once per model (trace counter), usable inside jax.jit, dense mode exact or refusing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jgrad
from jgrad.gradients import adjacency_grad, edge_grad, propagate


class _Counter:
    """A Python-side trace counter (no __dict__, so adjacency_grad's cache key sees it by identity only)."""

    __slots__ = ("n",)

    def __init__(self):
        self.n = 0


def _graph():
    return jgrad.Graph.from_edges([0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 2], 6).to_undirected()


def test_repeated_calls_reuse_the_compiled_function():
    graph = _graph()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 3)), jnp.float32)
    weight = {"w": jnp.ones((3, 2))}
    traces = _Counter()

    def loss(g, x, params):
        traces.n += 1
        return jnp.sum(jnp.tanh(propagate(g, x) @ params["w"]) ** 2)

    first = adjacency_grad(loss, graph, x, weight)
    after_first = traces.n
    assert after_first >= 1
    for _ in range(2):
        again = adjacency_grad(loss, graph, x, weight)
    assert traces.n == after_first  # no retrace
    np.testing.assert_array_equal(again.dense(), first.dense())
    # new argument values of the same shapes: still no retrace, new numbers
    changed = adjacency_grad(loss, graph, 2 * x, weight)
    assert traces.n == after_first
    assert not np.allclose(changed.dense(), first.dense())


def test_a_changed_closed_over_model_is_traced_again():
    graph = _graph()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((6, 3)), jnp.float32)
    model = jgrad.nn.GCN(3, 4, 2, dropout=0.0, rngs=nnx.Rngs(0))

    def loss(g, x):
        return jnp.sum(model(g, x) ** 2)

    before = adjacency_grad(loss, graph, x)
    kernel = model.layers[0].kernel
    kernel[...] = 2 * kernel[...]  # an in-place parameter update, as an optimizer step does
    after = adjacency_grad(loss, graph, x)
    expected = edge_grad(loss, graph, x)
    np.testing.assert_allclose(after.at(graph.receivers, graph.senders), expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(after.dense(), before.dense())


def test_adjacency_grad_inside_the_callers_jit(x64):
    graph = _graph()
    x = jnp.asarray(np.random.default_rng(2).standard_normal((6, 3)))

    def loss(g, x):
        return jnp.sum(jnp.tanh(propagate(g, propagate(g, x))) ** 2)

    @jax.jit
    def scores(x, weight):
        grad = adjacency_grad(loss, graph.with_edge_weight(weight), x, symmetric=True)
        return grad.dense(), grad.topk(2, among="non_edges").values, grad.edge_error

    weight = jnp.linspace(0.5, 1.5, graph.n_edges)
    dense, top, error = scores(x, weight)
    eager = adjacency_grad(loss, graph.with_edge_weight(weight), x, symmetric=True)
    np.testing.assert_allclose(dense, eager.dense(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(top, eager.topk(2, among="non_edges").values, rtol=1e-12)
    assert float(error) < 1e-12


def test_dense_mode_refuses_an_after_softmax_gat():
    graph = _graph().with_edge_weight(jnp.full((12,), 0.7))
    model = jgrad.nn.GAT(3, 4, 2, heads=2, dropout=0.0, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(3).standard_normal((6, 3)), jnp.float32)
    with pytest.raises(ValueError, match="mode='dense' disagrees with the model on its own graph.*after_softmax"):
        adjacency_grad(lambda g, x: jnp.sum(model(g, x) ** 2), graph, x, mode="dense")
    grad = adjacency_grad(lambda g, x: jnp.sum(model(g, x) ** 2), graph, x, mode="dense", check=False)
    assert float(grad.edge_error) > 0.1  # the measured disagreement is reported, not 0


def test_dense_mode_agrees_with_factored_for_the_normalised_gat(x64):
    graph = _graph().with_edge_weight(jnp.linspace(0.5, 1.5, 12))
    model = jgrad.nn.GAT(3, 4, 2, heads=2, dropout=0.0, rngs=nnx.Rngs(0), param_dtype=jnp.float64,
                         edge_weight_mode="normalise")
    x = jnp.asarray(np.random.default_rng(4).standard_normal((6, 3)))

    def loss(g, x):
        return jnp.sum(model(g, x) ** 2)

    dense = adjacency_grad(loss, graph, x, mode="dense")
    factored = adjacency_grad(loss, graph, x)
    assert float(dense.edge_error) < 1e-12
    np.testing.assert_allclose(dense.dense(), factored.dense(), rtol=1e-10, atol=1e-12)


def test_dense_mode_refuses_a_model_using_the_edge_count():
    graph = _graph()
    x = jnp.ones((6, 1))
    with pytest.raises(ValueError, match="looks at the edge structure"):
        adjacency_grad(lambda g, x: jgrad.ops.spmm(g, x).sum() / g.n_edges, graph, x, mode="dense")
