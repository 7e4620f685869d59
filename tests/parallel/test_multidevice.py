"""Edge sharding, data parallelism and a two-process run on 8 (or 2 x 2) virtual CPU devices.

The device count is fixed when JAX starts, so these checks run in subprocesses with
``XLA_FLAGS=--xla_force_host_platform_device_count=...``; the main pytest process keeps one device.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _env(devices: int) -> dict:
    env = dict(os.environ)
    inherited = env.get("XLA_FLAGS", "")  # the suite's compile settings (tests/conftest.py) carry over
    env["XLA_FLAGS"] = f"{inherited} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run_checks(*names: str) -> str:
    result = subprocess.run(
        [sys.executable, str(HERE / "multidevice_checks.py"), *names],
        env=_env(8), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_sharded_ops_gradients_and_data_parallel_training_match_one_device():
    # One process for the four checks: a JAX start-up with 8 devices is paid once.
    out = _run_checks("ops", "awkward_graphs", "gcn_params", "data_parallel")
    assert "OK ops" in out and "OK awkward_graphs" in out and "OK gcn_params" in out and "OK data_parallel" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_initialize_and_psum_across_them():
    port = _free_port()
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "two_process_worker.py"), str(port), str(i)],
                         env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=180)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("the two-process run did not finish within 180 s")
    for i, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, out
        assert f"initialized process {i} of 2: 2 local, 4 global devices" in out, out
        assert "psum=10.0" in out, out
