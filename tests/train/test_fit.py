"""fit: vmap over seeds, per-seed early stopping, checkpoint resume, NaN handling."""

import json

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
