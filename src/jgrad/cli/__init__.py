"""The ``jgrad`` command line: ``train``, ``eval``, ``demo`` and ``bench``.

Examples::

    jgrad demo
    jgrad train configs/gcn_cora.yaml --data-dir ~/data/planetoid --workdir runs/gcn_cora --seeds 10
    jgrad train configs/gcn_cora.yaml --set model.hidden=64 --set optim.learning_rate=0.005
    jgrad eval configs/gcn_cora.yaml --workdir runs/gcn_cora
    jgrad bench --help

Errors in the user's input (unknown config key, missing data, bad workdir) print one line to stderr
and exit with status 2 (1 for a diverged run), without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jgrad", description="Exact, memory-frugal gradients through "
                                     "graph message passing: training and demos.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model from a YAML config",
                                description="Train a model from a YAML config over one or more seeds.")
    train.add_argument("config", help="the YAML config, e.g. configs/gcn_cora.yaml")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="override a config value, e.g. --set model.hidden=64 (repeatable)")
    train.add_argument("--data-dir", help="the folder of the Planetoid files (overrides data.root and JGRAD_DATA)")
    train.add_argument("--workdir", help="where checkpoints, logs, config and results go; an existing run resumes")
    train.add_argument("--seeds", type=int, help="number of seeds, trained together (overrides train.seeds)")

    evaluate = commands.add_parser("eval", help="score the best checkpoint of a run",
                                   description="Load the best checkpoint in WORKDIR and print its metrics.")
    evaluate.add_argument("config", help="the YAML config the run was trained with")
    evaluate.add_argument("--workdir", required=True, help="the run's workdir")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                          help="override a config value (repeatable)")
    evaluate.add_argument("--data-dir", help="the folder of the Planetoid files")

    demo = commands.add_parser("demo", help="train a GCN on the karate club and explain a prediction",
                               description="Train a GCN on Zachary's karate club (no files needed), then "
                               "list the existing and missing edges its prediction for one member depends on.")
    demo.add_argument("--node", type=int, help="the member to explain (default: the least confident one)")
    demo.add_argument("--top", type=int, default=5, help="edges listed per table (default 5)")
    demo.add_argument("--seed", type=int, default=0, help="training seed (default 0)")

    commands.add_parser("bench", help="run the benchmarks (jgrad.bench); arguments are passed through",
                        add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``jgrad`` command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    args = _parser().parse_args(argv)
    from ..config import ConfigError
    from ..train import NonFiniteLossError

    try:
        return _COMMANDS[args.command](args)
    except NonFiniteLossError as error:
        print(f"jgrad {args.command}: {error}", file=sys.stderr)
        return 1
    except (ConfigError, OSError, ValueError, pickle.UnpicklingError) as error:
        message = " ".join(str(error).split("\n")) if isinstance(error, ConfigError) else str(error)
        print(f"jgrad {args.command}: {message}", file=sys.stderr)
        return 2


def _load(args):
    from ..config import load_config

    overrides = list(args.overrides)
    if getattr(args, "seeds", None) is not None:
        overrides.append(f"train.seeds={args.seeds}")
    return load_config(args.config, overrides)


def _train(args) -> int:
    from ..train import train_and_evaluate

    config = _load(args)
    result = train_and_evaluate(config, args.workdir, data_dir=args.data_dir)
    print(f"{config.name}: {len(result.seeds)} seed(s), {result.epochs_run} epochs, "
          f"{result.seconds_per_epoch * 1e3:.2f} ms/epoch, compiled in {result.compile_seconds:.1f} s")
    print(result.table())
    return 0


def _eval(args) -> int:
    from ..config import load_config
    from ..train import evaluate_checkpoint, format_table

    saved = Path(args.workdir) / "config.yaml"
    if saved.is_file():  # the run's own resolved config (e.g. its seed count), then any --set on top
        config = load_config(saved, list(args.overrides))
    else:
        config = _load(args)
    seeds, scores = evaluate_checkpoint(config, args.workdir, data_dir=args.data_dir)
    print(f"{config.name}: best checkpoint in {args.workdir}")
    print(format_table(seeds, scores))
    return 0


def _demo(args) -> int:
    from ..train import run_demo

    run_demo(node=args.node, k=args.top, seed=args.seed)
    return 0


def _bench(argv: list[str]) -> int:
    try:
        bench = importlib.import_module("jgrad.bench")
    except ModuleNotFoundError as error:
        if error.name not in ("jgrad.bench",):
            raise
        print("jgrad bench: unavailable; this installation has no jgrad.bench module.", file=sys.stderr)
        return 2
    status = bench.main(argv)
    return 0 if status is None else int(status)


_COMMANDS = {"train": _train, "eval": _eval, "demo": _demo}
