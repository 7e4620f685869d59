"""Checkpoints of a run: the last `TrainState` (to resume) and the best parameters (to evaluate).

Layout of a checkpoint directory::

    last/<epoch>/     the whole TrainState (orbax)
    best/<epoch>/     best_params and the best_* scores (orbax)
    manifest.json     the checkpoints that count: epoch, size and SHA-256 of every file, run information

A save writes ``last/<epoch>`` and ``best/<epoch>``, then replaces ``manifest.json`` (write to a temporary
file, fsync, rename), and only then deletes checkpoints the new manifest no longer names. The manifest is
the single commit point, so ``last`` and ``best`` always move together, and a process killed anywhere
leaves the previous manifest and every checkpoint it names intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ._state import TrainState

MANIFEST = "manifest.json"
_ORBAX_TMP = ".orbax-checkpoint-tmp"  # the suffix of the folder orbax writes a save into before renaming it
_FORMAT = 1
logger = logging.getLogger("jgrad.train")


class CheckpointError(ValueError):
    """A checkpoint directory holds no intact checkpoint, or an unreadable manifest."""


class Checkpointer:
    """Saves, verifies and restores the checkpoints of one run (see the module docstring for the layout).

    Every load checks each file of the checkpoint against the size and SHA-256 the manifest recorded. A
    damaged checkpoint (a changed byte, a truncated or deleted file) is skipped with a warning on the
    ``jgrad.train`` logger that names the file, and the newest intact one is used instead; the newest
    ``keep`` checkpoints stay on disk for that. Saves are synchronous: when `save` returns, the files and
    the manifest are on disk.

    Only one process may save into a directory at a time; `fit` ensures that with `lock_workdir`.
    PRNG keys are stored as their raw ``uint32`` data and re-wrapped on restore.

    Args:
      directory: the checkpoint directory, created on the first save.
      keep: how many checkpoints to keep (>= 2, so that a damaged newest one has a fallback).
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2):
        if keep < 2:
            raise ValueError(f"Checkpointer: keep must be >= 2; got {keep}, expected a fallback checkpoint.")
        self.directory = Path(directory).absolute()
        self.keep = keep
        self._io = ocp.Checkpointer(ocp.StandardCheckpointHandler())
        self._problems: dict[int, str | None] = {}  # epoch -> what is wrong with it (None: intact)
        self._warned: set[int] = set()

    # ---- reading ----------------------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """The manifest's checkpoints, oldest first: ``{"epoch", "files", "info"}``; [] without a manifest.

        Raises:
          CheckpointError: the manifest exists but cannot be read.
        """
        path = self.directory / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as error:
            raise CheckpointError(f"Checkpointer: {path} is unreadable ({error}); "
                                  "expected the JSON manifest jgrad writes.") from None
        entries = manifest.get("checkpoints") if isinstance(manifest, dict) else None
        if not (isinstance(entries, list) and manifest.get("format") == _FORMAT and all(
                isinstance(e, dict) and isinstance(e.get("epoch"), int) and isinstance(e.get("files"), dict)
                for e in entries)):
            raise CheckpointError(f"Checkpointer: {path} is not a jgrad checkpoint manifest; got "
                                  f"{json.dumps(manifest)[:60]}, expected format {_FORMAT} with a list of "
                                  "checkpoints.")
        return sorted(entries, key=lambda e: e["epoch"])

    def problem(self, entry: dict[str, Any]) -> str | None:
        """What is wrong with a checkpoint's files (the first bad file), or None if all are intact."""
        epoch = entry["epoch"]
        if epoch not in self._problems:
            self._problems[epoch] = _check_files(self.directory, entry["files"])
        return self._problems[epoch]

    def check(self, epoch: int) -> str | None:
        """Re-reads the files of the checkpoint of ``epoch``: None if intact, else what is wrong."""
        for entry in self.entries():
            if entry["epoch"] == epoch:
                self._problems.pop(epoch, None)
                return self.problem(entry)
        return f"{self.directory / MANIFEST} names no checkpoint of epoch {epoch}"

    def latest(self) -> dict[str, Any] | None:
        """The newest intact checkpoint's manifest entry, or None if the manifest names none.

        Newer damaged checkpoints are skipped with a warning naming the bad file.

        Raises:
          CheckpointError: every checkpoint is damaged (the message names each bad file), or the
            manifest is unreadable.
        """
        entries = self.entries()
        bad = []
        for entry in reversed(entries):
            problem = self.problem(entry)
            if problem is None:
                for epoch, text in bad:
                    if epoch not in self._warned:
                        self._warned.add(epoch)
                        logger.warning("checkpoint of epoch %d is damaged: %s; using epoch %d instead.",
                                       epoch, text, entry["epoch"])
                return entry
            bad.append((entry["epoch"], problem))
        if bad:
            listing = "; ".join(f"epoch {epoch}: {text}" for epoch, text in bad)
            raise CheckpointError(f"Checkpointer: no intact checkpoint in {self.directory}; got {listing}. "
                                  "Delete the directory to start the run again.")
        return None

    def latest_epoch(self) -> int | None:
        """The epoch of the newest intact checkpoint, or None if there is none (see `latest`)."""
        entry = self.latest()
        return None if entry is None else entry["epoch"]

    def restore_last(self, like: TrainState) -> tuple[int, TrainState]:
        """``(epoch, state)`` of the newest intact checkpoint, with the structure, shapes and dtypes of ``like``.

        Raises:
          FileNotFoundError: there is no checkpoint.
          CheckpointError: no checkpoint is intact, or it does not fit ``like``.
        """
        epoch = self._epoch("last")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_savable(like))
        restored = self._restore(self.directory / "last" / str(epoch), abstract)
        return epoch, like.replace(**{**restored, "key": jax.random.wrap_key_data(restored["key"])})

    def restore_best(self, like_params: Any = None) -> dict[str, Any]:
        """The best part of the newest intact checkpoint: ``{"params", "best_epoch", "best_val_loss", "best_val_acc"}``.

        Args:
          like_params: parameters with a leading seed axis whose structure the restored ones take;
            without it, orbax's own (dict keys come back as strings).

        Raises:
          FileNotFoundError: there is no checkpoint.
          CheckpointError: no checkpoint is intact, or it does not fit ``like_params``.
        """
        path = self.directory / "best" / str(self._epoch("best"))
        if like_params is None:
            return self._restore(path, None)
        abstract = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, like_params)}
        batch = jax.tree.leaves(like_params)[0].shape[:1]  # scores carry the seed axis of the params
        abstract.update({name: jax.ShapeDtypeStruct(batch, dtype) for name, dtype in _SCORES.items()})
        return self._restore(path, abstract)

    def _epoch(self, part: str) -> int:
        entry = self.latest()
        if entry is None:
            raise FileNotFoundError(f"Checkpointer: no checkpoint in {self.directory / part} "
                                    f"({self.directory / MANIFEST} names none).")
        return entry["epoch"]

    def _restore(self, path: Path, abstract: Any) -> Any:
        try:
            if abstract is None:
                return self._io.restore(path)
            return self._io.restore(path, args=ocp.args.StandardRestore(abstract))
        except Exception as error:  # orbax/tensorstore errors span many lines and name no file
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"Checkpointer: cannot restore {path}; got {type(error).__name__}: {first}, "
                                  "expected a checkpoint of this model, optimizer and seeds.") from None

    # ---- writing ----------------------------------------------------------------------------------

    def save(self, epoch: int, state: TrainState, **info: Any) -> None:
        """Saves ``state`` as ``last/<epoch>`` and its best parameters and scores as ``best/<epoch>``.

        Then commits both in one step by replacing the manifest, and deletes the checkpoints beyond the
        newest ``keep`` (and any left by interrupted saves). Checkpoints at or after ``epoch`` that the
        manifest named before (a damaged one the run fell back from) are replaced.

        Args:
          epoch: the epoch the state has finished.
          state: the `TrainState` (B seeds stacked).
          **info: JSON-serialisable facts about the run, stored with the checkpoint (see `fit`).

        Raises:
          OSError: a file could not be written (a full disk, ...); the message names it, and the
            manifest still names the previous checkpoints.
        """
        self._write(self.directory / "last" / str(epoch), _to_savable(state))
        self._write(self.directory / "best" / str(epoch), _best_part(state))
        files = {}
        for part in ("last", "best"):
            root = self.directory / part / str(epoch)
            for file in sorted(p for p in root.rglob("*") if p.is_file()):
                files[file.relative_to(self.directory).as_posix()] = [file.stat().st_size, _sha256(file)]
        entry = {"epoch": int(epoch), "files": files, "info": info}
        older = [e for e in self.entries() if e["epoch"] < epoch]
        kept = (older + [entry])[-self.keep:]
        self._write_manifest({"format": _FORMAT, "checkpoints": kept})
        self._problems[int(epoch)] = None
        self._remove_unlisted({e["epoch"] for e in kept})

    def _write(self, path: Path, tree: dict[str, Any]) -> None:
        # A save cut short (Ctrl-C, SIGTERM, SIGKILL) can leave orbax's temporary folder for ``path``. No
        # manifest names it, and this process holds the workdir, so it is removed here, as orbax would
        # remove it (with a warning on every resume) before writing the same folder again.
        for leftover in path.parent.glob(f"{path.name}{_ORBAX_TMP}*") if path.parent.is_dir() else ():
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        try:
            self._io.save(path, args=ocp.args.StandardSave(tree), force=True)
        except Exception as error:  # a full disk surfaces as a long tensorstore error naming no file
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            raise OSError(f"Checkpointer: cannot write {path}; got {type(error).__name__}: {first}. "
                          f"The previous checkpoints in {self.directory / MANIFEST} are unchanged.") from None

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{MANIFEST}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as file:
                json.dump(manifest, file, indent=1)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.directory / MANIFEST)
        except BaseException as error:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if isinstance(error, OSError):
                raise OSError(f"Checkpointer: cannot write {self.directory / MANIFEST}; got {error.strerror or error}. "
                              "The previous manifest is unchanged.") from None
            raise
        _fsync_directory(self.directory)

    def _remove_unlisted(self, epochs: set[int]) -> None:
        for part in ("last", "best"):
            root = self.directory / part
            for child in root.iterdir() if root.is_dir() else ():
                if not (child.name.isdigit() and int(child.name) in epochs):
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        self._problems = {e: p for e, p in self._problems.items() if e in epochs}

    def close(self) -> None:
        self._io.close()


_SCORES = {"best_epoch": np.int32, "best_val_loss": np.float32, "best_val_acc": np.float32}


def has_unlisted_checkpoints(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds checkpoint folders but no manifest (an older jgrad, or a first save cut short)."""
    directory = Path(directory)
    return not (directory / MANIFEST).exists() and any(
        (directory / part).is_dir() and any((directory / part).iterdir()) for part in ("last", "best"))


def _check_files(directory: Path, files: dict[str, Any]) -> str | None:
    for name, (size, digest) in files.items():
        path = directory / name
        if not path.is_file():
            return f"{path} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{path} has {actual} bytes, expected {size} (truncated or overwritten)"
        if _sha256(path) != digest:
            return f"{path} fails its SHA-256 checksum (its bytes changed after the save)"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_directory(path: Path) -> None:
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:  # platforms that cannot open directories
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _to_savable(state: TrainState) -> dict[str, Any]:
    fields = {name: getattr(state, name) for name in state.__dataclass_fields__}
    fields["key"] = jax.random.key_data(state.key)
    return fields


def _best_part(state: TrainState) -> dict[str, Any]:
    return {"params": state.best_params, **{name: getattr(state, name) for name in _SCORES}}
