"""Interleaved timing: every implementation runs once per round, so machine noise hits all alike."""

from __future__ import annotations

import math
import time
from typing import Callable


def time_first_call(step: Callable, args: tuple, block: Callable) -> float:
    """Seconds for the first call, compilation included (the time to the first step)."""
    start = time.perf_counter()
    block(step(*args))
    return time.perf_counter() - start


def time_interleaved(steps: dict[str, tuple[Callable, tuple]], repeats: int, block: Callable,
                     warmup: int = 1, settle: float = 0.1, min_step_seconds: float = 0.0,
                     max_repeats: int | None = None) -> dict[str, list[float]]:
    """Per implementation, the seconds of ``repeats`` calls taken in round-robin order after warm-up.

    Each timed call starts ``settle`` seconds after the previous one ended: PyTorch's worker threads
    keep spinning for a while after a step and slowed whatever ran next by about a third on a 2-core
    machine (a jgrad step right after a PyG step, measured on Cora), so without the pause the
    implementation that follows PyTorch in the round paid for it. Round r also starts at the r-th
    implementation, so no implementation always runs right after the same one.

    Short steps scatter most, so with ``min_step_seconds`` the rounds grow until every implementation
    has been timed for about that long in all (judged by the slowest warm-up call), up to
    ``max_repeats`` rounds.
    """
    slowest = 0.0
    for _ in range(warmup):
        for step, args in steps.values():
            start = time.perf_counter()
            block(step(*args))
            slowest = max(slowest, time.perf_counter() - start)
    if min_step_seconds > 0 and slowest > 0:
        wanted = math.ceil(min_step_seconds / slowest)
        repeats = max(repeats, min(wanted, max_repeats or repeats))
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        for offset in range(len(names)):
            name = names[(round_index + offset) % len(names)]
            step, args = steps[name]
            time.sleep(settle)
            start = time.perf_counter()
            block(step(*args))
            times[name].append(time.perf_counter() - start)
    return times
