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
which epoch its last checkpoint holds and the command that resumes it. This module imports only the
standard library, so ``jgrad --help`` starts fast; the commands import the training stack when they run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from . import _commands
from ._errors import exit_status, one_line

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


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT (Ctrl-C) or SIGTERM while a command runs; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class _Interrupts:
    """While a command runs (``with _Interrupts():``), SIGINT and SIGTERM (what job schedulers send) raise
    `Interrupted` in the main thread.

    The command then unwinds as after Ctrl-C: ``finally`` blocks close the checkpointer and the workdir
    lock. A signal that arrives while `jgrad.train.Checkpointer.save` runs in the main thread is raised
    when the save returns (a thread looks every 20 ms), so the checkpoint is written whole and is the one
    a rerun resumes from; a second signal during that save is raised at once (a save cut short is never
    committed, its manifest being the commit point, so the previous checkpoint stays).

    Python drops an exception raised where it cannot propagate, such as a garbage-collection callback
    (jax runs one) that the signal happened to interrupt, and reports it to `sys.unraisablehook`; for an
    `Interrupted` this sends the signal again a moment later, so that it is raised where it propagates.
    A signal the process ignores (``nohup``, a background job) stays ignored; outside the main thread,
    where no handler can be set, both keep their actions.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._active = False
        self._previous: dict[int, object] = {}
        self._hook = None
        self._deferred: int | None = None  # a signal held until the checkpoint save running now returns

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        self._previous = {signum: signal.getsignal(signum) for signum in _SIGNAL_NAMES}
        self._hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        self._active = True
        for signum, action in self._previous.items():
            if action is not signal.SIG_IGN:
                signal.signal(signum, self._raise)
        return self

    def __exit__(self, *exc_info):
        with self._lock:
            self._active = False
        for signum, action in self._previous.items():
            signal.signal(signum, action)
        if self._hook is not None:
            sys.unraisablehook = self._hook
        return False

    def _raise(self, signum, frame):
        if not self._active:
            return
        if self._deferred is None and _in_checkpoint_save(frame):
            self._deferred = signum
            threading.Thread(target=self._after_save, args=(signum,), daemon=True).start()
            return
        self._deferred = None
        raise Interrupted(signum)

    def _after_save(self, signum):
        main = threading.main_thread().ident
        while _in_checkpoint_save(sys._current_frames().get(main)):
            time.sleep(0.02)
        with self._lock:
            if self._active and self._deferred == signum:
                self._deferred = None
                os.kill(os.getpid(), signum)

    def _unraisable(self, unraisable):
        if isinstance(unraisable.exc_value, Interrupted):
            threading.Timer(0.05, self._send, (unraisable.exc_value.signum,)).start()
        else:
            self._hook(unraisable)

    def _send(self, signum):
        with self._lock:
            if self._active:
                os.kill(os.getpid(), signum)


def _in_checkpoint_save(frame) -> bool:
    """Whether ``frame`` (a thread's current frame, or None) is inside `jgrad.train.Checkpointer.save`."""
    module = sys.modules.get("jgrad.train._checkpoint")
    save = getattr(getattr(module, "Checkpointer", None), "save", None)
    while frame is not None and save is not None:
        if frame.f_code is save.__code__:
            return True
        frame = frame.f_back
    return False


def _exit_now(status: int) -> None:
    """Ends the process with ``status`` after flushing its output, without the interpreter's shutdown.

    After an interrupt that shutdown is not safe: interrupted in its first seconds (while jax is imported
    and compiles), the process crashed in a native thread during shutdown (SIGSEGV, status 139 instead of
    130) in 4 of 10 such test runs, and the threads of a checkpoint save cut short (by a second signal)
    print errors as they fail. Nothing is lost by skipping it: ``finally`` blocks have run, and a
    checkpoint counts only once its manifest is on disk (fsync), as for a process killed with SIGKILL.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``jgrad`` command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    whole_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return _commands.bench(argv[1:])
    args = _parser().parse_args(argv)
    workdir_given = getattr(args, "workdir", None) is not None
    try:
        with _Interrupts():
            return _commands.COMMANDS[args.command](args)
    except KeyboardInterrupt as interrupt:
        signum = getattr(interrupt, "signum", signal.SIGINT)
        for line in _commands.interrupted(args, argv, workdir_given, _SIGNAL_NAMES.get(signum, "")):
            print(f"jgrad {args.command}: {line}", file=sys.stderr)
        if whole_process:
            _exit_now(128 + signum)
        return 128 + signum
    except Exception as error:  # noqa: BLE001 - every failure becomes one line and an exit status
        if os.environ.get("JGRAD_TRACEBACK"):
            raise
        print(f"jgrad {args.command}: {one_line(error, _commands.files_of(args))}", file=sys.stderr)
        return exit_status(error)
