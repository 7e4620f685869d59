"""edge_grad(..., symmetric=True): one value per undirected pair, the gradient w.r.t. its shared weight."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad.gradients import PairGrad, adjacency_grad, edge_grad, propagate


def _loss(g, x):
    return jnp.sum(jnp.tanh(propagate(g, x)) ** 2)


def _undirected():
    return jgrad.Graph.from_edges([0, 1, 2, 3, 0], [1, 2, 3, 4, 3], 6).to_undirected()  # node 5 isolated


def test_pairs_are_distinct_sorted_and_sum_both_directions(x64):
    graph = _undirected()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 2)))
    pairs = edge_grad(_loss, graph, x, symmetric=True)
    assert isinstance(pairs, PairGrad)
    np.testing.assert_array_equal(pairs.rows, [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(pairs.cols, [1, 3, 2, 3, 4])
    per_edge = np.asarray(edge_grad(_loss, graph, x))
    senders, receivers = np.asarray(graph.senders), np.asarray(graph.receivers)
    for value, i, j in zip(pairs.values, pairs.rows, pairs.cols):
        both = ((senders == i) & (receivers == j)) | ((senders == j) & (receivers == i))
        assert both.sum() == 2
        np.testing.assert_allclose(value, per_edge[both].sum(), rtol=1e-14)
    # the gradient w.r.t. the shared weight: perturb both directions of pair (0, 3) together
    shared = lambda a: _loss(graph.with_edge_weight(jnp.where(
        (jnp.minimum(graph.senders, graph.receivers) == 0) & (jnp.maximum(graph.senders, graph.receivers) == 3),
        a, 1.0)), x)
    np.testing.assert_allclose(pairs.values[1], jax.grad(shared)(1.0), rtol=1e-12)
    # and the symmetric adjacency gradient at the same pairs
    full = adjacency_grad(_loss, graph, x, symmetric=True)
    np.testing.assert_allclose(full.at(pairs.rows, pairs.cols), pairs.values, rtol=1e-10)


def test_self_loops_duplicates_and_padding():
    graph = jgrad.Graph.from_edges([0, 1, 2, 2, 1, 3], [1, 0, 2, 1, 2, 1], 4)
    graph = dataclasses.replace(graph, edge_mask=jnp.array([1, 1, 1, 1, 1, 0], bool))
    x = jnp.array([[1.0], [2.0], [3.0], [4.0]])
    fn = lambda g, x: (jgrad.ops.spmm(g, x) ** 2).sum()
    per_edge = np.asarray(edge_grad(fn, graph, x))
    pairs = edge_grad(fn, graph, x, symmetric=True)
    np.testing.assert_array_equal(pairs.rows, [0, 1, 2])
    np.testing.assert_array_equal(pairs.cols, [1, 2, 2])  # (1, 3) is padding only: no pair
    np.testing.assert_allclose(pairs.values, [per_edge[0] + per_edge[1], per_edge[3] + per_edge[4], per_edge[2]])


def test_under_jit_the_pairs_are_padded_to_e(x64):
    graph = _undirected()  # float64: eager and compiled sums may round differently in float32
    x = jnp.ones((6, 2), jnp.float64)
    eager = edge_grad(_loss, graph, x, symmetric=True)
    jitted = jax.jit(lambda g, x: edge_grad(_loss, g, x, symmetric=True))(graph, x)
    p = eager.values.shape[0]
    assert jitted.values.shape == (graph.n_edges,)
    np.testing.assert_allclose(jitted.values[:p], eager.values, rtol=1e-12)
    np.testing.assert_array_equal(jitted.rows[p:], -1)
    np.testing.assert_array_equal(jitted.values[p:], 0.0)


def test_symmetric_needs_scalar_weights():
    graph = jgrad.Graph.from_edges([0], [1], 2).with_edge_weight(jnp.ones((1, 2)))
    with pytest.raises(ValueError, match="symmetric=True needs one scalar weight per edge"):
        edge_grad(lambda g: g.edge_weight.sum(), graph, symmetric=True)
