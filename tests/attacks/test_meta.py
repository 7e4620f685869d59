"""The factored meta-gradient equals the gradient of a dense-adjacency implementation of the same inner loop."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import attacks
from jgrad.data import csbm


def _dense_logits(adjacency, params, x, train_index, train_labels, *, steps, learning_rate, momentum):
    """The inner loop written naively: dense Â, the full forward pass inside every training step."""
    a_hat = adjacency + jnp.eye(adjacency.shape[0], dtype=adjacency.dtype)
    scale = a_hat.sum(axis=1) ** -0.5
    s = scale[:, None] * a_hat * scale[None, :]
    train = jnp.zeros(adjacency.shape[0], bool).at[train_index].set(True)
    labels = jnp.zeros(adjacency.shape[0], jnp.int32).at[train_index].set(train_labels)

    def logits(p):
        return s @ (s @ (x @ p["w1"])) @ p["w2"]

    def step(carry, _):
        p, v = carry
        g = jax.grad(lambda q: attacks.masked_cross_entropy(logits(q), labels, train))(p)
        v = jax.tree.map(lambda v_, g_: momentum * v_ + g_, v, g)
        return (jax.tree.map(lambda p_, v_: p_ - learning_rate * v_, p, v), v), None

    velocity = jax.tree.map(jnp.zeros_like, params)
    (p, _), _ = jax.lax.scan(step, (params, velocity), None, length=steps)
    return logits(p)


def _dense_loss(adjacency, params, x, train_index, train_labels, pseudo_labels, scored, **inner):
    return attacks.masked_cross_entropy(_dense_logits(adjacency, params, x, train_index, train_labels, **inner),
                                        pseudo_labels, scored)


# One compilation serves every reference below (the same shapes and inner-loop settings throughout).
_dense_logits_jit = jax.jit(_dense_logits, static_argnames=("steps", "learning_rate", "momentum"))
_dense_grad_jit = jax.jit(jax.grad(_dense_loss), static_argnames=("steps", "learning_rate", "momentum"))


def _dense_meta_grad(adjacency, problem, x, params=None):
    """d/da_ij of the Meta-Self loss of the dense loop, with A[i, j] = A[j, i] = a_ij: shape (N, N)."""
    config = problem.config
    params = problem.params if params is None else params
    inner = dict(steps=config.steps, learning_rate=config.learning_rate, momentum=config.momentum)
    args = (adjacency, params, x, problem.train_index, problem.train_labels)
    scored = problem.unlabeled_mask
    if config.attacker_loss == "masked_ce":  # only the nodes still predicted as their self-training label
        final = _dense_logits_jit(*args, **inner)
        scored = scored & (jnp.argmax(final, axis=1) == problem.pseudo_labels)
    dense = _dense_grad_jit(*args, problem.pseudo_labels, scored, **inner)
    return dense + dense.T - jnp.diag(jnp.diag(dense))


def _small_problem(form, n_nodes=24, feature_dim=6):
    """A CSBM graph and a Meta-Self problem on it; the true labels stand in for the self-training labels."""
    data = csbm(n_nodes, 3, avg_degree=4.0, feature_dim=feature_dim, train_fraction=0.3, val_fraction=0.2, seed=1)
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    x = jnp.asarray(data.features, dtype)
    config = attacks.MetaConfig(hidden=4, steps=15, form=form)
    train_index = jnp.asarray(np.flatnonzero(data.train_mask), jnp.int32)
    labels = jnp.asarray(data.labels)
    params = attacks.init_gcn(jax.random.key(3), feature_dim, 3, attacks.GCNConfig(hidden=4, bias=False), dtype)
    problem = attacks.MetaProblem(x, train_index, labels[train_index], ~jnp.asarray(data.train_mask), labels,
                                  params, config)
    return data, x, problem


@pytest.mark.parametrize("form", ["train", "features"])
def test_meta_gradient_matches_dense_inner_loop_in_float64(x64, form):
    data, x, problem = _small_problem(form)
    flip_set = attacks.FlipSet(data.graph, 4, jnp.float64)
    i, j = flip_set.pairs[0]
    flip_set.flip(int(i), int(j))  # a removed edge (weight 0) and an added one (a filled padding slot)
    flip_set.flip(*next((u, v) for u in range(24) for v in range(u + 1, 24) if not flip_set.is_edge(u, v)))
    graph = flip_set.graph()
    factored = attacks.meta_gradient(problem, graph)  # also checked against edge_grad at existing edges
    # (the tests below compare with the dense loop or each other, and skip that built-in check: check=False)
    expected = _dense_meta_grad(graph.to_dense().astype(jnp.float64), problem, x)
    np.testing.assert_allclose(factored.dense(), expected, rtol=1e-9, atol=1e-12)
    assert float(jnp.max(jnp.abs(expected))) > 1e-4


def test_masked_ce_meta_gradient_matches_dense_inner_loop_and_differs_from_ce(x64):
    data, x, ce_problem = _small_problem("train")
    problem = dataclasses.replace(ce_problem, config=dataclasses.replace(ce_problem.config, attacker_loss="masked_ce"))
    graph = data.graph.with_edge_weight(jnp.ones(data.graph.n_edges, jnp.float64))
    expected = _dense_meta_grad(graph.to_dense(), problem, x)
    masked = attacks.meta_gradient(problem, graph, check=False).dense()
    np.testing.assert_allclose(masked, expected, rtol=1e-9, atol=1e-12)
    ce = attacks.meta_gradient(ce_problem, graph, check=False).dense()
    assert float(jnp.max(jnp.abs(ce - expected))) > 1e-3 * float(jnp.max(jnp.abs(ce)))  # some node was masked out


def test_attacker_loss_names_bad_choices():
    with pytest.raises(ValueError, match="attacker_loss"):
        attacks.MetaConfig(attacker_loss="margin")


def test_meta_gradient_factored_agrees_with_dense_mode(x64):
    data, _, problem = _small_problem("auto")
    factored = attacks.meta_gradient(problem, data.graph.with_edge_weight(jnp.ones(data.graph.n_edges, jnp.float64)))
    dense = attacks.meta_gradient(problem, data.graph.with_edge_weight(jnp.ones(data.graph.n_edges, jnp.float64)),
                                  mode="dense")
    np.testing.assert_allclose(factored.dense(), dense.dense(), rtol=1e-9, atol=1e-12)


def test_meta_gradient_rank_is_independent_of_inner_steps():
    data, _, problem = _small_problem("train")

    def rank(steps):
        longer = dataclasses.replace(problem, config=attacks.MetaConfig(hidden=4, steps=steps, form="train"))
        shape = jax.eval_shape(lambda g: attacks.meta_gradient(longer, g, check=False), data.graph).left.shape
        return shape[1]

    n_train = int(problem.train_index.shape[0])
    assert rank(10) == rank(1000) == 2 * (2 * n_train + 2 * 3 + 4)  # symmetric: two spmm per propagate pair


def test_inner_train_is_sgd_with_momentum():
    key = jax.random.key(0)
    data = jax.random.normal(key, (5, 3))
    labels = jnp.array([0, 1, 0, 1, 1])
    params = {"w1": jax.random.normal(jax.random.key(1), (3, 2)), "w2": jax.random.normal(jax.random.key(2), (2, 2))}
    config = attacks.MetaConfig(steps=3, learning_rate=0.1, momentum=0.9)

    @jax.jit  # the reference loop compiled whole, not op by op
    def reference(p):
        v = jax.tree.map(jnp.zeros_like, p)
        for _ in range(3):
            g = jax.grad(lambda q: attacks.masked_cross_entropy(data @ q["w1"] @ q["w2"], labels, jnp.ones(5, bool)))(p)
            v = jax.tree.map(lambda a, b: 0.9 * a + b, v, g)
            p = jax.tree.map(lambda a, b: a - 0.1 * b, p, v)
        return p

    p = reference(params)
    out = attacks.inner_train(params, data, labels, config)
    for name in ("w1", "w2"):
        np.testing.assert_allclose(out[name], p[name], rtol=1e-5, atol=1e-6)


def test_metattack_flips_the_budget_without_singletons_or_self_loops():
    data, x, problem = _small_problem("auto")
    result = attacks.metattack(problem, data.graph, 6, flips_per_step=2)
    assert result.flips.shape == (6, 2) and result.steps == 3
    assert np.all(result.flips[:, 0] < result.flips[:, 1])
    assert len({tuple(f) for f in result.flips.tolist()}) == 6
    perturbed = attacks.perturbed_graph(data.graph, result.flips)
    degree = np.bincount(np.asarray(perturbed.receivers), minlength=data.graph.n_nodes)
    clean = np.bincount(np.asarray(data.graph.receivers), minlength=data.graph.n_nodes)
    assert np.all(degree[clean > 0] > 0)


@pytest.fixture(scope="module")
def auto_meta_gradient():
    """(data, float64 "auto" problem, dense adjacency, its meta-gradient from problem.params: shape (N, N)).

    One compile of the meta-gradient serves the tests that score against it."""
    with jax.enable_x64(True):
        data, _, problem = _small_problem("auto")
        graph = data.graph.with_edge_weight(jnp.ones(data.graph.n_edges, jnp.float64))
        fixed = np.asarray(attacks.meta_gradient(problem, graph, check=False).dense())
        adjacency = np.asarray(graph.to_dense())
    return data, problem, adjacency, fixed  # outside the context: the other tests keep their own precision


def test_metattack_first_flip_is_the_best_dense_score(x64, auto_meta_gradient):
    data, problem, adjacency, fixed = auto_meta_gradient
    result = attacks.metattack(problem, data.graph, 1)
    score = fixed * (1 - 2 * adjacency)
    assert tuple(result.flips[0]) == _best_allowed_flip(score, adjacency)


def test_metattack_redraw_draws_fresh_initial_weights_per_step():
    _, _, problem = _small_problem("auto")
    key = jax.random.key(5)
    inits = [problem.initial_params(attacks.step_key(key, s)) for s in range(3)]
    for name in ("w1", "w2"):
        assert inits[0][name].shape == problem.params[name].shape and inits[0][name].dtype == problem.params[name].dtype
        for a in range(3):
            for b in range(a + 1, 3):
                assert not np.allclose(inits[a][name], inits[b][name])
        again = problem.initial_params(attacks.step_key(key, 1))[name]
        np.testing.assert_array_equal(again, inits[1][name])
        bound = 1.0 / np.sqrt(problem.params[name].shape[1])
        assert np.all(np.abs(np.asarray(inits[0][name])) <= bound)


def test_metattack_redraw_is_deterministic_and_compiles_once():
    data, _, problem = _small_problem("auto")
    key = jax.random.key(5)
    first = attacks.metattack(problem, data.graph, 6, flips_per_step=2, key=key)
    second = attacks.metattack(problem, data.graph, 6, flips_per_step=2, key=key)
    np.testing.assert_array_equal(first.flips, second.flips)
    traces = []

    def score(g, k):
        traces.append(1)
        return attacks.meta_gradient(problem.with_initial_params(k), g, check=False)

    third = attacks.greedy_flips(score, data.graph, 6, flips_per_step=2, key=key)
    assert third.steps == 3 and len(traces) == 1
    np.testing.assert_array_equal(third.flips, first.flips)


def test_metattack_redraw_scores_each_step_from_its_own_initialisation(x64, auto_meta_gradient):
    data, problem, adjacency, fixed = auto_meta_gradient
    key = jax.random.key(5)
    result = attacks.metattack(problem, data.graph, 1, key=key)
    graph = data.graph.with_edge_weight(jnp.ones(data.graph.n_edges, jnp.float64))
    grad = attacks.meta_gradient(problem.with_initial_params(attacks.step_key(key, 0)), graph, check=False)
    score = np.asarray(grad.dense()) * (1 - 2 * adjacency)
    assert tuple(result.flips[0]) == _best_allowed_flip(score, adjacency)
    assert not np.allclose(np.asarray(grad.dense()), fixed)  # the redrawn start changes the meta-gradient


def _best_allowed_flip(score: np.ndarray, adjacency: np.ndarray) -> tuple[int, int]:
    """Dense reference of the flip rule: the best upper-triangle pair that leaves no node without neighbours."""
    degree = adjacency.sum(axis=1)
    n = adjacency.shape[0]
    allowed = np.triu(np.ones((n, n), bool), 1)
    allowed &= ~((adjacency > 0) & ((degree[:, None] <= 1) | (degree[None, :] <= 1)))
    best = np.unravel_index(np.argmax(np.where(allowed, score, -np.inf)), score.shape)
    return tuple(int(b) for b in best)


@pytest.mark.parametrize("form", ["train", "features"])
def test_an_ensemble_meta_gradient_is_the_mean_of_its_members_against_the_dense_loop(x64, form):
    data, x, problem = _small_problem(form)
    members = [problem.params, problem.initial_params(jax.random.key(7)), problem.initial_params(jax.random.key(8))]
    ensemble = dataclasses.replace(problem, params=jax.tree.map(lambda *m: jnp.stack(m), *members))
    assert ensemble.inits == 3 and problem.inits == 1
    graph = data.graph.with_edge_weight(jnp.ones(data.graph.n_edges, jnp.float64))
    factored = attacks.meta_gradient(ensemble, graph, check=False)
    adjacency = graph.to_dense().astype(jnp.float64)
    expected = sum(_dense_meta_grad(adjacency, problem, x, params=m) for m in members) / 3
    np.testing.assert_allclose(factored.dense(), expected, rtol=1e-9, atol=1e-12)
    single = attacks.meta_gradient(problem, graph, check=False)
    # "train" form: the final logits of K members are propagated together, 2 x 2 x (K - 1) x C more columns
    # (symmetric: x 2); "features" form: only Â² X is propagated, whatever K.
    assert factored.rank - single.rank == (2 * 2 * (3 - 1) * 3 if form == "train" else 0)
    fresh = ensemble.initial_params(jax.random.key(9))
    assert fresh["w1"].shape == ensemble.params["w1"].shape


def test_metaproblem_create_draws_an_ensemble_whose_first_member_is_the_single_init(monkeypatch):
    from jgrad.attacks import _meta

    real, trained = _meta.self_training_labels, []  # both creates train the same surrogate: train it once

    def train_once(*args, **kwargs):
        if not trained:
            trained.append(real(*args, **kwargs))
        return trained[0]

    monkeypatch.setattr(_meta, "self_training_labels", train_once)
    data = csbm(30, 3, avg_degree=4.0, feature_dim=5, train_fraction=0.3, val_fraction=0.2, seed=2)
    args = (data.graph, jnp.asarray(data.features), data.labels, data.train_mask, data.val_mask)
    single = attacks.MetaProblem.create(*args, key=jax.random.key(0), n_classes=3)
    ensemble = attacks.MetaProblem.create(*args, key=jax.random.key(0), n_classes=3, inits=4)
    assert ensemble.params["w1"].shape == (4,) + single.params["w1"].shape
    np.testing.assert_array_equal(ensemble.params["w1"][0], single.params["w1"])
    assert not np.allclose(ensemble.params["w1"][1], single.params["w1"])
    with pytest.raises(ValueError, match="inits must be a positive int; got 0"):
        attacks.MetaProblem.create(*args, key=jax.random.key(0), n_classes=3, inits=0)


def test_repeated_meta_gradients_of_one_problem_compile_once():
    data, _, problem = _small_problem("train")
    traces = itertools.count()  # advanced at each trace; a list would change what the loss closes over

    @dataclasses.dataclass(frozen=True)
    class Counted(attacks.MetaProblem):
        def loss(self, graph):
            next(traces)
            return super().loss(graph)

    counted = Counted(**{field.name: getattr(problem, field.name) for field in dataclasses.fields(problem)})
    first = attacks.meta_gradient(counted, data.graph, check=False)
    second = attacks.meta_gradient(counted, data.graph, check=False)
    assert next(traces) == 1  # traced by the first call only: the second reuses its compiled program
    np.testing.assert_array_equal(first.dense(), second.dense())


@pytest.mark.parametrize("budget, error, message", [
    (-1, ValueError, r"budget=-1 is negative; expected 0 <= budget <= 276\.$"),
    (277, ValueError, r"budget=277 exceeds the 276 node pairs that can be flipped on this graph \(N=24\); "
                      r"expected 0 <= budget <= 276\.$"),
    (10**6, ValueError, r"budget=1000000 exceeds the 276 node pairs .*; expected 0 <= budget <= 276\.$"),
    (2.0, TypeError, r"budget must be an int; got float 2\.0, expected 0 <= budget <= 276\.$"),
    (False, TypeError, r"budget must be an int; got bool False"),
])
def test_metattack_checks_the_budget_before_any_work(budget, error, message, monkeypatch):
    data, _, problem = _small_problem("auto")
    monkeypatch.setattr(attacks.MetaProblem, "loss", lambda self, g: pytest.fail("scored before the check"))
    for key in (None, jax.random.key(0)):
        with pytest.raises(error, match=r"^metattack: " + message):
            attacks.metattack(problem, data.graph, budget, key=key)


def test_metattack_budget_zero_returns_no_flips_without_a_meta_gradient(monkeypatch):
    data, _, problem = _small_problem("auto")
    monkeypatch.setattr(attacks.MetaProblem, "loss", lambda self, g: pytest.fail("computed a meta-gradient"))
    for key in (None, jax.random.key(0)):
        result = attacks.metattack(problem, data.graph, 0, key=key)
        assert result.flips.shape == (0, 2) and result.steps == 0
