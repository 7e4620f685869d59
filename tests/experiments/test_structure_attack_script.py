"""experiments/structure_attack.py end to end on its tiny CSBM config: attack, re-evaluate, report."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("structure_attack", ROOT / "experiments" / "structure_attack.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_attack_saves_flips_and_both_selection_rules_then_reevaluates_and_reports(script, tmp_path, capsys):
    config = str(ROOT / "configs" / "structure_attack_tiny.yaml")
    output = tmp_path / "sa"
    script.main(["--config", config, "--only", "meta,gradient", "--set", f"output={output}"])
    printed = capsys.readouterr().out  # victims are trained for minutes on Cora: one line per budget
    assert "seed 0: 2 victims on 0 flips (budget 0): test accuracy " in printed
    assert "seed 0: 2 victims on 29 flips (budget 0.1): test accuracy " in printed
    meta = json.loads(Path(f"{output}_meta.json").read_text())
    seed = meta["seeds"][0]
    budgets = meta["budgets"]
    assert {f: len(pairs) for f, pairs in seed["flips"].items()} == budgets
    assert set(seed["accuracy_by_selection"]) == {"loss_or_accuracy", "accuracy"}
    assert seed["accuracy"] == seed["accuracy_by_selection"]["loss_or_accuracy"]
    fit = seed["surrogate_fit"]  # the inner surrogate on the clean graph beats uniform predictions
    assert 0 < fit["train_loss"] < math.log(3) and fit["train_accuracy"] > 0.5

    script.main(["--config", config, "--evaluate", "--only", "meta", "--set", f"output={output}"])
    again = json.loads(Path(f"{output}_meta.json").read_text())["seeds"][0]
    assert again["accuracy_by_selection"] == seed["accuracy_by_selection"]  # same flips, same victim keys

    text = Path(f"{output}.md").read_text()
    assert "| 10% |" in text and "greedy gradient (fixed GCN)" in text
    # the notes name the dataset run (CSBM here), not Cora's features or Cora's published table
    assert "which use csbm's features as loaded" in text and "Cora's" not in text
    assert "- Published numbers: shown for Cora only; none are given here for csbm." in text
    runs = text.split("| Metattack run |")[1].splitlines()  # the table of every Metattack run
    assert "(10%) | surrogate train loss |" in runs[0]
    row = runs[2].split(" | ")
    assert row[0] == "| inner lr 0.1, loss over 4 inits, 2 flips/meta-step" and row[1] == "1"  # the tiny config
    assert 0 < float(row[-2]) < math.log(3)  # its surrogate's train loss
    assert Path(f"{output}.png").stat().st_size > 0


def test_bad_selection_rule_and_missing_results_are_named(script, tmp_path):
    config = str(ROOT / "configs" / "structure_attack_tiny.yaml")
    with pytest.raises(SystemExit, match="eval.selection must be one of"):
        script.main(["--config", config, "--set", "eval.selection=best"])
    with pytest.raises(SystemExit, match="--evaluate needs"):
        script.main(["--config", config, "--evaluate", "--only", "meta", "--set", f"output={tmp_path / 'none'}"])


@pytest.mark.parametrize("budgets, message", [
    ("1.5", r"attack\.budgets has 1\.5, outside \(0, 1\]; expected comma-separated fractions of the undirected "
            r"edges, each in \(0, 1\], e\.g\. '0\.05,0\.10'\.$"),
    ("-0.05", r"attack\.budgets has -0\.05, outside \(0, 1\]"),
    ("0.05,abc", r"attack\.budgets has 'abc', not a number; expected comma-separated fractions"),
    ("", r"attack\.budgets has '', not a number"),
])
def test_budget_fractions_outside_zero_one_are_named_before_any_work(script, tmp_path, budgets, message):
    # Before, 1.5 ran an attack on 150% of the edges and -0.05 failed inside the attack with budget=-14.
    config = str(ROOT / "configs" / "structure_attack_tiny.yaml")
    with pytest.raises(SystemExit, match=r"^structure_attack: " + message):
        script.main(["--config", config, "--only", "meta", "--set", f"attack.budgets={budgets}",
                     "--set", f"output={tmp_path / 'sa'}"])
    assert not list(tmp_path.iterdir())  # nothing ran


def test_scale_alone_writes_its_result_into_a_new_folder(script, tmp_path):
    # Only the attacks created the output folder: --only scale ran, then failed to write its result.
    config = str(ROOT / "configs" / "structure_attack_tiny.yaml")
    output = tmp_path / "new" / "sa"
    script.main(["--config", config, "--only", "scale", "--set", f"output={output}"])
    record = json.loads(Path(f"{output}_scale.json").read_text())
    assert record["n_nodes"] == 400 and record["meta_steps"] == 2
