"""`jgrad.ops.gat_attention`: GAT's scores, leaky ReLU and edge softmax as one op.

On native plans it runs the fused kernels (`jgrad.ops._native.csr_attention` and its backward); every
other backend composes gsddmm, leaky ReLU and edge_softmax. Values and gradients, second order
included, must equal the three ops on the plain path in float64, NaN and infinite scores included.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import Graph
from jgrad._src._plan import resolve
from jgrad.ops import _attention, _native, backend_of, edge_softmax, gat_attention, gsddmm, with_backend

pytestmark = [pytest.mark.usefixtures("x64")]

TOL = dict(rtol=1e-12, atol=1e-12)
SLOPE = 0.3

# Duplicate edges (0->1 twice), a self loop (3->3), isolated nodes (5, 6, 7) and padding edges (edge_mask).
SMALL = jgrad.pad(Graph.from_edges([0, 0, 1, 2, 2, 3, 3, 4, 1], [1, 1, 2, 0, 1, 3, 1, 0, 4], 7),
                  n_nodes=8, n_edges=12)


def _three_ops(graph, src, dst, slope=SLOPE):
    return edge_softmax(graph, jax.nn.leaky_relu(gsddmm(graph, "add", src, dst, "u", "v"), slope))


def _loss(attention, graph, src, dst, weights):
    return jnp.sum(weights * jnp.sin(attention(graph, src, dst, SLOPE)))


@functools.partial(jax.jit, static_argnums=0)
def _all_orders(attention, graph, src, dst, weights):
    """``attention``'s loss, its gradients, and the gradients of the squared norm of d/dsrc."""
    loss = lambda src, dst: _loss(attention, graph, src, dst, weights)
    value, grads = jax.value_and_grad(loss, (0, 1))(src, dst)
    second = jax.grad(lambda src, dst: jnp.sum(jax.grad(loss)(src, dst) ** 2), (0, 1))(src, dst)
    return value, grads, second


def _operands(trailing, seed=0, graph=SMALL):
    rng = np.random.default_rng(seed)
    src, dst = (jnp.asarray(rng.standard_normal((graph.n_nodes,) + trailing)) for _ in range(2))
    return src, dst, jnp.asarray(rng.standard_normal((graph.n_edges,) + trailing))


@functools.cache
def _three_ops_results(trailing):
    """The three ops' results on the plain path, once per shape (native and bucket share (4,))."""
    return _all_orders(_three_ops, with_backend(SMALL, "xla"), *_operands(trailing))


# One head as (N,), 4 heads (a compile-time head count in the kernels) and 3 (the runtime one) on
# native. The other backends compose the three ops on their plans (bucket here; the Pallas backend's
# edge sums, the only part of the three ops it runs differently, are tested in test_engine_softmax).
@pytest.mark.parametrize("backend,trailing", [("native", ()), ("native", (4,)), ("native", (3,)), ("bucket", (4,))])
def test_values_and_gradients_to_second_order_equal_the_three_ops_on_the_plain_path(backend, trailing):
    graph = with_backend(SMALL, backend)
    assert backend_of(graph) == backend
    operands = _operands(trailing)
    got = _all_orders(gat_attention, graph, *operands)
    expected = _three_ops_results(trailing)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, **TOL)
    d_src, d_dst = got[1]
    assert np.all(np.asarray(d_src)[[5, 6, 7]] == 0.0) and np.all(np.asarray(d_dst)[[5, 6, 7]] == 0.0), \
        "isolated nodes got a gradient"
    alpha = gat_attention(graph, *operands[:2], SLOPE)
    assert np.all(np.asarray(alpha)[~np.asarray(SMALL.edge_mask)] == 0.0), "padding edges got a weight"


def test_the_native_plan_runs_the_fused_kernels_and_the_others_the_three_ops():
    src, dst, weights = _operands((4,))
    step = lambda graph: jax.jit(jax.grad(lambda s, d: _loss(gat_attention, graph, s, d, weights), (0, 1))).lower(
        src, dst).as_text()
    native = step(with_backend(SMALL, "native"))
    assert native.count("@jgrad_csr_attention(") == 1 and native.count("@jgrad_csr_attention_backward(") == 1
    assert "jgrad_csr_attention" not in step(with_backend(SMALL, "bucket"))


def test_the_native_kernels_equal_their_xla_reference_on_shuffled_edges_with_dead_ones():
    """Edges in random order (random edge ids along the CSR), a quarter of them dead, 1 to 8 heads; with
    self loops, every loop live ((E,) mask) or a third of them dead ((E + N,) mask)."""
    rng = np.random.default_rng(11)
    n, n_edges = 60, 700
    senders, receivers = rng.integers(0, n, n_edges), rng.integers(0, n - 5, n_edges)  # 5 nodes receive nothing
    graph = Graph.from_edges(senders, receivers, n)
    plan = resolve(with_backend(graph, "native"))
    edges_live = jnp.asarray(rng.random(n_edges) > 0.25)
    loops_live = jnp.concatenate([edges_live, jnp.asarray(rng.random(n) > 0.33)])
    s, r = graph.senders, graph.receivers
    for heads, self_loops, live in ((1, False, edges_live), (2, False, edges_live), (3, False, edges_live),
                                    (8, False, edges_live), (1, True, edges_live), (4, True, edges_live),
                                    (3, True, edges_live), (1, True, loops_live), (4, True, loops_live),
                                    (3, True, loops_live)):
        src, dst = (jnp.asarray(rng.standard_normal((n, heads)) * 3) for _ in range(2))
        g, g_self = jnp.asarray(rng.standard_normal((n_edges, heads))), jnp.asarray(rng.standard_normal((n, heads)))
        got = _native.csr_attention(plan.forward.csr, src, dst, live, -0.4, n_edges, self_loops)
        expected = _attention.segment_attention(n, s, r, live, -0.4, src, dst, self_loops)
        assert (got[1] is None) == (expected[1] is None) == (not self_loops)
        _assert_close_or_none(got, expected)
        alpha, alpha_self = got
        g_self = g_self if self_loops else None
        got = _native.csr_attention_backward(plan.forward.csr, src, dst, live, -0.4, alpha, g, alpha_self, g_self)
        expected = _attention.segment_attention_backward(n, s, r, live, -0.4, src, dst, alpha, g, alpha_self, g_self)
        assert (got[2] is None) == (expected[2] is None) == (not self_loops)
        _assert_close_or_none(got, expected)


def _assert_close_or_none(got, expected):
    for x, y in zip(got, expected, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_allclose(x, y, **TOL)


def test_float32_kernels_agree_within_float32_rounding():
    src, dst, weights = (x.astype(jnp.float32) for x in _operands((4,), seed=2))
    step = jax.jit(jax.value_and_grad(lambda g, s, d: _loss(gat_attention, g, s, d, weights), (1, 2)))
    for x, y in zip(jax.tree.leaves(step(with_backend(SMALL, "native"), src, dst)),
                    jax.tree.leaves(step(with_backend(SMALL, "xla"), src, dst)), strict=True):
        assert x.dtype == jnp.float32
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)


def test_nan_inf_and_huge_scores_behave_as_the_three_ops():
    graph = Graph.from_edges([0, 1, 2, 3, 4, 5, 0, 1, 2], [1, 1, 2, 2, 3, 3, 4, 4, 5], 7)
    src = jnp.array([[1e4, 0.0], [-1e4, 1e300], [jnp.nan, 1.0], [2.0, 3.0], [jnp.inf, -jnp.inf],
                     [0.5, -jnp.inf], [0.0, 0.0]])
    dst = jnp.array([[0.0, 1.0], [0.5, 0.0], [1.0, -jnp.inf], [-3e4, 2.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    weights = jnp.linspace(0.5, 1.5, 18).reshape(9, 2)
    step = jax.jit(jax.value_and_grad(lambda s, d, g, fn: jnp.sum(weights * fn(g, s, d, SLOPE)), (0, 1)),
                   static_argnums=3)
    probs = jax.jit(lambda g: gat_attention(g, src, dst, SLOPE))
    fused, plain = with_backend(graph, "native"), with_backend(graph, "xla")
    got, expected = probs(fused), _three_ops(plain, src, dst)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert np.isnan(got[2:4, 0]).all() and np.isfinite(got[:2, 0]).all(), "NaN did not stay in its receiver"
    np.testing.assert_allclose(got, expected, **TOL)
    for x, y in zip(step(src, dst, fused, gat_attention), step(src, dst, plain, _three_ops), strict=True):
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        np.testing.assert_allclose(x, y, **TOL)


def test_other_slopes_a_traced_slope_vmap_and_forward_mode_equal_the_three_ops():
    src, dst, weights = _operands((3,), seed=4)
    fused, plain = with_backend(SMALL, "native"), with_backend(SMALL, "xla")
    for slope in (0.0, -0.5, 1.0):
        np.testing.assert_allclose(gat_attention(fused, src, dst, slope), _three_ops(plain, src, dst, slope), **TOL)
    traced = jax.jit(lambda slope: gat_attention(fused, src, dst, slope))
    assert "jgrad_csr_attention" not in traced.lower(0.2).as_text()  # an array slope: the three ops
    np.testing.assert_allclose(traced(0.2), _three_ops(plain, src, dst, 0.2), **TOL)
    batch = jnp.stack([src, -2.0 * src])
    run = jax.jit(lambda graph: (jax.vmap(lambda s: gat_attention(graph, s, dst, SLOPE))(batch),
                                 jax.jvp(lambda s, d: gat_attention(graph, s, d, SLOPE), (src, dst), (dst, src))))
    for x, y in zip(jax.tree.leaves(run(fused)), jax.tree.leaves(run(plain)), strict=True):
        np.testing.assert_allclose(x, y, **TOL)


# Self loops as terms of the attention (padded too: a padding node's loop is a dead term), a dead edge,
# duplicate edges, an existing self loop (3 -> 3, kept: the loop is one more term) and nodes that
# receive nothing (5, 6), whose only term is their loop.
UNPADDED = Graph.from_edges([0, 0, 1, 2, 2, 3, 3, 4, 1, 6], [1, 1, 2, 0, 1, 3, 1, 0, 4, 2], 7)
UNPADDED = jgrad.Graph(UNPADDED.senders, UNPADDED.receivers, UNPADDED.n_nodes,
                       edge_mask=jnp.arange(UNPADDED.n_edges) != 4)


def _looped(graph, src, dst, slope=SLOPE):
    """gat_attention(self_loops=True) by the looped graph: all edges, then the loops (the reference)."""
    return gat_attention(graph.add_self_loops(), src, dst, slope)


def _with_loops(graph, src, dst, slope=SLOPE):
    return jnp.concatenate(gat_attention(graph, src, dst, slope, self_loops=True))


@pytest.mark.parametrize("backend,trailing,padded", [
    ("native", (), False), ("native", (4,), False), ("native", (3,), False), ("xla", (2,), False),
    ("bucket", (2,), False), ("native", (), True), ("native", (4,), True), ("xla", (2,), True)])
def test_self_loops_equal_the_looped_graph_to_second_order(backend, trailing, padded):
    """Padded: 2 padding nodes, whose loops are dead terms, and 2 padding edges."""
    graph = with_backend(jgrad.pad(UNPADDED, n_nodes=9, n_edges=12) if padded else UNPADDED, backend)
    src, dst, _ = _operands(trailing, seed=7, graph=graph)
    weights = jnp.asarray(np.random.default_rng(8).standard_normal((graph.n_edges + graph.n_nodes,) + trailing))
    got = _all_orders(_with_loops, graph, src, dst, weights)
    expected = _all_orders(_looped, with_backend(graph, "xla"), src, dst, weights)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(x, y, **TOL)
    alpha, alpha_self = gat_attention(graph, src, dst, SLOPE, self_loops=True)
    assert alpha.shape == (graph.n_edges,) + trailing and alpha_self.shape == (graph.n_nodes,) + trailing
    assert np.all(np.asarray(alpha_self)[5] == 1.0), "a node that receives nothing attends only to itself"
    assert np.all(np.asarray(alpha)[4] == 0.0), "a dead edge got a weight"
    if padded:
        assert np.all(np.asarray(alpha_self)[UNPADDED.n_nodes:] == 0.0), "a padding node attended to itself"
        assert np.all(np.asarray(alpha)[UNPADDED.n_edges:] == 0.0), "a padding edge got a weight"
    lowered = jax.jit(jax.grad(lambda s, d: _loss(_with_loops, graph, s, d, weights))).lower(src, dst).as_text()
    assert (f"tensor<{graph.n_edges + graph.n_nodes}xi32>" not in lowered) == (backend == "native"), \
        "the native kernels build no looped graph; the other backends attend over one"


def test_self_loops_under_vmap_forward_mode_with_nan_scores_and_padding_nodes():
    fused, plain = with_backend(UNPADDED, "native"), with_backend(UNPADDED, "xla")
    src, dst, _ = _operands((2,), seed=9, graph=UNPADDED)
    src = src.at[1, 0].set(jnp.nan)  # NaN at node 1's receivers (2, 4) and in its own loop
    batch = jnp.stack([src, -2.0 * src])
    run = jax.jit(lambda graph, attention: (
        jax.vmap(lambda s: attention(graph, s, dst))(batch),
        jax.jvp(lambda s, d: attention(graph, s, d), (src, dst), (dst, src))), static_argnums=1)
    for x, y in zip(jax.tree.leaves(run(fused, _with_loops)), jax.tree.leaves(run(plain, _looped)), strict=True):
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        np.testing.assert_allclose(x, y, **TOL)
    padded = with_backend(jgrad.pad(UNPADDED, n_nodes=9, n_edges=12), "native")
    operands = [jnp.concatenate([v, jnp.ones((2, 2))]) for v in (src, dst)]
    alpha, alpha_self = gat_attention(padded, *operands, SLOPE, self_loops=True)
    np.testing.assert_array_equal(alpha_self[7:], 0.0)  # padding nodes get no loop, as with add_self_loops
    np.testing.assert_allclose(jnp.concatenate([alpha, alpha_self]), _looped(padded, *operands), **TOL)


@pytest.mark.parametrize("src_shape,dst_shape,error,words", [
    ((8, 2), (8, 3), ValueError, "same shape"),
    ((7, 2), (7, 2), ValueError, "one row per node"),
    ((), (), ValueError, "one row per node"),
])
def test_bad_scores_get_one_clear_line(src_shape, dst_shape, error, words):
    with pytest.raises(error, match=words):
        gat_attention(SMALL, jnp.ones(src_shape), jnp.ones(dst_shape))
    with pytest.raises(TypeError, match="float"):
        gat_attention(SMALL, jnp.ones(8, jnp.int32), jnp.ones(8))


@pytest.mark.parametrize("trailing", [(), (2,)])
@pytest.mark.parametrize("self_loops", [False, True])
def test_an_edgeless_graph_runs_the_native_kernels_like_the_plain_path(trailing, self_loops):
    """(0, H) edge data: the kernels read H from the shape, not from rows that do not exist."""
    graph = Graph.from_edges(np.zeros(0, int), np.zeros(0, int), n_nodes=3)
    rng = np.random.default_rng(3)
    src, dst = (jnp.asarray(rng.standard_normal((3,) + trailing)) for _ in range(2))

    def loss(graph, src, dst):
        return sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(gat_attention(graph, src, dst, SLOPE,
                                                                              self_loops=self_loops)))

    results = [jax.value_and_grad(loss, (1, 2))(with_backend(graph, backend), src, dst)
               for backend in ("native", "xla")]
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
        np.testing.assert_allclose(a, b, **TOL)
