"""The victim GCN's training: which epoch's parameters each model-selection rule returns."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jgrad import attacks
from jgrad.data import csbm


def _epochs_by_hand(data, x, config, key):
    """Every epoch's parameters with their validation loss and accuracy, from a plain loop (no dropout)."""
    params = attacks.init_gcn(jax.random.split(key)[0], x.shape[1], data.n_classes, config)
    optimizer = optax.chain(optax.add_decayed_weights(config.weight_decay), optax.adam(config.learning_rate))
    state = optimizer.init(params)
    labels, train, val = (jnp.asarray(a) for a in (data.labels, data.train_mask, data.val_mask))

    @jax.jit  # one compiled epoch, called from the Python loop below (eager dispatch was most of the cost)
    def epoch(params, state):
        grads = jax.grad(lambda p: attacks.masked_cross_entropy(attacks.gcn_logits(p, data.graph, x, config),
                                                                labels, train))(params)
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        logits = attacks.gcn_logits(params, data.graph, x, config)
        return (params, state, attacks.masked_cross_entropy(logits, labels, val),
                attacks.masked_accuracy(logits, labels, val))

    history = []
    for _ in range(config.epochs):
        params, state, loss, accuracy = epoch(params, state)
        history.append((params, float(loss), float(accuracy)))
    return history


@pytest.mark.parametrize("selection", ["accuracy", "loss_or_accuracy"])
def test_train_gcn_returns_the_epoch_its_selection_rule_names(selection):
    data = csbm(80, 3, avg_degree=4.0, feature_dim=6, train_fraction=0.2, val_fraction=0.3, seed=1)
    x = jnp.asarray(data.features)
    config = attacks.GCNConfig(hidden=8, dropout=0.0, learning_rate=0.01, epochs=40, selection=selection)
    key = jax.random.key(5)
    history = _epochs_by_hand(data, x, config, key)
    chosen, best_loss, best_acc = None, np.inf, -1.0
    for epoch, (_, loss, acc) in enumerate(history):
        if acc > best_acc or (selection == "loss_or_accuracy" and loss < best_loss):
            chosen = epoch
        best_loss, best_acc = min(best_loss, loss), max(best_acc, acc)
    accuracy_epoch = int(np.argmax([acc for _, _, acc in history]))
    if selection == "loss_or_accuracy":  # the case must tell the rules apart
        assert chosen != accuracy_epoch
    trained = attacks.train_gcn(data.graph, x, data.labels, jnp.asarray(data.train_mask),
                                jnp.asarray(data.val_mask), key=key, n_classes=data.n_classes, config=config)
    for name, value in history[chosen][0].items():
        np.testing.assert_allclose(trained[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_victim_uses_the_reference_selection_rule_and_bad_rules_are_named():
    assert attacks.VICTIM.selection == "loss_or_accuracy"
    with pytest.raises(ValueError, match="selection"):
        dataclasses.replace(attacks.VICTIM, selection="val_loss")


def test_without_validation_nodes_only_the_last_epoch_rule_trains():
    data = csbm(40, 2, avg_degree=4.0, feature_dim=4, train_fraction=0.3, val_fraction=0.2, seed=0)
    x, train = jnp.asarray(data.features), jnp.asarray(data.train_mask)
    no_val = jnp.zeros_like(train)
    config = attacks.GCNConfig(hidden=4, dropout=0.0, epochs=15)
    with pytest.raises(ValueError, match="val_mask selects no node"):
        attacks.train_gcn(data.graph, x, data.labels, train, no_val, key=jax.random.key(0), n_classes=2, config=config)
    last = dataclasses.replace(config, selection="last")
    trained = attacks.train_gcn(data.graph, x, data.labels, train, no_val, key=jax.random.key(0), n_classes=2,
                                config=last)
    final = _epochs_by_hand(data, x, last, jax.random.key(0))[-1][0]
    for name, value in final.items():
        np.testing.assert_allclose(trained[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
