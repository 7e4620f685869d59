"""The ``jgrad`` command line: ``train``, ``eval``, ``demo`` and ``bench``.

Examples::

    jgrad demo
    jgrad train configs/gcn_cora.yaml --seeds 10          # writes to runs/gcn_cora-<YYYYmmdd-HHMMSS>
    jgrad train configs/gcn_cora.yaml --workdir runs/gcn_cora --set model.hidden=64
    jgrad eval --workdir runs/gcn_cora                     # the run's own config.yaml
    jgrad bench --help

Every error prints one line to stderr naming what is wrong and the file involved, and exits with
status 2 (1 for a diverged run), without a traceback; set ``JGRAD_TRACEBACK=1`` to see one. Ctrl-C
(SIGINT) and SIGTERM stop a command the same way, with status 130 and 143; ``jgrad train`` then says
which epoch its last checkpoint holds and the command that resumes it. Output into a pipe that closes
early (``jgrad train ... | head``) ends the command quietly with status 141, as SIGPIPE would. This module imports only the
standard library, so ``jgrad --help`` starts fast; the commands import the training stack when they run.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from . import _commands
from ._errors import exit_status, one_line
from ._interrupts import SIGNAL_NAMES, Interrupts, exit_now

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (then exit status 2), like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {' '.join(message.split())} (see {self.prog} --help).\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jgrad", description="Exact, memory-frugal gradients through "
                                     "graph message passing: training and demos.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model from a YAML config",
                                description="Train a model from a YAML config over one or more seeds. Prints "
                                "where it writes, and at the end the files written.")
    train.add_argument("config", help="the YAML config, e.g. configs/gcn_cora.yaml")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="override a config value, e.g. --set model.hidden=64 (repeatable)")
    train.add_argument("--data-dir", help="a folder of Planetoid files to read instead of the shipped datasets "
                       "(overrides data.root and JGRAD_DATA)")
    train.add_argument("--workdir", help="where checkpoints, logs, config and results go (default: "
                       "runs/<config name>-<YYYYmmdd-HHMMSS>); a workdir holding this run resumes it")
    train.add_argument("--seeds", type=int, help="number of seeds, trained together (overrides train.seeds)")

    evaluate = commands.add_parser("eval", help="score the best checkpoint of a run",
                                   description="Load the best checkpoint in WORKDIR and print its metrics. "
                                   "Refuses a CONFIG that differs from the run's saved config.yaml.")
    evaluate.add_argument("config", nargs="?", help="the YAML config the run was trained with "
                          "(default: WORKDIR/config.yaml)")
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
    whole_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # jgrad.bench parses its own arguments; errors and signals are handled here
        args = argparse.Namespace(command="bench")
        command = lambda: _commands.bench(argv[1:])  # noqa: E731
    else:
        args = _parser().parse_args(argv)
        command = lambda: _commands.COMMANDS[args.command](args)  # noqa: E731
    workdir_given = getattr(args, "workdir", None) is not None
    try:
        with Interrupts():
            return command()
    except KeyboardInterrupt as interrupt:
        signum = getattr(interrupt, "signum", signal.SIGINT)
        for line in _commands.interrupted(args, argv, workdir_given, SIGNAL_NAMES.get(signum, "")):
            print(f"jgrad {args.command}: {line}", file=sys.stderr)
        if whole_process:
            exit_now(128 + signum)
        return 128 + signum
    except BrokenPipeError:  # the reader of stdout went away (`jgrad train ... | head`): nothing to report
        _stdout_to_devnull()
        return 128 + signal.SIGPIPE
    except Exception as error:  # noqa: BLE001 - every failure becomes one line and an exit status
        if os.environ.get("JGRAD_TRACEBACK"):
            raise
        print(f"jgrad {args.command}: {one_line(error, _commands.files_of(args))}", file=sys.stderr)
        return exit_status(error)


def _stdout_to_devnull() -> None:
    """Points the process's stdout at /dev/null, so that the flush at exit does not fail on the closed
    pipe again (Python would print "Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor (captured output)
        pass
