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
    """Per implementation, the seconds of ``repeats`` calls taken in round-robin order after warm-up."""
    for _ in range(warmup):
        for step, args in steps.values():
            block(step(*args))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, (step, args) in steps.items():
            start = time.perf_counter()
            block(step(*args))
            times[name].append(time.perf_counter() - start)
    return times
