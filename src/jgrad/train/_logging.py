"""Run-time reporting: a progress bar with live metrics, a JSON-lines metrics log, atomic JSON writes."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("jgrad.train")


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Writes ``payload`` as JSON to ``path`` through a temporary file and ``os.replace`` (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(payload, file, indent=2, default=_to_builtin)
            file.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _to_builtin(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class MetricsLog:
    """``metrics.jsonl``: one JSON object per epoch, ``{"epoch": e, "<metric>": [one value per seed]}``.

    Appends are not atomic: a process killed (or a disk filled) during `append` can leave a torn last
    line. Each checkpoint records the log's size (`size`) after the epochs it covers, and a resuming run
    calls `restore`, which cuts the log back to exactly those epochs, so a torn line or epochs trained
    after the checkpoint never survive into the resumed log.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else Path(path)

    def size(self) -> int:
        """The log's size in bytes (0 if it does not exist)."""
        try:
            return 0 if self.path is None else self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def restore(self, last_epoch: int, size: int | None = None) -> None:
        """Makes the log hold exactly epochs ``1..last_epoch``, once each.

        Cuts the file back to ``size`` bytes (what a checkpoint recorded) when it is at least that long,
        and checks the result. If the check fails (the file was shorter, edited or damaged), it keeps
        the readable records of epochs ``<= last_epoch`` (the last one of each epoch) and warns how many
        lines it dropped or which epochs are missing.

        Args:
          last_epoch: the epoch of the checkpoint the run resumes from (0 for a fresh start).
          size: the log's size recorded with that checkpoint; None to rely on the check alone.
        """
        if self.path is None or not self.path.exists():
            if last_epoch and self.path is not None:
                logger.warning("%s is missing; epochs 1..%d will be absent from the log.", self.path, last_epoch)
            return
        if size is not None and self.size() >= size:
            os.truncate(self.path, size)
        data = self.path.read_bytes()
        epochs, kept, lines = [], {}, 0
        for line in data.decode("utf-8", "replace").split("\n"):
            if not line.strip():
                continue
            lines += 1
            try:
                record = json.loads(line)
                epoch = record["epoch"]
            except (ValueError, TypeError, KeyError):
                continue
            epochs.append(epoch)
            if isinstance(epoch, int) and 1 <= epoch <= last_epoch:
                kept[epoch] = line
        if epochs == list(range(1, last_epoch + 1)) and (not data or data.endswith(b"\n")):
            return
        write_text_atomic(self.path, "".join(kept[e] + "\n" for e in sorted(kept)))
        missing = sorted(set(range(1, last_epoch + 1)) - set(kept))
        logger.warning("%s: repaired for a resume from epoch %d: dropped %d damaged, duplicate or later "
                       "line(s)%s.", self.path, last_epoch, lines - len(kept),
                       f"; {len(missing)} epoch(s) missing: {', '.join(map(str, missing[:5]))}"
                       f"{', ...' if len(missing) > 5 else ''}" if missing else "")

    def truncate(self, last_epoch: int) -> None:
        """Drops epochs after ``last_epoch`` (`restore` without a recorded size)."""
        self.restore(last_epoch)

    def append(self, first_epoch: int, metrics: dict[str, np.ndarray]) -> None:
        """Appends epochs ``first_epoch, first_epoch + 1, ...``; each metric has shape (epochs, B)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        n_epochs = len(next(iter(metrics.values())))
        lines = []
        for i in range(n_epochs):
            record = {"epoch": first_epoch + i}
            record.update({name: np.asarray(values[i]).tolist() for name, values in metrics.items()})
            lines.append(json.dumps(record) + "\n")
        try:
            with open(self.path, "a") as file:
                file.write("".join(lines))
        except OSError as error:
            raise OSError(f"MetricsLog: cannot append epochs {first_epoch}..{first_epoch + n_epochs - 1} to "
                          f"{self.path}; got {error.strerror or error}. A resumed run cuts the log back to its "
                          "checkpoint.") from None


def write_text_atomic(path: Path, text: str) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as file:
        file.write(text)
    os.replace(tmp, path)


class Progress:
    """A progress bar over epochs with the latest mean loss and accuracies on a terminal or in a notebook
    (tqdm, else a status line); where stderr is neither (a log file, a pipe), one plain line per tenth
    of the run instead of carriage-return updates."""

    def __init__(self, total: int, *, initial: int = 0, enabled: bool = True, description: str = "train"):
        self.enabled = enabled
        self._bar = None
        self._total = total
        self._description = description
        self._done = initial
        # a terminal, or a notebook (whose stderr is no terminal but shows tqdm's widget)
        self._interactive = getattr(sys.stderr, "isatty", lambda: False)() or "ipykernel" in sys.modules
        self._next_line = initial  # the epoch count at which the next plain line is due
        if not enabled or not self._interactive:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is a dependency, but a bare environment still gets a status line
            return
        self._bar = tqdm(total=total, initial=initial, desc=description, unit="epoch", file=sys.stderr,
                         dynamic_ncols=True, leave=False)

    def update(self, n_epochs: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._done += n_epochs
        text = " ".join(f"{name}={value:.4f}" for name, value in values.items())
        if self._bar is not None:
            self._bar.update(n_epochs)
            self._bar.set_postfix_str(text, refresh=True)
        elif self._interactive:
            print(f"\r{self._description} {self._done}/{self._total} {text}", end="", file=sys.stderr, flush=True)
        elif self._done >= self._next_line or self._done >= self._total:
            print(f"{self._description} {self._done}/{self._total} {text}", file=sys.stderr, flush=True)
            self._next_line = self._done + max(1, self._total // 10)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        elif self._interactive:
            print(file=sys.stderr)
