"""max/min g-SpMM on a plan: an arg-extremum kernel, then a differentiable selection.

A backend's ``extremum`` kernel (`jgrad.ops._kernels.Kernels`) walks each row's slots once and returns,
for every output entry, the extremum, the lowest edge id attaining it (``arg``; -1 where no edge is
live, and at NaN) and how many live edges attain it (``count``). `plan_extremum` runs it on
gradient-free copies of the operands and reads the winning message again with gathers of (N, M)
entries::

    out[r, j] = u[senders[arg[r, j]], j] * w[arg[r, j]]        (w = 1 for copy_u)

That selection is linear in u and w for a fixed ``arg``, so JAX differentiates it in every mode and to
every order: the backward scatters the cotangent to the winning sender and edge (N·M entries, never an
(E, M) message tensor). It is the ``"first"`` tie rule exactly.

The ``"split"`` rule shares the cotangent equally between tied messages. Its backward takes the
``"first"`` routing when no entry tied (``count`` is 1 everywhere: both rules agree) and otherwise
the backend's ``routed`` kernel: one walk over the reversed graph that gives every tied edge
``cotangent / count`` (native on CPU; `segment_routed` with XLA ops elsewhere). The routed kernel's
own backward is that of `segment_routed`, the same function, so second order is exact too. Forward
mode differentiates the plain formulation (gather, message, `jgrad.ops._segment.segment_reduce` with
the same tie rule). Both are ops with a tangent map (`jgrad._src._op.Op`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._src._op import Op, backward_of, tangent_of
from .._src._plan import Plan, Side, slot_rows
from ._segment import segment_reduce


def _trailing(x: jax.Array, ndim: int) -> jax.Array:
    """``x`` (S,) or (S, H) with size-1 axes appended up to rank ``ndim`` (to broadcast over features)."""
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def _slots(side: Side):
    """(rows, cols, edge_ids, valid): each CSR slot's row (clamped), neighbour, edge and whether it is real."""
    n = side.in_degree.shape[0]
    rows = slot_rows(side.csr.row_ptr, side.csr.cols.shape[0]).astype(jnp.int32)  # n for padding slots
    return jnp.minimum(rows, n - 1), side.csr.cols, side.csr.edge_ids, rows < n


def _messages(u_at_slot, w, edge_ids):
    """Every slot's message: u gathered at the slot times its edge's weight (per head), or u alone."""
    if w is None:
        return u_at_slot
    return u_at_slot * _trailing(w.astype(u_at_slot.dtype)[edge_ids], u_at_slot.ndim)


def _live(valid, live, edge_ids, ndim):
    keep = valid if live is None else valid & live[edge_ids]
    return _trailing(keep, ndim)


def segment_extremum(side: Side, reduce: str, u: jax.Array, w: jax.Array | None, live: jax.Array | None):
    """The arg-extremum over each row's live slots of ``side``, with XLA segment ops.

    Args:
      side: one side of a plan (rows = its receivers).
      reduce: ``"max"`` or ``"min"``.
      u: (N, M) node data, or (N, H, F) with per-head ``w``.
      w: (E,) with (N, M) u, (E, H) with (N, H, F) u, or None (messages are u itself).
      live: (E,) bool, or None (every edge live).

    Returns:
      ``(out, arg, count)`` of u's shape: the extremum (0 where no slot is live), the lowest edge id
      attaining it and the number of live slots attaining it (int32; -1 and 0 where no slot is live or out
      is NaN).
    """
    rows, cols, edge_ids, valid = _slots(side)
    n = side.in_degree.shape[0]
    message = _messages(u[cols], w, edge_ids)
    keep = _live(valid, live, edge_ids, message.ndim)
    fill = -jnp.inf if reduce == "max" else jnp.inf
    segment = jax.ops.segment_max if reduce == "max" else jax.ops.segment_min
    top = segment(jnp.where(keep, message, fill), rows, num_segments=n)
    hit = keep & (message == top[rows])
    ids = jnp.broadcast_to(_trailing(edge_ids, message.ndim), message.shape)
    none = jnp.iinfo(jnp.int32).max
    arg = jax.ops.segment_min(jnp.where(hit, ids, none), rows, num_segments=n)
    arg = jnp.where(arg == none, -1, arg).astype(jnp.int32)
    count = jax.ops.segment_sum(hit.astype(jnp.int32), rows, num_segments=n)
    reached = jax.ops.segment_sum(jnp.broadcast_to(keep, message.shape).astype(jnp.int32), rows, num_segments=n)
    return jnp.where(reached > 0, top, jnp.zeros((), top.dtype)), arg, count


def segment_routed(side: Side, u: jax.Array, w: jax.Array | None, live: jax.Array | None, top: jax.Array,
                   share: jax.Array):
    """The ``"split"`` backward of max/min with XLA ops, on the reverse side (rows = senders).

    Every live edge whose message equals ``top`` at its receiver gets ``share`` there:
    ``du[s] = sum of w[e] * share[r]`` and ``dw[e] = sum over entries of u[s] * share[r]`` (ties only).
    Arguments and results as `jgrad.ops._native.csr_routed`; differentiable in u, w and share.
    """
    rows, cols, edge_ids, valid = _slots(side)
    n = side.in_degree.shape[0]
    u_at_slot = u[rows]
    message = _messages(jax.lax.stop_gradient(u_at_slot), None if w is None else jax.lax.stop_gradient(w), edge_ids)
    keep = _live(valid, live, edge_ids, message.ndim)
    hit = keep & (message == jax.lax.stop_gradient(top)[cols])
    routed = jnp.where(hit, share[cols], jnp.zeros((), share.dtype))  # (S, M) or (S, H, F)
    du = jax.ops.segment_sum(_messages(routed, w, edge_ids), rows, num_segments=n)
    if w is None:
        return du, None
    dots = jnp.sum(u_at_slot * routed, axis=tuple(range(w.ndim, routed.ndim)))  # (S,) or (S, H)
    dots = jnp.where(keep.reshape(keep.shape[:dots.ndim]), dots, jnp.zeros((), dots.dtype))  # dead edges: 0
    dw = jnp.zeros(w.shape, dots.dtype).at[edge_ids].add(dots)
    return du, dw


def plan_extremum(kernels, plan: Plan, op: str, reduce: str, tie: str, u: jax.Array, e: jax.Array | None,
                  heads: int, mask: jax.Array | None, senders: jax.Array, receivers: jax.Array) -> jax.Array:
    """gspmm ``copy_u``/``u_mul_e`` with ``max``/``min`` on a plan (see the module docstring).

    Args:
      kernels: the backend's `jgrad.ops._kernels.Kernels` (its ``extremum`` and ``routed``).
      plan: the graph's plan.
      op, reduce, tie: as `jgrad.ops.gspmm` (``copy_u`` or ``u_mul_e``; ``max`` or ``min``).
      u: (N, ...) node data; e: None for ``copy_u``, else one scalar per edge ((E,), (E, 1), ...) or
        one per head ((E, H), (E, H, 1)) against (N, H, F) u, in u's dtype.
      heads: 1 for scalar edge data, H for per-head edge data.
      mask, senders, receivers: the graph's edge mask (or None), senders and receivers.

    Returns:
      (N, ...) of u's shape, equal to the plain path's value; its gradients equal the plain path's.
    """
    problem = _Problem(kernels.extremum, kernels.routed or segment_routed, reduce, heads)
    if tie == "first":
        found, arg, _ = problem.run(plan, mask, u, e)
        return problem.select(found, arg, senders, u, e)
    return _SPLIT_EXTREMUM(plan, senders, receivers, mask, u, e, problem=problem)[0]


class _Problem(NamedTuple):
    """The static part of one max/min: the backend's two kernels, the reducer and the number of heads."""

    extremum: Callable
    routed: Callable
    reduce: str
    heads: int

    def operands(self, u, e):
        """(N, M) node data with (E,) or None edge data; or (N, H, F) with (E, H)."""
        if e is None or self.heads == 1:
            return u.reshape(u.shape[0], -1), None if e is None else e.reshape(e.shape[0])
        return u, e.reshape(e.shape[0], self.heads)

    def run(self, plan, mask, u, e):
        """The extremum kernel on gradient-free operands: ``(found, arg, count)`` (see `segment_extremum`)."""
        stop = jax.lax.stop_gradient
        node, weight = self.operands(stop(u), None if e is None else stop(e))
        return self.extremum(plan.forward, self.reduce, node, weight, mask)

    def select(self, found, arg, senders, u, e):
        """The winning message of every entry, ``u[senders[arg]] * e[arg]`` (``found`` where arg is -1):
        linear in u and e, so its gradient is the ``"first"`` routing. Returns u's shape."""
        node, weight = self.operands(u, e)
        winner = jnp.maximum(arg, 0)
        columns = tuple(jnp.indices(arg.shape, sparse=True)[1:])  # each entry's trailing index
        value = node[(senders[winner],) + columns]
        if weight is not None:
            value = value * weight[(winner,) + columns[:weight.ndim - 1]]
        return jnp.where(arg >= 0, value, jax.lax.stop_gradient(found)).reshape(u.shape)


def _split_forward(plan, senders, receivers, mask, u, e, *, problem):
    """max/min with the ``"split"`` tie rule by the kernel: ``(out, arg, count)`` (the last two for the backward)."""
    found, arg, count = problem.run(plan, mask, u, e)
    return found.reshape(u.shape), arg, count


def _split_plain(plan, senders, receivers, mask, u, e, *, problem):
    """The same value with XLA ops, differentiable in forward mode."""
    node, weight = problem.operands(u, e)
    message = node[senders]
    if weight is not None:
        message = message * _trailing(weight, message.ndim)
    return segment_reduce(message, receivers, plan.n_nodes, problem.reduce, mask=mask, tie="split").reshape(u.shape)


def _split_tangent(operands, outs, tangents, *, problem):
    return tangent_of(_split_plain)(operands, outs[0], tangents, problem=problem), None, None


def _split_backward(operands, outs, cotangents, wanted, *, problem):
    """The ``"first"`` routing (a scatter of N·M entries) when no entry tied, else the routed kernel."""
    plan, senders, _, mask, u, e = operands
    out, arg, count = outs
    found = out.reshape(arg.shape)

    def first(cotangent):
        return jax.vjp(lambda u, e: problem.select(found, arg, senders, u, e), u, e)[1](cotangent)

    def shared(cotangent):
        node, weight = problem.operands(u, e)
        share = cotangent.reshape(count.shape) / jnp.maximum(count, 1).astype(cotangent.dtype)
        du, dw = _routed(problem.routed, plan, mask, node, weight, found, share)
        return du.reshape(u.shape), None if e is None else dw.reshape(e.shape)

    du, de = jax.lax.cond(jnp.any(count > 1), shared, first, cotangents[0])
    return None, None, None, None, du, de


_SPLIT_EXTREMUM = Op("jgrad_split_extremum", _split_forward, tangent=_split_tangent, backward=_split_backward)


def _routed(kernel, plan, mask, node, weight, top, share):
    """The backend's routed kernel on the reverse side; differentiable as `segment_routed` (the same map)."""
    return _ROUTED(plan, mask, node, weight, top, share, kernel=kernel)


def _routed_kernel(plan, mask, node, weight, top, share, *, kernel):
    return kernel(plan.reverse, node, weight, mask, top, share)


def _routed_reference(plan, mask, node, weight, top, share, *, kernel):
    return segment_routed(plan.reverse, node, weight, mask, top, share)


# Differentiated as `segment_routed` in both modes: node, weight and share (top is held constant).
_ROUTED = Op("jgrad_routed", _routed_kernel, tangent=tangent_of(_routed_reference),
             backward=backward_of(_routed_reference, over=(2, 3, 5)))
