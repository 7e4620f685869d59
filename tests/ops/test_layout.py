"""The bucketed layout path of gspmm agrees with the default path in values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jgrad
from jgrad import Graph
from jgrad.graph import pad
from jgrad.ops import Layout, gsddmm, gspmm, plan_layout, spmm


def _skewed_graph(n_nodes=40, n_edges=300, seed=0):
    """Random graph with one hub (wider than the test max_width), isolated nodes, loops, duplicates."""
    rng = np.random.default_rng(seed)
    senders = rng.integers(0, n_nodes - 5, n_edges)
    receivers = rng.integers(0, n_nodes - 5, n_edges)
    receivers[: n_edges // 3] = 3  # hub with ~100 incoming edges
    senders[:5] = receivers[:5]  # self loops
    return Graph.from_edges(senders, receivers, n_nodes)  # nodes n-5..n-1 are isolated


GRAPHS = {
    "skewed": _skewed_graph(),
    "padded": pad(_skewed_graph(30, 120, seed=1), n_nodes=40, n_edges=160),
    "zero_edges": Graph.from_edges(np.zeros(0, np.int32), np.zeros(0, np.int32), 6),
    "single_edge": Graph.from_edges([0], [1], 3),
}
CASES = [("copy_u", "sum"), ("copy_u", "mean"), ("u_mul_e", "sum"), ("u_mul_e", "mean")]


@pytest.fixture(params=["native", "xla"])
def kernel(request, monkeypatch):
    """Runs a test on the native CPU kernels and on the bucketed XLA formulation (used off CPU)."""
    if request.param == "xla":
        monkeypatch.setenv("JGRAD_NATIVE", "0")
    else:
        monkeypatch.delenv("JGRAD_NATIVE", raising=False)
        assert jgrad.ops.native_available(), "the native CPU kernels did not build on this machine"
    return request.param


def _operands(graph, features=(3,), edge_shape=(), seed=0):
    rng = np.random.default_rng(seed)
    u = jnp.asarray(rng.standard_normal((graph.n_nodes,) + features))
    e = jnp.asarray(rng.uniform(0.5, 1.5, (graph.n_edges,) + edge_shape))
    return u, e


def _plan(graph):
    return plan_layout(graph, max_width=8, chunk_edges=16)  # small tables: hubs split, many chunks


@pytest.mark.parametrize("graph_name", sorted(GRAPHS))
@pytest.mark.parametrize("op,reduce", CASES)
def test_layout_matches_default_path_in_value_and_gradient(x64, kernel, graph_name, op, reduce):
    graph = GRAPHS[graph_name]
    layout = _plan(graph)
    u, e = _operands(graph)
    edge = e if op == "u_mul_e" else None

    def loss(u, e, layout):
        out = gspmm(graph, op, reduce, u, e if op == "u_mul_e" else None, layout=layout)
        return jnp.sum(jnp.sin(out))

    np.testing.assert_allclose(gspmm(graph, op, reduce, u, edge, layout=layout),
                               gspmm(graph, op, reduce, u, edge), rtol=1e-12, atol=1e-12)
    want = jax.grad(loss, (0, 1))(u, e, None)
    got = jax.grad(loss, (0, 1))(u, e, layout)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op,reduce", CASES)
def test_layout_gradients_pass_numerical_check_to_second_order(x64, kernel, op, reduce):
    graph = GRAPHS["skewed"]
    layout = _plan(graph)
    u, e = _operands(graph, features=(2,))
    if op == "copy_u":
        check_grads(lambda u: gspmm(graph, op, reduce, u, layout=layout), (u,), order=2, modes=("rev",))
    else:
        check_grads(lambda u, e: gspmm(graph, op, reduce, u, e, layout=layout), (u, e), order=2, modes=("rev",))


def test_layout_padding_edges_get_zero_gradient(x64):
    graph = GRAPHS["padded"]
    u, e = _operands(graph)
    de = jax.grad(lambda e: jnp.sum(gspmm(graph, "u_mul_e", "sum", u, e, layout=_plan(graph))))(e)
    assert np.all(np.asarray(de)[~np.asarray(graph.edge_mask)] == 0.0)


@pytest.mark.parametrize("features,edge_shape", [((), ()), ((3,), (1,)), ((2, 3), ()), ((2, 3), (1,))])
def test_layout_handles_trailing_shapes_like_default_path(x64, features, edge_shape):
    graph = GRAPHS["skewed"]
    u, e = _operands(graph, features, edge_shape)
    got = gspmm(graph, "u_mul_e", "sum", u, e, layout=_plan(graph))
    want = gspmm(graph, "u_mul_e", "sum", u, e)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_layout_under_jit_vmap_over_edge_weights_and_forward_mode(x64, kernel):
    graph = GRAPHS["skewed"]
    layout = _plan(graph)
    u, _ = _operands(graph)
    weights = jnp.asarray(np.random.default_rng(3).uniform(size=(4, graph.n_edges)))

    def loss(w, layout):
        return jnp.sum(spmm(graph, u, w, layout=layout) ** 2)

    batched = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(0, None)))
    got, want = batched(weights, layout), batched(weights, None)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12)
    tangent = jnp.ones_like(u)
    jvp_got = jax.jvp(lambda u: gspmm(graph, "copy_u", "mean", u, layout=layout), (u,), (tangent,))
    jvp_want = jax.jvp(lambda u: gspmm(graph, "copy_u", "mean", u), (u,), (tangent,))
    np.testing.assert_allclose(jvp_got[1], jvp_want[1], rtol=1e-12)


def test_layout_pads_at_most_twice_the_edges_plus_one_chunk_per_bucket():
    graph = _skewed_graph(400, 5000, seed=2)
    layout = plan_layout(graph, max_width=16, chunk_edges=64)
    assert isinstance(layout, Layout)
    assert layout.padded_slots <= 2 * graph.n_edges + 64 * len(layout.forward.buckets)
    assert all(b.neighbours.shape[-1] <= 16 for b in layout.forward.buckets + layout.reverse.buckets)


def test_layout_rejects_unsupported_ops_and_foreign_layouts():
    graph = GRAPHS["skewed"]
    layout = _plan(graph)
    u = jnp.ones((graph.n_nodes, 2, 3))
    with pytest.raises(ValueError, match=r"gspmm: the layout path supports reduce 'sum' or 'mean'; got 'max'"):
        gspmm(graph, "copy_u", "max", u, layout=layout)
    with pytest.raises(ValueError, match=r"one scalar per edge; got e of shape \(300, 2, 1\)"):
        gspmm(graph, "u_mul_e", "sum", u, jnp.ones((graph.n_edges, 2, 1)), layout=layout)
    with pytest.raises(ValueError, match=r"planned for another graph; got n_nodes=3, n_edges=1"):
        gspmm(graph, "copy_u", "sum", u, layout=_plan(GRAPHS["single_edge"]))
    with pytest.raises(TypeError, match="layout must be a jgrad.ops.Layout"):
        gspmm(graph, "copy_u", "sum", u, layout="csr")
    with pytest.raises(ValueError, match="plan_layout: max_width must be a positive power of two; got 12"):
        plan_layout(graph, max_width=12)
    with pytest.raises(TypeError, match="plan_layout: the graph's indices are traced"):
        jax.jit(lambda s: plan_layout(Graph(s, s, 3)))(jnp.zeros(2, jnp.int32))


def test_a_layout_planned_for_another_graph_of_the_same_size_is_refused():
    a = jgrad.Graph.from_edges([0, 1, 2], [1, 2, 0], n_nodes=3)
    b = jgrad.Graph.from_edges([0, 1, 2], [1, 1, 0], n_nodes=3)
    x = jnp.ones((3, 2))
    with pytest.raises(ValueError, match="planned for another graph with the same sizes"):
        jgrad.ops.spmm(b, x, layout=jgrad.ops.plan_layout(a))


@pytest.mark.parametrize("graph_name", sorted(GRAPHS))
@pytest.mark.parametrize("lhs_target,rhs_target", [("u", "v"), ("v", "u")])
def test_gsddmm_dot_on_the_layout_matches_default_path(x64, kernel, graph_name, lhs_target, rhs_target):
    graph = GRAPHS[graph_name]
    layout = _plan(graph)
    rng = np.random.default_rng(7)
    a, b = (jnp.asarray(rng.standard_normal((graph.n_nodes, 5))) for _ in range(2))

    def loss(a, b, layout):
        return jnp.sum(jnp.sin(gsddmm(graph, "dot", a, b, lhs_target, rhs_target, layout=layout)))

    np.testing.assert_allclose(gsddmm(graph, "dot", a, b, lhs_target, rhs_target, layout=layout),
                               gsddmm(graph, "dot", a, b, lhs_target, rhs_target), rtol=1e-12, atol=1e-12)
    for got, want in zip(jax.grad(loss, (0, 1))(a, b, layout), jax.grad(loss, (0, 1))(a, b, None)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_gsddmm_dot_on_the_layout_passes_numerical_check_to_second_order(x64, kernel):
    graph = GRAPHS["skewed"]
    layout = _plan(graph)
    rng = np.random.default_rng(8)
    a, b = (jnp.asarray(rng.standard_normal((graph.n_nodes, 2))) for _ in range(2))
    check_grads(lambda a, b: gsddmm(graph, "dot", a, b, layout=layout), (a, b), order=2, modes=("rev",))


def test_gsddmm_layout_rejects_what_it_does_not_cover():
    graph = GRAPHS["skewed"]
    layout = _plan(graph)
    x = jnp.ones((graph.n_nodes, 3))
    with pytest.raises(ValueError, match="gsddmm: the layout path supports op 'dot'; got 'mul'"):
        gsddmm(graph, "mul", x, x, layout=layout)
    with pytest.raises(ValueError, match="one operand at 'u' and one at 'v'; got lhs_target='u', rhs_target='u'"):
        gsddmm(graph, "dot", x, x, "u", "u", layout=layout)
    with pytest.raises(ValueError, match=r"lhs and rhs of one shape \(N, F\); got \(40, 3\) and \(40, 1\)"):
        gsddmm(graph, "dot", x, jnp.ones((graph.n_nodes, 1)), layout=layout)
    with pytest.raises(ValueError, match="planned for another graph; got n_nodes=3"):
        gsddmm(graph, "dot", x, x, layout=_plan(GRAPHS["single_edge"]))
