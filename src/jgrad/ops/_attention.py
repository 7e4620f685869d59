"""GAT's attention kernel with XLA ops: the reference of the backends' fused ``attention`` kernels.

``segment_attention`` is ``segment_softmax(leaky_relu(src[senders] + dst[receivers]))`` over the
receivers, and ``segment_attention_backward`` its backward for a cotangent ``g`` of the weights
``alpha``, in the two parts a fused kernel computes (the senders' sum is left to the caller)::

    s[v]      = sum over live edges e into v of alpha[e] * g[e]
    d_raw[e]  = alpha[e] * (g[e] - s[receivers[e]]) * (raw[e] >= 0 ? 1 : negative_slope)
    d_dst[v]  = sum of d_raw over the edges into v    (d_src[u]: the same over the edges out of u)

With ``self_loops`` every receiver v also attends to itself: one more term of its softmax, with the
logit ``leaky_relu(src[v] + dst[v])`` and the weight ``alpha_self[v]``, as if the loop were an edge
appended to the graph, but without building the looped graph (whose plan costs a pass over every
edge and its own (E + N) tables on every call of a GAT layer). Its share of the backward is one more
term of ``s[v]`` and ``d_dst[v]``, and ``d_self[v]``, which the caller adds to ``d_src[v]``. The mask
is then (E,), every loop taking part, or (E + N,), the loops' after the edges' as in the mask of
``graph.add_self_loops()``: a masked-out loop (a padding node's) gets weight 0 and no gradient.

`jgrad.ops.gat_attention` runs a backend's kernels and differentiates the backward as this one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._segment import segment_softmax


def segment_attention(n: int, senders, receivers, mask, negative_slope: float, src, dst, self_loops: bool = False):
    """``(alpha (E, H), alpha_self (N, H) or None)``: attention weights of (N, H) scores ``src``
    (senders) and ``dst`` (receivers), mask (E,), (E + N,) with ``self_loops``, or None; ``alpha_self``
    with ``self_loops`` only."""
    logits = jax.nn.leaky_relu(src[senders] + dst[receivers], negative_slope)
    if not self_loops:
        return segment_softmax(logits, receivers, n, mask=mask), None
    e = senders.shape[0]
    loop_logits = jax.nn.leaky_relu(src + dst, negative_slope)
    rows = jnp.concatenate([receivers, jnp.arange(n, dtype=receivers.dtype)])
    live = None if mask is None else _with_loops(mask, e, n)
    alpha = segment_softmax(jnp.concatenate([logits, loop_logits]), rows, n, mask=live)
    return alpha[:e], alpha[e:]


def _with_loops(mask, e: int, n: int):
    """The (E + N,) mask of the edges and then the loops, from mask (E,) (every loop live) or (E + N,)."""
    return mask if mask.shape[0] == e + n else jnp.concatenate([mask, jnp.ones((n,), bool)])


def segment_attention_backward(n: int, senders, receivers, mask, negative_slope: float, src, dst, alpha, g,
                               alpha_self=None, g_self=None):
    """``(d_raw (E, H), d_dst (N, H), d_self (N, H) or None)`` for the cotangents g (E, H) of ``alpha``
    and, with self loops, ``g_self`` (N, H) of ``alpha_self``."""
    e = senders.shape[0]
    zero = jnp.zeros((), g.dtype)
    live = jnp.ones((e,), bool) if mask is None else mask[:e]
    has_loop_mask = alpha_self is not None and mask is not None and mask.shape[0] > e
    loop_live = mask[e:, None] if has_loop_mask else None  # (N, 1): which loops take part; None: all
    weighted = jnp.where(live[:, None], alpha * g, zero)
    per_node = jax.ops.segment_sum(weighted, receivers, num_segments=n)
    if alpha_self is not None:
        loop_term = alpha_self * g_self
        per_node = per_node + (loop_term if loop_live is None else jnp.where(loop_live, loop_term, zero))

    def slope(raw):  # the leaky ReLU's derivative
        return jnp.where(raw >= 0, jnp.ones((), raw.dtype), jnp.asarray(negative_slope, raw.dtype))

    raw = src[senders] + dst[receivers]
    d_raw = jnp.where(live[:, None], alpha * (g - per_node[receivers]) * slope(raw), zero)
    d_dst = jax.ops.segment_sum(d_raw, receivers, num_segments=n)
    if alpha_self is None:
        return d_raw, d_dst, None
    d_self = alpha_self * (g_self - per_node) * slope(src + dst)
    if loop_live is not None:
        d_self = jnp.where(loop_live, d_self, zero)
    return d_raw, d_dst + d_self, d_self
