"""The contribution of one attention aggregation to dL/dA, at any pair, from node quantities.

For a layer that normalises the edge weight together with the attention (`jgrad.nn.GATConv` with
``edge_weight_mode="normalise"``), per head h::

    out[v] = sum_u A[v,u] e[v,u] z[u] / Z[v],   Z[v] = sum_k A[v,k] e[v,k],
    e[v,u] = exp(leaky_relu(src[u] + dst[v]))

so ``d out[v] / d A[v,u] = e[v,u] / Z[v] * (z[u] - out[v])`` and, with ``G = dL/dout``::

    dL/dA[v,u] = sum_h exp(s[v,u,h] - log Z[v,h]) * (<G[v,h], z[u,h]> - <G[v,h], out[v,h]>)

which costs O(H·F) per pair and needs only (N, H, F) and (N, H) arrays: the score of a missing pair
comes from the attention halves of its two nodes. A layer that attends to every node itself with a
fixed weight (self loops added by the layer) does not depend on ``A[v, v]``: its diagonal is 0.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AttentionTerm:
    """One attention layer's explicit part of dL/dA (see the module docstring).

    Attributes:
      values: z, (N, H, F), the aggregated node values.
      cotangent: G = dL/dout, (N, H, F).
      own: ``<G[v, h], out[v, h]>``, (N, H).
      score_src: (N, H), attention half of each sender.
      score_dst: (N, H), attention half of each receiver.
      log_normaliser: ``log Z[v, h]``, (N, H); ``+inf`` where ``Z = 0`` (the entry is then 0).
      negative_slope: scalar slope of the LeakyReLU.
      fixed_diagonal: static; the layer ignores ``A[v, v]`` (its diagonal entries are 0).
    """

    values: jax.Array
    cotangent: jax.Array
    own: jax.Array
    score_src: jax.Array
    score_dst: jax.Array
    log_normaliser: jax.Array
    negative_slope: jax.Array
    fixed_diagonal: bool = True

    def block(self, rows: jax.Array) -> jax.Array:
        """dL/dA[rows[b], u] for every u: shape (B, N). O(B·N·H·F) time, O(B·N·H) memory."""
        scores = jax.nn.leaky_relu(self.score_dst[rows][:, None, :] + self.score_src[None, :, :],
                                   self.negative_slope)  # (B, N, H)
        coefficient = jnp.exp(scores - self.log_normaliser[rows][:, None, :])
        inner = jnp.einsum("bhf,nhf->bnh", self.cotangent[rows], self.values) - self.own[rows][:, None, :]
        value = jnp.sum(coefficient * inner, axis=-1)
        if self.fixed_diagonal:
            value = jnp.where(rows[:, None] == jnp.arange(value.shape[1])[None, :], 0, value)
        return value

    def block_transposed(self, cols: jax.Array) -> jax.Array:
        """dL/dA[v, cols[b]] for every v, as shape (B, N) (row b holds column ``cols[b]``)."""
        scores = jax.nn.leaky_relu(self.score_dst[None, :, :] + self.score_src[cols][:, None, :],
                                   self.negative_slope)  # (B, N, H): entry [b, v]
        coefficient = jnp.exp(scores - self.log_normaliser[None, :, :])
        inner = jnp.einsum("nhf,bhf->bnh", self.cotangent, self.values[cols]) - self.own[None, :, :]
        value = jnp.sum(coefficient * inner, axis=-1)
        if self.fixed_diagonal:
            value = jnp.where(cols[:, None] == jnp.arange(value.shape[1])[None, :], 0, value)
        return value

    def pairs(self, rows: jax.Array, cols: jax.Array) -> jax.Array:
        """dL/dA[rows[p], cols[p]], shape (P,). O(P·H·F)."""
        scores = jax.nn.leaky_relu(self.score_dst[rows] + self.score_src[cols], self.negative_slope)
        coefficient = jnp.exp(scores - self.log_normaliser[rows])  # (P, H)
        inner = jnp.sum(self.cotangent[rows] * self.values[cols], axis=-1) - self.own[rows]
        value = jnp.sum(coefficient * inner, axis=-1)
        if self.fixed_diagonal:
            value = jnp.where(rows == cols, 0, value)
        return value


jax.tree_util.register_dataclass(
    AttentionTerm,
    data_fields=["values", "cotangent", "own", "score_src", "score_dst", "log_normaliser", "negative_slope"],
    meta_fields=["fixed_diagonal"],
)


def attention_term(message: tuple, cotangent: jax.Array, fixed_diagonal: bool, dtype) -> AttentionTerm:
    """Builds the term from what the attention tap recorded (`jgrad.gradients._recording`) and ``G``."""
    values, score_src, score_dst, log_normaliser, out, slope = (jnp.asarray(a).astype(dtype) for a in message)
    cotangent = cotangent.astype(dtype)
    return AttentionTerm(
        values=values,
        cotangent=cotangent,
        own=jnp.sum(cotangent * out, axis=-1),
        score_src=score_src,
        score_dst=score_dst,
        log_normaliser=log_normaliser,
        negative_slope=slope,
        fixed_diagonal=bool(fixed_diagonal),
    )
