"""Scale benchmark: the exact gradient w.r.t. all N^2 adjacency entries of a 2-layer GCN, as factors.

A synthetic directed graph with uniform random edges (default 200,000 nodes, 2,000,000 edges), random
node features and labels, and a randomly initialised 2-layer GCN written with `jgrad.gradients.propagate`.
The script times `jgrad.adjacency_grad` (factors plus the built-in check against `edge_grad`) and
`AdjacencyGrad.topk(100, among="non_edges")` (a blockwise scan over all N^2 pairs), and reports the
peak resident memory. A dense float32 N x N gradient would need 4 N^2 bytes (160 GB for N = 200,000).

Usage:
  python experiments/adjacency_grad_scale.py [--nodes 200000] [--edges 2000000] [--out results]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jgrad
from jgrad.gradients import propagate


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def gcn_loss(graph, params, x, labels):
    """Mean cross-entropy of a 2-layer GCN: softmax(Â relu(Â X W1) W2) with Â = D^-1/2 (A + I) D^-1/2."""
    hidden = jax.nn.relu(propagate(graph, x) @ params["w1"] + params["b1"])
    logits = propagate(graph, hidden @ params["w2"]) + params["b2"]
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200_000)
    parser.add_argument("--edges", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    n, e = args.nodes, args.edges
    senders = rng.integers(0, n, e)
    receivers = rng.integers(0, n - 1, e)
    receivers = receivers + (receivers >= senders)  # no self loops
    graph = jgrad.Graph.from_edges(senders, receivers, n)
    x = jnp.asarray(rng.standard_normal((n, args.features), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, args.classes, n), jnp.int32)
    glorot = lambda a, b: jnp.asarray(rng.standard_normal((a, b), dtype=np.float32) * np.sqrt(2 / (a + b)))
    params = {
        "w1": glorot(args.features, args.hidden),
        "b1": jnp.zeros((args.hidden,), jnp.float32),
        "w2": glorot(args.hidden, args.classes),
        "b2": jnp.zeros((args.classes,), jnp.float32),
    }
    print(f"graph: N={n:,} E={e:,}; features {args.features}, hidden {args.hidden}, classes {args.classes}; "
          f"peak RSS after setup {peak_rss_gib():.2f} GiB", flush=True)

    start = time.perf_counter()
    grad = jgrad.adjacency_grad(gcn_loss, graph, params, x, labels)
    jax.block_until_ready(grad)
    grad_seconds = time.perf_counter() - start
    print(f"adjacency_grad: rank {grad.rank}, {grad_seconds:.1f} s (trace, compile, one forward + "
          f"backward, check vs edge_grad: max relative error {float(grad.edge_error):.2e}); "
          f"peak RSS {peak_rss_gib():.2f} GiB", flush=True)

    start = time.perf_counter()
    top = grad.topk(args.k, among="non_edges", sign=-1, block_size=args.block_size)
    jax.block_until_ready(top)
    topk_seconds = time.perf_counter() - start
    print(f"topk({args.k}, non_edges, most negative): {topk_seconds:.1f} s over {n * n:,} pairs; "
          f"peak RSS {peak_rss_gib():.2f} GiB", flush=True)

    # spot check: .at() of the best candidates against the full row computed independently
    v = int(top.rows[0])
    row = np.asarray(grad.row(v))
    spot = float(abs(row[int(top.cols[0])] - float(top.values[0])))
    result = {
        "nodes": n,
        "edges": e,
        "features": args.features,
        "hidden": args.hidden,
        "classes": args.classes,
        "rank": grad.rank,
        "adjacency_grad_seconds": round(grad_seconds, 2),
        "topk_seconds": round(topk_seconds, 2),
        "k": args.k,
        "block_size": args.block_size,
        "edge_check_max_relative_error": float(grad.edge_error),
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "dense_float32_gradient_gb": round(4 * n * n / 1e9, 1),
        "factor_bytes": int(grad.left.nbytes + grad.right.nbytes),
        "top_non_edges": [
            {"receiver": int(r), "sender": int(c), "grad": float(g)}
            for r, c, g in zip(top.rows[:10], top.cols[:10], top.values[:10])
        ],
        "row_spot_check_abs_difference": spot,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "machine": platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "adjacency_grad_scale.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"peak RSS {result['peak_rss_gib']:.2f} GiB (a dense float32 gradient: "
          f"{result['dense_float32_gradient_gb']} GB); wrote {path}", flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
