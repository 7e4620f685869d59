"""edge_grad: dL/dw for the existing edges, eagerly, under jit and under vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad.gradients import edge_grad, propagate


def _graph_and_features(weighted=True):
    rng = np.random.default_rng(0)
    senders, receivers = rng.integers(0, 6, 14), rng.integers(0, 6, 14)
    weight = (rng.random(14) + 0.5).astype(np.float32) if weighted else None
    graph = jgrad.Graph.from_edges(senders, receivers, 6, edge_weight=weight)
    return graph, jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)


def _model(graph, x):
    return jnp.sum(jnp.tanh(propagate(graph, jnp.tanh(propagate(graph, x)))) ** 2)


def test_edge_grad_equals_grad_wrt_the_weights():
    graph, x = _graph_and_features()
    expected = jax.grad(lambda w: _model(graph.with_edge_weight(w), x))(graph.edge_weight)
    np.testing.assert_allclose(edge_grad(_model, graph, x), expected, rtol=1e-5, atol=1e-7)  # float32 rounding


def test_unweighted_graph_is_differentiated_at_ones():
    graph, x = _graph_and_features(weighted=False)
    ones = jnp.ones((graph.n_edges,), jnp.float32)
    expected = jax.grad(lambda w: _model(graph.with_edge_weight(w), x))(ones)
    grad = edge_grad(_model, graph, x)
    assert grad.shape == (graph.n_edges,) and grad.dtype == jnp.float32
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)  # compiled vs eager float32 rounding


def _copy_u_model(graph, x):
    return jnp.sum(jnp.tanh(jgrad.ops.gspmm(graph, "copy_u", "sum", x)) ** 2)


def test_a_loss_that_ignores_the_weights_raises_instead_of_giving_zeros():
    """copy_u ignores an unweighted graph's unit weights; a closure over another graph ignores the
    argument: their gradients would be 0 on every edge. edge_grad and adjacency_grad raise."""
    graph, x = _graph_and_features(weighted=False)
    ignores = "fn does not use the edge weights of the graph it is given"
    with pytest.raises(ValueError, match=ignores + r".*gspmm\(op='copy_u'\)"):
        edge_grad(_copy_u_model, graph, x)
    with pytest.raises(ValueError, match=ignores):
        jax.jit(lambda g, x: edge_grad(_copy_u_model, g, x))(graph, x)
    with pytest.raises(ValueError, match=r"gspmm\(op='copy_u'\) aggregates the messages without the edge weights"):
        jgrad.adjacency_grad(_copy_u_model, graph, x)
    weighted, _ = _graph_and_features()
    with pytest.raises(ValueError, match=ignores):
        edge_grad(_copy_u_model, weighted, x)
    closure = lambda g, x: _model(weighted, x)  # reads another graph than its argument
    jitted = jax.jit(closure)  # the graph is an argument of the jitted call, unused inside it
    for loss in (closure, jitted):
        for call in (lambda: edge_grad(loss, weighted, x), lambda: jgrad.adjacency_grad(loss, weighted, x),
                     lambda: jgrad.adjacency_grad(loss, weighted, x, mode="dense")):
            with pytest.raises(ValueError, match=ignores + ".*closure"):
                call()
    np.testing.assert_allclose(edge_grad(jax.jit(_model), weighted, x), edge_grad(_model, weighted, x), rtol=1e-6)
    # The weighted form of the copy_u model: the same values, and a gradient
    spmm_model = lambda g, x: jnp.sum(jnp.tanh(jgrad.ops.spmm(g, x)) ** 2)
    np.testing.assert_allclose(spmm_model(graph, x), _copy_u_model(graph, x), rtol=1e-6)
    assert np.abs(np.asarray(edge_grad(spmm_model, graph, x))).min() > 0


def test_edge_grad_under_jit_and_vmap():
    graph, x = _graph_and_features()
    eager = edge_grad(_model, graph, x)
    jitted = jax.jit(lambda g, x: edge_grad(_model, g, x))(graph, x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-7)
    weights = jnp.stack([graph.edge_weight, 2 * graph.edge_weight, jnp.ones_like(graph.edge_weight)])
    batched = jax.vmap(lambda w: edge_grad(_model, graph.with_edge_weight(w), x))(weights)
    for row, w in zip(batched, weights):
        np.testing.assert_allclose(row, edge_grad(_model, graph.with_edge_weight(w), x), rtol=1e-5, atol=1e-7)


def test_padding_edges_get_zero_gradient():
    graph, x = _graph_and_features()
    padded = jgrad.pad(graph, n_nodes=8, n_edges=20)
    x_padded = jnp.concatenate([x, jnp.zeros((2, 3), jnp.float32)])
    grad = edge_grad(lambda g, x: jgrad.ops.spmm(g, x).sum(), padded, x_padded)
    assert np.all(np.asarray(grad)[~np.asarray(padded.edge_mask)] == 0)


def test_edge_grad_rejects_non_scalar_output():
    graph, x = _graph_and_features()
    with pytest.raises(ValueError, match="edge_grad: fn must return a scalar"):
        edge_grad(lambda g, x: jgrad.ops.spmm(g, x), graph, x)
    with pytest.raises(TypeError, match="graph must be a jgrad.Graph"):
        edge_grad(_model, "graph", x)


class _Counter:
    """A trace counter with no __dict__: the compile cache sees it by identity only."""

    __slots__ = ("n",)

    def __init__(self):
        self.n = 0


def test_edge_grad_compiles_once_per_model_and_runs_eagerly_when_fn_reads_values():
    graph, x = _graph_and_features()
    traces = _Counter()

    def model(g, x):
        traces.n += 1
        return _model(g, x)

    first = edge_grad(model, graph, x)
    for scale in (2.0, 3.0):  # new arrays of the same shapes: no retrace, new numbers
        np.testing.assert_allclose(edge_grad(model, graph.with_edge_weight(scale * graph.edge_weight), x),
                                   edge_grad(_model, graph.with_edge_weight(scale * graph.edge_weight), x),
                                   rtol=1e-6)
    assert traces.n == 1 and first.shape == (graph.n_edges,)

    def reads_a_value(g, x):  # Python control flow on an array value: cannot be traced
        return (2.0 if float(jnp.sum(x)) > -1e9 else 1.0) * _model(g, x)

    np.testing.assert_allclose(edge_grad(reads_a_value, graph, x), 2.0 * first, rtol=1e-5, atol=1e-7)


def test_symmetric_on_a_directed_graph_raises_naming_an_edge():
    import dataclasses

    graph = jgrad.Graph.from_edges([0, 1, 2, 3, 3], [1, 0, 3, 3, 1], 5)  # 2 -> 3 and 3 -> 1 have no reverse
    x = jnp.ones((5, 2), jnp.float32)
    with pytest.raises(ValueError, match=r"got edge 2 -> 3 without 3 -> 2 \(1 more such edges\).*"
                                         r"graph\.to_undirected\(\).*adjacency_grad\(\.\.\., symmetric=True\)"):
        edge_grad(_model, graph, x, symmetric=True)
    # a masked (padding) edge needs no reverse, nor does the self loop 3 -> 3; a real edge does
    masked = dataclasses.replace(graph, edge_mask=jnp.array([True, True, False, True, False]))
    pairs = edge_grad(_model, masked, x, symmetric=True)
    np.testing.assert_array_equal(pairs.rows, [0, 3])
    np.testing.assert_array_equal(pairs.cols, [1, 3])
    with pytest.raises(ValueError, match="got edge 3 -> 1 without 1 -> 3"):
        edge_grad(_model, dataclasses.replace(graph, edge_mask=jnp.array([True, True, False, True, True])), x,
                  symmetric=True)


def test_the_directed_check_sorts_its_keys_instead_of_calling_plain_np_unique(monkeypatch):
    """np.unique without return_inverse took 14 s for the 1.2e7 edge keys of a 1e6-node graph (numpy 2.4),
    np.sort 0.1 s: edge_grad(symmetric=True) took 17.4 s there against 0.1 s without. The check is the
    same with repeated keys (duplicate edges) in the sorted array."""
    plain_unique = np.unique

    def unique(values, *args, **kwargs):
        assert args or kwargs, "np.unique called without return_index / return_inverse"
        return plain_unique(values, *args, **kwargs)

    monkeypatch.setattr(np, "unique", unique)
    x = jnp.ones((5, 2), jnp.float32)
    directed = jgrad.Graph.from_edges([0, 1, 2, 3, 3, 0], [1, 0, 3, 3, 1, 1], 5)  # 0 -> 1 twice
    with pytest.raises(ValueError, match=r"got edge 2 -> 3 without 3 -> 2 \(1 more such edges\)"):
        edge_grad(_model, directed, x, symmetric=True)
    undirected = jgrad.Graph.from_edges([0, 1, 0, 2, 4], [1, 0, 1, 4, 2], 5)  # 0 -> 1 twice
    pairs = edge_grad(_model, undirected, x, symmetric=True)
    np.testing.assert_array_equal(pairs.rows, [0, 2])
    np.testing.assert_array_equal(pairs.cols, [1, 4])


def test_the_directed_check_looks_up_reverse_edges_in_sorted_order(monkeypatch):
    """For edges not sorted by receiver the reverse keys come in random order, and searching them as
    they come missed the cache at every step: the check took 16.6 s on a shuffled 1e6-node graph with
    1.2e7 edges, 1.7 s with the needles sorted first."""
    searchsorted = np.searchsorted

    def sorted_needles_only(keys, needles, *args, **kwargs):
        assert np.all(np.diff(needles) >= 0), "np.searchsorted called with unsorted needles"
        return searchsorted(keys, needles, *args, **kwargs)

    monkeypatch.setattr(np, "searchsorted", sorted_needles_only)
    x = jnp.ones((6, 2), jnp.float32)
    shuffled = jgrad.Graph.from_edges([3, 0, 5, 1, 4, 2, 0, 5], [0, 1, 2, 0, 5, 5, 3, 4], 6)  # undirected
    pairs = edge_grad(_model, shuffled, x, symmetric=True)
    np.testing.assert_array_equal(pairs.rows, [0, 0, 2, 4])
    np.testing.assert_array_equal(pairs.cols, [1, 3, 5, 5])
    directed = jgrad.Graph.from_edges([3, 0, 5, 1, 4, 2, 0], [0, 1, 2, 0, 5, 5, 3], 6)  # 5 -> 4 missing
    with pytest.raises(ValueError, match="got edge 4 -> 5 without 5 -> 4"):
        edge_grad(_model, directed, x, symmetric=True)


def test_symmetric_on_undirected_and_padded_graphs_equals_adjacency_grad(x64):
    graph, _ = _graph_and_features()
    undirected = graph.to_undirected(reduce="mean")
    undirected = undirected.with_edge_weight(jnp.asarray(undirected.edge_weight, jnp.float64))
    x = jnp.asarray(np.random.default_rng(3).standard_normal((6, 3)))
    pairs = edge_grad(_model, undirected, x, symmetric=True)
    full = jgrad.adjacency_grad(_model, undirected, x, symmetric=True)
    np.testing.assert_allclose(full.at(pairs.rows, pairs.cols), pairs.values, rtol=1e-10, atol=1e-14)
    # padding edges are self loops on a padding node: no reverse needed, no pair, same values
    padded = jgrad.pad(undirected, n_nodes=8, n_edges=undirected.n_edges + 5)
    x_padded = jnp.concatenate([x, jnp.ones((2, 3))])
    padded_pairs = edge_grad(_model, padded, x_padded, symmetric=True)
    np.testing.assert_array_equal(padded_pairs.rows, pairs.rows)
    np.testing.assert_array_equal(padded_pairs.cols, pairs.cols)
    np.testing.assert_allclose(padded_pairs.values, pairs.values, rtol=1e-10, atol=1e-14)


def test_symmetric_under_jit_cannot_check_and_gives_the_stored_direction(x64):
    graph = jgrad.Graph.from_edges([0, 1, 2], [1, 0, 3], 4)  # 2 -> 3 has no reverse
    x = jnp.asarray(np.random.default_rng(4).standard_normal((4, 3)))
    pairs = jax.jit(lambda g, x: edge_grad(_model, g, x, symmetric=True))(graph, x)
    per_edge = edge_grad(_model, graph, x)
    np.testing.assert_array_equal(pairs.rows, [0, 2, -1])
    np.testing.assert_array_equal(pairs.cols, [1, 3, -1])
    np.testing.assert_allclose(pairs.values[:2], [per_edge[0] + per_edge[1], per_edge[2]], rtol=1e-12)


def test_an_nnx_jit_wrapped_loss_gives_the_plain_gradient():
    """edge_grad traces fn with the module's arrays as inputs of the same trace, so an nnx.jit-wrapped
    loss (which updates its module's variables) runs, and equals the unwrapped loss's gradient."""
    from flax import nnx

    data = jgrad.data.karate_club()
    model = jgrad.nn.GCN(data.features.shape[1], 4, 2, rngs=nnx.Rngs(0))
    plain = lambda g, m, x: jnp.sum(jnp.tanh(m(g, x)))
    wrapped = nnx.jit(plain)
    np.testing.assert_allclose(edge_grad(wrapped, data.graph, model, data.features),
                               edge_grad(plain, data.graph, model, data.features), rtol=1e-5, atol=1e-7)
    assert model(data.graph, data.features).shape == (data.graph.n_nodes, 2)  # the module still works
