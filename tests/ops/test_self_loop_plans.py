"""Self loops added to a planned graph, inside ``jit`` too, are a flag of its plan (`Side.self_loops`),
not new tables: the native kernels walk each loop as one more slot of its row, backends whose kernels
do not take loops get the loops' terms added around their walks, GAT's attention takes them as terms
of its walks (a masked-out loop as a dead one), and max/min read the looped CSR that `Side.csr` builds. Values and gradients, second order included,
must equal the plain path's on the looped graph in float64.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import Graph
from jgrad._src import _plan
from jgrad.ops import _kernels, _native, edge_softmax, gcn_norm, gsddmm, gspmm, spmm, with_backend

pytestmark = [pytest.mark.usefixtures("x64")]

TOL = dict(rtol=1e-12, atol=1e-12)


def _graph() -> Graph:
    """A hub, an existing self loop, a duplicate edge, isolated nodes, and padding (edge and node masks)."""
    rng = np.random.default_rng(3)
    senders, receivers = rng.integers(0, 20, 80), rng.integers(0, 20, 80)
    receivers[:25] = 2
    senders[:2] = receivers[:2]
    senders[5], receivers[5] = senders[6], receivers[6]
    graph = Graph.from_edges(senders, receivers, 24)
    return jgrad.pad(graph, n_nodes=26, n_edges=85)


GRAPH = _graph()


@pytest.fixture(params=["native", "native_fallback", "loop_terms"])
def kernels(request, monkeypatch):
    """``native``: the kernels walk the loops; ``native_fallback``: XLA over `Side.csr` (as on GPU);
    ``loop_terms``: kernels that do not take loops, given the sides without them plus the loops' terms."""
    assert jgrad.ops.native_available()
    if request.param == "native_fallback":
        monkeypatch.setattr(_kernels, "_use_native", lambda *arrays: False)
    if request.param == "loop_terms":
        monkeypatch.setitem(_kernels.KERNELS, "native", _kernels.KERNELS["native"]._replace(self_loops=False))
    return request.param


def _program(graph, x, w):
    """Every op on a graph whose loops are added inside the program, as one scalar (and the looped plan)."""
    graph = graph.with_edge_weight(w)
    looped = graph.add_self_loops(1.5)
    heads = jnp.stack([x, 2.0 * x], axis=1)  # (N, 2, F)
    head_w = jnp.stack([looped.edge_weight, looped.edge_weight ** 2], axis=1)  # (E + N, 2)
    scores = gsddmm(looped, "dot", x, x, "u", "v")  # (E + N,)
    parts = [
        spmm(looped, x),
        gspmm(looped, "u_mul_e", "sum", heads, head_w[..., None]),
        gspmm(looped, "copy_u", "mean", x),
        gspmm(looped, "u_mul_e", "max", x, looped.edge_weight),
        scores,
        edge_softmax(looped, scores),
        spmm(gcn_norm(graph), x),
    ]
    return sum(jnp.sum(jnp.sin(p)) for p in parts), looped.plan


def _operands():
    rng = np.random.default_rng(4)
    return jnp.asarray(rng.standard_normal((GRAPH.n_nodes, 3))), jnp.asarray(rng.uniform(0.5, 1.5, GRAPH.n_edges))


@functools.cache
def _reference():
    """The plain path's loss, gradients and second-order gradients on the looped graph (float64)."""
    return _orders(with_backend(GRAPH, "xla"), *_operands())


def _orders(graph, x, w):
    loss = lambda x, w: _program(graph, x, w)[0]  # noqa: E731
    value, grads = jax.jit(jax.value_and_grad(loss, (0, 1)))(x, w)
    second = jax.jit(jax.grad(lambda x, w: jnp.sum(jax.grad(loss, 1)(x, w) ** 2), (0, 1)))(x, w)
    return value, grads, second


def test_every_op_on_loops_added_inside_jit_gives_the_plain_values_and_gradients(kernels):
    got = _orders(with_backend(GRAPH, "native"), *_operands())
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(_reference()), strict=True):
        assert a.dtype == jnp.float64
        np.testing.assert_allclose(a, b, **TOL)


def test_the_looped_plan_is_the_graphs_own_tables_and_a_flag():
    graph, operands = with_backend(GRAPH, "native"), _operands()
    plan = jax.jit(lambda g, x, w: _program(g, x, w)[1])(graph, *operands)
    for side, own in ((plan.forward, graph.plan.forward), (plan.reverse, graph.plan.reverse)):
        assert side.self_loops and not own.self_loops
        np.testing.assert_array_equal(side.edge_csr.cols, own.edge_csr.cols)  # the same tables
        np.testing.assert_array_equal(side.in_degree, np.asarray(own.in_degree) + 1)
    looped = graph.add_self_loops()
    fresh = _plan.make_plan(np.asarray(looped.senders), np.asarray(looped.receivers), graph.n_nodes, "native")
    for side, want in ((plan.forward, fresh.forward), (plan.reverse, fresh.reverse)):
        np.testing.assert_array_equal(side.csr.row_ptr, want.csr.row_ptr)  # `Side.csr` inserts the loops
        rows = np.repeat(np.arange(graph.n_nodes), np.diff(np.asarray(want.csr.row_ptr)))
        assert sorted(zip(rows, np.asarray(side.csr.edge_ids), np.asarray(side.csr.cols))) == \
            sorted(zip(rows, np.asarray(want.csr.edge_ids), np.asarray(want.csr.cols)))
    twice = graph.add_self_loops().add_self_loops()  # loops on loops: the first become tables
    assert twice.plan.forward.edge_csr.cols.shape == (graph.n_edges + graph.n_nodes,)
    x = operands[0]
    np.testing.assert_allclose(spmm(twice, x), spmm(with_backend(twice, "xla"), x), **TOL)


def test_a_sum_over_loops_added_inside_jit_builds_no_looped_tables():
    """The native sum and its backward walk the loops: the program has no slot-row scan (`slot_rows`)."""
    graph, x = with_backend(GRAPH, "native"), _operands()[0]
    step = jax.jit(jax.grad(lambda x, g: jnp.sum(spmm(gcn_norm(g), x) ** 2)))
    assert "cumsum" not in str(jax.make_jaxpr(step)(x, graph))
    assert "cumsum" in str(jax.make_jaxpr(lambda g: g.add_self_loops().plan.forward.csr)(graph))


def test_gcn_norm_reads_no_looped_indices_and_equals_the_sums_over_the_looped_edges():
    """`gcn_norm` sums the degrees and scales the weights over the graph's own edges, then the loops':
    bitwise the values of the same maths over the looped edges, and a compiled GCN step keeps none of
    the looped graph's (E + N) index arrays (XLA drops them)."""
    from jgrad._src._degree import safe_inverse_power

    graph, x = with_backend(GRAPH, "native"), _operands()[0]
    for fill in (1.0, 2.5):
        looped = graph.add_self_loops(fill)
        weights = looped.weights(jnp.float64)
        degree = jgrad.ops.segment_sum(weights, looped.receivers, looped.n_nodes)
        scale = safe_inverse_power(degree, 0.5)
        np.testing.assert_array_equal(gcn_norm(graph, fill=fill).edge_weight,
                                      scale[looped.receivers] * weights * scale[looped.senders])
    step = jax.jit(jax.grad(lambda x, g: jnp.sum(spmm(gcn_norm(g), x) ** 2))).lower(x, graph).compile().as_text()
    assert f"s32[{graph.n_edges + graph.n_nodes}]" not in step


@pytest.mark.parametrize("heads", [None, 1, 3])
def test_the_native_kernels_walk_a_loop_per_row_as_one_more_slot(heads):
    """`csr_sum`, `csr_edge_dot` and `csr_sum_dot` with ``self_loops`` against the same kernels on the
    looped CSR, weighted and not, one weight per edge or per head."""
    graph = with_backend(GRAPH, "native")
    looped = graph.add_self_loops()
    own, full = looped.plan.forward, dataclasses.replace(looped.plan.forward, edge_csr=looped.plan.forward.csr,
                                                           self_loops=False)
    n, e = graph.n_nodes, looped.n_edges
    rng = np.random.default_rng(5)
    shape = (n, 4) if heads is None else (n, heads, 2)
    u, v = (jnp.asarray(rng.standard_normal(shape)) for _ in range(2))
    w = jnp.asarray(rng.standard_normal((e,) if heads is None else (e, heads)))
    for weights in (w, None) if heads is None else (w,):
        np.testing.assert_allclose(_native.csr_sum(own.edge_csr, u, weights, self_loops=True),
                                   _native.csr_sum(full.edge_csr, u, weights), **TOL)
    np.testing.assert_allclose(_native.csr_edge_dot(own.edge_csr, u, v, e, self_loops=True),
                               _native.csr_edge_dot(full.edge_csr, u, v, e), **TOL)
    for a, b in zip(_native.csr_sum_dot(own.edge_csr, u, v, w, self_loops=True),
                    _native.csr_sum_dot(full.edge_csr, u, v, w), strict=True):
        np.testing.assert_allclose(a, b, **TOL)


def _unpadded_graph() -> Graph:
    """GRAPH's edges without its padding: no edge or node mask, so loops added to it all take part."""
    live = np.asarray(GRAPH.edge_mask)
    return Graph.from_edges(np.asarray(GRAPH.senders)[live], np.asarray(GRAPH.receivers)[live], 24)


def _some_loops_left_out(graph: Graph) -> Graph:
    """``graph`` with loops added and then every third loop masked out, as a user mask may do."""
    looped = graph.add_self_loops()
    keep = np.ones(looped.n_edges, bool)
    keep[graph.n_edges::3] = False
    return dataclasses.replace(looped, edge_mask=jnp.asarray(keep))


@pytest.mark.parametrize("case", ["unmasked", "padded", "loops left out"])
@pytest.mark.parametrize("heads", [(), (3,)])
def test_gat_attention_over_loops_added_inside_jit_attends_to_them_as_terms(case, heads):
    """`gat_attention` on ``graph.add_self_loops()`` runs the fused kernels with the loops as terms
    (masked-out loops, such as a padding node's, as dead terms), builds no looped CSR, and gives the
    plain path's values and gradients to second order."""
    graph = jgrad.pad(_unpadded_graph(), n_nodes=26, n_edges=85) if case == "padded" else _unpadded_graph()
    add_loops = _some_loops_left_out if case == "loops left out" else Graph.add_self_loops
    graph = with_backend(graph, "native")
    rng = np.random.default_rng(6)
    src, dst = (jnp.asarray(rng.standard_normal((graph.n_nodes,) + heads) * 2) for _ in range(2))
    weights = jnp.asarray(rng.standard_normal((graph.n_edges + graph.n_nodes,) + heads))

    def attention(g, src, dst):
        return jgrad.ops.gat_attention(add_loops(g), src, dst, 0.3)

    def loss(g, src, dst):
        return jnp.sum(weights * jnp.sin(attention(g, src, dst)))

    def orders(g):
        value, grads = jax.jit(jax.value_and_grad(loss, (1, 2)))(g, src, dst)
        second = jax.jit(jax.grad(lambda s, d: jnp.sum(jax.grad(loss, 1)(g, s, d) ** 2), (0, 1)))(src, dst)
        return value, grads, second

    for a, b in zip(jax.tree.leaves(orders(graph)), jax.tree.leaves(orders(with_backend(graph, "xla"))), strict=True):
        np.testing.assert_allclose(a, b, **TOL)
    mask = add_loops(graph).edge_mask
    if mask is not None:  # padding edges, padding nodes' loops, loops left out
        alpha = np.asarray(jax.jit(attention)(graph, src, dst))
        assert np.all(alpha[~np.asarray(mask)] == 0.0), "a masked-out edge or loop got a weight"
    looped_edges = f"s32[{graph.n_edges + graph.n_nodes}]"
    step = lambda g: jax.jit(jax.grad(loss, 1)).lower(g, src, dst)
    lowered = step(graph)
    assert lowered.as_text().count("@jgrad_csr_attention(") == 1
    assert lowered.as_text().count("@jgrad_csr_attention_backward(") == 1
    assert looped_edges not in lowered.compile().as_text()  # no looped CSR: XLA drops the looped indices
    assert looped_edges in step(with_backend(graph, "xla")).compile().as_text()  # the check can fail
