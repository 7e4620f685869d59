"""The ``jgrad`` commands. Only the standard library at module level: each command imports what it uses."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path

# Neither changes what a checkpoint holds: the progress bar, and how often checkpoints are written (which a
# resumed run may change, see jgrad.train._experiment.RESUMABLE_CHANGES).
_IGNORED_BY_EVAL = ("train.progress", "train.checkpoint_every")


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if getattr(args, "seeds", None) is not None:
        overrides.append(f"train.seeds={args.seeds}")
    return overrides


def default_workdir(config_path: str, now: float | None = None) -> Path:
    """``runs/<config stem>-<YYYYmmdd-HHMMSS>`` relative to the current directory, made unique with ``-2``,
    ``-3``, ... if a run started in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = Path("runs") / f"{Path(config_path).stem}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def files_of(args: argparse.Namespace) -> list[tuple[str, object]]:
    """The files a command works on, for its error messages."""
    files = [("config", getattr(args, "config", None)), ("workdir", getattr(args, "workdir", None))]
    return [(label, path) for label, path in files if path is not None]


def train(args: argparse.Namespace) -> int:
    from ..config import check_data_source, load_config

    config = load_config(args.config, _overrides(args))
    check_data_source(config.data, args.data_dir)  # a dataset that cannot be read fails before "writing to"
    if args.workdir is None:
        args.workdir = default_workdir(args.config)
    workdir = Path(args.workdir)
    print(f"{config.name}: writing to {workdir}{_what_is_there(workdir)}", flush=True)

    from ..train import train_and_evaluate

    with _announcements(config.name):
        result = train_and_evaluate(config, workdir, data_dir=args.data_dir)
    resumed = result.resumed_from_epoch
    seeds = f"{len(result.seeds)} seed(s), {result.epochs_run} epochs"
    if result.already_finished:
        print(f"{config.name}: {workdir} already holds this finished run ({seeds}); nothing to train. "
              "Its saved results:")
    else:
        timing = (f"{result.seconds_per_epoch * 1e3:.2f} ms/epoch, compiled in {result.compile_seconds:.1f} s"
                  if math.isfinite(result.seconds_per_epoch) else "no epoch run")
        if resumed is not None:
            seeds = f"resumed from epoch {resumed}; {seeds} ({result.epochs_run - resumed} in this call)"
        print(f"{config.name}: {seeds}, {timing}")
    print(result.table())
    print(f"scores above saved in {workdir / 'results.json'}; per-epoch metrics in {workdir / 'metrics.jsonl'}")
    print(f"{workdir}: {_listing(workdir)}")
    return 0


def _what_is_there(workdir: Path) -> str:
    """What the "writing to" line says about a workdir that exists already ("" for a new or empty one).

    Raises:
      NotADirectoryError: the workdir, or a folder above it, is a file.
      PermissionError: the workdir, or the folder it would be made in, is not writable.
    """
    existing = next((path for path in (workdir, *workdir.parents) if path.exists()), None)
    shown = f"{existing.resolve()} (the current folder)" if existing == Path(".") else existing
    where = f"workdir {workdir}" if existing == workdir else f"workdir {workdir}: {shown}"
    if existing is not None and not existing.is_dir():
        raise NotADirectoryError(f"{where} is a file, not a folder; give --workdir a new folder or a run's.")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        run = existing == workdir and (workdir / "config.yaml").is_file()
        raise PermissionError(f"{where} is not writable (permission denied); give --workdir a folder you can write "
                              "to" + (" (`jgrad eval --workdir` reads a run without writing)." if run else "."))
    if existing != workdir or not any(workdir.iterdir()):
        return ""
    if (workdir / "checkpoints" / "manifest.json").exists():
        return " (it exists: a run there resumes or reports that it finished)"
    if (workdir / "config.yaml").exists():
        return " (it exists; the run there wrote no checkpoint, so training starts from epoch 0)"
    return " (it exists and holds no run; the files in it stay)"


class _PrintInfo(logging.Filter):
    """Prints the ``jgrad.train`` logger's INFO records (a resumed run's starting checkpoint) to stdout as
    ``<name>: <message>`` lines and keeps them from other handlers; warnings pass on unchanged."""

    def __init__(self, name: str):
        super().__init__()
        self.prefix = name

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        print(f"{self.prefix}: {record.getMessage()}", flush=True)
        return False


@contextlib.contextmanager
def _announcements(name: str):
    """While the block runs, ``jgrad.train`` INFO messages are lines of the command's output."""
    logger = logging.getLogger("jgrad.train")
    level, printer = logger.level, _PrintInfo(name)
    logger.addFilter(printer)
    if not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeFilter(printer)
        logger.setLevel(level)


def interrupted(args: argparse.Namespace, argv: list[str], workdir_given: bool, how: str) -> list[str]:
    """The lines printed when a command is interrupted (``how``: "Ctrl-C", "SIGTERM"): for ``train`` with
    a workdir, the epoch of its last committed checkpoint (or that there is none yet), and the command that
    resumes it: the same one, with ``--workdir`` added if the run chose its own."""
    stopped = f"interrupted ({how})" if how else "interrupted"
    workdir = getattr(args, "workdir", None)
    if args.command != "train" or workdir is None:
        return [f"{stopped}."]
    workdir = Path(workdir)
    command = shlex.join(["jgrad", *argv] + ([] if workdir_given else ["--workdir", str(workdir)]))
    entry = _last_checkpoint(workdir / "checkpoints" / "manifest.json")
    if entry is None:
        written = "wrote no checkpoint yet" if workdir.exists() else "had written nothing yet"
        return [f"{stopped}; the run in {workdir} {written}, so a rerun starts from epoch 0.",
                f"to start it again: {command}"]
    if entry.get("info", {}).get("finished") is True:
        return [f"{stopped}; {workdir} holds the finished run (last checkpoint: epoch {entry['epoch']}).",
                f"to print its results: {command}"]
    return [f"{stopped}; the last checkpoint in {workdir} holds epoch {entry['epoch']} (later epochs are "
            "trained again).", f"to resume from it, run the same command: {command}"]


def _last_checkpoint(manifest: Path) -> dict | None:
    """The newest checkpoint the manifest commits, or None (no manifest, or not one jgrad wrote)."""
    try:
        entries = json.loads(manifest.read_text())["checkpoints"]
        return max((e for e in entries if isinstance(e.get("epoch"), int)), key=lambda e: e["epoch"], default=None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _listing(workdir: Path, most: int = 8) -> str:
    """The files and folders in ``workdir`` (one level into folders), hidden ones left out."""
    visible = lambda folder: sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    entries = []
    for path in visible(workdir):
        if path.is_dir():
            inside = [p.name for p in visible(path)]
            more = f", ... {len(inside) - most} more" if len(inside) > most else ""
            entries.append(f"{path.name}/ ({', '.join(inside[:most])}{more})")
        else:
            entries.append(path.name)
    return ", ".join(entries)


def evaluate(args: argparse.Namespace) -> int:
    from ..config import ConfigError, config_differences, format_differences, load_config

    workdir = Path(args.workdir)
    saved = workdir / "config.yaml"
    if not workdir.is_dir():
        state = "is a file, not a folder" if workdir.exists() else "does not exist"
        raise FileNotFoundError(f"workdir {workdir} {state}; give --workdir the folder of a `jgrad train` run.")
    if args.config is None and not saved.is_file():
        raise FileNotFoundError(f"{workdir} has no config.yaml; give the config the run was trained with.")
    config = load_config(saved if args.config is None else args.config, _overrides(args))
    if saved.is_file():
        differences = config_differences(load_config(saved), config, ignore=_IGNORED_BY_EVAL)
        if differences:
            given = "--set" if args.config is None else args.config
            raise ConfigError(f"{given} differs from the run's config {saved} in "
                              f"{format_differences(differences, 'in the run', 'given')}; refusing to evaluate "
                              f"the run's checkpoint as another model. Use `jgrad eval --workdir {workdir}` to "
                              "evaluate it with its own config.")

    from ..train import evaluate_checkpoint, format_table

    seeds, scores = evaluate_checkpoint(config, workdir, data_dir=args.data_dir)
    print(f"{config.name}: best checkpoint in {workdir}")
    print(format_table(seeds, scores))
    print(f"scores above computed now, not saved; the run's own are in {workdir / 'results.json'}")
    return 0


def demo(args: argparse.Namespace) -> int:
    from ..train import run_demo

    run_demo(node=args.node, k=args.top, seed=args.seed)
    return 0


def bench(argv: list[str]) -> int:
    try:
        module = importlib.import_module("jgrad.bench")
    except ModuleNotFoundError as error:
        if error.name not in ("jgrad.bench",):
            raise
        print("jgrad bench: unavailable; this installation has no jgrad.bench module.", file=sys.stderr)
        return 2
    try:
        status = module.main(argv)
    except ModuleNotFoundError as error:  # a package the benchmark needs that `make demo` does not install
        if not error.name or error.name.startswith("jgrad"):
            raise
        print(f"jgrad bench: needs {error.name}, which is not installed; `make bench` (or "
              "`pip install -e \".[bench]\"`) installs what the benchmark uses.", file=sys.stderr)
        return 2
    return 0 if status is None else int(status)


COMMANDS = {"train": train, "eval": evaluate, "demo": demo}
