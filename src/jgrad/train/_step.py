"""Pure training and evaluation steps: losses, `make_train_step`, `evaluate`, early stopping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._src._checks import is_concrete, label_checks
from ._model import ModelDef, Params
from ._state import TrainState

Metrics = dict[str, jax.Array]
LossFn = Callable[[ModelDef, Params, Any, "jax.Array | None"], tuple[jax.Array, Metrics]]
EARLY_STOPPING = ("window", "patience", "none")


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy and accuracy over the rows where ``mask`` is True.

    Args:
      logits: shape (N, C), float.
      labels: shape (N,), int in ``[0, C)`` where ``mask`` is True (any value elsewhere, e.g. -1).
      mask: shape (N,), bool.

    Returns:
      ``(loss, accuracy)``, scalars computed and returned in the logits' dtype promoted to at least
      float32: float32 for float32, bfloat16 or float16 logits, float64 for float64 logits (under
      ``jax_enable_x64``, e.g. to compare gradients with float64 finite differences). Both are 0 when the
      mask is empty (no NaN, zero gradient).

    Raises:
      ValueError: concrete (not traced) inputs with a label outside ``[0, C)`` where ``mask`` is True
        (e.g. -1); the message names the first such node. Traced labels are checked under
        `jgrad.checked` only.
    """
    n_classes = logits.shape[-1]
    if is_concrete(logits, labels, mask):
        _check_labels("masked_cross_entropy", labels, n_classes, mask)
    else:
        label_checks("masked_cross_entropy", labels, n_classes, mask)
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    weight = mask.astype(dtype)
    count = jnp.maximum(jnp.sum(weight), 1.0)
    zero = jnp.zeros((), dtype)
    # rows outside the mask are replaced before any arithmetic and left out with where, not a product
    # with the mask: they do not enter the loss or its gradient even when they are NaN or infinite (which
    # also tells jgrad.adjacency_grad that the loss does not depend on them)
    logits = jnp.where(mask[:, None], logits.astype(dtype), zero)
    # optax.softmax_cross_entropy_with_integer_labels, bit for bit (in float32 and float64), with a
    # plain gather in place of take_along_axis, whose gradient checkify's index checks cannot process
    # (see jgrad.checked).
    rows = jnp.arange(logits.shape[0])
    losses = jax.nn.logsumexp(logits, axis=-1) - logits[rows, labels]
    hits = (jnp.argmax(logits, axis=-1) == labels).astype(dtype)
    return jnp.sum(jnp.where(mask, losses, zero)) / count, jnp.sum(jnp.where(mask, hits, zero)) / count


def _check_labels(where: str, labels: Any, n_classes: int, mask: Any) -> None:
    """Raises a ValueError naming the first label outside ``[0, n_classes)`` where ``mask`` is True.

    The eager counterpart of `label_checks` (a debug check, which runs under `jgrad.checked` only).
    """
    labels = np.asarray(labels)
    bad = np.asarray(mask, bool) & ((labels < 0) | (labels >= n_classes))
    if bad.any():
        node = int(np.flatnonzero(bad)[0])
        label = np.broadcast_to(labels, bad.shape).reshape(-1)[node]
        raise ValueError(f"{where}: labels must be in [0, {n_classes}) where mask is True; got {label} at node {node}.")


def node_classification_loss(
    model_def: ModelDef, params: Params, batch: Any, key: jax.Array | None
) -> tuple[jax.Array, Metrics]:
    """Cross-entropy over ``batch.train_mask`` of ``model(batch.graph, batch.features, key=key)``.

    ``batch`` is a `jgrad.data.NodeDataset` (or anything with ``graph``, ``features``, ``labels`` and
    ``train_mask``). Returns ``(loss, {"loss", "acc"})``; dropout is active because ``key`` is passed.
    """
    logits = model_def.apply(params, batch.graph, batch.features, key=key)
    loss, acc = masked_cross_entropy(logits, batch.labels, batch.train_mask)
    return loss, {"loss": loss, "acc": acc}


def make_train_step(
    model_def: ModelDef,
    optimizer: optax.GradientTransformation,
    *,
    loss_fn: LossFn = node_classification_loss,
) -> Callable[[TrainState, Any], tuple[TrainState, Metrics]]:
    """The pure function ``train_step(state, batch) -> (state, metrics)`` for one optimizer step.

    It splits ``state.key`` for dropout, differentiates ``loss_fn(model_def, params, batch, key)``,
    applies ``optimizer`` and increments ``state.step``. It neither jits nor vmaps itself: the caller
    does, typically ``jax.jit(train_step, donate_argnums=0)``, or ``jax.vmap(train_step, (0, None))``
    for several seeds sharing one batch.

    Args:
      model_def: from `split_model` / `init_params`.
      optimizer: the optax transformation that made ``state.opt_state``.
      loss_fn: ``(model_def, params, batch, key) -> (loss, metrics)``; the default is
        `node_classification_loss`.

    Returns:
      ``train_step``; its metrics are ``loss_fn``'s (``loss`` is the training loss with dropout, without
      the weight-decay penalty).

    Example:
      >>> import jax
      >>> from flax import nnx
      >>> from jgrad.train import TrainState, make_optimizer, make_train_step, split_model
      >>> # step = jax.jit(make_train_step(model_def, optimizer), donate_argnums=0)
    """

    def train_step(state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
        key, dropout_key = jax.random.split(state.key)
        grad_fn = jax.value_and_grad(lambda p: loss_fn(model_def, p, batch, dropout_key), has_aux=True)
        (_, metrics), grads = grad_fn(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1, key=key), metrics

    return train_step


def evaluate(model_def: ModelDef, params: Params, dataset: Any) -> Metrics:
    """Loss and accuracy on the train, validation and test nodes, without dropout.

    Args:
      model_def: from `split_model`.
      params: one parameter set (``jax.vmap`` this function for a batch of seeds).
      dataset: a `jgrad.data.NodeDataset` (pytree; may be passed into ``jax.jit``).

    Returns:
      ``{"train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"}``, scalars in
      `masked_cross_entropy`'s dtype (float32, or float64 for float64 logits); an empty mask gives 0 for
      its loss and accuracy.
    """
    logits = model_def.apply(params, dataset.graph, dataset.features)
    metrics = {}
    for split in ("train", "val", "test"):
        loss, acc = masked_cross_entropy(logits, dataset.labels, getattr(dataset, f"{split}_mask"))
        metrics[f"{split}_loss"], metrics[f"{split}_acc"] = loss, acc
    return metrics


class EarlyStopping(NamedTuple):
    """When to stop and which parameters to keep, judged on each epoch's validation loss and accuracy.

    Criteria:
      - ``"window"`` (Kipf & Welling, GCN): stop once W previous validation losses exist and this
        epoch's loss exceeds their mean, W = ``patience``. The parameters kept are those of the last
        epoch run (the stopping epoch included), as in the GCN reference code.
      - ``"patience"`` (Veličković et al., GAT): an epoch improves if its validation accuracy is >= the
        best so far *or* its loss is <= the lowest so far; it is kept if both hold. Stop after
        ``patience`` epochs in a row without improvement. The kept parameters are the best ones.
      - ``"none"``: never stop; keep the parameters of the lowest validation loss.

    With an empty validation mask (loss and accuracy 0 every epoch) no criterion stops and the last
    parameters are kept. Under ``jax.vmap`` each seed stops on its own: `make_epoch_step` freezes a
    stopped seed's whole state while the others run on.
    """

    criterion: str = "window"
    patience: int = 10

    def check(self) -> EarlyStopping:
        """Returns self, or raises ValueError naming a bad criterion or patience."""
        if self.criterion not in EARLY_STOPPING:
            raise ValueError(
                f"EarlyStopping: unknown criterion; got {self.criterion!r}, expected one of {EARLY_STOPPING}."
            )
        if int(self.patience) < 1:
            raise ValueError(f"EarlyStopping: patience must be >= 1; got {self.patience}.")
        return self

    @property
    def window(self) -> int:
        """Length of the validation-loss buffer `TrainState` needs."""
        return int(self.patience) if self.criterion == "window" else 1

    def update(self, state: TrainState, val_loss: jax.Array, val_acc: jax.Array) -> TrainState:
        """The state after an epoch whose model (``state.params``) scored ``val_loss`` / ``val_acc``.

        Both are cast to the dtypes of ``state.best_val_loss`` / ``best_val_acc`` (float32), so that the
        state keeps its dtypes when `masked_cross_entropy` returns float64 (float64 logits under x64).
        """
        val_loss = jnp.asarray(val_loss, state.best_val_loss.dtype)
        val_acc = jnp.asarray(val_acc, state.best_val_acc.dtype)
        epoch = state.step
        if self.criterion == "window":
            size = state.val_loss_window.shape[0]
            full = epoch > size
            worse = full & (val_loss > jnp.mean(state.val_loss_window))
            slot = (epoch - 1) % size
            return state.replace(
                best_params=state.params,
                best_val_loss=val_loss,
                best_val_acc=val_acc,
                best_epoch=epoch,
                stopped=worse,
                stop_epoch=jnp.where(worse, epoch, 0),
                val_loss_window=state.val_loss_window.at[slot].set(val_loss),
            )
        if self.criterion == "patience":
            improved = (val_acc >= state.best_val_acc) | (val_loss <= state.best_val_loss)
            keep = (val_acc >= state.best_val_acc) & (val_loss <= state.best_val_loss)
            bad_epochs = jnp.where(improved, 0, state.bad_epochs + 1)
            stop = bad_epochs >= self.patience
            return state.replace(
                best_params=_select(keep, state.params, state.best_params),
                best_epoch=jnp.where(keep, epoch, state.best_epoch),
                best_val_loss=jnp.where(improved, jnp.minimum(val_loss, state.best_val_loss), state.best_val_loss),
                best_val_acc=jnp.where(improved, jnp.maximum(val_acc, state.best_val_acc), state.best_val_acc),
                bad_epochs=bad_epochs,
                stopped=stop,
                stop_epoch=jnp.where(stop, epoch, 0),
            )
        keep = val_loss <= state.best_val_loss
        return state.replace(
            best_params=_select(keep, state.params, state.best_params),
            best_epoch=jnp.where(keep, epoch, state.best_epoch),
            best_val_loss=jnp.where(keep, val_loss, state.best_val_loss),
            best_val_acc=jnp.where(keep, val_acc, state.best_val_acc),
        )


def _select(condition: jax.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), on_true, on_false)


def make_epoch_step(
    model_def: ModelDef,
    optimizer: optax.GradientTransformation,
    early_stopping: EarlyStopping,
    *,
    loss_fn: LossFn = node_classification_loss,
    penalty: Callable[[Params], jax.Array] | None = None,
) -> Callable[[TrainState, Any], tuple[TrainState, Metrics]]:
    """One full-batch epoch: `make_train_step`, then `evaluate`, then ``early_stopping.update``.

    With ``penalty`` (e.g. `l2_penalty`), early stopping judges ``val_loss + penalty(params)``, as the
    reference GCN code does; the reported ``val_loss`` stays the plain cross-entropy.

    Returns ``epoch_step(state, dataset) -> (state, metrics)``, pure. A state that has already stopped
    comes back unchanged (parameters, optimizer state, step and key all frozen), so vmapping over seeds
    lets each seed stop at its own epoch while the batch runs until every seed has stopped. ``metrics``
    holds the training-step metrics (``loss``, ``acc``, with dropout), `evaluate`'s metrics of the new
    parameters, and ``stopped``.
    """
    train_step = make_train_step(model_def, optimizer, loss_fn=loss_fn)

    def epoch_step(state: TrainState, dataset: Any) -> tuple[TrainState, Metrics]:
        new_state, step_metrics = train_step(state, dataset)
        metrics = evaluate(model_def, new_state.params, dataset)
        monitored = metrics["val_loss"] if penalty is None else metrics["val_loss"] + penalty(new_state.params)
        new_state = early_stopping.update(new_state, monitored, metrics["val_acc"])
        new_state = jax.tree.map(lambda old, new: jnp.where(state.stopped, old, new), state, new_state)
        return new_state, {**step_metrics, **metrics, "stopped": new_state.stopped}

    return epoch_step
