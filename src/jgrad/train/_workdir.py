"""A run's work directory: one writer at a time (an OS file lock), and fingerprints for the resume check."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

logger = logging.getLogger("jgrad.train")

try:
    import fcntl
except ImportError:  # not POSIX: no lock, everything else works
    fcntl = None

LOCK_NAME = ".lock"

# Locks this process holds, by workdir: (open lock file, how many nested `lock_workdir` hold it).
# flock belongs to an open file, so a second open() of the same file in this process would conflict.
_held: dict[Path, list[Any]] = {}


class WorkdirBusyError(OSError):
    """Another process is writing to the work directory (it holds ``<workdir>/.lock``)."""


@contextlib.contextmanager
def lock_workdir(workdir: str | os.PathLike, *, where: str = "fit") -> Iterator[Path]:
    """Holds an exclusive lock on ``workdir`` (created if missing) while the block runs.

    The lock is ``flock`` on ``<workdir>/.lock``: the operating system releases it when the holder exits,
    however it exits, so a killed run never blocks the run that resumes it. Nested use in one process is
    allowed; a second process gets `WorkdirBusyError` at once instead of waiting.

    Args:
      workdir: the work directory.
      where: the name the error message starts with.

    Yields:
      The absolute path of ``workdir``.

    Raises:
      WorkdirBusyError: another process holds the lock; the message names the directory and its pid.
    """
    path = Path(workdir).absolute()
    path.mkdir(parents=True, exist_ok=True)
    if path in _held:
        _held[path][1] += 1
    else:
        file = open(path / LOCK_NAME, "a+")
        if fcntl is not None:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                holder = file.read().strip() or "unknown"
                file.close()
                raise WorkdirBusyError(
                    f"{where}: another process (pid {holder}) is training in {path}; got a second writer, "
                    f"expected one at a time. Wait for it to finish or use another workdir.") from None
            except OSError as error:  # a file system without locks (some network mounts): go on unlocked
                logger.warning("%s: cannot lock %s (%s); a second writer would not be refused.",
                               where, path / LOCK_NAME, error)
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        _held[path] = [file, 1]
    try:
        yield path
    finally:
        _held[path][1] -= 1
        if not _held[path][1]:
            _held.pop(path)[0].close()  # closing the file releases the lock


def fingerprint(tree: Any) -> str:
    """A SHA-256 hex digest of a pytree's structure, array shapes, dtypes and values (host copies)."""
    digest = hashlib.sha256()
    leaves, treedef = jax.tree.flatten(tree)
    digest.update(str(treedef).encode())
    for leaf in leaves:
        array = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def signature(tree: Any) -> str:
    """A SHA-256 hex digest of a pytree's structure, shapes and dtypes (not values)."""
    leaves, treedef = jax.tree.flatten(tree)
    text = str(treedef) + "".join(f"{leaf.dtype}{tuple(leaf.shape)}" for leaf in leaves)
    return hashlib.sha256(text.encode()).hexdigest()
