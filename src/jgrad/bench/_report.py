"""Writing the results: JSON, a markdown table and a PNG chart."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine() -> dict:
    """CPU model, core count and memory of this machine."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gib = None
    try:
        with open("/proc/meminfo") as f:
            memory_gib = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": memory_gib, "python": platform.python_version(),
            "malloc_huge_pages": malloc_huge_pages()}


def malloc_huge_pages() -> str:
    """Whether ``malloc`` maps large buffers with transparent huge pages in this process.

    The ratios depend on it: page faults on the steps' fresh temp buffers cost the peers far more than
    jgrad (docs/performance.md, "Fresh pages on every step"). "on" with glibc's
    ``glibc.malloc.hugetlb=1`` tunable and transparent huge pages not ``never``; "always" when the
    kernel uses them for every mapping; else "off".
    """
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            mode = f.read().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        return "off"
    if mode == "always":
        return "always"
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    asked = "glibc.malloc.hugetlb=1" in (item.strip() for item in tunables.split(":"))
    return "on" if asked and mode != "never" else "off"


def write_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, default=float))


def _fmt(value, spec):
    return "–" if value is None else format(value, spec)


def _versions(versions: dict) -> str:
    """``jax 0.7.1, torch 2.13.0+cpu, ...``; a package recorded as None is "not installed". Older results
    record torch only when PyG ran, and nothing for jraph and PyG: what is not recorded is left out."""
    return ", ".join(f"{name} {version or 'not installed'}" for name, version in versions.items())


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"# jgrad benchmark, {results['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {_versions(results['versions'])}. "
        f"STREAM triad (numpy, {m['cores']} threads): "
        f"{results['stream_gbs']:.1f} GB/s. Repeats: {results['repeats']} (median, interleaved). Huge pages for "
        f"malloc: {m.get('malloc_huge_pages', 'not recorded')}.",
        "",
        "`vs best peer` is the median time divided by the fastest peer's (plain_jax, jraph, bcoo, pyg) in",
        "the same run, < 1 is faster (– where no peer was measured). `% STREAM` is a lower bound on the bytes the message passing must move",
        "divided by the time and the triad bandwidth. `check` compares values and gradients with the",
        "jgrad default path (allclose).",
        "",
    ]
    for problem in results["problems"]:
        lines += [f"## {problem['name']}: N={problem['n_nodes']}, E={problem['n_edges']}", "",
                  "| workload | impl | median ms | vs best peer | % STREAM | first call s | check |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for row in problem["rows"]:
            lines.append(
                f"| {row['workload']} | {row['impl']} | {_fmt(row.get('median_ms'), '.2f')} | "
                f"{_fmt(row.get('vs_best_peer'), '.2f')} | {_fmt(row.get('stream_percent'), '.1f')} | "
                f"{_fmt(row.get('first_call_s'), '.2f')} | {row.get('check', row.get('error', ''))} |")
        lines.append("")
    if results.get("memory"):
        lines += ["## Peak memory of one step (own process; MB above the RSS before the step)", "",
                  "| problem | workload | impl | step peak MB |", "|---|---|---|---:|"]
        for row in results["memory"]:
            value = _fmt(row.get("step_peak_mb"), ".0f") if "error" not in row else row["error"]
            lines.append(f"| {row['problem']} | {row['workload']} | {row['impl']} | {value} |")
        lines.append("")
    trace = results.get("recompiles")
    if trace:
        lines += ["## Bounded recompilation with pad_to_bucket", "",
                  f"{trace['graphs']} graphs of {trace['distinct_sizes']} distinct (N, E) sizes, padded to "
                  f"{trace['buckets']} buckets: the jitted training step was traced {trace['traces']} times.", ""]
    for note in results.get("notices", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> None:
    """Median time relative to the best peer, one panel per problem, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = results["problems"]
    fig, axes = plt.subplots(len(problems), 1, figsize=(11, 3.2 * len(problems)), squeeze=False)
    for ax, problem in zip(axes[:, 0], problems):
        workloads = list(dict.fromkeys(r["workload"] for r in problem["rows"]))
        impls = list(dict.fromkeys(r["impl"] for r in problem["rows"]))
        width = 0.8 / max(len(impls), 1)
        for k, impl in enumerate(impls):
            values = {r["workload"]: r.get("vs_best_peer") for r in problem["rows"] if r["impl"] == impl}
            xs = [i + k * width for i, w in enumerate(workloads) if values.get(w)]
            ax.bar(xs, [values[w] for w in workloads if values.get(w)], width, label=impl)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(workloads))], workloads, rotation=20, fontsize=8)
        ax.set_ylabel("time / best peer")
        ax.set_title(f"{problem['name']} (N={problem['n_nodes']}, E={problem['n_edges']})", fontsize=9)
    axes[0, 0].legend(fontsize=7, ncol=len(impls))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
