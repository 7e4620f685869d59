"""The gradient w.r.t. every entry of the adjacency, existing edges and missing ones, held as factors.

For a model whose use of ``A`` is linear per call (aggregations ``y_c = A @ m_c`` through
`jgrad.ops.spmm` / `gspmm`, and weighted degrees ``graph.in_degree()`` / ``out_degree()``), the
gradient of a scalar loss w.r.t. the dense adjacency is exactly::

    dL/dA = sum_c G_c M_c^T + g_in 1^T + 1 g_out^T       G_c = dL/dy_c (N, F_c), M_c = m_c (N, F_c)

an N x N matrix of rank <= sum_c F_c + 2, which `AdjacencyGrad` stores as two (N, R) factors. The
library finds ``G_c`` by adding zero probes to each tapped output (see `jgrad.graph._taps`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._types import check_choice
from ..graph import Graph
from ..graph._taps import Recorder, recording
from ._edge import check_scalar, tracked_weights

AMONG = ("non_edges", "edges", "all")
MODES = ("factored", "dense")
DENSE_NODE_LIMIT = 2048


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
    """dL/dA for every pair (v, u), ``A[v, u]`` = weight of ``u -> v``, as ``left @ right.T - diag(offset)``.

    Attributes:
      left: (N, R) left factor.
      right: (N, R) right factor.
      diagonal_offset: (N,) subtracted from the diagonal (non-zero after `symmetric`).
      senders: (E,) senders of the existing edges (used to tell edges from non-edges).
      receivers: (E,) receivers of the existing edges.
      edge_mask: (E,) bool or ``None``; padding edges are not existing edges.
      edge_error: scalar, the largest relative disagreement between the factors and ``edge_grad`` at
        the existing edges, measured when the gradient was built (0 in dense mode).
      n_nodes: N (static).
      is_symmetric: whether this is the gradient w.r.t. an undirected adjacency (static): entry
        (i, j) is ``dL/dA[i, j] + dL/dA[j, i]`` off the diagonal and ``dL/dA[i, i]`` on it.

    A pytree (jit- and vmap-friendly). Every accessor costs O(R) per entry; nothing builds the
    N x N matrix except `dense`.
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

    @property
    def rank(self) -> int:
        """R, the number of factor columns (an upper bound on the rank of dL/dA)."""
        return int(self.left.shape[1])

    def dense(self) -> jax.Array:
        """The full (N, N) gradient. O(N^2 R) time and O(N^2) memory: for small graphs."""
        return self.left @ self.right.T - jnp.diag(self.diagonal_offset)

    def at(self, rows: jax.typing.ArrayLike, cols: jax.typing.ArrayLike) -> jax.Array:
        """dL/dA[rows[p], cols[p]] for P pairs (receiver v, sender u); shape (P,). O(P·R).

        ``at(graph.receivers, graph.senders)`` equals `edge_grad` for a model using A linearly.
        """
        rows, cols = _pair_indices("AdjacencyGrad.at", rows, cols)
        value = jnp.sum(self.left[rows] * self.right[cols], axis=-1)
        return value - jnp.where(rows == cols, self.diagonal_offset[rows], jnp.zeros((), value.dtype))

    def row(self, v: jax.typing.ArrayLike) -> jax.Array:
        """dL/dA[v, :], the gradient w.r.t. every possible incoming edge of node v; shape (N,). O(N·R)."""
        v = jnp.asarray(v)
        value = self.right @ self.left[v]
        return value - jnp.where(jnp.arange(self.n_nodes) == v, self.diagonal_offset[v],
                                 jnp.zeros((), value.dtype))

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
        edge if either direction is.

        Args:
          k: how many pairs (a positive Python int).
          among: the candidate set (keyword-only).
          sign: ``+1`` for the largest gradients (adding weight raises the loss most), ``-1`` for the
            most negative (adding weight lowers the loss most).
          block_size: rows per block B; peak memory is O(B·N + E) (the (B, N) block of scores).

        Returns:
          `AdjacencyTopK` of shape (k,) each, ordered best first; where fewer than k candidates exist
          the tail has value NaN and indices -1.

        Notes:
          Time O(N^2·R) for ``"non_edges"``/``"all"`` (one (B, R) x (R, N) product per block, a running
          top-k kept across blocks), O(E·R) for ``"edges"``. Works under ``jit``; with concrete edge
          indices each block scans only its own edges, under ``jit`` every block scans all E edges.
        """
        where = "AdjacencyGrad.topk"
        check_choice(where, "candidate set", among, AMONG)
        if sign not in (1, -1):
            raise ValueError(f"{where}: sign must be +1 or -1; got {sign!r}.")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"{where}: k must be a positive int; got {k!r}.")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"{where}: block_size must be a positive int; got {block_size!r}.")
        if among == "edges":
            return self._topk_edges(k, sign)
        return self._topk_blocks(k, sign, among == "non_edges", block_size)

    # ----------------------------------------------------------------------------------------------
    def _edge_pairs(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(rows, cols, valid) of the existing edges; both directions for a symmetric gradient."""
        rows, cols = self.receivers, self.senders
        valid = jnp.ones(rows.shape, bool) if self.edge_mask is None else self.edge_mask
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

    def _topk_blocks(self, k: int, sign: int, non_edges: bool, block_size: int) -> AdjacencyTopK:
        n, rank = self.n_nodes, self.rank
        dtype = self.left.dtype
        block = max(1, min(block_size, n))
        n_blocks = -(-n // block)
        chunk = min(128, n)
        n_cols = -(-n // chunk) * chunk
        left = jnp.pad(self.left, ((0, n_blocks * block - n), (0, 0)))
        offset = jnp.pad(self.diagonal_offset, (0, n_blocks * block - n))
        right = jnp.pad(self.right, ((0, n_cols - n), (0, 0)))
        if non_edges:
            edge_rows, edge_cols, starts, window = _edges_by_block(self, block, n_blocks)
        col_ids = jnp.arange(n_cols)
        per_block = min(k, block * n_cols // chunk)

        def body(carry, b):
            r0 = b * block
            row_ids = r0 + jnp.arange(block)
            scores = jax.lax.dynamic_slice(left, (r0, 0), (block, rank)) @ right.T  # (B, N)
            same = row_ids[:, None] == col_ids[None, :]
            own = jax.lax.dynamic_slice(offset, (r0,), (block,))
            scores = sign * (scores - jnp.where(same, own[:, None], jnp.zeros((), dtype)))
            invalid = (row_ids[:, None] >= n) | (col_ids[None, :] >= n)
            if self.is_symmetric:
                invalid = invalid | (col_ids[None, :] < row_ids[:, None])
            if non_edges:
                invalid = invalid | same
            scores = jnp.where(invalid, -jnp.inf, scores)
            if non_edges:
                er = jax.lax.dynamic_slice(edge_rows, (starts[b],), (window,)) - r0
                ec = jax.lax.dynamic_slice(edge_cols, (starts[b],), (window,))
                er = jnp.where((er >= 0) & (er < block), er, block)  # other blocks' edges are dropped
                scores = scores.at[er, ec].set(-jnp.inf, mode="drop")
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

        init = (jnp.full((k,), -jnp.inf, dtype), jnp.full((k,), -1, jnp.int32), jnp.full((k,), -1, jnp.int32))
        (best, rows, cols), _ = jax.lax.scan(body, init, jnp.arange(n_blocks))
        return _finish(best, rows, cols, sign, k)


jax.tree_util.register_dataclass(
    AdjacencyGrad,
    data_fields=["left", "right", "diagonal_offset", "senders", "receivers", "edge_mask", "edge_error"],
    meta_fields=["n_nodes", "is_symmetric"],
)


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


def _edges_by_block(grad: AdjacencyGrad, block: int, n_blocks: int):
    """Edge pairs sorted by row, the first position of each row block, and a static window length.

    Each block reads ``window`` consecutive sorted edges from its start; with concrete indices the
    window is the largest block's edge count, under ``jit`` it is E.
    """
    rows, cols, valid = grad._edge_pairs()
    beyond = n_blocks * block  # invalid edges sort last and fall outside every block
    rows = jnp.where(valid, rows, beyond).astype(jnp.int32)
    order = jnp.argsort(rows)
    rows, cols = rows[order], cols[order].astype(jnp.int32)
    starts = jnp.searchsorted(rows, jnp.arange(n_blocks + 1) * block).astype(jnp.int32)
    try:
        window = int(np.max(np.diff(np.asarray(starts)))) if n_blocks else 0
    except jax.errors.TracerArrayConversionError:
        window = int(rows.shape[0])
    window = max(window, 1)
    rows = jnp.concatenate([rows, jnp.full((window,), beyond, jnp.int32)])
    cols = jnp.concatenate([cols, jnp.zeros((window,), jnp.int32)])
    return rows, cols, starts[:-1], window


def _pair_indices(where: str, rows, cols) -> tuple[jax.Array, jax.Array]:
    rows, cols = jnp.asarray(rows), jnp.asarray(cols)
    problems = []
    for name, value in (("rows", rows), ("cols", cols)):
        if not jnp.issubdtype(value.dtype, jnp.integer):
            raise TypeError(f"{where}: {name} must be integer node indices; got dtype {value.dtype}.")
    if rows.shape != cols.shape:
        problems.append(f"rows and cols must have the same shape; got {tuple(rows.shape)} and {tuple(cols.shape)}.")
    if problems:
        raise ValueError(f"{where}: " + " ".join(problems))
    return rows, cols


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

    Mode ``"factored"`` (the default) needs the model to use the adjacency *linearly per call*:
    aggregations ``jgrad.ops.spmm(graph, m)`` (or ``gspmm(graph, "u_mul_e", "sum", m, w)`` with the
    graph's own weights, also on ``graph.reverse()``) and weighted degrees ``graph.in_degree()`` /
    ``graph.out_degree()``; any number of layers and calls, any non-linearity between them. Then::

        dL/dA = sum_c G_c M_c^T + g_in 1^T + 1 g_out^T

    exactly, with ``G_c = dL/dy_c`` and ``M_c`` the aggregated messages of call c, found by one
    forward and one backward pass with zero probes added to each output. Normalised layers must be
    written with node scalings (`jgrad.gradients.propagate`), not with per-edge normalised weights.

    The result is checked: the factors evaluated at the existing edges must equal `edge_grad`
    (relative error <= 1e-4 in float32, 1e-8 in float64), which catches every non-linear use of the
    weights: attention on edges, `jgrad.ops.gcn_norm` / `row_norm`, ``graph.add_self_loops()`` inside
    the model, weights used outside spmm and in_degree.

    Mode ``"dense"`` runs ``fn`` on the complete graph (all N^2 pairs as edges, weight ``A[v, u]``,
    0 for a missing edge) and differentiates w.r.t. those weights: any model, O(N^2) time and memory.
    Note that a model that looks at the edge *structure* (softmax over neighbours, unweighted degrees)
    sees N neighbours per node in that graph.

    Args:
      fn: ``fn(graph, *args) -> scalar``; traced twice (discovery, then gradient). Do not pass a
        ``jax.jit``-wrapped fn (jit the call to adjacency_grad instead), and write loops over
        propagation steps as Python loops (each step is a tapped call).
      graph: the graph; scalar weights (E,) or unweighted.
      *args: further arguments of ``fn``.
      symmetric: return the gradient w.r.t. an undirected adjacency (see `AdjacencyGrad.symmetric`).
      mode: ``"factored"`` or ``"dense"``.
      check: compare with `edge_grad` at the existing edges and raise on disagreement (skipped when
        the values are traced, e.g. under ``jit``; ``edge_error`` then holds the measured error).
      force: allow ``mode="dense"`` above 2048 nodes.

    Returns:
      `AdjacencyGrad` (in the weights' dtype). Factors have R = sum_c F_c + (number of degree calls)
      columns (doubled by ``symmetric``).

    Raises:
      ValueError: non-scalar output, weights with trailing dimensions, unknown mode, a dense request
        above the size limit, a model that traces differently twice, and, in factored mode, a
        disagreement with `edge_grad` (a non-linear use of the adjacency).
      TypeError: non-Graph input, non-float weights.

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
    check_choice(where, "mode", mode, MODES)
    weight = tracked_weights(where, graph)
    if weight.ndim != 1:
        raise ValueError(f"{where}: needs one scalar weight per edge; got edge_weight of shape "
                         f"{tuple(weight.shape)}, expected ({graph.n_edges},).")
    if mode == "dense":
        result = _dense_grad(fn, graph, args, weight, force)
    else:
        result = _factored_grad(fn, graph, args, weight, check)
    return result.symmetric() if symmetric else result


def _split_arrays(args: tuple) -> tuple[list, Callable[[list], tuple]]:
    """The array leaves of ``args`` (passed through ``jit``) and a function rebuilding ``args`` from them.

    Non-array leaves (Python numbers, strings, callables) stay as they are, closed over as constants.
    """
    leaves, treedef = jax.tree.flatten(args)
    is_array = [isinstance(leaf, (jax.Array, np.ndarray, np.generic)) for leaf in leaves]
    arrays = [leaf for leaf, flag in zip(leaves, is_array) if flag]

    def rebuild(new_arrays: list) -> tuple:
        it = iter(new_arrays)
        return jax.tree.unflatten(treedef, [next(it) if flag else leaf for leaf, flag in zip(leaves, is_array)])

    return arrays, rebuild


def _factored_grad(fn, graph: Graph, args, weight: jax.Array, check: bool) -> AdjacencyGrad:
    where = "adjacency_grad"
    arrays, rebuild = _split_arrays(args)

    def run(probe_values, w, graph, args):
        tracked = dataclasses.replace(graph, edge_weight=w)
        recorder = Recorder(w, tracked.senders, tracked.receivers, probe_values)
        with recording(recorder):
            value = fn(tracked, *args)
        check_scalar(where, value)
        return value, recorder

    def build(graph, w, arrays):
        args = rebuild(arrays)
        discovered: list[Recorder] = []
        # pass 1: how many probes, of which shapes (abstract evaluation, no FLOPs)
        jax.eval_shape(lambda w: discovered.append(run(None, w, graph, args)[1]) or 0.0, w)
        first = discovered[-1]
        probes = [jnp.zeros(shape, dtype) for shape, dtype in zip(first.shapes, first.dtypes)]

        def objective(probe_values, w):
            value, recorder = run(probe_values, w, graph, args)
            if len(recorder.kinds) != len(probe_values):
                raise ValueError(f"{where}: the model used the adjacency {len(recorder.kinds)} times on "
                                 f"its second trace, expected {len(probe_values)} as on the first.")
            return value, [m for m in recorder.messages if m is not None]

        # pass 2: dL/dprobes = G_c and g_d, and dL/dw for the check, in one backward pass
        (probe_grads, weight_grad), messages = jax.grad(objective, argnums=(0, 1), has_aux=True)(probes, w)
        result = _assemble(first.kinds, probe_grads, messages, graph, w.dtype)
        return dataclasses.replace(result, edge_error=_edge_error(result, weight_grad, graph.edge_mask))

    try:
        result = jax.jit(build)(graph, weight, arrays)
    except jax.errors.UnexpectedTracerError as error:
        raise ValueError(
            f"{where}: an aggregation inside a jax transformation of the model (lax.scan, fori_loop, "
            "vmap, a jitted sub-function) cannot be tapped; write propagation loops as Python loops, "
            "or use mode='dense' for small graphs."
        ) from error
    if check:
        _raise_if_nonlinear(result.edge_error, weight.dtype)
    return result


def _assemble(kinds, probe_grads, messages, graph: Graph, dtype) -> AdjacencyGrad:
    """Stacks the recorded (G_c, M_c) and degree terms into the (N, R) factors."""
    n = graph.n_nodes
    ones = jnp.ones((n, 1), dtype)
    lefts, rights = [], []
    message_iter = iter(messages)
    for kind, grad in zip(kinds, probe_grads):
        grad = grad.reshape(n, -1).astype(dtype)
        if kind in ("spmm", "spmm_t"):
            message = next(message_iter).reshape(n, -1).astype(dtype)
            lefts.append(grad if kind == "spmm" else message)
            rights.append(message if kind == "spmm" else grad)
        elif kind == "in_degree":
            lefts.append(grad)
            rights.append(ones)
        else:
            lefts.append(ones)
            rights.append(grad)
    return _directed_grad(
        graph,
        jnp.concatenate(lefts, axis=1) if lefts else jnp.zeros((n, 0), dtype),
        jnp.concatenate(rights, axis=1) if rights else jnp.zeros((n, 0), dtype),
    )


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
    )


def _edge_error(result: AdjacencyGrad, weight_grad: jax.Array, edge_mask) -> jax.Array:
    """max |factored - dL/dw| / max |dL/dw| over the real edges (0 for a graph without edges)."""
    if weight_grad.shape[0] == 0:
        return jnp.zeros((), weight_grad.dtype)
    factored = result.at(result.receivers, result.senders)
    difference = jnp.abs(factored - weight_grad)
    scale = jnp.abs(weight_grad)
    if edge_mask is not None:
        difference = jnp.where(edge_mask, difference, 0)
        scale = jnp.where(edge_mask, scale, 0)
    tiny = jnp.finfo(weight_grad.dtype).tiny
    return jnp.max(difference) / jnp.maximum(jnp.max(scale), tiny)


def _raise_if_nonlinear(error: jax.Array, dtype) -> None:
    try:
        value = float(error)
    except jax.errors.ConcretizationTypeError:
        return  # traced: the caller reads edge_error
    tolerance = 1e-8 if jnp.dtype(dtype) == jnp.float64 else 1e-4
    if not value <= tolerance:
        raise ValueError(
            "adjacency_grad: the model uses the adjacency non-linearly or outside spmm/in_degree (e.g. "
            "attention scores on edges, gcn_norm's per-edge weights, graph.add_self_loops() inside the "
            "model); the factored gradient disagrees with dL/dw at existing edges (max relative error "
            f"{value:.3g}, tolerance {tolerance:g}). Use mode='dense' for small graphs, or write the "
            "normalisation with node scalings (jgrad.gradients.propagate; see the jgrad.gradients docs)."
        )


def _dense_grad(fn, graph: Graph, args, weight: jax.Array, force: bool) -> AdjacencyGrad:
    n = graph.n_nodes
    if n > DENSE_NODE_LIMIT and not force:
        raise ValueError(
            f"adjacency_grad: mode='dense' builds a complete graph of N^2 edges; got n_nodes={n}, "
            f"expected at most {DENSE_NODE_LIMIT} ({n * n} edges would be built). Pass force=True to "
            "run it anyway, or use mode='factored' with a linear model."
        )
    dtype = weight.dtype
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

    arrays, rebuild = _split_arrays(args)

    def dense_gradient(complete, w, arrays):
        def loss(w):
            value = fn(complete.with_edge_weight(w), *rebuild(arrays))
            check_scalar("adjacency_grad", value)
            return value

        return jax.grad(loss)(w).reshape(n, n)

    grad = jax.jit(dense_gradient)(complete, dense.reshape(-1), arrays)
    return _directed_grad(graph, grad, jnp.eye(n, dtype=grad.dtype))
