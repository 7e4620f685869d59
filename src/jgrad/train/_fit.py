"""`fit`: full-batch node classification over several seeds in one compiled, vmapped run."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from flax import nnx

from ._checkpoint import Checkpointer, _to_savable, has_unlisted_checkpoints
from ._logging import MetricsLog, Progress, write_json_atomic
from ._model import ModelDef, init_params
from ._state import TrainState
from ._step import EarlyStopping, evaluate, make_epoch_step
from ._workdir import fingerprint, lock_workdir, signature

logger = logging.getLogger("jgrad.train")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the epoch, the seed and the checkpoint."""


class FitResult(NamedTuple):
    """What `fit` returns.

    Attributes:
      state: the final `TrainState`, every leaf with a leading seed axis B.
      model_def: the static half of the model (``model_def.apply(params, graph, x)``).
      seeds: the B integer seeds.
      epochs_run: epochs the batch ran (until every seed had stopped, or ``epochs``).
      scores: per-seed numpy arrays of shape (B,): ``best_epoch``, ``stop_epoch`` (0 if it never
        stopped), and ``{train,val,test}_{loss,acc}`` of the kept parameters.
      compile_seconds: time spent tracing and compiling the epoch loop in this call. The compiled loop is
        kept for later calls in the same process (see `fit`), so a call that reuses it reports only the
        time to look it up, a few milliseconds at most.
      seconds_per_epoch: wall time per epoch of the compiled loop (all B seeds together), excluding
        compilation and checkpoint writes; ``nan`` if no epoch ran in this call. For a run that was
        already finished, both timings are those the finished run saved in ``results.json``.
      resumed_from_epoch: the epoch of the checkpoint the run resumed from; None for a fresh start.
      already_finished: the workdir already held a finished run (its last checkpoint needs no more
        epochs), so nothing was trained: the result is the saved one, re-scored from its checkpoint.
    """

    state: TrainState
    model_def: ModelDef
    seeds: tuple[int, ...]
    epochs_run: int
    scores: dict[str, np.ndarray]
    compile_seconds: float
    seconds_per_epoch: float
    resumed_from_epoch: int | None = None
    already_finished: bool = False

    def summary(self) -> dict[str, Any]:
        """Mean and standard deviation (over seeds) of each score, plus timings, as plain Python."""
        out: dict[str, Any] = {"seeds": list(self.seeds), "epochs_run": self.epochs_run,
                               "compile_seconds": self.compile_seconds,
                               "seconds_per_epoch": self.seconds_per_epoch,
                               "resumed_from_epoch": self.resumed_from_epoch}
        for name, values in self.scores.items():
            values = np.asarray(values, np.float64)
            out[name] = {"mean": float(values.mean()), "std": float(values.std()), "per_seed": values.tolist()}
        return out

    def table(self) -> str:
        """A plain-text table: one row per seed, then mean ± std."""
        return format_table(self.seeds, self.scores)


def format_table(seeds: Sequence[int], scores: dict[str, np.ndarray]) -> str:
    """The per-seed table printed at the end of a run (see `FitResult.table`).

    "stop ep" reads "-" for a seed that never stopped early (``stop_epoch`` 0), and its mean and std
    are over the seeds that did. A split whose loss and accuracy are both 0 for every seed has no nodes
    (`masked_cross_entropy`'s value for an empty mask; a split with nodes has a positive loss or
    accuracy): its columns read "-", and a line under the table says so."""
    columns = [("best_epoch", "best ep", "{:.0f}"), ("stop_epoch", "stop ep", "{:.0f}"),
               ("train_acc", "train acc", "{:.4f}"), ("val_loss", "val loss", "{:.4f}"),
               ("val_acc", "val acc", "{:.4f}"), ("test_acc", "test acc", "{:.4f}")]
    columns = [c for c in columns if c[0] in scores]
    stopped = np.asarray(scores.get("stop_epoch", ())) > 0
    empty = [split for split in ("train", "val", "test")
             if all(f"{split}_{score}" in scores and not np.any(np.asarray(scores[f"{split}_{score}"]))
                    for score in ("loss", "acc"))]

    def cell(name, fmt, values, reduce=None):  # one seed's value (reduce None) or the seeds' mean or std
        values = np.asarray(values, float)
        if name.split("_")[0] in empty:
            return "-"
        if name == "stop_epoch":
            values = values[stopped] if reduce else values
            if values.size == 0 or (reduce is None and values == 0):
                return "-"
        return fmt.format(float(reduce(values) if reduce else values))

    header = ["seed"] + [title for _, title, _ in columns]
    rows = [[str(seed)] + [cell(name, fmt, scores[name][i]) for name, _, fmt in columns]
            for i, seed in enumerate(seeds)]
    mean_row = ["mean"] + [cell(name, fmt, scores[name], np.mean) for name, _, fmt in columns]
    std_row = ["± std"] + [cell(name, fmt, scores[name], np.std) for name, _, fmt in columns]
    rows += [mean_row, std_row]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    line = lambda row: "  ".join(cell.rjust(width) for cell, width in zip(row, widths))
    rule = "-" * len(line(header))
    words = {"train": "training", "val": "validation", "test": "test"}
    notes = [f'"-" in the {split} columns: the dataset has no {words[split]} nodes' for split in empty]
    return "\n".join([line(header), rule] + [line(r) for r in rows[:-2]] + [rule] + [line(r) for r in rows[-2:]]
                     + notes)


def fit(
    make_model: Callable[[nnx.Rngs], nnx.Module],
    dataset: Any,
    optimizer: optax.GradientTransformation,
    *,
    seeds: int | Sequence[int] = 1,
    epochs: int = 200,
    early_stopping: EarlyStopping = EarlyStopping(),
    log_every: int = 10,
    workdir: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    progress: bool = True,
    on_chunk: Callable[[int, TrainState], None] | None = None,
    penalty: Callable[[Any], jax.Array] | None = None,
) -> FitResult:
    """Trains a node classifier full-batch, for several seeds at once, with per-seed early stopping.

    Seed ``s`` draws its initial parameters and its dropout stream from ``jax.random.key(s)``. All B seeds
    are one ``jax.vmap`` over the epoch step (`make_epoch_step`), so they share one compilation; every
    ``log_every`` epochs run as one compiled ``lax.scan`` whose state buffers are donated. A seed that
    early-stops is frozen while the others continue, so its result equals a run with that seed alone
    (up to float reassociation in batched matrix products); the batch ends when all have stopped.

    With ``workdir``, it writes a checkpoint (`Checkpointer`: ``last`` and ``best`` committed together by
    ``checkpoints/manifest.json``, with checksums) every ``checkpoint_every`` epochs and at the end, appends
    per-epoch metrics to ``workdir/metrics.jsonl`` and writes ``workdir/results.json``. The run holds
    ``workdir/.lock`` throughout, so a second writer fails at once (`WorkdirBusyError`); the OS releases
    the lock when the process dies. If ``workdir`` already holds a checkpoint, the run resumes from the
    newest intact one (a damaged one is skipped with a warning naming the bad file), after checking
    that the data (a fingerprint of the dataset's arrays), seeds, state shapes and early stopping are
    those the run started with; the metrics log is cut back to the checkpoint's epoch, so it holds each
    epoch once. The resumed run reaches the same final state as an uninterrupted one (deterministic on
    CPU). If the checkpoint needs no more epochs, nothing is trained (``already_finished``).

    The compiled programs (state initialisation, epoch loop, evaluation) are kept for the rest of the
    process, for the last few settings used: a later call with an equal model structure (``nnx``
    graph definition), the same ``optimizer`` and ``penalty`` objects, equal ``early_stopping``, and
    data and seeds of the same shapes, dtypes and graph structure runs the same executables without
    tracing or compiling again (`make_optimizer` returns the same object for equal arguments). A model
    with non-parameter variables, or an unhashable optimizer or penalty, is compiled on every call.

    Args:
      make_model: builds the model from an `nnx.Rngs`; called once per seed inside ``jax.vmap``.
      dataset: a `jgrad.data.NodeDataset`; moved to the device once.
      optimizer: e.g. `make_optimizer`.
      seeds: B seeds ``0..B-1`` if an int, else the seeds themselves.
      epochs: the most epochs to run.
      early_stopping: the stopping criterion and patience (`EarlyStopping`).
      log_every: epochs per compiled chunk; logs, the progress bar and the NaN check follow chunks.
      workdir: where checkpoints and logs go; None keeps everything in memory.
      checkpoint_every: epochs between checkpoints, a multiple of ``log_every``.
      progress: show a progress bar on stderr.
      on_chunk: called as ``on_chunk(epoch, state)`` after each chunk (and its checkpoint).
      penalty: added to the validation loss that early stopping judges (see `make_epoch_step`).

    Returns:
      A `FitResult`.

    Raises:
      NonFiniteLossError: the training loss became NaN or infinite. Nothing from that chunk is saved,
        so the last checkpoint on disk is the last good one; the message names it.
      ValueError: inconsistent arguments (bad ``checkpoint_every``, no seeds, ...), or a workdir whose
        run differs from this one (data, seeds, model, early stopping); `CheckpointError` (a ValueError)
        if it holds checkpoints but none is intact.
      WorkdirBusyError: another process is training in ``workdir``.
    """
    seeds = tuple(range(seeds)) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
    early_stopping = EarlyStopping(*early_stopping).check()
    problems = []
    if not seeds:
        problems.append("fit: needs at least one seed; got none.")
    if epochs < 1 or log_every < 1:
        problems.append(f"fit: epochs and log_every must be >= 1; got epochs={epochs}, log_every={log_every}.")
    elif checkpoint_every < 1 or checkpoint_every % log_every:
        problems.append(f"fit: checkpoint_every must be a positive multiple of log_every={log_every}; "
                        f"got {checkpoint_every}.")
    if problems:
        raise ValueError("\n".join(problems))

    with contextlib.ExitStack() as stack:
        if workdir is not None:
            workdir = stack.enter_context(lock_workdir(workdir))
        return _fit(make_model, dataset, optimizer, seeds, epochs, early_stopping, log_every, workdir,
                    checkpoint_every, progress, on_chunk, penalty)


def _fit(make_model, dataset, optimizer, seeds, epochs, early_stopping, log_every, workdir, checkpoint_every,
         progress, on_chunk, penalty) -> FitResult:
    data_fingerprint = fingerprint(dataset) if workdir is not None else None
    dataset = jax.device_put(dataset)
    keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s)))(_seed_array(seeds))
    model_def, params = init_params(make_model, keys[:, 0])
    programs = _programs(model_def, optimizer, early_stopping, penalty)
    state = programs.create(params, keys[:, 1])
    state_signature, placement = _signature(state), _placement(state)

    checkpointer = log = None
    start, resumed, saved_info, run_info = 0, False, {}, {}
    if workdir is not None:
        run_info = {"data": data_fingerprint, "state_signature": signature(_to_savable(state)),
                    "seeds": list(seeds), "early_stopping": list(early_stopping)}
        checkpointer, log = Checkpointer(workdir / "checkpoints"), MetricsLog(workdir / "metrics.jsonl")
        try:
            start, state, saved_info = _resume(workdir, checkpointer, log, state, run_info)
        except BaseException:
            checkpointer.close()
            raise
        resumed = saved_info is not None
        saved_info = saved_info or {}
        if resumed and start < epochs and not bool(np.all(jax.device_get(state.stopped))):
            logger.info("resuming from the checkpoint at epoch %d in %s", start, workdir)
        # A restored state is committed to its device. Where that is the fresh state's device and
        # sharding, the loop is lowered from the fresh signature (the same program); otherwise from its own.
        if resumed and _placement(state) != placement:
            state_signature = _signature(state)

    compiled: dict[int, Any] = {}
    compile_seconds = 0.0

    def chunk_fn(length: int):
        nonlocal compile_seconds
        if length not in compiled:
            begin = time.perf_counter()
            # jax keeps the lowering and the executable of `programs.run_chunk` per input signature (pytree
            # structure, shapes, dtypes, shardings, jax config), so a kept program returns at once here.
            compiled[length] = programs.run_chunk.lower(state_signature, _signature(dataset), length).compile()
            compile_seconds += time.perf_counter() - begin
        return compiled[length]

    epoch = start
    run_seconds = 0.0
    saved_epoch = start if resumed else None
    bar = Progress(epochs, initial=start, enabled=progress)
    # the split accuracies the bar shows: not those of a split without nodes (0, read as "-" in the table)
    shown = ["loss"] + [f"{split}_acc" for split in ("val", "test")
                        if np.any(np.asarray(getattr(dataset, f"{split}_mask", True)))]
    try:
        while epoch < epochs and not bool(np.all(jax.device_get(state.stopped))):
            length = min(log_every, epochs - epoch)
            run = chunk_fn(length)
            begin = time.perf_counter()
            state, metrics = run(state, dataset)
            metrics = jax.device_get(metrics)
            run_seconds += time.perf_counter() - begin
            _check_finite(metrics, epoch, seeds, log, saved_epoch, checkpointer)
            if log is not None:
                log.append(epoch + 1, metrics)
            epoch += length
            bar.update(length, {name: float(np.mean(metrics[name][-1])) for name in shown})
            finished = epoch >= epochs or bool(np.all(metrics["stopped"][-1]))
            if checkpointer is not None and (epoch % checkpoint_every == 0 or finished):
                checkpointer.save(epoch, state, **run_info, finished=finished, metrics_bytes=log.size(),
                                  compile_seconds=compile_seconds,
                                  seconds_per_epoch=run_seconds / (epoch - start))
                saved_epoch = epoch
            if on_chunk is not None:
                on_chunk(epoch, state)
    finally:
        bar.close()
        if checkpointer is not None:
            checkpointer.close()

    scores = jax.device_get(programs.evaluate(state.best_params, dataset))
    scores = {"best_epoch": np.asarray(state.best_epoch), "stop_epoch": np.asarray(state.stop_epoch),
              **{name: np.asarray(value) for name, value in scores.items()}}
    ran = epoch - start
    already_finished = resumed and not ran
    seconds_per_epoch = run_seconds / ran if ran else float("nan")
    results_saved = False
    if already_finished:
        compile_seconds, seconds_per_epoch, results_saved = _saved_timings(workdir / "results.json", epoch,
                                                                           saved_info)
    result = FitResult(state=state, model_def=model_def, seeds=seeds, epochs_run=epoch, scores=scores,
                       compile_seconds=compile_seconds, seconds_per_epoch=seconds_per_epoch,
                       resumed_from_epoch=start if resumed else None, already_finished=already_finished)
    if workdir is not None and not results_saved:
        write_json_atomic(workdir / "results.json", result.summary())
    return result


class _Programs(NamedTuple):
    """The jitted functions of one training setup (model structure, optimizer, early stopping, penalty).

    jax caches their traces and executables per input signature for as long as these functions live.
    """

    create: Callable[[Any, jax.Array], TrainState]  # (params, keys) -> state, batched over seeds
    run_chunk: Any  # jitted (state, dataset, length) -> (state, metrics); length static, state donated
    evaluate: Callable[[Any, Any], dict[str, jax.Array]]  # (best_params, dataset) -> per-seed scores


_PROGRAMS_KEPT = 8
"""How many training setups keep their programs (least recently used ones are dropped first)."""

_kept_programs: collections.OrderedDict[Hashable, _Programs] = collections.OrderedDict()
_kept_programs_lock = threading.Lock()


def _programs(model_def: ModelDef, optimizer: Any, early_stopping: EarlyStopping, penalty: Any) -> _Programs:
    """The `_Programs` of this setup: those of an earlier call with an equal setup, else new ones."""
    key = _setup_key(model_def, optimizer, early_stopping, penalty)
    if key is None:
        return _make_programs(model_def, optimizer, early_stopping, penalty)
    with _kept_programs_lock:
        programs = _kept_programs.get(key)
        if programs is not None:
            _kept_programs.move_to_end(key)
            return programs
    programs = _make_programs(model_def, optimizer, early_stopping, penalty)
    with _kept_programs_lock:
        programs = _kept_programs.setdefault(key, programs)
        _kept_programs.move_to_end(key)
        while len(_kept_programs) > _PROGRAMS_KEPT:
            _kept_programs.popitem(last=False)
    return programs


def _setup_key(model_def: ModelDef, optimizer: Any, early_stopping: EarlyStopping, penalty: Any) -> Hashable | None:
    """What the programs depend on besides their inputs, as a hashable key; None if it cannot be one.

    ``model_def`` compares its graph definition (module types, static attributes, parameter layout); its
    non-parameter variables would be baked into the program as constants, so a model with any is not
    kept. The optimizer and penalty compare as Python objects (functions by identity). Early stopping
    compares field by field with their types, so ``patience=10`` and ``10.0`` stay apart.
    """
    if jax.tree.leaves(model_def.rest):
        return None
    key = (model_def, optimizer, tuple((type(value), value) for value in early_stopping), penalty)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _make_programs(model_def: ModelDef, optimizer: Any, early_stopping: EarlyStopping, penalty: Any) -> _Programs:
    window = early_stopping.window
    create = jax.jit(jax.vmap(lambda p, k: TrainState.create(p, optimizer, k, window=window)))
    batched_step = jax.vmap(make_epoch_step(model_def, optimizer, early_stopping, penalty=penalty), in_axes=(0, None))

    def run_chunk(state, data, length):
        return jax.lax.scan(lambda s, _: batched_step(s, data), state, None, length=length)

    evaluate_all = jax.jit(jax.vmap(lambda p, data: evaluate(model_def, p, data), in_axes=(0, None)))
    return _Programs(create, jax.jit(run_chunk, static_argnums=2, donate_argnums=0), evaluate_all)


def _signature(tree: Any) -> Any:
    """``tree`` with each array replaced by its shape, dtype, weak type and, if committed, its sharding."""
    def abstract(x):
        sharding = x.sharding if x.committed else None
        return jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=jax.typeof(x).weak_type, sharding=sharding)

    return jax.tree.map(abstract, tree)


def _placement(tree: Any) -> tuple:
    """The pytree structure of ``tree`` and each array's shape, dtype, weak type and sharding, hashable."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((x.shape, x.dtype, jax.typeof(x).weak_type, x.sharding) for x in leaves)


def _resume(workdir, checkpointer, log, state, run_info) -> tuple[int, TrainState, dict[str, Any] | None]:
    """``(epoch, state, info)`` of the newest intact checkpoint in ``workdir`` after checking that it
    belongs to this run, with the metrics log cut back to it; ``(0, state, None)`` for a fresh start."""
    entry = checkpointer.latest()
    if entry is None:
        if has_unlisted_checkpoints(checkpointer.directory):
            logger.warning("%s holds checkpoints without a manifest (from an older jgrad, or a run killed "
                           "during its first save); starting again from epoch 0.", checkpointer.directory)
        log.restore(0, 0)
        return 0, state, None
    info = entry.get("info", {})
    _check_resumable(workdir, info, run_info)
    start, state = checkpointer.restore_last(state)
    log.restore(start, info.get("metrics_bytes"))
    return start, state, info


def _check_resumable(workdir: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raises ValueError naming every difference between the saved run and this one."""
    names = {"data": "its data changed (dataset fingerprint)", "seeds": "its seeds differ",
             "state_signature": "the model or optimizer differs (state structure, shapes or dtypes)",
             "early_stopping": "its early stopping differs"}
    problems = []
    for key, what in names.items():
        if key in saved and saved[key] != current[key]:
            got, expected = current[key], saved[key]
            if isinstance(got, str):
                got, expected = got[:12], expected[:12] if isinstance(expected, str) else expected
            problems.append(f"{what}; got {got}, expected {expected}")
    if problems:
        raise ValueError(f"fit: cannot resume the run in {workdir}: " + "; and ".join(problems)
                         + ". Use a new workdir, or the settings and data the run started with.")


def _saved_timings(path: Path, epochs_run: int, info: dict[str, Any]) -> tuple[float, float, bool]:
    """``(compile_seconds, seconds_per_epoch, from_results)`` of a finished run: from its results.json if
    that is readable and of ``epochs_run`` epochs, else from its checkpoint ``info``, else nan."""
    try:
        saved = json.loads(path.read_text())
        if saved.get("epochs_run") == epochs_run:
            return float(saved["compile_seconds"]), float(saved["seconds_per_epoch"]), True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        return float(info["compile_seconds"]), float(info["seconds_per_epoch"]), False
    except (KeyError, TypeError, ValueError):
        return float("nan"), float("nan"), False


def _check_finite(metrics, first_epoch, seeds, log, saved_epoch, checkpointer) -> None:
    loss = np.asarray(metrics["loss"])
    bad = ~np.isfinite(loss)
    if not bad.any():
        return
    row, column = (int(i) for i in np.argwhere(bad)[0])
    if log is not None and row:
        log.append(first_epoch + 1, {name: values[:row] for name, values in metrics.items()})
    if checkpointer is None:
        where = "no checkpoint was written (no workdir)"
    elif saved_epoch is None:
        where = f"no checkpoint had been written yet in {checkpointer.directory}"
    elif (problem := checkpointer.check(saved_epoch)) is None:
        where = f"the last good checkpoint is epoch {saved_epoch} in {checkpointer.directory} (checksums verified)"
    else:
        where = f"the last checkpoint, epoch {saved_epoch} in {checkpointer.directory}, is damaged: {problem}"
    raise NonFiniteLossError(
        f"fit: the training loss is {loss[row, column]} at epoch {first_epoch + row + 1} (seed {seeds[column]}); "
        f"training stopped and {where}. Lower the learning rate or check the inputs for NaN/Inf."
    )


def _seed_array(seeds) -> np.ndarray:
    """Seeds as uint32 for ``jax.random.key``; raises ValueError naming a seed outside [0, 2**32)."""
    bad = [s for s in seeds if not 0 <= int(s) < 2**32]
    if bad:
        raise ValueError(f"fit: seeds must be integers in [0, 2**32); got {bad[:5]}.")
    return np.asarray([int(s) for s in seeds], np.uint32)
