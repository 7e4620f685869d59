"""Small-graph parity: jgrad's Cora training steps against the peers, over several fresh processes.

On Cora a training step takes about 10 ms, and two identical programs timed in one process differ by
up to 10-15% (more rounds do not close the gap: it is fixed per process). One ``jgrad bench`` run
cannot tell parity from a few percent either way. This script runs the bench's Cora steps
(``gcn_train``, ``gat_train``; the same maths, builders and interleaved timing as ``jgrad bench``) in
``--processes`` fresh interpreters and reports, per implementation, the median over processes of its
time divided by the fastest peer's in that process. ``jgrad`` and ``jgrad_xla`` run the same compiled
program on Cora, so their spread shows how far apart identical programs land.

Usage:
  python experiments/small_graph_parity.py [--processes 7] [--seconds 0.5] [--out docs/results]
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

WORKLOADS = ("gcn_train", "gat_train")


def one_process(workloads: list[str], impls: list[str], seconds: float) -> dict:
    """Medians (ms) of each implementation's step in this process: {workload: {impl: ms}}."""
    from jgrad.bench import _peers, _timing, _workloads

    problem = _workloads.cora_problem(None)
    result = {}
    for workload in workloads:
        steps = {impl: _peers.build(impl, workload, problem) for impl in impls}
        times = _timing.time_interleaved(steps, 5, _peers.block, min_step_seconds=seconds, max_repeats=200)
        result[workload] = {impl: float(np.median(t)) * 1e3 for impl, t in times.items()}
    return result


def run(processes: int, workloads: list[str], impls: list[str], seconds: float) -> dict:
    """Runs `one_process` in ``processes`` fresh interpreters; returns the per-process medians and ratios."""
    runs = []
    for index in range(processes):
        request = json.dumps({"workloads": workloads, "impls": impls, "seconds": seconds})
        done = subprocess.run([sys.executable, __file__, "--one", request], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"process {index + 1} failed: {done.stderr.strip().splitlines()[-1:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"process {index + 1}/{processes}: " + "; ".join(
            f"{w} " + " ".join(f"{i}={ms:.2f}" for i, ms in runs[-1][w].items()) for w in workloads), flush=True)
    summary = {}
    for workload in workloads:
        ratios = {impl: [] for impl in impls}
        for medians in runs:
            best_peer = min(ms for impl, ms in medians[workload].items() if impl not in ("jgrad", "jgrad_xla"))
            for impl in impls:
                ratios[impl].append(medians[workload][impl] / best_peer)
        summary[workload] = {impl: {"median": float(np.median(r)), "min": float(min(r)), "max": float(max(r)),
                                    "faster_or_equal_in": int(sum(x <= 1.0 for x in r))} for impl, r in ratios.items()}
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "processes": processes,
            "seconds_per_impl": seconds, "runs": runs, "summary": summary}


def markdown(result: dict) -> str:
    lines = [f"# Small-graph parity on Cora, {result['date']}", "",
             f"{result['processes']} fresh processes, about {result['seconds_per_impl']} s of interleaved timed "
             "calls per implementation in each. Time divided by the fastest peer's in the same process "
             "(< 1 is faster): median over processes, [min, max], and in how many processes it was at most 1.",
             ""]
    for workload, rows in result["summary"].items():
        lines += [f"## {workload}", "", "| impl | median ratio | range | <= 1 in |", "|---|---:|---|---:|"]
        for impl, row in rows.items():
            lines.append(f"| {impl} | {row['median']:.3f} | [{row['min']:.3f}, {row['max']:.3f}] | "
                         f"{row['faster_or_equal_in']}/{result['processes']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.5, help="timed calls per implementation and process")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--impls", nargs="+", help="default: jgrad, jgrad_xla and every available peer")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child: a JSON request
    args = parser.parse_args(argv)
    if args.one:
        request = json.loads(args.one)
        print(json.dumps(one_process(request["workloads"], request["impls"], request["seconds"])))
        return None
    from jgrad.bench import _peers

    impls = args.impls or [impl for impl in _peers.IMPLS if _peers.available(impl) is None]
    if not any(impl not in _peers.OURS for impl in impls):
        parser.error(f"--impls needs at least one peer besides {_peers.OURS}; got {impls}")
    result = run(args.processes, args.workloads, impls, args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "small_graph_parity.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (args.out / "small_graph_parity.md").write_text(text + "\n")
    print(text)
    print(f"wrote {args.out / 'small_graph_parity.json'} and {args.out / 'small_graph_parity.md'}")
    return result


if __name__ == "__main__":
    main()
