"""make_train_step, evaluate, the optimizer's decay mask and model splitting."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.experimental import checkify

import jgrad
from jgrad.data import karate_club
from jgrad.train import (
    EarlyStopping,
    TrainState,
    decay_mask,
    evaluate,
    init_params,
    make_epoch_step,
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


def _loss_problem(dtype):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)) * 3.0
    labels = np.array([0, 3, 1, 2, -1, 1])  # -1 on a masked-out node
    mask = np.array([True, True, False, True, False, True])
    return jnp.asarray(logits, dtype), jnp.asarray(labels, jnp.int32), jnp.asarray(mask)


def _numpy_reference(logits, labels, mask):
    """Masked mean cross-entropy and accuracy in float64 NumPy."""
    x, labels, mask = np.asarray(logits, np.float64), np.asarray(labels), np.asarray(mask)
    top = x.max(axis=1)
    losses = top + np.log(np.exp(x - top[:, None]).sum(axis=1)) - x[np.arange(len(x)), np.maximum(labels, 0)]
    hits = x.argmax(axis=1) == labels
    return losses[mask].mean(), hits[mask].mean()


def test_masked_cross_entropy_of_float64_logits_is_float64(x64):
    logits, labels, mask = _loss_problem(jnp.float64)
    loss, acc = masked_cross_entropy(logits, labels, mask)
    assert loss.dtype == acc.dtype == jnp.float64
    ref_loss, ref_acc = _numpy_reference(logits, labels, mask)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-12, atol=0)
    np.testing.assert_allclose(float(acc), ref_acc, rtol=1e-12, atol=0)
    weight = mask.astype(jnp.float64)
    rows = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(mask, labels, 0))
    np.testing.assert_array_equal(loss, jnp.sum(rows * weight) / jnp.maximum(jnp.sum(weight), 1.0))
    # Central finite differences at eps 1e-7 resolve the gradient only if the loss is not rounded to
    # float32 (in float32 a 1e-7 change of a logit of size ~3 is below the rounding step).
    f = jax.jit(lambda x: masked_cross_entropy(x, labels, mask)[0])
    grad = np.asarray(jax.grad(f)(logits))
    eps = 1e-7
    fd = np.zeros_like(grad)
    for index in np.ndindex(*grad.shape):
        step = jnp.zeros_like(logits).at[index].set(eps)
        fd[index] = (float(f(logits + step)) - float(f(logits - step))) / (2 * eps)
    assert np.abs(grad).max() > 0.05
    np.testing.assert_allclose(fd, grad, rtol=0, atol=1e-8)


def test_masked_cross_entropy_of_float32_logits_equals_optax_bit_for_bit():
    logits, labels, mask = _loss_problem(jnp.float32)
    loss, acc = masked_cross_entropy(logits, labels, mask)
    assert loss.dtype == acc.dtype == jnp.float32
    weight = mask.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weight), 1.0)
    rows = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(mask, labels, 0))
    np.testing.assert_array_equal(loss, jnp.sum(rows * weight) / count)
    np.testing.assert_array_equal(acc, np.float32(_numpy_reference(logits, labels, mask)[1]))


def test_masked_cross_entropy_of_float32_logits_stays_float32_under_x64(x64):
    logits, labels, mask = _loss_problem(jnp.float32)
    loss, acc = masked_cross_entropy(logits, labels, mask)
    assert loss.dtype == acc.dtype == jnp.float32


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_masked_cross_entropy_of_half_precision_logits_sums_in_float32(dtype):
    logits, labels, mask = _loss_problem(dtype)
    loss, acc = masked_cross_entropy(logits, labels, mask)
    assert loss.dtype == acc.dtype == jnp.float32
    loss32, acc32 = masked_cross_entropy(logits.astype(jnp.float32), labels, mask)
    np.testing.assert_array_equal(loss, loss32)
    np.testing.assert_array_equal(acc, acc32)


def test_masked_cross_entropy_rejects_concrete_labels_out_of_range():
    logits = jnp.zeros((4, 3))
    mask = jnp.array([True, True, False, True])
    with pytest.raises(ValueError, match=r"^masked_cross_entropy: labels must be in \[0, 3\) where mask is True; "
                                         r"got 7 at node 1\.$"):
        masked_cross_entropy(logits, jnp.array([0, 7, 1, -2]), mask)
    with pytest.raises(ValueError, match=r"^masked_cross_entropy: labels must be in \[0, 3\) where mask is True; "
                                         r"got -1 at node 0\.$"):
        masked_cross_entropy(logits, np.array([-1, 0, 0, 0]), np.ones(4, bool))


def test_masked_cross_entropy_accepts_any_label_where_the_mask_is_false():
    logits, labels, mask = _loss_problem(jnp.float32)
    assert int(labels[4]) == -1 and not bool(mask[4])
    masked = masked_cross_entropy(logits, labels, mask)
    relabelled = masked_cross_entropy(logits, labels.at[4].set(99), mask)
    np.testing.assert_array_equal(masked, relabelled)


def test_masked_cross_entropy_checks_traced_labels_only_under_checked():
    logits = jnp.zeros((3, 2))
    labels, mask = jnp.array([0, -1, 1]), jnp.ones(3, bool)
    loss, _ = jax.jit(masked_cross_entropy)(logits, labels, mask)  # traced: no eager check
    assert np.isfinite(float(loss))
    with pytest.raises(checkify.JaxRuntimeError, match=r"masked_cross_entropy: labels\[1\]=-1 is out of range"):
        jgrad.checked(masked_cross_entropy)(logits, labels, mask)


@pytest.mark.parametrize("criterion", ["window", "patience", "none"])
def test_early_stopping_keeps_the_state_dtypes_for_a_float64_validation_loss(x64, criterion):
    early_stopping = EarlyStopping(criterion, 3)
    _, params = split_model(make_gcn(nnx.Rngs(0)))
    state = TrainState.create(params, make_optimizer(0.01), jax.random.key(0), window=early_stopping.window)
    state = state.replace(step=state.step + 1)
    after = early_stopping.update(state, jnp.float64(0.25), jnp.float64(0.5))
    assert jax.tree.map(lambda x: x.dtype, after) == jax.tree.map(lambda x: x.dtype, state)
    assert float(after.best_val_loss) == 0.25 and float(after.best_val_acc) == 0.5


def test_early_stopping_rejects_an_unknown_criterion():
    with pytest.raises(ValueError, match=r"unknown criterion; got 'val_acc', expected one of"):
        EarlyStopping("val_acc").check()


def test_epoch_steps_scan_over_float64_features(x64):
    # float64 logits give a float64 loss; the scanned state must keep its float32 early-stopping fields.
    data = karate_club()
    data = dataclasses.replace(data, features=jnp.asarray(data.features, jnp.float64))
    model_def, params = split_model(make_gcn(nnx.Rngs(0)))
    early_stopping = EarlyStopping("patience", 3)
    optimizer = make_optimizer(0.01)
    state = TrainState.create(params, optimizer, jax.random.key(0), window=early_stopping.window)
    epoch_step = make_epoch_step(model_def, optimizer, early_stopping)
    final, metrics = jax.jit(lambda s: jax.lax.scan(lambda c, _: epoch_step(c, data), s, None, length=3))(state)
    assert jax.tree.map(lambda x: x.dtype, final) == jax.tree.map(lambda x: x.dtype, state)
    assert metrics["loss"].dtype == metrics["test_loss"].dtype == jnp.float64
    assert int(final.step) == 3 and float(final.best_val_loss) < np.inf


def test_masked_cross_entropy_ignores_non_finite_rows_outside_the_mask():
    """Rows outside the mask do not enter the loss, the accuracy or the gradient, even NaN or infinite
    ones (a product with the mask made them NaN); inside the mask the values are unchanged."""
    logits = jnp.array([[2.0, 0.5], [jnp.nan, 1.0], [0.1, jnp.inf]])
    labels, mask = jnp.array([0, 1, 0]), jnp.array([True, False, False])
    loss, accuracy = masked_cross_entropy(logits, labels, mask)
    expected, _ = masked_cross_entropy(logits[:1], labels[:1], mask[:1])
    assert float(loss) == float(expected) and float(accuracy) == 1.0
    grad = jax.grad(lambda z: masked_cross_entropy(z, labels, mask)[0])(logits)
    assert np.isfinite(np.asarray(grad)).all() and not np.asarray(grad)[1:].any()
