"""The jgrad command line, run in-process: help, demo, train, eval, bench, and one-line errors."""

import json
import sys
import types
from pathlib import Path

import pytest

from jgrad.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"], ["demo", "--help"]])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: jgrad" in capsys.readouterr().out


def test_demo_trains_and_reports_influential_edges(capsys):
    assert main(["demo", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out
    assert "Most influential existing friendships (jgrad.edge_grad" in out
    assert "Missing friendships whose addition would most raise L (jgrad.adjacency_grad" in out


def test_train_tiny_karate_then_eval(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(["train", str(CONFIGS / "gcn_karate_tiny.yaml"), "--workdir", str(workdir),
                 "--set", "model.hidden=8", "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert "gcn_karate_tiny: 3 seed(s), 20 epochs" in out and "test acc" in out
    saved = (workdir / "config.yaml").read_text()
    assert "hidden: 8" in saved and "seeds: 3" in saved
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 20
    results = json.loads((workdir / "results.json").read_text())
    assert len(results["test_acc"]["per_seed"]) == 3
    assert (workdir / "checkpoints" / "best").is_dir() and (workdir / "checkpoints" / "last").is_dir()

    assert main(["eval", str(CONFIGS / "gcn_karate_tiny.yaml"), "--workdir", str(workdir),
                 "--set", "model.hidden=8", "--set", "train.seeds=3"]) == 0
    table = capsys.readouterr().out
    assert "best checkpoint" in table
    test_acc = f"{sum(results['test_acc']['per_seed']) / 3:.4f}"
    assert test_acc in table
    # Without the overrides, eval reads the run's own saved config (3 seeds, hidden 8).
    assert main(["eval", str(CONFIGS / "gcn_karate_tiny.yaml"), "--workdir", str(workdir)]) == 0
    assert test_acc in capsys.readouterr().out

    # The same workdir with another config is refused rather than silently mixed.
    assert main(["train", str(CONFIGS / "gcn_karate_tiny.yaml"), "--workdir", str(workdir)]) == 2
    assert "holds a run with a different config" in capsys.readouterr().err


def test_train_tiny_cora_end_to_end(tmp_path, planetoid_dir, capsys):
    assert main(["train", str(CONFIGS / "gcn_cora_tiny.yaml"), "--data-dir", str(planetoid_dir),
                 "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gcn_cora_tiny: 2 seed(s)" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test_acc"]["mean"] > 0.3  # 10 epochs: well above chance (1/7)


def test_unknown_config_key_prints_one_line_and_exits_2(capsys):
    assert main(["train", str(CONFIGS / "gcn_karate_tiny.yaml"), "--set", "model.hiden=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unknown key 'model.hiden'; valid keys in model: name, hidden" in err


def test_missing_data_dir_prints_one_line_and_exits_2(tmp_path, capsys):
    assert main(["train", str(CONFIGS / "gcn_cora_tiny.yaml"), "--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jgrad train: ") and "Traceback" not in err


def test_eval_without_checkpoint_exits_2(tmp_path, capsys):
    assert main(["eval", str(CONFIGS / "gcn_karate_tiny.yaml"), "--workdir", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_bench_delegates_its_arguments(monkeypatch):
    calls = []
    fake = types.ModuleType("jgrad.bench")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "jgrad.bench", fake)
    assert main(["bench", "--quick", "--out", "x"]) == 0
    assert calls == [["--quick", "--out", "x"]]


def test_bench_without_the_module_says_it_is_unavailable(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jgrad.bench", None)
    assert main(["bench"]) == 2
    assert "unavailable" in capsys.readouterr().err


def test_workdir_that_is_a_file_prints_one_line_and_exits_2(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    assert main(["train", str(CONFIGS / "gcn_karate_tiny.yaml"), "--workdir", str(blocker)]) == 2
    assert "jgrad train:" in capsys.readouterr().err


def test_negative_seed_is_a_clear_error(capsys):
    assert main(["demo", "--seed", "-1"]) == 2
    assert "seeds must be integers in [0, 2**32); got [-1]" in capsys.readouterr().err


def test_demo_rejects_a_non_positive_top_before_printing(capsys):
    assert main(["demo", "--top", "0"]) == 2
    captured = capsys.readouterr()
    assert "--top must be at least 1; got 0" in captured.err and captured.out == ""


def test_tampered_dataset_pickle_is_a_one_line_error(tmp_path, planetoid_dir, capsys):
    import os
    import pickle as pickle_module
    import shutil

    for path in planetoid_dir.glob("ind.cora.*"):
        shutil.copy(path, tmp_path / path.name)

    class RunsCommand:
        def __reduce__(self):
            return (os.system, ("true",))

    (tmp_path / "ind.cora.graph").write_bytes(pickle_module.dumps(RunsCommand()))
    assert main(["train", str(CONFIGS / "gcn_cora_tiny.yaml"), "--data-dir", str(tmp_path),
                 "--workdir", str(tmp_path / "run")]) == 2
    assert "refusing to load" in capsys.readouterr().err
