"""train_and_evaluate holds the work directory's lock from the config check to the last save."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from jgrad.config import load_config
from jgrad.train import WorkdirBusyError, train_and_evaluate

ROOT = Path(__file__).resolve().parents[2]
HOLD = """
import fcntl, os, sys, time
workdir = sys.argv[1]
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, ".lock"), "a+") as f:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush()
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_before_it_writes_the_config(tmp_path):
    workdir = tmp_path / "run"
    with subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline().strip() == "held"
            config = load_config(ROOT / "configs" / "gcn_karate_tiny.yaml")
            with pytest.raises(WorkdirBusyError, match=rf"train: another process \(pid {holder.pid}\) is training"):
                train_and_evaluate(config, workdir, progress=False)
            assert not (workdir / "config.yaml").exists()
        finally:
            holder.kill()
    time.sleep(0.1)
    result = train_and_evaluate(load_config(ROOT / "configs" / "gcn_karate_tiny.yaml"), workdir, progress=False)
    assert (workdir / "config.yaml").exists() and result.epochs_run > 0
