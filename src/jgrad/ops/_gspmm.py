"""Generalized sparse-dense matrix multiplication (g-SpMM) with a memory-frugal hand-written backward.

For every node v, ``out[v] = reduce over edges e = (u -> v) of op(u_data[u], e_data[e])``. With
``op="u_mul_e"`` and ``reduce="sum"`` this is ``out = A @ u_data`` for the weighted adjacency ``A``.

Backward, for the sum reducer (mean divides the cotangent by the in-degree first):
  * w.r.t. node data: ``du = A^T @ dout`` — a g-SpMM on the *reversed* graph, because node u fed
    every receiver v it has an edge to, so its cotangent gathers from those receivers.
  * w.r.t. edge data: ``de[e] = <dout[v], u_data[u]>`` for e = (u -> v) — a g-SDDMM, because the
    weight of an edge touches exactly one output row and one input row.
Residuals saved for the backward are the inputs, O(N·F + E); the (E, F) message tensor is never saved.
For max/min the backward recomputes the messages and routes the cotangent to the arg-extremum (on a
plan, the forward's kernel finds the arg-extremum and no message is recomputed; `jgrad.ops._extremum`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._src import _taps
from .._src._checks import check_graph, check_graph_indices
from .._src._messages import MESSAGE_OPS, check_broadcast, check_operands
from .._src._plan import resolve
from .._src._types import REDUCERS, TIE_RULES, accumulation_dtype, check_choice
from ..graph import Graph
from . import _kernels
from ._primitives import raw_gspmm

ArrayLike = jax.typing.ArrayLike


def gspmm(
    graph: Graph,
    op: str,
    reduce: str,
    u: ArrayLike | None = None,
    e: ArrayLike | None = None,
    *,
    tie: str = "split",
    accumulate_dtype: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """Reduces, at every node, the messages of its incoming edges.

    Semantics, for every edge ``e = (senders[e] -> receivers[e])``::

        out[receivers[e]] = reduce(out[receivers[e]], op(u[senders[e]], e[e]))

    Args:
      graph: the graph; padding edges (``graph.edge_mask`` False) send nothing.
      op: the message: ``"copy_u"`` (u), ``"copy_e"`` (e), ``"u_add_e"``, ``"u_sub_e"``,
        ``"u_mul_e"``, ``"u_div_e"``.
      reduce: ``"sum"``, ``"mean"`` (over incoming edges), ``"max"`` or ``"min"``.
      u: node data, shape (N, ...), float; needed by every op but ``copy_e``.
      e: edge data, shape (E, ...), float; needed by every op but ``copy_u``. It broadcasts against u
        left-aligned: for u of shape (N, H, F), e may be (E,), (E, 1), (E, H, 1) or (E, H, F).
      tie: for max/min, who gets the gradient when several messages attain the extremum:
        ``"split"`` shares it equally, ``"first"`` gives it all to the lowest-numbered edge.
      accumulate_dtype: optional float dtype, at least as wide as the operands, in which messages are
        formed and reduced, e.g. ``jnp.float32`` for bfloat16 ``u``: u and e are converted to it
        before the gather, so every product and every partial sum is in float32, and the output has
        this dtype. The backward pass accumulates in it too, and the cotangents come back in the
        operands' own dtypes. ``None`` uses the operands' common dtype, accumulated in float32 when
        it is bfloat16 or float16 (a bfloat16 sum of a hub of degree 10^5 would stall at 256) with
        the output in the common dtype; see docs/numerics.md for the bounds.

    Returns:
      (N, ...) with u's trailing shape (e's for ``copy_e``), dtype ``accumulate_dtype`` or the
      operands' common dtype. A node with no incoming edge gets 0 for every reducer.

    Raises:
      ValueError: unknown op/reducer/tie, missing operand, wrong leading dimension, shapes that
        cannot broadcast, an ``accumulate_dtype`` narrower than the operands, and (when the graph is
        concrete, i.e. outside ``jit``) indices outside ``[0, n_nodes)``.
      TypeError: non-float operands or a non-float ``accumulate_dtype``.

    Notes:
      Execution: on a graph with a plan (``graph.plan``, see `jgrad.ops.use_backend`), ``copy_u`` and
      ``u_mul_e``/``u_div_e`` with one scalar per edge or per head ((E,), (E, 1), (E, H), (E, H, 1))
      under ``sum`` or ``mean`` run on the plan's backend (native CSR kernels on CPU, bucketed gather
      tables elsewhere): no scatter-add and no (E, F) message tensor, in the backward too; so do
      ``copy_e``, ``u_add_e`` and ``u_sub_e`` with ``sum`` or ``mean`` for (E,), (E, H) or (E, H, 1)
      edge data (the backend's edge sum). ``copy_u`` and ``u_mul_e`` under ``max``/``min`` find the
      arg-extremum with one kernel and route the cotangent to it with (N, ...) gathers and scatters
      (``tie="split"`` at ties: one more kernel on the reversed graph; see ``jgrad.ops._extremum``).
      Values and gradients equal the plain path's up to float rounding; every other case runs the
      plain path (gather, message, segment reduction).

      Differentiable w.r.t. u and e in reverse mode (hand-written backward: node cotangent by g-SpMM
      on the reversed graph, edge cotangent by g-SDDMM; residuals O(N·F + E)) to any order, and in
      forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``), also of functions already wrapped in
      ``jax.jit`` or run in ``lax.scan`` (`jgrad._src._op.Op`). Works under ``jit`` and ``vmap``; ``op``,
      ``reduce`` and ``tie`` are static.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> g = jgrad.Graph.from_edges([0, 1], [2, 2], n_nodes=3)
      >>> x = jnp.array([[1.0], [2.0], [5.0]])
      >>> jgrad.ops.gspmm(g, "u_mul_e", "sum", x, jnp.array([10.0, 1.0])).tolist()
      [[0.0], [0.0], [12.0]]
      >>> jgrad.ops.gspmm(g, "copy_u", "max", x).tolist()
      [[0.0], [0.0], [2.0]]
    """
    where = "gspmm"
    check_graph(where, graph)
    check_choice(where, "message op", op, MESSAGE_OPS)
    check_choice(where, "reducer", reduce, REDUCERS)
    check_choice(where, "tie rule", tie, TIE_RULES)
    tracked = e  # the caller's weights, before any cast: the tap names what the model passed
    u, e = _check_operands(where, graph, op, u, e)
    u, e, out_dtype = _common_dtype(where, u, e, accumulate_dtype)
    check_graph_indices(where, graph)
    plan = resolve(graph)
    if plan is not None and _kernels.covers_gspmm(plan, op, reduce, u, e):
        out = _kernels.plan_gspmm(plan, op, reduce, tie, u, e, graph.edge_mask, graph.senders, graph.receivers)
    else:
        out = raw_gspmm(op, reduce, tie, graph.n_nodes, graph.senders, graph.receivers, graph.edge_mask, u, e)
    out = out.astype(out_dtype)  # bfloat16 / float16 operands were summed in float32
    if not graph.tapped:
        return out
    if tracked is None:  # copy_u on a graph with (tracked) weights: the messages ignore them
        return out if graph.edge_weight is None else _taps.refuse(graph, "copy_u", out, graph.edge_weight)
    return _mark(graph, op, reduce, u, tracked, out)


def spmm(
    graph: Graph,
    x: ArrayLike,
    edge_weight: ArrayLike | None = None,
    *,
    accumulate_dtype: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """Weighted sum aggregation ``y = A @ x``: ``y[receivers[e]] += w[e] * x[senders[e]]``.

    Args:
      graph: the graph; its ``edge_weight`` is used unless ``edge_weight`` is given; an unweighted
        graph has weights of ones.
      x: node features, shape (N, ...).
      edge_weight: optional (E,) or broadcastable (E, ...) weights overriding the graph's.
      accumulate_dtype: optional wider float dtype for the products and sums (see `gspmm`), e.g.
        ``jnp.float32`` for bfloat16 ``x``; the output has this dtype.

    Returns:
      (N, ...), equal to ``graph.to_dense() @ x`` for (N, F) features.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2, edge_weight=[2.0, 3.0])
      >>> jgrad.ops.spmm(g, jnp.array([[1.0], [1.0]])).tolist()
      [[3.0], [2.0]]
    """
    check_graph("spmm", graph)
    weight = graph.edge_weight if edge_weight is None else edge_weight
    if weight is None:
        return gspmm(graph, "copy_u", "sum", u=x, accumulate_dtype=accumulate_dtype)
    return gspmm(graph, "u_mul_e", "sum", u=x, e=weight, accumulate_dtype=accumulate_dtype)


def _mark(graph: Graph, op: str, reduce: str, u, e, out: jax.Array) -> jax.Array:
    """Marks the use of the edge data ``e`` for `jgrad.adjacency_grad` (see ``jgrad._src._taps``).

    ``u_mul_e``/``sum`` is an aggregation ``A @ u`` and ``copy_e``/``sum`` a weighted in-degree; the
    other combinations are not functions of a dense adjacency and are marked as refusals.
    """
    if reduce == "sum" and op == "u_mul_e":
        return _taps.mark(graph, "aggregate", out, u, e, graph.senders, graph.receivers)
    if reduce == "sum" and op == "copy_e":
        return _taps.mark(graph, "degree", out, e, graph.receivers)
    reason = "extremum" if reduce in ("max", "min") else "mean" if reduce == "mean" else "message_op"
    return _taps.refuse(graph, reason, out, e)


def _check_operands(where: str, graph: Graph, op: str, u, e):
    def edge_problem(e):
        if e.ndim == 0 or e.shape[0] != graph.n_edges:
            return (f"e must have one row per edge; got shape {tuple(e.shape)}, expected "
                    f"({graph.n_edges}, ...) for {graph.n_edges} edges.")
        return None

    u, e = check_operands(where, op, u, e, graph.n_nodes, edge_problem)
    if u is not None and e is not None:
        check_broadcast(where, "e", e.shape, "u", u.shape)
    return u, e


def _common_dtype(where: str, u, e, accumulate_dtype):
    """``(u, e, out_dtype)``: u and e converted to ``accumulate_dtype`` before any message is formed, and
    the output's dtype. Without it, to their common dtype, or float32 when that is narrower (bfloat16,
    float16: `accumulation_dtype`), the output then being cast back to the common dtype.

    The conversion is differentiable, so autodiff returns each cotangent in its operand's own dtype
    (a bfloat16 u gets a bfloat16 gradient even though it was accumulated in float32).
    """
    operands = [value for value in (u, e) if value is not None]
    out_dtype = target = jnp.result_type(*operands)
    if accumulate_dtype is None:
        target = accumulation_dtype(target)
    else:
        try:
            target = jnp.dtype(accumulate_dtype)
        except TypeError:
            target = None
        if target is None or not jnp.issubdtype(target, jnp.floating):
            raise TypeError(f"{where}: accumulate_dtype must be a float dtype; got {accumulate_dtype!r}, "
                            "expected e.g. jnp.float32.")
        narrower = [str(value.dtype) for value in operands
                    if jnp.finfo(value.dtype).bits > jnp.finfo(target).bits]
        if narrower:
            raise ValueError(f"{where}: accumulate_dtype is narrower than the operands; got {target.name}, "
                             f"expected at least as wide as {', '.join(narrower)}.")
        out_dtype = target
    cast = lambda value: value if value is None or value.dtype == target else value.astype(target)
    return cast(u), cast(e), out_dtype
