"""make_train_step, evaluate, the optimizer's decay mask and model splitting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jgrad
from jgrad.data import karate_club
from jgrad.train import (
    EarlyStopping,
    TrainState,
    decay_mask,
    evaluate,
    init_params,
    make_optimizer,
    make_train_step,
    masked_cross_entropy,
    split_model,
)


def make_gcn(rngs, dropout=0.0):
    return jgrad.nn.GCN(34, 8, 2, dropout=dropout, rngs=rngs)


def test_train_step_under_jit_with_donation_decreases_loss_on_karate():
    data = jax.device_put(karate_club())
    model_def, params = split_model(make_gcn(nnx.Rngs(0), dropout=0.5))
    optimizer = make_optimizer(0.01, 5e-4, "first_layer")
    state = TrainState.create(params, optimizer, jax.random.key(1))
    step = jax.jit(make_train_step(model_def, optimizer), donate_argnums=0)
    before = float(evaluate(model_def, state.params, data)["train_loss"])
    for _ in range(30):
        state, metrics = step(state, data)
    after = evaluate(model_def, state.params, data)
    assert int(state.step) == 30
    assert np.isfinite(float(metrics["loss"]))
    assert float(after["train_loss"]) < 0.5 * before
    assert float(after["train_acc"]) == 1.0


def test_split_model_round_trips_the_parameters():
    model = make_gcn(nnx.Rngs(0))
    model_def, params = split_model(model)
    graph = karate_club().graph
    x = jnp.eye(34)
    np.testing.assert_array_equal(model_def.apply(params, graph, x), model(graph, x))


def test_init_params_rows_equal_single_initialisations():
    keys = jax.random.split(jax.random.key(0), 3)
    _, batched = init_params(make_gcn, keys)
    _, single = split_model(make_gcn(nnx.Rngs(params=keys[2])))
    jax.tree.map(lambda b, s: np.testing.assert_array_equal(b[2], s), batched, single)


def test_decay_mask_first_layer_selects_only_the_first_kernel():
    _, params = split_model(make_gcn(nnx.Rngs(0)))
    mask = decay_mask(params, "first_layer")
    flat = {jax.tree_util.keystr(path): value for path, value in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert [name for name, on in flat.items() if on] == ["['layers'][0]['kernel']"]
    assert sum(jax.tree.leaves(decay_mask(params, "all"))) == 2  # both kernels, no biases
    assert not any(jax.tree.leaves(decay_mask(params, "none")))


def test_decay_mask_that_selects_nothing_names_the_parameters():
    with pytest.raises(ValueError, match=r"decay_mask: 'encoder' selects no weight matrix; got parameters layers/0/"):
        decay_mask({"layers": {0: {"kernel": jnp.ones((2, 2))}}}, "encoder")


def test_weight_decay_equals_l2_gradient_on_the_selected_weights():
    params = {"layers": {0: {"kernel": jnp.full((2, 2), 2.0)}, 1: {"kernel": jnp.full((2, 2), 2.0)}}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    optimizer = make_optimizer(1.0, 0.5, "first_layer")
    updates, _ = optimizer.update(zeros, optimizer.init(params), params)
    # Adam's first step moves every parameter with a non-zero gradient by -lr * sign(gradient).
    np.testing.assert_allclose(updates["layers"][0]["kernel"], -1.0, rtol=1e-4)  # Adam eps
    np.testing.assert_array_equal(updates["layers"][1]["kernel"], 0.0)


def test_masked_cross_entropy_of_an_empty_mask_is_zero():
    loss, acc = masked_cross_entropy(jnp.ones((3, 2)), jnp.zeros(3, jnp.int32), jnp.zeros(3, bool))
    assert float(loss) == 0.0 and float(acc) == 0.0


def test_early_stopping_rejects_an_unknown_criterion():
    with pytest.raises(ValueError, match=r"unknown criterion; got 'val_acc', expected one of"):
        EarlyStopping("val_acc").check()
