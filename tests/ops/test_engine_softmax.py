"""Edge sums on a plan: gspmm ``copy_e``/``sum``, the backward of gsddmm add/sub/copy, and edge_softmax.

On a graph with a plan these run through the backend's edge sum (`jgrad.ops._kernels.layout_edge_sum`
and its transpose `layout_gather`) instead of the plain path's scatter-adds; values and gradients (second
order included) must equal the plain path's in float64, NaN and huge scores included.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jex_core

import jgrad
from jgrad import Graph
from jgrad._src._plan import SMALL_GRAPH_EDGES, resolve
from jgrad.ops import _kernels, backend_of, edge_softmax, gsddmm, gspmm, with_backend

pytestmark = [pytest.mark.usefixtures("x64")]

TOL = dict(rtol=1e-12, atol=1e-12)

# Duplicate edges (0->1 twice), a self loop (3->3), isolated nodes (5, 6, 7) and padding edges (edge_mask).
SMALL = jgrad.pad(Graph.from_edges([0, 0, 1, 2, 2, 3, 3, 4, 1], [1, 1, 2, 0, 1, 3, 1, 0, 4], 7),
                  n_nodes=8, n_edges=12)
SHAPES = {"E": (), "E_H": (3,), "E_H_1": (3, 1)}


def _primitives(fn, *args) -> collections.Counter:
    """How many equations of each primitive the program of ``fn`` holds, inside jit calls too."""
    counts = collections.Counter()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            counts[eqn.primitive.name] += 1
            for inner in jex_core.jaxprs_in_params(eqn.params):
                walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return counts


def _loss(graph, logits, a, b):
    """Every covered case in one scalar: gsddmm add/sub/copy at u and v, edge_softmax, copy_e sum."""
    scores = (gsddmm(graph, "add", a, b, "u", "v") + 0.3 * gsddmm(graph, "sub", a, b, "v", "u")
              + gsddmm(graph, "copy_lhs", a, None, "u") ** 2 - jnp.sin(gsddmm(graph, "copy_rhs", None, b, "u", "v")))
    alpha = edge_softmax(graph, jnp.tanh(scores) + logits)
    degree = gspmm(graph, "copy_e", "sum", e=alpha * logits)
    return jnp.sum(jnp.sin(alpha) * logits) + jnp.sum(degree ** 2) + jnp.sum(jnp.cos(scores))


@jax.jit
def _all_orders(graph, logits, a, b):
    """The loss, its gradients and the gradients of the squared norm of its logits gradient."""
    value, grads = jax.value_and_grad(_loss, (1, 2, 3))(graph, logits, a, b)
    second = jax.grad(lambda *args: jnp.sum(jax.grad(_loss, (1, 2, 3))(graph, *args)[0] ** 2), (0, 1, 2))(logits, a, b)
    return value, grads, second


def _operands(shape, seed=0):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.standard_normal((SMALL.n_edges,) + shape))
    a, b = (jnp.asarray(rng.standard_normal((SMALL.n_nodes,) + shape)) for _ in range(2))
    return logits, a, b


_PLAIN = {}


def _plain_results(shape):
    """The plain path's results for ``shape``, computed once for both backends (inside the x64 fixture)."""
    if shape not in _PLAIN:
        _PLAIN[shape] = _all_orders(with_backend(SMALL, "xla"), *_operands(SHAPES[shape]))
    return _PLAIN[shape]


# (E, H, 1) data reaches a backend as (E, H) (`_kernels.as_rows` before every edge sum and gather, one
# reshape back after), so each backend runs (E,) and one of the two per-head shapes: every reshape and
# every backend's per-head code runs once.
@pytest.mark.parametrize("shape,backend", [("E", "native"), ("E", "bucket"), ("E_H", "native"), ("E_H_1", "bucket")],
                         ids=["E-native", "E-bucket", "E_H-native", "E_H_1-bucket"])
def test_edge_sums_softmax_and_scores_on_a_plan_equal_the_plain_path(backend, shape):
    graph = with_backend(SMALL, backend)
    assert backend_of(graph) == backend
    got = _all_orders(graph, *_operands(SHAPES[shape]))
    expected = _plain_results(shape)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, **TOL)
    d_logits, d_a, d_b = got[1]
    assert np.all(np.asarray(d_logits)[~np.asarray(SMALL.edge_mask)] == 0.0), "padding edges got a gradient"
    assert np.all(np.asarray(d_a)[[5, 6, 7]] == 0.0) and np.all(np.asarray(d_b)[[5, 6, 7]] == 0.0), \
        "isolated nodes got a gradient"


def test_the_plan_path_runs_the_backend_edge_sum(swapped_kernels):
    """copy_e, the scores' backward and edge_softmax (forward and backward) each call the backend's sum:
    the program holds the plan's softmax (its sum inside) and three edge sums (the softmax's backward, the
    scores' per-sender and per-receiver sums), and every backend sum is called with all heads at once."""
    monkeypatch = swapped_kernels
    calls = []
    native = _kernels.KERNELS["native"]

    def counted(side, rows, e):
        calls.append(e.shape)
        return native.edge_sum(side, rows, e)

    monkeypatch.setitem(_kernels.KERNELS, "native", native._replace(edge_sum=counted))
    graph = with_backend(SMALL, "native")
    logits, a, b = _operands((3,))
    step = lambda logits, a, b: jnp.sum(jnp.sin(edge_softmax(graph, logits + gsddmm(graph, "add", a, b))))
    counts = _primitives(jax.grad(step, (0, 1, 2)), logits, a, b)
    assert (counts["jgrad_plan_softmax"], counts["jgrad_layout_edge_sum"]) == (1, 3), counts
    copy_e = lambda e: gspmm(graph, "copy_e", "sum", e=e)  # noqa: E731
    assert _primitives(copy_e, logits[:, :, None])["jgrad_layout_edge_sum"] == 1
    jax.jit(jax.grad(step, (0, 1, 2))).lower(logits, a, b)
    jax.jit(copy_e).lower(logits[:, :, None])
    assert calls and set(calls) == {(SMALL.n_edges, 3)}, calls  # each op traced once, every head at once


@pytest.mark.parametrize("backend", ["native", "bucket"])
def test_nan_inf_and_huge_scores_behave_as_on_the_plain_path(backend):
    graph = Graph.from_edges([0, 1, 2, 3, 4, 5, 0, 1, 2], [1, 1, 2, 2, 3, 3, 4, 4, 5], 7)
    logits = jnp.array([[1e4, 0.0], [-1e4, 1e300], [jnp.nan, 1.0], [2.0, 3.0], [jnp.inf, -jnp.inf],
                        [0.5, -jnp.inf], [-jnp.inf, 5.0], [-jnp.inf, -1e4], [3e4, 2.0]])
    weights = jnp.linspace(0.5, 1.5, logits.size).reshape(logits.shape)
    step = jax.jit(jax.value_and_grad(lambda logits, g: jnp.sum(weights * edge_softmax(g, logits))))
    probs = jax.jit(edge_softmax)
    on_plan, plain = with_backend(graph, backend), with_backend(graph, "xla")
    got, expected = probs(on_plan, logits), probs(plain, logits)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert np.isnan(got[2:4, 0]).all() and np.isfinite(got[:2]).all(), "NaN did not stay in its receiver"
    np.testing.assert_allclose(got, expected, **TOL)
    for x, y in zip(step(logits, on_plan), step(logits, plain)):
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        np.testing.assert_allclose(x, y, **TOL)


def test_vmap_and_forward_mode_on_a_plan_equal_the_plain_path():
    logits, a, b = _operands((3, 1), seed=3)
    batch = jnp.stack([logits, -2.0 * logits])

    def run(graph):
        values = jax.vmap(jax.grad(_loss, 1), in_axes=(None, 0, None, None))(graph, batch, a, b)
        tangent = jax.jvp(lambda logits, a: _loss(graph, logits, a, b), (logits, a), (jnp.ones_like(logits), a))
        return values, tangent

    run = jax.jit(run)
    for x, y in zip(jax.tree.leaves(run(with_backend(SMALL, "native"))), jax.tree.leaves(run(with_backend(SMALL, "xla")))):
        np.testing.assert_allclose(x, y, **TOL)


@pytest.mark.parametrize("backend", ["native", "bucket"])
def test_the_edge_sum_of_each_side_equals_a_segment_sum(backend):
    """Both directions of the plan, by the backend's edge sum and by its tables (the CSR walk on native)."""
    plan = resolve(with_backend(SMALL, backend))
    rng = np.random.default_rng(5)

    @jax.jit  # one program rather than op by op
    def sums(plan, edge_data):
        return [[(jax.ops.segment_sum(e, rows, num_segments=SMALL.n_nodes), _kernels.layout_edge_sum(layout, rows, e),
                  _kernels._edge_sum_on_side(layout.forward, backend, e))
                 for layout, rows in ((plan, SMALL.receivers), (plan.transpose(), SMALL.senders))] for e in edge_data]

    edge_data = (jnp.asarray(rng.standard_normal(SMALL.n_edges)), jnp.asarray(rng.standard_normal((SMALL.n_edges, 3))))
    for expected, by_layout, on_side in jax.tree.leaves(sums(plan, edge_data), is_leaf=lambda x: isinstance(x, tuple)):
        np.testing.assert_allclose(by_layout, expected, **TOL)
        np.testing.assert_allclose(on_side, expected, **TOL)


def test_scores_of_other_shapes_and_ops_keep_the_plain_path():
    """Only (N,), (N, H), (N, H, 1) operands of one shape, and no "div", are covered; the rest stays correct."""
    x = jnp.ones((SMALL.n_nodes, 2, 3))
    assert not _kernels.covers_gsddmm("add", x, x, "u", "v")
    assert not _kernels.covers_gsddmm("add", x[:, :, :1], x[:, :1, :1], "u", "v")
    assert not _kernels.covers_gsddmm("div", x[:, 0], x[:, 0], "u", "v")
    assert not _kernels.covers_gsddmm("mul", x[:, 0], x[:, 0, :1], "u", "v")
    assert _kernels.covers_gsddmm("sub", x[:, :, :1], x[:, :, :1], "v", "u")
    graph = with_backend(SMALL, "native")
    out = jax.jit(lambda g, x: gsddmm(g, "add", x, x[:, :1], "u", "v"))(graph, x)
    expected = gsddmm(with_backend(SMALL, "xla"), "add", x, x[:, :1], "u", "v")
    np.testing.assert_allclose(out, expected, **TOL)


def test_a_gat_layer_runs_its_attention_fused_on_the_plan(swapped_kernels):
    """A 4-head GAT layer on a graph planned by size: the attention is one native walk each way (scores,
    leaky ReLU and softmax fused, with the self loops as terms of each walk; the receivers' sum of the
    scores' cotangent in the same walk), the senders' sum one edge sum of all heads at once, and the
    aggregation one native pass each way. No looped graph (E + N edges) is built."""
    monkeypatch = swapped_kernels
    calls = []
    native = _kernels.KERNELS["native"]
    monkeypatch.setitem(_kernels.KERNELS, "native",
                        native._replace(edge_sum=lambda *args: calls.append(args[2].shape) or native.edge_sum(*args)))
    n, n_edges = 2000, SMALL_GRAPH_EDGES + 100
    rng = np.random.default_rng(7)
    graph = Graph.from_edges(rng.integers(0, n - 10, n_edges), rng.integers(0, n - 10, n_edges), n)
    assert backend_of(graph) == "native"  # chosen by size, not forced
    heads, f_in, f_out = 4, 6, 8
    params = {"kernel": jnp.ones((f_in, heads * f_out)), "att_src": jnp.ones((heads, f_out)),
              "att_dst": jnp.ones((heads, f_out)), "bias": None}
    loss = lambda params, x: jnp.sum(jnp.tanh(jgrad.nn.functional.gat_conv(params, graph, x)))
    x = jnp.ones((n, f_in))
    assert _primitives(jax.grad(loss, (0, 1)), params, x)["jgrad_layout_edge_sum"] == 1  # the senders' sum
    lowered = jax.jit(jax.grad(loss, (0, 1))).lower(params, x).as_text()
    assert calls and set(calls) == {(graph.n_edges, heads)}, calls  # the self loops are not edges
    assert f"tensor<{graph.n_edges + n}xi32>" not in lowered  # no looped plan or indices (E + N)
    # the aggregation: forward sum, and (the edges are not sorted by sender) reverse sum and edge dot
    calls = [lowered.count(f"@jgrad_csr_{kernel}(") for kernel in ("sum", "sum_dot", "edge_dot")]
    assert calls == [2, 0, 1], calls
    assert lowered.count("@jgrad_csr_attention(") == 1 and lowered.count("@jgrad_csr_attention_backward(") == 1


def test_the_pallas_backend_sums_edges_per_head_as_the_plain_path():
    """Pallas (interpret mode on CPU) has no edge-sum kernel: its tables are summed once per head."""
    logits, a, b = _operands((2,), seed=6)
    step = jax.jit(jax.value_and_grad(_loss, (1, 2, 3)))
    graph = with_backend(SMALL, "pallas")
    assert backend_of(graph) == "pallas" and _kernels.KERNELS["pallas"].edge_sum is None
    for x, y in zip(jax.tree.leaves(step(graph, logits, a, b)),
                    jax.tree.leaves(step(with_backend(SMALL, "xla"), logits, a, b)), strict=True):
        np.testing.assert_allclose(x, y, **TOL)
