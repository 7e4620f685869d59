"""Property tests over random graphs: invariants the core ops must keep on every input.

Graphs are small, with duplicate edges, self loops, isolated nodes and zero-edge graphs all allowed.
Values are checked in float64 so that the properties hold to rounding, not to float32 noise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import jgrad
from jgrad import Graph, ops

jax.config.update("jax_numpy_rank_promotion", "raise")

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)


@st.composite
def graphs(draw, max_nodes: int = 8, max_edges: int = 20) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """``(senders, receivers, n_nodes, weights)`` of a random multigraph with float64 weights."""
    # A few sizes only: every new shape compiles, and the properties do not depend on the size.
    n_nodes = draw(st.sampled_from([n for n in (1, 3, 8) if n <= max_nodes]))
    n_edges = draw(st.sampled_from([e for e in (0, 4, 20) if e <= max_edges]))
    index = st.lists(st.integers(0, n_nodes - 1), min_size=n_edges, max_size=n_edges)
    senders = np.asarray(draw(index), np.int32)
    receivers = np.asarray(draw(index), np.int32)
    weights = np.asarray(
        draw(st.lists(st.floats(-4, 4, allow_nan=False), min_size=n_edges, max_size=n_edges)), np.float64
    )
    return senders, receivers, n_nodes, weights


def _features(seed: int, n_nodes: int, width: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n_nodes, width))


def _dense(senders, receivers, n_nodes, weights) -> np.ndarray:
    """``A[v, u] = sum of w over edges u -> v``, in float64."""
    dense = np.zeros((n_nodes, n_nodes))
    np.add.at(dense, (receivers, senders), weights)
    return dense


@SETTINGS
@given(graphs(), st.integers(0, 2**16), st.floats(-3, 3), st.floats(-3, 3))
def test_spmm_is_linear_in_features(spec, seed, a, b):
    senders, receivers, n, w = spec
    with jax.enable_x64(True):
        g = Graph.from_edges(senders, receivers, n, edge_weight=w)
        x, y = _features(seed, n), _features(seed + 1, n)
        lhs = ops.spmm(g, a * x + b * y)
        rhs = a * ops.spmm(g, x) + b * ops.spmm(g, y)
        np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(graphs(), st.integers(0, 2**16), st.floats(-3, 3), st.floats(-3, 3))
def test_spmm_is_linear_in_edge_weights(spec, seed, a, b):
    senders, receivers, n, w = spec
    with jax.enable_x64(True):
        g = Graph.from_edges(senders, receivers, n)
        x = _features(seed, n)
        v = np.random.default_rng(seed).normal(size=w.shape)
        lhs = ops.spmm(g, x, a * w + b * v)
        rhs = a * ops.spmm(g, x, w) + b * ops.spmm(g, x, v)
        np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(graphs(), st.integers(0, 2**16))
def test_spmm_on_the_reversed_graph_is_the_transpose(spec, seed):
    senders, receivers, n, w = spec
    with jax.enable_x64(True):
        g = Graph.from_edges(senders, receivers, n, edge_weight=w)
        x = _features(seed, n)
        np.testing.assert_allclose(ops.spmm(g, x), _dense(senders, receivers, n, w) @ x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            ops.spmm(g.reverse(), x), _dense(senders, receivers, n, w).T @ x, rtol=1e-12, atol=1e-12
        )


@SETTINGS
@given(graphs(), st.integers(0, 2**16), st.sampled_from([1.0, 100.0, 1e4]))
def test_edge_softmax_sums_to_one_at_every_receiver_with_incoming_edges(spec, seed, scale):
    senders, receivers, n, _ = spec
    g = Graph.from_edges(senders, receivers, n)
    logits = jnp.asarray(np.random.default_rng(seed).normal(size=(g.n_edges, 2)) * scale, jnp.float32)
    attention = np.asarray(ops.edge_softmax(g, logits))
    assert np.isfinite(attention).all() and (attention >= 0).all()
    totals = np.zeros((n, 2))
    np.add.at(totals, receivers, attention)
    has_incoming = np.bincount(receivers, minlength=n) > 0
    np.testing.assert_allclose(totals[has_incoming], 1.0, rtol=1e-5)
    assert not totals[~has_incoming].any()


@SETTINGS
@given(st.lists(graphs(max_nodes=3, max_edges=4), min_size=1, max_size=3), st.integers(0, 2**16),
       st.sampled_from(["sum", "mean", "max", "min"]))
def test_gspmm_on_a_batch_equals_the_concatenated_per_graph_results(specs, seed, reduce):
    with jax.enable_x64(True):
        parts = [Graph.from_edges(s, r, n, edge_weight=w) for s, r, n, w in specs]
        xs = [_features(seed + i, g.n_nodes) for i, g in enumerate(parts)]
        batched = jgrad.batch(parts)
        x = np.concatenate(xs)
        whole = ops.gspmm(batched, "u_mul_e", reduce, x, batched.edge_weight)
        separate = [ops.gspmm(g, "u_mul_e", reduce, xi, g.edge_weight) for g, xi in zip(parts, xs)]
        np.testing.assert_allclose(whole, np.concatenate(separate), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(graphs(), st.integers(0, 2**16))
def test_segment_max_bounds_every_entry_of_its_segment_and_attains_one(spec, seed):
    _, ids, n, _ = spec
    data = np.random.default_rng(seed).normal(size=(ids.size, 2)).astype(np.float32)
    top = np.asarray(ops.segment_max(data, ids, n))
    low = np.asarray(ops.segment_min(data, ids, n))
    assert (data <= top[ids]).all() and (data >= low[ids]).all()
    for segment in range(n):
        members = data[ids == segment]
        if members.size:
            np.testing.assert_array_equal(top[segment], members.max(axis=0))
            np.testing.assert_array_equal(low[segment], members.min(axis=0))
        else:
            assert not top[segment].any() and not low[segment].any()


@SETTINGS
@given(graphs(), st.integers(0, 2**16))
def test_gsddmm_dot_samples_the_dense_product_at_the_edges(spec, seed):
    senders, receivers, n, _ = spec
    with jax.enable_x64(True):
        g = Graph.from_edges(senders, receivers, n)
        x, y = _features(seed, n), _features(seed + 1, n)
        out = ops.gsddmm(g, "dot", x, y)
        np.testing.assert_allclose(out[:, 0], (y @ x.T)[receivers, senders], rtol=1e-12, atol=1e-12)
