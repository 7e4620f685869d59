"""A small training run for the crash tests: ``python train_driver.py WORKDIR [POINT]``.

Trains a GCN on the karate club for 60 epochs over two seeds, with a chunk and a checkpoint every 10
epochs, and writes the final parameters to ``WORKDIR/final.npz``. It prints ``chunk <epoch>`` after each
chunk (so the first line shows where a resumed run started) and, at the end, one JSON line with
``resumed_from_epoch``, ``already_finished`` and ``epochs_run``.

``POINT`` makes the process SIGKILL itself at a precise, dangerous moment (the kill is real: no cleanup,
no ``finally``, no flush), or pause there:

- ``append:E``    during the metrics append of the chunk ending at epoch E, after half its bytes (inside a line).
- ``write:E``     during the checkpoint save of epoch E: ``last/E`` is written, ``best/E`` is not.
- ``manifest:E``  after ``last/E`` and ``best/E`` are written, before the manifest names them.
- ``results``     after the final checkpoint, before ``results.json``.
- ``pause:E``     after the chunk and checkpoint of epoch E: creates ``WORKDIR/paused`` and sleeps
                  (still holding the work directory's lock) until the test kills it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np

import jgrad
from jgrad.train import EarlyStopping, _checkpoint, _fit, _logging, fit, make_optimizer


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(point: str, workdir: Path) -> None:
    kind, _, at = point.partition(":")
    at = int(at) if at else None
    if kind == "append":
        original_append = _logging.MetricsLog.append

        def append(self, first_epoch, metrics):
            n_epochs = len(next(iter(metrics.values())))
            if first_epoch + n_epochs - 1 == at:
                scratch = _logging.MetricsLog(self.path.with_name("scratch.jsonl"))
                original_append(scratch, first_epoch, metrics)
                text = scratch.path.read_bytes()
                scratch.path.unlink()
                cut = len(text) // 2
                while text[cut - 1 : cut] == b"\n":  # a cut right after a line end would tear nothing
                    cut += 1
                with open(self.path, "ab") as file:
                    file.write(text[:cut])
                _die()
            original_append(self, first_epoch, metrics)

        _logging.MetricsLog.append = append
    elif kind == "write":
        original_write = _checkpoint.Checkpointer._write

        def write(self, path, tree):
            if path.parent.name == "best" and path.name == str(at):
                _die()
            original_write(self, path, tree)

        _checkpoint.Checkpointer._write = write
    elif kind == "manifest":
        original_manifest = _checkpoint.Checkpointer._write_manifest

        def write_manifest(self, manifest):
            if manifest["checkpoints"][-1]["epoch"] == at:
                _die()
            original_manifest(self, manifest)

        _checkpoint.Checkpointer._write_manifest = write_manifest
    elif kind == "results":
        original_json = _fit.write_json_atomic

        def write_json(path, payload):
            if Path(path).name == "results.json":
                _die()
            original_json(path, payload)

        _fit.write_json_atomic = write_json
    elif kind != "pause":
        raise SystemExit(f"train_driver: unknown point {point!r}")


def main(workdir: Path, point: str | None) -> None:
    if point:
        _install(point, workdir)
    pause_at = int(point.partition(":")[2]) if point and point.startswith("pause:") else None

    def on_chunk(epoch, state):
        print(f"chunk {epoch}", flush=True)
        if epoch == pause_at:
            (workdir / "paused").touch()
            while True:
                time.sleep(0.05)

    data = jgrad.data.karate_club()
    result = fit(
        lambda rngs: jgrad.nn.GCN(data.n_features, 16, data.n_classes, rngs=rngs),
        data,
        make_optimizer(0.01, 5e-4),
        seeds=2,
        epochs=60,
        early_stopping=EarlyStopping("none"),
        log_every=10,
        checkpoint_every=10,
        workdir=workdir,
        progress=False,
        on_chunk=on_chunk,
    )
    leaves = jax.tree.leaves(jax.device_get(result.state.params))
    np.savez(workdir / "final.npz", *[np.asarray(leaf) for leaf in leaves])
    print(json.dumps({"resumed_from_epoch": result.resumed_from_epoch, "already_finished": result.already_finished,
                      "epochs_run": result.epochs_run, "seconds_per_epoch": result.seconds_per_epoch}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
