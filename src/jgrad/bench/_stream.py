"""A STREAM-triad bandwidth figure for this machine, measured with numpy.

``a = b + s * c`` over float64 arrays far larger than the caches, cut into cache-sized blocks so the
intermediate ``s * c`` stays in cache and main memory sees the triad's 3·N·8 bytes; one thread per core.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLOCK = 1 << 15


def _triad(a, b, c, scalar, start, stop):
    tmp = np.empty(BLOCK)
    for i in range(start, stop, BLOCK):
        j = min(i + BLOCK, stop)
        t = tmp[: j - i]
        np.multiply(c[i:j], scalar, out=t)
        np.add(b[i:j], t, out=a[i:j])


def stream_triad(n: int = 20_000_000, repeats: int = 5, threads: int | None = None) -> float:
    """Best-of-``repeats`` triad bandwidth in bytes per second (3·n·8 bytes per triad)."""
    threads = threads or os.cpu_count() or 1
    a, b, c = np.zeros(n), np.ones(n), np.full(n, 2.0)
    bounds = np.linspace(0, n, threads + 1).astype(int)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(lambda k: _triad(a, b, c, 3.0, bounds[k], bounds[k + 1]), range(threads)))
            best = min(best, time.perf_counter() - start)
    return 3 * n * 8 / best
