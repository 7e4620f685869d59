"""The differentiable g-SpMM and g-SDDMM primitives on raw arrays, as ops with a tangent map (`jgrad._src._op.Op`).

`raw_gspmm` and `raw_gsddmm` take validated arrays (no Graph, no checks): the public `jgrad.ops.gspmm`
and `jgrad.ops.gsddmm` validate once and call them (or a plan's kernels, `jgrad.ops._kernels`). They
live in one module because each one's backward is written with the other (the node cotangent of a
g-SpMM is a g-SpMM on the reversed graph, its edge cotangent a g-SDDMM; a g-SDDMM's node cotangents
are g-SpMMs), so reverse mode of any order runs on jgrad's own ops.

Each op's value is its plain formulation (gather, message, segment reduction); forward mode
differentiates that formulation, reverse mode runs the backward below, which keeps no (E, F)
message tensor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._src._messages import align_edge, edge_binary, message, message_cotangents, sum_to_shape, uses_e, uses_u
from .._src._op import Op, tangent_of
from ._segment import segment_reduce, segment_sum


# g-SpMM
def raw_gspmm(op, reduce, tie, n, senders, receivers, mask, u, e):
    """gspmm on raw arrays, no validation; ``mask`` may be None (see `jgrad.ops.gspmm`)."""
    return _GSPMM(senders, receivers, mask, u, e, op=op, reduce=reduce, tie=tie, n=n)


def _safe_edge_data(e, mask):
    """Edge data with padding entries set to 1, so that u / e stays finite there (double where)."""
    if e is None or mask is None:
        return e
    return jnp.where(align_edge(mask, e.ndim), e, jnp.ones((), e.dtype))


def _spmm_forward(op, reduce, tie, n, senders, receivers, mask, u, e):
    """The plain formulation: gather, message, segment reduction. Differentiable in every mode."""
    e = _safe_edge_data(e, mask)
    u_edge = u[senders] if uses_u(op) else None
    return segment_reduce(message(op, u_edge, e), receivers, n, reduce, mask=mask, tie=tie)


def _plain_gspmm(senders, receivers, mask, u, e, *, op, reduce, tie, n):
    return _spmm_forward(op, reduce, tie, n, senders, receivers, mask, u, e)


def _gspmm_backward(operands, out, cotangent, wanted, *, op, reduce, tie, n):
    senders, receivers, mask, u, e = operands
    if reduce in ("sum", "mean"):
        du, de = _sum_backward(op, reduce, n, senders, receivers, mask, u, e, cotangent, wanted[3], wanted[4])
    else:
        du, de = _extremum_backward(op, reduce, tie, n, senders, receivers, mask, u, e, cotangent, wanted[3],
                                    wanted[4])
    return None, None, None, du, de


_GSPMM = Op("jgrad_gspmm", _plain_gspmm, tangent=tangent_of(_plain_gspmm), backward=_gspmm_backward)


def _in_degree_count(n, receivers, mask, dtype):
    ones = jnp.ones(receivers.shape, dtype) if mask is None else mask.astype(dtype)
    return segment_sum(ones, receivers, n)


def _sum_backward(op, reduce, n, senders, receivers, mask, u, e, cotangent, want_u, want_e):
    """Cotangents of u and e for the sum/mean reducers, with jgrad's own kernels; None for one not
    wanted (or not used by ``op``).

    du = A^T dout is a gspmm on the reversed graph; de is a gsddmm between u (at the sender) and
    dout (at the receiver).
    """
    if reduce == "mean":
        count = _in_degree_count(n, receivers, mask, cotangent.dtype)
        cotangent = cotangent / align_edge(jnp.maximum(count, 1.0), cotangent.ndim)
    e_safe = _safe_edge_data(e, mask)
    du = de = None
    if want_u and uses_u(op):  # reverse graph: receivers send the cotangent back to senders
        if op == "u_mul_e" or op == "u_div_e":
            du = raw_gspmm(op, "sum", "split", n, receivers, senders, mask, cotangent, e_safe)
        else:
            du = raw_gspmm("copy_u", "sum", "split", n, receivers, senders, mask, cotangent, None)
    if want_e and uses_e(op):
        if op in ("u_mul_e", "u_div_e"):
            per_edge = raw_gsddmm("mul", n, senders, receivers, mask, u, cotangent, "u", "v")
        else:
            per_edge = raw_gsddmm("copy_rhs", n, senders, receivers, mask, None, cotangent, "u", "v")
        de = sum_to_shape(per_edge, e.shape)
        if op == "u_sub_e":
            de = -de
        elif op == "u_div_e":
            de = -de / jnp.square(e_safe)
        if mask is not None:
            de = jnp.where(align_edge(mask, de.ndim), de, jnp.zeros((), de.dtype))
    return du, de


def _extremum_backward(op, reduce, tie, n, senders, receivers, mask, u, e, cotangent, want_u, want_e):
    """Routes the cotangent of max/min to the message(s) that attained the extremum.

    The extremum is recomputed exactly from the messages: the forward value is a weighted sum of the
    tied messages, which can differ from them in the last bit (three ties share 1/3 each), so comparing
    against it could miss every tied message and drop the gradient.
    """
    e_safe = _safe_edge_data(e, mask)
    u_edge = u[senders] if uses_u(op) else None
    msg = jax.lax.stop_gradient(message(op, u_edge, e_safe))
    live = jnp.ones((msg.shape[0],), bool) if mask is None else mask
    live = align_edge(live, msg.ndim)
    if reduce == "max":
        top = jax.ops.segment_max(jnp.where(live, msg, -jnp.inf), receivers, num_segments=n)
    else:
        top = jax.ops.segment_min(jnp.where(live, msg, jnp.inf), receivers, num_segments=n)
    hit = (msg == top[receivers]) & live
    if tie == "split":
        count = segment_sum(hit.astype(cotangent.dtype), receivers, n)
        share = hit / jnp.maximum(count, 1.0)[receivers]
    else:
        position = jnp.broadcast_to(align_edge(jnp.arange(msg.shape[0]), msg.ndim), msg.shape)
        position = jnp.where(hit, position, msg.shape[0])
        first = jax.ops.segment_min(position, receivers, num_segments=n)
        share = (hit & (position == first[receivers])).astype(cotangent.dtype)
    d_msg = cotangent[receivers] * share  # (E, ...) cotangent of each message
    d_u_edge, d_e_edge = message_cotangents(op, d_msg, u_edge, e_safe, want_u=want_u, want_e=want_e)
    du = None if d_u_edge is None else raw_gspmm("copy_e", "sum", "split", n, receivers, senders, None, None, d_u_edge)
    de = None if d_e_edge is None else sum_to_shape(d_e_edge, e.shape)
    return du, de


# g-SDDMM
def _gather(x, target, senders, receivers):
    if x is None:
        return None
    if target == "u":
        return x[senders]
    if target == "v":
        return x[receivers]
    return x


def raw_gsddmm(op, n, senders, receivers, mask, lhs, rhs, lhs_target, rhs_target):
    """gsddmm on raw arrays, no validation; ``mask`` may be None."""
    return _GSDDMM(senders, receivers, mask, lhs, rhs, op=op, n=n, lhs_target=lhs_target, rhs_target=rhs_target)


def _sddmm_forward(op, n, senders, receivers, mask, lhs, rhs, lhs_target, rhs_target):
    left = _gather(lhs, lhs_target, senders, receivers)
    right = _gather(rhs, rhs_target, senders, receivers)
    if op == "div" and mask is not None:  # keep padding edges finite (double where)
        right = jnp.where(align_edge(mask, right.ndim), right, jnp.ones((), right.dtype))
    out = edge_binary(op, left, right)
    if mask is not None:
        out = jnp.where(align_edge(mask, out.ndim), out, jnp.zeros((), out.dtype))
    return out


def _plain_gsddmm(senders, receivers, mask, lhs, rhs, *, op, n, lhs_target, rhs_target):
    return _sddmm_forward(op, n, senders, receivers, mask, lhs, rhs, lhs_target, rhs_target)


def _gsddmm_backward(operands, out, cotangent, wanted, *, op, n, lhs_target, rhs_target):
    senders, receivers, mask, lhs, rhs = operands
    if mask is not None:
        cotangent = jnp.where(align_edge(mask, cotangent.ndim), cotangent, jnp.zeros((), cotangent.dtype))
    d_lhs = d_rhs = None
    if wanted[3]:
        d_lhs = _operand_cotangent(op, "lhs", n, senders, receivers, mask, lhs, rhs, lhs_target,
                                   rhs_target, cotangent)
    if wanted[4]:
        d_rhs = _operand_cotangent(op, "rhs", n, senders, receivers, mask, rhs, lhs, rhs_target,
                                   lhs_target, cotangent)
    return None, None, None, d_lhs, d_rhs


_GSDDMM = Op("jgrad_gsddmm", _plain_gsddmm, tangent=tangent_of(_plain_gsddmm), backward=_gsddmm_backward)


def _operand_cotangent(op, side, n, senders, receivers, mask, mine, other, my_target, other_target,
                       cotangent):
    """Cotangent of one operand: per-edge partial derivative, then a g-SpMM onto its target."""
    # Fast path: mul/dot between a node operand and another node operand is itself a g-SpMM that
    # multiplies the other operand by the edge cotangent, with no (E, F) intermediate saved.
    if op in ("mul", "dot") and my_target != "e" and other_target != "e" and other is not None \
            and other.shape[1:] == _broadcast_trailing(mine.shape, other.shape):
        src, dst = (receivers, senders) if my_target == "u" else (senders, receivers)
        other_src = other_target == ("v" if my_target == "u" else "u")
        if other_src:  # the other operand sits at the source of this reversed/forward pass
            summed = raw_gspmm("u_mul_e", "sum", "split", n, src, dst, mask, other, cotangent)
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
    return raw_gspmm("copy_e", "sum", "split", n, src, dst, mask, None, per_edge)


def _broadcast_trailing(a_shape, b_shape):
    a, b = tuple(a_shape[1:]), tuple(b_shape[1:])
    rank = max(len(a), len(b))
    a, b = a + (1,) * (rank - len(a)), b + (1,) * (rank - len(b))
    return tuple(max(x, y) for x, y in zip(a, b))
