"""Every backend gives the plain path's values and gradients; the plan's life cycle on a Graph.

The backends: ``native`` (CSR kernels through the FFI on CPU), ``native_fallback`` (a native plan run
with XLA segment sums, as on GPU or without a compiler), ``bucket`` (degree-bucketed gather tables,
with small tables here so that hubs are split and reductions run over several chunks), ``pallas`` (the
Pallas kernels: compiled through Triton on a GPU, Pallas's interpreter on CPU, where each case costs a
few seconds of compilation). ``xla`` (no plan) is the reference.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jgrad
from jgrad import Graph
from jgrad._src import _plan
from jgrad.ops import backend_of, edge_softmax, gsddmm, gspmm, spmm, use_backend, with_backend

H, F = 2, 3


def _skewed(n_nodes=24, n_edges=90, seed=0) -> Graph:
    """One hub wider than the test tables, self loops, duplicates, isolated nodes."""
    rng = np.random.default_rng(seed)
    senders = rng.integers(0, n_nodes - 4, n_edges)
    receivers = rng.integers(0, n_nodes - 4, n_edges)
    receivers[: n_edges // 3] = 3
    senders[:4] = receivers[:4]
    senders[4:6], receivers[4:6] = senders[10], receivers[10]
    return Graph.from_edges(senders, receivers, n_nodes)


# A hub, self loops, duplicates, isolated nodes, a padded member and an edgeless member in one graph.
UNION = jgrad.batch([_skewed(), jgrad.pad(_skewed(10, 30, seed=1), n_nodes=12, n_edges=40),
                     Graph.from_edges(np.zeros(0, np.int32), np.zeros(0, np.int32), 3)])
TINY = jgrad.pad(Graph.from_edges([0, 1, 2, 2, 3, 3], [1, 2, 0, 1, 1, 3], 4), n_nodes=5, n_edges=8)
BACKENDS = ("native", "native_fallback", "bucket", "pallas")


def planned(graph: Graph, backend: str) -> Graph:
    """``graph`` with a plan for ``backend`` (bucket tables kept small: hubs split, many chunks)."""
    if backend == "bucket":
        plan = _plan.make_plan(graph.senders, graph.receivers, graph.n_nodes, "bucket", max_width=4, chunk_edges=8)
        return dataclasses.replace(graph, plan=_plan.bind(plan, graph))
    return with_backend(graph, "pallas" if backend == "pallas" else "native")


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    if request.param == "native":
        assert jgrad.ops.native_available(), "the native CPU kernels did not build on this machine"
    if request.param == "native_fallback":
        monkeypatch.setattr(jgrad.ops._kernels, "_use_native", lambda *arrays: False)
    return request.param


def _operands(graph, seed=0):
    rng = np.random.default_rng(seed)
    u = jnp.asarray(rng.standard_normal((graph.n_nodes, H, F)))
    v = jnp.asarray(rng.standard_normal((graph.n_nodes, H, F)))
    e_scalar = jnp.asarray(rng.uniform(0.5, 1.5, graph.n_edges))
    e_head = jnp.asarray(rng.uniform(0.5, 1.5, (graph.n_edges, H, 1)))
    return u, v, e_scalar, e_head


# The cases each backend runs itself: copy_u / u_mul_e with sum, mean, max and min (u_mul_e with scalar
# and per-head edge data; mean adds one division to the sum, the same for either), u_div_e, u_add_e,
# u_sub_e and copy_e with sum and mean (the edge sum, scalar and per head), dot of (N, H, F) and of (N, M)
# rows, add / sub / mul of (N, H) node operands and of node and edge operands; and one of each kind it
# hands to the plain path (max of u_add_e, add of (N, H, F)). Edge data: None, "scalar" (E,) or "head"
# (E, H, 1). Random operands: no ties (see the tie test below).
SPMM_CASES = (("copy_u", "sum", None), ("copy_u", "mean", None), ("u_mul_e", "sum", "scalar"),
              ("u_mul_e", "sum", "head"), ("u_mul_e", "mean", "head"), ("copy_e", "sum", "scalar"),
              ("copy_e", "mean", "head"), ("u_mul_e", "max", "scalar"), ("u_mul_e", "min", "head"),
              ("copy_u", "min", None), ("u_div_e", "mean", "scalar"), ("u_add_e", "mean", "head"),
              ("u_sub_e", "sum", "scalar"), ("u_add_e", "max", "head"))


def _every_op(graph, u, v, e_scalar, e_head):
    """One scalar from every case above and the edge softmax: one compile per backend covers them."""
    total = 0.0
    for op, reduce, edge in SPMM_CASES:
        e = {None: None, "scalar": e_scalar, "head": e_head}[edge]
        total = total + jnp.sum(jnp.sin(gspmm(graph, op, reduce, u if op != "copy_e" else None, e)))
    # Each target order once: (u, v) reads lhs at the senders, (v, u) at the receivers.
    flat = u.reshape(graph.n_nodes, -1), v.reshape(graph.n_nodes, -1)
    for op, (lhs, rhs), targets in (("dot", (u, v), ("u", "v")), ("dot", flat, ("v", "u")),
                                    ("add", (u, v), ("u", "v")), ("add", (u[..., 0], v[..., 0]), ("v", "u")),
                                    ("mul", (u[..., 0], v[..., 0]), ("u", "v")),
                                    ("sub", (e_head[..., 0], u[..., 0]), ("e", "v"))):
        total = total + jnp.sum(jnp.sin(gsddmm(graph, op, lhs, rhs, *targets)))
    return total + jnp.sum(edge_softmax(graph, e_head[..., 0]) * e_head[..., 0])


def test_the_cases_above_run_on_every_backend_but_the_plain_ones():
    u, v, e_scalar, e_head = _operands(TINY)
    kernels = jgrad.ops._kernels
    for backend in ("native", "bucket", "pallas"):
        plan = _plan.make_plan(np.asarray(TINY.senders), np.asarray(TINY.receivers), TINY.n_nodes, backend)
        for op, reduce, edge in SPMM_CASES:
            e = {None: None, "scalar": e_scalar, "head": e_head}[edge]
            covered = kernels.covers_gspmm(plan, op, reduce, u, e)
            assert covered == ((op, reduce) != ("u_add_e", "max")), (backend, op, reduce, edge)
    pairs = {"dot": (u, v, "u", "v"), "mul": (u[..., 0], v[..., 0], "u", "v"), "sub": (e_head[..., 0], u[..., 0], "e", "v"),
             "add": (u, v, "u", "v")}
    assert [kernels.covers_gsddmm(op, *pairs[op]) for op in pairs] == [True, True, True, False]


def _every_op_step():
    """A fresh jit of the value and gradients of `_every_op`: a new function, so that each backend traces
    its own program (the native fallback is chosen while tracing; a cached trace would skip it)."""
    return jax.jit(jax.value_and_grad(lambda *args: _every_op(*args), argnums=(1, 2, 3, 4)))


@functools.cache
def _plain_every_op():
    return _every_op_step()(with_backend(UNION, "xla"), *_operands(UNION))


def test_every_case_matches_the_plain_path_on_every_backend(x64, backend):
    got = _every_op_step()(planned(UNION, backend), *_operands(UNION))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(_plain_every_op()), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_planned_ops_pass_the_numerical_check_to_second_order(x64, backend):
    graph = planned(TINY, backend)
    u, v, e, e_head = _operands(TINY, seed=1)
    x, y = u[:, 0], v[:, 0]

    def f(x, y, e, e_head):
        return (spmm(graph, x, e), gspmm(graph, "copy_u", "mean", x), gsddmm(graph, "dot", x, y),
                gspmm(graph, "u_mul_e", "sum", u * x[:, None], e_head), gspmm(graph, "u_mul_e", "max", x, e),
                gspmm(graph, "u_div_e", "mean", x * y, e), gsddmm(graph, "mul", x * y, e * e, "u", "e"))

    check_grads(jax.jit(f), (x, y, e, e_head), order=2, modes=("rev",), eps=1e-6)  # jitted: a few programs


def _tie_operands():
    u = jnp.asarray(np.random.default_rng(5).integers(-1, 2, (UNION.n_nodes, H, F)).astype(np.float64))
    return u, jnp.full((UNION.n_edges, H, 1), 2.0)


def _tie_step():
    """A fresh jit (see `_every_op_step`) of the values, first and second derivatives of max and min at ties
    under both tie rules, and a vmap over u."""

    def loss(g, u, e):
        total = 0.0
        for reduce, tie in (("max", "first"), ("min", "first"), ("max", "split"), ("min", "split")):
            total = total + jnp.sum(jnp.sin(gspmm(g, "u_mul_e", reduce, u, e, tie=tie)) * (1 + u))
            total = total + jnp.sum(jnp.cos(gspmm(g, "copy_u", reduce, u[:, 0], tie=tie)))
        return total

    def second_order(g, u, e):  # reverse over reverse: the routed kernel's own VJP
        grads = jax.grad(loss, argnums=(1, 2))
        return jax.grad(lambda u, e: sum(jnp.sum(jnp.sin(d)) for d in grads(g, u, e)), argnums=(0, 1))(u, e)

    return jax.jit(lambda g, u, e: (jax.value_and_grad(loss, argnums=(1, 2))(g, u, e), second_order(g, u, e),
                                    jax.vmap(lambda x: gspmm(g, "copy_u", "max", x, tie="first"))(jnp.stack([u, -u]))))


@functools.cache
def _plain_ties():
    """The plain path's numbers, compiled once for every backend's comparison (the plain graph has no plan,
    so the backend under test plays no part in them)."""
    return _tie_step()(with_backend(UNION, "xla"), *_tie_operands())


def test_max_and_min_at_ties_follow_each_tie_rule_on_every_backend(x64, backend):
    """Integer features tie: "first" is the plan's own selection, "split" runs the routed kernel. Values,
    first and second derivatives and a vmap over u equal the plain path's."""
    got, want = _tie_step()(planned(UNION, backend), *_tie_operands()), _plain_ties()
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_padding_edges_get_zero_gradient_on_every_backend(x64, backend):
    graph = planned(TINY, backend)
    u, v, e, _ = _operands(TINY)
    de = jax.jit(jax.grad(lambda e: jnp.sum(spmm(graph, u[:, 0], e) ** 2)))(e)
    assert np.all(np.asarray(de)[~np.asarray(TINY.edge_mask)] == 0.0)
    assert np.any(np.asarray(de)[np.asarray(TINY.edge_mask)] != 0.0)


def _forward_and_vmap(g):
    """A fresh jit (see `_every_op_step`) of a loss's gradient vmapped over edge weights and its JVP, on ``g``."""
    u, _, e, _ = _operands(UNION)
    weights = jnp.stack([e, 2 * e, e**2])

    def loss(g, w):
        return jnp.sum(spmm(g, u[:, 0], w) ** 2) + jnp.sum(gsddmm(g, "dot", u[:, 1], spmm(g, u[:, 1], w)))

    @jax.jit  # jit outside forward mode, as documented; one program per graph
    def run(g, weights, e, tangent):
        return (jax.vmap(jax.value_and_grad(loss, argnums=1), in_axes=(None, 0))(g, weights),
                jax.jvp(lambda w: loss(g, w), (e,), (tangent,)))

    return run(g, weights, e, jnp.ones_like(e))


@functools.cache
def _plain_forward_and_vmap():
    """The plain path's numbers, compiled once for every backend's comparison."""
    return _forward_and_vmap(with_backend(UNION, "xla"))


def test_forward_mode_and_vmap_over_edge_weights_on_a_planned_graph(x64, backend):
    (batched, got), (batched_plain, want) = _forward_and_vmap(planned(UNION, backend)), _plain_forward_and_vmap()
    for a, b in zip(batched, batched_plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, want, rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# The plan's life cycle.
# --------------------------------------------------------------------------------------------------
def _big_graph(seed=0) -> Graph:
    """Just above the size at which a graph is planned by default."""
    rng = np.random.default_rng(seed)
    n, e = 2000, _plan.SMALL_GRAPH_EDGES
    return Graph.from_edges(rng.integers(0, n, e), rng.integers(0, n, e), n)


def test_graphs_are_planned_lazily_for_the_platform_and_small_ones_run_the_plain_path():
    graph = _big_graph()
    assert graph.plan is _plan.AUTO  # nothing is computed at construction
    jax.tree.leaves(graph)  # entering a transformation plans it
    assert isinstance(graph.plan, _plan.Plan) and backend_of(graph) == "native"
    assert graph.plan.forward.buckets == ()  # only the tables the backend reads
    assert backend_of(TINY) == "xla" and TINY.plan is None


def test_use_backend_and_with_backend_choose_and_forbid():
    with use_backend("bucket"):
        assert backend_of(_big_graph()) == "bucket"
    with use_backend("xla"):
        assert backend_of(_big_graph()) == "xla"
    graph = with_backend(_big_graph(), "xla")
    assert graph.plan is None and backend_of(with_backend(graph, "auto")) == "native"
    with pytest.raises(ValueError, match=r"use_backend: unknown backend; got 'gpu', expected one of 'xla'"):
        with use_backend("gpu"):
            pass
    with pytest.raises(ValueError, match=r"with_backend: unknown backend; got 'fast'"):
        with_backend(TINY, "fast")
    with pytest.raises(TypeError, match=r"with_backend: the graph's indices are traced"):
        jax.jit(lambda g: with_backend(g, "native").n_edges)(TINY)


def test_reverse_transposes_the_plan_and_new_indices_drop_it(x64):
    graph = planned(UNION, "native")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((UNION.n_nodes, 2)))
    reversed_graph = graph.reverse()
    assert reversed_graph.plan.forward is graph.plan.reverse
    np.testing.assert_allclose(spmm(reversed_graph, x), UNION.to_dense().T @ x, rtol=1e-12, atol=1e-12)
    assert graph.with_edge_weight(jnp.ones(UNION.n_edges)).plan is graph.plan
    moved = dataclasses.replace(graph, senders=graph.receivers)  # another structure: re-planned
    assert moved.plan is _plan.AUTO
    np.testing.assert_allclose(spmm(moved, x), moved.to_dense() @ x, rtol=1e-12, atol=1e-12)


def test_a_graph_built_inside_jit_runs_the_plain_path(x64):
    x = jnp.ones((UNION.n_nodes, 2))

    @jax.jit
    def f(senders, receivers):
        graph = Graph(senders=senders, receivers=receivers, n_nodes=UNION.n_nodes)
        assert backend_of(graph) == "xla"
        return spmm(graph, x)

    np.testing.assert_allclose(f(UNION.senders, UNION.receivers), spmm(UNION.with_edge_weight(None), x) * 0
                               + Graph(UNION.senders, UNION.receivers, UNION.n_nodes).to_dense() @ x)


def _sorted_by_sender(graph: Graph) -> Graph:
    order = np.lexsort((np.asarray(graph.receivers), np.asarray(graph.senders)))
    return Graph.from_edges(np.asarray(graph.senders)[order], np.asarray(graph.receivers)[order], graph.n_nodes)


def test_graphs_of_one_size_and_edge_order_share_a_compilation_on_the_native_backend():
    """The plan's static part is the sizes and whether each side holds the edges in id order (which
    picks the backward's kernels): new index values of the same kind do not retrace."""
    traces = []

    @jax.jit
    def f(graph, x):
        traces.append(1)
        return spmm(graph, x)

    x = jnp.ones((2000, 2))
    for graph in (_big_graph(0), _big_graph(1), _sorted_by_sender(_big_graph(2)), _sorted_by_sender(_big_graph(3))):
        np.testing.assert_allclose(f(graph, x), graph.in_degree()[:, None] * x, rtol=1e-6)
    assert len(traces) == 2  # unsorted, sorted by sender


def test_transforms_of_a_planned_graph_run_on_the_engine(x64):
    with use_backend("native"):
        graph = _skewed()
        x = jnp.asarray(np.random.default_rng(0).standard_normal((graph.n_nodes, 2)))
        aggregate = jax.jit(lambda g, y: (spmm(g, y), g.to_dense() @ y))  # one program per derived graph
        for derived in (graph.add_self_loops(), graph.coalesce().with_edge_weight(None).to_undirected(), jgrad.batch([graph, graph]),
                        jgrad.pad(graph, n_nodes=30, n_edges=120)):
            assert backend_of(derived) == "native"
            y = jnp.concatenate([x] * (derived.n_nodes // graph.n_nodes)) if derived.n_nodes % graph.n_nodes == 0 \
                else jnp.concatenate([x, jnp.zeros((derived.n_nodes - graph.n_nodes, 2))])
            np.testing.assert_allclose(*aggregate(derived, y), rtol=1e-12, atol=1e-12)


def test_the_plan_is_part_of_the_pytree():
    graph = planned(TINY, "native")
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(graph)[0]]
    assert ".senders" in paths and ".plan.forward.edge_csr.row_ptr" in paths
    rebuilt = jax.tree.map(lambda leaf: leaf, graph)
    assert rebuilt.plan is not graph.plan and _plan.is_bound(rebuilt.plan, rebuilt)


def test_self_loops_added_inside_jit_keep_the_plan(x64):
    graph = planned(UNION, "native")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((UNION.n_nodes, 2)))

    @jax.jit
    def f(graph, x):
        looped = graph.add_self_loops(2.0)
        assert backend_of(looped) == "native" and looped.plan.n_edges == UNION.n_edges + UNION.n_nodes
        return spmm(looped, x), gspmm(looped, "copy_u", "mean", x), jgrad.ops.gcn_norm(graph).plan

    total, mean, normalised_plan = f(graph, x)
    dense, reference = jax.jit(lambda g, x: (g.to_dense() @ x, gspmm(g, "copy_u", "mean", x)))(
        with_backend(UNION.add_self_loops(2.0), "xla"), x)
    np.testing.assert_allclose(total, dense, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean, reference, rtol=1e-12, atol=1e-12)
    fresh = _plan.make_plan(*(np.asarray(a) for a in (UNION.add_self_loops().senders,
                                                       UNION.add_self_loops().receivers)), UNION.n_nodes, "native")
    for side, want in ((normalised_plan.forward, fresh.forward), (normalised_plan.reverse, fresh.reverse)):
        np.testing.assert_array_equal(side.csr.row_ptr, want.csr.row_ptr)
        np.testing.assert_array_equal(side.in_degree, want.in_degree)
        rows = np.repeat(np.arange(UNION.n_nodes), np.diff(np.asarray(want.csr.row_ptr)))
        got_edges = sorted(zip(rows, np.asarray(side.csr.edge_ids), np.asarray(side.csr.cols)))
        assert got_edges == sorted(zip(rows, np.asarray(want.csr.edge_ids), np.asarray(want.csr.cols)))


def test_a_graph_closed_over_by_jit_keeps_the_engine_through_self_loops(x64):
    """A graph captured by a jitted function is not flattened, so it is not planned on entry; its first
    op may be `add_self_loops` (GAT), whose traced output indices could no longer be planned."""
    with use_backend("native"):
        graph = _skewed()  # a fresh graph: its plan not made yet
        assert not isinstance(graph.plan, _plan.Plan)
        x = jnp.asarray(np.random.default_rng(0).standard_normal((graph.n_nodes, 2)))

        @jax.jit
        def looped_sum(x):
            looped = graph.add_self_loops(2.0)
            assert backend_of(looped) == "native"
            return spmm(looped, x)

        np.testing.assert_allclose(looped_sum(x), _skewed().add_self_loops(2.0).to_dense() @ x, rtol=1e-12,
                                   atol=1e-12)
        assert isinstance(graph.plan, _plan.Plan)  # planned once, on the graph object, for later traces


@pytest.mark.parametrize("name", ["native", "bucket"])
def test_a_graph_first_used_inside_a_scan_keeps_a_concrete_plan_for_later_calls(x64, name):
    """The plan made on a graph's first op is cached on the graph: made inside a scan body, its tables
    were that trace's tracers, and the next use of the graph raised UnexpectedTracerError."""
    with use_backend(name):
        graph = _skewed()
        x = jnp.asarray(np.random.default_rng(1).standard_normal((graph.n_nodes, 2)))
        scanned, _ = jax.lax.scan(lambda h, _: (spmm(graph, h), None), x, None, length=2)
        assert backend_of(graph) == name
        assert not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(graph.plan))
        dense = _skewed().to_dense()
        np.testing.assert_allclose(scanned, dense @ (dense @ x), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(spmm(graph, x), dense @ x, rtol=1e-12, atol=1e-12)  # raised before
        np.testing.assert_allclose(jax.jit(spmm)(graph, x), dense @ x, rtol=1e-12, atol=1e-12)


def test_a_graph_built_inside_jit_from_numpy_indices_runs_on_the_engine(x64):
    """Concrete indices are not traced: the graph can be planned (traced ones run the plain path, above)."""
    skewed = _skewed()
    senders, receivers = np.asarray(skewed.senders), np.asarray(skewed.receivers)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((skewed.n_nodes, 2)))
    with use_backend("native"):
        @jax.jit
        def built_inside(x):
            graph = Graph.from_edge_index(np.stack([senders, receivers]), n_nodes=skewed.n_nodes)
            assert backend_of(graph) == "native"
            return spmm(graph.add_self_loops(), x)

        np.testing.assert_allclose(built_inside(x), skewed.add_self_loops().to_dense() @ x, rtol=1e-12, atol=1e-12)


def test_masking_edges_keeps_the_plan_and_masked_edges_send_nothing(x64):
    graph = planned(UNION, "native")
    keep = jnp.asarray(np.random.default_rng(1).uniform(size=UNION.n_edges) < 0.6)
    masked = dataclasses.replace(graph, edge_mask=keep if UNION.edge_mask is None else keep & UNION.edge_mask)
    assert masked.plan is graph.plan
    x = jnp.asarray(np.random.default_rng(2).standard_normal((UNION.n_nodes, 2)))
    plain = with_backend(masked, "xla")
    for op, reduce in (("copy_u", "sum"), ("copy_u", "mean")):
        np.testing.assert_allclose(gspmm(masked, op, reduce, x), gspmm(plain, op, reduce, x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gsddmm(masked, "dot", x, x), gsddmm(plain, "dot", x, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("largest", [5, 70_000, 2**31 - 2])
def test_the_radix_argsort_of_the_planner_is_a_stable_argsort(largest):
    key = np.random.default_rng(0).integers(0, largest + 1, 5000).astype(np.int64)
    key[:50] = key[50]  # ties keep their order
    np.testing.assert_array_equal(_plan._stable_argsort(key, largest), np.argsort(key, kind="stable"))
    rows = np.sort(key[:100] % 1000)
    order, degree, in_order = _plan._csr_order(rows, 1000)  # already grouped: kept as is
    np.testing.assert_array_equal(order, np.arange(100))
    np.testing.assert_array_equal(degree, np.bincount(rows, minlength=1000))
    assert in_order and not _plan._csr_order(rows[::-1], 1000)[2]


def test_a_backend_is_one_kernel_set_and_one_registry_line(x64):
    kernels = jgrad.ops._kernels
    try:  # a toy backend: the CSR order with XLA segment sums, no fused backward
        kernels.register("segments", kernels.Kernels(kernels._csr_segment_sum, kernels._csr_segment_edge_dot),
                         tables="csr")
        graph = with_backend(TINY, "segments")
        assert backend_of(graph) == "segments"
        u, v, e, _ = _operands(TINY, seed=3)

        def loss(g, x, w):
            return jnp.sum(jnp.sin(spmm(g, x, w))) + jnp.sum(gsddmm(g, "dot", x, spmm(g, x, w)) ** 2)

        grad = jax.jit(jax.grad(loss, argnums=(1, 2)))
        for a, b in zip(grad(graph, u[:, 0], e), grad(with_backend(TINY, "xla"), u[:, 0], e)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    finally:
        kernels.KERNELS.pop("segments", None)
        _plan._TABLES.pop("segments", None)
