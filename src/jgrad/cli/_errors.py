"""One-line error messages and exit statuses for the command line (standard library only)."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Sequence

_LIMIT = 1000  # characters of an error message shown
_PLAIN = (ValueError, TypeError, OSError, LookupError, FloatingPointError, pickle.UnpicklingError)


def one_line(error: BaseException, files: Sequence[tuple[str, object]] = ()) -> str:
    """The error as one line of at most about 1100 characters that names the files involved.

    Args:
      error: the exception a command raised.
      files: ``(label, path)`` pairs (e.g. ``("config", "configs/x.yaml")``); those the message does not
        already mention are appended in parentheses.
    """
    try:
        text = " ".join(str(error).split())
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the error
        text = ""
    if isinstance(error, MemoryError):
        text = "out of memory (MemoryError)" + (f": {text}" if text else "")
    elif isinstance(error, RecursionError):
        text = "input nested too deeply (RecursionError)"
    elif isinstance(error, UnicodeDecodeError):
        byte = error.object[error.start:error.start + 1]
        text = f"a file is not {error.encoding} text; got byte {byte!r} at offset {error.start}"
    elif not isinstance(error, _PLAIN) or not text:
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
        text += " (set JGRAD_TRACEBACK=1 for the traceback)"
    if len(text) > _LIMIT:
        text = text[: _LIMIT - 3] + "..."
    missing = [f"{label} {path}" for label, path in files if path is not None and str(path) not in text]
    return f"{text} ({', '.join(missing)})" if missing else text


def exit_status(error: BaseException) -> int:
    """1 for a diverged run (`jgrad.train.NonFiniteLossError`), else 2."""
    fit = sys.modules.get("jgrad.train._fit")  # imported only if training ran
    diverged = fit is not None and isinstance(error, getattr(fit, "NonFiniteLossError", ()))
    return 1 if diverged else 2
