"""Multi-head aggregation on the native backend: all heads in one CSR pass, forward and backward.

Node data (N, H, F) with one weight per edge and head ((E, H) or (E, H, 1)) runs as one call of each
native kernel (`jgrad_csr_sum` forward; backward `jgrad_csr_sum_dot`, or `jgrad_csr_sum` on the reversed
graph and `jgrad_csr_edge_dot` when the edges are not sorted by sender), and gives the plain path's
values and gradients in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import Graph
from jgrad._src._plan import SMALL_GRAPH_EDGES, Csr
from jgrad.ops import _native, backend_of, gsddmm, gspmm, with_backend

pytestmark = [pytest.mark.usefixtures("x64")]

TOL = dict(rtol=1e-12, atol=1e-12)

# Duplicate edges (0->1 twice), a self loop (3->3), isolated nodes (5, 6) and padding edges (edge_mask).
SMALL = jgrad.pad(Graph.from_edges([0, 0, 1, 2, 2, 3, 3, 4, 1], [1, 1, 2, 0, 1, 3, 1, 0, 4], 7),
                  n_nodes=8, n_edges=12)


@pytest.fixture(scope="module")
def native_available():
    assert _native.available(), "the native CPU kernels did not build on this machine"


def _csr(senders, receivers, n_rows, keep):
    """The CSR of the kept edges (the others are in no slot, as padding edges of a plan)."""
    real = np.flatnonzero(keep)
    order = real[np.argsort(receivers[real], kind="stable")]
    degree = np.bincount(receivers[real], minlength=n_rows)
    return Csr(jnp.asarray(np.concatenate([[0], np.cumsum(degree)]), jnp.int32),
               jnp.asarray(senders[order], jnp.int32), jnp.asarray(order, jnp.int32))


def _per_head_reference(senders, receivers, n, u, w, keep):
    """out[r, h] = sum over kept edges e into r of w[e, h] * u[s, h], in numpy."""
    out = np.zeros((n,) + u.shape[1:])
    np.add.at(out, receivers[keep], w[keep][:, :, None] * u[senders[keep]])
    return out


# Widths 8, 16, 32 and 64 per head run compile-time vector code, other widths a runtime loop.
KERNEL_CASES = [(30, 200, 3, f, jnp.float64) for f in (5, 8, 16, 32, 64)] + [
    (30, 200, 4, 16, jnp.float32), (3000, 60_000, 4, 16, jnp.float64), (3000, 60_000, 3, 7, jnp.float64)]


@pytest.mark.parametrize("n,n_edges,heads,features,dtype", KERNEL_CASES,
                         ids=[f"N{c[0]}_H{c[2]}_F{c[3]}_{jnp.dtype(c[4]).name}" for c in KERNEL_CASES])
def test_the_kernels_do_every_head_in_one_call_as_numpy(native_available, n, n_edges, heads, features, dtype):
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == jnp.float64 else dict(rtol=2e-5, atol=2e-5)
    rng = np.random.default_rng(heads + features)
    senders, receivers = rng.integers(0, n, n_edges), rng.integers(0, n, n_edges)
    receivers[: n_edges // 3] = 0  # a hub
    keep = rng.random(n_edges) < 0.8  # the others are in no slot
    csr = _csr(senders, receivers, n, keep)
    g, u = rng.standard_normal((n, heads, features)), rng.standard_normal((n, heads, features))
    w = rng.standard_normal((n_edges, heads))

    g_, u_, w_ = (jnp.asarray(a, dtype) for a in (g, u, w))
    g, u, w = (np.asarray(a, np.float64) for a in (g_, u_, w_))  # the operands as the kernels see them
    expected_sum = _per_head_reference(senders, receivers, n, g, w, keep)
    expected_dots = np.where(keep[:, None], np.sum(u[receivers] * g[senders], axis=-1), 0.0)

    out = _native.csr_sum(csr, g_, w_)
    assert out.shape == (n, heads, features) and out.dtype == dtype
    np.testing.assert_allclose(out, expected_sum, **tol)
    dots = _native.csr_edge_dot(csr, g_, u_, n_edges)
    assert dots.shape == (n_edges, heads)
    np.testing.assert_allclose(dots, expected_dots, **tol)
    out, dots = _native.csr_sum_dot(csr, g_, u_, w_)
    np.testing.assert_allclose(out, expected_sum, **tol)
    np.testing.assert_allclose(dots, expected_dots, **tol)


NO_LOOPS = np.int64(-1)  # the kernels' loop_base attribute without self loops


def test_the_kernels_refuse_edge_data_that_does_not_fit_the_heads(native_available):
    row_ptr, index = jnp.asarray([0, 1, 2], jnp.int32), jnp.asarray([0, 1], jnp.int32)
    csr_sum = jax.ffi.ffi_call("jgrad_csr_sum", jax.ShapeDtypeStruct((2, 4), jnp.float64))
    with pytest.raises(Exception, match="jgrad_csr_sum: the heads H of the edge data must divide the row width"):
        jax.block_until_ready(csr_sum(row_ptr, index, index, jnp.ones((2, 4)), jnp.ones((2, 3)), loop_base=NO_LOOPS))
    with pytest.raises(Exception, match=r"jgrad_csr_sum: edge data must have shape \(E,\) or \(E, H\)"):
        jax.block_until_ready(csr_sum(row_ptr, index, index, jnp.ones((2, 4)), jnp.ones((2, 2, 1)), loop_base=NO_LOOPS))
    shapes = (jax.ShapeDtypeStruct((2, 4), jnp.float64), jax.ShapeDtypeStruct((2, 4), jnp.float64))
    sum_dot = jax.ffi.ffi_call("jgrad_csr_sum_dot", shapes)
    with pytest.raises(Exception, match="jgrad_csr_sum_dot: w and dots must have one entry per edge and head"):
        jax.block_until_ready(sum_dot(row_ptr, index, index, jnp.ones((2, 4)), jnp.ones((2, 4)), jnp.ones((2, 2)),
                                      loop_base=NO_LOOPS))


def _operands(graph, heads, weight_rank, seed=0, features=4):
    rng = np.random.default_rng(seed)
    u = jnp.asarray(rng.standard_normal((graph.n_nodes, heads, features)))
    e = jnp.asarray(rng.uniform(0.5, 1.5, (graph.n_edges, heads) + (1,) * (weight_rank - 2)))
    return u, e


def _loss(graph, u, e):
    return jnp.sum(jnp.sin(gspmm(graph, "u_mul_e", "sum", u, e))) + jnp.sum(gspmm(graph, "u_mul_e", "mean", u, e) ** 2)


_STEP = jax.jit(jax.value_and_grad(_loss, argnums=(1, 2)))


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("weight_rank", [2, 3], ids=["E_H", "E_H_1"])
def test_per_head_gspmm_values_and_gradients_equal_the_plain_path(native_available, heads, weight_rank):
    u, e = _operands(SMALL, heads, weight_rank)
    native, plain = with_backend(SMALL, "native"), with_backend(SMALL, "xla")
    assert backend_of(native) == "native"
    (value, grads), (expected_value, expected_grads) = _STEP(native, u, e), _STEP(plain, u, e)
    np.testing.assert_allclose(value, expected_value, **TOL)
    for got, expected in zip(grads, expected_grads):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, **TOL)
    du, de = grads
    padding = ~np.asarray(SMALL.edge_mask)
    assert np.all(np.asarray(de)[padding] == 0.0), "padding edges got a weight gradient"
    assert np.all(np.asarray(du)[[5, 6, 7]] == 0.0), "nodes that send nothing got a feature gradient"


def test_per_head_second_order_gradients_and_edge_dots_equal_the_plain_path(native_available):
    u, e = _operands(SMALL, 3, 2, seed=1, features=8)

    def second(graph):
        def loss(u, e):
            out = gspmm(graph, "u_mul_e", "sum", u, e)
            return jnp.sum(jnp.sin(out)) + jnp.sum(gsddmm(graph, "dot", out, u, "u", "v") ** 2)
        return jax.grad(lambda u, e: jnp.sum(jax.grad(loss, (0, 1))(u, e)[1] ** 2), (0, 1))(u, e)

    for got, expected in zip(jax.jit(second)(with_backend(SMALL, "native")),
                             jax.jit(second)(with_backend(SMALL, "xla"))):
        np.testing.assert_allclose(got, expected, **TOL)


def test_vmap_over_per_head_weights_and_forward_mode_equal_the_plain_path(native_available):
    u, e = _operands(SMALL, 3, 3, seed=2)
    batch = jnp.stack([e, 2.0 * e])

    def per_example(graph):
        return jax.jit(jax.vmap(jax.value_and_grad(_loss, argnums=(1, 2)), in_axes=(None, None, 0)))(graph, u, batch)

    for got, expected in zip(jax.tree.leaves(per_example(with_backend(SMALL, "native"))),
                             jax.tree.leaves(per_example(with_backend(SMALL, "xla")))):
        np.testing.assert_allclose(got, expected, **TOL)
    tangents = (jnp.ones_like(u), 0.5 * e)
    forward = jax.jit(lambda graph, u, e: jax.jvp(lambda u, e: _loss(graph, u, e), (u, e), tangents))
    np.testing.assert_allclose(forward(with_backend(SMALL, "native"), u, e), forward(with_backend(SMALL, "xla"), u, e),
                               **TOL)


def _gat_graph(sorted_by_sender=False):
    """Just above the size below which graphs run the plain path, with duplicates and self loops."""
    n, n_edges = 2000, SMALL_GRAPH_EDGES + 100
    rng = np.random.default_rng(7)
    senders, receivers = rng.integers(0, n - 10, n_edges), rng.integers(0, n - 10, n_edges)
    senders[:50] = receivers[:50]
    if sorted_by_sender:
        order = np.lexsort((receivers, senders))
        senders, receivers = senders[order], receivers[order]
    return Graph.from_edges(senders, receivers, n)


@pytest.mark.parametrize("sorted_by_sender", [False, True], ids=["unsorted", "sorted_by_sender"])
def test_a_gat_layer_runs_all_heads_in_one_native_pass_with_the_plain_results(native_available, sorted_by_sender):
    graph = _gat_graph(sorted_by_sender)
    assert backend_of(graph) == "native"  # chosen by size, not forced
    heads, f_in, f_out = 4, 6, 8
    keys = jax.random.split(jax.random.key(0), 4)
    params = {"kernel": jax.random.normal(keys[0], (f_in, heads * f_out), jnp.float64),
              "att_src": jax.random.normal(keys[1], (heads, f_out), jnp.float64),
              "att_dst": jax.random.normal(keys[2], (heads, f_out), jnp.float64), "bias": None}
    x = jax.random.normal(keys[3], (graph.n_nodes, f_in), jnp.float64)

    def loss(params, graph, x):
        return jnp.sum(jnp.tanh(jgrad.nn.functional.gat_conv(params, graph, x)))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 2)))
    lowered = step.lower(params, graph, x).as_text()
    # one call per kernel for all four heads (one per head would be four of each): the backward fused
    # when the reversed graph's slots hold the edges in id order, else a reverse sum and an edge dot
    calls = [lowered.count(f"@jgrad_csr_{kernel}(") for kernel in ("sum", "sum_dot", "edge_dot")]
    assert calls == ([1, 1, 0] if sorted_by_sender else [2, 0, 1]), calls
    got, expected = step(params, graph, x), step(params, with_backend(graph, "xla"), x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, **TOL)
