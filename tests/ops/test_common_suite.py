"""Common suite: every op x reducer x broadcast shape on the awkward graphs.

Each case is checked three ways:

(a) values and gradients against independent references written here: a NumPy loop, a dense
    formulation (``A @ X``, incidence matrices, a masked dense softmax) and plain autodiff
    (gather + ``jax.ops.segment_*``), on the union of the awkward graphs (every case) and on a graph
    with zero edges (the widest broadcast of each op: E = 0 gives zero-size edge arrays);
(b) ``jax.test_util.check_grads`` in float64, reverse mode to order 2 and forward mode to order 1, on
    the union (for gspmm, gsddmm and edge_softmax without its first-order VJP check: (a) already
    compares that VJP, at a random cotangent, exactly with plain autodiff and the dense references);
(c) ``jit(vmap(...))`` of all the widest-broadcast cases of an op, over a batch of each operand in turn
    (the others fixed), gives item by item the eager numbers.

Compilation dominates the cost. (a) and (b) run eagerly, op by op, on the same graph and operand
shapes, so all cases share every kernel compiled for those shapes (measured: check_grads after (a) on
the union costs about half of check_grads on a separate tiny graph, whose shapes compile anew); the
indices are concrete there, so the eager validation runs too; (a)'s gspmm and edge_softmax references
run as one compiled program per graph. (c) compiles one program per op family
and batched operand, with the graph as an argument, so the Graph pytree goes through jit and vmap as
well. Each test sweeps all its cases and names every failing case in its message.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads, check_jvp, check_vjp

import jgrad
from jgrad import Graph
from jgrad.ops import EDGE_OPS, MESSAGE_OPS, edge_softmax, gcn_norm, gsddmm, gspmm, row_norm, spmm

N, E, F, H = 8, 20, 3, 2
REDUCERS = ("sum", "mean", "max", "min")
BATCH = 3
EPS = 1e-6  # finite-difference step for check_grads in float64; inputs have no ties closer than this
TOL = dict(rtol=1e-12, atol=1e-12)


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


def _zero_edges(n_nodes=N) -> Graph:
    return Graph.from_edges(np.zeros((0,), np.int32), np.zeros((0,), np.int32), n_nodes)


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
# Values and gradients against the references run on the union and on a graph with zero edges
# (E = 0 gives zero-size edge arrays, which no union can show); the rest runs on the union. That graph
# has the union's node count, so that its node-shaped operations reuse the kernels compiled for the union.
GRAPHS["zero_edges"] = _zero_edges(GRAPHS["union"].n_nodes)
GRAPH_NAMES = ("union", "zero_edges")


def _edge_mask(graph: Graph) -> np.ndarray:
    return np.ones(graph.n_edges, bool) if graph.edge_mask is None else np.asarray(graph.edge_mask)


def _live(graph: Graph) -> jax.Array:
    """The edge mask as a (possibly traced) array, for the references that run inside jit."""
    return jnp.ones(graph.n_edges, bool) if graph.edge_mask is None else graph.edge_mask


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
    assert GRAPHS["zero_edges"].n_edges == 0 and GRAPHS["zero_edges"].n_nodes == union.n_nodes
    g = GRAPHS["padded"]
    assert (g.n_nodes, g.n_edges) == (N, E) and not _edge_mask(g).all() and not np.asarray(g.node_mask).all()


# --------------------------------------------------------------------------------------------------
# Case tables: case id -> the op's static arguments and operand shapes.
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
    cases = {}
    for op, reduce in itertools.product(MESSAGE_OPS, REDUCERS):
        for name, (u_shape, e_shape) in SPMM_SHAPES.items():
            if op == "copy_u":
                if e_shape not in ((), (H, 1)):
                    continue
                name = name.split("-")[0]
            if op == "copy_e":
                name = name.split("-")[1]
            cases[f"{op}-{reduce}-{name}"] = (op, reduce, u_shape, e_shape)
    return cases


SPMM_CASES = _spmm_cases()

SDDMM_TARGETS = (("u", "v"), ("v", "u"), ("u", "e"), ("e", "v"), ("u", "u"))
SDDMM_SHAPES = {"F-F": ((F,), (F,)), "HF-H1": ((H, F), (H, 1))}
SDDMM_CASES = {
    f"{op}-{lt}{rt}-{name}": (op, lt, rt, ls, rs)
    for op in EDGE_OPS
    for lt, rt in SDDMM_TARGETS
    for name, (ls, rs) in SDDMM_SHAPES.items()
}

SOFTMAX_CASES = {"E": (), "EH": (H,)}

NORMS = {
    "gcn_loops": lambda g, w: gcn_norm(g, w),
    "gcn_no_loops": lambda g, w: gcn_norm(g, w, add_self_loops=False),
    "gcn_fill2": lambda g, w: gcn_norm(g, w, fill=2.0),
    "row": lambda g, w: row_norm(g, w),
}

# (c) and the graph with zero edges run every op x reducer (every op x target pair) on the widest
# broadcast, u (N, H, F) with e (E, H, 1); (a) and (b) on the union cover every shape.
SPMM_WIDEST = tuple(case for case, (_, _, u_shape, e_shape) in SPMM_CASES.items() if (u_shape, e_shape) == ((H, F), (H, 1)))
SDDMM_WIDEST = tuple(case for case, spec in SDDMM_CASES.items() if spec[3:] == ((H, F), (H, 1)))


def test_case_tables_cover_every_op_reducer_and_shape():
    assert {(op, reduce) for op, reduce, _, _ in SPMM_CASES.values()} == set(itertools.product(MESSAGE_OPS, REDUCERS))
    assert len(SPMM_CASES) == 4 * (2 + 5 * (len(MESSAGE_OPS) - 1))
    assert {case[0] for case in SDDMM_CASES.values()} == set(EDGE_OPS)
    assert len(SDDMM_CASES) == len(EDGE_OPS) * len(SDDMM_TARGETS) * len(SDDMM_SHAPES)
    assert {SPMM_CASES[case][:2] for case in SPMM_WIDEST} == set(itertools.product(MESSAGE_OPS, REDUCERS))
    assert {SDDMM_CASES[case][:3] for case in SDDMM_WIDEST} == {(op, *pair) for op in EDGE_OPS for pair in SDDMM_TARGETS}


# --------------------------------------------------------------------------------------------------
# Shared machinery.
# --------------------------------------------------------------------------------------------------
def _seed(*parts) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate("/".join(map(str, parts)))) % (2**31)


def _uses_u(op):
    return op != "copy_e"


def _uses_e(op):
    return op != "copy_u"


def _align(x, ndim):
    """Left-aligned broadcast: pad x with trailing unit axes to rank ndim."""
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def _cotangent(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


def _value_and_grads(fn, args, ct):
    """``fn(*args)`` and the gradient of ``sum(fn(*args) * ct)`` with respect to every argument."""
    out, pullback = jax.vjp(fn, *args)
    return out, pullback(ct)


def _evaluate_with_compiled_references(evaluate, graph, operands, cts):
    """``evaluate``'s results for every case: jgrad's op eagerly, case by case, and every reference
    (test code, independent of jgrad) in one compiled program for all the cases of the graph.

    Run eagerly, the references compile dozens of small kernels of their own per graph shape; as one
    program, gspmm's and edge_softmax's compile faster (gsddmm's and the norms' references did not, and
    stay eager).
    """
    results = evaluate(graph, operands, cts, references=False)
    for case, by_name in _compiled_references(evaluate, graph, operands, cts).items():
        assert not by_name.keys() & results[case].keys(), case
        results[case].update(by_name)
    return results


@functools.partial(jax.jit, static_argnums=0)
def _compiled_references(evaluate, graph, operands, cts):
    return evaluate(graph, operands, cts, jgrad=False)


class Mismatches:
    """Collects every failing comparison, each named by its case, and fails once at the end."""

    def __init__(self):
        self.found = []

    def close(self, got, want, what, tolerance=TOL):
        try:
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), err_msg=what, **tolerance)
        except AssertionError as error:
            self.found.append(str(error).strip())

    def check(self):
        assert not self.found, f"{len(self.found)} mismatches:\n" + "\n".join(self.found)


def _compare_with_references(results, label):
    """``results[case]`` maps "jgrad" and each reference to ``(out, grads)``: they must all agree."""
    mismatches = Mismatches()
    for case, by_impl in results.items():
        got_out, got_grads = by_impl["jgrad"]
        assert len(by_impl) > 1, case  # at least one reference per case
        for name, (out, grads) in by_impl.items():
            if name == "jgrad":
                continue
            for k, (got, want) in enumerate(zip(jax.tree.leaves(got_out), jax.tree.leaves(out), strict=True)):
                mismatches.close(got, want, f"{label} {case}: value {k} vs {name}")
            for k, (got, want) in enumerate(zip(got_grads, grads, strict=True)):
                mismatches.close(got, want, f"{label} {case}: gradient of argument {k} vs {name}")
    mismatches.check()


def _compare_trees(got, want, label):
    mismatches = Mismatches()
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want), strict=True):
        mismatches.close(a, b, f"{label} {jax.tree_util.keystr(path)}")
    mismatches.check()


def _vjp_of_output(fn):
    """``args -> vjp(fn, *args)[1](fn(*args))``: the function whose VJP ``check_grads`` checks at order 2."""

    def pulled_back(*args):
        out, pullback = jax.vjp(fn, *args)
        return pullback(out)

    return pulled_back


def _check_grads_of_cases(fns, args, first_order_vjp=True):
    """``check_grads`` of every case ``fns[case](*args[case])``: reverse mode to order 2, forward to order 1.

    With ``first_order_vjp=False`` the reverse-mode check starts at order 2: ``check_vjp`` of the function
    ``check_grads`` builds for that order, without its first-order VJP check. For ops whose (a) compares
    exactly what that check compares, the VJP at a random output cotangent, with plain autodiff (it was
    about 20% of the gspmm sweep's CPU time). Eager, case by case (cases of equal shapes share the
    compiled kernels), so that each failure names its case and is judged at the tolerance of that case
    alone.
    """
    failing = []
    for case, fn in fns.items():
        try:
            if first_order_vjp:
                check_grads(fn, args[case], order=2, modes=("rev",), eps=EPS)
            else:
                second_order = _vjp_of_output(fn)
                check_vjp(second_order, functools.partial(jax.vjp, second_order), args[case], eps=EPS,
                          err_msg="VJP of VJP")
            check_jvp(fn, functools.partial(jax.jvp, fn), args[case], eps=EPS, err_msg="JVP")
        except AssertionError as error:
            failing.append(f"{case}: {error}")
    assert not failing, "check_grads failed for:\n" + "\n".join(failing)


def _jit_and_vmap_agree(evaluate, graph, operands, batches, cts, label):
    """(c) for the cases in ``operands``: ``jit(vmap(evaluate))`` over each operand's batch in turn
    (the other operands fixed) gives, item by item, the eager numbers of ``evaluate`` on that item.

    ``operands[case]`` is a tuple of unbatched arguments and ``batches[case]`` the same with a leading axis
    of size BATCH. The eager loop runs on the union's shapes, whose kernels (a) has compiled already.
    """
    program = functools.partial(evaluate, references=False)
    n_args = len(next(iter(operands.values())))
    for k in range(n_args):
        batched = {case: tuple(b if j == k else a for j, (a, b) in enumerate(zip(operands[case], batches[case])))
                   for case in operands}
        axes = {case: tuple(0 if j == k else None for j in range(n_args)) for case in operands}
        got = jax.jit(jax.vmap(program, in_axes=(None, axes, None)))(graph, batched, cts)
        for i in range(BATCH):
            single = {case: tuple(a[i] if j == k else a for j, a in enumerate(args)) for case, args in batched.items()}
            _compare_trees(jax.tree.map(lambda leaf: leaf[i], got), program(graph, single, cts),  # noqa: B023
                           f"{label}: jit of vmap over argument {k} vs eager, item {i}")


# --------------------------------------------------------------------------------------------------
# gspmm.
# --------------------------------------------------------------------------------------------------
def _spmm_operands(graph_name, op, reduce, u_shape, e_shape, batch=()):
    """Float64 operands: u ~ N(0, 1), e ~ U[1, 2] (so u_div_e is well conditioned), no ties."""
    graph = GRAPHS[graph_name]
    rng = np.random.default_rng(_seed(graph_name, op, reduce, u_shape, e_shape, batch))
    u = jnp.asarray(rng.normal(size=batch + (graph.n_nodes,) + u_shape))
    e = jnp.asarray(rng.uniform(1.0, 2.0, size=batch + (graph.n_edges,) + e_shape))
    return u, e


def _spmm_out_shape(graph, op, reduce, u_shape, e_shape):
    """(N,) + u's trailing shape, into which every case's edge data broadcasts; (N,) + e's for copy_e."""
    return (graph.n_nodes,) + (e_shape if op == "copy_e" else u_shape)


def _call_gspmm(graph, op, reduce, u, e, tie="split"):
    return gspmm(graph, op, reduce, u if _uses_u(op) else None, e if _uses_e(op) else None, tie=tie)


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
    live = jnp.asarray(_live(graph), u.dtype)
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
    live = _align(jnp.asarray(_live(graph)), msg.ndim)
    count = jax.ops.segment_sum(jnp.asarray(_live(graph), msg.dtype), graph.receivers, n)
    count = _align(count, msg.ndim)
    if reduce in ("sum", "mean"):
        out = jax.ops.segment_sum(jnp.where(live, msg, 0.0), graph.receivers, n)
        return out / jnp.maximum(count, 1.0) if reduce == "mean" else out
    fill = -jnp.inf if reduce == "max" else jnp.inf
    segment = jax.ops.segment_max if reduce == "max" else jax.ops.segment_min
    out = segment(jnp.where(live, msg, fill), graph.receivers, n)
    return jnp.where(count > 0, out, 0.0)


def _spmm_implementations(op, reduce, references):
    """jgrad's gspmm and, with ``references``, every reference that applies: name -> f(graph, op, reduce, u, e)."""
    impls = {"jgrad": _call_gspmm}
    if references:
        impls["autodiff"] = autodiff_gspmm
        if reduce in ("sum", "mean"):
            impls["dense"] = dense_gspmm
        if reduce == "sum" and op in ("copy_u", "u_mul_e"):
            impls["dense_adjacency"] = lambda g, op, reduce, u, e: dense_adjacency_matmul(
                g, u, e if op == "u_mul_e" else None)
    return impls


def _spmm_evaluate(graph, operands, cts, references=True, jgrad=True):
    """Every case's value and gradients under jgrad (and every reference): case -> name -> (out, (du, de)).
    With ``jgrad=False``, the references alone."""
    results = {}
    for case, (u, e) in operands.items():
        op, reduce, _, _ = SPMM_CASES[case]
        results[case] = {name: _value_and_grads(functools.partial(fn, graph, op, reduce), (u, e), cts[case])
                         for name, fn in _spmm_implementations(op, reduce, references).items()
                         if jgrad or name != "jgrad"}
    return results


def _case_inputs(graph_name, table, widest, make_operands, out_shape):
    """Operands and cotangents for every case of one op family on one graph (float64): every case of
    ``table`` on the union, the ``widest`` ones on the graph with zero edges. ``out_shape(graph, *spec)`` is
    a case's output shape, which fixes the cotangent's (written out rather than traced with eval_shape:
    a trace of every case cost about 1 s; a wrong shape fails the pullback)."""
    graph = GRAPHS[graph_name]
    cases = {case: table[case] for case in (table if graph_name == "union" else widest)}
    operands = {case: make_operands(graph_name, *spec) for case, spec in cases.items()}
    cts = {case: _cotangent(out_shape(graph, *spec), _seed("ct", case)) for case, spec in cases.items()}
    return operands, cts


@functools.cache
def _spmm_inputs(graph_name):
    """Operands and cotangents for every gspmm case on one graph (see `_case_inputs`)."""
    return _case_inputs(graph_name, SPMM_CASES, SPMM_WIDEST, _spmm_operands, _spmm_out_shape)


@functools.cache
def _spmm_results(graph_name):
    """The inputs and every case's value and gradients under jgrad (eagerly) and the references (compiled)."""
    operands, cts = _spmm_inputs(graph_name)
    return operands, cts, _evaluate_with_compiled_references(_spmm_evaluate, GRAPHS[graph_name], operands, cts)


@pytest.mark.parametrize("graph_name", GRAPH_NAMES)
def test_gspmm_matches_references(x64, graph_name):
    graph = GRAPHS[graph_name]
    operands, _, results = _spmm_results(graph_name)
    mismatches = Mismatches()
    for case in operands:
        op, reduce, _, _ = SPMM_CASES[case]
        mismatches.close(results[case]["jgrad"][0], numpy_loop_gspmm(graph, op, reduce, *operands[case]),
                         f"{graph_name} {case}: value vs NumPy loop")
    mismatches.check()
    _compare_with_references(results, graph_name)


def test_gspmm_check_grads(x64):
    graph = GRAPHS["union"]
    fns = {case: functools.partial(_call_gspmm, graph, op, reduce) for case, (op, reduce, _, _) in SPMM_CASES.items()}
    _check_grads_of_cases(fns, {case: _spmm_operands("union", *spec) for case, spec in SPMM_CASES.items()},
                          first_order_vjp=False)


def test_gspmm_jit_of_vmap_over_node_and_edge_batches_gives_the_eager_numbers(x64):
    operands, cts = _spmm_inputs("union")
    operands = {case: operands[case] for case in SPMM_WIDEST}
    batches = {case: _spmm_operands("union", *SPMM_CASES[case], batch=(BATCH,)) for case in SPMM_WIDEST}
    _jit_and_vmap_agree(_spmm_evaluate, GRAPHS["union"], operands, batches, cts, "gspmm")


@jax.jit
def _spmm_with_edge_weights(graph, x, weights):
    """spmm with the graph's own weights, then vmapped over a batch of edge weights, with gradients."""
    loss = lambda w: jnp.sum(spmm(graph, x, w) ** 2)  # noqa: E731
    return spmm(graph, x), jax.vmap(lambda w: spmm(graph, x, w))(weights), jax.vmap(jax.grad(loss))(weights)


@pytest.mark.parametrize("graph_name", GRAPH_NAMES)
def test_spmm_equals_dense_matmul_and_vmaps_over_edge_weights(x64, graph_name):
    graph = GRAPHS[graph_name]
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(graph.n_nodes, F)))
    weights = jnp.asarray(rng.uniform(0.5, 2.0, size=(BATCH, graph.n_edges)))
    dense = [graph.with_edge_weight(w).to_dense() for w in weights]
    out, batched, grads = _spmm_with_edge_weights(graph, x, weights)
    np.testing.assert_allclose(out, graph.to_dense() @ x, **TOL)
    np.testing.assert_allclose(batched, np.stack([a @ x for a in dense]), **TOL)
    looped = jax.jit(jax.vmap(jax.grad(lambda w: jnp.sum(dense_adjacency_matmul(graph, x, w) ** 2))))(weights)
    np.testing.assert_allclose(grads, looped, **TOL)


# --------------------------------------------------------------------------------------------------
# Ties in max/min: explicit, since the suite above avoids them.
# --------------------------------------------------------------------------------------------------
TIE_GRAPH = Graph.from_edges([0, 1, 2, 0], [3, 3, 3, 3], n_nodes=4)


@jax.jit
def _tied_extremum_grads(u, e_max, e_min):
    """For max / min and each tie rule: (out[3, 0], d/du, d/de) under jgrad, and the plain-autodiff gradients."""
    results = {}
    for reduce, e in (("max", e_max), ("min", e_min)):
        ref = jax.grad(lambda u, e: autodiff_gspmm(TIE_GRAPH, "u_mul_e", reduce, u, e)[3, 0], argnums=(0, 1))(u, e)
        for tie in ("split", "first"):
            loss = lambda u, e: gspmm(TIE_GRAPH, "u_mul_e", reduce, u, e, tie=tie)[3, 0]  # noqa: B023, E731
            results[reduce, tie] = (loss(u, e), *jax.grad(loss, argnums=(0, 1))(u, e), *ref)
    return results


def test_gspmm_tied_extremum_routes_gradient_by_tie_rule(x64):
    # Edges 0, 1, 2 all carry the same message 2.0 into node 3; edge 3 carries 1.0 (max) / 5.0 (min).
    u = jnp.array([[1.0], [2.0], [4.0], [0.0]])
    losers = {"max": 1.0, "min": 5.0}
    results = _tied_extremum_grads(u, *(jnp.array([2.0, 1.0, 0.5, losers[r]]) for r in ("max", "min")))
    for (reduce, tie), (value, du, de, ref_du, ref_de) in results.items():
        what = f"{reduce}, tie={tie}"
        loser = losers[reduce]
        assert value == 2.0, what
        share = np.array([1 / 3, 1 / 3, 1 / 3, 0.0]) if tie == "split" else np.array([1.0, 0.0, 0.0, 0.0])
        # d(u[s] e) / de = u[s], d(u[s] e) / du[s] = e, each weighted by the edge's share.
        np.testing.assert_allclose(de, share * np.array([1.0, 2.0, 4.0, 0.0]), rtol=1e-12, err_msg=what)
        np.testing.assert_allclose(du[:, 0], [share[0] * 2.0 + share[3] * loser, share[1] * 1.0,
                                              share[2] * 0.5, 0.0], rtol=1e-12, err_msg=what)
        if tie == "split":  # JAX's own segment_max/min also splits ties equally
            np.testing.assert_allclose(de, ref_de, rtol=1e-12, err_msg=what)
            np.testing.assert_allclose(du, ref_du, rtol=1e-12, err_msg=what)


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


def _sddmm_out_shape(graph, op, lhs_target, rhs_target, lhs_shape, rhs_shape):
    """(E,) + the left-aligned broadcast of both trailing shapes (its last axis summed to 1 for dot)."""
    if op in ("copy_lhs", "copy_rhs"):
        return (graph.n_edges,) + (lhs_shape if op == "copy_lhs" else rhs_shape)
    rank = max(len(lhs_shape), len(rhs_shape))
    trailing = np.broadcast_shapes(*(shape + (1,) * (rank - len(shape)) for shape in (lhs_shape, rhs_shape)))
    return (graph.n_edges,) + (trailing[:-1] + (1,) if op == "dot" else trailing)


def _call_gsddmm(graph, op, lhs_target, rhs_target, lhs, rhs):
    return gsddmm(graph, op, lhs, rhs, lhs_target, rhs_target)


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
    return jnp.where(_align(jnp.asarray(_live(graph)), out.ndim), out, 0.0)


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
    return jnp.where(jnp.asarray(_live(graph))[:, None], out, 0.0)


def _sddmm_implementations(op, lhs_target, rhs_target, lhs_shape, rhs_shape, references):
    """jgrad's gsddmm and, with ``references``, every reference that applies: name -> f(graph, lhs, rhs)."""
    impls = {"jgrad": lambda g, l, r: _call_gsddmm(g, op, lhs_target, rhs_target, l, r)}
    if references:
        impls["autodiff"] = lambda g, l, r: autodiff_gsddmm(g, op, l, r, lhs_target, rhs_target)
        if op == "dot" and "e" not in (lhs_target, rhs_target) and lhs_shape == rhs_shape == (F,):
            impls["dense_sampled_dot"] = lambda g, l, r: dense_sampled_dot(g, l, r, lhs_target, rhs_target)
    return impls


def _sddmm_evaluate(graph, operands, cts, references=True):
    """Every case's value and gradients under jgrad (and every reference): case -> name -> (out, grads)."""
    results = {}
    for case, (lhs, rhs) in operands.items():
        impls = _sddmm_implementations(*SDDMM_CASES[case], references)
        results[case] = {name: _value_and_grads(functools.partial(fn, graph), (lhs, rhs), cts[case])
                         for name, fn in impls.items()}
    return results


@functools.cache
def _sddmm_inputs(graph_name):
    """Operands and cotangents for every gsddmm case on one graph (see `_case_inputs`)."""
    return _case_inputs(graph_name, SDDMM_CASES, SDDMM_WIDEST, _sddmm_operands, _sddmm_out_shape)


@functools.cache
def _sddmm_results(graph_name):
    """The inputs and, evaluated eagerly, every case's value and gradients under jgrad and the references."""
    operands, cts = _sddmm_inputs(graph_name)
    return operands, cts, _sddmm_evaluate(GRAPHS[graph_name], operands, cts)


@pytest.mark.parametrize("graph_name", GRAPH_NAMES)
def test_gsddmm_matches_references(x64, graph_name):
    graph = GRAPHS[graph_name]
    operands, _, results = _sddmm_results(graph_name)
    mismatches = Mismatches()
    for case in operands:
        op, lhs_target, rhs_target, _, _ = SDDMM_CASES[case]
        out = results[case]["jgrad"][0]
        loop = numpy_loop_gsddmm(graph, op, *operands[case], lhs_target, rhs_target)
        if loop is None:
            assert out.shape[0] == 0, case
        else:
            mismatches.close(out, loop, f"{graph_name} {case}: value vs NumPy loop")
    mismatches.check()
    _compare_with_references(results, graph_name)


def test_gsddmm_check_grads(x64):
    graph = GRAPHS["union"]
    fns = {case: functools.partial(_call_gsddmm, graph, *spec[:3]) for case, spec in SDDMM_CASES.items()}
    _check_grads_of_cases(fns, {case: _sddmm_operands("union", *spec) for case, spec in SDDMM_CASES.items()},
                          first_order_vjp=False)


def test_gsddmm_jit_of_vmap_over_lhs_and_rhs_batches_gives_the_eager_numbers(x64):
    operands, cts = _sddmm_inputs("union")
    operands = {case: operands[case] for case in SDDMM_WIDEST}
    batches = {case: _sddmm_operands("union", *SDDMM_CASES[case], batch=(BATCH,)) for case in SDDMM_WIDEST}
    _jit_and_vmap_agree(_sddmm_evaluate, GRAPHS["union"], operands, batches, cts, "gsddmm")


# --------------------------------------------------------------------------------------------------
# edge_softmax.
# --------------------------------------------------------------------------------------------------
def _logits(graph_name, trailing, batch=()):
    rng = np.random.default_rng(_seed("softmax", graph_name, trailing, batch))
    return jnp.asarray(rng.normal(size=batch + (GRAPHS[graph_name].n_edges,) + trailing))


def dense_masked_softmax(graph, logits):
    """Softmax over each receiver's row of a dense (N, E) score matrix, masked to its live in-edges."""
    member = (jax.nn.one_hot(graph.receivers, graph.n_nodes, dtype=bool).T
              & jnp.asarray(_live(graph))[None, :])  # (N, E)
    member = _align(member, logits.ndim + 1)
    scores = jnp.where(member, logits[None], 0.0)
    top = jnp.max(jnp.where(member, scores, -jnp.inf), axis=1, keepdims=True, initial=-jnp.inf)
    top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
    exp = jnp.where(member, jnp.exp(scores - top), 0.0)
    total = jnp.sum(exp, axis=1, keepdims=True)
    probs = exp / jnp.where(total > 0, total, 1.0)  # (N, E, ...)
    return jnp.sum(jnp.where(member, probs, 0.0), axis=0)  # each edge sits in exactly one row


def autodiff_edge_softmax(graph, logits):
    live = _align(jnp.asarray(_live(graph)), logits.ndim)
    top = jax.ops.segment_max(jnp.where(live, logits, -jnp.inf), graph.receivers, graph.n_nodes)
    top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
    exp = jnp.where(live, jnp.exp(logits - top[graph.receivers]), 0.0)
    total = jax.ops.segment_sum(exp, graph.receivers, graph.n_nodes)[graph.receivers]
    return exp / jnp.where(total > 0, total, 1.0)


def _softmax_evaluate(graph, operands, cts, references=True, jgrad=True):
    """case -> name -> (softmax, (d logits,)) under jgrad and, with ``references``, both references.
    With ``jgrad=False``, the references alone."""
    impls = {"jgrad": edge_softmax} if jgrad else {}
    if references:
        impls.update(dense=dense_masked_softmax, autodiff=autodiff_edge_softmax)
    return {case: {name: _value_and_grads(functools.partial(fn, graph), args, cts[case]) for name, fn in impls.items()}
            for case, args in operands.items()}


@functools.cache
def _softmax_inputs(graph_name):
    operands = {case: (_logits(graph_name, trailing),) for case, trailing in SOFTMAX_CASES.items()}
    cts = {case: _cotangent(args[0].shape, _seed("ct", case)) for case, args in operands.items()}
    return operands, cts


@functools.cache
def _softmax_results(graph_name):
    """The inputs and every case's value and gradients under jgrad (eagerly) and the references (compiled)."""
    operands, cts = _softmax_inputs(graph_name)
    return operands, cts, _evaluate_with_compiled_references(_softmax_evaluate, GRAPHS[graph_name], operands, cts)


@pytest.mark.parametrize("graph_name", GRAPH_NAMES)
def test_edge_softmax_matches_references(x64, graph_name):
    _compare_with_references(_softmax_results(graph_name)[2], graph_name)


def test_edge_softmax_check_grads(x64):
    fns = {case: functools.partial(edge_softmax, GRAPHS["union"]) for case in SOFTMAX_CASES}
    _check_grads_of_cases(fns, {case: (_logits("union", trailing),) for case, trailing in SOFTMAX_CASES.items()},
                          first_order_vjp=False)


def test_edge_softmax_jit_of_vmap_over_logits_gives_the_eager_numbers(x64):
    operands, cts = _softmax_inputs("union")
    batches = {case: (_logits("union", trailing, (BATCH,)),) for case, trailing in SOFTMAX_CASES.items()}
    _jit_and_vmap_agree(_softmax_evaluate, GRAPHS["union"], operands, batches, cts, "edge_softmax")


# --------------------------------------------------------------------------------------------------
# gcn_norm and row_norm.
# --------------------------------------------------------------------------------------------------
def _inverse_power(degree, power):
    positive = degree > 0
    return jnp.where(positive, jnp.where(positive, degree, 1.0) ** -power, 0.0)


def dense_norm(name, graph, w):
    """The normalised dense adjacency: D^-1/2 (A + fill I) D^-1/2, or D^-1 A; 1/0 is taken as 0."""
    live = jnp.asarray(_live(graph), w.dtype)
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


def _norm_operands(graph_name, norm, batch=()):
    """Edge weights ~ U[1, 2] and node features x ~ N(0, 1), shape (N, F)."""
    x = np.random.default_rng(_seed("x", graph_name, norm, batch)).normal(size=batch + (GRAPHS[graph_name].n_nodes, F))
    return _weights(graph_name, batch), jnp.asarray(x)


def _normalised(norm, graph, w, x):
    """The normalised adjacency as a dense (N, N) matrix and applied to x by spmm, shape (N, F)."""
    normed = NORMS[norm](graph, w)
    return normed.to_dense(), spmm(normed, x)


def _dense_normalised(norm, graph, w, x):
    adjacency = dense_norm(norm, graph, w)
    return adjacency, adjacency @ x


def _norm_evaluate(graph, operands, cts, references=True):
    """norm -> name -> ((dense adjacency, A x), (d w, d x)): gradients flow through the degrees."""
    impls = {"jgrad": _normalised, **({"dense": _dense_normalised} if references else {})}
    return {norm: {name: _value_and_grads(functools.partial(fn, norm, graph), args, cts[norm])
                   for name, fn in impls.items()}
            for norm, args in operands.items()}


@functools.cache
def _norm_inputs(graph_name):
    graph = GRAPHS[graph_name]
    operands = {norm: _norm_operands(graph_name, norm) for norm in NORMS}
    cts = {norm: (_cotangent((graph.n_nodes, graph.n_nodes), _seed("ct-dense", norm)),
                  _cotangent((graph.n_nodes, F), _seed("ct", norm))) for norm in NORMS}
    return operands, cts


@functools.cache
def _norm_results(graph_name):
    """The inputs and, evaluated eagerly, every case's value and gradients under jgrad and the references."""
    operands, cts = _norm_inputs(graph_name)
    return operands, cts, _norm_evaluate(GRAPHS[graph_name], operands, cts)


@pytest.mark.parametrize("graph_name", GRAPH_NAMES)
def test_norms_match_dense_reference_with_gradients_through_degrees(x64, graph_name):
    _compare_with_references(_norm_results(graph_name)[2], graph_name)


def test_norms_check_grads(x64):
    graph = GRAPHS["union"]
    fns = {norm: lambda w, norm=norm: NORMS[norm](graph, w).edge_weight for norm in NORMS}
    _check_grads_of_cases(fns, {norm: (_weights("union"),) for norm in NORMS})


def test_norms_jit_of_vmap_over_edge_weights_and_features_gives_the_eager_numbers(x64):
    operands, cts = _norm_inputs("union")
    batches = {norm: _norm_operands("union", norm, (BATCH,)) for norm in NORMS}
    _jit_and_vmap_agree(_norm_evaluate, GRAPHS["union"], operands, batches, cts, "norms")


ZERO_DEGREE_NORMS = ("gcn_no_loops", "row")


@jax.jit
def _zero_degree_program(graph, w, x):
    """For each norm without self loops: weights, gradient of a loss through spmm, dense form, Hessians."""
    results = {}
    for norm in ZERO_DEGREE_NORMS:
        loss = lambda w: jnp.sum(spmm(NORMS[norm](graph, w), x) ** 2)  # noqa: B023, E731
        results[norm] = (NORMS[norm](graph, w).edge_weight, jax.grad(loss)(w), NORMS[norm](graph, w).to_dense(),
                         dense_norm(norm, graph, w), jax.hessian(lambda w: jnp.sum(NORMS[norm](graph, w).edge_weight ** 2))(w),  # noqa: B023
                         jax.hessian(loss)(w))
    return results


def test_zero_degree_gives_zero_weight_and_zero_finite_gradient(x64):
    # Weights into node 0 are driven to 0 and there are no self loops, so deg[0] = 0. _norm.py defines
    # the inverse power of a zero degree, and its derivative, as 0: the edges into node 0 get weight 0
    # and gradient 0, and every other value and gradient (first and second order) stays finite.
    graph = GRAPHS["duplicates_self_loops"]
    into_zero = np.asarray(graph.receivers) == 0
    assert into_zero.any()
    w = jnp.where(jnp.asarray(into_zero), 0.0, _weights("duplicates_self_loops"))
    results = _zero_degree_program(graph, w, _cotangent((graph.n_nodes, F), 43))
    for norm, (normed, grad, dense, dense_want, weight_hessian, loss_hessian) in results.items():
        assert np.isfinite(normed).all() and np.isfinite(grad).all(), norm
        np.testing.assert_array_equal(normed[into_zero], 0.0, err_msg=norm)
        np.testing.assert_array_equal(grad[into_zero], 0.0, err_msg=norm)
        np.testing.assert_allclose(dense, dense_want, rtol=1e-12, err_msg=norm)
        assert np.isfinite(weight_hessian).all() and np.isfinite(loss_hessian).all(), norm
