"""Interleaved timing: every implementation runs once per round, so machine noise hits all alike."""

from __future__ import annotations

import time
from typing import Callable


def time_first_call(step: Callable, args: tuple, block: Callable) -> float:
    """Seconds for the first call, compilation included (the time to the first step)."""
    start = time.perf_counter()
    block(step(*args))
    return time.perf_counter() - start


def time_interleaved(steps: dict[str, tuple[Callable, tuple]], repeats: int, block: Callable,
                     warmup: int = 1) -> dict[str, list[float]]:
    """Per implementation, the seconds of ``repeats`` calls taken in round-robin order after warm-up.

    Round r starts at the r-th implementation, so that no implementation always runs right after the
    same one (PyTorch's worker threads keep spinning for a while after a step and slow whatever runs
    next; a median over rotated rounds leaves that out).
    """
    for _ in range(warmup):
        for step, args in steps.values():
            block(step(*args))
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        for offset in range(len(names)):
            name = names[(round_index + offset) % len(names)]
            step, args = steps[name]
            start = time.perf_counter()
            block(step(*args))
            times[name].append(time.perf_counter() - start)
    return times
