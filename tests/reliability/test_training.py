"""Training never loses finished work: NaN stops, atomic checkpoints, and resume after a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jgrad
from jgrad.train import Checkpointer, EarlyStopping, NonFiniteLossError, fit, make_optimizer

DRIVER = Path(__file__).with_name("train_driver.py")
REPO = Path(__file__).resolve().parents[2]


def _nan_after(step: int) -> optax.GradientTransformation:
    """Passes updates through until ``step`` updates have been made, then returns NaN updates."""

    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(updates, count, params=None):
        poison = jnp.where(count >= step, jnp.nan, 0.0)
        return jax.tree.map(lambda u: u + poison.astype(u.dtype), updates), count + 1

    return optax.GradientTransformation(init, update)


def _karate_fit(workdir, optimizer, epochs=50):
    data = jgrad.data.karate_club()
    return fit(
        lambda rngs: jgrad.nn.GCN(data.n_features, 8, data.n_classes, rngs=rngs),
        data,
        optimizer,
        seeds=2,
        epochs=epochs,
        early_stopping=EarlyStopping("none"),
        log_every=10,
        checkpoint_every=10,
        workdir=workdir,
        progress=False,
    )


def test_nan_loss_stops_the_run_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    # The first 26 updates (epochs 1..26) are fine; the 27th makes the parameters NaN, so the loss of
    # epoch 28 is the first NaN, in the third chunk (epochs 21..30), after the checkpoint of epoch 20.
    optimizer = optax.chain(make_optimizer(0.01), _nan_after(26))
    with pytest.raises(NonFiniteLossError, match=r"the training loss is nan at epoch 28 \(seed 0\); training "
                                                 r"stopped and the last good checkpoint is epoch 20 in "):
        _karate_fit(tmp_path, optimizer)
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    try:
        assert checkpointer.latest_epoch() == 20
        best = checkpointer.restore_best()
        assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(best["params"]))
    finally:
        checkpointer.close()
    logged = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) == 27, "epochs up to the last finite loss are logged, the NaN epoch is not"
    assert not (tmp_path / "results.json").exists()


def test_a_partially_written_checkpoint_is_not_taken_as_valid(tmp_path):
    _karate_fit(tmp_path, make_optimizer(0.01), epochs=20)
    last = tmp_path / "checkpoints" / "last"
    assert sorted(p.name for p in last.iterdir() if not p.name.startswith(".")) == ["20"]
    # What a kill during the save of epoch 30 leaves behind: orbax writes into a temporary folder and
    # renames it only once complete, so the partial save sits in a folder that is not a step.
    partial = last / "30.orbax-checkpoint-tmp-1700000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "_METADATA").write_text('{"truncated": ')
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    try:
        assert checkpointer.latest_epoch() == 20
    finally:
        checkpointer.close()
    resumed = _karate_fit(tmp_path, make_optimizer(0.01), epochs=30)  # resumes from 20, not from the debris
    assert resumed.epochs_run == 30
    assert int(np.max(np.asarray(resumed.state.step))) == 30


def _driver(workdir: Path, pause: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, str(DRIVER), str(workdir), str(pause)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: float = 240) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def _steps(workdir: Path) -> list[int]:
    last = workdir / "checkpoints" / "last"
    return sorted(int(p.name) for p in last.iterdir() if p.name.isdigit()) if last.is_dir() else []


def test_a_run_killed_with_sigkill_resumes_and_matches_an_uninterrupted_run(tmp_path):
    reference_dir, crashed_dir = tmp_path / "reference", tmp_path / "crashed"
    reference = _driver(reference_dir, 0.0)  # runs alongside the doomed one
    doomed = _driver(crashed_dir, 1.0)
    deadline = time.monotonic() + 240
    while not _steps(crashed_dir):
        assert doomed.poll() is None, doomed.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate(timeout=60)
    assert doomed.returncode == -signal.SIGKILL
    killed_at = _steps(crashed_dir)
    assert killed_at and killed_at[-1] < 60, f"the run was not interrupted part-way: {killed_at}"
    assert not (crashed_dir / "results.json").exists() and not (crashed_dir / "final.npz").exists()

    resumed_run = _driver(crashed_dir, 0.0)  # the same command again: resumes from the last checkpoint
    _finish(reference)
    _finish(resumed_run)

    expected, resumed = np.load(reference_dir / "final.npz"), np.load(crashed_dir / "final.npz")
    assert expected.files == resumed.files
    for name in expected.files:
        np.testing.assert_allclose(resumed[name], expected[name], rtol=1e-6, atol=1e-7)
    scores = json.loads((reference_dir / "results.json").read_text())
    resumed_scores = json.loads((crashed_dir / "results.json").read_text())
    for name in ("train_acc", "val_acc", "test_acc", "val_loss", "best_epoch"):
        np.testing.assert_allclose(resumed_scores[name]["per_seed"], scores[name]["per_seed"], rtol=1e-5)
    # The log holds every epoch exactly once: the resumed run replaced what the killed one left after
    # its last checkpoint.
    epochs = [json.loads(line)["epoch"] for line in (crashed_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 60
