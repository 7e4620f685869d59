"""Size limits: jgrad indexes nodes and edges with int32, so every count is capped at ``2**31 - 1``.

Every constructor, `batch`, `pad` and the transforms that add edges check their sizes here before
anything is allocated or cast, so that a count beyond int32 raises instead of wrapping to a negative
index.
"""

from __future__ import annotations

from typing import Any

from .._src import _checks
from .._src._limits import MAX_SIZE as MAX_SIZE


def check_size(where: str, value: Any, name: str = "n_nodes") -> int:
    """Checks a static count: a non-negative Python int at most `MAX_SIZE`; returns it as an int.

    Floats (``4e9``), bools and traced values are refused with a TypeError, so a count is never
    rounded or truncated on its way to int32.
    """
    value = _checks.check_n_nodes(where, value, name)
    check_total(where, name, value)
    return value


def check_total(where: str, name: str, total: int, detail: str = "") -> None:
    """Raises a ValueError when a (computed) count ``total`` exceeds `MAX_SIZE`."""
    if total > MAX_SIZE:
        raise ValueError(
            f"{where}: {name} is too large for int32 indexing; got {total}{detail}, expected "
            f"{name} <= 2**31 - 1 = {MAX_SIZE}."
        )
