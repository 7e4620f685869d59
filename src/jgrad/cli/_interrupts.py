"""How ``jgrad`` commands stop on SIGINT (Ctrl-C) and SIGTERM: `Interrupts` turns both into `Interrupted`
in the main thread, holding one that lands in a checkpoint save until the save returns, and
`exit_now` ends the process after the message without the interpreter's shutdown. Standard library
only, so ``jgrad --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT (Ctrl-C) or SIGTERM while a command runs; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class Interrupts:
    """While a command runs (``with Interrupts():``), SIGINT and SIGTERM (what job schedulers send) raise
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
        self._previous = {signum: signal.getsignal(signum) for signum in SIGNAL_NAMES}
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


def exit_now(status: int) -> None:
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
