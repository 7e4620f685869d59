"""Edge softmax on the native backend: one CSR kernel forward (`jgrad_csr_softmax`) and one backward
(`jgrad_csr_softmax_backward`), with the plain path's values and gradients to every order in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import Graph
from jgrad._src._plan import Csr
from jgrad.ops import _native, edge_softmax, with_backend

pytestmark = [pytest.mark.usefixtures("x64")]

TOL = dict(rtol=1e-12, atol=1e-12)

# Duplicate edges (0->1 twice), self loops (3->3), isolated nodes (5, 6), padding edges (edge_mask), and
# node 4, whose incoming edges (8, 9) get -inf logits below.
AWKWARD = jgrad.pad(Graph.from_edges([0, 0, 1, 2, 2, 3, 3, 4, 1, 2], [1, 1, 2, 0, 1, 3, 1, 0, 4, 4], 7),
                    n_nodes=8, n_edges=13)


@pytest.fixture(scope="module")
def native_available():
    assert _native.available(), "the native CPU kernels did not build on this machine"


def _csr(receivers, n_rows, keep):
    """The CSR over the receivers of the kept edges, their slots shuffled within each row."""
    rng = np.random.default_rng(0)
    real = rng.permutation(np.flatnonzero(keep))
    order = real[np.argsort(receivers[real], kind="stable")]
    degree = np.bincount(receivers[real], minlength=n_rows)
    return Csr(jnp.asarray(np.concatenate([[0], np.cumsum(degree)]), jnp.int32),
               jnp.zeros(len(order), jnp.int32), jnp.asarray(order, jnp.int32))


def _softmax_reference(receivers, n, logits, live):
    """Per receiver and head, in numpy float64: the softmax of the live logits, 0 elsewhere."""
    out = np.zeros_like(logits)
    for r in range(n):
        edges = np.flatnonzero((receivers == r) & live)
        if edges.size:
            z = np.exp(logits[edges] - logits[edges].max(axis=0))
            out[edges] = z / z.sum(axis=0)
    return out


@pytest.mark.parametrize("heads,dtype", [(0, jnp.float64), (4, jnp.float64), (3, jnp.float64), (4, jnp.float32)],
                         ids=["E_float64", "E_4_float64", "E_3_float64", "E_4_float32"])
def test_the_kernels_equal_numpy_with_masks_hubs_and_edges_in_no_slot(native_available, heads, dtype):
    # Big enough to be split between threads; a third of the edges go into one hub row.
    n, n_edges = 2000, 40_000
    rng = np.random.default_rng(heads)
    receivers = rng.integers(0, n, n_edges)
    receivers[: n_edges // 3] = 0
    keep = rng.random(n_edges) < 0.9  # the others are in no slot
    live = rng.random(n_edges) < 0.8  # the mask
    shape = (n_edges,) + ((heads,) if heads else ())
    logits = jnp.asarray(5 * rng.standard_normal(shape), dtype)
    g = jnp.asarray(rng.standard_normal(shape), dtype)
    csr = _csr(receivers, n, keep)
    a = _native.csr_softmax(csr, jnp.asarray(live), logits)
    assert a.shape == shape and a.dtype == dtype

    as_rows = lambda x: np.asarray(x, np.float64).reshape(n_edges, -1)  # noqa: E731
    expected = _softmax_reference(receivers, n, as_rows(logits), keep & live)
    tol = TOL if dtype == jnp.float64 else dict(rtol=2e-5, atol=1e-6)  # float32 sums over the hub's 1.3e4 edges
    np.testing.assert_allclose(as_rows(a), expected, **tol)
    weighted = np.where((keep & live)[:, None], expected * as_rows(g), 0.0)
    per_receiver = np.zeros((n, weighted.shape[1]))
    np.add.at(per_receiver, receivers, weighted)
    expected_grad = np.where((keep & live)[:, None], expected * (as_rows(g) - per_receiver[receivers]), 0.0)
    grad = _native.csr_softmax_backward(csr, jnp.asarray(live), a, g)
    np.testing.assert_allclose(as_rows(grad), expected_grad, **tol)
    # Without a mask every edge in a slot is live.
    np.testing.assert_allclose(as_rows(_native.csr_softmax(csr, None, logits)),
                               _softmax_reference(receivers, n, as_rows(logits), keep), **tol)


@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-14), (jnp.float32, 3e-7)])
def test_the_kernel_exponential_is_accurate_down_to_underflow(native_available, dtype, rtol):
    # Rows of two edges with logits (0, x): the second gets exp(x) / (1 + exp(x)) for x <= 0, down to
    # the smallest normal number; below it 0 or a subnormal (XLA's CPU threads flush subnormals to zero,
    # as its own exp does), and 0 at -inf.
    x = np.concatenate([-np.geomspace(1e-6, 800.0, 400), [0.0, -np.inf]])
    x = np.asarray(np.asarray(x, dtype), np.float64)  # the logits as the kernel sees them
    logits = np.stack([np.zeros_like(x), x], axis=1).reshape(-1)
    n_rows = x.size
    csr = Csr(jnp.arange(0, 2 * n_rows + 1, 2, dtype=jnp.int32), jnp.zeros(2 * n_rows, jnp.int32),
              jnp.arange(2 * n_rows, dtype=jnp.int32))
    got = np.asarray(_native.csr_softmax(csr, None, jnp.asarray(logits, dtype)), np.float64).reshape(n_rows, 2)
    expected = np.exp(x) / (1.0 + np.exp(x))
    tiny = np.finfo(dtype).tiny
    normal = expected >= tiny
    np.testing.assert_allclose(got[normal, 1], expected[normal], rtol=rtol)
    np.testing.assert_allclose(got[~normal, 1], expected[~normal], rtol=0, atol=tiny)
    np.testing.assert_allclose(got[:, 0], 1.0 / (1.0 + np.exp(x)), rtol=rtol)
    assert got[-1, 1] == 0.0 and got[-1, 0] == 1.0


def _loss(graph, logits, weights):
    return jnp.sum(jnp.sin(edge_softmax(graph, logits)) * weights)


@jax.jit
def _all_orders(graph, logits, weights):
    """Values, first-order and second-order gradients, in one program."""
    first = jax.grad(_loss, 1)
    second = jax.grad(lambda logits: jnp.sum(first(graph, logits, weights) ** 2))
    return edge_softmax(graph, logits), first(graph, logits, weights), second(logits)


@pytest.mark.parametrize("trailing", [(), (3,), (4, 1)], ids=["E", "E_H", "E_H_1"])
def test_values_and_gradients_to_second_order_equal_the_plain_path(native_available, trailing):
    rng = np.random.default_rng(len(trailing))
    shape = (AWKWARD.n_edges,) + trailing
    logits = jnp.asarray(rng.standard_normal(shape)).at[jnp.array([8, 9])].set(-jnp.inf)  # node 4: all -inf
    weights = jnp.asarray(rng.standard_normal(shape))
    native, plain = with_backend(AWKWARD, "native"), with_backend(AWKWARD, "xla")
    text = _all_orders.lower(native, logits, weights).as_text()
    assert "@jgrad_csr_softmax(" in text and "@jgrad_csr_softmax_backward(" in text
    got, expected = _all_orders(native, logits, weights), _all_orders(plain, logits, weights)
    for x, y in zip(got, expected, strict=True):
        assert x.shape == shape
        np.testing.assert_allclose(x, y, **TOL)
    value, grad, _ = map(np.asarray, got)
    padding = ~np.asarray(AWKWARD.edge_mask)
    assert np.all(value[padding] == 0.0) and np.all(grad[padding] == 0.0), "padding edges got a share"
    assert np.all(value[[8, 9]] == 0.0) and np.all(grad[[8, 9]] == 0.0), "the all -inf receiver got a share"


def test_a_training_step_calls_each_kernel_once():
    graph = with_backend(AWKWARD, "native")
    logits, weights = jnp.ones((AWKWARD.n_edges, 4)), jnp.ones((AWKWARD.n_edges, 4))
    text = jax.jit(jax.value_and_grad(_loss, 1)).lower(graph, logits, weights).as_text()
    assert text.count("@jgrad_csr_softmax(") == 1 and text.count("@jgrad_csr_softmax_backward(") == 1
    assert "scatter" not in text  # no segment maximum, no segment sums


def test_third_order_and_vmap_equal_the_plain_path(native_available):
    rng = np.random.default_rng(7)
    logits, weights = jnp.asarray(rng.standard_normal((AWKWARD.n_edges, 2))), jnp.asarray(rng.standard_normal(2))

    @jax.jit
    def run(graph, logits):
        loss = lambda z: jnp.sum(jnp.cos(edge_softmax(graph, z) @ weights))  # noqa: E731
        third = jax.grad(lambda z: jnp.sum(jax.grad(lambda z: jnp.sum(jax.grad(loss)(z) ** 2))(z) ** 2))(logits)
        return third, jax.vmap(lambda z: edge_softmax(graph, z))(jnp.stack([logits, 3.0 * logits]))

    for x, y in zip(run(with_backend(AWKWARD, "native"), logits), run(with_backend(AWKWARD, "xla"), logits)):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


def test_nan_and_inf_logits_give_the_plain_path_values_and_gradients(native_available):
    graph = Graph.from_edges([0, 1, 2, 3, 4, 5, 0, 1, 2], [1, 1, 2, 2, 3, 3, 4, 4, 5], 7)
    logits = jnp.array([[1e4, 0.0], [-1e4, 1e300], [jnp.nan, 1.0], [2.0, 3.0], [jnp.inf, -jnp.inf],
                        [0.5, -jnp.inf], [-jnp.inf, 5.0], [-jnp.inf, -1e4], [3e4, 709.5]])
    weights = jnp.linspace(0.5, 1.5, logits.size).reshape(logits.shape)
    step = jax.jit(lambda graph, z: (edge_softmax(graph, z), jax.grad(_loss, 1)(graph, z, weights)))
    for x, y in zip(step(with_backend(graph, "native"), logits), step(with_backend(graph, "xla"), logits)):
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        np.testing.assert_allclose(x, y, **TOL)


def test_other_dtypes_keep_the_edge_sum_path():
    graph = with_backend(AWKWARD, "native")
    logits = jnp.zeros((AWKWARD.n_edges,), jnp.bfloat16)
    text = jax.jit(edge_softmax).lower(graph, logits).as_text()
    assert "jgrad_csr_softmax" not in text
    got = np.asarray(jax.jit(edge_softmax)(graph, logits), np.float32)
    expected = np.asarray(edge_softmax(with_backend(AWKWARD, "xla"), logits.astype(jnp.float32)))
    np.testing.assert_allclose(got, expected, rtol=1e-2)


def test_the_kernels_refuse_inconsistent_buffers_with_a_message(native_available):
    row_ptr, edge_ids, no_mask = jnp.asarray([0, 1, 2], jnp.int32), jnp.asarray([0, 1], jnp.int32), jnp.zeros(0, bool)
    softmax = jax.ffi.ffi_call("jgrad_csr_softmax", jax.ShapeDtypeStruct((2, 3), jnp.float64))
    with pytest.raises(Exception, match="jgrad_csr_softmax: all edge buffers must have one shape"):
        jax.block_until_ready(softmax(row_ptr, edge_ids, no_mask, jnp.ones((2, 4))))
    with pytest.raises(Exception, match="jgrad_csr_softmax: the mask must be bool with one entry per edge, or empty"):
        jax.block_until_ready(softmax(row_ptr, edge_ids, jnp.ones(3, bool), jnp.ones((2, 3))))
    with pytest.raises(Exception, match="jgrad_csr_softmax: index arrays must be int32"):
        jax.block_until_ready(softmax(row_ptr.astype(jnp.int64), edge_ids, no_mask, jnp.ones((2, 3))))
    with pytest.raises(Exception, match="jgrad_csr_softmax: edge_ids must have at most one slot per edge"):
        jax.block_until_ready(softmax(row_ptr, jnp.zeros(3, jnp.int32), no_mask, jnp.ones((2, 3))))
    with pytest.raises(Exception, match=r"jgrad_csr_softmax: edge data must have shape \(E,\) or \(E, H\)"):
        wide = jax.ffi.ffi_call("jgrad_csr_softmax", jax.ShapeDtypeStruct((2, 3, 1), jnp.float64))
        jax.block_until_ready(wide(row_ptr, edge_ids, no_mask, jnp.ones((2, 3, 1))))
    backward = jax.ffi.ffi_call("jgrad_csr_softmax_backward", jax.ShapeDtypeStruct((2, 3), jnp.float64))
    with pytest.raises(Exception, match="jgrad_csr_softmax_backward: all float operands and results must share one"):
        jax.block_until_ready(backward(row_ptr, edge_ids, no_mask, jnp.ones((2, 3)), jnp.ones((2, 3), jnp.float32)))
    with pytest.raises(Exception, match="jgrad_csr_softmax_backward: row_ptr must have one entry per row plus one"):
        jax.block_until_ready(backward(jnp.zeros(0, jnp.int32), edge_ids, no_mask, jnp.ones((2, 3)), jnp.ones((2, 3))))
