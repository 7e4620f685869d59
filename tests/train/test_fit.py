"""fit: vmap over seeds, per-seed early stopping, checkpoint resume, NaN handling, reuse of compiled loops."""

import dataclasses
import json
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jgrad
from jgrad.data import csbm, karate_club
from jgrad.train import Checkpointer, EarlyStopping, NonFiniteLossError, fit, make_optimizer


@pytest.fixture(scope="module")
def small_csbm():
    return csbm(200, 3, avg_degree=6.0, homophily=0.8, feature_dim=8, signal=0.7, seed=0)


def make_model(data, dropout=0.5):
    return lambda rngs: jgrad.nn.GCN(data.n_features, 8, data.n_classes, dropout=dropout, rngs=rngs)


def test_vmap_over_seeds_matches_a_separate_run_of_one_seed(small_csbm):
    optimizer = make_optimizer(0.05, 5e-4, "first_layer")
    kwargs = dict(epochs=60, early_stopping=EarlyStopping("window", 3), log_every=10, progress=False)
    together = fit(make_model(small_csbm), small_csbm, optimizer, seeds=(0, 1, 2), **kwargs)
    alone = fit(make_model(small_csbm), small_csbm, optimizer, seeds=(1,), **kwargs)
    # Each seed stops on its own, and the batch runs until all have.
    assert (together.scores["stop_epoch"] > 0).all()
    assert together.epochs_run >= together.scores["stop_epoch"].max()
    assert together.scores["stop_epoch"][1] == alone.scores["stop_epoch"][0]
    assert together.scores["best_epoch"][1] == alone.scores["best_epoch"][0]
    jax.tree.map(lambda b, s: np.testing.assert_allclose(b[1], s[0], rtol=1e-4, atol=1e-5),
                 together.state.best_params, alone.state.best_params)
    np.testing.assert_allclose(together.scores["test_acc"][1], alone.scores["test_acc"][0])


def test_resume_after_an_interruption_reaches_the_same_final_parameters(tmp_path, small_csbm):
    optimizer = make_optimizer(0.05, 5e-4, "first_layer")
    kwargs = dict(seeds=2, epochs=30, early_stopping=EarlyStopping("patience", 50), log_every=5,
                  checkpoint_every=10, progress=False)
    straight = fit(make_model(small_csbm), small_csbm, optimizer, workdir=tmp_path / "a", **kwargs)

    def interrupt(epoch, state):
        if epoch == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(make_model(small_csbm), small_csbm, optimizer, workdir=tmp_path / "b", on_chunk=interrupt, **kwargs)
    assert Checkpointer(tmp_path / "b" / "checkpoints").latest_epoch() == 20
    resumed = fit(make_model(small_csbm), small_csbm, optimizer, workdir=tmp_path / "b", **kwargs)
    assert resumed.epochs_run == straight.epochs_run == 30
    jax.tree.map(np.testing.assert_array_equal, resumed.state.params, straight.state.params)
    jax.tree.map(np.testing.assert_array_equal, resumed.state.best_params, straight.state.best_params)
    log = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == list(range(1, 31))
    assert (tmp_path / "b" / "metrics.jsonl").read_text() == (tmp_path / "a" / "metrics.jsonl").read_text()
    summary = json.loads((tmp_path / "b" / "results.json").read_text())
    assert summary["test_acc"]["per_seed"] == straight.scores["test_acc"].tolist()
    assert straight.resumed_from_epoch is None and not straight.already_finished
    assert resumed.resumed_from_epoch == 20 and not resumed.already_finished


def test_fit_in_a_finished_workdir_returns_the_saved_result_without_training(tmp_path, small_csbm):
    optimizer = make_optimizer(0.05, 5e-4, "first_layer")
    kwargs = dict(seeds=2, epochs=10, early_stopping=EarlyStopping("none"), log_every=5, progress=False)
    first = fit(make_model(small_csbm), small_csbm, optimizer, workdir=tmp_path, **kwargs)
    log = (tmp_path / "metrics.jsonl").read_text()
    again = fit(make_model(small_csbm), small_csbm, optimizer, workdir=tmp_path, **kwargs)
    assert again.already_finished and again.resumed_from_epoch == 10 and again.epochs_run == 10
    assert (again.compile_seconds, again.seconds_per_epoch) == (first.compile_seconds, first.seconds_per_epoch)
    assert np.isfinite(again.seconds_per_epoch)
    for name, values in first.scores.items():
        np.testing.assert_array_equal(again.scores[name], values)
    assert (tmp_path / "metrics.jsonl").read_text() == log


class Diverging(nnx.Module):
    """A linear classifier whose loss is NaN once its parameter ``t`` exceeds ``limit``."""

    def __init__(self, *, limit, rngs):
        self.linear = nnx.Linear(34, 2, rngs=rngs)
        self.t = nnx.Param(jnp.zeros(()))
        self.limit = limit

    def __call__(self, graph, x, *, key=None):
        return self.linear(x) + 0.0 * jnp.log(self.limit - self.t[...])


def count_up():
    """An optimizer that adds 1 to every parameter per step, so ``t`` counts the steps taken."""
    return optax.GradientTransformation(lambda params: optax.EmptyState(),
                                        lambda updates, state, params=None: (jax.tree.map(jnp.ones_like, updates), state))


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    data = karate_club()
    # Epoch e trains with t = e - 1, so the loss is first NaN at epoch 14; checkpoints every 5 epochs.
    with pytest.raises(NonFiniteLossError, match=r"fit: the training loss is nan at epoch 14 \(seed 0\); "
                       r"training stopped and the last good checkpoint is epoch 10 in "):
        fit(lambda rngs: Diverging(limit=12.5, rngs=rngs), data, count_up(), seeds=1, epochs=100,
            workdir=tmp_path, early_stopping=EarlyStopping("none"), log_every=5, checkpoint_every=5, progress=False)
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    assert checkpoints.latest_epoch() == 10
    best = checkpoints.restore_best()
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(best["params"]))
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == list(range(1, 14))
    assert all(np.isfinite(record["loss"]).all() for record in log)


def test_fit_rejects_a_checkpoint_interval_that_is_not_a_multiple_of_log_every():
    data = karate_club()
    with pytest.raises(ValueError, match=r"checkpoint_every must be a positive multiple of log_every=10; got 15"):
        fit(make_model(data), data, make_optimizer(0.01), log_every=10, checkpoint_every=15)


def counting_penalty():
    """A zero penalty and the list it appends to each time it is traced (once per compiled epoch loop)."""
    traces = []

    def penalty(params):
        traces.append(1)
        return jnp.zeros((), jnp.float32)

    return penalty, traces


class Linear(nnx.Module):
    """A linear classifier of karate's 34 one-hot features (compiles faster than a GCN)."""

    def __init__(self, *, rngs):
        self.linear = nnx.Linear(34, 2, rngs=rngs)

    def __call__(self, graph, x, *, key=None):
        return self.linear(x)


def assert_same_run(a, b):
    assert a.epochs_run == b.epochs_run
    a_state, b_state = (r.state.replace(key=jax.random.key_data(r.state.key)) for r in (a, b))
    jax.tree.map(np.testing.assert_array_equal, a_state, b_state)
    for name, values in a.scores.items():
        np.testing.assert_array_equal(b.scores[name], values)


def test_fit_reuses_the_compiled_loop_for_equal_settings_and_compiles_anew_otherwise():
    data = karate_club()
    data = dataclasses.replace(data, val_mask=data.test_mask)
    penalty, traces = counting_penalty()

    def run(learning_rate=0.1, early_stopping=EarlyStopping("patience", 1), seeds=1):
        # A new model function and optimizer call each time.
        return fit(lambda rngs: Linear(rngs=rngs), data, make_optimizer(learning_rate), seeds=seeds, epochs=10,
                   log_every=10, early_stopping=early_stopping, penalty=penalty, progress=False)

    seen = 0

    def traced_again() -> bool:
        nonlocal seen
        traced, seen = len(traces) > seen, len(traces)
        return traced

    first = run()
    assert traced_again() and first.scores["stop_epoch"][0] > 0
    again = run()
    assert not traced_again()
    assert_same_run(first, again)
    # Each change below traces a new loop; the shapes are equal, so each difference is the new loop's doing.
    faster = run(learning_rate=1.0)
    assert traced_again() and faster.scores["stop_epoch"][0] != first.scores["stop_epoch"][0]
    never = run(early_stopping=EarlyStopping("none", 1))
    assert traced_again() and never.scores["stop_epoch"][0] == 0
    two = run(seeds=2)
    assert traced_again()
    jax.tree.map(lambda b, s: np.testing.assert_allclose(b[:1], s, rtol=1e-5, atol=1e-6),
                 two.state.params, first.state.params)


class Scaled(nnx.Module):
    """A linear classifier whose logits are multiplied by a non-parameter variable ``scale``."""

    def __init__(self, scale, *, rngs):
        self.linear = nnx.Linear(34, 2, rngs=rngs)
        self.scale = nnx.Variable(jnp.asarray(scale, jnp.float32))

    def __call__(self, graph, x, *, key=None):
        return self.linear(x) * self.scale[...]


def test_fit_does_not_reuse_a_program_across_values_of_non_parameter_variables():
    data = karate_club()
    penalty, traces = counting_penalty()
    kwargs = dict(seeds=1, epochs=5, log_every=5, early_stopping=EarlyStopping("none"), penalty=penalty,
                  progress=False)
    fit(lambda rngs: Scaled(1.0, rngs=rngs), data, make_optimizer(0.01), **kwargs)
    traced = len(traces)
    flat = fit(lambda rngs: Scaled(0.0, rngs=rngs), data, make_optimizer(0.01), **kwargs)
    assert len(traces) > traced
    # Zero logits: the loss is log 2 on every split, whatever the parameters.
    np.testing.assert_allclose(flat.scores["train_loss"], [np.log(2.0)], rtol=1e-6)


def test_make_optimizer_returns_one_object_for_equal_arguments():
    assert make_optimizer(0.01, 5e-4, "first_layer") is make_optimizer(0.01, 5e-4, "first_layer")
    assert make_optimizer(0.01, 5e-4, "first_layer") is not make_optimizer(0.01, 5e-4, "all")
    assert make_optimizer(1, 0.5) is not make_optimizer(1.0, 0.5)
    # An unhashable learning rate still works; it gives a new object each time.
    rate = jnp.asarray(0.01)
    params = {"layers": {0: {"kernel": jnp.ones((3, 2))}}}
    assert make_optimizer(rate, 5e-4) is not make_optimizer(rate, 5e-4)
    make_optimizer(rate, 5e-4).init(params)
    with pytest.raises(ValueError, match=r"make_optimizer: weight_decay must be >= 0; got -1"):
        make_optimizer(0.01, -1)


def test_a_configs_monitored_penalty_compares_equal_so_fit_can_reuse_its_loop():
    from jgrad.config import OptimConfig
    from jgrad.train._experiment import _penalty

    params = {"layers": [{"kernel": jnp.full((2, 2), 2.0)}, {"kernel": jnp.ones((2, 2))}]}
    first, second = _penalty(OptimConfig(weight_decay=0.1)), _penalty(OptimConfig(weight_decay=0.1))
    assert first == second and hash(first) == hash(second)
    assert first != _penalty(OptimConfig(weight_decay=0.2))
    np.testing.assert_allclose(first(params), 0.5 * 0.1 * 16.0)  # the first layer's weights only


def test_the_score_table_marks_seeds_that_never_stopped_early():
    """stop_epoch 0 (never stopped) reads "-" and is left out of the mean and std; other columns keep NaN."""
    from jgrad.train._fit import format_table

    scores = {"best_epoch": np.array([10, 12, 9]), "stop_epoch": np.array([0, 40, 20]),
              "val_acc": np.array([0.5, np.nan, 0.7])}
    lines = format_table([0, 1, 2], scores).splitlines()
    cells = {line.split()[0]: line.split()[1:] for line in lines if not line.startswith("-")}
    assert [cells[seed][1] for seed in ("0", "1", "2")] == ["-", "40", "20"]
    assert cells["mean"][1:] == ["30", "nan"] and cells["±"][2] == "10"  # over seeds 1 and 2 only
    never = format_table([0], {"stop_epoch": np.array([0])}).splitlines()
    assert [line.split()[-1] for line in never[2:] if not line.startswith("-")] == ["-", "-", "-"]


def test_the_score_table_marks_a_split_without_nodes():
    """A split whose loss and accuracy are 0 for every seed (an empty mask) reads "-", with a note; a split
    with an accuracy of 0 but a positive loss keeps its numbers."""
    from jgrad.train._fit import format_table

    scores = {"train_acc": np.array([1.0, 0.9]), "val_loss": np.zeros(2), "val_acc": np.zeros(2),
              "test_loss": np.array([0.7, 0.8]), "test_acc": np.zeros(2)}
    lines = format_table([0, 1], scores).splitlines()
    rows = [line.split() for line in lines[2:] if not line.startswith(("-", '"'))]
    assert [row[-3:] for row in rows] == [["-", "-", "0.0000"]] * 4  # seeds 0 and 1, mean, std
    assert lines[-1] == '"-" in the val columns: the dataset has no validation nodes'
    assert "no " not in format_table([0], {"val_loss": np.array([0.5]), "val_acc": np.array([0.0])})


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_writes_plain_lines_where_stderr_is_not_a_terminal(monkeypatch, capsys, terminal):
    """In a log file or a pipe the progress is one line per tenth of the run, without carriage returns;
    on a terminal (here without tqdm) one status line is rewritten in place."""
    from jgrad.train._logging import Progress
    monkeypatch.setattr("sys.stderr.isatty", lambda: terminal)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # the plain status line, not tqdm's bar
    bar = Progress(100, description="train")
    for _ in range(100):
        bar.update(1, {"loss": 0.5})
    bar.close()
    err = capsys.readouterr().err
    if terminal:
        assert err.count("\r") == 100 and err.endswith("train 100/100 loss=0.5000\n")
    else:
        lines = err.splitlines()
        assert "\r" not in err and len(lines) == 11 and lines[0] == "train 1/100 loss=0.5000"
        assert lines[-1] == "train 100/100 loss=0.5000"


def test_progress_leaves_out_a_split_without_nodes(monkeypatch, capsys):
    """The karate club has no validation nodes: the bar showed val_acc=0.0000 where the table reads "-"."""
    data = karate_club()
    assert not np.any(np.asarray(data.val_mask)) and np.any(np.asarray(data.test_mask))
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    fit(make_model(data), data, make_optimizer(0.01), seeds=1, epochs=4, log_every=2,
        early_stopping=EarlyStopping("none"), progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train ")]
    assert lines and all("loss=" in line and "test_acc=" in line and "val_acc" not in line for line in lines)


def test_progress_keeps_tqdm_in_a_notebook(monkeypatch):
    """A notebook's stderr is no terminal, but tqdm shows its widget there: the bar stays."""
    from jgrad.train._logging import Progress
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    bar = Progress(10)
    assert bar._bar is not None
    bar.close()
