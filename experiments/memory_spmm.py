"""Peak memory of forward + backward through ``y = A @ x``: jgrad.ops.spmm against plain autodiff.

Both implementations compute ``loss = 0.5 * sum(y ** 2)`` with ``y[receivers[e]] += w[e] * x[senders[e]]``
and its gradients w.r.t. the node features ``x`` (N, F) and the edge weights ``w`` (E,):

* ``jgrad``: ``jgrad.ops.spmm(graph, x, w)``, whose custom VJP saves only its inputs;
* ``plain``: ``jax.ops.segment_sum(x[senders] * w[:, None], receivers, N)`` differentiated by JAX,
  which keeps the gathered (E, F) rows for the edge-weight gradient.

Each measurement runs in a fresh subprocess, so the numbers do not mix:

* ``peak RSS``: the child's maximum resident set size (``os.wait4``, the per-child form of
  ``getrusage(RUSAGE_CHILDREN)``) while it runs the jitted forward + backward once; a ``baseline`` child
  that only imports JAX and builds the inputs is measured too, and the table shows the increase over it.
* ``XLA temp / args / out``: ``jax.jit(step).lower(x, w).compile().memory_analysis()``; temp is the
  scratch memory XLA allocates for the whole step.
* ``residuals``: the arrays ``jax.vjp`` keeps between the forward and the backward pass (the leaves of
  the returned VJP function), found with ``jax.eval_shape`` so nothing is allocated. This is what stays
  alive across a layer when forward and backward are not fused into one program (eager mode,
  ``jax.checkpoint`` boundaries, pipelined or scanned layers).

Usage::

    python experiments/memory_spmm.py                 # E = 10^6 edges, F = 256, N = 10^4
    python experiments/memory_spmm.py --tiny          # a quick smoke run
    python experiments/memory_spmm.py --edges 200000 --features 64 --nodes 5000

Writes ``results/memory_spmm.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

IMPLEMENTATIONS = ("jgrad", "plain")
MIB = 2.0**20


def _inputs(n_nodes: int, n_edges: int, n_features: int, seed: int):
    import jax.numpy as jnp
    import numpy as np

    import jgrad

    rng = np.random.default_rng(seed)
    senders = rng.integers(0, n_nodes, n_edges, dtype=np.int32)
    receivers = rng.integers(0, n_nodes, n_edges, dtype=np.int32)
    graph = jgrad.Graph.from_edges(senders, receivers, n_nodes)
    x = jnp.asarray(rng.standard_normal((n_nodes, n_features), dtype=np.float32))
    w = jnp.asarray(rng.uniform(0.5, 1.5, n_edges).astype(np.float32))
    return graph, x, w


def _forward(name: str, graph):
    import jax

    import jgrad

    if name == "jgrad":
        return lambda x, w: jgrad.ops.spmm(graph, x, w)

    def plain(x, w):
        return jax.ops.segment_sum(x[graph.senders] * w[:, None], graph.receivers, num_segments=graph.n_nodes)

    return plain


def _worker(args) -> dict:
    """Runs in the child: one implementation, one kind of measurement; prints a JSON line."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    graph, x, w = _inputs(args.nodes, args.edges, args.features, args.seed)
    jax.block_until_ready((x, w))
    report: dict = {}
    if args.worker == "baseline":
        return report
    forward = _forward(args.worker, graph)
    step = jax.jit(jax.value_and_grad(lambda x, w: 0.5 * jnp.sum(forward(x, w) ** 2), argnums=(0, 1)))

    compiled = step.lower(x, w).compile()
    analysis = compiled.memory_analysis()
    if analysis is not None:
        report["xla_temp_bytes"] = int(analysis.temp_size_in_bytes)
        report["xla_argument_bytes"] = int(analysis.argument_size_in_bytes)
        report["xla_output_bytes"] = int(analysis.output_size_in_bytes)

    residuals = jax.eval_shape(lambda x, w: jax.tree.leaves(jax.vjp(forward, x, w)[1]), x, w)
    sizes = [int(np.prod(r.shape)) * np.dtype(r.dtype).itemsize for r in residuals]
    report["residual_bytes"] = int(sum(sizes))
    report["residual_shapes"] = [list(r.shape) for r in residuals]
    report["largest_residual"] = list(max(residuals, key=lambda r: np.prod(r.shape)).shape)

    start = time.perf_counter()
    loss, (dx, dw) = jax.block_until_ready(compiled(x, w))
    report["step_seconds_incl_first_run"] = time.perf_counter() - start
    report["loss"] = float(loss)
    report["grad_checksum"] = float(jnp.sum(dx)) + float(jnp.sum(dw))
    return report


def _run_child(name: str, args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--edges", str(args.edges),
               "--features", str(args.features), "--nodes", str(args.nodes), "--seed", str(args.seed)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # os.wait4 gives this child's own resource usage (ru_maxrss in KiB on Linux).
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = child.stdout.read(), child.stderr.read()
    if child.returncode != 0:
        raise RuntimeError(f"{name} worker failed (exit {child.returncode}):\n{stderr[-4000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    report["peak_rss_bytes"] = int(usage.ru_maxrss) * 1024
    return report


def _table(results: dict, args) -> str:
    base = results["baseline"]["peak_rss_bytes"]
    message_bytes = args.edges * args.features * 4
    lines = [
        f"spmm forward + backward (grads w.r.t. x and w), float32, N={args.nodes}, E={args.edges}, "
        f"F={args.features}; one (E, F) float32 tensor = {message_bytes / MIB:.1f} MiB",
        f"baseline child (JAX + inputs): peak RSS {base / MIB:.1f} MiB",
        "",
        f"{'implementation':<15}{'peak RSS':>12}{'RSS - base':>12}{'XLA temp':>12}{'XLA args':>12}"
        f"{'XLA out':>12}{'residuals':>12}  largest residual",
    ]
    for name in IMPLEMENTATIONS:
        r = results[name]
        cells = [r["peak_rss_bytes"], r["peak_rss_bytes"] - base, r.get("xla_temp_bytes"),
                 r.get("xla_argument_bytes"), r.get("xla_output_bytes"), r["residual_bytes"]]
        text = "".join(f"{'n/a' if c is None else f'{c / MIB:.1f} MiB':>12}" for c in cells)
        lines.append(f"{name:<15}{text}  {tuple(r['largest_residual'])}")
    jg, pl = results["jgrad"], results["plain"]
    lines.append("")
    lines.append(f"plain / jgrad: residuals {pl['residual_bytes'] / jg['residual_bytes']:.1f}x, "
                 f"peak RSS above baseline {(pl['peak_rss_bytes'] - base) / max(jg['peak_rss_bytes'] - base, 1):.2f}x"
                 + (f", XLA temp {pl['xla_temp_bytes'] / max(jg['xla_temp_bytes'], 1):.2f}x"
                    if "xla_temp_bytes" in jg and "xla_temp_bytes" in pl else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="E=2000, F=16, N=100: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("results/memory_spmm.json"))
    parser.add_argument("--worker", choices=("baseline",) + IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.edges, args.features, args.nodes = 2000, 16, 100

    if args.worker:
        print(json.dumps(_worker(args)))
        return 0

    results = {name: _run_child(name, args) for name in ("baseline",) + IMPLEMENTATIONS}
    jg, pl = results["jgrad"], results["plain"]
    if abs(jg["loss"] - pl["loss"]) > 1e-3 * abs(pl["loss"]):
        raise RuntimeError(f"the two implementations disagree: loss {jg['loss']} vs {pl['loss']}")
    table = _table(results, args)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {"edges": args.edges, "features": args.features, "nodes": args.nodes, "seed": args.seed,
              "dtype": "float32"}
    args.out.write_text(json.dumps({"config": config, "results": results, "table": table}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
