"""Run-time reporting: a progress bar with live metrics, a JSON-lines metrics log, atomic JSON writes."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


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

    `truncate` drops epochs after a checkpoint when a run resumes, so the log matches the state.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else Path(path)

    def truncate(self, last_epoch: int) -> None:
        if self.path is None or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["epoch"] <= last_epoch]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def append(self, first_epoch: int, metrics: dict[str, np.ndarray]) -> None:
        """Appends epochs ``first_epoch, first_epoch + 1, ...``; each metric has shape (epochs, B)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        n_epochs = len(next(iter(metrics.values())))
        with open(self.path, "a") as file:
            for i in range(n_epochs):
                record = {"epoch": first_epoch + i}
                record.update({name: np.asarray(values[i]).tolist() for name, values in metrics.items()})
                file.write(json.dumps(record) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as file:
        file.write(text)
    os.replace(tmp, path)


class Progress:
    """A progress bar over epochs with the latest mean loss and accuracies (tqdm, else a stderr line)."""

    def __init__(self, total: int, *, initial: int = 0, enabled: bool = True, description: str = "train"):
        self.enabled = enabled
        self._bar = None
        self._total = total
        self._description = description
        self._done = initial
        if not enabled:
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
        else:
            print(f"\r{self._description} {self._done}/{self._total} {text}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            print(file=sys.stderr)
