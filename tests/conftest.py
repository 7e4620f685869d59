"""Shared fixtures: strict JAX numerics, fresh PRNG keys, float64, and the eager/jit/vmap variants."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The suite compiles thousands of tiny programs, whose compile time LLVM's optimisation passes dominate
# while buying nothing at these sizes (about 20% of the suite's time). Set before JAX is imported, so
# that the processes tests start inherit it too; a value set by the caller wins. Tests whose time goes
# into running compiled code on real data take the `optimized` fixture.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


def _with_cheaper_cpu_compiles() -> None:
    """Sets XLA CPU flags that make the suite's many small compiles cheaper, those this XLA has.

    ``--xla_cpu_use_fusion_emitters=false``: CPU fusions compile with XLA's classic emitters. The newer
    fusion emitters cost a fixed compile time per fused kernel: a small training loop of 160 fusions
    took 2.0 s to compile, against 0.6 s with the classic emitters. Both compute the same operations;
    float32 results can differ in the last bits (elementwise functions are approximated differently).

    ``--xla_cpu_parallel_codegen_split_count=1``: each program's LLVM module is compiled whole instead of
    split into parts for a pool of compile threads, which one core per worker cannot use anyway; the
    generated code is the same. Measured on one core: tests/attacks/test_meta.py + tests/train/test_fit.py
    44.8/44.7 -> 43.2/38.5 s of CPU; tests/ops/test_gspmm.py, test_gsddmm.py, test_edge_softmax.py and
    tests/nn/test_models.py 23.0/20.8 -> 19.2/18.7 s.

    An unknown flag in ``XLA_FLAGS`` aborts the process, so a short child process tries them first,
    once: the value set here is inherited by the test workers and the processes tests start. A flag
    already named in ``XLA_FLAGS`` keeps the caller's value.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("JGRAD_TEST_XLA_FLAGS_TRIED"):
        return
    os.environ["JGRAD_TEST_XLA_FLAGS_TRIED"] = "1"
    wanted = [flag for flag in ("--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1")
              if flag.split("=")[0].lstrip("-") not in flags]
    if not wanted:
        return
    # All together first (one child process); one by one only if that fails.
    for group in [wanted] + ([[flag] for flag in wanted] if len(wanted) > 1 else []):
        candidate = " ".join([flags, *group]).strip()
        try:
            probe = subprocess.run(
                [sys.executable, "-c", "import jax; jax.jit(lambda x: x + 1)(1.0).block_until_ready()"],
                env=dict(os.environ, XLA_FLAGS=candidate, JAX_PLATFORMS="cpu"), capture_output=True, timeout=120)
        except subprocess.TimeoutExpired:
            continue
        if probe.returncode == 0:
            flags = candidate
            if group == wanted:
                break
    if flags:
        os.environ["XLA_FLAGS"] = flags


_with_cheaper_cpu_compiles()


def _one_core_per_worker() -> None:
    """Under pytest-xdist, keeps each worker (and the processes it starts) on a core of its own.

    XLA's CPU client runs programs on a thread pool as wide as the cores the process may use, and its
    threads spin while they wait. The suite's programs are tiny, so the extra threads add CPU time and
    no speed, and with one worker per core they take that time from the other worker: tests/train in
    one process took 39.7 s of CPU on both cores and 32.3 s on one, and ran no slower. Runs without
    xdist keep every core.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not worker.startswith("gw") or not worker[2:].isdigit() or len(cores) < 2:
        return
    os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})
    # The native kernels size their thread count from the usable cores; keep two, as on the machine
    # itself, so that their row-splitting path (tests/ops/test_native.py, the hub test) stays tested.
    os.environ.setdefault("JGRAD_NUM_THREADS", "2")


_one_core_per_worker()

import jax  # noqa: E402
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def keys():
    """An iterator of fresh PRNG keys, seeded per test."""

    def _gen():
        key = jax.random.key(0)
        while True:
            key, sub = jax.random.split(key)
            yield sub

    return _gen()


@pytest.fixture
def optimized():
    """Compiles with XLA's full optimisation during the test (for a test that trains on real data,
    where optimised code saves more than the compile time it costs)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture
def swapped_kernels(monkeypatch):
    """``monkeypatch`` for swapping jgrad's kernels: the ops' cached traces (which hold the kernels they
    called) are dropped before the test and again after its patches are undone."""
    from jgrad._src._op import forget_traces

    forget_traces()
    yield monkeypatch
    monkeypatch.undo()
    forget_traces()


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(params=["eager", "jit", "vmap"])
def variant(request):
    """Runs ``fn(*args)`` eagerly, under ``jax.jit``, or under ``jax.vmap`` over a batch of one.

    Under ``vmap`` every floating-point array leaf of ``args`` (Graph edge weights included) gets a leading
    batch axis of size 1; integer leaves (indices) stay unbatched. The result is unbatched again, so the
    three variants must return the same numbers.
    """
    mode = request.param

    def run(fn, *args):
        if mode == "eager":
            return fn(*args)
        if mode == "jit":
            return jax.jit(fn)(*args)
        in_axes = jax.tree.map(lambda leaf: 0 if _is_float_array(leaf) else None, args)
        batched = jax.tree.map(lambda leaf: leaf[None] if _is_float_array(leaf) else leaf, args)
        out = jax.vmap(fn, in_axes=in_axes)(*batched)
        return jax.tree.map(lambda leaf: leaf[0], out)

    run.mode = mode
    return run


def _is_float_array(leaf) -> bool:
    return hasattr(leaf, "dtype") and np.issubdtype(leaf.dtype, np.floating)


@pytest.fixture(scope="session")
def planetoid_dir(tmp_path_factory) -> Path:
    """A folder of Planetoid-format files ``ind.{cora,citeseer}.*`` written from the shipped datasets.

    The files have the layout of the original release (Python 2 module paths in protocol-2 pickles, CSR
    features, one-hot labels, a shuffled ``test.index``, adjacency lists with some self loops), so
    ``load_planetoid(name, planetoid_dir)`` must give exactly ``jgrad.data.load(name)``.
    """
    folder = tmp_path_factory.mktemp("planetoid")
    for name in ("cora", "citeseer"):
        write_planetoid_files(folder, name)
    return folder


def write_planetoid_files(folder: Path, name: str) -> None:
    """Writes ``jgrad.data.load(name)`` (raw features, public split) as the eight Planetoid files."""
    import collections
    import pickle

    import scipy.sparse as sparse

    from jgrad.data import load

    data = load(name, normalize_features=False)
    features, labels = np.asarray(data.features), np.asarray(data.labels)
    one_hot = np.eye(data.n_classes, dtype=np.int32)[labels]
    n_train = int(data.train_mask.sum())
    test_index = np.random.default_rng(0).permutation(np.flatnonzero(data.test_mask))
    n_labelled = int(test_index.min())
    adjacency = collections.defaultdict(list)
    for sender, receiver in zip(np.asarray(data.graph.senders).tolist(), np.asarray(data.graph.receivers).tolist()):
        adjacency[sender].append(receiver)
    for node in range(0, data.n_nodes, 25):  # self loops, as the original lists hold; the loader drops them
        adjacency[node].append(node)
    parts = {
        "x": sparse.csr_matrix(features[:n_train]), "y": one_hot[:n_train],
        "allx": sparse.csr_matrix(features[:n_labelled]), "ally": one_hot[:n_labelled],
        "tx": sparse.csr_matrix(features[test_index]), "ty": one_hot[test_index], "graph": adjacency,
    }
    python2_paths = {b"numpy._core.multiarray\n": b"numpy.core.multiarray\n", b"scipy.sparse._csr\n": b"scipy.sparse.csr\n"}
    for part, value in parts.items():
        blob = pickle.dumps(value, protocol=2)
        for new, old in python2_paths.items():
            blob = blob.replace(new, old)
        (folder / f"ind.{name}.{part}").write_bytes(blob)
    (folder / f"ind.{name}.test.index").write_text("".join(f"{index}\n" for index in test_index.tolist()))
