"""The benchmark suite runs end to end on a tiny graph and writes its results."""

import json




def test_quick_benchmark_on_a_tiny_graph_writes_json_table_and_chart(tmp_path, monkeypatch):
    from jgrad.bench import _timing, main

    # No settle pauses between timed calls (45 of 0.1 s here, idle time of a test worker); the pauses
    # themselves are checked in test_interleaved_rounds_rotate_and_pause_before_every_timed_call.
    monkeypatch.setattr(_timing.time, "sleep", lambda seconds: None)
    code = main(["--quick", "--sizes", "300", "--repeats", "1", "--no-cora", "--no-recompile-check",
                 "--impls", "jgrad", "jgrad_xla", "plain_jax",
                 "--workloads", "gcn_fwdbwd", "gat_fwdbwd", "gcn_train", "--out", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    rows = results["problems"][0]["rows"]
    assert {(r["workload"], r["impl"]) for r in rows} == {
        (w, i) for w in ("gcn_fwdbwd", "gat_fwdbwd", "gcn_train") for i in ("jgrad", "jgrad_xla", "plain_jax")}
    assert all(r["check"] == "ok" and r["median_ms"] > 0 for r in rows)
    assert results["stream_gbs"] > 0
    assert (tmp_path / "bench.md").read_text().startswith("# jgrad benchmark")
    assert f"Huge pages for malloc: {results['machine']['malloc_huge_pages']}." in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_the_machine_record_says_whether_malloc_uses_huge_pages(monkeypatch, tmp_path):
    """The peers' ratios depend on it (their steps fault in far more fresh memory than jgrad's)."""
    from jgrad.bench import _report

    real_open = open

    def sysfs(mode):
        def fake_open(path, *args, **kwargs):
            if str(path) == "/sys/kernel/mm/transparent_hugepage/enabled":
                (tmp_path / "enabled").write_text(mode)
                return real_open(tmp_path / "enabled", *args, **kwargs)
            return real_open(path, *args, **kwargs)
        return fake_open

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    cases = {("always [madvise] never", ""): "off", ("always [madvise] never", "glibc.malloc.hugetlb=1"): "on",
             ("always madvise [never]", "glibc.malloc.hugetlb=1"): "off", ("[always] madvise never", ""): "always",
             ("always [madvise] never", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"): "on"}
    for (mode, tunables), expected in cases.items():
        monkeypatch.setattr("builtins.open", sysfs(mode))
        monkeypatch.setenv("GLIBC_TUNABLES", tunables)
        assert _report.malloc_huge_pages() == expected, (mode, tunables)


def test_recompile_check_traces_once_per_bucket():
    from jgrad.bench import bounded_recompiles

    result = bounded_recompiles(n_graphs=6)
    assert result["traces"] == result["buckets"] < result["distinct_sizes"]


def test_interleaved_rounds_rotate_and_pause_before_every_timed_call(monkeypatch):
    from jgrad.bench import _timing

    calls, pauses = [], []
    monkeypatch.setattr(_timing.time, "sleep", lambda seconds: pauses.append(seconds))
    steps = {name: (lambda name=name: calls.append(name), ()) for name in ("a", "b", "c")}
    times = _timing.time_interleaved(steps, repeats=3, block=lambda result: result, warmup=1, settle=0.25)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] + ["b", "c", "a"] + ["c", "a", "b"]
    assert pauses == [0.25] * 9  # before each timed call, none in the warm-up
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_short_steps_get_more_rounds_up_to_the_cap(monkeypatch):
    from jgrad.bench import _timing

    clock = iter(range(10**6))  # every reading 10 ms after the previous: each call measures 10 ms
    monkeypatch.setattr(_timing.time, "perf_counter", lambda: next(clock) * 0.01)
    monkeypatch.setattr(_timing.time, "sleep", lambda seconds: None)
    steps = {name: (lambda: None, ()) for name in ("a", "b")}
    rounds = lambda **kw: len(_timing.time_interleaved(steps, repeats=3, block=lambda r: r, **kw)["a"])
    assert rounds() == 3
    assert rounds(min_step_seconds=0.055, max_repeats=10) == 6  # 0.055 s of 10 ms calls
    assert rounds(min_step_seconds=0.055, max_repeats=4) == 4
    assert rounds(min_step_seconds=0.01, max_repeats=10) == 3  # never fewer than asked


def test_a_run_without_peers_says_so_and_the_report_gives_the_installed_versions(tmp_path, monkeypatch, capsys):
    import importlib.metadata

    from jgrad.bench import _timing, main

    monkeypatch.setattr(_timing.time, "sleep", lambda seconds: None)
    code = main(["--quick", "--sizes", "300", "--repeats", "1", "--no-cora", "--no-recompile-check",
                 "--impls", "jgrad", "jgrad_xla", "--workloads", "gcn_fwdbwd", "--out", str(tmp_path)])
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if " gcn_fwdbwd " in line]
    assert len(lines) == 2 and all("no peer measured  check ok" in line for line in lines), lines
    assert not any("nan" in line for line in lines)
    results = json.loads((tmp_path / "bench.json").read_text())
    assert all(row["vs_best_peer"] is None for row in results["problems"][0]["rows"])
    report = (tmp_path / "bench.md").read_text()
    for name in ("jraph", "torch", "torch_geometric"):  # recorded although no peer ran
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        assert results["versions"][name] == (None if version == "not installed" else version)
        assert f"{name} {version}" in report
    assert "None" not in report.split("\n")[2]


def test_the_report_names_missing_packages_and_leaves_out_unrecorded_ones():
    from jgrad.bench import _report

    results = {"date": "d", "machine": {"cpu": "c", "cores": 2, "memory_gib": 1.0}, "stream_gbs": 1.0,
               "repeats": 1, "problems": [], "versions": {"jax": "0.1", "torch": None}}
    assert "; jax 0.1, torch not installed. STREAM" in _report.markdown(results)
    results["versions"] = {"jax": "0.1"}  # written before the peers' versions were recorded
    assert "; jax 0.1. STREAM" in _report.markdown(results)


def test_the_pallas_implementation_runs_on_a_gpu_only_and_then_on_the_pallas_backend(tmp_path, monkeypatch, capsys):
    """Off a GPU `jgrad_pallas` is skipped with a notice and left out of the default implementations; on
    one it is the graph planned for "pallas" (here faked: the kernels run in Pallas's interpreter)."""
    import jgrad
    from jgrad.bench import _peers, _timing, _workloads, main

    monkeypatch.setattr(_timing.time, "sleep", lambda seconds: None)
    assert "jgrad_pallas" not in _peers.default_impls()
    code = main(["--quick", "--sizes", "300", "--repeats", "1", "--no-cora", "--no-recompile-check",
                 "--impls", "jgrad", "jgrad_pallas", "--workloads", "sddmm_fwd", "--out", str(tmp_path)])
    assert code == 0
    assert "notice: skipped jgrad_pallas: needs a GPU" in capsys.readouterr().out

    monkeypatch.setattr(_peers, "on_gpu", lambda: True)
    assert "jgrad_pallas" in _peers.default_impls()
    problem = _workloads.synthetic_problem(300)
    assert jgrad.ops.backend_of(_peers._graph_arrays("jgrad_pallas", problem)["graph"]) == "pallas"
    code = main(["--quick", "--sizes", "300", "--repeats", "1", "--no-cora", "--no-recompile-check",
                 "--impls", "jgrad_xla", "jgrad_pallas", "--workloads", "gcn_fwdbwd", "--out", str(tmp_path)])
    assert code == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["problems"][0]["rows"]
    assert {row["impl"]: row["check"] for row in rows} == {"jgrad_xla": "ok", "jgrad_pallas": "ok"}
