"""Peak memory of one step, each implementation in its own process.

The child builds the problem, runs the step once (compilation included), hands the memory the C
allocator keeps cached back to the system (``malloc_trim``, where glibc has it, so the second step
cannot hide inside memory left over from the first), resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``), runs the step again and reports the rise of the peak RSS above the RSS
before that call: the transient memory of one step, without compilation or the inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure_in_subprocess(problem_spec: dict, impl: str, workload: str, timeout: float = 600) -> dict:
    """Runs `_child` in a fresh interpreter; returns its report or an ``error`` entry."""
    request = json.dumps({"problem": problem_spec, "impl": impl, "workload": workload})
    code = "import sys; from jgrad.bench._memory import _child; _child(sys.argv[1])"
    try:
        done = subprocess.run([sys.executable, "-c", code, request], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        return {"error": tail[0][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _release_cached_memory() -> None:
    """Returns freed heap memory to the system (glibc ``malloc_trim``); a no-op elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def _child(request: str) -> None:
    from . import _peers
    from .__init__ import load_problem

    spec = json.loads(request)
    problem = load_problem(spec["problem"])
    step, args = _peers.build(spec["impl"], spec["workload"], problem)
    _peers.block(step(*args))
    _release_cached_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        field = "VmHWM"
    except OSError:
        field = None
    before = _status_kb("VmRSS")
    _peers.block(step(*args))
    if field is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    else:
        peak = _status_kb(field)
    print(json.dumps({"step_peak_mb": max(peak - before, 0) / 1024, "process_peak_mb": peak / 1024}))
