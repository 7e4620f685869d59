"""Common suite: every op x reducer x broadcast shape on the awkward graphs.

Each case is checked four ways:

(a) values and gradients against independent references written here: a NumPy loop, a dense
    formulation (``A @ X``, incidence matrices, a masked dense softmax) and plain autodiff
    (gather + ``jax.ops.segment_*``);
(b) ``jax.test_util.check_grads`` in float64, reverse mode to order 2 and forward mode to order 1;
(c) eager, ``jit`` and ``vmap`` agree (the ``variant`` fixture);
(d) ``vmap`` over a batch of edge data and over a batch of node features equals a Python loop.

The graphs all have N = 8 nodes and E = 20 edges (or none), so that eager kernels compiled for one
graph are reused by the others and the suite stays quick.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jgrad
from jgrad import Graph
from jgrad.ops import EDGE_OPS, MESSAGE_OPS, edge_softmax, gcn_norm, gsddmm, gspmm, row_norm, spmm

N, E, F, H = 8, 20, 3, 2
REDUCERS = ("sum", "mean", "max", "min")
BATCH = 3
EPS = 1e-6  # finite-difference step for check_grads in float64; inputs have no ties closer than this


# --------------------------------------------------------------------------------------------------
# The awkward graphs, built once per module.
# --------------------------------------------------------------------------------------------------
def _duplicates_and_self_loops() -> Graph:
    rng = np.random.default_rng(1)
    senders = rng.integers(0, N, E - 4)
    receivers = rng.integers(0, N, E - 4)
    # Two extra copies of edge 0 and edge 3 (duplicates) and two self loops.
    senders = np.concatenate([senders, senders[[0, 3]], [2, 5]])
    receivers = np.concatenate([receivers, receivers[[0, 3]], [2, 5]])
    return Graph.from_edges(senders, receivers, N)


def _isolated_nodes() -> Graph:
    # Edges only among nodes 0..4, and only into 0..2: nodes 3, 4 receive nothing (empty segments),
    # nodes 5, 6, 7 are isolated.
    rng = np.random.default_rng(2)
    return Graph.from_edges(rng.integers(0, 5, E), rng.integers(0, 3, E), N)


def _zero_edges() -> Graph:
    return Graph.from_edges(np.zeros((0,), np.int32), np.zeros((0,), np.int32), N)


def _padded() -> Graph:
    # 7 real nodes and 14 real edges (one duplicate, one self loop), padded to N = 8, E = 20.
    rng = np.random.default_rng(3)
    senders = np.concatenate([rng.integers(0, 7, 12), [1, 4]])
    receivers = np.concatenate([rng.integers(0, 7, 12), [1, 4]])
    senders[12], receivers[12] = senders[0], receivers[0]
    return jgrad.pad(Graph.from_edges(senders, receivers, 7), n_nodes=N, n_edges=E)


AWKWARD = {
    "duplicates_self_loops": _duplicates_and_self_loops(),
    "isolated_nodes": _isolated_nodes(),
    "zero_edges": _zero_edges(),
    "padded": _padded(),
}
# Their disjoint union carries every awkward feature at once (duplicate edges, self loops, isolated
# nodes, empty segments, padding masks, an edgeless component), so one pass over it covers them all.
GRAPHS = {**AWKWARD, "union": jgrad.batch(list(AWKWARD.values()))}
# Values and gradients against the references run on the union and on the graph with zero edges
# (E = 0 gives zero-size edge arrays, which no union can show; there each op runs on its widest
# broadcast); the rest runs on the union.
GRAPH_NAMES = ("union", "zero_edges")


def _edge_mask(graph: Graph) -> np.ndarray:
    return np.ones(graph.n_edges, bool) if graph.edge_mask is None else np.asarray(graph.edge_mask)


def test_awkward_graphs_have_the_advertised_features():
    union = GRAPHS["union"]
    assert union.n_nodes == 4 * N and union.n_edges == 3 * E
    np.testing.assert_array_equal(union.edge_mask, np.concatenate([np.ones(2 * E, bool), _edge_mask(AWKWARD["padded"])]))
    g = GRAPHS["duplicates_self_loops"]
    pairs = list(zip(np.asarray(g.senders).tolist(), np.asarray(g.receivers).tolist()))
    assert len(set(pairs)) < len(pairs)
    assert any(s == r for s, r in pairs)
    g = GRAPHS["isolated_nodes"]
    assert not set(range(3, N)) & set(np.asarray(g.receivers).tolist())
    assert GRAPHS["zero_edges"].n_edges == 0
    g = GRAPHS["padded"]
    assert (g.n_nodes, g.n_edges) == (N, E) and not _edge_mask(g).all() and not np.asarray(g.node_mask).all()


# --------------------------------------------------------------------------------------------------
# Case tables.
# --------------------------------------------------------------------------------------------------
# Trailing shapes of (u, e). copy_u ignores e and copy_e ignores u, so they get fewer shapes.
SPMM_SHAPES = {
    "uNF-eE": ((F,), ()),
    "uNF-eE1": ((F,), (1,)),
    "uNF-eEF": ((F,), (F,)),
    "uNHF-eEH1": ((H, F), (H, 1)),
    "uNHF-eEHF": ((H, F), (H, F)),
}


def _spmm_cases():
    for op, reduce in itertools.product(MESSAGE_OPS, REDUCERS):
        for name, (u_shape, e_shape) in SPMM_SHAPES.items():
            if op == "copy_u":
                if e_shape not in ((), (H, 1)):
                    continue
                name = name.split("-")[0]
            if op == "copy_e":
                name = name.split("-")[1]
            yield pytest.param(op, reduce, u_shape, e_shape, id=f"{op}-{reduce}-{name}")


SPMM_CASES = list(_spmm_cases())
# To keep the suite quick, (c) and (d) run every op x reducer on the widest broadcast, u (N, H, F) with
# e (E, H, 1) (jit compiles dominate their cost); every shape is covered by (a) and (b).
SPMM_VARIANT_CASES = [case for case in SPMM_CASES if case.values[2] == (H, F) and case.values[3] == (H, 1)]

SDDMM_TARGETS = (("u", "v"), ("v", "u"), ("u", "e"), ("e", "v"), ("u", "u"))
SDDMM_SHAPES = {"F-F": ((F,), (F,)), "HF-H1": ((H, F), (H, 1))}
SDDMM_CASES = [
    pytest.param(op, lt, rt, ls, rs, id=f"{op}-{lt}{rt}-{name}")
    for op in EDGE_OPS
    for lt, rt in SDDMM_TARGETS
    for name, (ls, rs) in SDDMM_SHAPES.items()
]

SDDMM_VARIANT_CASES = [case for case in SDDMM_CASES if case.values[3] == (H, F)]



def _on_graphs(cases, zero_edge_cases):
    """Every case on the union; on the graph with zero edges, the widest broadcast of each op."""
    return ([pytest.param("union", *c.values, id=f"{c.id}-union") for c in cases]
            + [pytest.param("zero_edges", *c.values, id=f"{c.id}-zero_edges") for c in zero_edge_cases])


SOFTMAX_SHAPES = {"E": (), "EH": (H,)}


def _seed(*parts) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate("/".join(map(str, parts)))) % (2**31)


def _uses_u(op):
    return op != "copy_e"


def _uses_e(op):
    return op != "copy_u"


def _spmm_operands(graph_name, op, reduce, u_shape, e_shape, batch=()):
    """Float64 operands: u ~ N(0, 1), e ~ U[1, 2] (so u_div_e is well conditioned), no ties."""
    graph = GRAPHS[graph_name]
    rng = np.random.default_rng(_seed(graph_name, op, reduce, u_shape, e_shape, batch))
    u = jnp.asarray(rng.normal(size=batch + (graph.n_nodes,) + u_shape))
    e = jnp.asarray(rng.uniform(1.0, 2.0, size=batch + (graph.n_edges,) + e_shape))
    return u, e


def _call_gspmm(graph, op, reduce, u, e, tie="split"):
    return gspmm(graph, op, reduce, u if _uses_u(op) else None, e if _uses_e(op) else None, tie=tie)


def _align(x, ndim):
    """Left-aligned broadcast: pad x with trailing unit axes to rank ndim."""
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def _cotangent(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


# --------------------------------------------------------------------------------------------------
# Independent references for gspmm.
# --------------------------------------------------------------------------------------------------
def _np_message(op, u_row, e_row):
    if op == "copy_u":
        return u_row
    if op == "copy_e":
        return e_row
    e_row = e_row.reshape(e_row.shape + (1,) * (u_row.ndim - e_row.ndim))
    return {"u_add_e": np.add, "u_sub_e": np.subtract, "u_mul_e": np.multiply,
            "u_div_e": np.divide}[op](u_row, e_row)


def numpy_loop_gspmm(graph, op, reduce, u, e):
    """A NumPy loop over receivers: collect the live incoming messages, reduce them; 0 if none."""
    u, e = np.asarray(u), np.asarray(e)
    senders, receivers, mask = np.asarray(graph.senders), np.asarray(graph.receivers), _edge_mask(graph)
    trailing = e.shape[1:] if op == "copy_e" else u.shape[1:]
    out = np.zeros((graph.n_nodes,) + trailing)
    reducer = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}[reduce]
    for v in range(graph.n_nodes):
        messages = [_np_message(op, u[senders[k]], e[k])
                    for k in range(graph.n_edges) if receivers[k] == v and mask[k]]
        if messages:
            out[v] = reducer(np.stack(messages), axis=0)
    return out


def _jnp_message(op, u_edge, e):
    if op == "copy_u":
        return u_edge
    if op == "copy_e":
        return e
    e = _align(e, u_edge.ndim)
    return {"u_add_e": jnp.add, "u_sub_e": jnp.subtract, "u_mul_e": jnp.multiply,
            "u_div_e": jnp.divide}[op](u_edge, e)


def dense_gspmm(graph, op, reduce, u, e):
    """sum/mean through dense incidence matrices: out = R^T message(S u, e), so A = R^T S."""
    live = jnp.asarray(_edge_mask(graph), u.dtype)
    to_receiver = jax.nn.one_hot(graph.receivers, graph.n_nodes, dtype=u.dtype) * live[:, None]  # R (E, N)
    from_sender = jax.nn.one_hot(graph.senders, graph.n_nodes, dtype=u.dtype)  # S (E, N)
    u_edge = jnp.tensordot(from_sender, u, axes=1)
    msg = _jnp_message(op, u_edge, e)
    out = jnp.tensordot(to_receiver.T, msg, axes=1)
    if reduce == "mean":
        out = out / _align(jnp.maximum(to_receiver.sum(0), 1.0), out.ndim)
    return out


def dense_adjacency_matmul(graph, u, e=None):
    """``A @ u`` with the dense adjacency, A[v, u] = sum of weights of the edges u -> v."""
    weighted = graph if e is None else graph.with_edge_weight(e)
    adjacency = weighted.weights(u.dtype)
    dense = jnp.zeros((graph.n_nodes, graph.n_nodes) + adjacency.shape[1:], u.dtype)
    dense = dense.at[graph.receivers, graph.senders].add(adjacency)  # (N, N, ...)
    dense = _align(dense, u.ndim + 1)
    return jnp.sum(dense * u[None], axis=1)


def autodiff_gspmm(graph, op, reduce, u, e):
    """Plain autodiff: gather, message, jax.ops.segment_* (masked entries removed, empty rows 0)."""
    n = graph.n_nodes
    u_edge = u[graph.senders] if _uses_u(op) else None
    msg = _jnp_message(op, u_edge, e)
    live = _align(jnp.asarray(_edge_mask(graph)), msg.ndim)
    count = jax.ops.segment_sum(jnp.asarray(_edge_mask(graph), msg.dtype), graph.receivers, n)
    count = _align(count, msg.ndim)
    if reduce in ("sum", "mean"):
        out = jax.ops.segment_sum(jnp.where(live, msg, 0.0), graph.receivers, n)
        return out / jnp.maximum(count, 1.0) if reduce == "mean" else out
    fill = -jnp.inf if reduce == "max" else jnp.inf
    segment = jax.ops.segment_max if reduce == "max" else jax.ops.segment_min
    out = segment(jnp.where(live, msg, fill), graph.receivers, n)
    return jnp.where(count > 0, out, 0.0)


def _loss_grads(fn, u, e, ct):
    return jax.grad(lambda u, e: jnp.sum(fn(u, e) * ct), argnums=(0, 1))(u, e)


# --------------------------------------------------------------------------------------------------
# (a)-(d) for gspmm.
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("graph_name, op, reduce, u_shape, e_shape", _on_graphs(SPMM_CASES, SPMM_VARIANT_CASES))
def test_gspmm_matches_references(x64, graph_name, op, reduce, u_shape, e_shape):
    graph = GRAPHS[graph_name]
    u, e = _spmm_operands(graph_name, op, reduce, u_shape, e_shape)
    out = _call_gspmm(graph, op, reduce, u, e)
    np.testing.assert_allclose(out, numpy_loop_gspmm(graph, op, reduce, u, e), rtol=1e-12, atol=1e-12)

    ct = _cotangent(out.shape, 7)
    grads = _loss_grads(lambda u, e: _call_gspmm(graph, op, reduce, u, e), u, e, ct)
    references = [autodiff_gspmm]
    if reduce in ("sum", "mean"):
        references.append(dense_gspmm)
    if reduce == "sum" and op in ("copy_u", "u_mul_e"):
        references.append(lambda g, op, reduce, u, e: dense_adjacency_matmul(g, u, e if op == "u_mul_e" else None))
    for reference in references:
        ref = functools.partial(reference, graph, op, reduce)
        np.testing.assert_allclose(out, ref(u, e), rtol=1e-12, atol=1e-12)
        for got, want in zip(grads, _loss_grads(ref, u, e, ct)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op, reduce, u_shape, e_shape", SPMM_CASES)
def test_gspmm_check_grads(x64, op, reduce, u_shape, e_shape):
    graph_name = "union"
    graph = GRAPHS[graph_name]
    u, e = _spmm_operands(graph_name, op, reduce, u_shape, e_shape)
    args = tuple(x for x, used in ((u, _uses_u(op)), (e, _uses_e(op))) if used)

    def fn(*args):
        u, e = (args if len(args) == 2 else (args[0], None) if _uses_u(op) else (None, args[0]))
        return gspmm(graph, op, reduce, u, e)

    check_grads(fn, args, order=2, modes=("rev",), eps=EPS)
    check_grads(fn, args, order=1, modes=("fwd",), eps=EPS)


@pytest.mark.parametrize("op, reduce, u_shape, e_shape", SPMM_VARIANT_CASES)
def test_gspmm_eager_jit_vmap_agree(x64, variant, op, reduce, u_shape, e_shape):
    # The graph is passed as an argument, so the pytree goes through jit and vmap too.
    graph_name = "union"
    u, e = _spmm_operands(graph_name, op, reduce, u_shape, e_shape)
    ct = _cotangent(_call_gspmm(GRAPHS[graph_name], op, reduce, u, e).shape, 11)

    def fn(graph, u, e, ct):
        out = _call_gspmm(graph, op, reduce, u, e)
        return out, _loss_grads(lambda u, e: _call_gspmm(graph, op, reduce, u, e), u, e, ct)

    expected = fn(GRAPHS[graph_name], u, e, ct)
    got = variant(fn, GRAPHS[graph_name], u, e, ct)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op, reduce, u_shape, e_shape", SPMM_VARIANT_CASES)
def test_gspmm_vmap_over_batches_equals_loop(x64, op, reduce, u_shape, e_shape):
    graph_name = "union"
    graph = GRAPHS[graph_name]
    u, e = _spmm_operands(graph_name, op, reduce, u_shape, e_shape)
    u_batch, e_batch = _spmm_operands(graph_name, op, reduce, u_shape, e_shape, batch=(BATCH,))

    def value_and_edge_grad(u, e):
        return jax.value_and_grad(lambda e: jnp.sum(_call_gspmm(graph, op, reduce, u, e) ** 2))(e)

    for axes, batch_args in (((None, 0), (u, e_batch)), ((0, None), (u_batch, e))):
        got = jax.vmap(value_and_edge_grad, in_axes=axes)(*batch_args)
        looped = [value_and_edge_grad(*(a if ax is None else a[i] for a, ax in zip(batch_args, axes)))
                  for i in range(BATCH)]
        for k in range(2):
            np.testing.assert_allclose(got[k], np.stack([item[k] for item in looped]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("graph_name", GRAPH_NAMES)
def test_spmm_equals_dense_matmul_and_vmaps_over_edge_weights(x64, graph_name):
    graph = GRAPHS[graph_name]
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(graph.n_nodes, F)))
    weights = jnp.asarray(rng.uniform(0.5, 2.0, size=(BATCH, graph.n_edges)))
    dense = [graph.with_edge_weight(w).to_dense() for w in weights]
    np.testing.assert_allclose(spmm(graph, x), graph.to_dense() @ x, rtol=1e-12, atol=1e-12)
    got = jax.vmap(lambda w: spmm(graph, x, w))(weights)
    np.testing.assert_allclose(got, np.stack([a @ x for a in dense]), rtol=1e-12, atol=1e-12)
    grads = jax.vmap(jax.grad(lambda w: jnp.sum(spmm(graph, x, w) ** 2)))(weights)
    looped = [jax.grad(lambda w: jnp.sum(dense_adjacency_matmul(graph, x, w) ** 2))(w) for w in weights]
    np.testing.assert_allclose(grads, np.stack(looped), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Ties in max/min: explicit, since the suite above avoids them.
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduce", ["max", "min"])
@pytest.mark.parametrize("tie", ["split", "first"])
def test_gspmm_tied_extremum_routes_gradient_by_tie_rule(x64, reduce, tie):
    # Edges 0, 1, 2 all carry the same message 2.0 into node 3; edge 3 carries 1.0 (max) / 5.0 (min).
    graph = Graph.from_edges([0, 1, 2, 0], [3, 3, 3, 3], n_nodes=4)
    u = jnp.array([[1.0], [2.0], [4.0], [0.0]])
    loser = 1.0 if reduce == "max" else 5.0
    e = jnp.array([2.0, 1.0, 0.5, loser])

    def loss(u, e):
        return gspmm(graph, "u_mul_e", reduce, u, e, tie=tie)[3, 0]

    assert loss(u, e) == 2.0
    du, de = jax.grad(loss, argnums=(0, 1))(u, e)
    share = np.array([1 / 3, 1 / 3, 1 / 3, 0.0]) if tie == "split" else np.array([1.0, 0.0, 0.0, 0.0])
    # d(u[s] e) / de = u[s], d(u[s] e) / du[s] = e, each weighted by the edge's share.
    np.testing.assert_allclose(de, share * np.array([1.0, 2.0, 4.0, 0.0]), rtol=1e-12)
    np.testing.assert_allclose(du[:, 0], [share[0] * 2.0 + share[3] * loser, share[1] * 1.0,
                                          share[2] * 0.5, 0.0], rtol=1e-12)
    ref = jax.grad(lambda u, e: autodiff_gspmm(graph, "u_mul_e", reduce, u, e)[3, 0], argnums=(0, 1))(u, e)
    if tie == "split":  # JAX's own segment_max/min also splits ties equally
        np.testing.assert_allclose(de, ref[1], rtol=1e-12)
        np.testing.assert_allclose(du, ref[0], rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# gsddmm.
# --------------------------------------------------------------------------------------------------
def _sddmm_operands(graph_name, op, lhs_target, rhs_target, lhs_shape, rhs_shape, batch=()):
    """lhs ~ N(0, 1); rhs ~ U[1, 2] so that div is well conditioned."""
    graph = GRAPHS[graph_name]
    rng = np.random.default_rng(_seed("sddmm", graph_name, op, lhs_target, rhs_target, lhs_shape, batch))
    rows = lambda target: graph.n_edges if target == "e" else graph.n_nodes  # noqa: E731
    lhs = jnp.asarray(rng.normal(size=batch + (rows(lhs_target),) + lhs_shape))
    rhs = jnp.asarray(rng.uniform(1.0, 2.0, size=batch + (rows(rhs_target),) + rhs_shape))
    return lhs, rhs


def autodiff_gsddmm(graph, op, lhs, rhs, lhs_target, rhs_target):
    """Plain autodiff: gather both operands per edge, apply op (left-aligned), zero the padding."""
    index = {"u": graph.senders, "v": graph.receivers}
    left = lhs[index[lhs_target]] if lhs_target != "e" else lhs
    right = rhs[index[rhs_target]] if rhs_target != "e" else rhs
    if op in ("copy_lhs", "copy_rhs"):
        out = left if op == "copy_lhs" else right
    else:
        rank = max(left.ndim, right.ndim)
        left, right = _align(left, rank), _align(right, rank)
        out = {"add": left + right, "sub": left - right, "mul": left * right, "div": left / right,
               "dot": jnp.sum(left * right, axis=-1, keepdims=True)}[op]
    return jnp.where(_align(jnp.asarray(_edge_mask(graph)), out.ndim), out, 0.0)


def numpy_loop_gsddmm(graph, op, lhs, rhs, lhs_target, rhs_target):
    lhs, rhs = np.asarray(lhs), np.asarray(rhs)
    senders, receivers, mask = np.asarray(graph.senders), np.asarray(graph.receivers), _edge_mask(graph)
    rows = []
    for k in range(graph.n_edges):
        at = {"u": senders[k], "v": receivers[k], "e": k}
        a, b = lhs[at[lhs_target]], rhs[at[rhs_target]]
        rank = max(a.ndim, b.ndim)
        a2, b2 = a.reshape(a.shape + (1,) * (rank - a.ndim)), b.reshape(b.shape + (1,) * (rank - b.ndim))
        value = {"add": lambda: a2 + b2, "sub": lambda: a2 - b2, "mul": lambda: a2 * b2,
                 "div": lambda: a2 / b2, "dot": lambda: np.sum(a2 * b2, axis=-1, keepdims=True),
                 "copy_lhs": lambda: a, "copy_rhs": lambda: b}[op]()
        rows.append(value if mask[k] else np.zeros_like(value))
    return np.stack(rows) if rows else None


def dense_sampled_dot(graph, lhs, rhs, lhs_target, rhs_target):
    """SDDMM as a sampled dense product: P = lhs @ rhs^T (all node pairs), read at the edges."""
    product = lhs @ rhs.T
    index = {"u": graph.senders, "v": graph.receivers}
    out = product[index[lhs_target], index[rhs_target]][:, None]
    return jnp.where(jnp.asarray(_edge_mask(graph))[:, None], out, 0.0)


@pytest.mark.parametrize("graph_name, op, lhs_target, rhs_target, lhs_shape, rhs_shape",
                         _on_graphs(SDDMM_CASES, SDDMM_VARIANT_CASES))
def test_gsddmm_matches_references(x64, graph_name, op, lhs_target, rhs_target, lhs_shape, rhs_shape):
    graph = GRAPHS[graph_name]
    lhs, rhs = _sddmm_operands(graph_name, op, lhs_target, rhs_target, lhs_shape, rhs_shape)
    call = lambda lhs, rhs: gsddmm(graph, op, lhs, rhs, lhs_target, rhs_target)  # noqa: E731
    out = call(lhs, rhs)
    loop = numpy_loop_gsddmm(graph, op, lhs, rhs, lhs_target, rhs_target)
    if loop is not None:
        np.testing.assert_allclose(out, loop, rtol=1e-12, atol=1e-12)
    else:
        assert out.shape[0] == 0
    references = [lambda l, r: autodiff_gsddmm(graph, op, l, r, lhs_target, rhs_target)]
    if op == "dot" and "e" not in (lhs_target, rhs_target) and lhs_shape == rhs_shape == (F,):
        references.append(lambda l, r: dense_sampled_dot(graph, l, r, lhs_target, rhs_target))
    ct = _cotangent(out.shape, 13)
    grads = _loss_grads(call, lhs, rhs, ct)
    for reference in references:
        np.testing.assert_allclose(out, reference(lhs, rhs), rtol=1e-12, atol=1e-12)
        for got, want in zip(grads, _loss_grads(reference, lhs, rhs, ct)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op, lhs_target, rhs_target, lhs_shape, rhs_shape", SDDMM_CASES)
def test_gsddmm_check_grads(x64, op, lhs_target, rhs_target, lhs_shape, rhs_shape):
    graph_name = "union"
    graph = GRAPHS[graph_name]
    lhs, rhs = _sddmm_operands(graph_name, op, lhs_target, rhs_target, lhs_shape, rhs_shape)
    fn = lambda lhs, rhs: gsddmm(graph, op, lhs, rhs, lhs_target, rhs_target)  # noqa: E731
    check_grads(fn, (lhs, rhs), order=2, modes=("rev",), eps=EPS)
    check_grads(fn, (lhs, rhs), order=1, modes=("fwd",), eps=EPS)


@pytest.mark.parametrize("op, lhs_target, rhs_target, lhs_shape, rhs_shape", SDDMM_VARIANT_CASES)
def test_gsddmm_eager_jit_vmap_agree(x64, variant, op, lhs_target, rhs_target, lhs_shape, rhs_shape):
    lhs, rhs = _sddmm_operands("union", op, lhs_target, rhs_target, lhs_shape, rhs_shape)
    graph = GRAPHS["union"]
    ct = _cotangent(gsddmm(graph, op, lhs, rhs, lhs_target, rhs_target).shape, 17)

    def fn(graph, lhs, rhs, ct):
        call = lambda lhs, rhs: gsddmm(graph, op, lhs, rhs, lhs_target, rhs_target)  # noqa: E731
        return call(lhs, rhs), _loss_grads(call, lhs, rhs, ct)

    expected = fn(graph, lhs, rhs, ct)
    for a, b in zip(jax.tree.leaves(variant(fn, graph, lhs, rhs, ct)), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op, lhs_target, rhs_target, lhs_shape, rhs_shape", SDDMM_VARIANT_CASES)
def test_gsddmm_vmap_over_batches_equals_loop(x64, op, lhs_target, rhs_target, lhs_shape,
                                              rhs_shape):
    graph_name = "union"
    graph = GRAPHS[graph_name]
    lhs, rhs = _sddmm_operands(graph_name, op, lhs_target, rhs_target, lhs_shape, rhs_shape)
    lhs_b, rhs_b = _sddmm_operands(graph_name, op, lhs_target, rhs_target, lhs_shape, rhs_shape, (BATCH,))
    fn = lambda lhs, rhs: gsddmm(graph, op, lhs, rhs, lhs_target, rhs_target)  # noqa: E731
    for axes, args in (((0, None), (lhs_b, rhs)), ((None, 0), (lhs, rhs_b))):
        got = jax.vmap(fn, in_axes=axes)(*args)
        looped = [fn(*(a if ax is None else a[i] for a, ax in zip(args, axes))) for i in range(BATCH)]
        np.testing.assert_allclose(got, np.stack(looped), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# edge_softmax.
# --------------------------------------------------------------------------------------------------
def _logits(graph_name, trailing, batch=()):
    rng = np.random.default_rng(_seed("softmax", graph_name, trailing, batch))
    return jnp.asarray(rng.normal(size=batch + (GRAPHS[graph_name].n_edges,) + trailing))


def dense_masked_softmax(graph, logits):
    """Softmax over each receiver's row of a dense (N, E) score matrix, masked to its live in-edges."""
    member = (jax.nn.one_hot(graph.receivers, graph.n_nodes, dtype=bool).T
              & jnp.asarray(_edge_mask(graph))[None, :])  # (N, E)
    member = _align(member, logits.ndim + 1)
    scores = jnp.where(member, logits[None], 0.0)
    top = jnp.max(jnp.where(member, scores, -jnp.inf), axis=1, keepdims=True, initial=-jnp.inf)
    top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
    exp = jnp.where(member, jnp.exp(scores - top), 0.0)
    total = jnp.sum(exp, axis=1, keepdims=True)
    probs = exp / jnp.where(total > 0, total, 1.0)  # (N, E, ...)
    return jnp.sum(jnp.where(member, probs, 0.0), axis=0)  # each edge sits in exactly one row


def autodiff_edge_softmax(graph, logits):
    live = _align(jnp.asarray(_edge_mask(graph)), logits.ndim)
    top = jax.ops.segment_max(jnp.where(live, logits, -jnp.inf), graph.receivers, graph.n_nodes)
    top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
    exp = jnp.where(live, jnp.exp(logits - top[graph.receivers]), 0.0)
    total = jax.ops.segment_sum(exp, graph.receivers, graph.n_nodes)[graph.receivers]
    return exp / jnp.where(total > 0, total, 1.0)


@pytest.mark.parametrize("graph_name", GRAPH_NAMES)
@pytest.mark.parametrize("trailing", SOFTMAX_SHAPES.values(), ids=SOFTMAX_SHAPES.keys())
def test_edge_softmax_matches_references(x64, graph_name, trailing):
    graph = GRAPHS[graph_name]
    logits = _logits(graph_name, trailing)
    out = edge_softmax(graph, logits)
    ct = _cotangent(out.shape, 19)
    grad = jax.grad(lambda x: jnp.sum(edge_softmax(graph, x) * ct))(logits)
    for reference in (dense_masked_softmax, autodiff_edge_softmax):
        np.testing.assert_allclose(out, reference(graph, logits), rtol=1e-12, atol=1e-12)
        want = jax.grad(lambda x: jnp.sum(reference(graph, x) * ct))(logits)
        np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("trailing", SOFTMAX_SHAPES.values(), ids=SOFTMAX_SHAPES.keys())
def test_edge_softmax_check_grads(x64, trailing):
    graph_name = "union"
    graph = GRAPHS[graph_name]
    fn = functools.partial(edge_softmax, graph)
    check_grads(fn, (_logits(graph_name, trailing),), order=2, modes=("rev",), eps=EPS)
    check_grads(fn, (_logits(graph_name, trailing),), order=1, modes=("fwd",), eps=EPS)


@pytest.mark.parametrize("trailing", SOFTMAX_SHAPES.values(), ids=SOFTMAX_SHAPES.keys())
def test_edge_softmax_eager_jit_vmap_agree(x64, variant, trailing):
    logits = _logits("union", trailing)
    ct = _cotangent(logits.shape, 23)

    def fn(graph, logits, ct):
        return jax.value_and_grad(lambda x: jnp.sum(edge_softmax(graph, x) * ct))(logits)

    expected = fn(GRAPHS["union"], logits, ct)
    for a, b in zip(variant(fn, GRAPHS["union"], logits, ct), expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("trailing", SOFTMAX_SHAPES.values(), ids=SOFTMAX_SHAPES.keys())
def test_edge_softmax_vmap_over_batches_equals_loop(x64, trailing):
    graph_name = "union"
    graph = GRAPHS[graph_name]
    batch = _logits(graph_name, trailing, (BATCH,))
    fn = jax.value_and_grad(lambda x: jnp.sum(edge_softmax(graph, x) ** 3))
    got = jax.vmap(fn)(batch)
    looped = [fn(x) for x in batch]
    for k in range(2):
        np.testing.assert_allclose(got[k], np.stack([item[k] for item in looped]), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# gcn_norm and row_norm.
# --------------------------------------------------------------------------------------------------
NORMS = {
    "gcn_loops": lambda g, w: gcn_norm(g, w),
    "gcn_no_loops": lambda g, w: gcn_norm(g, w, add_self_loops=False),
    "gcn_fill2": lambda g, w: gcn_norm(g, w, fill=2.0),
    "row": lambda g, w: row_norm(g, w),
}


def _inverse_power(degree, power):
    positive = degree > 0
    return jnp.where(positive, jnp.where(positive, degree, 1.0) ** -power, 0.0)


def dense_norm(name, graph, w):
    """The normalised dense adjacency: D^-1/2 (A + fill I) D^-1/2, or D^-1 A; 1/0 is taken as 0."""
    live = jnp.asarray(_edge_mask(graph), w.dtype)
    adjacency = jnp.zeros((graph.n_nodes, graph.n_nodes), w.dtype).at[graph.receivers, graph.senders].add(w * live)
    if name == "row":
        return _inverse_power(adjacency.sum(1), 1.0)[:, None] * adjacency
    if name != "gcn_no_loops":
        real = jnp.ones(graph.n_nodes) if graph.node_mask is None else jnp.asarray(graph.node_mask, w.dtype)
        adjacency = adjacency + (2.0 if name == "gcn_fill2" else 1.0) * jnp.diag(real)
    scale = _inverse_power(adjacency.sum(1), 0.5)
    return scale[:, None] * adjacency * scale[None, :]


def _weights(graph_name, batch=()):
    rng = np.random.default_rng(_seed("norm", graph_name, batch))
    return jnp.asarray(rng.uniform(1.0, 2.0, size=batch + (GRAPHS[graph_name].n_edges,)))


@pytest.mark.parametrize("graph_name", GRAPH_NAMES)
@pytest.mark.parametrize("norm", NORMS)
def test_norms_match_dense_reference_with_gradients_through_degrees(x64, graph_name, norm):
    graph = GRAPHS[graph_name]
    w = _weights(graph_name)
    x = _cotangent((graph.n_nodes, F), 29)
    ct = _cotangent((graph.n_nodes, F), 31)
    np.testing.assert_allclose(NORMS[norm](graph, w).to_dense(), dense_norm(norm, graph, w), rtol=1e-12,
                               atol=1e-12)
    loss = lambda w, x: jnp.sum(spmm(NORMS[norm](graph, w), x) * ct)  # noqa: E731
    dense_loss = lambda w, x: jnp.sum((dense_norm(norm, graph, w) @ x) * ct)  # noqa: E731
    for got, want in zip(jax.grad(loss, argnums=(0, 1))(w, x), jax.grad(dense_loss, argnums=(0, 1))(w, x)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    check_grads(lambda w: NORMS[norm](graph, w).edge_weight, (w,), order=2, modes=("rev",), eps=EPS)
    check_grads(lambda w: NORMS[norm](graph, w).edge_weight, (w,), order=1, modes=("fwd",), eps=EPS)


@pytest.mark.parametrize("norm", NORMS)
def test_norms_eager_jit_vmap_agree(x64, variant, norm):
    graph = GRAPHS["union"]
    w, x = _weights("union"), _cotangent((graph.n_nodes, F), 37)

    def fn(graph, w, x):
        return jax.value_and_grad(lambda w: jnp.sum(spmm(NORMS[norm](graph, w), x) ** 2))(w)

    for a, b in zip(variant(fn, graph, w, x), fn(graph, w, x)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_norms_vmap_over_edge_weights_equals_loop(x64, norm):
    graph_name = "union"
    graph = GRAPHS[graph_name]
    batch, x = _weights(graph_name, (BATCH,)), _cotangent((graph.n_nodes, F), 41)
    fn = jax.value_and_grad(lambda w: jnp.sum(spmm(NORMS[norm](graph, w), x) ** 2))
    got = jax.vmap(fn)(batch)
    looped = [fn(w) for w in batch]
    for k in range(2):
        np.testing.assert_allclose(got[k], np.stack([item[k] for item in looped]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", ["gcn_no_loops", "row"])
def test_zero_degree_gives_zero_weight_and_zero_finite_gradient(x64, norm):
    # Weights into node 0 are driven to 0 and there are no self loops, so deg[0] = 0. _norm.py defines
    # the inverse power of a zero degree, and its derivative, as 0: the edges into node 0 get weight 0
    # and gradient 0, and every other value and gradient stays finite.
    graph = GRAPHS["duplicates_self_loops"]
    into_zero = np.asarray(graph.receivers) == 0
    assert into_zero.any()
    w = jnp.where(jnp.asarray(into_zero), 0.0, _weights("duplicates_self_loops"))
    x = _cotangent((graph.n_nodes, F), 43)
    normed = NORMS[norm](graph, w).edge_weight
    grad = jax.grad(lambda w: jnp.sum(spmm(NORMS[norm](graph, w), x) ** 2))(w)
    assert np.isfinite(normed).all() and np.isfinite(grad).all()
    np.testing.assert_array_equal(normed[into_zero], 0.0)
    np.testing.assert_array_equal(grad[into_zero], 0.0)
    np.testing.assert_allclose(NORMS[norm](graph, w).to_dense(), dense_norm(norm, graph, w), rtol=1e-12)
    hessian = jax.hessian(lambda w: jnp.sum(NORMS[norm](graph, w).edge_weight ** 2))(w)
    assert np.isfinite(hessian).all()
