"""`TrainState`: everything a training run carries from one epoch to the next, as a pytree."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ._model import Params


@dataclasses.dataclass(frozen=True)
class TrainState:
    """The state of one training run (or of B runs stacked along a leading seed axis), a JAX pytree.

    Attributes:
      params: the model parameters (pure dict from `split_model`).
      opt_state: the optax state of ``params``.
      step: number of optimizer steps taken, int32 scalar.
      key: PRNG key for dropout; split once per step.
      best_params: the parameters early stopping selected so far (see `EarlyStopping`).
      best_val_loss: validation loss of the best epoch so far, float32.
      best_val_acc: validation accuracy of the best epoch so far, float32.
      best_epoch: epoch (1-based) at which ``best_params`` were taken; 0 before the first epoch.
      bad_epochs: epochs since the last improvement (patience criterion), int32.
      stopped: whether early stopping has fired; a stopped run's parameters no longer change.
      stop_epoch: the epoch at which it fired; 0 while running.
      val_loss_window: the last W validation losses (window criterion), a ring buffer of shape (W,).

    Every field is an array, so a batch of runs is the same pytree with a leading axis B on every
    leaf, made with ``jax.vmap(TrainState.create, ...)``, and ``jax.jit(..., donate_argnums=0)`` can
    reuse its buffers.
    """

    params: Params
    opt_state: optax.OptState
    step: jax.Array
    key: jax.Array
    best_params: Params
    best_val_loss: jax.Array
    best_val_acc: jax.Array
    best_epoch: jax.Array
    bad_epochs: jax.Array
    stopped: jax.Array
    stop_epoch: jax.Array
    val_loss_window: jax.Array

    @classmethod
    def create(
        cls, params: Params, optimizer: optax.GradientTransformation, key: jax.Array, *, window: int = 1
    ) -> TrainState:
        """A fresh state: optimizer initialised, step 0, no best epoch yet.

        Args:
          params: initial parameters.
          optimizer: the optax transformation whose ``init`` makes ``opt_state``.
          key: PRNG key for dropout.
          window: length W of the validation-loss window (the window early-stopping criterion).
        """
        return cls(
            params=params,
            opt_state=optimizer.init(params),
            step=jnp.zeros((), jnp.int32),
            key=key,
            best_params=jax.tree.map(jnp.copy, params),  # distinct buffers, so the state can be donated
            best_val_loss=jnp.full((), jnp.inf, jnp.float32),
            best_val_acc=jnp.full((), -jnp.inf, jnp.float32),
            best_epoch=jnp.zeros((), jnp.int32),
            bad_epochs=jnp.zeros((), jnp.int32),
            stopped=jnp.zeros((), bool),
            stop_epoch=jnp.zeros((), jnp.int32),
            val_loss_window=jnp.zeros((max(int(window), 1),), jnp.float32),
        )

    def replace(self, **changes: Any) -> TrainState:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(TrainState)
