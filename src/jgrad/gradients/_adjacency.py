"""The gradient w.r.t. every entry of the adjacency, existing edges and missing ones, held as factors.

For a model whose use of ``A`` is linear per call once node scalings are held fixed (aggregations
``y_c = diag(l_c) A diag(r_c) @ m_c`` through `jgrad.ops.spmm` / `gspmm` on the graph or on a
`gcn_norm` / `row_norm` / ``add_self_loops`` of it, and weighted degrees, which are aggregations of
ones), the gradient of a scalar loss w.r.t. the dense adjacency is exactly::

    dL/dA = sum_c (l_c G_c) (r_c m_c)^T           G_c = dL/dy_c (N, F_c), m_c (N, F_c)

(the scalings' own dependence on A goes through the degree terms), an N x N matrix of rank
<= sum_c F_c, which `AdjacencyGrad` stores as two (N, R) factors. `jgrad.gradients._recording` finds
every call c in the model's jaxpr and gets ``G_c`` from a zero probe added to its output. Attention
layers that normalise the weight inside their softmax add one `AttentionTerm` each, an entry computed
in O(H·F) from node quantities (see `jgrad.gradients._attention`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._src._checks import index_range_check, is_concrete
from .._src._limits import MAX_SIZE
from .._src._types import check_callable, check_choice, check_flags
from ..graph import Graph
from . import _recording, _structure
from ._attention import AttentionTerm, attention_term
from ._compile import Call, rebuild_args, run_cached
from ._edge import check_scalar, check_weights_used, trace_of_weights, tracked_weights

AMONG = ("non_edges", "edges", "all")
MODES = ("factored", "dense")
DENSE_NODE_LIMIT = 2048
TOPK_CALL_WORK = 2**35
"""`AdjacencyGrad.topk` among non-edges or all pairs computes N^2 entries of R + H·F products each. Above
about this many products (some 5-10 s on two cores) and with concrete indices it runs its row blocks in
several compiled calls of about this much work, so that it can report progress and be interrupted."""
TOPK_PROGRESS_AFTER = 10.0
"""Seconds after which, and between which, a `topk` run in several calls prints a progress line."""
PAIR_CHUNK_ELEMENTS = 2**20
"""`AdjacencyGrad.at` gathers the factor rows of at most about this many entries (pairs x (R + H·F))
at once: the check against `edge_grad` and ``topk(among="edges")`` evaluate every edge, and E x R
gathered values (1.2 GB per factor at 1.2·10^7 edges and R = 25) would otherwise all be held."""


class AdjacencyTopK(NamedTuple):
    """The k largest (``sign=+1``) or most negative (``sign=-1``) entries of dL/dA, best first.

    Attributes:
      values: dL/dA[rows, cols], shape (k,); NaN where fewer than k candidates exist.
      rows: receiver v of each pair, shape (k,), int32; -1 where fewer than k candidates exist.
      cols: sender u of each pair (the pair is the edge ``u -> v``), shape (k,), int32; -1 likewise.
    """

    values: jax.Array
    rows: jax.Array
    cols: jax.Array


@dataclasses.dataclass(frozen=True)
class AdjacencyGrad:
    """dL/dA for every pair (v, u), ``A[v, u]`` = weight of ``u -> v``: low-rank factors plus attention terms.

    Entry (v, u) is ``(left @ right.T)[v, u] - [v == u] offset[v] + sum_t attention[t](v, u)``, where
    each `AttentionTerm` gives one attention layer's part from node quantities in O(H·F) per pair.

    Attributes:
      left: (N, R) left factor.
      right: (N, R) right factor.
      diagonal_offset: (N,) subtracted from the diagonal (non-zero after `symmetric`).
      senders: (E,) senders of the existing edges (used to tell edges from non-edges).
      receivers: (E,) receivers of the existing edges.
      edge_mask: (E,) bool or ``None``; padding edges are not existing edges.
      edge_error: scalar, the largest relative disagreement between the factors and ``edge_grad`` at
        the existing edges, measured when the gradient was built (in dense mode, the larger of that
        and the relative difference of the loss on the complete graph and on the graph).
      n_nodes: N (static).
      is_symmetric: whether this is the gradient w.r.t. an undirected adjacency (static): entry
        (i, j) is ``dL/dA[i, j] + dL/dA[j, i]`` off the diagonal and ``dL/dA[i, i]`` on it.
      attention: one `AttentionTerm` per attention aggregation that normalises the weights inside
        its softmax (``GATConv(edge_weight_mode="normalise")``); empty for other models.
      node_mask: (N,) bool or ``None`` (all nodes real), the graph's ``node_mask``. A pair that touches
        a padding node (``node_mask`` False, as `jgrad.pad` appends) is no pair of the graph: `dense`,
        `row` and `at` give 0 there and `topk` never returns it, for every candidate set.

    A pytree (jit- and vmap-friendly). Every accessor costs O(R + sum_t H_t·F_t) per entry; nothing
    builds the N x N matrix except `dense`.
    """

    left: jax.Array
    right: jax.Array
    diagonal_offset: jax.Array
    senders: jax.Array
    receivers: jax.Array
    edge_mask: jax.Array | None
    edge_error: jax.Array
    n_nodes: int
    is_symmetric: bool = False
    attention: tuple[AttentionTerm, ...] = ()
    node_mask: jax.Array | None = None

    @property
    def rank(self) -> int:
        """R, the number of factor columns (an upper bound on the rank of dL/dA)."""
        return int(self.left.shape[1])

    def __repr__(self) -> str:
        # The sizes, not the factors' values (pages of numbers for any real graph).
        parts = [f"n_nodes={self.n_nodes}", f"rank={self.rank}", f"n_edges={self.senders.shape[-1]}"]
        if self.attention:
            parts.append(f"attention_terms={len(self.attention)}")
        if self.is_symmetric:
            parts.append("symmetric=True")
        if not isinstance(self.edge_error, jax.core.Tracer) and jnp.ndim(self.edge_error) == 0:
            parts.append(f"edge_error={float(self.edge_error):.3g}")
        return f"AdjacencyGrad({', '.join(parts)}, dtype={self.left.dtype})"

    def dense(self) -> jax.Array:
        """The full (N, N) gradient. O(N^2 R) time and O(N^2) memory (O(N^2 H) with attention terms)."""
        value = self.left @ self.right.T - jnp.diag(self.diagonal_offset)
        if self.attention:
            value = value + self._attention_block(jnp.arange(self.n_nodes))
        if self.node_mask is None:
            return value
        real = self.node_mask[:, None] & self.node_mask[None, :]
        return jnp.where(real, value, jnp.zeros((), value.dtype))

    def at(self, rows: jax.typing.ArrayLike, cols: jax.typing.ArrayLike) -> jax.Array:
        """dL/dA[rows[p], cols[p]] for P pairs (receiver v, sender u); shape (P,). O(P·R) time, O(P)
        memory besides the factors (many pairs are taken in chunks, see `PAIR_CHUNK_ELEMENTS`).

        ``at(graph.receivers, graph.senders)`` equals `edge_grad` for a model using A linearly.

        Raises:
          TypeError: non-integer indices.
          ValueError: rows and cols of different shapes; when concrete, an index outside
            ``[0, n_nodes)`` (negative ones included: they are not counted from the end). Traced
            indices are checked under `jgrad.checked`.
        """
        rows, cols = _pair_indices("AdjacencyGrad.at", rows, cols, self.n_nodes)
        shape, rows, cols = rows.shape, rows.reshape(-1), cols.reshape(-1)
        n_pairs = rows.shape[0]
        chunk = max(1, PAIR_CHUNK_ELEMENTS // self._entry_width())
        if n_pairs <= chunk:
            return self._pairs(rows, cols).reshape(shape)
        # chunks of pairs in a loop: the gathered (P, R) rows of the factors are never all in memory
        n_chunks = -(-n_pairs // chunk)
        pad = n_chunks * chunk - n_pairs  # padded with pair (0, 0) and cut off again
        rows, cols = (jnp.pad(index, (0, pad)).reshape(n_chunks, chunk) for index in (rows, cols))
        value = jax.lax.map(lambda pair: self._pairs(*pair), (rows, cols))
        return value.reshape(-1)[:n_pairs].reshape(shape)

    def _entry_width(self) -> int:
        """The products per entry, R + sum_t H_t·F_t (at least 1)."""
        return max(1, self.rank + sum(int(np.prod(term.values.shape[1:])) for term in self.attention))

    def _pairs(self, rows: jax.Array, cols: jax.Array) -> jax.Array:
        """`at` for (P,) checked indices, in one piece."""
        value = jnp.sum(self.left[rows] * self.right[cols], axis=-1)
        value = value - jnp.where(rows == cols, self.diagonal_offset[rows], jnp.zeros((), value.dtype))
        if self.attention:
            value = value + self._attention_pairs(rows, cols)
        if self.node_mask is None:
            return value
        return jnp.where(self.node_mask[rows] & self.node_mask[cols], value, jnp.zeros((), value.dtype))

    def row(self, v: jax.typing.ArrayLike) -> jax.Array:
        """dL/dA[v, :], the gradient w.r.t. every possible incoming edge of node v; shape (N,). O(N·R).

        Raises:
          TypeError: a non-integer ``v``.
          ValueError: ``v`` is not a scalar, or (when concrete) outside ``[0, n_nodes)``; a traced ``v``
            is checked under `jgrad.checked`.
        """
        v = _node_index("AdjacencyGrad.row", "v", v, self.n_nodes)
        value = self.right @ self.left[v]
        value = value - jnp.where(jnp.arange(self.n_nodes) == v, self.diagonal_offset[v],
                                  jnp.zeros((), value.dtype))
        if self.attention:
            value = value + self._attention_block(jnp.reshape(v, (1,)))[0]
        if self.node_mask is None:
            return value
        return jnp.where(self.node_mask[v] & self.node_mask, value, jnp.zeros((), value.dtype))

    def symmetric(self) -> AdjacencyGrad:
        """The gradient w.r.t. an undirected adjacency: ``S = G + G^T`` with the diagonal counted once.

        For an undirected graph one weight ``a_ij`` sets both ``A[i, j]`` and ``A[j, i]``, so
        ``dL/da_ij = G[i, j] + G[j, i]`` for ``i != j`` and ``G[i, i]`` on the diagonal. Kept as factors
        ``[left, right] @ [right, left]^T`` (rank 2R). Idempotent.
        """
        if self.is_symmetric:
            return self
        own = jnp.sum(self.left * self.right, axis=-1) - self.diagonal_offset  # diag(G)
        return dataclasses.replace(
            self,
            left=jnp.concatenate([self.left, self.right], axis=1),
            right=jnp.concatenate([self.right, self.left], axis=1),
            diagonal_offset=2 * self.diagonal_offset + own,
            is_symmetric=True,
        )

    def topk(
        self,
        k: int,
        *,
        among: Literal["non_edges", "edges", "all"] = "non_edges",
        sign: int = 1,
        block_size: int = 256,
    ) -> AdjacencyTopK:
        """The k pairs with the largest ``sign * dL/dA``, found blockwise without an N x N array.

        Candidates: ``"non_edges"``, pairs (v, u) with ``v != u`` and no edge ``u -> v``; ``"edges"``,
        the existing edges (each pair once, padding edges excluded); ``"all"``, all N^2 pairs. For a
        symmetric gradient each unordered pair is reported once, as ``rows <= cols``, and a pair is an
        edge if either direction is. Pairs that touch a padding node (`node_mask` False) are never
        candidates.

        Args:
          k: how many pairs (a positive Python int).
          among: the candidate set (keyword-only).
          sign: ``+1`` for the largest gradients (adding weight raises the loss most), ``-1`` for the
            most negative (adding weight lowers the loss most).
          block_size: rows per block B; peak memory is O(B·N + E) (the (B, N) block of scores), and
            O(B·N·H) with attention terms of H heads (lower it for very large graphs). Cut to at most
            ``(2**31 - 1) // N`` rows (a block's entries are numbered in int32).

        Returns:
          `AdjacencyTopK` of shape (k,) each, ordered best first; where fewer than k candidates exist
          the tail has value NaN and indices -1.

        Notes:
          Time O(N^2·R) for ``"non_edges"``/``"all"`` (one (B, R) x (R, N) product per block, a running
          top-k kept across blocks), O(E·R) for ``"edges"``; attention terms add O(H·F) per entry.
          Compiled once per gradient structure and (k, sign, among, block_size). Works under ``jit``; with concrete edge
          indices each block scans only its own edges, under ``jit`` every block scans all E edges.
          With concrete indices, a search of more than `TOPK_CALL_WORK` products (N^2·R above 3.4·10^10:
          about 3.7·10^4 nodes at R = 25) runs its blocks in several compiled calls: after 10 s it prints
          a progress line to stderr every 10 s, and it can be interrupted between calls.
        """
        where = "AdjacencyGrad.topk"
        check_choice(where, "candidate set", among, AMONG)
        if isinstance(sign, (bool, np.bool_)) or sign not in (1, -1):
            raise ValueError(f"{where}: sign must be +1 or -1; got {sign!r}, expected 1 or -1.")
        k = _positive_int(where, "k", k)
        block_size = _positive_int(where, "block_size", block_size)
        if k > max(self.n_nodes, 1) ** 2:
            raise ValueError(f"{where}: k is larger than the number of pairs; got k={k}, expected k <= "
                             f"n_nodes**2={self.n_nodes ** 2}.")
        if among == "edges":
            pairs = _distinct_edges(self)
            if pairs is None:  # traced indices: the pairs are found with XLA's sort
                return _TOPK_EDGES(self, k, sign)
            return _TOPK_PAIRS(self, k, sign, *pairs)
        block = _block_rows(block_size, self.n_nodes)
        window = None
        if among == "non_edges":  # with concrete indices, the static number of edges per row block
            window = _block_window(self, block, -(-self.n_nodes // block))
        per_call = max(1, TOPK_CALL_WORK // (block * max(self.n_nodes, 1) * self._entry_width()))
        if per_call * block < self.n_nodes and not isinstance(self.left, jax.core.Tracer):
            if among == "all" or window is not None:
                return self._topk_in_calls(k, sign, among == "non_edges", block, window, per_call)
        return _TOPK_BLOCKS(self, k, sign, among == "non_edges", block, window)

    # ----------------------------------------------------------------------------------------------
    def _block_scores(self, rows: jax.Array) -> jax.Array:
        """Entries ``[rows[b], u]`` for every u, shape (B, N): low-rank part, diagonal and attention."""
        value = self.left[rows] @ self.right.T
        same = rows[:, None] == jnp.arange(self.n_nodes)[None, :]
        value = value - jnp.where(same, self.diagonal_offset[rows][:, None], jnp.zeros((), value.dtype))
        return value + self._attention_block(rows) if self.attention else value

    def _attention_block(self, rows: jax.Array) -> jax.Array:
        """The attention terms' entries ``[rows[b], u]``, shape (B, N) (symmetrised if `is_symmetric`)."""
        same = rows[:, None] == jnp.arange(self.n_nodes)[None, :]
        total = jnp.zeros((rows.shape[0], self.n_nodes), self.left.dtype)
        for term in self.attention:
            total = total + term.block(rows)
            if self.is_symmetric:  # + dL/dA[u, v] off the diagonal
                total = total + jnp.where(same, jnp.zeros((), total.dtype), term.block_transposed(rows))
        return total

    def _attention_pairs(self, rows: jax.Array, cols: jax.Array) -> jax.Array:
        total = jnp.zeros(jnp.broadcast_shapes(rows.shape, cols.shape), self.left.dtype)
        for term in self.attention:
            total = total + term.pairs(rows, cols)
            if self.is_symmetric:
                total = total + jnp.where(rows == cols, jnp.zeros((), total.dtype), term.pairs(cols, rows))
        return total

    def _edge_pairs(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(rows, cols, valid) of the existing edges; both directions for a symmetric gradient."""
        rows, cols = self.receivers, self.senders
        valid = jnp.ones(rows.shape, bool) if self.edge_mask is None else self.edge_mask
        if self.node_mask is not None:  # an edge touching a padding node is no edge of the graph
            valid = valid & self.node_mask[rows] & self.node_mask[cols]
        if self.is_symmetric:
            rows, cols = jnp.minimum(rows, cols), jnp.maximum(rows, cols)
        return rows, cols, valid

    def _topk_edges(self, k: int, sign: int) -> AdjacencyTopK:
        rows, cols, valid = self._edge_pairs()
        # One entry per distinct pair: sort by (row, col), padding edges last, keep the first of each run.
        order = jnp.lexsort((cols, rows, ~valid))
        rows, cols, valid = rows[order], cols[order], valid[order]
        first = jnp.ones(rows.shape, bool).at[1:].set((rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1]))
        keep = valid & first
        score = sign * self.at(rows, cols)
        score = jnp.where(keep, score, -jnp.inf)
        count = min(k, int(score.shape[0]))
        best, index = jax.lax.top_k(score, count)
        return _finish(best, rows[index], cols[index], sign, k)

    def _topk_pairs(self, k: int, sign: int, rows: jax.Array, cols: jax.Array) -> AdjacencyTopK:
        """The top k of ``sign * dL/dA`` among the distinct pairs ``(rows, cols)``, sorted by row, then col."""
        best, index = jax.lax.top_k(sign * self.at(rows, cols), min(k, int(rows.shape[0])))
        return _finish(best, rows[index], cols[index], sign, k)

    def _topk_blocks(self, k: int, sign: int, non_edges: bool, block_size: int,
                     window: int | None = None) -> AdjacencyTopK:
        block = max(1, min(block_size, self.n_nodes))
        n_blocks = -(-self.n_nodes // block)
        edges = None
        if non_edges:
            *edges, window = _edges_by_block(self, block, n_blocks, window)
        carry = _topk_start(k, self.left.dtype)
        best, rows, cols = self._topk_scan(k, sign, block, window, edges, jnp.arange(n_blocks), carry)
        return _finish(best, rows, cols, sign, k)

    def _topk_scan(self, k: int, sign: int, block: int, window: int | None, edges, blocks: jax.Array, carry):
        """The running top-k ``carry`` (values, rows, cols) updated with the row blocks ``blocks`` (blocks
        past the last row add nothing); for non-edges ``edges`` and ``window`` from `_edges_by_block`,
        else None."""
        n = self.n_nodes
        chunk = min(128, n)
        n_cols = -(-n // chunk) * chunk
        n_blocks = -(-n // block)
        col_ids = jnp.arange(n_cols)
        per_block = min(k, block * n_cols // chunk)

        def body(carry, b):
            r0 = b * block
            row_ids = r0 + jnp.arange(block)
            scores = self._block_scores(jnp.minimum(row_ids, n - 1))  # (B, N); rows >= n masked below
            scores = sign * jnp.pad(scores, ((0, 0), (0, n_cols - n)))
            same = row_ids[:, None] == col_ids[None, :]
            invalid = (row_ids[:, None] >= n) | (col_ids[None, :] >= n)
            if self.node_mask is not None:  # pairs touching a padding node are no pairs of the graph
                real = jnp.pad(self.node_mask, (0, n_cols - n))
                invalid = invalid | ~real[jnp.minimum(row_ids, n_cols - 1)][:, None] | ~real[None, :]
            if self.is_symmetric:
                invalid = invalid | (col_ids[None, :] < row_ids[:, None])
            if edges is not None:
                invalid = invalid | same
            scores = jnp.where(invalid, -jnp.inf, scores)
            if edges is not None:
                edge_rows, edge_cols, starts = edges
                start = starts[jnp.minimum(b, n_blocks - 1)]
                er = jax.lax.dynamic_slice(edge_rows, (start,), (window,)) - r0
                ec = jax.lax.dynamic_slice(edge_cols, (start,), (window,))
                er = jnp.where((er >= 0) & (er < block), er, block)  # other blocks' edges: to a spare row
                spare = jnp.full((1, scores.shape[1]), -jnp.inf, scores.dtype)  # so no scatter is OOB
                scores = jnp.concatenate([scores, spare]).at[er, ec].set(-jnp.inf)
            # exact top-k in two steps: the best k chunks by their maximum hold the best k entries
            chunks = scores.reshape(-1, chunk)
            _, chunk_index = jax.lax.top_k(chunks.max(axis=1), per_block)
            values = chunks[chunk_index].reshape(-1)
            flat = (chunk_index[:, None] * chunk + jnp.arange(chunk)[None, :]).reshape(-1)
            rows = r0 + flat // n_cols
            cols = flat % n_cols
            values = jnp.concatenate([carry[0], values])
            rows = jnp.concatenate([carry[1], rows.astype(jnp.int32)])
            cols = jnp.concatenate([carry[2], cols.astype(jnp.int32)])
            best, index = jax.lax.top_k(values, k)
            return (best, rows[index], cols[index]), None

        carry, _ = jax.lax.scan(body, carry, blocks)
        return carry

    def _topk_in_calls(self, k: int, sign: int, non_edges: bool, block: int, window: int | None,
                       per_call: int) -> AdjacencyTopK:
        """`_topk_blocks` as a Python loop of compiled calls of ``per_call`` blocks each (concrete
        indices only): between calls a long search reports its progress on stderr and can be interrupted."""
        n = self.n_nodes
        n_blocks = -(-n // block)
        per_call = -(-n_blocks // -(-n_blocks // per_call))  # as many calls, as even as can be
        edges = None
        if non_edges:
            edges = _EDGES_BY_BLOCK(self, block, n_blocks, window)
            window = max(window, 1)  # as `_edges_by_block` has it
        carry = _topk_start(k, self.left.dtype)
        start = last = time.perf_counter()
        for first in range(0, n_blocks, per_call):
            carry = _TOPK_SCAN(self, k, sign, block, window, edges, jnp.arange(first, first + per_call), carry)
            jax.block_until_ready(carry)
            now = time.perf_counter()
            done = min(n, (first + per_call) * block)
            if now - start >= TOPK_PROGRESS_AFTER and (now - last >= TOPK_PROGRESS_AFTER or done == n):
                left = (now - start) * (n - done) / done
                print(f"jgrad: AdjacencyGrad.topk: rows {done}/{n} ({100 * done / n:.0f}%) in {now - start:.0f} s, "
                      f"about {left:.0f} s left", file=sys.stderr, flush=True)
                last = now
        return _finish(*carry, sign, k)


jax.tree_util.register_dataclass(
    AdjacencyGrad,
    data_fields=["left", "right", "diagonal_offset", "senders", "receivers", "edge_mask", "edge_error",
                 "attention", "node_mask"],
    meta_fields=["n_nodes", "is_symmetric"],
)


# topk compiled once per (gradient structure, k, sign, candidates, block size, window)
_TOPK_EDGES = jax.jit(AdjacencyGrad._topk_edges, static_argnums=(1, 2))
_TOPK_PAIRS = jax.jit(AdjacencyGrad._topk_pairs, static_argnums=(1, 2))
_TOPK_BLOCKS = jax.jit(AdjacencyGrad._topk_blocks, static_argnums=(1, 2, 3, 4, 5))
_TOPK_SCAN = jax.jit(AdjacencyGrad._topk_scan, static_argnums=(1, 2, 3, 4))
_EDGES_BY_BLOCK = jax.jit(lambda grad, block, n_blocks, window: _edges_by_block(grad, block, n_blocks, window)[:3],
                          static_argnums=(1, 2, 3))


def _topk_start(k: int, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The empty running top-k: values -inf, rows and cols -1."""
    return jnp.full((k,), -jnp.inf, dtype), jnp.full((k,), -1, jnp.int32), jnp.full((k,), -1, jnp.int32)


def _finish(best: jax.Array, rows: jax.Array, cols: jax.Array, sign: int, k: int) -> AdjacencyTopK:
    valid = jnp.isfinite(best)
    values = jnp.where(valid, sign * best, jnp.nan)
    rows = jnp.where(valid, rows, -1).astype(jnp.int32)
    cols = jnp.where(valid, cols, -1).astype(jnp.int32)
    if values.shape[0] < k:  # fewer candidates than k in total
        pad = k - values.shape[0]
        values = jnp.concatenate([values, jnp.full((pad,), jnp.nan, values.dtype)])
        rows = jnp.concatenate([rows, jnp.full((pad,), -1, jnp.int32)])
        cols = jnp.concatenate([cols, jnp.full((pad,), -1, jnp.int32)])
    return AdjacencyTopK(values, rows, cols)


def _distinct_edges(grad: AdjacencyGrad) -> tuple[jax.Array, jax.Array] | None:
    """The distinct existing pairs of `AdjacencyGrad._edge_pairs` (padding edges and edges touching a
    padding node left out), sorted by row, then col, found on the host; None when the indices are traced.

    One numpy sort of int64 keys: 0.5 s for 1.2·10^7 edges, where the three-key sort in XLA that
    `_topk_edges` runs under ``jit`` takes 5.6 s.
    """
    try:
        rows, cols = np.asarray(grad.receivers, np.int64), np.asarray(grad.senders, np.int64)
        if grad.edge_mask is not None:
            valid = np.asarray(grad.edge_mask, bool)
            rows, cols = rows[valid], cols[valid]
        if grad.node_mask is not None:
            real = np.asarray(grad.node_mask, bool)
            valid = real[rows] & real[cols]
            rows, cols = rows[valid], cols[valid]
    except jax.errors.TracerArrayConversionError:
        return None
    if grad.is_symmetric:
        rows, cols = np.minimum(rows, cols), np.maximum(rows, cols)
    n = max(grad.n_nodes, 1)
    keys = np.sort(rows * n + cols)  # np.unique took 13 s for 1.2·10^7 keys (numpy 2.4), the sort 0.5 s
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if keys.size else keys
    return jnp.asarray(keys // n, jnp.int32), jnp.asarray(keys % n, jnp.int32)


def _block_rows(block_size: int, n: int) -> int:
    """The rows per block of `AdjacencyGrad.topk`: ``block_size``, at most N, and at most as many as keep
    a block's B x N' entries (N' = N rounded up to whole chunks) within int32 positions: the entries of a
    block are numbered in int32, and B x N' above ``2**31 - 1`` (B = 256 from 8.4·10^6 nodes on) would
    wrap to wrong pairs."""
    chunk = max(1, min(128, n))
    n_cols = max(1, -(-n // chunk) * chunk)
    return max(1, min(block_size, n, MAX_SIZE // n_cols))


def _block_window(grad: AdjacencyGrad, block: int, n_blocks: int) -> int | None:
    """The largest number of existing edges in one block of ``block`` rows, counted on the host; None
    when the indices are traced (every block then scans all E edges)."""
    try:
        rows = np.asarray(grad.receivers)
        cols = np.asarray(grad.senders)
        valid = np.ones(rows.shape, bool) if grad.edge_mask is None else np.asarray(grad.edge_mask, bool)
    except jax.errors.TracerArrayConversionError:
        return None
    if grad.is_symmetric:
        rows = np.minimum(rows, cols)
    counts = np.bincount(rows[valid] // block, minlength=n_blocks) if n_blocks else np.zeros(1, int)
    return max(int(counts.max()), 1)


def _edges_by_block(grad: AdjacencyGrad, block: int, n_blocks: int, window: int | None = None):
    """Edge pairs sorted by row, the first position of each row block, and a static window length.

    Each block reads ``window`` consecutive sorted edges from its start: `_block_window`'s count when
    the indices were concrete, else (``None``) all E edges.
    """
    rows, cols, valid = grad._edge_pairs()
    beyond = n_blocks * block  # invalid edges sort last and fall outside every block
    rows = jnp.where(valid, rows, beyond).astype(jnp.int32)
    order = jnp.argsort(rows)
    rows, cols = rows[order], cols[order].astype(jnp.int32)
    starts = jnp.searchsorted(rows, jnp.arange(n_blocks + 1) * block).astype(jnp.int32)
    window = int(rows.shape[0]) if window is None else window
    window = max(window, 1)
    rows = jnp.concatenate([rows, jnp.full((window,), beyond, jnp.int32)])
    cols = jnp.concatenate([cols, jnp.zeros((window,), jnp.int32)])
    return rows, cols, starts[:-1], window


def _pair_indices(where: str, rows, cols, n_nodes: int) -> tuple[jax.Array, jax.Array]:
    rows, cols = _as_indices(where, "rows", rows), _as_indices(where, "cols", cols)
    if rows.shape != cols.shape:
        raise ValueError(f"{where}: rows and cols must have the same shape; got {tuple(rows.shape)} and "
                         f"{tuple(cols.shape)}, expected equal shapes.")
    problems = _range_problems(where, "rows", rows, n_nodes) + _range_problems(where, "cols", cols, n_nodes)
    if problems:
        raise ValueError(_join_problems(where, problems))
    return rows, cols


def _positive_int(where: str, name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: {name} must be a Python int; got {type(value).__name__} {value!r:.60}, "
                        "expected a positive int.")
    if value < 1:
        raise ValueError(f"{where}: {name} must be a positive int; got {value}, expected {name} >= 1.")
    return int(value)


def _node_index(where: str, name: str, value, n_nodes: int) -> jax.Array:
    value = _as_indices(where, name, value)
    if value.ndim != 0:
        raise ValueError(f"{where}: {name} must be a single node index; got shape {tuple(value.shape)}, "
                         "expected a scalar. Hint: use AdjacencyGrad.at for many pairs.")
    problems = _range_problems(where, name, value, n_nodes)
    if problems:
        raise ValueError(_join_problems(where, problems))
    return value


def _as_indices(where: str, name: str, value) -> jax.Array:
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.integer):
        raise TypeError(f"{where}: {name} must be integer node indices; got dtype {value.dtype}, expected an "
                        "integer dtype.")
    return value


def _range_problems(where: str, name: str, index: jax.Array, n_nodes: int) -> list[str]:
    """Out-of-range entries of ``index`` (listed when concrete; a checked-mode debug check when traced)."""
    if not is_concrete(index):
        index_range_check(where, name, index, n_nodes, "n_nodes")
        return []
    host = np.asarray(index)
    bad = np.flatnonzero((host < 0) | (host >= n_nodes))
    if bad.size == 0:
        return []
    flat = host.reshape(-1)
    if host.ndim == 0:
        return [f"{name} is out of range; got {int(host)}, expected 0 <= {name} < n_nodes={n_nodes}."]
    listed = ", ".join(f"{name}[{i}]={flat[i]}" for i in bad[:5])
    more = f" and {bad.size - 5} more" if bad.size > 5 else ""
    return [f"{bad.size} {name} out of range; got {listed}{more}, expected 0 <= index < n_nodes={n_nodes}."]


def _join_problems(where: str, problems: list[str]) -> str:
    return f"{where}: " + " ".join(problems)


# --------------------------------------------------------------------------------------------------
# Building the gradient
# --------------------------------------------------------------------------------------------------
def adjacency_grad(
    fn: Callable[..., jax.Array],
    graph: Graph,
    *args: Any,
    symmetric: bool = False,
    mode: Literal["factored", "dense"] = "factored",
    check: bool = True,
    force: bool = False,
) -> AdjacencyGrad:
    """The exact gradient of a scalar ``fn(graph, *args)`` w.r.t. every entry of the adjacency.

    Semantics: ``dL/dA[v, u]`` for all N^2 pairs, where ``A[v, u]`` is the weight of ``u -> v``
    (``0`` for a missing edge; an unweighted graph has weights of ones), i.e. how the loss changes
    when the edge ``u -> v`` is re-weighted, added or removed to first order.

    Mode ``"factored"`` (the default) follows every use of the adjacency in the model's jaxpr: sums
    ``jgrad.ops.spmm(graph, m)`` / ``gspmm(graph, "u_mul_e", "sum", m, w)`` with the graph's weights
    (also on ``graph.reverse()``), weighted degrees ``graph.in_degree()`` / ``out_degree()``, and graphs
    made by `jgrad.ops.gcn_norm`, `row_norm`, ``graph.add_self_loops()`` or `propagate`; any number of
    layers and calls, any non-linearity between them, in plain code, under ``jax.jit`` / ``nnx.jit``
    and in ``lax.scan`` / ``lax.fori_loop`` (static bounds) loops, which are unrolled. Each call c is
    ``y_c = diag(l_c) A diag(r_c) @ m_c`` for node scalings l, r (ones without a normalisation), and::

        dL/dA = sum_c (l_c G_c) (r_c m_c)^T

    exactly, with ``G_c = dL/dy_c`` (the scalings' own dependence on A enters through their degree
    terms), found by one forward and one backward pass with zero probes added to each call's output.
    Max/min/mean message reductions, weights used as per-edge data (gsddmm, edge_softmax) and
    propagation inside ``while_loop`` / ``cond`` raise, naming the cause.

    The result is checked: the factors evaluated at the existing edges must equal `edge_grad`
    (relative error <= 1e-4 in float32, 1e-8 in float64), which catches any other use of the weights
    (arithmetic on ``graph.edge_weight``, weights built from it): the call raises. Uses of the
    structure that touch no weight (an aggregation written by hand over ``graph.senders``, edge
    counts, ``n_edges``) are caught by running the model once more with one extra edge of weight 0
    into every real node: the loss must not change (first call per model and shapes; see
    ``jgrad.gradients._structure``).

    Attention: `jgrad.nn.GATConv` / `GAT` / ``gat_conv`` with ``edge_weight_mode="normalise"``
    (``alpha[v,u] = A[v,u] exp(s[v,u]) / sum_k A[v,k] exp(s[v,k])``) add one exact attention term per
    layer, ``dL/dA[v,u] += sum_h exp(s[v,u,h]) / Z[v,h] (<G[v,h], z[u,h]> - <G[v,h], out[v,h]>)``;
    with the default ``"after_softmax"`` the call raises, naming the option.

    Mode ``"dense"`` runs ``fn`` on the complete graph (all N^2 pairs as edges, weight ``A[v, u]``,
    0 for a missing edge) and differentiates w.r.t. those weights: O(N^2) time and memory. It is
    checked like the factored mode (dL/dA at the existing edges against `edge_grad`) and the loss on
    the complete graph against the loss on ``graph``: a model that looks at the edge *structure*
    (``edge_weight_mode="after_softmax"`` attention, unweighted degrees, ``n_edges``) is a different
    model on the complete graph, and the call raises.

    Compilation: the work runs under ``jax.jit``, compiled once and reused while ``fn``, the
    structure and non-array leaves of ``args`` and everything ``fn`` reads (its closure, defaults,
    globals and bound object: arrays by identity, numpy arrays and Python values by value) are
    unchanged. Passing new arrays of the same shapes does not recompile.

    Args:
      fn: ``fn(graph, *args) -> scalar``, plain or wrapped in ``jax.jit`` / ``nnx.jit``; traced once to
        a jaxpr on the first call.
      graph: the graph; scalar weights (E,) or unweighted.
      *args: further arguments of ``fn``.
      symmetric: return the gradient w.r.t. an undirected adjacency (see `AdjacencyGrad.symmetric`).
      mode: ``"factored"`` or ``"dense"``.
      check: compare with `edge_grad` at the existing edges (in dense mode also the loss values) and
        raise on disagreement; when the values are traced (``adjacency_grad`` inside ``jit``) a
        disagreement makes every entry NaN instead. ``edge_error`` always holds the measured error.
        In factored mode, also raise (inside ``jit``: NaN in the node's row) when a normalisation
        divides by a real node's zero degree (a mean at a node with no incoming weight), where the
        model is not differentiable in A, and the loss depends on such nodes (NaN in their outputs
        reaches it; if not, their rows are 0); ``check=False`` gives 0 in such rows.
      force: allow ``mode="dense"`` above 2048 nodes (never above 46340: N^2 edges need int32 indices).

    Returns:
      `AdjacencyGrad` (in the weights' dtype). Factors have R = sum_c F_c + (number of degree calls)
      columns (doubled by ``symmetric``).

    Raises:
      ValueError: non-scalar output, weights with trailing dimensions, unknown mode, a dense request
        above the size limit, a model that traces differently twice, and, in factored mode, a
        disagreement with `edge_grad` (a non-linear use of the adjacency) or a normalisation by a
        zero degree (see ``check``).
      TypeError: non-Graph input, non-float weights, a non-callable fn, non-bool flags.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 2], n_nodes=3)
      >>> x = jnp.array([[1.0], [2.0], [3.0]])
      >>> grad = jgrad.adjacency_grad(lambda g, x: jgrad.ops.spmm(g, x).sum(), g, x)
      >>> grad.dense().tolist()  # dL/dA[v, u] = x[u] for this loss
      [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
      >>> grad.topk(1, among="non_edges").cols.tolist()
      [2]
    """
    where = "adjacency_grad"
    check_callable(where, fn, "fn(graph, *args) -> scalar loss")
    check_flags(where, symmetric=symmetric, check=check, force=force)
    check_choice(where, "mode", mode, MODES)
    weight = tracked_weights(where, graph)
    if weight.ndim != 1:
        raise ValueError(f"{where}: needs one scalar weight per edge; got edge_weight of shape "
                         f"{tuple(weight.shape)}, expected ({graph.n_edges},).")
    if mode == "dense":
        result = _dense_grad(fn, graph, args, weight, force, check)
    else:
        result = _factored_grad(fn, graph, args, weight, check)
    return result.symmetric() if symmetric else result


def _factored_build(graph: Graph, w: jax.Array, arrays: list, *,
                    call: Call) -> tuple[AdjacencyGrad, dict, jax.Array, jax.Array]:
    """The factored gradient, the real nodes at which it may not exist (see `_raise_if_undefined`), the
    loss, and whether the loss depends on those nodes (a scalar bool)."""
    where = "adjacency_grad"
    args = rebuild_args(call, arrays)
    n = graph.n_nodes

    def tracked(w):
        return dataclasses.replace(graph, edge_weight=w, tapped=True)

    closed = _recording.trace(call.fn, tracked(w), args)

    def run(probes, w, poison=False):
        graph_w = tracked(w)
        interpreter = _recording.Interpreter(n, probes, node_mask=graph.node_mask, poison=poison)
        inputs = _recording.array_leaves(graph_w, args)
        (value,) = interpreter.run(closed, inputs, graph_w.edge_weight, graph_w.senders, graph_w.receivers)
        check_scalar(where, value)
        return value, interpreter.terms, interpreter.undefined

    # pass 1: which taps, of which shapes (abstract evaluation, no FLOPs)
    discovered: list = []
    jax.eval_shape(lambda w: discovered.append(run(None, w)[1:]) or 0.0, w)
    terms, normalised = discovered[-1][0], any(nodes is not None for nodes in discovered[-1][1].values())
    if not terms:  # no use of the adjacency that adjacency_grad follows: does the loss use it at all?
        check_weights_used(where, trace_of_weights(call.fn, tracked(w), args, w)[0])
    probes = [jnp.zeros(term.shape, term.dtype) for term in terms]

    def objective(probes, w):
        value, found, undefined = run(probes, w)
        return value, ([term.data for term in found], undefined, value)

    # pass 2: dL/dprobe = G for every term, and dL/dw for the check, in one backward pass
    (probe_grads, weight_grad), (data, undefined, value) = jax.grad(objective, argnums=(0, 1), has_aux=True)(probes, w)
    result = _assemble([term.kind for term in terms], probe_grads, data, graph, w.dtype)
    result = dataclasses.replace(result, edge_error=_edge_error(result, weight_grad, graph.edge_mask))
    none = jnp.zeros((n,), bool)
    rows = {norm: none if nodes is None else nodes for norm, nodes in undefined.items()}
    # pass 3, only if a normalisation divided by a zero degree: the loss with NaN in what that left
    # undefined (`_felt_by_the_loss`); not even compiled for a model without degree normalisations
    depends = jnp.zeros((), bool)
    if normalised:
        depends = jax.lax.cond(jnp.any(rows["row"] | rows["sym"] | rows["attention"]),
                               lambda w: jnp.isnan(run(None, w, poison=True)[0]), lambda w: depends, w)
    return result, rows, value, depends


def _felt_by_the_loss(rows: dict, depends: jax.Array) -> dict:
    """``rows`` (see `_raise_if_undefined`) if the loss depends on their nodes, else no rows: a loss that
    does not depend on them has dL/dA = 0 there, exactly.

    ``depends``: whether the loss is NaN with NaN in everything a zero degree leaves undefined (the
    scaled outputs at those nodes and, with a symmetric scaling, their messages; their attention rows;
    `_recording.Interpreter`'s ``poison``). A loss that is not NaN then never computed with those
    values, so no jump of theirs reaches it. NaN can reach a loss that does not depend on them, by a
    product with 0 (``(per_node * mask).sum()`` rather than ``jnp.where``): then it raises, to be safe.
    """
    if is_concrete(depends):
        return rows if bool(depends) else {kind: jnp.zeros_like(mask) for kind, mask in rows.items()}
    return {kind: mask & depends for kind, mask in rows.items()}


def _raise_if_undefined(rows: dict) -> None:
    """Raises when a normalisation of the adjacency divided by a zero degree at a real node (``rows``:
    ``{"row": ..., "sym": ..., "attention": ...}``, (N,) bool each, from the `_recording.Interpreter`)
    that the loss depends on (`_felt_by_the_loss`): an edge added into such a node makes the model
    jump, so dL/dA has no value in its row. Traced rows are left to `_poisoned_rows`.
    """
    for norm, mask in rows.items():
        try:
            nodes = np.flatnonzero(np.asarray(mask))
        except jax.errors.TracerArrayConversionError:
            return
        if nodes.size == 0:
            continue
        how = {"row": "takes a mean over its incoming edges (row_norm, mean_aggregate, "
                      "SAGEConv(aggregator='mean'), propagate(norm='row')), which jumps as soon as an edge "
                      "into it is added",
               "sym": "scales by its degree ** -1/2 (gcn_norm, propagate(norm='sym') without self loops), whose "
                      "derivative is unbounded at 0",
               "attention": "normalises its attention by the node's total incoming weight (GATConv with "
                            "edge_weight_mode='normalise' and no self loops), which jumps as soon as an edge "
                            "into it is added"}[norm]
        more = f" ({nodes.size - 1} more such nodes)" if nodes.size > 1 else ""
        raise ValueError(
            f"adjacency_grad: node {int(nodes[0])} has no incoming weight and the model {how}; got a model "
            f"that is not differentiable in A in that node's row{more}, and a loss that depends on such "
            "nodes (NaN in their outputs reaches it). Add self loops (graph.add_self_loops(), or "
            "add_self_loops=True), leave those nodes out of the loss, use jgrad.edge_grad for the existing "
            "edges, or pass check=False to take 0 in their rows."
        )


def _poisoned_rows(result: AdjacencyGrad, rows: dict) -> AdjacencyGrad:
    """``result`` with NaN in the rows of the nodes in ``rows`` (see `_raise_if_undefined`), under
    ``jit``, where they cannot raise."""
    if not isinstance(rows["row"], jax.core.Tracer) or result.left.shape[1] == 0:
        return result
    bad = (rows["row"] | rows["sym"] | rows["attention"])[:, None]
    return dataclasses.replace(result, left=jnp.where(bad, jnp.asarray(jnp.nan, result.left.dtype), result.left))


def _factored_grad(fn, graph: Graph, args, weight: jax.Array, check: bool) -> AdjacencyGrad:
    result, undefined_rows, value, depends = run_cached(_factored_build, fn, args, ("factored",), graph, weight)
    if not check:
        return result
    _raise_if_not_finite(value, result.edge_error)
    undefined_rows = _felt_by_the_loss(undefined_rows, depends)
    _raise_if_undefined(undefined_rows)
    _raise_if_nonlinear(result.edge_error, weight.dtype)
    structure_error = _structure.structure_error(fn, graph, args, weight)
    _structure.raise_if_structural(structure_error, weight.dtype)
    if structure_error is not None:  # measured: edge_error holds it too (inside jit: NaN when too large)
        result = dataclasses.replace(result, edge_error=jnp.maximum(result.edge_error, structure_error))
    return _poisoned_rows(_poisoned_if_wrong(result, weight.dtype), undefined_rows)


def _assemble(kinds, probe_grads, data, graph: Graph, dtype) -> AdjacencyGrad:
    """Stacks the recorded terms into the (N, R) factors, attention terms aside.

    An aggregation ``y = diag(l) A diag(r) @ u`` with ``G = dL/dy`` adds ``(l G)(r u)^T``; its
    transpose ``y = diag(r) A^T diag(l) @ u`` adds ``(l u)(r G)^T`` (l, r are ones when absent).
    """
    n = graph.n_nodes
    lefts, rights, attention = [], [], []
    for kind, grad, term_data in zip(kinds, probe_grads, data):
        if kind.startswith("attention"):
            attention.append(attention_term(term_data, grad, kind == "attention_fixed", dtype))
            continue
        u, left, right = term_data
        grad = grad.astype(dtype)
        u = jnp.broadcast_to(u.reshape(u.shape + (1,) * (grad.ndim - u.ndim)), grad.shape).astype(dtype)
        at_rows, at_cols = (grad, u) if kind == "aggregate" else (u, grad)
        lefts.append(_scale(at_rows.reshape(n, -1), left, dtype))
        rights.append(_scale(at_cols.reshape(n, -1), right, dtype))
    result = _directed_grad(
        graph,
        jnp.concatenate(lefts, axis=1) if lefts else jnp.zeros((n, 0), dtype),
        jnp.concatenate(rights, axis=1) if rights else jnp.zeros((n, 0), dtype),
    )
    return dataclasses.replace(result, attention=tuple(attention))


def _scale(factor: jax.Array, scaling, dtype) -> jax.Array:
    """``diag(scaling) @ factor`` for an (N,) node scaling, or ``factor`` when there is none."""
    return factor if scaling is None else factor * scaling.astype(dtype)[:, None]


def _directed_grad(graph: Graph, left: jax.Array, right: jax.Array) -> AdjacencyGrad:
    """``left @ right.T`` as the (not symmetrised) gradient w.r.t. ``graph``'s adjacency."""
    n, dtype = graph.n_nodes, left.dtype
    return AdjacencyGrad(
        left=left,
        right=right,
        diagonal_offset=jnp.zeros((n,), dtype),
        senders=graph.senders,
        receivers=graph.receivers,
        edge_mask=graph.edge_mask,
        edge_error=jnp.zeros((), dtype),
        n_nodes=n,
        node_mask=graph.node_mask,
    )


def _edge_error(result: AdjacencyGrad, weight_grad: jax.Array, edge_mask) -> jax.Array:
    """max |factored - dL/dw| over the real edges, relative to the gradient's size (0 for a graph
    without edges).

    The size is the largest |dL/dw| at an edge, or, if larger, a bound on every entry of the factored
    part, ``max_i |left_i| · max_j |right_j|``: where dL/dw is 0 at every edge (a graph whose only
    edges are self loops the loss does not feel), float rounding of the factors is not mistaken for
    a disagreement.
    """
    if weight_grad.shape[0] == 0:
        return jnp.zeros((), weight_grad.dtype)
    factored = result.at(result.receivers, result.senders)
    difference = jnp.abs(factored - weight_grad)
    scale = jnp.abs(weight_grad)
    if edge_mask is not None:
        difference = jnp.where(edge_mask, difference, 0)
        scale = jnp.where(edge_mask, scale, 0)
    bound = jnp.zeros((), weight_grad.dtype)
    if result.left.shape[1] and result.left.shape[0]:
        bound = (jnp.max(jnp.linalg.norm(result.left, axis=1)) *
                 jnp.max(jnp.linalg.norm(result.right, axis=1))).astype(weight_grad.dtype)
    tiny = jnp.finfo(weight_grad.dtype).tiny
    return jnp.max(difference) / jnp.maximum(jnp.maximum(jnp.max(scale), bound), tiny)


def _edge_tolerance(dtype) -> float:
    """The largest relative disagreement with `edge_grad` accepted as float rounding."""
    return 1e-8 if jnp.dtype(dtype) == jnp.float64 else 1e-4


def _poisoned_if_wrong(result: AdjacencyGrad, dtype) -> AdjacencyGrad:
    """``result``, or NaN in every entry when its check failed: under ``jit`` the check cannot raise."""
    if isinstance(result.edge_error, jax.core.Tracer):
        bad = ~(result.edge_error <= _edge_tolerance(dtype))
        poison = lambda value: jnp.where(bad, jnp.asarray(jnp.nan, value.dtype), value)
        left, right = result.left, result.right
        if left.shape[1] == 0:  # no factor columns to carry the NaN: one column that is 0 unless bad
            left, right = jnp.zeros((left.shape[0], 1), left.dtype), jnp.ones((right.shape[0], 1), right.dtype)
        attention = tuple(dataclasses.replace(term, cotangent=poison(term.cotangent)) for term in result.attention)
        return dataclasses.replace(result, left=poison(left), right=right,
                                   diagonal_offset=poison(result.diagonal_offset), attention=attention)
    return result


def _raise_if_nonlinear(error: jax.Array, dtype) -> None:
    try:
        value = float(error)
    except jax.errors.ConcretizationTypeError:
        return  # traced: the caller reads edge_error
    tolerance = _edge_tolerance(dtype)
    if not value <= tolerance:
        raise ValueError(
            "adjacency_grad: the model uses the edge weights outside the operations adjacency_grad follows "
            "(spmm and gspmm sums, in/out degrees, gcn_norm, row_norm, add_self_loops, propagate, "
            "normalised attention), e.g. arithmetic on graph.edge_weight or weights built from it; the "
            "factored gradient disagrees with dL/dw at the existing edges (max relative error "
            f"{value:.3g}, tolerance {tolerance:g}). Pass the weights to those operations unchanged, or use "
            "mode='dense' for small graphs."
        )


def _dense_grad(fn, graph: Graph, args, weight: jax.Array, force: bool, check: bool) -> AdjacencyGrad:
    n = graph.n_nodes
    if n * n > MAX_SIZE:  # even with force: the complete graph's edges are indexed with int32
        raise ValueError(
            f"adjacency_grad: mode='dense' builds a complete graph of N^2 edges, indexed with int32; got "
            f"n_nodes={n}, {n * n} edges, expected at most 2**31 - 1 = {MAX_SIZE} (n_nodes <= "
            f"{math.isqrt(MAX_SIZE)}), even with force=True. Use mode='factored' with a linear model."
        )
    if n > DENSE_NODE_LIMIT and not force:
        raise ValueError(
            f"adjacency_grad: mode='dense' builds a complete graph of N^2 edges; got n_nodes={n}, "
            f"expected at most {DENSE_NODE_LIMIT} ({n * n} edges would be built). Pass force=True to "
            "run it anyway, or use mode='factored' with a linear model."
        )
    result, value_error = run_cached(_dense_build, fn, args, ("dense",), graph, weight)
    if check:
        _raise_if_structural(result.edge_error, value_error, weight.dtype)
    return _poisoned_if_wrong(result, weight.dtype) if check else result


def _dense_build(graph: Graph, weight: jax.Array, arrays: list, *, call: Call):
    """dL/dA on the complete graph, and how far it is from the model on its own graph.

    Returns the `AdjacencyGrad` (``edge_error``: the larger of the relative disagreements of dL/dA at
    the existing edges with `edge_grad` and of the loss values) and the loss-value disagreement.
    """
    n, dtype = graph.n_nodes, weight.dtype
    args = rebuild_args(call, arrays)
    check_weights_used("adjacency_grad", trace_of_weights(call.fn, graph, args, weight)[0])
    dense = graph.with_edge_weight(weight).to_dense().astype(dtype)  # A[v, u]; padding edges count 0
    nodes = jnp.arange(n, dtype=jnp.int32)
    complete = dataclasses.replace(
        graph,
        senders=jnp.tile(nodes, n),  # pair (v, u) is edge v * N + u
        receivers=jnp.repeat(nodes, n),
        edge_weight=None,
        edge_mask=None,
        n_edge_per_graph=None,
    )

    def loss(g, w):
        value = call.fn(g.with_edge_weight(w), *args)
        check_scalar("adjacency_grad", value)
        return value

    complete_value, grad = jax.value_and_grad(lambda w: loss(complete, w))(dense.reshape(-1))
    own_value, weight_grad = jax.value_and_grad(lambda w: loss(graph, w))(weight)
    result = _directed_grad(graph, grad.reshape(n, n), jnp.eye(n, dtype=grad.dtype))
    tiny = jnp.finfo(dtype).tiny
    value_error = jnp.abs(complete_value - own_value) / jnp.maximum(
        jnp.maximum(jnp.abs(complete_value), jnp.abs(own_value)), tiny)
    value_error = value_error.astype(dtype)
    edge_error = jnp.maximum(_edge_error(result, weight_grad, graph.edge_mask), value_error)
    return dataclasses.replace(result, edge_error=edge_error), value_error


def _raise_if_not_finite(loss: jax.Array, edge_error: jax.Array) -> None:
    """Raises when the loss, or the gradient at the existing edges (``edge_error`` is then NaN), is NaN
    or infinite, before the checks that would blame the model for it (concrete values only)."""
    if not is_concrete(loss, edge_error):
        return
    loss = float(loss)
    if np.isfinite(loss) and not np.isnan(float(edge_error)):
        return
    what = f"a loss of {loss}" if not np.isfinite(loss) else "a gradient at the existing edges that is NaN or infinite"
    raise ValueError(
        f"adjacency_grad: got {what}; expected finite values. Check the features, parameters and edge "
        "weights for NaN or infinite values (jnp.isfinite), and the model for divisions by 0."
    )


def _raise_if_structural(error: jax.Array, value_error: jax.Array, dtype) -> None:
    try:
        value, loss_error = float(error), float(value_error)
    except jax.errors.ConcretizationTypeError:
        return  # traced: the caller reads edge_error
    if np.isnan(loss_error) or np.isnan(value):
        raise ValueError(
            "adjacency_grad: got a loss or a gradient at the existing edges that is NaN or infinite, on the "
            "graph or on the complete graph; expected finite values. Check the features, parameters and "
            "edge weights for NaN or infinite values (jnp.isfinite), and the model for divisions by 0."
        )
    tolerance = _edge_tolerance(dtype)
    if not value <= tolerance:
        raise ValueError(
            "adjacency_grad: mode='dense' disagrees with the model on its own graph; got relative error "
            f"{value:.3g} (dL/dA at the existing edges against edge_grad, and the loss value: {loss_error:.3g}), "
            f"expected at most {tolerance:g}. The model looks at the edge structure, not only at the "
            "weights, so on the complete graph it is a different model: e.g. gat_conv with "
            "edge_weight_mode='after_softmax' (its softmax runs over all N nodes; use "
            "edge_weight_mode='normalise'), unweighted degrees, or graph.n_edges. Only a model that is a "
            "function of the weighted adjacency has a dL/dA at missing pairs."
        )
