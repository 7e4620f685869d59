"""experiments/gpu_check.sh: off a GPU it stops at once, says why and leaves the versions it read."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "gpu_check.sh"


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="on a GPU the script runs its checks")
def test_off_a_gpu_the_check_stops_before_any_test_and_says_why(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True,
                         env=dict(os.environ, PYTHON=sys.executable), timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "gpu_check: JAX's default device is not a GPU; nothing to check here" in run.stdout + run.stderr
    env = (tmp_path / "out" / "env.txt").read_text()
    assert f"jax {jax.__version__} default backend {jax.default_backend()}" in env
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["env.txt"]
