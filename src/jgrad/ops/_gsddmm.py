"""Generalized sampled dense-dense matrix multiplication (g-SDDMM) with a hand-written backward.

For every edge e = (u -> v), ``out[e] = op(lhs at its target, rhs at its target)``, where a target is
the edge's sender ``"u"``, its receiver ``"v"``, or the edge itself ``"e"``. With ``op="dot"``,
``lhs_target="u"``, ``rhs_target="v"`` this samples the dense product ``rhs @ lhs^T`` at the edges:
``out[e] = <lhs[u], rhs[v]>``, the workhorse of the edge-weight gradient.

Backward: the cotangent of an operand living on nodes is a sum over that node's edges — a g-SpMM on
the graph (target ``"v"``) or on the reversed graph (target ``"u"``); an operand living on edges takes
the per-edge cotangent directly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._src import _taps
from .._src._checks import check_graph, check_graph_indices
from .._src._messages import EDGE_OPS, TARGETS
from .._src._plan import resolve
from .._src._types import accumulation_dtype, check_choice
from ..graph import Graph
from . import _kernels
from ._primitives import raw_gsddmm

ArrayLike = jax.typing.ArrayLike


def gsddmm(
    graph: Graph,
    op: str,
    lhs: ArrayLike | None,
    rhs: ArrayLike | None,
    lhs_target: str = "u",
    rhs_target: str = "v",
) -> jax.Array:
    """Computes one value per edge from data at its sender, its receiver or the edge itself.

    Semantics, for every edge ``e`` with ``at("u") = senders[e]``, ``at("v") = receivers[e]``::

        out[e] = op(lhs[at(lhs_target)], rhs[at(rhs_target)])      # "e" targets index by e itself

    Args:
      graph: the graph; padding edges get 0.
      op: ``"add"``, ``"sub"``, ``"mul"``, ``"div"``, ``"dot"`` (sum over the last axis, kept as size
        1), ``"copy_lhs"`` or ``"copy_rhs"`` (the other operand may be None).
      lhs, rhs: float arrays of shape (N, ...) for targets "u"/"v" or (E, ...) for "e". Their trailing
        shapes broadcast left-aligned (each axis equal or 1; the shorter one padded with 1s on the
        right), e.g. (N, H, F) with (E, H, 1).
      lhs_target, rhs_target: ``"u"``, ``"v"`` or ``"e"``.

    Returns:
      (E, ...) with the broadcast trailing shape; for ``"dot"`` the last axis has size 1.

    Raises:
      ValueError: unknown op/target, missing operand, wrong leading dimension, shapes that do not
        broadcast, and (when the graph is concrete, i.e. outside ``jit``) indices outside
        ``[0, n_nodes)``. TypeError: non-float operands.

    Notes:
      On a graph with a plan (``graph.plan``), ``"dot"`` of two node arrays of one shape, (N, F) or
      (N, H, F), one at ``"u"`` and one at ``"v"``, runs on the plan's backend (on CPU the native
      kernel: one pass over the edges in CSR order, no (E, F) intermediate). ``"add"``, ``"sub"``,
      ``"mul"``, ``"copy_lhs"`` and ``"copy_rhs"`` of operands (R,), (R, H) or (R, H, 1) of one trailing
      shape (GAT's attention scores), each a node array or edge data, gather as usual, and their
      backward sums the edge cotangent at the senders and receivers on the plan (native CSR sums on
      CPU; one pass per head on the bucket backend) instead of scatter-adds. Values and gradients equal
      the plain path's up to float rounding. Other cases run the plain path.
      Differentiable w.r.t. lhs and rhs in reverse mode (hand-written backward; cotangents of node
      operands are g-SpMMs, residuals are the inputs) to any order, and in forward mode, also through
      ``jax.jit`` and ``lax.scan`` (`jgrad._src._op.Op`). jit- and vmap-safe.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2)
      >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
      >>> jgrad.ops.gsddmm(g, "dot", x, x).tolist()  # <x[sender], x[receiver]>
      [[11.0], [11.0]]
    """
    where = "gsddmm"
    check_graph(where, graph)
    check_choice(where, "edge op", op, EDGE_OPS)
    check_choice(where, "lhs_target", lhs_target, TARGETS)
    check_choice(where, "rhs_target", rhs_target, TARGETS)
    given = ((lhs, lhs_target), (rhs, rhs_target))  # the caller's arrays, for adjacency_grad's marks
    lhs = _check_operand(where, graph, "lhs", lhs, lhs_target, needed=op != "copy_rhs")
    rhs = _check_operand(where, graph, "rhs", rhs, rhs_target, needed=op != "copy_lhs")
    if lhs is not None and rhs is not None:
        _check_pair(where, lhs.shape, rhs.shape)
    check_graph_indices(where, graph)
    out_dtype = jnp.result_type(*(value for value in (lhs, rhs) if value is not None))
    wide = accumulation_dtype(out_dtype)  # bfloat16 / float16: the dots and the backward's sums in float32
    lhs, rhs = (None if value is None else value.astype(wide) for value in (lhs, rhs))
    plan = resolve(graph)
    if plan is not None and _kernels.covers_gsddmm(op, lhs, rhs, lhs_target, rhs_target):
        out = _kernels.plan_gsddmm(plan, op, lhs, rhs, lhs_target, rhs_target, graph.edge_mask, graph.senders,
                                   graph.receivers)
    else:
        out = raw_gsddmm(op, graph.n_nodes, graph.senders, graph.receivers, graph.edge_mask, lhs, rhs,
                         lhs_target, rhs_target)
    out = out.astype(out_dtype)
    for value, target in given if graph.tapped else ():
        if value is not None and target == "e":  # edge weights used per existing edge
            out = _taps.refuse(graph, "edge_data", out, value)
    return out


def _check_operand(where, graph, name, value, target, needed):
    if not needed:
        return None
    if value is None:
        raise ValueError(f"{where}: this op needs {name}; got {name}=None.")
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"{where}: {name} must be a float array; got dtype {value.dtype}.")
    rows, what = (graph.n_edges, "edge") if target == "e" else (graph.n_nodes, "node")
    if value.ndim == 0 or value.shape[0] != rows:
        raise ValueError(
            f"{where}: {name} with target {target!r} must have one row per {what}; got shape "
            f"{tuple(value.shape)}, expected ({rows}, ...)."
        )
    return value


def _check_pair(where, lhs_shape, rhs_shape):
    a, b = tuple(lhs_shape[1:]), tuple(rhs_shape[1:])
    rank = max(len(a), len(b))
    a, b = a + (1,) * (rank - len(a)), b + (1,) * (rank - len(b))
    if not all(x == y or x == 1 or y == 1 for x, y in zip(a, b)):
        raise ValueError(
            f"{where}: lhs and rhs cannot broadcast; got trailing shapes {tuple(lhs_shape[1:])} and "
            f"{tuple(rhs_shape[1:])}, expected each axis equal or 1 (left-aligned)."
        )
