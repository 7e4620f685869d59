"""Softmax of edge scores over each node's incoming edges (the attention weights of GAT).

Backward, with ``a = edge_softmax(logits)`` and cotangent ``g``::

    dlogits[e] = a[e] * (g[e] - sum over edges e' into receivers[e] of a[e'] * g[e'])

The inner sum is a g-SpMM (``copy_e``, ``sum``) and its read-back per edge a g-SDDMM (``copy_rhs``
at the receiver). The saved residual is ``a`` itself, O(E·H).

`gat_attention` is the softmax of GAT's scores, ``leaky_relu(src[senders] + dst[receivers])``, as one
op: on a backend with a fused ``attention`` kernel (native on CPU) the scores are never materialised
(`jgrad.ops._attention` holds the reference of that kernel and of its backward).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from .._src import _taps
from .._src._checks import check_graph, check_graph_indices
from .._src._loops import looped_edge_mask
from .._src._messages import align_edge
from .._src._op import Op, backward_of, tangent_of
from .._src._plan import Plan, resolve
from .._src._types import accumulation_dtype
from ..graph import Graph
from . import _kernels
from ._attention import segment_attention, segment_attention_backward
from ._gsddmm import gsddmm
from ._primitives import raw_gsddmm, raw_gspmm
from ._segment import segment_softmax

ArrayLike = jax.typing.ArrayLike


def edge_softmax(graph: Graph, logits: ArrayLike) -> jax.Array:
    """Normalises edge scores into a distribution over each receiver's incoming edges.

    Semantics: ``out[e] = exp(logits[e]) / sum(exp(logits[e']) for e' with receivers[e'] == receivers[e])``.

    Args:
      graph: the graph; padding edges get weight 0 and take no share.
      logits: edge scores, shape (E,) or (E, ...) such as (E, H) for H attention heads, float.

    Returns:
      Array of the shape of ``logits``; for every receiver with incoming edges, its edges' values are
      non-negative and sum to 1 (per head).

    Notes:
      Stable for scores of any magnitude (the per-receiver maximum is subtracted; no inf or NaN in
      value or gradient for scores up to 1e4 and beyond). A NaN score makes every value and gradient
      of its receiver's incoming edges NaN, so `jgrad.checked` reports it; a ``+inf`` score makes its
      own edge's value NaN and the receiver's other edges 0, with NaN gradients. Other receivers are
      unaffected. Its backward is built from gspmm and gsddmm (`jgrad._src._op.Op`);
      reverse mode to any order, forward mode, ``jit`` and ``vmap`` all work.

      On a graph with a plan (``graph.plan``) and logits of shape (E,), (E, H) or (E, H, 1), the
      per-receiver sums (of the exponentials forward, of ``a * g`` backward) run on the plan's backend
      (`jgrad.ops._kernels.layout_edge_sum`: native CSR sums on CPU, every head in one pass; one pass
      per head on the bucket backend) instead of scatter-adds; the per-receiver maximum stays an XLA
      segment maximum. Values and gradients equal the plain path's up to float rounding, NaN and
      infinite scores included. Other shapes run the plain path.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> g = jgrad.Graph.from_edges([0, 1, 2], [2, 2, 0], n_nodes=3)
      >>> jgrad.ops.edge_softmax(g, jnp.array([0.0, 0.0, 5.0])).tolist()
      [0.5, 0.5, 1.0]
    """
    check_graph("edge_softmax", graph)
    given = logits  # the caller's array, for adjacency_grad's marks
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"edge_softmax: logits must be a float array; got dtype {logits.dtype}.")
    if logits.ndim == 0 or logits.shape[0] != graph.n_edges:
        raise ValueError(
            f"edge_softmax: logits must have one row per edge; got shape {tuple(logits.shape)}, "
            f"expected ({graph.n_edges}, ...)."
        )
    check_graph_indices("edge_softmax", graph)
    out_dtype, logits = logits.dtype, logits.astype(accumulation_dtype(logits.dtype))  # bfloat16: sums in float32
    plan = resolve(graph)
    if plan is not None and _kernels.edge_width(logits) is not None:
        out = _plan_softmax(plan, graph.receivers, graph.edge_mask, _kernels.as_rows(logits)).reshape(logits.shape)
    else:
        out = _edge_softmax(graph.n_nodes, graph.senders, graph.receivers, graph.edge_mask, logits)
    out = out.astype(out_dtype)
    return _taps.refuse(graph, "edge_data", out, given) if graph.tapped else out


def _edge_softmax(n, senders, receivers, mask, logits):
    return _EDGE_SOFTMAX(senders, receivers, mask, logits, n=n)


def _plain_softmax(senders, receivers, mask, logits, *, n):
    return segment_softmax(logits, receivers, n, mask=mask)


def _softmax_product(out, g, mask, receiver_total):
    """``out * (g - sum over the receiver's edges of out * g)``, 0 at padding edges: the softmax's
    Jacobian applied to g. It is symmetric, so this is both the backward and the tangent map, and it
    reads the output, not the logits. ``receiver_total(x)`` gives every edge the sum of x over its
    receiver's edges (on the plain path or on the plan)."""
    keep = None if mask is None else align_edge(mask, out.ndim)
    weighted = out * g if keep is None else jnp.where(keep, out * g, jnp.zeros((), g.dtype))
    d_logits = out * (g - receiver_total(weighted))
    return d_logits if keep is None else jnp.where(keep, d_logits, jnp.zeros((), d_logits.dtype))


def _edge_softmax_pullback(operands, out, g, *, n):
    """`_softmax_product` with gspmm's and gsddmm's plain path for the receivers' sums."""
    senders, receivers, mask, _ = operands

    def total(x):
        per_node = raw_gspmm("copy_e", "sum", "split", n, senders, receivers, mask, None, x)
        return raw_gsddmm("copy_rhs", n, senders, receivers, mask, None, per_node, "u", "v")

    return _softmax_product(out, g, mask, total)


_EDGE_SOFTMAX = Op("jgrad_edge_softmax", _plain_softmax, saves=(0, 1, 2),
                   tangent=lambda operands, out, tangents, n: _edge_softmax_pullback(operands, out, tangents[3], n=n),
                   backward=lambda operands, out, cotangent, wanted, n: (
                       None, None, None, _edge_softmax_pullback(operands, out, cotangent, n=n)))


# --------------------------------------------------------------------------------------------------
# On a plan: the per-receiver sums go through `_kernels.layout_edge_sum` (no scatter-add).
# --------------------------------------------------------------------------------------------------
def _plan_softmax(plan: Plan, receivers: jax.Array, mask: jax.Array | None, logits: jax.Array) -> jax.Array:
    """`segment_softmax` of (E,) or (E, H) logits over the receivers, its sum on the plan (`_softmax_on_plan`)."""
    return _PLAN_SOFTMAX(plan, receivers, mask, logits)


def _softmax_on_plan(plan: Plan, receivers: jax.Array, mask: jax.Array | None, logits: jax.Array) -> jax.Array:
    """`segment_softmax` of (E,) or (E, H) logits over the receivers, its sum on the plan.

    The same steps as `segment_softmax` (maximum shift held constant, 0 for padding edges and for
    receivers whose logits are all ``-inf``, NaN through a NaN or ``+inf`` logit), so values agree
    with the plain path up to the order of the sums.
    """
    n = plan.n_nodes
    keep = None if mask is None else align_edge(mask, logits.ndim)
    live = logits if keep is None else jnp.where(keep, logits, -jnp.inf)
    maximum = jax.ops.segment_max(jax.lax.stop_gradient(live), receivers, num_segments=n)  # (N,) or (N, H)
    shift = jnp.where(jnp.isfinite(maximum), maximum, 0)
    exps = jnp.exp(logits - shift[receivers])
    if keep is not None:
        exps = jnp.where(keep, exps, jnp.zeros((), exps.dtype))
    total = _kernels.layout_edge_sum(plan, receivers, exps)[receivers]
    alive = total != 0 if keep is None else keep & (total != 0)
    return jnp.where(alive, exps / jnp.where(alive, total, 1), 0)


def _softmax_pullback(operands, out, g):
    """`_softmax_product` with the receivers' sums on the plan (an edge sum, (N,) or (N, H), read back)."""
    plan, receivers, mask, _ = operands

    def total(x):
        return _kernels.layout_gather(plan, receivers, _kernels.layout_edge_sum(plan, receivers, x))

    return _softmax_product(out, g, mask, total)


_PLAN_SOFTMAX = Op("jgrad_plan_softmax", _softmax_on_plan, saves=(0, 1, 2),
                   tangent=lambda operands, out, tangents: _softmax_pullback(operands, out, tangents[3]),
                   backward=lambda operands, out, cotangent, wanted: (
                       None, None, None, _softmax_pullback(operands, out, cotangent)))


# --------------------------------------------------------------------------------------------------
# GAT attention: scores, leaky ReLU and softmax in one op.
# --------------------------------------------------------------------------------------------------
def gat_attention(graph: Graph, score_src: ArrayLike, score_dst: ArrayLike,
                  negative_slope: float = 0.2, *, self_loops: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """GAT's attention: the softmax over each receiver's incoming edges of the leaky ReLU of the
    sender's plus the receiver's score.

    Semantics: ``edge_softmax(graph, leaky_relu(score_src[senders] + score_dst[receivers],
    negative_slope))``, with the same handling of padding edges (weight 0), receivers whose logits are
    all ``-inf`` (0), NaN scores (NaN at their receiver) and ``+inf`` scores (NaN on the edge) as
    `edge_softmax`. With
    ``self_loops`` every node also attends to itself, as on ``graph.add_self_loops()``: its softmax
    has one more term, ``leaky_relu(score_src[v] + score_dst[v])``, whose weight is returned apart.

    Args:
      graph: the graph.
      score_src: (N,) or (N, H) float, each node's score as a sender (per head).
      score_dst: the same shape, each node's score as a receiver.
      negative_slope: slope of the leaky ReLU for negative scores (a number; an array, even a traced
        one, runs the three-op formulation).
      self_loops: also give every node a self loop (padding nodes get none: weight 0).

    Returns:
      (E,) or (E, H): for every receiver with live incoming edges, its edges' weights sum to 1 per head.
      With ``self_loops``, ``(alpha, alpha_self)``: the edges' weights and the loops' (N,) or (N, H),
      which together sum to 1 at every (non-padding) node; equal to ``gat_attention(graph.add_self_loops(),
      ...)`` split after the E-th edge.

    Raises:
      ValueError: scores of different shapes, or without one row per node. TypeError: non-float scores.

    Notes:
      On a graph whose plan's backend has a fused attention kernel (native, on CPU) and for (N,) or
      (N, H) scores, the weights and their gradients take one walk over the graph each way, with no
      (E, H) intermediates but the result and the backward's score cotangent; the self loops are
      terms of the same walks (no looped graph is built), padded graphs' included, and so are those
      of a graph from ``add_self_loops`` (inside ``jit`` too). Values and gradients equal
      the three-op formulation's up to float rounding. Reverse mode to any order, forward mode (the
      three ops), ``jit`` and ``vmap`` all work.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> g = jgrad.Graph.from_edges([0, 1, 2], [2, 2, 0], n_nodes=3)
      >>> jgrad.ops.gat_attention(g, jnp.array([0.0, 0.0, 1.0]), jnp.zeros(3)).tolist()
      [0.5, 0.5, 1.0]
      >>> alpha, alpha_self = jgrad.ops.gat_attention(g, jnp.zeros(3), jnp.zeros(3), self_loops=True)
      >>> alpha.tolist(), alpha_self.tolist()
      ([0.3333333432674408, 0.3333333432674408, 0.5], [0.5, 1.0, 0.3333333432674408])
    """
    where = "gat_attention"
    check_graph(where, graph)
    src, dst = (_check_score(where, graph, name, value)
                for name, value in (("score_src", score_src), ("score_dst", score_dst)))
    if src.shape != dst.shape:
        raise ValueError(f"{where}: score_src and score_dst must have the same shape; got {tuple(src.shape)} "
                         f"and {tuple(dst.shape)}.")
    check_graph_indices(where, graph)
    out_dtype = jnp.result_type(src, dst)
    wide = accumulation_dtype(out_dtype)  # bfloat16 / float16 scores: the softmax's sums in float32
    weights = _attention_weights(graph, src.astype(wide), dst.astype(wide), negative_slope, self_loops)
    return jax.tree.map(lambda weight: weight.astype(out_dtype), weights)


def _attention_weights(graph: Graph, src: jax.Array, dst: jax.Array, negative_slope, self_loops: bool):
    """`gat_attention` of checked scores of one dtype: on the plan's fused kernels where it has them,
    else as gsddmm, leaky ReLU and edge softmax (over the looped graph with ``self_loops``)."""
    plan = resolve(graph)
    fused = plan is not None and _kernels.KERNELS[plan.backend].attention is not None and src.ndim <= 2 \
        and isinstance(negative_slope, numbers.Real)
    rows = lambda x: x.reshape(x.shape[0], -1)  # (N,) -> (N, 1)
    if fused and not self_loops and _loops_as_attention_terms(graph, plan):
        # Loops added by `add_self_loops` (inside jit too) are edges E - N .. E - 1 and a flag of the plan:
        # they are attended to as terms of the walks over the own edges, as with ``self_loops=True``,
        # instead of over a looped CSR built on every call. The (E,) edge mask covers the loops too.
        own = graph.n_edges - graph.n_nodes
        alpha, alpha_self = _plan_attention(float(negative_slope), plan.without_loops(), graph.senders[:own],
                                            graph.receivers[:own], graph.edge_mask, rows(src), rows(dst), True)
        return jnp.concatenate([alpha, alpha_self]).reshape((graph.n_edges,) + src.shape[1:])
    if fused:
        # With self loops, a padding node's loop is masked out as `add_self_loops` masks it.
        live = looped_edge_mask(graph) if self_loops and graph.node_mask is not None else graph.edge_mask
        out = _plan_attention(float(negative_slope), plan, graph.senders, graph.receivers, live, rows(src),
                              rows(dst), self_loops)
        if self_loops:
            return out[0].reshape((graph.n_edges,) + src.shape[1:]), out[1].reshape(src.shape)
        return out.reshape((graph.n_edges,) + src.shape[1:])
    if self_loops:
        alpha = _attention_weights(graph.add_self_loops(), src, dst, negative_slope, False)
        return alpha[:graph.n_edges], alpha[graph.n_edges:]
    scores = gsddmm(graph, "add", src, dst, "u", "v")
    return edge_softmax(graph, jax.nn.leaky_relu(scores, negative_slope))


def _loops_as_attention_terms(graph: Graph, plan: Plan) -> bool:
    """Whether ``graph``'s last N edges are self loops marked on its plan (added by `add_self_loops`;
    the edge mask, if any, says which take part) and it is not traced for structure gradients."""
    return plan.forward.self_loops and not graph.tapped


def _check_score(where, graph, name, value):
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"{where}: {name} must be a float array; got dtype {value.dtype}.")
    if value.ndim == 0 or value.shape[0] != graph.n_nodes:
        raise ValueError(f"{where}: {name} must have one row per node; got shape {tuple(value.shape)}, "
                         f"expected ({graph.n_nodes},) or ({graph.n_nodes}, H).")
    return value


def _plan_attention(negative_slope: float, plan: Plan, senders, receivers, mask, src, dst, self_loops: bool):
    """(E, H) attention weights of (N, H) scores by the plan's backend kernel; with ``self_loops``,
    ``(alpha, alpha_self (N, H))``."""
    return _PLAN_ATTENTION(plan, senders, receivers, mask, src, dst, negative_slope=negative_slope,
                           self_loops=self_loops)


def _attention_kernel(plan, senders, receivers, mask, src, dst, *, negative_slope, self_loops):
    kernel = _kernels.KERNELS[plan.backend].attention
    alpha, alpha_self = kernel(plan.forward, senders, receivers, mask, negative_slope, src, dst, self_loops)
    return (alpha, alpha_self) if self_loops else alpha


def _attention_reference(plan, senders, receivers, mask, src, dst, *, negative_slope, self_loops):
    alpha, alpha_self = segment_attention(plan.n_nodes, senders, receivers, mask, negative_slope, src, dst,
                                          self_loops)
    return (alpha, alpha_self) if self_loops else alpha


def _plan_attention_backward(operands, outputs, cotangents, wanted, *, negative_slope, self_loops):
    plan, senders, receivers, mask, src, dst = operands
    (alpha, alpha_self), (g, g_self) = (outputs, cotangents) if self_loops else ((outputs, None), (cotangents, None))
    d_raw, d_dst, d_self = _attention_backward(negative_slope, plan, senders, receivers, mask, src, dst, alpha, g,
                                               alpha_self, g_self)
    d_src = _kernels.layout_edge_sum(plan.transpose(), senders, d_raw)
    return None, None, None, None, d_src if d_self is None else d_src + d_self, d_dst


# Forward mode differentiates the XLA reference (`jgrad.ops._attention`), which computes the same map.
_PLAN_ATTENTION = Op("jgrad_attention", _attention_kernel, tangent=tangent_of(_attention_reference),
                     backward=_plan_attention_backward)


def _attention_backward(negative_slope: float, plan: Plan, senders, receivers, mask, src, dst, alpha, g,
                        alpha_self, g_self):
    """``(d_raw, d_dst, d_self or None)`` by the plan's backend kernel; differentiable as
    `segment_attention_backward`."""
    out = _ATTENTION_BACKWARD(plan, senders, receivers, mask, src, dst, alpha, g, alpha_self, g_self,
                              negative_slope=negative_slope)
    return out if alpha_self is not None else (*out, None)


def _attention_backward_kernel(plan, senders, receivers, mask, src, dst, alpha, g, alpha_self, g_self, *,
                               negative_slope):
    kernel = _kernels.KERNELS[plan.backend].attention_backward
    d_raw, d_dst, d_self = kernel(plan.forward, senders, receivers, mask, negative_slope, src, dst, alpha, g,
                                  alpha_self, g_self)
    return (d_raw, d_dst) if d_self is None else (d_raw, d_dst, d_self)


def _attention_backward_reference(plan, senders, receivers, mask, src, dst, alpha, g, alpha_self, g_self, *,
                                  negative_slope):
    d_raw, d_dst, d_self = segment_attention_backward(plan.n_nodes, senders, receivers, mask, negative_slope, src,
                                                      dst, alpha, g, alpha_self, g_self)
    return (d_raw, d_dst) if d_self is None else (d_raw, d_dst, d_self)


# Differentiated as the XLA reference (`jgrad.ops._attention`) in both modes: src, dst, alpha and g (and
# the self loops' alpha_self and g_self; None without loops).
_ATTENTION_BACKWARD = Op("jgrad_attention_backward", _attention_backward_kernel,
                         tangent=tangent_of(_attention_backward_reference),
                         backward=backward_of(_attention_backward_reference, over=(4, 5, 6, 7, 8, 9)))
