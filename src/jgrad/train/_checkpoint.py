"""Orbax checkpoints of a run: the last `TrainState` (to resume) and the best parameters (to evaluate)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ._state import TrainState


class Checkpointer:
    """Saves and restores ``<directory>/last`` (the whole state) and ``<directory>/best`` (best params).

    Each is an orbax `CheckpointManager` keeping one step, the epoch. Orbax writes a step into a
    temporary folder and renames it when complete, so an interrupted save never replaces a good
    checkpoint with a partial one. Saves are synchronous: when `save` returns, the files are on disk.

    PRNG keys are stored as their raw ``uint32`` data and re-wrapped on restore.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False, create=True)
        self._last = ocp.CheckpointManager(self.directory / "last", options=options)
        self._best = ocp.CheckpointManager(self.directory / "best", options=options)

    def latest_epoch(self) -> int | None:
        """The epoch of the last saved state, or None if there is none."""
        return self._last.latest_step()

    def save(self, epoch: int, state: TrainState) -> None:
        """Saves ``state`` as ``last`` and its best parameters and scores as ``best``, both at ``epoch``."""
        self._last.save(epoch, args=ocp.args.StandardSave(_to_savable(state)), force=True)
        self._best.save(epoch, args=ocp.args.StandardSave(_best_part(state)), force=True)
        self._last.wait_until_finished()
        self._best.wait_until_finished()

    def restore_last(self, like: TrainState) -> tuple[int, TrainState]:
        """``(epoch, state)`` of the last save, with the structure, shapes and dtypes of ``like``."""
        epoch = self.latest_epoch()
        if epoch is None:
            raise FileNotFoundError(f"Checkpointer: no checkpoint in {self.directory / 'last'}.")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_savable(like))
        restored = self._last.restore(epoch, args=ocp.args.StandardRestore(abstract))
        return epoch, like.replace(**{**restored, "key": jax.random.wrap_key_data(restored["key"])})

    def restore_best(self, like_params: Any = None) -> dict[str, Any]:
        """The best checkpoint: ``{"params", "best_epoch", "best_val_loss", "best_val_acc"}``.

        Args:
          like_params: parameters with a leading seed axis whose structure the restored ones take;
            without it, orbax's own (dict keys come back as strings).
        """
        epoch = self._best.latest_step()
        if epoch is None:
            raise FileNotFoundError(f"Checkpointer: no checkpoint in {self.directory / 'best'}.")
        if like_params is None:
            return self._best.restore(epoch)
        abstract = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, like_params)}
        batch = jax.tree.leaves(like_params)[0].shape[:1]  # scores carry the seed axis of the params
        abstract.update({name: jax.ShapeDtypeStruct(batch, dtype) for name, dtype in _SCORES.items()})
        return self._best.restore(epoch, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self._last.close()
        self._best.close()


_SCORES = {"best_epoch": np.int32, "best_val_loss": np.float32, "best_val_acc": np.float32}


def _to_savable(state: TrainState) -> dict[str, Any]:
    fields = {name: getattr(state, name) for name in state.__dataclass_fields__}
    fields["key"] = jax.random.key_data(state.key)
    return fields


def _best_part(state: TrainState) -> dict[str, Any]:
    return {"params": state.best_params, **{name: getattr(state, name) for name in _SCORES}}
