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
    lines = []
    pgd = attacks.pgd_attack(target, data.graph, 5, key=jax.random.key(1), n_candidates=30, iterations=10, samples=4,
                             log=lines.append)
    # progress from inside the compiled loop: a line every tenth of the iterations, then the result
    assert [line.split(",")[0] for line in lines[:-1]] == [f"pgd: step {t}/10" for t in range(1, 11)]
    assert lines[-1].startswith("pgd: ") and f"{len(pgd.flips)} flips" in lines[-1]
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


def _fixed_target(graph, key):
    """A GCN with random fixed weights on ``graph`` (no training): enough to score flips."""
    n = graph.n_nodes
    x = jax.random.normal(key, (n, 3))
    return attacks.Target(params={"w1": jnp.eye(3)[:, :2], "w2": jnp.eye(2)},
                          config=attacks.GCNConfig(hidden=2, relu=False, bias=False), x=x,
                          pseudo_labels=jnp.arange(n) % 2, unlabeled_mask=jnp.ones(n, bool))


def _ring(n):
    return attacks.graph_from_pairs(np.stack([np.arange(n), (np.arange(n) + 1) % n], axis=1), n)


def _untraced(*args):
    raise AssertionError("the attack scored a graph before checking its budget")


BAD_BUDGETS = [
    (-1, ValueError, r"budget=-1 is negative; expected 0 <= budget <= 780\.$"),
    (785, ValueError, r"budget=785 exceeds the 780 node pairs that can be flipped on this graph \(N=40\); "
                      r"expected 0 <= budget <= 780\.$"),
    (10**6, ValueError, r"budget=1000000 exceeds the 780 node pairs"),
    (5.0, TypeError, r"budget must be an int; got float 5\.0, expected 0 <= budget <= 780\.$"),
    (np.float32(5), TypeError, r"budget must be an int; got float32 \S*5\.0\S*, expected 0 <= budget <= 780\.$"),
    (True, TypeError, r"budget must be an int; got bool True"),
    ("5", TypeError, r"budget must be an int; got str '5'"),
    (0.05, TypeError, r"budget must be an int; got float 0\.05, expected 0 <= budget <= 780\. A fraction of the "
                      r"edges\? Pass int\(fraction \* len\(jgrad\.attacks\.undirected_pairs\(graph\)\)\)\.$"),
]


@pytest.mark.parametrize("budget, error, message", BAD_BUDGETS)
def test_greedy_attacks_check_the_budget_before_any_work(budget, error, message):
    graph = _ring(40)  # 780 unordered pairs, 40 of them edges
    target = _fixed_target(graph, jax.random.key(0))
    with pytest.raises(error, match=r"^greedy_flips: " + message):
        attacks.greedy_flips(_untraced, graph, budget)
    with pytest.raises(error, match=r"^gradient_attack: " + message):
        attacks.gradient_attack(target._replace(params=None), graph, budget)  # no weights: nothing may run


@pytest.mark.parametrize("flips_per_step", [0, -2, 1.5, True])
def test_greedy_attacks_check_flips_per_step_before_any_work(flips_per_step):
    graph = _ring(40)
    with pytest.raises(ValueError, match=r"^greedy_flips: flips_per_step must be a positive int; got "):
        attacks.greedy_flips(_untraced, graph, 3, flips_per_step=flips_per_step)


PGD_LIMIT = r"the 780 candidate pairs of this graph \(40 edges to remove, 740 non-edges to add with n_candidates=1000\)"


@pytest.mark.parametrize("budget, error, message", [
    (-1, ValueError, r"budget=-1 is negative; expected 0 <= budget <= 780\.$"),
    (785, ValueError, r"budget=785 exceeds " + PGD_LIMIT + r"; expected 0 <= budget <= 780\.$"),
    (5.0, TypeError, r"budget must be an int; got float 5\.0, expected 0 <= budget <= 780\.$"),
    (True, TypeError, r"budget must be an int; got bool True"),
])
def test_pgd_checks_the_budget_against_its_candidate_pairs(budget, error, message):
    graph = _ring(40)
    target = _fixed_target(graph, jax.random.key(0))._replace(params=None)  # no weights: nothing may run
    with pytest.raises(error, match=r"^pgd_attack: " + message):
        attacks.pgd_attack(target, graph, budget, key=jax.random.key(1), n_candidates=1000)


def test_pgd_limit_counts_its_candidate_additions_and_checks_n_candidates():
    graph = _ring(40)
    target = _fixed_target(graph, jax.random.key(0))._replace(params=None)
    with pytest.raises(ValueError, match=r"^pgd_attack: budget=51 exceeds the 50 candidate pairs of this graph "
                                         r"\(40 edges to remove, 10 non-edges to add with n_candidates=10\); "
                                         r"expected 0 <= budget <= 50\.$"):
        attacks.pgd_attack(target, graph, 51, key=jax.random.key(1), n_candidates=10)
    with pytest.raises(ValueError, match=r"^pgd_attack: budget=41 exceeds the 40 candidate pairs .* n_candidates=0\)"):
        attacks.pgd_attack(target, graph, 41, key=jax.random.key(1), n_candidates=0)
    with pytest.raises(TypeError, match=r"^pgd_attack: n_candidates must be an int; got float 10\.0"):
        attacks.pgd_attack(target, graph, 5, key=jax.random.key(1), n_candidates=10.0)
    with pytest.raises(ValueError, match=r"^pgd_attack: n_candidates=-1 is negative"):
        attacks.pgd_attack(target, graph, 5, key=jax.random.key(1), n_candidates=-1)


def test_budget_zero_returns_no_flips_without_scoring(monkeypatch):
    graph = _ring(12)
    target = _fixed_target(graph, jax.random.key(0))
    clean = float(target.loss(graph))
    monkeypatch.setattr(attacks.Target, "adjacency_grad", _untraced)
    for result in (attacks.greedy_flips(_untraced, graph, 0), attacks.gradient_attack(target, graph, 0),
                   attacks.greedy_flips(_untraced, graph, np.int64(0))):
        assert result.flips.shape == (0, 2) and result.flips.dtype == np.int64 and result.steps == 0
    pgd = attacks.pgd_attack(target, graph, 0, key=jax.random.key(1), n_candidates=5)
    assert pgd.flips.shape == (0, 2) and pgd.flips.dtype == np.int64
    assert pgd.candidates == 12 + 5
    assert pgd.loss == pytest.approx(clean, rel=1e-6)


def test_greedy_budget_up_to_every_pair():
    # A 6-node path: its complement has no node without neighbours, so all 15 pairs can be flipped in any order.
    graph, target = _path_graph(6), _fixed_target(_path_graph(6), jax.random.key(2))
    result = attacks.gradient_attack(target, graph, 15, flips_per_step=4)
    assert result.flips.shape == (15, 2) and len({tuple(f) for f in result.flips.tolist()}) == 15
    complement = 1 - np.eye(6) - np.asarray(graph.to_dense())
    np.testing.assert_array_equal(attacks.perturbed_graph(graph, result.flips).to_dense(), complement)
    with pytest.raises(ValueError, match=r"budget=16 exceeds the 15 node pairs .* \(N=6\)"):
        attacks.gradient_attack(target, graph, 16)
    # A star's complement leaves its centre without neighbours: the last flip is refused, after the others.
    star = attacks.graph_from_pairs(np.array([[0, 1], [0, 2], [0, 3]]), 4)
    with pytest.raises(RuntimeError, match=r"^gradient_attack: no allowed flip left after 5 of budget=6 flips"):
        attacks.gradient_attack(_fixed_target(star, jax.random.key(3)), star, 6)
