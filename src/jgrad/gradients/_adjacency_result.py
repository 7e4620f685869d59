"""`AdjacencyGrad`: dL/dA at every pair of nodes held as two (N, R) factors (plus attention terms), and
its queries: entries at given pairs (``at``), rows, the dense matrix, the symmetric part and the top k
pairs (``topk``, in row blocks that never hold an N x N array). `jgrad.adjacency_grad` builds it.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._src._checks import index_range_check, is_concrete
from .._src._limits import MAX_SIZE
from .._src._search import sorted_unique
from .._src._types import check_choice
from ._attention import AttentionTerm

AMONG = ("non_edges", "edges", "all")
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
        rows, cols, valid = (np.asarray(a) for a in grad._edge_pairs())
    except jax.errors.TracerArrayConversionError:
        return None
    n = max(grad.n_nodes, 1)
    # np.unique took 13 s for 1.2·10^7 keys (numpy 2.4), this 0.5 s
    keys = sorted_unique(rows[valid].astype(np.int64) * n + cols[valid].astype(np.int64))
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
