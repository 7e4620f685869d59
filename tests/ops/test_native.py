"""The native CPU kernels: values against numpy, threading, vmap/jit, the per-platform choice, the build."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad._src._plan import Csr
from jgrad.ops import _native, gat_attention, gsddmm, gspmm, spmm, with_backend

pytestmark = [pytest.mark.usefixtures("x64")]


def _csr(senders, receivers, n_rows, mask=None):
    senders, receivers = np.asarray(senders), np.asarray(receivers)
    real = np.arange(len(senders)) if mask is None else np.flatnonzero(mask)
    order = real[np.argsort(receivers[real], kind="stable")]
    degree = np.bincount(receivers[real], minlength=n_rows)
    return Csr(jnp.asarray(np.concatenate([[0], np.cumsum(degree)]), jnp.int32),
                       jnp.asarray(senders[order], jnp.int32), jnp.asarray(order, jnp.int32))


def _random_graph(n, e, seed=0, hub_share=0.0):
    rng = np.random.default_rng(seed)
    senders, receivers = rng.integers(0, n, e), rng.integers(0, n, e)
    receivers[: int(hub_share * e)] = 0
    return senders, receivers


def _sum_reference(senders, receivers, n, u, w, mask=None):
    out = np.zeros((n, u.shape[1]))
    weights = np.ones(len(senders)) if w is None else np.asarray(w, np.float64)
    keep = np.ones(len(senders), bool) if mask is None else mask
    np.add.at(out, receivers[keep], weights[keep, None] * np.asarray(u, np.float64)[senders[keep]])
    return out


def test_the_kernels_build_on_this_machine():
    assert _native.available(), "the native CPU kernels did not build (is a C++ compiler installed?)"


@pytest.mark.parametrize("dtype,tolerance", [(jnp.float32, 1e-5), (jnp.float64, 1e-12)])
@pytest.mark.parametrize("width", [1, 5, 8, 13, 64])
@pytest.mark.parametrize("weighted", [True, False])
def test_csr_sum_matches_numpy(dtype, tolerance, width, weighted):
    senders, receivers = _random_graph(60, 500, seed=width)
    rng = np.random.default_rng(1)
    u = rng.standard_normal((60, width))
    w = rng.standard_normal(500) if weighted else None
    got = _native.csr_sum(_csr(senders, receivers, 60), jnp.asarray(u, dtype),
                          None if w is None else jnp.asarray(w, dtype))
    assert got.dtype == dtype and got.shape == (60, width)
    np.testing.assert_allclose(got, _sum_reference(senders, receivers, 60, u, w), rtol=tolerance, atol=tolerance)


def test_outputs_large_enough_for_huge_pages_hold_the_same_sums_and_dots():
    """Outputs of 8 MB or more get transparent huge pages before the kernels write them: a hint that
    must not change a value (8.4 MB of sums and of per-head edge dots here)."""
    n, e, heads = 16_384, 262_144, 4
    senders, receivers = _random_graph(n, e, seed=5)
    u = jnp.asarray(np.random.default_rng(2).standard_normal((n, heads, 16)))
    csr = _csr(senders, receivers, n)
    sums = _native.csr_sum(csr, u.reshape(n, -1), None)
    assert sums.nbytes >= 8 << 20
    np.testing.assert_allclose(sums, _sum_reference(senders, receivers, n, u.reshape(n, -1), None),
                               rtol=1e-12, atol=1e-12)
    dots = _native.csr_edge_dot(csr, u, u, e)
    assert dots.shape == (e, heads) and dots.nbytes >= 8 << 20
    np.testing.assert_allclose(dots, np.einsum("ehf,ehf->eh", u[senders], u[receivers]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,tolerance", [(jnp.float32, 1e-5), (jnp.float64, 1e-12)])
@pytest.mark.parametrize("width", [1, 7, 8, 17, 64])
def test_csr_edge_dot_matches_numpy(dtype, tolerance, width):
    senders, receivers = _random_graph(50, 400, seed=width)
    rng = np.random.default_rng(2)
    u, v = rng.standard_normal((50, width)), rng.standard_normal((50, width))
    got = _native.csr_edge_dot(_csr(senders, receivers, 50), jnp.asarray(u, dtype), jnp.asarray(v, dtype), 400)
    np.testing.assert_allclose(got, np.sum(v[receivers] * u[senders], axis=1), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype,tolerance", [(jnp.float32, 1e-5), (jnp.float64, 1e-12)])
@pytest.mark.parametrize("width", [1, 9, 64])
def test_csr_sum_dot_matches_numpy(dtype, tolerance, width):
    senders, receivers = _random_graph(50, 400, seed=width + 1)
    rng = np.random.default_rng(3)
    g, u, w = rng.standard_normal((50, width)), rng.standard_normal((50, width)), rng.standard_normal(400)
    out, dots = _native.csr_sum_dot(_csr(senders, receivers, 50), *(jnp.asarray(a, dtype) for a in (g, u, w)))
    np.testing.assert_allclose(out, _sum_reference(senders, receivers, 50, g, w), rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(dots, np.sum(u[receivers] * g[senders], axis=1), rtol=tolerance, atol=tolerance)


def test_edges_left_out_of_the_csr_get_zero_and_send_nothing():
    senders, receivers = _random_graph(30, 200, seed=3)
    mask = np.random.default_rng(3).random(200) < 0.7
    csr = _csr(senders, receivers, 30, mask)
    u = np.random.default_rng(4).standard_normal((30, 6))
    got = _native.csr_sum(csr, jnp.asarray(u), jnp.ones(200))
    np.testing.assert_allclose(got, _sum_reference(senders, receivers, 30, u, None, mask), rtol=1e-5, atol=1e-5)
    dots = np.asarray(_native.csr_edge_dot(csr, jnp.asarray(u), jnp.asarray(u), 200))
    assert np.all(dots[~mask] == 0.0) and np.all(dots[mask] != 0.0)


def test_many_threads_with_a_hub_give_the_serial_result(monkeypatch):
    # Big enough to be split between threads; half of the edges go into one hub row.
    senders, receivers = _random_graph(3000, 60_000, seed=5, hub_share=0.5)
    rng = np.random.default_rng(5)
    u, w = rng.standard_normal((3000, 16)), rng.standard_normal(60_000)
    csr = _csr(senders, receivers, 3000)
    got = _native.csr_sum(csr, jnp.asarray(u), jnp.asarray(w))
    np.testing.assert_allclose(got, _sum_reference(senders, receivers, 3000, u, w), rtol=1e-10, atol=1e-10)
    dots = _native.csr_edge_dot(csr, jnp.asarray(u), jnp.asarray(u), 60_000)
    np.testing.assert_allclose(dots, np.sum(u[receivers] * u[senders], axis=1), rtol=1e-10, atol=1e-10)


def test_empty_rows_and_a_graph_without_edges():
    csr = _csr(np.zeros(0, int), np.zeros(0, int), 4)
    np.testing.assert_array_equal(_native.csr_sum(csr, jnp.ones((4, 3)), None), np.zeros((4, 3)))
    assert _native.csr_edge_dot(csr, jnp.ones((4, 3)), jnp.ones((4, 3)), 0).shape == (0,)


def test_csr_sum_under_jit_and_vmap():
    senders, receivers = _random_graph(40, 300, seed=6)
    csr = _csr(senders, receivers, 40)
    rng = np.random.default_rng(6)
    u, w = jnp.asarray(rng.standard_normal((3, 40, 5))), jnp.asarray(rng.standard_normal((3, 300)))
    batched = jax.jit(jax.vmap(lambda u, w: _native.csr_sum(csr, u, w)))(u, w)
    for i in range(3):
        np.testing.assert_allclose(batched[i], _sum_reference(senders, receivers, 40, u[i], w[i]), rtol=1e-10)


def _exported_text(platform):
    graph = with_backend(jgrad.Graph.from_edges([0, 1, 2, 2], [1, 2, 0, 1], n_nodes=3), "native")

    def loss(x, w):
        aggregated = spmm(graph, x, w)
        extrema = jnp.sum(gspmm(graph, "u_mul_e", "max", x, w) ** 2) + jnp.sum(gspmm(graph, "copy_u", "min", x))
        attention = jnp.sum(jnp.cos(gat_attention(graph, x[:, :2], x[:, 2:], 0.2)))
        return jnp.sum(aggregated**2) + jnp.sum(jnp.sin(gsddmm(graph, "dot", x, x))) + extrema + attention

    def step(x, w):
        return jax.grad(loss, (0, 1))(x, w)

    allow = [jax.export.DisabledSafetyCheck.custom_call(name) for name in _native.TARGETS]
    exported = jax.export.export(jax.jit(step), platforms=[platform], disabled_checks=allow)(
        jnp.ones((3, 4)), jnp.ones(4))
    return exported.mlir_module()


def test_cpu_lowering_calls_the_native_kernels_and_gpu_lowering_does_not():
    cpu = _exported_text("cpu")
    assert all(f"@{name}(" in cpu for name in _native.TARGETS)
    gpu = _exported_text("cuda")
    assert "jgrad_csr" not in gpu and "gather" in gpu  # the CSR order with XLA segment sums


@pytest.mark.parametrize("sorted_by_sender", [False, True], ids=["unsorted", "sorted_by_sender"])
@pytest.mark.parametrize("wrt", [(0,), (1,), (0, 1)])
def test_the_backward_forms_only_the_cotangents_asked_for(wrt, sorted_by_sender):
    # A training step differentiates the features, not the (constant) edge weights: its backward must
    # be A^T g alone; an edge gradient with fixed features is the edge dot alone. Both cotangents are
    # one fused pass over the reversed graph when its slots hold the edges in id order (edges sorted by
    # sender), else A^T g and the edge dot. Every choice gives the plain path's numbers.
    senders, receivers = _random_graph(30, 200, seed=9)
    if sorted_by_sender:
        order = np.lexsort((receivers, senders))
        senders, receivers = senders[order], receivers[order]
    graph = jgrad.Graph.from_edges(senders, receivers, n_nodes=30)
    rng = np.random.default_rng(9)
    x, w = jnp.asarray(rng.standard_normal((30, 4))), jnp.asarray(rng.uniform(0.5, 2.0, 200))
    loss = lambda graph: lambda x, w: jnp.sum(jnp.sin(spmm(graph, x, w)))  # noqa: E731
    step = jax.jit(jax.grad(loss(with_backend(graph, "native")), wrt))
    text = step.lower(x, w).as_text()
    both = {"jgrad_csr_sum_dot"} if sorted_by_sender else {"jgrad_csr_edge_dot"}
    expected = {(0,): set(), (1,): {"jgrad_csr_edge_dot"}, (0, 1): both}[wrt]
    backward = {name for name in ("jgrad_csr_sum_dot", "jgrad_csr_edge_dot") if f"@{name}(" in text}
    assert backward == expected, (wrt, backward)
    reverse_sum = wrt == (0,) or (wrt == (0, 1) and not sorted_by_sender)
    assert text.count("@jgrad_csr_sum(") == 1 + reverse_sum  # the forward (+ A^T g)
    plain = jax.grad(loss(with_backend(graph, "xla")), wrt)(x, w)
    for got, want in zip(step(x, w), plain, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_other_dtypes_use_the_xla_formulation():
    graph = with_backend(jgrad.Graph.from_edges([0, 1, 2], [1, 2, 0], n_nodes=3), "native")
    x = jnp.arange(6.0, dtype=jnp.bfloat16).reshape(3, 2)
    got = spmm(graph, x)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(x, np.float32)[[2, 0, 1]])


def test_a_failed_build_warns_once_and_reports_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("JGRAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    _native._load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="building the native CPU kernels failed"):
            assert not _native.available()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not _native.available()  # cached: no second warning
    finally:
        monkeypatch.undo()
        _native._load.cache_clear()
    assert _native.available()


def test_a_build_says_on_stderr_that_the_compiler_runs(monkeypatch, tmp_path, capsys):
    """The first lowering of a native op waits 20-60 s for the compiler: one line says so before, one after."""
    assert _native.available()
    built = _native._library_path(_native._compiler())  # this session's library, standing in for a build
    monkeypatch.setenv("JGRAD_CACHE_DIR", str(tmp_path))
    # a link, not a copy: the same loaded library, whose kernels are registered already
    monkeypatch.setattr(_native, "_build", lambda compiler, target: (target.parent.mkdir(parents=True),
                                                                       target.symlink_to(built)))
    _native._load.cache_clear()
    capsys.readouterr()
    try:
        assert _native.available()
        first = capsys.readouterr().err
        assert _native.available()  # cached: nothing more
        again = capsys.readouterr().err
    finally:
        monkeypatch.undo()
        _native._load.cache_clear()
    assert _native.available()
    lines = first.strip().splitlines()
    assert len(lines) == 2, first
    assert "compiling the native CPU kernels" in lines[0] and str(tmp_path / "native") in lines[0]
    assert lines[1].startswith("jgrad: native CPU kernels built in ")
    assert again == ""


def test_the_kernels_refuse_inconsistent_buffers_with_a_message():
    _native.available()
    call = jax.ffi.ffi_call("jgrad_csr_sum", jax.ShapeDtypeStruct((3, 2), jnp.float32))
    index = jnp.zeros(2, jnp.int32)
    with pytest.raises(Exception, match="jgrad_csr_sum: row_ptr must have one entry per output row plus one"):
        jax.block_until_ready(call(index, index, index, jnp.ones((3, 2), jnp.float32), jnp.ones(2, jnp.float32),
                                   loop_base=np.int64(-1)))
    row_ptr = jnp.asarray([0, 1, 2, 2], jnp.int32)
    with pytest.raises(Exception, match="jgrad_csr_sum: all float operands and results must share one dtype"):
        jax.block_until_ready(call(row_ptr, index, index, jnp.ones((3, 2), jnp.float64), jnp.ones(2, jnp.float32),
                                   loop_base=np.int64(-1)))
    with pytest.raises(Exception, match="jgrad_csr_sum: the edge data must have an entry for every self loop"):
        jax.block_until_ready(call(row_ptr, index, index, jnp.ones((3, 2), jnp.float32), jnp.ones(2, jnp.float32),
                                   loop_base=np.int64(2)))
