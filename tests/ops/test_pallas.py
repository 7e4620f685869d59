"""The Pallas kernels: equal to segment sums on tiny graphs, drop-in for the native ones.

Every call leaves ``interpret`` to the platform: on CPU the kernels run in Pallas's interpreter, on a
GPU the same tests run the compiled (Triton) kernels (`experiments/gpu_check.sh`). Interpret mode is
slow to compile, so every test runs a few tiny graphs only. Without a GPU, the Triton path is checked
as far as lowering goes: the kernels lower to Triton custom calls for CUDA.
"""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad._src._plan import Csr, make_plan
from jgrad.ops import _kernels, _native, _pallas

pytestmark = [pytest.mark.usefixtures("x64")]

TOL = dict(rtol=1e-12, atol=1e-12)


def _graphs():
    """(name, senders, receivers, n_nodes): no edges; isolated nodes, self loops, duplicates and a hub."""
    hub_s = [1, 2, 3, 4, 5, 6, 7, 2, 2]  # node 0 is a hub receiver; 2 -> 0 three times; 8 isolated
    hub_r = [0, 0, 0, 0, 0, 0, 0, 0, 0]
    more_s = [3, 3, 5, 6, 7, 1]  # self loop 3 -> 3, duplicate 6 -> 1, 0 sends
    more_r = [3, 1, 4, 1, 1, 0]
    return [
        ("empty", np.zeros(0, np.int32), np.zeros(0, np.int32), 3),
        ("mixed", np.array(hub_s + more_s + [6, 0]), np.array(hub_r + more_r + [1, 2]), 9),
    ]


GRAPHS = {name: (s, r, n) for name, s, r, n in _graphs()}


def _data(n, e, width, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((n, width))), jnp.asarray(rng.standard_normal((n, width))),
            jnp.asarray(rng.standard_normal(e)))


def _segment_sum(rows, cols, n, x, w):
    """``out[rows[e]] += w[e] * x[cols[e]]``: the plain formulation."""
    gathered = x[cols] if w is None else x[cols] * w[:, None]
    return jax.ops.segment_sum(gathered, jnp.asarray(rows), num_segments=n)


def _edge_dots(rows, cols, x, y):
    """``out[e] = <y[rows[e]], x[cols[e]]>``."""
    return jnp.sum(x[cols] * y[rows], axis=-1)


@pytest.mark.parametrize("graph", sorted(GRAPHS))
@pytest.mark.parametrize("block_rows,block_features", [(1, 128), (4, 2)])
def test_csr_sum_equals_segment_sums_on_both_sides(graph, block_rows, block_features):
    senders, receivers, n = GRAPHS[graph]
    plan = make_plan(senders, receivers, n, "native")
    u, _, w = _data(n, len(senders), width=5)
    run = functools.partial(_pallas.csr_sum, block_rows=block_rows, block_features=block_features)
    cases = [(side, rows, cols, weights) for side, rows, cols in ((plan.forward, receivers, senders),
                                                                  (plan.reverse, senders, receivers))
             for weights in (w, None)]
    # One program for the four calls and their references (rather than each call compiled alone).
    results = jax.jit(lambda u, w: [(run(side.csr, u, w if weights is not None else None),
                                     _segment_sum(rows, cols, n, u, w if weights is not None else None))
                                    for side, rows, cols, weights in cases])(u, w)
    for got, expected in results:
        assert got.shape == (n, 5) and got.dtype == u.dtype
        np.testing.assert_allclose(got, expected, **TOL)


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_csr_edge_dot_and_csr_sum_dot_equal_the_plain_formulation(graph):
    senders, receivers, n = GRAPHS[graph]
    plan = make_plan(senders, receivers, n, "native")
    e = len(senders)
    u, v, w = _data(n, e, width=3)

    @jax.jit  # the kernels and their references in one program
    def results(u, g, w):
        return (_pallas.csr_edge_dot(plan.forward.csr, u, g, e, block_rows=4),
                _edge_dots(receivers, senders, u, g),
                # The backward of a weighted sum: (A^T g, dw) from one pass over the reversed side.
                _pallas.csr_sum_dot(plan.reverse.csr, g, u, w, block_rows=4),
                (_segment_sum(senders, receivers, n, g, w), _edge_dots(senders, receivers, g, u)))

    dots, expected_dots, (out, dw), (expected_out, expected_dw) = results(u, v, w)
    assert dots.shape == (e,)
    np.testing.assert_allclose(dots, expected_dots, **TOL)
    np.testing.assert_allclose(out, expected_out, **TOL)
    np.testing.assert_allclose(dw, expected_dw, **TOL)


def test_edges_in_no_slot_get_zero_and_rows_need_not_match_a_block():
    # A CSR of 5 rows over edges 0, 2, 3 of 5 (1 and 4 are in no slot, as the native kernels allow).
    senders, receivers = np.array([0, 4, 1, 1, 2]), np.array([3, 0, 0, 3, 4])
    kept = np.array([0, 2, 3])
    order = kept[np.argsort(receivers[kept], kind="stable")]
    degree = np.bincount(receivers[kept], minlength=5)
    csr = Csr(jnp.asarray(np.concatenate([[0], np.cumsum(degree)]), jnp.int32),
              jnp.asarray(senders[order], jnp.int32), jnp.asarray(order, jnp.int32))
    u, v, w = _data(5, 5, width=2, seed=3)

    @jax.jit  # the kernels (interpret chosen per platform) and their references in one program
    def results(u, v, w):
        return (_pallas.csr_edge_dot(csr, u, v, 5, block_rows=2), _pallas.csr_sum_dot(csr, u, v, w, block_rows=2),
                _edge_dots(receivers, senders, u, v), _segment_sum(receivers[kept], senders[kept], 5, u, w[kept]))

    dots, (out, dw), all_dots, expected_out = results(u, v, w)
    expected = np.where(np.isin(np.arange(5), kept), all_dots, 0.0)
    np.testing.assert_allclose(dots, expected, **TOL)
    np.testing.assert_allclose(dw, expected, **TOL)
    np.testing.assert_allclose(out, expected_out, **TOL)


def test_jit_and_vmap():
    senders, receivers, n = GRAPHS["mixed"]
    csr = make_plan(senders, receivers, n, "native").forward.csr
    u, _, w = _data(n, len(senders), width=2, seed=4)
    batch = jnp.stack([u, 2 * u])
    got = jax.jit(jax.vmap(lambda x: _pallas.csr_sum(csr, x, w)))(batch)
    expected = _segment_sum(receivers, senders, n, u, w)
    np.testing.assert_allclose(got, jnp.stack([expected, 2 * expected]), **TOL)


def test_block_sizes_must_be_powers_of_two():
    senders, receivers, n = GRAPHS["mixed"]
    csr = make_plan(senders, receivers, n, "native").forward.csr
    u, _, w = _data(n, len(senders), width=2)
    with pytest.raises(ValueError, match=r"^jgrad.ops._pallas: block_rows must be a power of two; got 3\.$"):
        _pallas.csr_sum(csr, u, w, block_rows=3)
    with pytest.raises(ValueError, match=r"^jgrad.ops._pallas: block_features must be a power of two; got 6\.$"):
        _pallas.csr_sum(csr, u, w, block_features=6)


def test_the_engine_interface_on_a_plan_casts_to_the_common_dtype():
    senders, receivers, n = GRAPHS["mixed"]
    plan = make_plan(senders, receivers, n, "native")
    u, v, w = _data(n, len(senders), width=3, seed=6)
    u32 = u.astype(jnp.float32)
    g = v

    @jax.jit  # the engine interface and the references in one program
    def results(u, u32, g, w):
        w32 = w.astype(jnp.float32)
        return ((_pallas.side_sum(plan.reverse, u, w), _segment_sum(senders, receivers, n, u, w)),
                (_pallas.edge_dot(plan.forward, u32, g), _edge_dots(receivers, senders, u32.astype(jnp.float64), g)),
                _pallas.sum_dot(plan, g, w32, u),  # (A^T g, <g[receivers], u[senders]>)
                (_segment_sum(senders, receivers, n, g, w32.astype(jnp.float64)), _edge_dots(receivers, senders, u, g)))

    (side_sum, expected_sum), (dots, expected_dots), (du, dw), (expected_du, expected_dw) = results(u, u32, g, w)
    np.testing.assert_allclose(side_sum, expected_sum, **TOL)
    assert dots.dtype == jnp.float64  # float32 against float64: float64
    np.testing.assert_allclose(dots, expected_dots, **TOL)
    assert du.dtype == dw.dtype == jnp.float64
    np.testing.assert_allclose(du, expected_du, **TOL)
    np.testing.assert_allclose(dw, expected_dw, **TOL)


def test_as_the_native_kernels_the_engine_gives_the_plain_gradients(swapped_kernels):
    """Swapped in for the native kernels, the Pallas ones give `layout_sum`'s ops the plain
    path's values, gradients and second-order gradients (the edges sorted by sender, so that the
    engine's backward runs `csr_sum_dot` on the reversed side; `csr_edge_dot` runs in the second order)."""
    monkeypatch = swapped_kernels
    calls = []

    def counted(kernel):
        def run(*args, self_loops=False):
            assert not self_loops  # the graph has none
            calls.append(kernel.__name__)
            return kernel(*args)
        return run

    for name in ("csr_sum", "csr_edge_dot", "csr_sum_dot"):
        monkeypatch.setattr(_native, name, counted(getattr(_pallas, name)))
    monkeypatch.setattr(_native, "available", lambda: True)
    senders, receivers, n = GRAPHS["mixed"]
    order = np.lexsort((receivers, senders))
    senders, receivers = senders[order], receivers[order]
    plan = make_plan(senders, receivers, n, "native")
    assert plan.reverse.in_edge_order
    u, v, w = _data(n, len(senders), width=3, seed=5)

    def engine(u, w):
        return jnp.sum(jnp.tanh(_kernels.layout_sum(plan, u, w)) * v)

    def plain(u, w):
        return jnp.sum(jnp.tanh(_segment_sum(receivers, senders, n, u, w)) * v)

    second = lambda f: jax.grad(lambda u, w: jnp.sum(jax.grad(f, 1)(u, w) ** 2), (0, 1))  # noqa: E731
    # Values, gradients and second-order gradients of both in one program (the kernels are traced once).
    got, expected = jax.jit(lambda u, w: [(f(u, w), jax.grad(f, (0, 1))(u, w), second(f)(u, w))
                                          for f in (engine, plain)])(u, w)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, **TOL)
    assert set(calls) == {"csr_sum", "csr_edge_dot", "csr_sum_dot"}, "the engine did not call every kernel"


def _a_gpu_to_lower_for():
    """jax 0.11's Triton lowering asks the device for its GPU model; without a GPU, an abstract H100 is
    named (jax 0.10 asks nothing)."""
    if jax.default_backend() == "gpu" or jax.__version_info__ < (0, 11):
        return contextlib.nullcontext()
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=None, platform="gpu")
    return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device))


@pytest.mark.skipif(_pallas.triton_module() is None, reason="this jaxlib has no Triton lowering")
def test_the_kernels_lower_to_triton_for_cuda_without_a_gpu():
    """Lowering only (Triton IR made on the host); compiling and running need a GPU."""
    senders, receivers, n = GRAPHS["mixed"]
    csr = make_plan(senders, receivers, n, "native").forward.csr
    u, v, w = (x.astype(jnp.float32) for x in _data(n, len(senders), width=5))
    e = len(senders)

    def all_kernels(csr, u, v, w):
        return (_pallas.csr_sum(csr, u, w), _pallas.csr_sum(csr, u, None, block_features=4),
                _pallas.csr_edge_dot(csr, u, v, e), _pallas.csr_sum_dot(csr, u, v, w))

    checks = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    with _a_gpu_to_lower_for():
        exported = jax.export.export(jax.jit(all_kernels), platforms=["cuda"], disabled_checks=checks)(csr, u, v, w)
    assert exported.mlir_module().count("xla.gpu.triton") == 4
