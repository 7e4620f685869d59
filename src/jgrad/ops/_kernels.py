"""Sum aggregation and per-edge products on a graph's `Plan`, as differentiable ops (`jgrad._src._op.Op`).

``layout_sum(plan, u, w)`` computes ``out[receivers[e]] += w[e] * u[senders[e]]`` (or ``u[...]``
alone when ``w`` is None) with no scatter-add and no (E, F) intermediate. Its backward reuses the layout:

* ``du = A^T @ dout``: `layout_sum` on ``layout.transpose()``, the reversed graph.
* ``dw[e] = <dout[receivers[e]], u[senders[e]]>``: `layout_edge_dot`, a g-SDDMM.

Every function here takes one of two forms: the single-weight form (node data (N, M), edge data (E,))
and the per-head form (node data (N, H, F), edge data (E, H): ``out[receivers[e], h] += w[e, h] *
u[senders[e], h]``, one dot per edge and head), in which all heads go through one kernel call.

With weights both come from `layout_sum_backward`, which on CPU walks the reversed graph once and uses
each gathered row of ``dout`` for both. `layout_edge_dot` and `layout_sum_backward` have their own
backward passes built from `layout_sum` and `layout_edge_dot`, so every order of reverse mode works;
their tangent maps (forward mode) are built from the same ops, by bilinearity.

Sums of edge data at the nodes (gspmm ``copy_e``/``sum``, the backward of gsddmm add/sub/copy, both
sums of edge_softmax) are `layout_edge_sum` (rows of either side: receivers on ``plan``, senders on
``plan.transpose()``), whose transpose is `layout_gather` (node data read at the edges, an XLA gather);
each is the other's VJP. They run the backend's ``edge_sum`` kernel, or its ``side_sum`` against ones.

Backends (the `KERNELS` registry at the end of the differentiable part; one `register` line each):
a ``"bucket"`` plan runs gathers and dense reductions over its degree-bucketed neighbour
tables (XLA, any platform). A ``"native"`` plan runs the CSR kernels of `jgrad.ops._native` on CPU
for float32/float64 (chosen per platform when the computation is lowered, `jax.lax.platform_dependent`)
and, on other platforms, other dtypes or without a C++ compiler, the same CSR order with segment sums;
both take the per-head form directly (every head in one walk over the CSR). The ``"bucket"`` and
``"pallas"`` kernels have no multi-head version: `register` wraps them in `_per_head`, which runs
one single-weight pass per head (the one place where that decision is made); that includes their edge
sums (one pass over their tables per head).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._src import _plan
from .._src._op import Op
from .._src._plan import Plan, Side
from . import _attention, _extremum, _native, _pallas


def _append_zero_row(x: jax.Array) -> jax.Array:
    return jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)])


def _map_chunks(fn, arrays):
    """``fn`` over the leading (chunk) axis: directly for one chunk, else with ``lax.map``."""
    if jax.tree.leaves(arrays)[0].shape[0] == 1:
        return fn(jax.tree.map(lambda a: a[0], arrays))[None]
    return jax.lax.map(fn, arrays)


def _use_native(*arrays) -> bool:
    return _native.available() and all(_native.supports(a.dtype) for a in arrays if a is not None)


def _slot_rows(side: Side) -> jax.Array:
    """(E,) row of every CSR slot; padding slots (after ``row_ptr[-1]``) get R, out of range."""
    return _plan.slot_rows(side.csr.row_ptr, side.csr.cols.shape[0]).astype(jnp.int32)


def _csr_segment_sum(side: Side, u: jax.Array, w: jax.Array | None) -> jax.Array:
    """`_side_sum` on the CSR order with XLA segment sums (non-CPU platforms, no compiler); either form."""
    gathered = u[side.csr.cols]
    if w is not None:
        scale = w.astype(u.dtype)[side.csr.edge_ids]  # (S,) or (S, H)
        gathered = gathered * scale.reshape(scale.shape + (1,) * (gathered.ndim - scale.ndim))
    return jax.ops.segment_sum(gathered, _slot_rows(side), num_segments=side.in_degree.shape[0],
                               indices_are_sorted=True)


def _csr_segment_edge_dot(side: Side, u: jax.Array, v: jax.Array) -> jax.Array:
    """`_side_edge_dot` on the CSR order with XLA ops; (E,) for (N, M) operands, (E, H) for (N, H, F)."""
    rows = _slot_rows(side)
    n = side.in_degree.shape[0]
    dots = jnp.sum(u[side.csr.cols] * v[jnp.minimum(rows, n - 1)], axis=-1)  # (S,) or (S, H)
    live = (rows < n).reshape(rows.shape + (1,) * (dots.ndim - 1))
    dots = jnp.where(live, dots, jnp.zeros((), dots.dtype))
    return jnp.zeros(side.csr.edge_ids.shape + dots.shape[1:], dots.dtype).at[side.csr.edge_ids].add(dots)


def _side_sum(backend: str, side: Side, u: jax.Array, w: jax.Array | None) -> jax.Array:
    """``out[v] = sum over slots of v of w[slot] * u[neighbour]``: u (N, M) with w (E,) or None, or
    u (N, H, F) with w (E, H) or None (per head). A side's self loops are a term of their own."""
    if _loops_as_terms(backend, side):
        edge_w, loop_w = _split_loops(side, w)
        return KERNELS[backend].side_sum(side.without_loops(), u, edge_w) + _loop_term(u, loop_w)
    return KERNELS[backend].side_sum(side, u, w)


def _side_edge_dot(backend: str, side: Side, u: jax.Array, v: jax.Array) -> jax.Array:
    """``out[edge_ids[k]] = <v[r], u[cols[k]]>`` for every slot k of row r; (E,), or (E, H) per head."""
    if _loops_as_terms(backend, side):
        edge_dots = KERNELS[backend].edge_dot(side.without_loops(), u, v)
        return jnp.concatenate([edge_dots, _loop_dots(u, v).astype(edge_dots.dtype)])
    return KERNELS[backend].edge_dot(side, u, v)


# A side's self loops (`Side.self_loops`) are edges E..E+N-1, the loop of node v the last slot of row v,
# kept out of its CSR so that adding them inside `jit` builds nothing (a looped CSR of both sides cost a
# GCN training step whose `gcn_norm` adds them about 10 ms and (E + N) copies of the tables at 10^5
# nodes). Backends whose kernels walk them as one more slot per row say so (`Kernels.self_loops`); for
# the others the sums and edge dots take them as elementwise terms around the walk over the own edges.
def _loops_as_terms(backend: str, side: Side) -> bool:
    """Whether ``side``'s self loops are added around ``backend``'s kernels rather than walked by them."""
    return side.self_loops and not KERNELS[backend].self_loops


def _split_loops(side: Side, w: jax.Array | None) -> tuple[jax.Array | None, jax.Array | None]:
    """(E + N, ...) edge data as the graph's own edges' (E, ...) and the loops' (N, ...)."""
    if w is None:
        return None, None
    e = side.edge_csr.cols.shape[0]
    return w[:e], w[e:]


def _loop_term(u: jax.Array, loop_w: jax.Array | None) -> jax.Array:
    """``loop_w[v] * u[v]``: u (N, M) with loop_w (N,), or u (N, H, F) with loop_w (N, H); u if None."""
    if loop_w is None:
        return u
    return loop_w.astype(u.dtype).reshape(loop_w.shape + (1,) * (u.ndim - loop_w.ndim)) * u


def _loop_dots(u: jax.Array, v: jax.Array) -> jax.Array:
    """``<v[n], u[n]>`` per node: (N,) for (N, M) operands, (N, H) for (N, H, F)."""
    return jnp.sum(u * v, axis=-1)


def _native_sum(side: Side, u: jax.Array, w: jax.Array | None) -> jax.Array:
    """The native CSR kernel on CPU (float32/64, when built), else the CSR order with segment sums.

    Either form: every head of (N, H, F) ``u`` with (E, H) ``w`` in one pass."""
    if _use_native(u, w):
        native = lambda u, w: _native.csr_sum(side.edge_csr, u, w, self_loops=side.self_loops)
        return jax.lax.platform_dependent(u, w, cpu=native, default=lambda u, w: _csr_segment_sum(side, u, w))
    return _csr_segment_sum(side, u, w)


def _native_extremum(side: Side, reduce: str, u: jax.Array, w: jax.Array | None, live: jax.Array | None):
    """The native arg-extremum kernel on CPU (float32/64, when built), else the same with XLA segment ops
    (`jgrad.ops._extremum.segment_extremum`, which documents the arguments and results)."""
    if _use_native(u, w):
        return jax.lax.platform_dependent(
            u, w, live, cpu=lambda u, w, live: _native.csr_extremum(side.csr, reduce, u, w, live),
            default=lambda u, w, live: _extremum.segment_extremum(side, reduce, u, w, live))
    return _extremum.segment_extremum(side, reduce, u, w, live)


def _native_routed(side: Side, u: jax.Array, w: jax.Array | None, live: jax.Array | None, top: jax.Array,
                   share: jax.Array):
    """The native backward of max/min at ties on CPU, else `jgrad.ops._extremum.segment_routed`."""
    if _use_native(u, w, top, share):
        return jax.lax.platform_dependent(
            u, w, live, top, share,
            cpu=lambda *args: _native.csr_routed(side.csr, *args),
            default=lambda *args: _extremum.segment_routed(side, *args))
    return _extremum.segment_routed(side, u, w, live, top, share)


def _native_attention(side: Side, senders, receivers, mask, negative_slope: float, src, dst, self_loops: bool):
    """GAT's attention ``(alpha (E, H), alpha_self (N, H) or None)`` of (N, H) scores by the native
    kernel on CPU, else with XLA ops (`jgrad.ops._attention.segment_attention`, which documents the
    arguments)."""
    n = side.in_degree.shape[0]
    xla = lambda src, dst: _attention.segment_attention(n, senders, receivers, mask, negative_slope, src, dst,
                                                        self_loops)
    if not _use_native(src, dst):
        return xla(src, dst)
    native = lambda src, dst: _native.csr_attention(side.csr, src, dst, mask, negative_slope, senders.shape[0],
                                                    self_loops)
    return jax.lax.platform_dependent(src, dst, cpu=native, default=xla)


def _native_attention_backward(side: Side, senders, receivers, mask, negative_slope: float, src, dst, alpha, g,
                               alpha_self, g_self):
    """``(d_raw, d_dst, d_self or None)`` by the native kernel on CPU, else
    `jgrad.ops._attention.segment_attention_backward`."""
    n = side.in_degree.shape[0]
    xla = lambda *args: _attention.segment_attention_backward(n, senders, receivers, mask, negative_slope, *args)
    if not _use_native(src, dst, alpha, g):
        return xla(src, dst, alpha, g, alpha_self, g_self)
    native = lambda src, dst, *rest: _native.csr_attention_backward(side.csr, src, dst, mask, negative_slope, *rest)
    return jax.lax.platform_dependent(src, dst, alpha, g, alpha_self, g_self, cpu=native, default=xla)


def _edge_sum_by_rows(side: Side, rows: jax.Array, e: jax.Array) -> jax.Array:
    """``out[rows[e]] += e[e]`` as an XLA segment sum: the edge data is read in edge order and the
    small (N, H) output stays in cache. The native backend's `Kernels.edge_sum` (see `Kernels`)."""
    return jax.ops.segment_sum(e, rows, num_segments=side.in_degree.shape[0])


def _bucket_sum(side: Side, u: jax.Array, w: jax.Array | None) -> jax.Array:
    """`_side_sum` as gathers and dense reductions over the bucket tables."""
    n, m = u.shape
    u_ext = _append_zero_row(u)
    w_ext = None if w is None else _append_zero_row(w.astype(u.dtype))
    parts = []
    for bucket in side.buckets:
        def reduce_chunk(chunk):
            neighbours, edge_ids = chunk
            gathered = u_ext.at[neighbours].get(mode="promise_in_bounds")  # (R, K, M)
            if w_ext is not None:
                gathered = gathered * w_ext.at[edge_ids].get(mode="promise_in_bounds")[..., None]
            return gathered.sum(axis=1)

        rows = _map_chunks(reduce_chunk, (bucket.neighbours, bucket.edge_ids)).reshape(-1, m)
        rows = rows[: bucket.n_receivers * bucket.split]
        if bucket.split > 1:
            rows = rows.reshape(bucket.n_receivers, bucket.split, m).sum(axis=1)
        parts.append(rows)
    parts.append(jnp.zeros((1, m), u.dtype))
    return jnp.concatenate(parts).at[side.output_position].get(mode="promise_in_bounds")


def layout_edge_dot(layout: Plan, u: jax.Array, v: jax.Array) -> jax.Array:
    """``out[e] = <v[receivers[e]], u[senders[e]]>`` for (N, M) ``u``, ``v``; shape (E,).

    For (N, H, F) ``u``, ``v`` one dot per head, ``out[e, h] = <v[receivers[e], h], u[senders[e], h]>``;
    shape (E, H). Padding edges (absent from the plan) get 0.
    """
    return _EDGE_DOT(layout, u, v)


def _bilinear(op, layout, a, b, ta, tb):
    """The tangent of ``op(layout, a, b)``, bilinear in (a, b): ``op(ta, b) + op(a, tb)`` for the
    tangents that are not None."""
    terms = [op(layout, x, y) for x, y, moves in ((ta, b, ta is not None), (a, tb, tb is not None)) if moves]
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def _edge_dot_tangent(operands, out, tangents):
    layout, u, v = operands
    return _bilinear(layout_edge_dot, layout, u, v, tangents[1], tangents[2])


def _edge_dot_backward(operands, out, cotangent, wanted):
    layout, u, v = operands
    du = layout_sum(layout.transpose(), v, cotangent) if wanted[1] else None  # du[s] = sum_e g[e] v[r]
    dv = layout_sum(layout, u, cotangent) if wanted[2] else None  # dv[r] = sum_e g[e] u[s]
    return None, du, dv


_EDGE_DOT = Op("jgrad_layout_edge_dot", lambda layout, u, v: _side_edge_dot(layout.backend, layout.forward, u, v),
               tangent=_edge_dot_tangent, backward=_edge_dot_backward)


def _native_edge_dot(side: Side, u: jax.Array, v: jax.Array) -> jax.Array:
    if _use_native(u, v) and u.dtype == v.dtype:
        n_edges = side.edge_csr.edge_ids.shape[0] + (side.in_degree.shape[0] if side.self_loops else 0)
        native = lambda u, v: _native.csr_edge_dot(side.edge_csr, u, v, n_edges, self_loops=side.self_loops)
        return jax.lax.platform_dependent(u, v, cpu=native, default=lambda u, v: _csr_segment_edge_dot(side, u, v))
    return _csr_segment_edge_dot(side, u, v)


def _native_sum_dot(plan: Plan, g: jax.Array, w: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Both cotangents of a weighted sum: in one native pass over the reversed graph (CPU) when that
    side holds the edges in id order, else as two passes (`_separate_backward`).

    The fused pass reads each gathered row once for both results, but it reads w and writes the edge
    dots at its slots' edge ids. In id order that is sequential and the fused pass is the faster (GCN
    layer at 1e5 nodes, edges sorted by sender: 27 against 34 ms); otherwise the reverse sum plus the
    edge dot over the forward side measured 8-15% faster (edges sorted by receiver or in random order,
    GCN and 4-head GAT layers; interleaved medians).
    """
    if not plan.reverse.in_edge_order:
        return _separate_backward(plan, g, w, u)
    if _use_native(g, w, u) and g.dtype == w.dtype == u.dtype:
        reverse = plan.reverse
        native = lambda g, w, u: _native.csr_sum_dot(reverse.edge_csr, g, u, w, self_loops=reverse.self_loops)
        separate = lambda g, w, u: _separate_backward(plan, g, w, u)
        return jax.lax.platform_dependent(g, w, u, cpu=native, default=separate)
    return _separate_backward(plan, g, w, u)


def _bucket_edge_dot(side: Side, u: jax.Array, v: jax.Array) -> jax.Array:
    """`_side_edge_dot` as gathers and row dot products over the bucket tables."""
    u_ext = _append_zero_row(u)
    v_ext = _append_zero_row(v)
    slots = []
    for bucket in side.buckets:
        def dot_chunk(chunk):
            neighbours, row_nodes = chunk
            gathered = u_ext.at[neighbours].get(mode="promise_in_bounds")  # (R, K, M)
            rows = v_ext.at[row_nodes].get(mode="promise_in_bounds")  # (R, M)
            return jnp.einsum("rkm,rm->rk", gathered, rows)

        slots.append(_map_chunks(dot_chunk, (bucket.neighbours, bucket.row_nodes)).reshape(-1))
    slots.append(jnp.zeros((1,), jnp.result_type(u, v)))
    return jnp.concatenate(slots).at[side.slot_of_edge].get(mode="promise_in_bounds")


def layout_sum(layout: Plan, u: jax.Array, w: jax.Array | None) -> jax.Array:
    """``out[receivers[e]] += w[e] * u[senders[e]]`` on the plan; u (N, M), w (E,) or None.

    Per head: u (N, H, F), w (E, H), ``out[receivers[e], h] += w[e, h] * u[senders[e], h]``, with
    every head in one pass on backends that have multi-head kernels (see `Kernels`); the backward
    then gives dw of shape (E, H). Returns u's shape in u's dtype (w is cast to it).

    The backward computes only the cotangents that are asked for (`jgrad._src._op.Op` tells it which of
    u and w carry a gradient), so a training step whose edge weights are constants runs ``A^T @ dout``
    alone, not the fused pass that also forms ``dw``.
    """
    return _SUM(layout, u, w)


def _sum_tangent(operands, out, tangents):
    layout, u, w = operands
    return _bilinear(layout_sum, layout, u, w, tangents[1], tangents[2])


def _sum_backward(operands, out, cotangent, wanted):
    layout, u, w = operands
    if wanted[1] and wanted[2]:
        du, dw = layout_sum_backward(layout, cotangent, w, u)
        return None, du, dw
    du = layout_sum(layout.transpose(), cotangent, w) if wanted[1] else None
    dw = layout_edge_dot(layout, u, cotangent) if wanted[2] else None
    return None, du, dw


def _sum_batched(operands, dims):
    """`layout_sum` under ``vmap`` over the features alone: one sum whose rows hold the whole batch
    (B times the feature columns, per head), instead of one sum per batch entry.

    Measured on the 1e5-node benchmark graph, B = 8, F = 16 (interleaved medians): the vmapped sum
    51-64 -> 45-56 ms, its gradient w.r.t. the features 115-124 -> 58-67 ms. A batch of weights is
    left to one sum per entry: folded into more heads (features broadcast) it measured 15% slower, and
    so did the edge dots folded the same way.
    """
    layout, u, w = operands
    layout_dim, u_dim, w_dim = dims
    if layout_dim is not None or w_dim is not None:
        return None
    heads = w is not None and w.ndim == 2
    u = jnp.moveaxis(u, u_dim, 2 if heads else 1)  # (N, [H,] B, F)
    out = layout_sum(layout, u.reshape(u.shape[:-2] + (-1,)), w).reshape(u.shape)
    return out, 2 if heads else 1


_SUM = Op("jgrad_layout_sum", lambda layout, u, w: _side_sum(layout.backend, layout.forward, u, w),
          tangent=_sum_tangent, backward=_sum_backward, batch=_sum_batched)


def layout_sum_backward(layout: Plan, g: jax.Array, w: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The cotangents of a weighted `layout_sum`: ``(A^T @ g, dw)`` with ``dw[e] = <g[receivers[e]], u[senders[e]]>``.

    g, u (N, M), w (E,); or per head g, u (N, H, F), w (E, H) and dw (E, H). Equal to
    ``(layout_sum(layout.transpose(), g, w), layout_edge_dot(layout, u, g))``; on CPU, for edges sorted
    by sender, one native pass over the reversed graph reads each gathered row of g once for both
    results and every head (`_native_sum_dot`).
    """
    return _SUM_BACKWARD(layout, g, w, u)


def _fused_backward(layout, g, w, u):
    fused = KERNELS[layout.backend].sum_dot
    if fused is None:
        return _separate_backward(layout, g, w, u)
    if _loops_as_terms(layout.backend, layout.forward):  # the loops' terms around the fused pass
        edge_w, loop_w = _split_loops(layout.forward, w)
        du, dw = fused(layout.without_loops(), g, edge_w, u)
        return du + _loop_term(g, loop_w), jnp.concatenate([dw, _loop_dots(u, g).astype(dw.dtype)])
    return fused(layout, g, w, u)


def _separate_backward(layout, g, w, u):
    return (_side_sum(layout.backend, layout.reverse, g, w),
            _side_edge_dot(layout.backend, layout.forward, u, g))


def _sum_backward_tangent(operands, outs, tangents):
    """The tangents of ``(A^T g, dw)``: bilinear in (g, w) and in (u, g)."""
    layout, g, w, u = operands
    _, tg, tw, tu = tangents
    reversed_sum = (_bilinear(layout_sum, layout.transpose(), g, w, tg, tw) if tg is not None or tw is not None
                    else jnp.zeros_like(outs[0]))
    dots = (_bilinear(layout_edge_dot, layout, u, g, tu, tg) if tu is not None or tg is not None
            else jnp.zeros_like(outs[1]))
    return reversed_sum, dots


def _sum_backward_backward(operands, outs, cotangents, wanted):
    layout, g, w, u = operands
    a, b = cotangents  # of A^T g (N, M) and of dw (E,); or (N, H, F) and (E, H)
    dg = layout_sum(layout, a, w) + layout_sum(layout, u, b) if wanted[1] else None
    dw = layout_edge_dot(layout, a, g) if wanted[2] else None
    du = layout_sum(layout.transpose(), g, b) if wanted[3] else None
    return None, dg, dw, du


_SUM_BACKWARD = Op("jgrad_layout_sum_backward", _fused_backward, tangent=_sum_backward_tangent,
                   backward=_sum_backward_backward)


class Kernels(NamedTuple):
    """The raw, forward-only kernels of one backend (the ops above differentiate them).

    Attributes:
      side_sum: ``(side, u (N, M), w (E,) or None) -> (N, M)``, the sum over each row's slots.
      edge_dot: ``(side, u (N, M), v (N, M)) -> (E,)``, one dot per edge (0 for edges in no slot).
      sum_dot: optional ``(plan, g, w, u) -> (A^T g, dw)`` fused on ``plan.reverse`` (it may choose the
        two passes itself, as the native one does unless ``plan.reverse.in_edge_order``); None
        computes it as ``side_sum`` on the reverse side plus ``edge_dot``.
      multi_head: whether the three also take the per-head form, node data (N, H, F) with edge data
        (E, H) (``side_sum -> (N, H, F)``, ``edge_dot -> (E, H)``, ``sum_dot -> ((N, H, F), (E, H))``).
        If False, `register` wraps them in `_per_head`: one single-weight call per head.
      edge_sum: optional ``(side, rows (E,), e (E,) or (E, H)) -> (N,) or (N, H)``, the sum of edge
        data at each row (``copy_e``/``sum``, the backward of gsddmm add, edge softmax); None runs
        ``side_sum`` of ones with e as the weight.
      extremum: optional ``(side, reduce, u, w, live) -> (out, arg, count)``, the max or min over each
        row's live slots with the lowest edge id attaining it and the number of slots that do, in either
        form (see `jgrad.ops._extremum.segment_extremum`); None leaves gspmm max/min to the plain path.
      routed: optional ``(reverse side, u, w, live, top, share) -> (du, dw)``, the backward of max/min
        at ties (see `jgrad.ops._extremum.segment_routed`, which serves when None).
      attention: optional ``(forward side, senders, receivers, live, negative_slope, src (N, H), dst
        (N, H), self_loops) -> (alpha (E, H), alpha_self (N, H) or None)``, GAT's attention fused,
        optionally with a self loop per receiver (live then (E,) or (E + N,), the loops' after the
        edges'; `jgrad.ops._attention.segment_attention`); None runs
        `jgrad.ops.gat_attention` as gsddmm, leaky ReLU and edge softmax (on a looped graph).
      attention_backward: ``(forward side, senders, receivers, live, negative_slope, src, dst, alpha,
        g, alpha_self, g_self) -> (d_raw (E, H), d_dst (N, H), d_self (N, H) or None)``, required with
        ``attention`` (`jgrad.ops._attention.segment_attention_backward`).
      self_loops: whether ``side_sum``, ``edge_dot`` and ``sum_dot`` take sides with
        `Side.self_loops` themselves (read ``edge_csr`` and walk the loop as one more slot per row);
        False gives them the side without its loops and adds the loops' terms around them.
    """

    side_sum: Callable
    edge_dot: Callable
    sum_dot: Callable | None = None
    multi_head: bool = False
    edge_sum: Callable | None = None
    extremum: Callable | None = None
    routed: Callable | None = None
    attention: Callable | None = None
    attention_backward: Callable | None = None
    self_loops: bool = False


def _per_head(kernels: Kernels) -> Kernels:
    """``kernels`` taking the per-head form too: single-weight calls pass through, per-head ones run
    one single-weight call per head (for backends without multi-head kernels)."""
    if kernels.multi_head:
        return kernels
    heads = lambda x: range(x.shape[1])

    def side_sum(side: Side, u: jax.Array, w: jax.Array | None) -> jax.Array:
        if u.ndim == 2:
            return kernels.side_sum(side, u, w)
        if w is None:  # no weights: the heads are just wider rows
            return kernels.side_sum(side, u.reshape(u.shape[0], -1), None).reshape((-1,) + u.shape[1:])
        return jnp.stack([kernels.side_sum(side, u[:, h], w[:, h]) for h in heads(u)], axis=1)

    def edge_dot(side: Side, u: jax.Array, v: jax.Array) -> jax.Array:
        if u.ndim == 2:
            return kernels.edge_dot(side, u, v)
        return jnp.stack([kernels.edge_dot(side, u[:, h], v[:, h]) for h in heads(u)], axis=1)

    def sum_dot(plan: Plan, g: jax.Array, w: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
        if g.ndim == 2:
            return kernels.sum_dot(plan, g, w, u)
        parts = [kernels.sum_dot(plan, g[:, h], w[:, h], u[:, h]) for h in heads(g)]
        return jnp.stack([p[0] for p in parts], axis=1), jnp.stack([p[1] for p in parts], axis=1)

    return kernels._replace(side_sum=side_sum, edge_dot=edge_dot,
                            sum_dot=None if kernels.sum_dot is None else sum_dot, multi_head=True)


KERNELS: dict[str, Kernels] = {}


def register(name: str, kernels: Kernels, *, tables: str) -> None:
    """Adds backend ``name``: its kernels (run once per head unless ``kernels.multi_head``, see
    `_per_head`), and the tables (``"csr"`` or ``"buckets"``) its plans hold."""
    _plan.register_backend(name, tables)
    KERNELS[name] = _per_head(kernels)


# The registry: adding a backend is its kernel module plus one line here. The native kernels do all
# heads in one pass; the bucket and Pallas kernels have no multi-head version (one pass per head).
# Sums of edge data at the nodes: on native plans an XLA segment sum (on CPU it reads the edge data in
# order and keeps the (N, H) output in cache; the CSR walk reads the edge data at random edge ids and
# measured 4-8x slower for (E, 4) data at 3e5 edges); the bucket and Pallas backends sum over their own
# tables (`_edge_sum_on_side`, one pass per head). max/min: the native kernel on CPU; the bucket and
# Pallas backends find the arg-extremum with XLA segment ops over the plan's CSR order (every plan has
# one), so their backward, too, is a scatter of N·M entries instead of the plain path's (E, M) messages.
# GAT's attention: fused on native plans; the other backends compose gsddmm, leaky ReLU and edge softmax.
register("native", Kernels(_native_sum, _native_edge_dot, _native_sum_dot, multi_head=True,
                           edge_sum=_edge_sum_by_rows, extremum=_native_extremum, routed=_native_routed,
                           attention=_native_attention, attention_backward=_native_attention_backward,
                           self_loops=True),
         tables="csr")
register("bucket", Kernels(_bucket_sum, _bucket_edge_dot, extremum=_extremum.segment_extremum), tables="buckets")
register("pallas", Kernels(_pallas.side_sum, _pallas.edge_dot, _pallas.sum_dot, extremum=_extremum.segment_extremum),
         tables="csr")


# --------------------------------------------------------------------------------------------------
# Edge data summed at the nodes, and node data read at the edges: a transpose pair on a plan.
# --------------------------------------------------------------------------------------------------
def _edge_sum_on_side(side: Side, backend: str, e: jax.Array) -> jax.Array:
    """``out[row] = sum of e over the row's slots`` by the backend's `side_sum` against ones: node data
    ones (N, 1) or (N, H, 1) with e (E,) or (E, H) as the (per-head) weight (one pass per head on
    backends without multi-head kernels, `_per_head`)."""
    ones = jnp.ones((side.in_degree.shape[0],) + e.shape[1:] + (1,), e.dtype)
    return _side_sum(backend, side, ones, e)[..., 0]


def _edge_sum(layout: Plan, rows: jax.Array, e: jax.Array) -> jax.Array:
    """The backend's edge sum on ``layout.forward``: its `Kernels.edge_sum`, else `_edge_sum_on_side`."""
    kernel = KERNELS[layout.backend].edge_sum
    if kernel is None:
        return _edge_sum_on_side(layout.forward, layout.backend, e)
    return kernel(layout.forward, rows, e)


def layout_edge_sum(layout: Plan, rows: jax.Array, e: jax.Array) -> jax.Array:
    """``out[rows[e]] += e[e]`` on the plan: the sum of the edge data at each row of its forward side.

    Args:
      layout: a plan; ``layout`` sums at the receivers, ``layout.transpose()`` at the senders.
      rows: (E,) int, the row of every edge on that side (receivers, or senders for the transpose);
        read by the backward (a gather) and by backends whose edge sum is a segment sum.
      e: (E,) or (E, H) float edge data, H heads summed separately.

    Returns:
      (N,) or (N, H) in e's dtype; 0 at rows without edges. Every planned edge counts (mask e first).
      The VJP is `layout_gather` and the VJP of that is this, so every order of reverse mode works.
    """
    return _EDGE_SUM(layout, rows, e)


_EDGE_SUM = Op("jgrad_layout_edge_sum", _edge_sum,
               tangent=lambda operands, out, tangents: layout_edge_sum(operands[0], operands[1], tangents[2]),
               backward=lambda operands, out, cotangent, wanted: (
                   None, None, layout_gather(operands[0], operands[1], cotangent)))


def layout_gather(layout: Plan, rows: jax.Array, x: jax.Array) -> jax.Array:
    """``out[e] = x[rows[e]]``, node data read at every edge; x (N,) or (N, H) -> (E,) or (E, H).

    The forward is an XLA gather (cheap on every platform); the backward, a sum of the edge
    cotangent at every node, is `layout_edge_sum` on the plan instead of a scatter-add.
    """
    return _GATHER(layout, rows, x)


_GATHER = Op("jgrad_layout_gather", lambda layout, rows, x: x[rows],
             tangent=lambda operands, out, tangents: layout_gather(operands[0], operands[1], tangents[2]),
             backward=lambda operands, out, cotangent, wanted: (
                 None, None, layout_edge_sum(operands[0], operands[1], cotangent)))


def edge_width(x) -> int | None:
    """The number of values per row that the edge sums take for ``x`` of shape (R,), (R, H) or (R, H, 1):
    0 for (R,), H otherwise; None for other shapes (the plain path serves those)."""
    trailing = tuple(x.shape[1:])
    if not trailing:
        return 0
    if len(trailing) == 1 or (len(trailing) == 2 and trailing[1] == 1):
        return int(trailing[0]) if trailing[0] > 0 else None
    return None


def as_rows(x: jax.Array) -> jax.Array:
    """(R,) stays, (R, H) and (R, H, 1) become (R, H) (see `edge_width`)."""
    return x if x.ndim == 1 else x.reshape(x.shape[0], x.shape[1])


def covers_gspmm(plan: Plan, op: str, reduce: str, u, e) -> bool:
    """Whether ``plan`` runs this gspmm.

    * ``copy_u``, and ``u_mul_e`` with e of one scalar per edge ((E,), (E, 1), ...) or one per head
      ((E, H) or (E, H, 1) against u of shape (N, H, F)): every reducer (``max``/``min`` on backends
      with an ``extremum`` kernel, all built-in ones).
    * ``u_div_e`` with such e: ``sum`` and ``mean`` (``u_mul_e`` with 1 / e).
    * ``u_add_e``, ``u_sub_e`` and ``copy_e`` with e of shape (E,), (E, H) or (E, H, 1) (`edge_width`):
      ``sum`` and ``mean`` (a sum of u plus the edge sum of e, `layout_edge_sum`).
    """
    if reduce in ("max", "min"):
        if KERNELS[plan.backend].extremum is None or op not in ("copy_u", "u_mul_e"):
            return False
    if op == "copy_u":
        return True
    if op in ("u_mul_e", "u_div_e"):
        return _head_count(u, e) is not None
    return op in ("copy_e", "u_add_e", "u_sub_e") and edge_width(e) is not None


def _head_count(u, e) -> int | None:
    """1 for scalar edge data, H for per-head edge data against (N, H, F) node data, else None."""
    trailing = tuple(e.shape[1:])
    if all(d == 1 for d in trailing) and e.ndim <= u.ndim:
        return 1
    if u.ndim == 3 and len(trailing) in (1, 2) and trailing[0] == u.shape[1] > 0 and all(d == 1 for d in trailing[1:]):
        return int(u.shape[1])
    return None


def plan_gspmm(plan: Plan, op: str, reduce: str, tie: str, u: jax.Array, e: jax.Array | None,
               mask: jax.Array | None, senders: jax.Array, receivers: jax.Array) -> jax.Array:
    """gspmm on the plan for the cases of `covers_gspmm`.

    ``copy_e`` is `layout_edge_sum` of the masked edge data (backward: a gather at the receivers);
    ``u_add_e``/``u_sub_e`` add it to (subtract it from) the sum of u; ``u_div_e`` is ``u_mul_e`` by 1 / e.
    ``max``/``min`` run the backend's arg-extremum kernel (`jgrad.ops._extremum.plan_extremum`).

    A per-head weight ((E, H) or (E, H, 1) against (N, H, F) u) runs as one per-head `layout_sum`: on
    the native backend every head in one pass over the CSR (forward and backward), on backends
    without multi-head kernels one pass per head (`_per_head`). The plan covers every edge: padding
    edges (``mask`` False) get weight 0 here.
    """
    if op in ("copy_e", "u_add_e", "u_sub_e"):  # per-receiver sums of the edge data: (N,) + e.shape[1:]
        edges = layout_edge_sum(plan, receivers, _masked(as_rows(e), mask)).reshape((plan.n_nodes,) + e.shape[1:])
        if op == "copy_e":
            return _mean(plan, edges, reduce, mask, receivers)
        nodes = plan_gspmm(plan, "copy_u", "sum", tie, u, None, mask, senders, receivers)
        edges = edges.reshape(edges.shape + (1,) * (u.ndim - edges.ndim))  # broadcast left-aligned
        return _mean(plan, nodes + edges if op == "u_add_e" else nodes - edges, reduce, mask, receivers)
    if op == "u_div_e":  # u * (1 / e); padding edges divide by 1 (their weight is masked to 0 below)
        e = 1 / (e if mask is None else jnp.where(mask.reshape(mask.shape + (1,) * (e.ndim - 1)), e, 1))
        op = "u_mul_e"
    if reduce in ("max", "min"):
        heads = 1 if e is None else _head_count(u, e)  # u and e share a dtype here (gspmm casts them)
        return _extremum.plan_extremum(KERNELS[plan.backend], plan, op, reduce, tie, u, e, heads, mask, senders,
                                       receivers)
    shape = u.shape
    if op == "copy_u":
        w = None if mask is None else mask.astype(u.dtype)
        out = layout_sum(plan, u.reshape(u.shape[0], -1), w).reshape(shape)
        return _mean(plan, out, reduce, mask, receivers)
    dtype = jnp.result_type(u, e)
    heads = _head_count(u, e)
    u = u.astype(dtype)
    w = _masked(e.reshape(e.shape[0], heads).astype(dtype), mask)
    if heads > 1:
        out = layout_sum(plan, u, w)  # (N, H, F) with (E, H) weights
    else:
        out = layout_sum(plan, u.reshape(u.shape[0], -1), w[:, 0]).reshape(shape)
    return _mean(plan, out, reduce, mask, receivers)


def _masked(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """``values`` (E, ...) with padding edges set to 0 (a where, so their gradient is 0 as well)."""
    if mask is None:
        return values
    return jnp.where(mask.reshape(mask.shape + (1,) * (values.ndim - 1)), values, jnp.zeros((), values.dtype))


def _mean(plan: Plan, out: jax.Array, reduce: str, mask: jax.Array | None, receivers: jax.Array) -> jax.Array:
    if reduce != "mean":
        return out
    if mask is None:
        count = plan.forward.in_degree.astype(out.dtype)
    else:
        count = jax.ops.segment_sum(mask.astype(out.dtype), receivers, num_segments=plan.n_nodes)
    count = jnp.maximum(count, 1)
    return out / count.reshape((-1,) + (1,) * (out.ndim - 1))


def covers_gsddmm(op: str, lhs, rhs, lhs_target: str, rhs_target: str) -> bool:
    """Whether a plan runs this gsddmm: ``"dot"`` of two node arrays of one shape (N, F) or (N, H, F),
    one at the sender and one at the receiver; or ``"add"``, ``"sub"``, ``"mul"``, ``"copy_lhs"``,
    ``"copy_rhs"`` of operands of shape (R,), (R, H) or (R, H, 1), one trailing shape for both, each a
    node array (targets ``"u"``/``"v"``, R = N) or edge data (``"e"``, R = E)."""
    if op == "dot":
        return ({lhs_target, rhs_target} == {"u", "v"} and lhs is not None and rhs is not None
                and lhs.shape == rhs.shape and lhs.ndim in (2, 3))
    pair = ((lhs, lhs_target), (rhs, rhs_target))
    used = {"add": pair, "sub": pair, "mul": pair, "copy_lhs": pair[:1], "copy_rhs": pair[1:]}.get(op)
    if used is None or any(value is None or edge_width(value) is None for value, _ in used):
        return False
    return len({value.shape[1:] for value, _ in used}) == 1


def plan_gsddmm(plan: Plan, op: str, lhs: jax.Array | None, rhs: jax.Array | None, lhs_target: str,
                rhs_target: str, mask: jax.Array | None, senders: jax.Array, receivers: jax.Array) -> jax.Array:
    """gsddmm on the plan for the cases of `covers_gsddmm`; 0 at padding edges.

    ``"dot"`` returns (E, 1) or (E, H, 1), all heads in one `layout_edge_dot`. ``"add"``, ``"sub"``,
    ``"mul"`` and the copies read node operands at the edges with `layout_gather` (an XLA gather), so
    their backward (node cotangent = the sum of the edge cotangent, times the other operand for
    ``"mul"``, at each sender or receiver) is `layout_edge_sum` on the plan, not a scatter-add; edge
    operands are used as they are. They return (E,) + the operands' trailing shape.
    """
    if op == "dot":
        u, v = (lhs, rhs) if lhs_target == "u" else (rhs, lhs)
        dtype = jnp.result_type(u, v)
        u, v = u.astype(dtype), v.astype(dtype)
        if u.ndim == 3:
            return _masked(layout_edge_dot(plan, u, v), mask)[..., None]  # (E, H) -> (E, H, 1)
        return _masked(layout_edge_dot(plan, u, v)[:, None], mask)

    def at(x, target):  # x (N,) + trailing read at every edge's sender or receiver: (E,) + trailing
        if target == "e":
            return x
        side, rows = (plan, receivers) if target == "v" else (plan.transpose(), senders)
        return layout_gather(side, rows, as_rows(x)).reshape((rows.shape[0],) + x.shape[1:])

    if op == "copy_lhs":
        out = at(lhs, lhs_target)
    elif op == "copy_rhs":
        out = at(rhs, rhs_target)
    else:
        dtype = jnp.result_type(lhs, rhs)
        a, b = at(lhs.astype(dtype), lhs_target), at(rhs.astype(dtype), rhs_target)
        out = a + b if op == "add" else a - b if op == "sub" else a * b
    return _masked(out, mask)
