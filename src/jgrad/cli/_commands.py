"""The ``jgrad`` commands. Only the standard library at module level: each command imports what it uses."""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from pathlib import Path

_IGNORED_BY_EVAL = ("train.progress",)  # display only: does not change what a checkpoint holds


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
    existing = " (it exists: a run there resumes or reports that it finished)" if workdir.exists() else ""
    print(f"{config.name}: writing to {workdir}{existing}", flush=True)

    from ..train import train_and_evaluate

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
    status = module.main(argv)
    return 0 if status is None else int(status)


COMMANDS = {"train": train, "eval": evaluate, "demo": demo}
