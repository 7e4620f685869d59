"""propagate: GCN, row and sum propagation as node scalings, equal to the per-edge normalisations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad.gradients import propagate


def _graph():
    rng = np.random.default_rng(0)
    senders, receivers = rng.integers(0, 7, 16), rng.integers(0, 6, 16)  # node 6 receives nothing
    return jgrad.Graph.from_edges(senders, receivers, 7, edge_weight=(rng.random(16) + 0.1).astype(np.float32))


def test_sym_equals_spmm_with_gcn_norm():
    graph = _graph()
    x = jax.random.normal(jax.random.key(0), (7, 3, 2))
    np.testing.assert_allclose(propagate(graph, x), jgrad.ops.spmm(jgrad.ops.gcn_norm(graph), x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(propagate(graph, x, fill=2.5),
                               jgrad.ops.spmm(jgrad.ops.gcn_norm(graph, fill=2.5), x), rtol=1e-5, atol=1e-6)


def test_row_equals_spmm_with_row_norm_and_zero_degree_gives_zero():
    graph = _graph()
    x = jax.random.normal(jax.random.key(1), (7, 4))
    out = propagate(graph, x, norm="row", add_self_loops=False)
    np.testing.assert_allclose(out, jgrad.ops.spmm(jgrad.ops.row_norm(graph), x), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(out[6]) == 0)
    grad = jax.grad(lambda w: propagate(graph.with_edge_weight(w), x, norm="row", add_self_loops=False).sum())(
        graph.edge_weight)
    assert np.all(np.isfinite(grad))


def test_none_is_sum_plus_fill_times_self():
    graph = _graph()
    x = jax.random.normal(jax.random.key(2), (7, 4))
    dense = graph.to_dense()
    np.testing.assert_allclose(propagate(graph, x, norm="none", fill=1.5), dense @ x + 1.5 * x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(propagate(graph, x, norm="none", add_self_loops=False), dense @ x, rtol=1e-5, atol=1e-6)


def test_propagate_under_jit_and_vmap_over_edge_weights():
    graph = _graph()
    x = jax.random.normal(jax.random.key(3), (7, 4))
    weights = jnp.stack([graph.edge_weight, 2 * graph.edge_weight])
    batched = jax.jit(jax.vmap(lambda w: propagate(graph.with_edge_weight(w), x)))(weights)
    for out, w in zip(batched, weights):
        np.testing.assert_allclose(out, propagate(graph.with_edge_weight(w), x), rtol=1e-5, atol=1e-6)


def test_propagate_rejects_bad_arguments():
    graph = _graph()
    with pytest.raises(ValueError, match="unknown norm 'mean'"):
        propagate(graph, jnp.ones((7, 2)), norm="mean")
    with pytest.raises(ValueError, match=r"x must have one row per node; got shape \(6, 2\)"):
        propagate(graph, jnp.ones((6, 2)))
