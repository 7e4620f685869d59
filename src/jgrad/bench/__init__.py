"""Benchmarks of jgrad's message-passing kernels against peers, run side by side in one process.

``jgrad bench`` (or `main`) times GCN, SAGE and GAT layers, a g-SDDMM and full GCN/GAT training steps
on Cora and on synthetic power-law graphs, for jgrad (as users get it, on its plain XLA path, and on a
GPU with its Pallas kernels), plain JAX autodiff, jraph, ``jax.experimental.sparse`` (BCOO) and PyTorch
Geometric (on the GPU too when JAX runs there). Every implementation's values and gradients are checked
against jgrad's before timing; timings are medians of interleaved rounds after warm-up. Results go to
``<out>/bench.json``, ``bench.md`` and ``bench.png``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
from pathlib import Path

import numpy as np

from . import _peers, _report, _stream, _timing, _workloads

QUICK_SIZES = (2000,)
FULL_SIZES = (10_000, 100_000)
MEMORY_WORKLOADS = ("gcn_fwdbwd", "gat_fwdbwd")


_VERSIONED = ("jraph", "torch", "torch_geometric")  # the peers' packages whose versions the report gives


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` from its metadata (nothing is imported); None if absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_problem(spec: dict) -> _workloads.Problem:
    """The problem a spec names: ``{"kind": "synthetic", "n_nodes": N}`` or ``{"kind": "cora", "root": ...}``."""
    if spec["kind"] == "cora":
        return _workloads.cora_problem(spec.get("root"))
    return _workloads.synthetic_problem(int(spec["n_nodes"]))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jgrad bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small graph, few repeats, no memory runs")
    parser.add_argument("--sizes", type=int, nargs="+", help=f"synthetic graph sizes (default {FULL_SIZES})")
    parser.add_argument("--repeats", type=int, help="timed rounds per workload (default 10, quick 3)")
    parser.add_argument("--workloads", nargs="+", choices=_workloads.WORKLOADS, help="default: all")
    parser.add_argument("--impls", nargs="+", choices=_peers.IMPLS,
                        help="default: all available (jgrad_pallas on a GPU only)")
    parser.add_argument("--out", default="results", help="output folder (default results/)")
    parser.add_argument("--data-dir", help="a Planetoid folder to read Cora from (default: the shipped copy)")
    parser.add_argument("--no-cora", action="store_true", help="skip Cora")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-process peak-memory runs")
    parser.add_argument("--no-recompile-check", action="store_true", help="skip the pad_to_bucket trace count")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns a process exit code (0 on success, 1 if a check failed)."""
    args = _parser().parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    repeats = args.repeats or (3 if args.quick else 10)
    workloads = args.workloads or _workloads.WORKLOADS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    notices: list[str] = []
    impls = []
    for impl in args.impls or _peers.default_impls():
        why = _peers.available(impl)
        if why:
            notices.append(f"skipped {impl}: {why}")
            print(f"notice: skipped {impl}: {why}")
        else:
            impls.append(impl)

    import jax

    # The installed versions, whether or not a peer runs (torch was recorded only with "pyg" in the run).
    versions = {"jax": jax.__version__, **{name: installed_version(name) for name in _VERSIONED}}
    if "pyg" in impls:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    stream = _stream.stream_triad(n=4_000_000 if args.quick else 20_000_000)
    print(f"STREAM triad: {stream / 1e9:.1f} GB/s")

    specs = []
    if not args.no_cora:
        root = args.data_dir
        try:
            _workloads.cora_problem(root)
            specs.append({"kind": "cora", "root": root})
        except (FileNotFoundError, ValueError) as error:
            notices.append(f"skipped Cora: {error}")
            print(f"notice: skipped Cora: {error}")
    specs += [{"kind": "synthetic", "n_nodes": n} for n in sizes]

    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": _report.machine(),
        "versions": versions, "stream_gbs": stream / 1e9, "repeats": repeats, "problems": [],
        "memory": [], "notices": notices,
    }
    failed = False
    for spec in specs:
        problem = load_problem(spec)
        engine = _peers.engine_times(problem)
        print(f"{problem.name}: {engine}")
        rows = []
        for workload in workloads:
            rows += _run_workload(problem, workload, impls, repeats, stream)
        failed |= any(row.get("check") == "MISMATCH" for row in rows)
        results["problems"].append({"name": problem.name, "n_nodes": problem.n_nodes,
                                    "n_edges": problem.n_edges, "spec": spec, "engine": engine, "rows": rows})
    if _peers.on_gpu() and not (args.quick or args.no_memory):
        notices.append("skipped the peak-memory runs: they measure host memory, not the GPU's")
        print(f"notice: {notices[-1]}")
    elif not (args.quick or args.no_memory):
        spec = specs[-1]
        for workload in [w for w in MEMORY_WORKLOADS if w in workloads]:
            for impl in impls:
                report = _memory_run(spec, impl, workload)
                results["memory"].append({"problem": load_problem_name(spec), "workload": workload,
                                          "impl": impl, **report})
                print(f"memory {workload} {impl}: {report}")
    if not args.no_recompile_check:
        results["recompiles"] = bounded_recompiles()
    _report.write_json(results, out / "bench.json")
    (out / "bench.md").write_text(_report.markdown(results))
    _report.chart(results, out / "bench.png")
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return 1 if failed else 0


def load_problem_name(spec: dict) -> str:
    return "cora" if spec["kind"] == "cora" else f"powerlaw-{spec['n_nodes']}"


def _memory_run(spec, impl, workload):
    from ._memory import measure_in_subprocess

    return measure_in_subprocess(spec, impl, workload)


def _run_workload(problem, workload, impls, repeats, stream) -> list[dict]:
    steps, rows = {}, {}
    for impl in impls:
        row = {"workload": workload, "impl": impl}
        rows[impl] = row
        try:
            step, step_args = _peers.build(impl, workload, problem)
            row["first_call_s"] = _timing.time_first_call(step, step_args, _peers.block)
            values = _peers.to_numpy(step(*step_args))
        except Exception as error:  # noqa: BLE001 - a peer failing (e.g. out of memory) is a result
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            print(f"{problem.name} {workload} {impl}: {row['error']}")
            continue
        steps[impl] = (step, step_args, values)
    if not steps:
        return list(rows.values())
    reference = steps["jgrad"][2] if "jgrad" in steps else next(iter(steps.values()))[2]
    for impl, (_, _, values) in steps.items():
        rows[impl]["check"] = "ok" if _close(values, reference) else "MISMATCH"
    # Steps of a few ms (Cora) scatter by 20-40% over 5 rounds: they get up to 5x the rounds, about 0.3 s each.
    times = _timing.time_interleaved({k: (s, a) for k, (s, a, _) in steps.items()}, repeats, _peers.block,
                                     min_step_seconds=0.3, max_repeats=5 * repeats)
    medians = {k: float(np.median(v)) for k, v in times.items()}
    peers = [medians[k] for k in medians if k not in _peers.OURS]
    best_peer = min(peers) if peers else None
    moved = _workloads.bytes_moved(workload, problem)
    for impl, median in medians.items():
        row = rows[impl]
        row["median_ms"] = median * 1e3
        row["vs_best_peer"] = median / best_peer if best_peer else None
        row["stream_percent"] = 100 * moved / median / stream if moved else None
        ratio = "no peer measured" if row["vs_best_peer"] is None else f"x{row['vs_best_peer']:.2f} vs best peer"
        print(f"{problem.name} {workload:13s} {impl:13s} {median * 1e3:9.2f} ms  {ratio}  check {row['check']}")
    return list(rows.values())


def _close(values, reference) -> bool:
    if len(values) != len(reference):
        return False
    for a, b in zip(values, reference):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape or not np.allclose(a, b, rtol=2e-3, atol=2e-4 * max(np.abs(b).max(initial=0), 1e-6)):
            return False
    return True


def bounded_recompiles(n_graphs: int = 12, seed: int = 0) -> dict:
    """Trains on graphs of varying size padded with ``pad_to_bucket``; counts traces of the jitted step.

    Returns:
      dict with the number of graphs, of distinct (N, E) sizes, of buckets, and of traces (one per bucket).
    """
    import jax
    import jax.numpy as jnp

    import jgrad
    from jgrad.data import power_law_graph
    from jgrad.graph import pad_to_bucket

    traces = 0

    def train_step(kernel, graph, x):
        nonlocal traces
        traces += 1  # runs only while tracing

        def loss(kernel):
            return jnp.mean(jgrad.ops.spmm(graph, x @ kernel, graph.weights()) ** 2)

        return kernel - 0.1 * jax.grad(loss)(kernel)

    step = jax.jit(train_step)
    rng = np.random.default_rng(seed)
    kernel = jnp.asarray(rng.standard_normal((8, 8)), jnp.float32)
    sizes, buckets = set(), set()
    for n in rng.integers(100, 1500, n_graphs):
        graph = power_law_graph(int(n), avg_degree=8.0, seed=int(n))
        padded = pad_to_bucket(graph)
        x = jnp.asarray(rng.standard_normal((padded.n_nodes, 8)), jnp.float32)
        kernel = step(kernel, padded, x)
        sizes.add((graph.n_nodes, graph.n_edges))
        buckets.add((padded.n_nodes, padded.n_edges))
    result = {"graphs": n_graphs, "distinct_sizes": len(sizes), "buckets": len(buckets), "traces": traces}
    print(f"pad_to_bucket: {result}")
    return result


__all__ = ["main"]
