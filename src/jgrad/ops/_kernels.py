"""Sum aggregation and per-edge products on a `Layout`, with custom VJPs.

``layout_sum(layout, u, w)`` computes ``out[receivers[e]] += w[e] * u[senders[e]]`` (or ``u[...]``
alone when ``w`` is None) with no scatter-add and no (E, F) intermediate. Its backward reuses the layout:

* ``du = A^T @ dout``: `layout_sum` on ``layout.transpose()``, the reversed graph.
* ``dw[e] = <dout[receivers[e]], u[senders[e]]>``: `layout_edge_dot`, a g-SDDMM.

With weights both come from `layout_sum_backward`, which on CPU walks the reversed graph once and uses
each gathered row of ``dout`` for both. `layout_edge_dot` and `layout_sum_backward` have their own
VJPs built from `layout_sum` and `layout_edge_dot`, so every order of reverse mode works.

Two formulations, chosen per platform when the computation is lowered: on CPU, for float32/float64,
the native CSR kernels of `jgrad.ops._native` (when they are built); everywhere else gathers and dense
reductions over the degree-bucketed neighbour tables (XLA only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..graph._checks import is_concrete
from . import _native
from ._layout import Layout, Side


def _append_zero_row(x: jax.Array) -> jax.Array:
    return jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)])


def _map_chunks(fn, arrays):
    """``fn`` over the leading (chunk) axis: directly for one chunk, else with ``lax.map``."""
    if jax.tree.leaves(arrays)[0].shape[0] == 1:
        return fn(jax.tree.map(lambda a: a[0], arrays))[None]
    return jax.lax.map(fn, arrays)


def _use_native(*arrays) -> bool:
    return _native.available() and all(_native.supports(a.dtype) for a in arrays if a is not None)


def _side_sum(side: Side, u: jax.Array, w: jax.Array | None) -> jax.Array:
    """``out[v] = sum over slots of v of w[slot] * u[neighbour]`` for (N, M) ``u`` and (E,) ``w``."""
    if _use_native(u, w):
        return jax.lax.platform_dependent(u, w, cpu=lambda u, w: _native.csr_sum(side.csr, u, w),
                                          default=lambda u, w: _bucket_sum(side, u, w))
    return _bucket_sum(side, u, w)


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


@jax.custom_vjp
def layout_edge_dot(layout: Layout, u: jax.Array, v: jax.Array) -> jax.Array:
    """``out[e] = <v[receivers[e]], u[senders[e]]>`` for (N, M) ``u``, ``v``; shape (E,).

    Padding edges (absent from the layout) get 0.
    """
    return _side_edge_dot(layout.forward, u, v)


def _layout_edge_dot_fwd(layout, u, v):
    # The primal goes through the custom-VJP function again, so that an outer differentiation (reverse
    # over reverse) sees a differentiable call rather than the native kernel.
    return layout_edge_dot(layout, u, v), (layout, u, v)


def _layout_edge_dot_bwd(residuals, cotangent):
    layout, u, v = residuals
    du = layout_sum(layout.transpose(), v, cotangent).astype(u.dtype)  # du[s] = sum_e g[e] v[r]
    dv = layout_sum(layout, u, cotangent).astype(v.dtype)  # dv[r] = sum_e g[e] u[s]
    return None, du, dv


layout_edge_dot.defvjp(_layout_edge_dot_fwd, _layout_edge_dot_bwd)


def _side_edge_dot(side: Side, u: jax.Array, v: jax.Array) -> jax.Array:
    if _use_native(u, v) and u.dtype == v.dtype:
        n_edges = side.slot_of_edge.shape[0]
        return jax.lax.platform_dependent(u, v, cpu=lambda u, v: _native.csr_edge_dot(side.csr, u, v, n_edges),
                                          default=lambda u, v: _bucket_edge_dot(side, u, v))
    return _bucket_edge_dot(side, u, v)


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


@jax.custom_vjp
def layout_sum(layout: Layout, u: jax.Array, w: jax.Array | None) -> jax.Array:
    """``out[receivers[e]] += w[e] * u[senders[e]]`` on the layout; u (N, M), w (E,) or None.

    Returns (N, M) in u's dtype (w is cast to it).
    """
    return _side_sum(layout.forward, u, w)


def _layout_sum_fwd(layout, u, w):
    # The primal goes through the custom-VJP function again (see _layout_edge_dot_fwd).
    return layout_sum(layout, u, w), (layout, u, w)


def _layout_sum_bwd(residuals, cotangent):
    layout, u, w = residuals
    if w is None:
        return None, layout_sum(layout.transpose(), cotangent, None), None
    du, dw = layout_sum_backward(layout, cotangent, w, u)
    return None, du, dw.astype(w.dtype)


layout_sum.defvjp(_layout_sum_fwd, _layout_sum_bwd)


@jax.custom_vjp
def layout_sum_backward(layout: Layout, g: jax.Array, w: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The cotangents of a weighted `layout_sum`: ``(A^T @ g, dw)`` with ``dw[e] = <g[receivers[e]], u[senders[e]]>``.

    g, u (N, M), w (E,). Equal to ``(layout_sum(layout.transpose(), g, w), layout_edge_dot(layout, u, g))``;
    on CPU one native pass over the reversed graph reads each gathered row of g once for both.
    """
    if _use_native(g, w, u) and g.dtype == w.dtype == u.dtype:
        return jax.lax.platform_dependent(g, w, u, cpu=lambda g, w, u: _native.csr_sum_dot(layout.reverse.csr, g, u, w),
                                          default=lambda g, w, u: _separate_backward(layout, g, w, u))
    return _separate_backward(layout, g, w, u)


def _separate_backward(layout, g, w, u):
    return _side_sum(layout.reverse, g, w), _side_edge_dot(layout.forward, u, g)


def _layout_sum_backward_fwd(layout, g, w, u):
    return layout_sum_backward(layout, g, w, u), (layout, g, w, u)  # primal via the custom VJP (see above)


def _layout_sum_backward_bwd(residuals, cotangents):
    layout, g, w, u = residuals
    a, b = cotangents  # of A^T g (N, M) and of dw (E,)
    dg = layout_sum(layout, a, w) + layout_sum(layout, u, b)
    dw = layout_edge_dot(layout, a, g)
    du = layout_sum(layout.transpose(), g, b)
    return None, dg.astype(g.dtype), dw.astype(w.dtype), du.astype(u.dtype)


layout_sum_backward.defvjp(_layout_sum_backward_fwd, _layout_sum_backward_bwd)


LAYOUT_OPS = ("copy_u", "u_mul_e")
LAYOUT_REDUCERS = ("sum", "mean")


def check_layout(where: str, layout, n_nodes: int, n_edges: int, op: str, reduce: str, e,
                 graph=None) -> None:
    """Raises if ``layout`` cannot run this gspmm: wrong type or size, or an op it does not cover.

    When ``graph`` is given with concrete indices, the layout's in-degrees are also compared with the
    graph's live edges, so a layout planned for another graph of the same size is refused (under
    ``jit`` that comparison is skipped: plan the layout from the same graph).
    """
    problems = []
    if op not in LAYOUT_OPS:
        problems.append(f"the layout path supports op {' or '.join(map(repr, LAYOUT_OPS))}; got {op!r}.")
    if reduce not in LAYOUT_REDUCERS:
        problems.append(f"the layout path supports reduce "
                        f"{' or '.join(map(repr, LAYOUT_REDUCERS))}; got {reduce!r}.")
    if op == "u_mul_e" and e is not None and any(d != 1 for d in e.shape[1:]):
        problems.append(f"the layout path needs one scalar per edge; got e of shape {tuple(e.shape)}, "
                        f"expected ({n_edges},) or ({n_edges}, 1).")
    _raise_layout_problems(where, layout, n_nodes, n_edges, graph, problems)


def check_sddmm_layout(where: str, layout, n_nodes: int, n_edges: int, op: str, lhs, rhs, lhs_target: str,
                       rhs_target: str, graph=None) -> None:
    """Raises if ``layout`` cannot run this gsddmm: it covers ``"dot"`` of two (N, F) node arrays, one
    at the sender and one at the receiver (see `check_layout` for the graph checks)."""
    problems = []
    if op != "dot":
        problems.append(f"the layout path supports op 'dot'; got {op!r}.")
    if {lhs_target, rhs_target} != {"u", "v"}:
        problems.append(f"the layout path needs one operand at 'u' and one at 'v'; got lhs_target="
                        f"{lhs_target!r}, rhs_target={rhs_target!r}.")
    if lhs is not None and rhs is not None and (lhs.ndim != 2 or lhs.shape != rhs.shape):
        problems.append(f"the layout path needs lhs and rhs of one shape (N, F); got {tuple(lhs.shape)} "
                        f"and {tuple(rhs.shape)}.")
    _raise_layout_problems(where, layout, n_nodes, n_edges, graph, problems)


def _raise_layout_problems(where, layout, n_nodes, n_edges, graph, problems) -> None:
    if not isinstance(layout, Layout):
        raise TypeError(f"{where}: layout must be a jgrad.ops.Layout from plan_layout(graph); "
                        f"got {type(layout).__name__}.")
    if (layout.n_nodes, layout.n_edges) != (n_nodes, n_edges):
        problems.insert(0, f"the layout was planned for another graph; got n_nodes={layout.n_nodes}, "
                        f"n_edges={layout.n_edges}, expected n_nodes={n_nodes}, n_edges={n_edges}.")
    if not problems and graph is not None and is_concrete(graph.receivers, graph.edge_mask,
                                                          layout.forward.in_degree):
        receivers = np.asarray(graph.receivers)
        if graph.edge_mask is not None:
            receivers = receivers[np.asarray(graph.edge_mask)]
        if not np.array_equal(np.bincount(receivers, minlength=n_nodes), np.asarray(layout.forward.in_degree)):
            problems.append("the layout was planned for another graph with the same sizes (its in-degrees "
                            "differ from this graph's); plan it with plan_layout(graph).")
    if problems:
        raise ValueError(f"{where}: " + " ".join(problems) + " Leave out layout= for the general path.")


def layout_gspmm(layout: Layout, op: str, reduce: str, u: jax.Array, e: jax.Array | None) -> jax.Array:
    """gspmm for ``copy_u`` / ``u_mul_e`` with scalar edge data and ``sum`` / ``mean``, on the layout."""
    trailing = tuple(u.shape[1:])
    w = None
    if op == "u_mul_e":
        extra = e.ndim - u.ndim
        trailing = trailing + (1,) * max(extra, 0)
        dtype = jnp.result_type(u, e)
        u, w = u.astype(dtype), e.reshape(e.shape[0]).astype(dtype)
    out = layout_sum(layout, u.reshape(u.shape[0], -1), w)
    if reduce == "mean":
        count = jnp.maximum(layout.forward.in_degree, 1).astype(out.dtype)
        out = out / count[:, None]
    return out.reshape((u.shape[0],) + trailing)


def layout_gsddmm(layout: Layout, lhs: jax.Array, rhs: jax.Array, lhs_target: str) -> jax.Array:
    """gsddmm ``"dot"`` of two (N, F) node arrays on the layout; returns (E, 1)."""
    u, v = (lhs, rhs) if lhs_target == "u" else (rhs, lhs)
    dtype = jnp.result_type(u, v)
    return layout_edge_dot(layout, u.astype(dtype), v.astype(dtype))[:, None]
