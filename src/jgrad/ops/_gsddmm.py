"""Generalized sampled dense-dense matrix multiplication (g-SDDMM) with a custom VJP.

For every edge e = (u -> v), ``out[e] = op(lhs at its target, rhs at its target)``, where a target is
the edge's sender ``"u"``, its receiver ``"v"``, or the edge itself ``"e"``. With ``op="dot"``,
``lhs_target="u"``, ``rhs_target="v"`` this samples the dense product ``rhs @ lhs^T`` at the edges:
``out[e] = <lhs[u], rhs[v]>``, the workhorse of the edge-weight gradient.

Backward: the cotangent of an operand living on nodes is a sum over that node's edges — a g-SpMM on
the graph (target ``"v"``) or on the reversed graph (target ``"u"``); an operand living on edges takes
the per-edge cotangent directly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .._types import check_choice
from ..graph import Graph
from ..graph._checks import check_graph_indices
from . import _kernels
from ._dispatch import in_forward_mode
from .._src._plan import resolve
from ._messages import EDGE_OPS, TARGETS, align_edge, edge_binary, sum_to_shape

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
      kernel: one pass over the edges in CSR order, no (E, F) intermediate); values and gradients
      equal the plain path's up to float rounding. Other cases and forward mode run the plain path.
      Differentiable w.r.t. lhs and rhs in reverse mode (custom VJP; cotangents of node operands are
      g-SpMMs, residuals are the inputs) to any order, and in forward mode. jit- and vmap-safe.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2)
      >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
      >>> jgrad.ops.gsddmm(g, "dot", x, x).tolist()  # <x[sender], x[receiver]>
      [[11.0], [11.0]]
    """
    where = "gsddmm"
    check_choice(where, "edge op", op, EDGE_OPS)
    check_choice(where, "lhs_target", lhs_target, TARGETS)
    check_choice(where, "rhs_target", rhs_target, TARGETS)
    lhs = _check_operand(where, graph, "lhs", lhs, lhs_target, needed=op != "copy_rhs")
    rhs = _check_operand(where, graph, "rhs", rhs, rhs_target, needed=op != "copy_lhs")
    if lhs is not None and rhs is not None:
        _check_pair(where, lhs.shape, rhs.shape)
    check_graph_indices(where, graph)
    plan = resolve(graph)
    if plan is not None and _kernels.covers_gsddmm(op, lhs, rhs, lhs_target, rhs_target) \
            and not in_forward_mode(lhs, rhs):
        return _kernels.plan_gsddmm(plan, lhs, rhs, lhs_target)
    return _gsddmm(op, graph.n_nodes, graph.senders, graph.receivers, graph.edge_mask, lhs, rhs,
                   lhs_target, rhs_target)


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


def _gather(x, target, senders, receivers):
    if x is None:
        return None
    if target == "u":
        return x[senders]
    if target == "v":
        return x[receivers]
    return x


def _gsddmm(op, n, senders, receivers, mask, lhs, rhs, lhs_target, rhs_target):
    """gsddmm on raw arrays, no validation; ``mask`` may be None."""
    if in_forward_mode(lhs, rhs):
        return _forward(op, n, senders, receivers, mask, lhs, rhs, lhs_target, rhs_target)
    return _gsddmm_vjp(op, n, lhs_target, rhs_target, senders, receivers, mask, lhs, rhs)


def _forward(op, n, senders, receivers, mask, lhs, rhs, lhs_target, rhs_target):
    left = _gather(lhs, lhs_target, senders, receivers)
    right = _gather(rhs, rhs_target, senders, receivers)
    if op == "div" and mask is not None:  # keep padding edges finite (double where)
        right = jnp.where(align_edge(mask, right.ndim), right, jnp.ones((), right.dtype))
    out = edge_binary(op, left, right)
    if mask is not None:
        out = jnp.where(align_edge(mask, out.ndim), out, jnp.zeros((), out.dtype))
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _gsddmm_vjp(op, n, lhs_target, rhs_target, senders, receivers, mask, lhs, rhs):
    return _forward(op, n, senders, receivers, mask, lhs, rhs, lhs_target, rhs_target)


def _gsddmm_fwd(op, n, lhs_target, rhs_target, senders, receivers, mask, lhs, rhs):
    out = _forward(op, n, senders, receivers, mask, lhs, rhs, lhs_target, rhs_target)
    return out, (senders, receivers, mask, lhs, rhs)


def _gsddmm_bwd(op, n, lhs_target, rhs_target, residuals, cotangent):
    senders, receivers, mask, lhs, rhs = residuals
    if mask is not None:
        cotangent = jnp.where(align_edge(mask, cotangent.ndim), cotangent, jnp.zeros((), cotangent.dtype))
    d_lhs = d_rhs = None
    if lhs is not None:
        d_lhs = _operand_cotangent(op, "lhs", n, senders, receivers, mask, lhs, rhs, lhs_target,
                                   rhs_target, cotangent)
    if rhs is not None:
        d_rhs = _operand_cotangent(op, "rhs", n, senders, receivers, mask, rhs, lhs, rhs_target,
                                   lhs_target, cotangent)
    return None, None, None, d_lhs, d_rhs


_gsddmm_vjp.defvjp(_gsddmm_fwd, _gsddmm_bwd)


def _operand_cotangent(op, side, n, senders, receivers, mask, mine, other, my_target, other_target,
                       cotangent):
    """Cotangent of one operand: per-edge partial derivative, then a g-SpMM onto its target."""
    from ._gspmm import _gspmm  # gspmm's backward uses gsddmm, and this uses gspmm

    # Fast path: mul/dot between a node operand and another node operand is itself a g-SpMM that
    # multiplies the other operand by the edge cotangent, with no (E, F) intermediate saved.
    if op in ("mul", "dot") and my_target != "e" and other_target != "e" and other is not None \
            and other.shape[1:] == _broadcast_trailing(mine.shape, other.shape):
        src, dst = (receivers, senders) if my_target == "u" else (senders, receivers)
        other_src = other_target == ("v" if my_target == "u" else "u")
        if other_src:  # the other operand sits at the source of this reversed/forward pass
            summed = _gspmm("u_mul_e", "sum", "split", n, src, dst, mask, other, cotangent)
            return sum_to_shape(summed, mine.shape)

    other_edge = _gather(other, other_target, senders, receivers)
    if op == "div" and side == "rhs":
        mine_edge = _gather(mine, my_target, senders, receivers)
        if mask is not None:
            mine_edge = jnp.where(align_edge(mask, mine_edge.ndim), mine_edge, jnp.ones((), mine_edge.dtype))
        rank = max(mine_edge.ndim, other_edge.ndim, cotangent.ndim)
        per_edge = -align_edge(cotangent, rank) * align_edge(other_edge, rank) / jnp.square(
            align_edge(mine_edge, rank))
    elif op == "div" and side == "lhs":
        if mask is not None:
            other_edge = jnp.where(align_edge(mask, other_edge.ndim), other_edge, jnp.ones((), other_edge.dtype))
        rank = max(other_edge.ndim, cotangent.ndim)
        per_edge = align_edge(cotangent, rank) / align_edge(other_edge, rank)
    elif op in ("mul", "dot"):
        rank = max(other_edge.ndim, cotangent.ndim)
        per_edge = align_edge(cotangent, rank) * align_edge(other_edge, rank)
    elif op == "sub" and side == "rhs":
        per_edge = -cotangent
    else:  # add, sub (lhs), copy_lhs, copy_rhs
        per_edge = cotangent
    # The per-edge partial may be narrower than the operand (dot against a broadcast operand), or wider
    # (the operand was broadcast): widen to the common shape, then sum back to the operand's shape.
    mine_shape = (per_edge.shape[0],) + tuple(mine.shape[1:])
    rank = max(per_edge.ndim, len(mine_shape))
    per_edge = align_edge(per_edge, rank)
    common = tuple(max(a, b) for a, b in zip(per_edge.shape, mine_shape + (1,) * (rank - len(mine_shape))))
    per_edge = sum_to_shape(jnp.broadcast_to(per_edge, common), mine_shape)
    if my_target == "e":
        return per_edge
    src, dst = (receivers, senders) if my_target == "u" else (senders, receivers)
    return _gspmm("copy_e", "sum", "split", n, src, dst, mask, None, per_edge)


def _broadcast_trailing(a_shape, b_shape):
    a, b = tuple(a_shape[1:]), tuple(b_shape[1:])
    rank = max(len(a), len(b))
    a, b = a + (1,) * (rank - len(a)), b + (1,) * (rank - len(b))
    return tuple(max(x, y) for x, y in zip(a, b))
