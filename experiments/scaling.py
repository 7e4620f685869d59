"""Throughput of an edge-sharded GCN training step vs device count, graph size and feature width.

    python experiments/scaling.py                 # devices 1,2,4,8 at N=10^4; N = 10^4 .. 3*10^5; F sweep
    python experiments/scaling.py --large         # adds N = 10^6 (about 1.6*10^7 edges; minutes)
    python experiments/scaling.py --quick         # a tiny run for CI

Writes results/scaling.json and results/scaling.png and prints a table. The step is one SGD step of a
2-layer GCN (``relu(A (X W1))``, then ``A (H W2)``, softmax cross-entropy on random labels) whose two
propagations are `jgrad.parallel.sharded_spmm` over D edge shards. Graphs are `power_law_graph`
(average degree 16) with GCN normalisation (self loops added).

On a machine without accelerators the D devices are virtual CPU devices
(``--xla_force_host_platform_device_count=8``) that share the same cores, so the device sweep measures
the overhead of sharding and collectives, not a speed-up. The cost exponents are fitted by least
squares on log(time) against log(E) (F fixed) and log(F) (graph fixed).
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jgrad  # noqa: E402
from jgrad.data import power_law_graph  # noqa: E402
from jgrad.parallel import make_mesh, partition_edges, sharded_spmm  # noqa: E402

N_CLASSES = 8


def make_step(mesh, sg):
    def loss_fn(params, x, labels):
        h = jax.nn.relu(sharded_spmm(mesh, sg, x @ params["w1"]))
        logits = sharded_spmm(mesh, sg, h @ params["w2"])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    @jax.jit
    def step(params, x, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, labels)
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), loss

    return step


def time_step(n_nodes: int, features: int, n_devices: int, repeats: int, seed: int = 0) -> dict:
    graph = jgrad.ops.gcn_norm(power_law_graph(n_nodes, avg_degree=16.0, seed=seed))
    mesh = make_mesh(n_devices)
    sg = partition_edges(graph, n_devices).put(mesh)
    key1, key2, key3, key4 = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(key1, (n_nodes, features))
    labels = jax.random.randint(key2, (n_nodes,), 0, N_CLASSES)
    params = {"w1": jax.random.normal(key3, (features, features)) / np.sqrt(features),
              "w2": jax.random.normal(key4, (features, N_CLASSES)) / np.sqrt(features)}
    step = make_step(mesh, sg)
    jax.block_until_ready(step(params, x, labels))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        params, loss = step(params, x, labels)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {"n_nodes": n_nodes, "n_edges": graph.n_edges, "features": features, "devices": n_devices,
            "seconds_per_step": seconds, "edges_per_second": graph.n_edges / seconds,
            "edges_per_device": int(sg.shard_size)}


def fit_exponent(xs, ys) -> float:
    slope, _ = np.polyfit(np.log(xs), np.log(ys), 1)
    return float(slope)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="add N = 10^6 to the size sweep")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()

    base_n, features = (2_000, 16) if args.quick else (10_000, 64)
    sizes = [2_000, 4_000] if args.quick else [10_000, 30_000, 100_000, 300_000] + ([1_000_000] if args.large else [])
    widths = [8, 16] if args.quick else [16, 64, 256]
    device_counts = [d for d in (1, 2, 4, 8) if d <= len(jax.devices())]

    rows = {"devices": [], "size": [], "features": []}
    for d in device_counts:
        rows["devices"].append(time_step(base_n, features, d, args.repeats))
        print("devices", rows["devices"][-1], flush=True)
    for n in sizes:
        rows["size"].append(time_step(n, features, 1, args.repeats))
        print("size", rows["size"][-1], flush=True)
    for f in widths:
        rows["features"].append(time_step(base_n, f, 1, args.repeats))
        print("features", rows["features"][-1], flush=True)

    edge_exponent = fit_exponent([r["n_edges"] for r in rows["size"]], [r["seconds_per_step"] for r in rows["size"]])
    feature_exponent = fit_exponent([r["features"] for r in rows["features"]],
                                    [r["seconds_per_step"] for r in rows["features"]])
    summary = {
        "platform": jax.devices()[0].platform,
        "cpu_count": os.cpu_count(),
        "note": ("devices are virtual CPU devices sharing the same cores: the device sweep measures "
                 "sharding and collective overhead, not speed-up") if jax.devices()[0].platform == "cpu" else "",
        "time_exponent_in_edges": edge_exponent,
        "time_exponent_in_features": feature_exponent,
        **rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(summary, indent=2))

    print("\n| sweep | D | N | E | F | ms/step | edges/s |")
    print("|---|---|---|---|---|---|---|")
    for sweep, table in rows.items():
        for r in table:
            print(f"| {sweep} | {r['devices']} | {r['n_nodes']} | {r['n_edges']} | {r['features']} | "
                  f"{1e3 * r['seconds_per_step']:.1f} | {r['edges_per_second']:.3g} |")
    print(f"\ntime ~ E^{edge_exponent:.2f} (F={features}), time ~ F^{feature_exponent:.2f} (N={base_n})")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (sweep, key, label) in zip(axes, [("devices", "devices", "devices D (virtual)"),
                                              ("size", "n_edges", "edges E"),
                                              ("features", "features", "features F")]):
        xs = [r[key] for r in rows[sweep]]
        ax.plot(xs, [1e3 * r["seconds_per_step"] for r in rows[sweep]], "o-")
        ax.set_xscale("log", base=2 if sweep == "devices" else 10)
        if sweep != "devices":
            ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("ms per GCN training step")
    axes[0].set_title(f"N={base_n}, F={features}")
    axes[1].set_title(f"D=1, F={features}: time ~ E^{edge_exponent:.2f}")
    axes[2].set_title(f"D=1, N={base_n}: time ~ F^{feature_exponent:.2f}")
    fig.tight_layout()
    fig.savefig(args.out / "scaling.png", dpi=120)


if __name__ == "__main__":
    main()
