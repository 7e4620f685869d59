"""`MetaProblem.surrogate_fit` reports the inner training run against a dense recomputation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import attacks
from jgrad.data import csbm


@pytest.fixture(scope="module", autouse=True)
def _self_training_once():
    """Every problem here trains the same self-training surrogate (same data and key): once per dtype."""
    from jgrad.attacks import _meta

    real, trained = _meta.self_training_labels, {}

    def once_per_dtype(graph, x, *args, **kwargs):
        if x.dtype not in trained:
            trained[x.dtype] = real(graph, x, *args, **kwargs)
        return trained[x.dtype]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_meta, "self_training_labels", once_per_dtype)
        yield


def _problem(inits: int, learning_rate: float = 0.2):
    data = csbm(30, 3, avg_degree=4.0, feature_dim=5, train_fraction=0.3, val_fraction=0.2, seed=2)
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    x = jnp.asarray(data.features, dtype)
    problem = attacks.MetaProblem.create(data.graph, x, data.labels, data.train_mask, data.val_mask,
                                         key=jax.random.key(4), n_classes=3, dtype=dtype, inits=inits,
                                         config=attacks.MetaConfig(hidden=4, steps=20, learning_rate=learning_rate))
    return data, x, problem


def _dense_fit(data, x, problem):
    """Train loss, train accuracy and self-training agreement, with a dense Â² X and one init at a time."""
    adjacency = data.graph.to_dense().astype(x.dtype) + jnp.eye(data.graph.n_nodes, dtype=x.dtype)
    scale = adjacency.sum(axis=1) ** -0.5
    s = scale[:, None] * adjacency * scale[None, :]
    propagated = s @ (s @ x)
    members = [problem.params] if problem.inits == 1 else [
        jax.tree.map(lambda p, k=k: p[k], problem.params) for k in range(problem.inits)]
    losses, accuracies, agreements = [], [], []
    inner_train = jax.jit(attacks.inner_train, static_argnums=3)  # one compilation for every member
    for params in members:
        trained = inner_train(params, propagated[problem.train_index], problem.train_labels, problem.config)
        logits = propagated @ trained["w1"] @ trained["w2"]
        train = jnp.zeros(data.graph.n_nodes, bool).at[problem.train_index].set(True)
        labels = jnp.asarray(data.labels)
        losses.append(attacks.masked_cross_entropy(logits, labels, train))
        accuracies.append(attacks.masked_accuracy(logits, labels, train))
        agreements.append(attacks.masked_accuracy(logits, problem.pseudo_labels, problem.unlabeled_mask))
    return tuple(float(np.mean(v)) for v in (losses, accuracies, agreements))


@pytest.mark.parametrize("inits", [1, 3])
def test_surrogate_fit_matches_dense_recomputation(x64, inits):
    data, x, problem = _problem(inits)
    fit = jax.jit(problem.surrogate_fit)(data.graph.with_edge_weight(jnp.ones(data.graph.n_edges, jnp.float64)))
    loss, accuracy, agreement = _dense_fit(data, x, problem)
    np.testing.assert_allclose(float(fit.train_loss), loss, rtol=1e-9)
    np.testing.assert_allclose([float(fit.train_accuracy), float(fit.pseudo_agreement)], [accuracy, agreement],
                               rtol=1e-6)  # fractions of nodes; the dense reference counts in float32


def test_surrogate_fit_shows_a_learning_rate_too_small_to_train():
    data, _, problem = _problem(2)
    slow = dataclasses.replace(problem, config=dataclasses.replace(problem.config, learning_rate=1e-4))
    start = dataclasses.replace(problem, config=dataclasses.replace(problem.config, steps=0))
    trained, stuck, initial = (jax.jit(p.surrogate_fit)(data.graph) for p in (problem, slow, start))
    assert abs(float(stuck.train_loss) - float(initial.train_loss)) < 0.01  # hardly moved from the initialisation
    assert float(trained.train_loss) < float(stuck.train_loss) - 0.3
    assert float(trained.train_accuracy) > float(stuck.train_accuracy)


def test_meta_self_loss_is_the_attacker_loss_of_the_surrogate_logits():
    data, x, problem = _problem(3)
    logits = attacks.surrogate_logits(data.graph, x, problem.train_index, problem.train_labels, problem.params,
                                      problem.config)
    assert logits.shape == (data.graph.n_nodes, 3, 3)
    per_init = [attacks.masked_cross_entropy(logits[:, k], problem.pseudo_labels, problem.unlabeled_mask)
                for k in range(3)]
    np.testing.assert_allclose(float(problem.loss(data.graph)), float(np.mean(per_init)), rtol=1e-6)
