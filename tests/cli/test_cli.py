"""The jgrad command line, run in-process: help, demo, train, eval, bench, and one-line errors."""

import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
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
    # Without CONFIG, eval reads the run's own saved config (3 seeds, hidden 8).
    assert main(["eval", "--workdir", str(workdir)]) == 0
    assert test_acc in capsys.readouterr().out

    # The same workdir with another config is refused rather than silently mixed.
    assert main(["train", str(CONFIGS / "gcn_karate_tiny.yaml"), "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert "holds a run with a different config" in err
    assert "model.hidden (8 in the run, 16 now), train.seeds (3 in the run, 2 now)" in err


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


def test_missing_data_dir_prints_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(CONFIGS / "gcn_cora_tiny.yaml"), "--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jgrad train: ") and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # the dataset is loaded before the workdir is written


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


def _fake_bench(monkeypatch, main_function):
    fake = types.ModuleType("jgrad.bench")
    fake.main = main_function
    monkeypatch.setitem(sys.modules, "jgrad.bench", fake)


def test_bench_missing_a_package_is_one_line_naming_it_and_how_to_install(monkeypatch, capsys):
    def needs_matplotlib(argv):  # what jgrad.bench does after `make demo`, which installs no matplotlib
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    _fake_bench(monkeypatch, needs_matplotlib)
    assert main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err == ("jgrad bench: needs matplotlib, which is not installed; `make bench` (or "
                   "`pip install -e \".[bench]\"`) installs what the benchmark uses.\n")


def test_bench_errors_and_interrupts_are_handled_like_the_other_commands(monkeypatch, capsys):
    def fails(argv):
        raise ValueError("bench: --sizes must be positive; got -1.")

    _fake_bench(monkeypatch, fails)
    assert main(["bench", "--sizes", "-1"]) == 2
    assert capsys.readouterr().err == "jgrad bench: bench: --sizes must be positive; got -1.\n"

    def interrupted(argv):
        raise KeyboardInterrupt

    _fake_bench(monkeypatch, interrupted)
    assert main(["bench"]) == 128 + signal.SIGINT
    assert capsys.readouterr().err == "jgrad bench: interrupted (Ctrl-C).\n"


def test_workdir_that_is_a_file_prints_one_line_and_exits_2(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    assert main(["train", str(CONFIGS / "gcn_karate_tiny.yaml"), "--workdir", str(blocker)]) == 2
    assert "jgrad train:" in capsys.readouterr().err


def test_a_workdir_that_is_or_lies_in_a_file_is_named_before_writing_to_is_said(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    assert main(["train", TINY, "--workdir", str(blocker)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"jgrad train: workdir {blocker} is a file, not a folder; give --workdir a new folder "
                            f"or a run's. (config {TINY})\n")
    assert main(["train", TINY, "--workdir", str(blocker / "run")]) == 2
    assert capsys.readouterr().err == (f"jgrad train: workdir {blocker / 'run'}: {blocker} is a file, not a folder; "
                                       f"give --workdir a new folder or a run's. (config {TINY})\n")


def test_a_read_only_workdir_is_named_before_writing_to_is_said(tmp_path, monkeypatch, capsys):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    (read_only / "config.yaml").write_text("name: x\n")
    read_only.chmod(0o555)
    real_access = os.access  # root may write anyway: the check sees the folder as a user would
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != read_only and real_access(path, mode))
    try:
        assert main(["train", TINY, "--workdir", str(read_only / "run")]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == (
            f"jgrad train: workdir {read_only / 'run'}: {read_only} is not writable (permission denied); give "
            f"--workdir a folder you can write to. (config {TINY})\n")
        assert main(["train", TINY, "--workdir", str(read_only)]) == 2
        assert capsys.readouterr().err == (
            f"jgrad train: workdir {read_only} is not writable (permission denied); give --workdir a folder you can "
            f"write to (`jgrad eval --workdir` reads a run without writing). (config {TINY})\n")
    finally:
        read_only.chmod(0o755)


def test_writing_to_says_whether_an_existing_workdir_holds_a_run(tmp_path, capsys):
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["train", TINY, *FAST, "--workdir", str(empty)]) == 0
    assert capsys.readouterr().out.startswith(f"gcn_karate_tiny: writing to {empty}\n")
    assert main(["train", TINY, *FAST, "--workdir", str(other)]) == 0
    assert capsys.readouterr().out.startswith(f"gcn_karate_tiny: writing to {other} (it exists and holds no run; "
                                              "the files in it stay)\n")
    assert (other / "notes.txt").read_text() == "mine"
    assert main(["train", TINY, *FAST, "--workdir", str(other)]) == 0
    assert capsys.readouterr().out.startswith(f"gcn_karate_tiny: writing to {other} (it exists: a run there resumes "
                                              "or reports that it finished)\n")


def test_negative_seed_is_a_clear_error(capsys):
    assert main(["demo", "--seed", "-1"]) == 2
    assert "seeds must be integers in [0, 2**32); got [-1]" in capsys.readouterr().err


def test_demo_rejects_a_non_positive_top_before_printing(capsys):
    assert main(["demo", "--top", "0"]) == 2
    captured = capsys.readouterr()
    assert "--top must be at least 1; got 0" in captured.err and captured.out == ""


@pytest.mark.parametrize("node", ["34", "-1"])
def test_demo_rejects_a_node_outside_the_club_before_training(node, capsys):
    assert main(["demo", "--node", node]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no training run and reported first
    assert captured.err == f"jgrad demo: demo: --node must be a member of the karate club, in [0, 34); got {node}.\n"


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


# ------------------------------------------------------------------------------------------------------
# A CLI that says what it did: default workdir, files written, resume, finished runs, eval refusal.
# ------------------------------------------------------------------------------------------------------
TINY = str(CONFIGS / "gcn_karate_tiny.yaml")
FAST = ["--set", "model.hidden=4", "--set", "train.epochs=10", "--set", "train.log_every=5",
        "--set", "train.checkpoint_every=5", "--seeds", "1"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One short run trained without --workdir: (folder it ran in, relative workdir, stdout)."""
    folder = tmp_path_factory.mktemp("default_run")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.chdir(folder)
        assert main(["train", TINY, *FAST]) == 0
    (run,) = (folder / "runs").iterdir()
    return folder, Path("runs") / run.name, out.getvalue()


def test_train_without_workdir_writes_to_a_default_run_and_says_where(default_run):
    folder, run, out = default_run
    assert re.fullmatch(r"gcn_karate_tiny-\d{8}-\d{6}", run.name)
    lines = out.splitlines()
    assert lines[0] == f"gcn_karate_tiny: writing to {run}"
    assert lines[1].startswith("gcn_karate_tiny: 1 seed(s), 10 epochs, ") and "ms/epoch" in lines[1]
    assert "resumed" not in out and "nan" not in out
    assert f"scores above saved in {run / 'results.json'}; per-epoch metrics in {run / 'metrics.jsonl'}" in out
    assert lines[-1].startswith(f"{run}: checkpoints/ (") and lines[-1].endswith("config.yaml, metrics.jsonl, results.json")
    assert "best" in lines[-1] and "last" in lines[-1]
    for name in ("config.yaml", "metrics.jsonl", "results.json"):
        assert (folder / run / name).is_file()


def test_default_workdirs_started_in_the_same_second_are_distinct(tmp_path, monkeypatch):
    from jgrad.cli._commands import default_workdir

    monkeypatch.chdir(tmp_path)
    first = default_workdir("configs/x.yaml", now=0.0)
    first.mkdir(parents=True)
    second = default_workdir("configs/x.yaml", now=0.0)
    assert second.name == first.name + "-2" and second.parent == Path("runs")


def test_rerunning_a_finished_run_says_so_instead_of_training(default_run, monkeypatch, capsys):
    folder, run, first = default_run
    monkeypatch.chdir(folder)
    assert main(["train", TINY, *FAST, "--workdir", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{run} already holds this finished run (1 seed(s), 10 epochs); nothing to train" in out
    assert "nan" not in out and "ms/epoch" not in out and "resumed" not in out
    table = lambda text: text[text.index(" seed "):text.index("scores above")]
    assert table(out) == table(first)
    assert len((folder / run / "metrics.jsonl").read_text().splitlines()) == 10


def _interrupt_after_the_first_chunk(monkeypatch):
    """Makes `jgrad train` raise KeyboardInterrupt after its first chunk and checkpoint; returns the real fit."""
    from jgrad.train import _experiment

    real_fit = _experiment.fit

    def interrupted_fit(*args, **kwargs):
        def stop(epoch, state):
            raise KeyboardInterrupt  # after the first chunk and its checkpoint (epoch 5)

        return real_fit(*args, on_chunk=stop, **kwargs)

    monkeypatch.setattr(_experiment, "fit", interrupted_fit)
    return lambda: monkeypatch.setattr(_experiment, "fit", real_fit)


def test_an_interrupted_run_resumes_and_says_from_which_epoch(tmp_path, monkeypatch, capsys):
    workdir = str(tmp_path / "run")
    restore_fit = _interrupt_after_the_first_chunk(monkeypatch)
    assert main(["train", TINY, *FAST, "--workdir", workdir]) == 130
    command = shlex.join(["jgrad", "train", TINY, *FAST, "--workdir", workdir])
    assert capsys.readouterr().err == (
        f"jgrad train: interrupted (Ctrl-C); the last checkpoint in {workdir} holds epoch 5 (later epochs are "
        "trained again).\n"
        f"jgrad train: to resume from it, run the same command: {command}\n")
    restore_fit()
    assert main(shlex.split(command)[1:]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"gcn_karate_tiny: writing to {workdir} (it exists: a run there resumes or reports that "
                        "it finished)")
    assert lines[1] == f"gcn_karate_tiny: resuming from the checkpoint at epoch 5 in {workdir}"
    assert lines[2].startswith("gcn_karate_tiny: resumed from epoch 5; 1 seed(s), 10 epochs (5 in this call), ")
    assert "ms/epoch" in lines[2]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 10


def test_an_interrupted_default_workdir_run_prints_a_command_with_its_workdir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    restore_fit = _interrupt_after_the_first_chunk(monkeypatch)
    assert main(["train", TINY, *FAST]) == 130
    (run,) = Path("runs").iterdir()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"jgrad train: interrupted (Ctrl-C); the last checkpoint in {run} holds epoch 5 (later "
                      "epochs are trained again).")
    command = shlex.join(["jgrad", "train", TINY, *FAST, "--workdir", str(run)])
    assert err[1:] == [f"jgrad train: to resume from it, run the same command: {command}"]
    restore_fit()
    assert main(shlex.split(command)[1:]) == 0
    out = capsys.readouterr().out
    assert f"gcn_karate_tiny: resuming from the checkpoint at epoch 5 in {tmp_path / run}\n" in out
    assert "resumed from epoch 5; 1 seed(s), 10 epochs (5 in this call)" in out
    assert list(Path("runs").iterdir()) == [run]  # the command resumed the run instead of starting another


def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_the_corrected_config(tmp_path, capsys):
    workdir = tmp_path / "run"
    # optim.decay is checked against the model's parameters, after config.yaml is written.
    assert main(["train", TINY, *FAST, "--set", "optim.decay=nomatch", "--workdir", str(workdir)]) == 2
    assert "'nomatch' selects no weight matrix" in capsys.readouterr().err
    assert "decay: nomatch" in (workdir / "config.yaml").read_text()

    assert main(["train", TINY, *FAST, "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"gcn_karate_tiny: writing to {workdir} (it exists; the run there wrote no checkpoint, so "
                          "training starts from epoch 0)\n")
    assert (f"gcn_karate_tiny: {workdir} holds no checkpoint of the config saved there ({workdir / 'config.yaml'}); "
            "this config replaces it, training from epoch 0\n") in out
    assert "gcn_karate_tiny: 1 seed(s), 10 epochs" in out and "resumed" not in out
    assert "decay: first_layer" in (workdir / "config.yaml").read_text()
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 10

    # Once a checkpoint is committed, another config is refused as before.
    assert main(["train", TINY, *FAST, "--set", "optim.decay=all", "--workdir", str(workdir)]) == 2
    assert "holds a run with a different config" in capsys.readouterr().err


def test_a_resume_may_change_checkpoint_every_and_reaches_the_uninterrupted_result(default_run, tmp_path,
                                                                                   monkeypatch, capsys):
    workdir = str(tmp_path / "run")
    restore_fit = _interrupt_after_the_first_chunk(monkeypatch)
    assert main(["train", TINY, *FAST, "--workdir", workdir]) == 130  # checkpoint_every=5: epoch 5 saved
    restore_fit()
    capsys.readouterr()
    # log_every sets the compiled chunks (the epochs_run of an early-stopped run, where checkpoints can
    # fall): a resume may not change it.
    assert main(["train", TINY, *FAST, "--set", "train.log_every=10", "--set", "train.checkpoint_every=10",
                 "--workdir", workdir]) == 2
    assert "train.log_every (5 in the run, 10 now)" in capsys.readouterr().err
    assert main(["train", TINY, *FAST, "--set", "train.checkpoint_every=10", "--workdir", workdir]) == 0
    out = capsys.readouterr().out
    assert f"resuming from the checkpoint at epoch 5 in {workdir}\n" in out
    table = lambda text: text[text.index(" seed "):text.index("scores above")]
    assert table(out) == table(default_run[2])  # the same scores as the run trained in one go
    assert "checkpoint_every: 10" in (tmp_path / "run" / "config.yaml").read_text()
    # eval takes the run's config as first given (checkpoint_every 5) as well as its saved one.
    assert main(["eval", TINY, *FAST[:-2], "--set", "train.seeds=1", "--workdir", workdir]) == 0
    test_acc = json.loads((tmp_path / "run" / "results.json").read_text())["test_acc"]["mean"]
    assert f"best checkpoint in {workdir}" in (evaluated := capsys.readouterr().out) and f"{test_acc:.4f}" in evaluated


def _start_training(workdir, *settings):
    """`python -m jgrad.cli train` on the karate club for many epochs, a checkpoint every 100."""
    argv = ["train", TINY, "--workdir", str(workdir), "--set", "model.hidden=4", "--set", "train.epochs=1000000",
            "--set", "train.log_every=100", "--set", "train.checkpoint_every=100", *settings]
    process = subprocess.Popen([sys.executable, "-m", "jgrad.cli", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return process, argv


def _wait_for(condition, process, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_training_says_which_checkpoint_is_kept_and_how_to_resume(signum, tmp_path):
    manifest = tmp_path / "run" / "checkpoints" / "manifest.json"
    process, argv = _start_training(tmp_path / "run")
    _wait_for(manifest.exists, process)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    epoch = max(entry["epoch"] for entry in json.loads(manifest.read_text())["checkpoints"])
    how = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}[signum]
    assert err.splitlines() == [
        f"jgrad train: interrupted ({how}); the last checkpoint in {tmp_path / 'run'} holds epoch {epoch} (later "
        "epochs are trained again).",
        f"jgrad train: to resume from it, run the same command: {shlex.join(['jgrad', *argv])}"]
    assert out.splitlines() == [f"gcn_karate_tiny: writing to {tmp_path / 'run'}"]


def test_sigterm_before_the_first_checkpoint_says_a_rerun_starts_from_epoch_0(tmp_path):
    process, argv = _start_training(tmp_path / "run", "--set", "train.checkpoint_every=500000")
    _wait_for(lambda: (tmp_path / "run").exists(), process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert not (tmp_path / "run" / "checkpoints" / "manifest.json").exists()
    assert err.splitlines() == [
        f"jgrad train: interrupted (SIGTERM); the run in {tmp_path / 'run'} wrote no checkpoint yet, so a rerun "
        "starts from epoch 0.",
        f"jgrad train: to start it again: {shlex.join(['jgrad', *argv])}"]


def _saved_run(tmp_path, *overrides: str) -> Path:
    from jgrad.config import load_config, save_config

    workdir = tmp_path / "run"
    save_config(load_config(TINY, list(overrides)), workdir / "config.yaml")
    return workdir


def test_eval_with_a_different_config_refuses_and_lists_the_keys(tmp_path, capsys):
    workdir = _saved_run(tmp_path)
    gat = tmp_path / "gat.yaml"
    gat.write_text(Path(TINY).read_text().replace("name: gcn\n", "name: gat\n").replace("hidden: 16", "hidden: 8"))
    assert main(["eval", str(gat), "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"jgrad eval: {gat} differs from the run's config {workdir / 'config.yaml'} in "
                          "model.name ('gcn' in the run, 'gat' given), model.hidden (16 in the run, 8 given)")
    assert "optim.learning_rate" not in err and f"Use `jgrad eval --workdir {workdir}`" in err


def test_eval_refusal_cuts_long_values(tmp_path, capsys):
    workdir = _saved_run(tmp_path)
    assert main(["eval", TINY, "--workdir", str(workdir), "--set", "data.root=" + "x" * 5000]) == 2
    err = capsys.readouterr().err
    assert "data.root (None in the run, 'xxxxxxxxxxxx" in err and len(err) < 600


def test_eval_with_set_on_the_runs_own_config_refuses_too(tmp_path, capsys):
    workdir = _saved_run(tmp_path)
    assert main(["eval", "--workdir", str(workdir), "--set", "model.hidden=32"]) == 2
    assert "--set differs from the run's config" in capsys.readouterr().err


@pytest.mark.parametrize("config", [[], [TINY]], ids=["own config", "given config"])
def test_eval_of_a_workdir_that_does_not_exist_says_so(config, tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    assert main(["eval", *config, "--workdir", str(missing)]) == 2
    given = f" (config {TINY})" if config else ""
    assert capsys.readouterr().err == (f"jgrad eval: workdir {missing} does not exist; give --workdir the folder of "
                                       f"a `jgrad train` run.{given}\n")
    (tmp_path / "afile").write_text("")
    assert main(["eval", *config, "--workdir", str(tmp_path / "afile")]) == 2
    assert f"workdir {tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err


def test_eval_without_config_needs_the_runs_config(tmp_path, capsys):
    assert main(["eval", "--workdir", str(tmp_path)]) == 2
    assert f"jgrad eval: {tmp_path} has no config.yaml; give the config the run was trained with" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------
# Every error: one line naming the file, exit status 2, no traceback (1 for a diverged run).
# ------------------------------------------------------------------------------------------------------
def _one_line_error(capsys, argv, status=2) -> str:
    assert main(argv) == status
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err[:2000]
    return captured.err


HOSTILE = {
    "laughs": ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
        f"{name}: &{name} [{','.join([f'*{previous}'] * 9)}]\n" for previous, name in zip("abcdefgh", "bcdefghi")),
        r"line 1: YAML anchors and aliases"),
    "deep": ("model: " + "[" * 20_000 + "]" * 20_000 + "\n", r"line 1: nested too deeply"),
    "duplicate": ("model: {hidden: 16, hidden: 64}\n", r"line 1: duplicate key 'hidden'"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_yaml_is_one_short_line_naming_the_file(name, tmp_path, capsys):
    text, match = HOSTILE[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    err = _one_line_error(capsys, ["train", str(path), "--workdir", str(tmp_path / "run")])
    assert err.startswith(f"jgrad train: config: {path}: ") and re.search(match, err)
    assert len(err) < 300 and not (tmp_path / "run").exists()


def test_non_utf8_config_names_the_file(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    err = _one_line_error(capsys, ["train", str(path)])
    assert f"jgrad train: config: {path} is not UTF-8 text; got byte 0xe9" in err


def test_huge_hidden_is_a_one_line_range_error(capsys):
    err = _one_line_error(capsys, ["train", TINY, "--set", "model.hidden=1e20"])
    assert "model.hidden must be int; got '1e20' (str), expected a value in [1, 65536]" in err
    err = _one_line_error(capsys, ["train", TINY, "--set", "model.hidden=" + "9" * 30])
    assert "model.hidden is out of range; got 999999999999999999999999999999, expected a value in [1, 65536]" in err


def test_huge_seed_count_is_a_one_line_range_error(capsys):
    err = _one_line_error(capsys, ["train", TINY, "--seeds", "1000000000"])
    assert "train.seeds is out of range; got 1000000000, expected a value in [1, 4096]" in err


@pytest.mark.parametrize("error, expected", [
    (MemoryError(), "out of memory (MemoryError)"),
    (RecursionError("maximum recursion depth exceeded"), "input nested too deeply (RecursionError)"),
    (UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte"), r"a file is not utf-8 text; got byte b'\xff' at offset 2"),
    (PermissionError(13, "Permission denied", "ind.cora.x"), "[Errno 13] Permission denied: 'ind.cora.x'"),
    (RuntimeError("line one\nline two " + "z" * 5000), "RuntimeError: line one line two zzz"),
])
def test_any_exception_is_one_line_naming_the_files_with_status_2(error, expected, tmp_path, monkeypatch, capsys):
    from jgrad.train import _experiment

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(_experiment, "load_dataset", fail)
    workdir = tmp_path / "run"
    err = _one_line_error(capsys, ["train", TINY, "--workdir", str(workdir)])
    assert err.startswith(f"jgrad train: {expected}") and len(err) < 1300
    assert err.rstrip().endswith(f"(config {TINY}, workdir {workdir})")


def test_unexpected_exceptions_point_at_the_traceback_switch(monkeypatch, capsys):
    from jgrad.train import _experiment

    monkeypatch.setattr(_experiment, "load_dataset", lambda *a, **k: {}["missing"])
    err = _one_line_error(capsys, ["train", TINY, "--workdir", "unused"])
    assert "KeyError: 'missing'" not in err and "'missing'" in err  # a LookupError reads as itself
    monkeypatch.setattr(_experiment, "load_dataset", lambda *a, **k: 1 / 0)
    err = _one_line_error(capsys, ["train", TINY, "--workdir", "unused"])
    assert "ZeroDivisionError: division by zero (set JGRAD_TRACEBACK=1 for the traceback)" in err
    monkeypatch.setenv("JGRAD_TRACEBACK", "1")
    with pytest.raises(ZeroDivisionError):
        main(["train", TINY, "--workdir", "unused"])


def test_a_diverged_run_keeps_exit_status_1(monkeypatch, capsys):
    from jgrad.train import NonFiniteLossError, _experiment

    def diverge(*args, **kwargs):
        raise NonFiniteLossError("fit: the training loss is nan at epoch 3 (seed 0); training stopped.")

    monkeypatch.setattr(_experiment, "load_dataset", diverge)
    err = _one_line_error(capsys, ["train", TINY, "--workdir", "unused"], status=1)
    assert err.startswith("jgrad train: fit: the training loss is nan at epoch 3")


def test_a_usage_error_is_one_line_with_status_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", TINY, "--seeds", "many"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("jgrad train: argument --seeds: invalid int value: 'many' "
                                       "(see jgrad train --help).\n")


def test_a_missing_config_says_where_the_example_configs_are(tmp_path, monkeypatch, capsys):
    import jgrad.config

    monkeypatch.chdir(tmp_path)  # outside the repository
    assert main(["train", "configs/gcn_cora.yaml"]) == 2
    err = capsys.readouterr().err
    assert err == (f"jgrad train: config: no config file at configs/gcn_cora.yaml (relative to {tmp_path}); the "
                   f"example config of that name is {CONFIGS / 'gcn_cora.yaml'}: pass that path.\n")
    assert main(["train", str(tmp_path / "mine.yaml")]) == 2
    err = capsys.readouterr().err
    first = ", ".join(sorted(path.name for path in CONFIGS.glob("*.yaml"))[:4])
    assert first.startswith("gat_cora.yaml, gcn_citeseer.yaml")
    assert err == (f"jgrad train: config: no config file at {tmp_path / 'mine.yaml'}; the example configs are in "
                   f"{CONFIGS} ({first}, ...), and "
                   "docs/training.md (\"Configs\") lists every key.\n")
    assert not (tmp_path / "runs").exists()
    # Installed from a wheel, without the repository beside the package.
    monkeypatch.setattr(jgrad.config, "_example_configs", lambda: None)
    assert main(["train", "configs/gcn_cora.yaml"]) == 2
    err = capsys.readouterr().err
    assert err == (f"jgrad train: config: no config file at configs/gcn_cora.yaml (relative to {tmp_path}); the "
                   "example configs (gcn_cora.yaml, gat_cora.yaml, ...) are in the configs/ folder of the jgrad source "
                   "repository, not installed with the package: copy one, or write a YAML file with the sections "
                   "data, model, optim and train, every key optional (docs/training.md, \"Configs\").\n")


def test_an_interrupt_dropped_where_it_cannot_propagate_is_raised_again():
    from jgrad.cli._interrupts import Interrupted, Interrupts

    class SignalledDuringCleanup:
        def __del__(self):  # Python drops (reports as unraisable) an exception raised here
            signal.raise_signal(signal.SIGTERM)

    outside, dropped = sys.unraisablehook, []
    with pytest.raises(Interrupted) as info:
        with Interrupts():
            hook = sys.unraisablehook
            sys.unraisablehook = lambda unraisable: (dropped.append(unraisable.exc_value), hook(unraisable))
            SignalledDuringCleanup()
            time.sleep(5)  # the signal comes again within 0.05 s and raises here
    assert info.value.signum == signal.SIGTERM and len(dropped) == 1 and isinstance(dropped[0], Interrupted)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and sys.unraisablehook is outside


def test_a_signal_during_a_checkpoint_save_is_raised_after_it_and_a_second_one_at_once(tmp_path, monkeypatch):
    import jax
    import jax.numpy as jnp
    import optax

    from jgrad.cli._interrupts import Interrupted, Interrupts
    from jgrad.train import Checkpointer, TrainState

    state = TrainState.create({"w": jnp.ones((2, 3))}, optax.sgd(0.1), jax.random.key(0))
    checkpointer = Checkpointer(tmp_path)
    real_write, signals = checkpointer._write, []

    def write(path, tree):  # the signals arrive inside the save, before orbax writes
        while signals:
            signal.raise_signal(signals.pop(0))
        real_write(path, tree)

    monkeypatch.setattr(checkpointer, "_write", write)
    inside_save = lambda info: any(entry.name == "save" for entry in info.traceback)
    try:
        signals.append(signal.SIGTERM)
        with pytest.raises(Interrupted) as info:
            with Interrupts():
                checkpointer.save(10, state)
                time.sleep(5)  # raised here, within 0.02 s of the save's return
        assert info.value.signum == signal.SIGTERM and not inside_save(info)
        assert [entry["epoch"] for entry in checkpointer.entries()] == [10] and checkpointer.check(10) is None

        signals.extend([signal.SIGINT, signal.SIGINT])
        with pytest.raises(Interrupted) as info:
            with Interrupts():
                checkpointer.save(20, state)
        assert info.value.signum == signal.SIGINT and inside_save(info)
        assert [entry["epoch"] for entry in checkpointer.entries()] == [10]  # the save cut short is not committed
    finally:
        checkpointer.close()


def test_output_into_a_pipe_that_closes_early_ends_quietly_with_status_141(tmp_path):
    """`jgrad ... | head`: the reader goes away while the command still writes to stdout. That ends the
    command with status 141 (as SIGPIPE would) and nothing on stderr, where it printed
    '[Errno 32] Broken pipe' and exited 2."""
    script = ("import jgrad.cli as cli, jgrad.cli._commands as commands\n"
              "commands.COMMANDS['eval'] = lambda args: [print('x' * 1000, flush=True) for _ in range(10000)]\n"
              "raise SystemExit(cli.main())\n")
    process = subprocess.Popen([sys.executable, "-c", script, "eval", "--workdir", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.read(10) == b"x" * 10
    process.stdout.close()
    with process.stderr:
        assert process.wait(timeout=60) == 141
        assert process.stderr.read() == b""
