"""Flip bookkeeping, scoring from the factored gradient, PGD's projection and the evaluation setting."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import attacks
from jgrad.data import NodeDataset, csbm, karate_club


def _path_graph(n):
    return attacks.graph_from_pairs(np.stack([np.arange(n - 1), np.arange(1, n)], axis=1), n)


def test_flip_set_refuses_self_loops_repeats_and_singletons():
    flips = attacks.FlipSet(_path_graph(4), capacity=2)  # 0-1-2-3
    assert not flips.can_flip(1, 1)
    assert not flips.can_flip(0, 1)  # node 0 would be left without neighbours
    assert flips.can_flip(1, 2)
    flips.flip(2, 1)
    assert flips.flips == [(1, 2)] and not flips.is_edge(1, 2)
    assert not flips.can_flip(1, 2)  # flipped already
    with pytest.raises(ValueError, match=r"FlipSet.flip: pair \(1, 2\) cannot be flipped"):
        flips.flip(1, 2)
    flips.flip(0, 3)
    assert flips.is_edge(3, 0)
    flips.flip(0, 2)
    assert not flips.can_flip(1, 3)  # capacity of two additions reached


def test_flip_set_graph_keeps_its_shape_and_weights_removed_edges_zero():
    flips = attacks.FlipSet(_path_graph(5), capacity=3)
    before = flips.graph()
    flips.flip(1, 2)
    flips.flip(0, 4)
    after = flips.graph()
    assert before.n_edges == after.n_edges == 2 * (4 + 3)
    expected = np.zeros((5, 5))
    for i, j in [(0, 1), (2, 3), (3, 4), (0, 4)]:
        expected[i, j] = expected[j, i] = 1
    np.testing.assert_array_equal(after.to_dense(), expected)
    np.testing.assert_array_equal(attacks.perturbed_graph(_path_graph(5), np.array(flips.flips)).to_dense(), expected)
    padded = attacks.perturbed_graph(_path_graph(5), np.array(flips.flips), n_edges=20)
    assert padded.n_edges == 20
    np.testing.assert_array_equal(padded.to_dense(), expected)


def test_flip_scores_pick_the_best_dense_score_among_allowed_pairs(keys):
    data = karate_club()
    x = jax.random.normal(next(keys), (data.n_nodes, 3))
    weights = jax.random.normal(next(keys), (3, 2))
    target = attacks.Target(
        params={"w1": weights, "w2": jnp.eye(2)}, config=attacks.GCNConfig(hidden=2, relu=False, bias=False),
        x=x, pseudo_labels=jnp.asarray(data.labels), unlabeled_mask=jnp.ones(data.n_nodes, bool))
    flip_set = attacks.FlipSet(data.graph, 4)
    grad = target.adjacency_grad(flip_set.graph())
    scores = attacks.flip_scores(grad, jnp.asarray(flip_set.pairs, jnp.int32), jnp.asarray(flip_set.removable()), 4)
    chosen = attacks.choose_flips(scores, flip_set, 1)
    adjacency = np.asarray(data.graph.to_dense())
    dense = np.asarray(grad.dense()) * (1 - 2 * adjacency)
    degree = adjacency.sum(axis=1)
    n = data.n_nodes
    allowed = np.triu(np.ones((n, n), bool), 1) & ~((adjacency > 0) & ((degree[:, None] <= 1) | (degree[None, :] <= 1)))
    best = np.unravel_index(np.argmax(np.where(allowed, dense, -np.inf)), dense.shape)
    assert chosen == [tuple(int(b) for b in best)]


def test_project_budget_is_the_euclidean_projection(keys):
    s = jax.random.normal(next(keys), (50,)) + 0.5
    projected = attacks.project_budget(s, 5.0)
    assert float(projected.sum()) == pytest.approx(5.0, abs=1e-4)
    assert float(projected.min()) >= 0 and float(projected.max()) <= 1
    # optimality: any other feasible point is farther from s (checked against random feasible points)
    for _ in range(5):
        other = attacks.project_budget(jax.random.uniform(next(keys), (50,)) * 2, 5.0)
        assert float(jnp.sum((s - projected) ** 2)) <= float(jnp.sum((s - other) ** 2)) + 1e-5
    inside = jnp.full((10,), 0.1)
    np.testing.assert_allclose(attacks.project_budget(inside, 5.0), inside)


def test_pgd_and_gradient_attacks_stay_within_budget():
    data = csbm(60, 2, avg_degree=4.0, feature_dim=4, train_fraction=0.3, val_fraction=0.2, seed=0)
    small = attacks.GCNConfig(hidden=4, epochs=20)
    target = attacks.Target.fit(data.graph, jnp.asarray(data.features), data.labels, data.train_mask,
                                data.val_mask, key=jax.random.key(0), n_classes=2, config=small)
    pgd = attacks.pgd_attack(target, data.graph, 5, key=jax.random.key(1), n_candidates=30, iterations=10, samples=4)
    greedy = attacks.gradient_attack(target, data.graph, 5)
    clean = float(target.loss(data.graph))
    for flips in (pgd.flips, greedy.flips):
        assert 0 < len(flips) <= 5 and np.all(flips[:, 0] < flips[:, 1])
    assert float(target.loss(attacks.perturbed_graph(data.graph, greedy.flips))) > clean
    assert pgd.loss > clean


def test_largest_component_and_stratified_split():
    pairs = np.array([[0, 1], [1, 2], [3, 4]])
    graph = attacks.graph_from_pairs(pairs, 6)
    data = NodeDataset.from_arrays(graph, np.arange(6.0)[:, None], np.array([0, 1, 0, 1, 0, 1]),
                                   *[np.ones(6, bool)] * 3, n_classes=2)
    lcc = attacks.largest_component(data)
    assert lcc.n_nodes == 3
    np.testing.assert_array_equal(attacks.undirected_pairs(lcc.graph), [[0, 1], [1, 2]])
    np.testing.assert_array_equal(np.asarray(lcc.features)[:, 0], [0.0, 1.0, 2.0])
    big = attacks.random_split(karate_club(), train=0.25, val=0.25, seed=0)
    masks = np.stack([big.train_mask, big.val_mask, big.test_mask])
    assert np.all(masks.sum(axis=0) == 1)
    for c in range(2):
        members = np.asarray(big.labels) == c
        assert abs(masks[0][members].sum() - 0.25 * members.sum()) <= 0.5
    with pytest.raises(ValueError, match="random_split: need 0 < train"):
        attacks.random_split(big, train=0.9, val=0.2, seed=0)
