"""A degree-bucketed, padded-neighbour (ELL-like) layout of a graph, planned once on the host.

Sum aggregation ``out[receivers[e]] += w[e] * u[senders[e]]`` is a scatter-add, and XLA's CPU scatter
is slow. With the edges regrouped by receiver into dense tables, the same sum becomes a gather
followed by a dense reduction over a neighbour axis, which XLA runs much faster:

* Receivers are grouped by in-degree into buckets of width ``k = 2**j`` (the in-degree rounded up to
  a power of two). A bucket is a table of shape (rows, k): row i lists the senders of one receiver,
  padded with a dummy sender. Hubs wider than ``max_width`` are cut into several rows of width
  ``max_width`` that are summed afterwards, so no table is wider than ``max_width``.
* Each table is cut into chunks of about ``chunk_edges`` slots; a chunk's gathered messages stay in
  cache and the (E, F) message tensor is never built.
* The bucket outputs are concatenated and put back into node order by a gather (``output_position``);
  nodes without incoming edges read an appended zero row.

Padded slots are at most ``E`` (each row is less than twice its degree) plus one partly filled chunk
per bucket. A `Layout` holds this layout for the graph and for its reverse, which the custom VJP of
`jgrad.ops.gspmm` uses for the node cotangent ``du = A^T @ dout``.

Each side also keeps the plain CSR order of its edges (`Csr`: row offsets, neighbours, edge ids). On
CPU the native kernels of `jgrad.ops._native` run on it; the bucket tables serve the XLA formulation
used on other platforms and where the native kernels are unavailable.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..graph import Graph
from ._native import Csr


@dataclasses.dataclass(frozen=True)
class Bucket:
    """One degree bucket: receivers whose in-degree rounds up to the same power of two.

    Attributes:
      neighbours: (C, R, K) int32 sender of each slot; padded slots hold N (a zero row is appended to u).
      edge_ids: (C, R, K) int32 edge id of each slot; padded slots hold E (a zero is appended to e).
      row_nodes: (C, R) int32 receiver of each row; padding rows hold N.
      n_receivers: static number of receivers in the bucket.
      split: static number of rows per receiver (> 1 for hubs wider than the maximum width).
    """

    neighbours: jax.Array
    edge_ids: jax.Array
    row_nodes: jax.Array
    n_receivers: int
    split: int


@dataclasses.dataclass(frozen=True)
class Side:
    """The bucketed layout of one direction of a graph.

    Attributes:
      buckets: tuple of `Bucket`, by increasing width.
      output_position: (N,) int32 row of each node in the concatenated bucket outputs; nodes without
        incoming edges point at the final zero row.
      slot_of_edge: (E,) int32 position of each edge among the flattened slots of all buckets; padding
        edges point one past the last slot.
      in_degree: (N,) int32 count of incoming (non-padding) edges.
      csr: the same edges in CSR order (`Csr`, rows = the receivers of this direction); padding edges
        are left out.
    """

    buckets: tuple
    output_position: jax.Array
    slot_of_edge: jax.Array
    in_degree: jax.Array
    csr: Csr


@dataclasses.dataclass(frozen=True)
class Layout:
    """The bucketed layout of a graph (`forward`) and of its reverse (`reverse`); a JAX pytree.

    Build it with `plan_layout`. The arrays are data leaves (they can be passed through ``jax.jit``);
    ``n_nodes``, ``n_edges`` and every bucket shape are static, so a new layout shape recompiles.
    """

    forward: Side
    reverse: Side
    n_nodes: int
    n_edges: int

    def transpose(self) -> Layout:
        """The layout of the reversed graph: forward and reverse swapped."""
        return dataclasses.replace(self, forward=self.reverse, reverse=self.forward)

    @property
    def padded_slots(self) -> int:
        """Number of slots (real and padding) in the forward tables."""
        return sum(int(np.prod(b.neighbours.shape)) for b in self.forward.buckets)

    def __repr__(self) -> str:
        widths = [int(b.neighbours.shape[-1]) * b.split for b in self.forward.buckets]
        return (f"Layout(n_nodes={self.n_nodes}, n_edges={self.n_edges}, buckets={len(widths)}, "
                f"max_in_degree_bucket={max(widths, default=0)}, padded_slots={self.padded_slots})")


jax.tree_util.register_dataclass(Bucket, data_fields=["neighbours", "edge_ids", "row_nodes"],
                                 meta_fields=["n_receivers", "split"])
jax.tree_util.register_dataclass(Side, data_fields=["buckets", "output_position", "slot_of_edge", "in_degree", "csr"],
                                 meta_fields=[])
jax.tree_util.register_dataclass(Layout, data_fields=["forward", "reverse"], meta_fields=["n_nodes", "n_edges"])


def plan_layout(graph: Graph, *, max_width: int = 64, chunk_edges: int = 2048) -> Layout:
    """Plans the bucketed layout of ``graph`` and of its reverse, for ``gspmm(..., layout=...)``.

    The layout depends on the structure only (senders, receivers, edge mask), not on edge weights, so
    one plan serves any weights, including vmapped or differentiated ones. Padding edges
    (``edge_mask`` False) are left out of the tables.

    Args:
      graph: a graph with concrete (not traced) indices. Eager only.
      max_width: widest neighbour table, a power of two; wider receivers are cut into several rows.
      chunk_edges: about how many slots one step of the reduction gathers at once.

    Returns:
      A `Layout`.

    Raises:
      TypeError: if the graph's arrays are traced (call it outside ``jit``).
      ValueError: if ``max_width`` is not a positive power of two or ``chunk_edges`` is not positive.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> g = jgrad.Graph.from_edges([0, 1, 2], [2, 2, 0], n_nodes=3)
      >>> layout = jgrad.ops.plan_layout(g)
      >>> x = jnp.array([[1.0], [2.0], [5.0]])
      >>> jgrad.ops.gspmm(g, "copy_u", "sum", x, layout=layout).tolist()
      [[5.0], [0.0], [3.0]]
    """
    where = "plan_layout"
    problems = []
    if not isinstance(max_width, int) or max_width < 1 or max_width & (max_width - 1):
        problems.append(f"max_width must be a positive power of two; got {max_width!r}.")
    if not isinstance(chunk_edges, int) or chunk_edges < 1:
        problems.append(f"chunk_edges must be a positive int; got {chunk_edges!r}.")
    if problems:
        raise ValueError(f"{where}: " + " ".join(problems))
    try:
        senders = np.asarray(graph.senders, dtype=np.int64)
        receivers = np.asarray(graph.receivers, dtype=np.int64)
        mask = None if graph.edge_mask is None else np.asarray(graph.edge_mask, dtype=bool)
    except jax.errors.TracerArrayConversionError as error:
        raise TypeError(f"{where}: the graph's indices are traced; plan the layout outside jit from a "
                        f"concrete graph and pass the Layout into the jitted function.") from error
    n, n_edges = graph.n_nodes, graph.n_edges
    forward = _plan_side(receivers, senders, mask, n, n_edges, max_width, chunk_edges)
    reverse = _plan_side(senders, receivers, mask, n, n_edges, max_width, chunk_edges)
    return Layout(forward=forward, reverse=reverse, n_nodes=n, n_edges=n_edges)


def _plan_side(rows, cols, mask, n, n_edges, max_width, chunk_edges) -> Side:
    """Tables that gather ``cols`` (the senders of this direction) for every node of ``rows``."""
    real = np.arange(n_edges) if mask is None else np.nonzero(mask)[0]
    order = real[np.argsort(rows[real], kind="stable")]  # edge ids grouped by row node
    degree = np.bincount(rows[real], minlength=n).astype(np.int64)
    row_ptr = np.concatenate([[0], np.cumsum(degree)])  # CSR offsets; row v's edges start at row_ptr[v]
    start = row_ptr[:-1]
    width = np.zeros(n, np.int64)
    has_edges = degree > 0
    width[has_edges] = 1 << np.ceil(np.log2(degree[has_edges])).astype(np.int64)

    buckets, placed = [], []
    slot_of_edge = np.empty(n_edges, np.int64)
    offset = 0
    for k in np.unique(width[has_edges]):
        nodes = np.nonzero(width == k)[0]
        lane = np.arange(k)
        filled = lane[None, :] < degree[nodes, None]
        position = np.where(filled, start[nodes, None] + lane[None, :], 0)
        edge_ids = np.where(filled, order[np.minimum(position, max(len(order) - 1, 0))], n_edges)
        row_width = min(int(k), max_width)
        split = int(k) // row_width
        edge_ids = edge_ids.reshape(-1, row_width)
        row_nodes = np.repeat(nodes, split)
        per_chunk = max(1, chunk_edges // row_width)
        n_chunks = -(-edge_ids.shape[0] // per_chunk)
        extra = n_chunks * per_chunk - edge_ids.shape[0]
        edge_ids = np.pad(edge_ids, ((0, extra), (0, 0)), constant_values=n_edges)
        row_nodes = np.pad(row_nodes, (0, extra), constant_values=n)
        neighbours = np.where(edge_ids < n_edges, cols[np.minimum(edge_ids, n_edges - 1)], n)
        flat = edge_ids.reshape(-1)
        is_real = flat < n_edges
        slot_of_edge[flat[is_real]] = offset + np.nonzero(is_real)[0]
        offset += flat.size
        shape = (n_chunks, per_chunk, row_width)
        buckets.append(Bucket(
            neighbours=jnp.asarray(neighbours.reshape(shape), jnp.int32),
            edge_ids=jnp.asarray(edge_ids.reshape(shape), jnp.int32),
            row_nodes=jnp.asarray(row_nodes.reshape(shape[:2]), jnp.int32),
            n_receivers=int(nodes.size),
            split=split,
        ))
        placed.append(nodes)
    if mask is not None:
        slot_of_edge[~mask] = offset
    placed = np.concatenate(placed) if placed else np.zeros(0, np.int64)
    output_position = np.full(n, placed.size, np.int64)
    output_position[placed] = np.arange(placed.size)
    return Side(
        buckets=tuple(buckets),
        output_position=jnp.asarray(output_position, jnp.int32),
        slot_of_edge=jnp.asarray(slot_of_edge, jnp.int32),
        in_degree=jnp.asarray(degree, jnp.int32),
        csr=Csr(row_ptr=jnp.asarray(row_ptr, jnp.int32),
                cols=jnp.asarray(cols[order], jnp.int32), edge_ids=jnp.asarray(order, jnp.int32)),
    )
