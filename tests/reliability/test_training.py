"""Work directories survive anything: real SIGKILLs at the dangerous points, damaged checkpoints, a second
writer, changed data and NaN losses all end in a resumable run or a one-line error naming the problem."""

from __future__ import annotations

import json
import logging
import os
import shutil
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
from jgrad.config import load_config
from jgrad.train import (CheckpointError, Checkpointer, EarlyStopping, NonFiniteLossError, WorkdirBusyError,
                         evaluate_checkpoint, fit, make_optimizer)

DRIVER = Path(__file__).with_name("train_driver.py")
REPO = Path(__file__).resolve().parents[2]
KARATE = jgrad.data.karate_club()


# ---- real SIGKILLs: one chain of driver processes in one work directory, checked several ways ----

def _start(workdir: Path, point: str | None = None, cache: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), JAX_PLATFORMS="cpu")
    if cache is not None:  # later processes load the first one's executables: 4 s of CPU each instead of 12
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return subprocess.Popen([sys.executable, str(DRIVER), str(workdir)] + ([point] if point else []), env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _snapshot(workdir: Path, process: subprocess.Popen, output: str) -> dict:
    checkpoints = workdir / "checkpoints"
    path = checkpoints / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    chunks = [int(line.split()[1]) for line in output.splitlines() if line.startswith("chunk ")]
    return {
        "rc": process.returncode,
        "output": output,
        "first_chunk": chunks[0] if chunks else None,
        "manifest": [entry["epoch"] for entry in manifest.get("checkpoints", [])],
        "finished": [entry["info"]["finished"] for entry in manifest.get("checkpoints", [])],
        "last": sorted(p.name for p in (checkpoints / "last").iterdir()) if (checkpoints / "last").is_dir() else [],
        "best": sorted(p.name for p in (checkpoints / "best").iterdir()) if (checkpoints / "best").is_dir() else [],
        "log": (workdir / "metrics.jsonl").read_bytes() if (workdir / "metrics.jsonl").exists() else b"",
        "results": (workdir / "results.json").exists(),
    }


def _run(workdir: Path, point: str | None, cache: Path) -> dict:
    process = _start(workdir, point, cache)
    output, _ = process.communicate(timeout=300)
    return _snapshot(workdir, process, output)


def _kill_chain(root: Path) -> tuple[dict, Path]:
    """Runs the chain in ``root/crashed``: ``({point: snapshot after that process}, workdir)``."""
    workdir, cache = root / "crashed", root / "jax_cache"
    stages = {}
    for point in ("append:20", "write:30", "manifest:40"):
        stages[point] = _run(workdir, point, cache)
    # A writer paused after its checkpoint of epoch 40, holding the lock: a second writer must be refused.
    paused = _start(workdir, "pause:40", cache)
    deadline = time.monotonic() + 300
    while not (workdir / "paused").exists():
        assert paused.poll() is None and time.monotonic() < deadline, paused.communicate()[0][-3000:]
        time.sleep(0.05)
    log_before = (workdir / "metrics.jsonl").read_bytes()
    try:
        _karate_fit(workdir, make_optimizer(0.01, 5e-4), epochs=60)
        second_writer = None
    except WorkdirBusyError as error:
        second_writer = str(error)
    unchanged = (workdir / "metrics.jsonl").read_bytes() == log_before
    paused.send_signal(signal.SIGKILL)
    stages["pause:40"] = {**_snapshot(workdir, paused, paused.communicate(timeout=60)[0]),
                          "second_writer": second_writer, "log_unchanged": unchanged, "pid": paused.pid}
    for point in ("append:50", "manifest:60", "results", None):
        stages[point] = _run(workdir, point, cache)
    return stages, workdir


def test_a_run_sigkilled_at_every_dangerous_point_resumes_each_time_to_the_uninterrupted_result(tmp_path, trained):
    """A 60-epoch run killed at each dangerous point in turn and resumed each time (see train_driver.py).

    The chain of eight processes is one test, so that it runs once (pytest-xdist would start it again on
    each worker that gets one of several tests sharing it). Every check below runs, and the failure of one
    does not hide the others.
    """
    stages, workdir = _kill_chain(tmp_path)
    killed_runs = {"stages": stages, "order": list(stages), "workdir": workdir, "reference": trained[0]}
    checks = [
        (_sigkill_during_the_metrics_append_resumes_with_each_epoch_logged_once, "append:20"),
        (_sigkill_during_the_metrics_append_resumes_with_each_epoch_logged_once, "append:50"),
        (_sigkill_during_a_checkpoint_write_resumes_from_the_previous_checkpoint,),
        (_sigkill_between_the_saves_and_the_manifest_keeps_last_and_best_together, "manifest:40"),
        (_sigkill_between_the_saves_and_the_manifest_keeps_last_and_best_together, "manifest:60"),
        (_a_second_writer_is_refused_and_a_killed_writer_does_not_block_the_resume,),
        (_sigkill_before_results_json_finishes_without_training_again,),
        (_a_run_killed_at_every_dangerous_point_ends_identical_to_an_uninterrupted_run,),
    ]
    failures = []
    for check, *args in checks:
        try:
            check(killed_runs, *args)
        except (AssertionError, pytest.fail.Exception) as error:  # pytest.raises fails with the latter
            failures.append(f"{check.__name__.strip('_')}{tuple(args) if args else ''}: {error}")
    assert not failures, "\n\n".join(failures)


def _next(killed_runs, point):
    order = killed_runs["order"]
    return killed_runs["stages"][order[order.index(point) + 1]]


def _sigkill_during_the_metrics_append_resumes_with_each_epoch_logged_once(killed_runs, point):
    stage = killed_runs["stages"][point]
    assert stage["rc"] == -signal.SIGKILL, stage["output"][-3000:]
    torn = stage["log"].rsplit(b"\n", 1)[-1]
    assert torn, "the kill left a torn last line"
    with pytest.raises(ValueError):
        json.loads(torn)
    resumed = _next(killed_runs, point)
    assert resumed["first_chunk"] == stage["manifest"][-1] + 10, resumed["output"][-3000:]
    final = killed_runs["stages"][None]["log"]
    assert final == (killed_runs["reference"] / "metrics.jsonl").read_bytes()
    assert [json.loads(line)["epoch"] for line in final.splitlines()] == list(range(1, 61))


def _sigkill_during_a_checkpoint_write_resumes_from_the_previous_checkpoint(killed_runs):
    stage = killed_runs["stages"]["write:30"]
    assert stage["rc"] == -signal.SIGKILL, stage["output"][-3000:]
    assert "30" in stage["last"] and "30" not in stage["best"], "killed between the last and best writes"
    assert stage["manifest"][-1] == 20
    assert _next(killed_runs, "write:30")["first_chunk"] == 30


def _sigkill_between_the_saves_and_the_manifest_keeps_last_and_best_together(killed_runs, point):
    stage = killed_runs["stages"][point]
    epoch = int(point.split(":")[1])
    assert stage["rc"] == -signal.SIGKILL, stage["output"][-3000:]
    assert str(epoch) in stage["last"] and str(epoch) in stage["best"]
    assert stage["manifest"][-1] == epoch - 10, "uncommitted saves are not taken"
    assert _next(killed_runs, point)["first_chunk"] == epoch
    # The reported best epoch is the one in the best checkpoint, and the one an uninterrupted run finds.
    results = json.loads((killed_runs["workdir"] / "results.json").read_text())
    reference = json.loads((killed_runs["reference"] / "results.json").read_text())
    checkpointer = Checkpointer(killed_runs["workdir"] / "checkpoints")
    try:
        best = checkpointer.restore_best()
    finally:
        checkpointer.close()
    assert results["best_epoch"]["per_seed"] == reference["best_epoch"]["per_seed"]
    assert np.asarray(best["best_epoch"]).tolist() == results["best_epoch"]["per_seed"]


def _a_second_writer_is_refused_and_a_killed_writer_does_not_block_the_resume(killed_runs):
    stage = killed_runs["stages"]["pause:40"]
    message = stage["second_writer"]
    assert message is not None, "the second writer was not refused"
    assert "\n" not in message
    assert message.startswith(f"fit: another process (pid {stage['pid']}) is training in "
                              f"{killed_runs['workdir']}; got a second writer, expected one at a time.")
    assert stage["log_unchanged"]
    assert stage["rc"] == -signal.SIGKILL
    after = _next(killed_runs, "pause:40")  # the lock died with its holder: the next run trains on
    assert after["rc"] == -signal.SIGKILL, after["output"][-3000:]
    epochs = [json.loads(line)["epoch"] for line in after["log"].splitlines()[:-1]]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) > 40


def _sigkill_before_results_json_finishes_without_training_again(killed_runs):
    stage = killed_runs["stages"]["results"]
    assert stage["rc"] == -signal.SIGKILL, stage["output"][-3000:]
    assert stage["manifest"][-1] == 60 and stage["finished"][-1] and not stage["results"]
    final = killed_runs["stages"][None]
    assert final["rc"] == 0, final["output"][-3000:]
    assert final["first_chunk"] is None, "nothing was trained again"
    summary = json.loads(final["output"].strip().splitlines()[-1])
    assert summary["already_finished"] and summary["resumed_from_epoch"] == 60 and summary["epochs_run"] == 60
    assert np.isfinite(summary["seconds_per_epoch"])
    assert final["results"]


def _a_run_killed_at_every_dangerous_point_ends_identical_to_an_uninterrupted_run(killed_runs):
    expected = np.load(killed_runs["reference"] / "final.npz")
    resumed = np.load(killed_runs["workdir"] / "final.npz")
    assert expected.files == resumed.files
    for name in expected.files:
        np.testing.assert_array_equal(resumed[name], expected[name])
    scores = json.loads((killed_runs["reference"] / "results.json").read_text())
    resumed_scores = json.loads((killed_runs["workdir"] / "results.json").read_text())
    for name in ("train_acc", "val_acc", "test_acc", "val_loss", "best_epoch"):
        assert resumed_scores[name]["per_seed"] == scores[name]["per_seed"]
    assert killed_runs["stages"][None]["last"] == ["50", "60"]  # older checkpoints and debris are gone


# ---- damaged checkpoints, changed data, NaN: in this process, on copies of one small run ----

def _karate_fit(workdir, optimizer, epochs=60, data=KARATE, on_chunk=None, seeds=2):
    return fit(
        lambda rngs: jgrad.nn.GCN(data.n_features, 16, data.n_classes, rngs=rngs),
        data,
        optimizer,
        seeds=seeds,
        epochs=epochs,
        early_stopping=EarlyStopping("none"),
        log_every=10,
        checkpoint_every=10,
        workdir=workdir,
        progress=False,
        on_chunk=on_chunk,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An uninterrupted run with the driver's settings: 60 epochs, checkpoints 50 and 60 kept."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    result = _karate_fit(workdir, make_optimizer(0.01, 5e-4), epochs=60)
    leaves = jax.tree.leaves(jax.device_get(result.state.params))
    np.savez(workdir / "final.npz", *[np.asarray(leaf) for leaf in leaves])
    return workdir, jax.device_get(result.state.params)


def _largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _damage(path: Path, how: str) -> None:
    if how == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1  # one bit
        path.write_bytes(bytes(data))
    elif how == "truncate":
        os.truncate(path, path.stat().st_size // 2)
    else:
        path.unlink()


@pytest.mark.parametrize("how, part", [("flip", "last"), ("truncate", "best"), ("delete", "last")])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one_naming_the_file(trained, tmp_path, caplog, how, part):
    source, params = trained
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    bad = _largest_file(workdir / "checkpoints" / part / "60")
    _damage(bad, how)
    debris = workdir / "checkpoints" / "last" / "70.orbax-checkpoint-tmp-1700000000"  # an interrupted save
    debris.mkdir()
    with caplog.at_level(logging.WARNING, logger="jgrad.train"):
        result = _karate_fit(workdir, make_optimizer(0.01, 5e-4))
    warnings = [r.getMessage() for r in caplog.records if r.name == "jgrad.train"]
    assert any(f"checkpoint of epoch 60 is damaged: {bad} " in w and w.endswith("using epoch 50 instead.")
               for w in warnings), warnings
    assert result.resumed_from_epoch == 50 and not result.already_finished
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(result.state.params), params)
    assert (workdir / "metrics.jsonl").read_bytes() == (source / "metrics.jsonl").read_bytes()
    assert not debris.exists()
    checkpointer = Checkpointer(workdir / "checkpoints")
    try:
        assert checkpointer.latest_epoch() == 60 and checkpointer.check(60) is None  # rewritten, intact
    finally:
        checkpointer.close()


def test_eval_of_a_damaged_best_falls_back_and_of_all_damaged_refuses_in_one_line(trained, tmp_path, caplog):
    source, _ = trained
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    _damage(_largest_file(workdir / "checkpoints" / "best" / "60"), "flip")
    checkpointer = Checkpointer(workdir / "checkpoints")
    try:
        with caplog.at_level(logging.WARNING, logger="jgrad.train"):
            best = checkpointer.restore_best()
        assert np.asarray(best["best_epoch"]).max() <= 50
        assert any("using epoch 50 instead" in r.getMessage() for r in caplog.records)
    finally:
        checkpointer.close()
    bad_50 = _largest_file(workdir / "checkpoints" / "last" / "50")
    bad_50.unlink()
    checkpointer = Checkpointer(workdir / "checkpoints")
    try:
        with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*; got epoch 60: .* fails its SHA-256 "
                                                  rf"checksum .*; epoch 50: {bad_50} is missing\.") as error:
            checkpointer.restore_best()
        assert "\n" not in str(error.value)
    finally:
        checkpointer.close()
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        _karate_fit(workdir, make_optimizer(0.01, 5e-4))


def test_evaluate_checkpoint_of_a_damaged_best_scores_the_previous_intact_one(trained, tmp_path, caplog):
    # What `jgrad eval` runs: the scores come from an intact checkpoint, never from changed bytes.
    source, _ = trained
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    damaged = _largest_file(workdir / "checkpoints" / "best" / "60")
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 64])
    damaged.write_bytes(bytes(data))
    config = load_config(REPO / "configs" / "gcn_karate_tiny.yaml")
    with caplog.at_level(logging.WARNING, logger="jgrad.train"):
        seeds, scores = evaluate_checkpoint(config, workdir)
    assert any(f"checkpoint of epoch 60 is damaged: {damaged} fails its SHA-256 checksum" in r.getMessage()
               for r in caplog.records)
    assert all(np.isfinite(values).all() for values in scores.values())
    assert (scores["best_epoch"] <= 50).all() and (scores["test_acc"] > 0.5).all()


def test_an_unreadable_manifest_is_a_one_line_error_naming_it(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": 1, "checkpoints": [{"epo')
    checkpointer = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match=rf"Checkpointer: {tmp_path / 'manifest.json'} is unreadable"):
        checkpointer.latest()
    checkpointer.close()


def test_changed_data_under_the_same_workdir_refuses_to_resume(trained, tmp_path):
    source, _ = trained
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    features = np.array(KARATE.features)
    features[3, 5] += 1.0
    changed = jgrad.data.NodeDataset.from_arrays(KARATE.graph, features, KARATE.labels, KARATE.train_mask,
                                                 KARATE.val_mask, KARATE.test_mask, name=KARATE.name)
    with pytest.raises(ValueError, match=rf"fit: cannot resume the run in {workdir}: its data changed \(dataset "
                                         r"fingerprint\); got [0-9a-f]{12}, expected [0-9a-f]{12}\. Use a new workdir"):
        _karate_fit(workdir, make_optimizer(0.01, 5e-4), epochs=70, data=changed)
    assert (workdir / "metrics.jsonl").read_bytes() == (source / "metrics.jsonl").read_bytes()


def test_other_seeds_in_the_same_workdir_refuse_to_resume_naming_each_difference(trained, tmp_path):
    source, _ = trained
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    with pytest.raises(ValueError, match=r"its seeds differ; got \[0, 1, 2\], expected \[0, 1\]; and the model or "
                                         r"optimizer differs \(state structure, shapes or dtypes\); got [0-9a-f]{12}"):
        _karate_fit(workdir, make_optimizer(0.01, 5e-4), epochs=70, seeds=3)


def _nan_after(step: int) -> optax.GradientTransformation:
    """Passes updates through until ``step`` updates have been made, then returns NaN updates."""

    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(updates, count, params=None):
        poison = jnp.where(count >= step, jnp.nan, 0.0)
        return jax.tree.map(lambda u: u + poison.astype(u.dtype), updates), count + 1

    return optax.GradientTransformation(init, update)


def test_a_nan_loss_never_calls_a_damaged_checkpoint_the_last_good_one(tmp_path):
    # Epochs 1..26 train normally, the 27th update makes the parameters NaN: the loss of epoch 28 is the
    # first NaN, in the chunk after the checkpoint of epoch 20, which is damaged on disk meanwhile.
    def damage(epoch, state):
        if epoch == 20:
            _damage(_largest_file(tmp_path / "checkpoints" / "last" / "20"), "flip")

    with pytest.raises(NonFiniteLossError, match=r"the training loss is nan at epoch 28 \(seed 0\); training "
                                                 r"stopped and the last checkpoint, epoch 20 in .*, is damaged: "
                                                 r".* fails its SHA-256 checksum"):
        _karate_fit(tmp_path, optax.chain(make_optimizer(0.01), _nan_after(26)), epochs=30, on_chunk=damage)
    logged = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 28)), "epochs up to the last finite loss are logged, the NaN epoch is not"
    assert not (tmp_path / "results.json").exists()
