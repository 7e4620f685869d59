"""The work directory's lock, the metrics log's cut-back on resume, a failed checkpoint write (tiny states)."""

import errno
import fcntl
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jgrad.train import Checkpointer, TrainState, WorkdirBusyError, lock_workdir
from jgrad.train import _logging
from jgrad.train._logging import MetricsLog


def _metrics(first, last):
    n = last - first + 1
    return {"loss": np.arange(2 * n, dtype=np.float32).reshape(n, 2), "val_acc": np.ones((n, 2), np.float32)}


def _epochs(path):
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]


def test_lock_nests_in_one_process_and_refuses_another_holder(tmp_path):
    with lock_workdir(tmp_path) as path:
        with lock_workdir(tmp_path):
            pass
        assert path == tmp_path.absolute()
        # flock belongs to an open file: a second open of the lock file stands for another process.
        with open(tmp_path / ".lock") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / ".lock") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on exit
        with pytest.raises(WorkdirBusyError, match=rf"^train: another process \(pid [0-9]+\) is training in "
                                                   rf"{tmp_path}; got a second writer, expected one at a time\."):
            with lock_workdir(tmp_path, where="train"):
                pass


def test_checkpointer_needs_a_fallback_checkpoint(tmp_path):
    with pytest.raises(ValueError, match=r"Checkpointer: keep must be >= 2; got 1"):
        Checkpointer(tmp_path, keep=1)


def test_metrics_log_restore_cuts_a_torn_line_and_later_epochs_back_to_the_checkpoint(tmp_path, caplog):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append(1, _metrics(1, 3))
    size = log.size()
    log.append(4, _metrics(4, 5))
    with open(log.path, "a") as file:
        file.write('{"epoch": 6, "loss": [0.5, 0')  # a kill during the next append
    with caplog.at_level(logging.WARNING, logger="jgrad.train"):
        log.restore(3, size)
    assert _epochs(log.path) == [1, 2, 3] and log.size() == size
    assert not caplog.records


def test_metrics_log_after_a_full_disk_during_the_append_resumes_cleanly(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append(1, _metrics(1, 2))
    size = log.size()

    class FullDisk:
        def __init__(self, path, mode):
            self.file = open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, text):
            self.file.write(text[: len(text) // 3])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_logging, "open", FullDisk, raising=False)
    with pytest.raises(OSError, match=rf"^MetricsLog: cannot append epochs 3\.\.4 to {log.path}; got No space left"):
        log.append(3, _metrics(3, 4))
    monkeypatch.undo()
    with pytest.raises(ValueError):
        _epochs(log.path)  # the torn line that used to break every later resume
    log.restore(2, size)
    log.append(3, _metrics(3, 4))
    assert _epochs(log.path) == [1, 2, 3, 4]


def test_metrics_log_repairs_a_damaged_log_and_says_what_it_dropped(tmp_path, caplog):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append(1, _metrics(1, 4))
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join([lines[0], "garbage", lines[2], lines[2], lines[3]]) + "\n")
    with caplog.at_level(logging.WARNING, logger="jgrad.train"):
        log.restore(3, 10**6)  # the recorded size is longer than the file: check and repair
    assert _epochs(log.path) == [1, 3]
    message = caplog.records[-1].getMessage()
    assert message == (f"{log.path}: repaired for a resume from epoch 3: dropped 3 damaged, duplicate or "
                       "later line(s); 1 epoch(s) missing: 2.")


def _tiny_state(value):
    params = {"w": jnp.full((2, 3), value, jnp.float32)}
    return TrainState.create(params, optax.sgd(0.1), jax.random.key(0))


def test_a_failed_checkpoint_write_is_one_line_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpointer = Checkpointer(tmp_path)
    try:
        checkpointer.save(10, _tiny_state(1.0), finished=False)

        def full_disk(*args, **kwargs):
            raise ValueError("NOT_FOUND: Error writing local file ...\n[source locations='tensorstore/...']")

        monkeypatch.setattr(checkpointer._io, "save", full_disk)
        with pytest.raises(OSError, match=rf"^Checkpointer: cannot write {tmp_path / 'last' / '20'}; got ValueError: "
                                          r"NOT_FOUND: Error writing local file \.\.\.\. The previous checkpoints"):
            checkpointer.save(20, _tiny_state(2.0))
        monkeypatch.undo()
        assert [entry["epoch"] for entry in checkpointer.entries()] == [10]
        epoch, state = checkpointer.restore_last(_tiny_state(0.0))
        assert epoch == 10
        np.testing.assert_array_equal(state.params["w"], np.ones((2, 3)))
        for epoch in (20, 30):
            checkpointer.save(epoch, _tiny_state(float(epoch)))
        assert [entry["epoch"] for entry in checkpointer.entries()] == [20, 30]
        assert sorted(p.name for p in (tmp_path / "last").iterdir()) == ["20", "30"]
    finally:
        checkpointer.close()


def test_a_save_cut_short_leaves_a_temporary_folder_that_the_next_save_removes_quietly(tmp_path, caplog):
    checkpointer = Checkpointer(tmp_path)
    try:
        checkpointer.save(10, _tiny_state(1.0))
        # What a process interrupted inside orbax's write of epoch 20 leaves: its temporary folders, which
        # no manifest names. The resumed run writes epoch 20 again.
        for part in ("last", "best"):
            leftover = tmp_path / part / "20.orbax-checkpoint-tmp"
            leftover.mkdir()
            (leftover / "_CHECKPOINT_METADATA").write_text("{}")
        with caplog.at_level(logging.WARNING):
            checkpointer.save(20, _tiny_state(2.0))
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert sorted(p.name for p in (tmp_path / "last").iterdir()) == ["10", "20"]
        assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["10", "20"]
        assert checkpointer.check(20) is None
        epoch, state = checkpointer.restore_last(_tiny_state(0.0))
        assert epoch == 20
        np.testing.assert_array_equal(state.params["w"], np.full((2, 3), 2.0))
    finally:
        checkpointer.close()
