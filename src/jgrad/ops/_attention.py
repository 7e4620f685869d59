"""GAT's attention kernel with XLA ops: the reference of the backends' fused ``attention`` kernels.

``segment_attention`` is ``segment_softmax(leaky_relu(src[senders] + dst[receivers]))`` over the
receivers, and ``segment_attention_backward`` its backward for a cotangent ``g`` of the weights
``alpha``, in the two parts a fused kernel computes (the senders' sum is left to the caller)::

    s[v]      = sum over live edges e into v of alpha[e] * g[e]
    d_raw[e]  = alpha[e] * (g[e] - s[receivers[e]]) * (raw[e] >= 0 ? 1 : negative_slope)
    d_dst[v]  = sum of d_raw over the edges into v    (d_src[u]: the same over the edges out of u)

`jgrad.ops.gat_attention` runs a backend's kernels and differentiates the backward as this one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._segment import segment_softmax


def segment_attention(n: int, senders, receivers, mask, negative_slope: float, src, dst):
    """(E, H) attention weights of (N, H) scores ``src`` (senders) and ``dst`` (receivers); mask (E,) or None."""
    logits = jax.nn.leaky_relu(src[senders] + dst[receivers], negative_slope)
    return segment_softmax(logits, receivers, n, mask=mask)


def segment_attention_backward(n: int, senders, receivers, mask, negative_slope: float, src, dst, alpha, g):
    """``(d_raw (E, H), d_dst (N, H))`` for the cotangent g (E, H) of ``alpha = segment_attention(...)``."""
    live = jnp.ones(senders.shape, bool) if mask is None else mask
    weighted = jnp.where(live[:, None], alpha * g, jnp.zeros((), g.dtype))
    per_node = jax.ops.segment_sum(weighted, receivers, num_segments=n)
    raw = src[senders] + dst[receivers]
    slope = jnp.where(raw >= 0, jnp.ones((), raw.dtype), jnp.asarray(negative_slope, raw.dtype))
    d_raw = jnp.where(live[:, None], alpha * (g - per_node[receivers]) * slope, jnp.zeros((), g.dtype))
    return d_raw, jax.ops.segment_sum(d_raw, receivers, num_segments=n)
