"""experiments/small_graph_parity.py end to end on one process and one Cora training step."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("small_graph_parity", ROOT / "experiments" / "small_graph_parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratios_are_taken_against_the_fastest_peer_of_each_process(script, tmp_path):
    script.main(["--processes", "1", "--seconds", "0.02", "--workloads", "gcn_train",
                 "--impls", "jgrad", "jgrad_xla", "plain_jax", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "small_graph_parity.json").read_text())
    (medians,) = result["runs"]
    rows = result["summary"]["gcn_train"]
    assert rows["plain_jax"] == {"median": 1.0, "min": 1.0, "max": 1.0, "faster_or_equal_in": 1}
    assert rows["jgrad"]["median"] == pytest.approx(medians["gcn_train"]["jgrad"] / medians["gcn_train"]["plain_jax"])
    assert "| jgrad_xla |" in (tmp_path / "small_graph_parity.md").read_text()


def test_refuses_a_run_without_a_peer(script, tmp_path, capsys):
    with pytest.raises(SystemExit):
        script.main(["--impls", "jgrad", "jgrad_xla", "--out", str(tmp_path)])
    assert "needs at least one peer" in capsys.readouterr().err
