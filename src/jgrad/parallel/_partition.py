"""Edge partitioning: cut a graph's edges into D equal-length shards, one per device.

Every shard holds ``E_shard = ceil(E / D)`` edge slots; the last shards are topped up with masked
padding edges, so all devices run the same program on arrays of the same shape.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .._src import _checks
from .._src._checks import check_graph
from ..graph import Graph
from ._mesh import EDGE_AXIS

ArrayLike = jax.typing.ArrayLike


@dataclasses.dataclass(frozen=True)
class ShardedGraph:
    """A graph whose edges are split into D shards of equal length; a JAX pytree.

    Slot ``s`` of shard ``d`` is the edge ``senders[d, s] -> receivers[d, s]``; it is original edge
    ``edge_id[d, s]`` of the unsharded graph if ``edge_mask[d, s]`` is True, and padding otherwise.

    Attributes:
      senders: (D, E_shard) int32 source nodes.
      receivers: (D, E_shard) int32 destination nodes.
      edge_mask: (D, E_shard) bool, False for padding slots (their indices are 0 and they send nothing).
      edge_id: (D, E_shard) int32 position of each slot's edge in the original edge list (0 for padding).
      slot: (E,) int32 flat position ``d * E_shard + s`` of each original edge; the inverse of ``edge_id``.
      edge_weight: (D, E_shard) or (D, E_shard, ...) float, padding slots 0; ``None`` if unweighted.
      n_nodes: N, static.
      n_edges: E, the number of real edges of the original graph, static.

    Build it with `partition_edges`; move it onto a mesh with `ShardedGraph.put` (edges split over the
    mesh's ``"edges"`` axis). Edge data of the original graph, shape (E, ...), is laid out like the
    shards with `ShardedGraph.shard_edge_data` and brought back with `ShardedGraph.unshard_edge_data`;
    both are gathers, so gradients flow through them.
    """

    senders: jax.Array
    receivers: jax.Array
    edge_mask: jax.Array
    edge_id: jax.Array
    slot: jax.Array
    n_nodes: int
    n_edges: int
    edge_weight: jax.Array | None = None

    @property
    def n_shards(self) -> int:
        """D, the number of edge shards."""
        return int(self.senders.shape[0])

    @property
    def shard_size(self) -> int:
        """E_shard = ceil(E / D), the number of edge slots per shard (padding included)."""
        return int(self.senders.shape[1])

    def edges_per_shard(self) -> np.ndarray:
        """(D,) number of real (unmasked) edges in each shard. Eager only."""
        return np.asarray(self.edge_mask).sum(axis=1)

    def shard_edge_data(self, data: ArrayLike) -> jax.Array:
        """Lays out per-edge data of the original graph like the shards: (E, ...) -> (D, E_shard, ...).

        Padding slots get 0. Differentiable (a gather; its transpose scatters back to the (E, ...) input).
        """
        data = jnp.asarray(data)
        if data.ndim == 0 or data.shape[0] != self.n_edges:
            raise ValueError(
                f"ShardedGraph.shard_edge_data: data must have one row per edge; got shape "
                f"{tuple(data.shape)}, expected ({self.n_edges}, ...). partition_edges drops the padding "
                "edges of a padded graph: pass the real edges' rows, data[graph.edge_mask]."
            )
        gathered = jnp.take(data, self.edge_id, axis=0) if self.n_edges else jnp.zeros(
            self.edge_id.shape + data.shape[1:], data.dtype)
        mask = self.edge_mask.reshape(self.edge_mask.shape + (1,) * (data.ndim - 1))
        return jnp.where(mask, gathered, jnp.zeros((), gathered.dtype))

    def unshard_edge_data(self, data: ArrayLike) -> jax.Array:
        """The inverse of `shard_edge_data`: (D, E_shard, ...) -> (E, ...) in the original edge order."""
        data = jnp.asarray(data)
        if data.shape[:2] != self.senders.shape:
            raise ValueError(
                f"ShardedGraph.unshard_edge_data: data must have the shard layout; got shape "
                f"{tuple(data.shape)}, expected {tuple(self.senders.shape)} + (...)."
            )
        flat = data.reshape((-1,) + data.shape[2:])
        return jnp.take(flat, self.slot, axis=0)

    def put(self, mesh: Mesh) -> ShardedGraph:
        """Places shard d on the devices of row d of the mesh's ``"edges"`` axis (``slot`` is replicated).

        Raises:
          ValueError: if the mesh's ``"edges"`` axis is not D long.
        """
        check_mesh("ShardedGraph.put", mesh, self)
        edges = NamedSharding(mesh, P(EDGE_AXIS))
        replicated = NamedSharding(mesh, P())
        put = lambda leaf: None if leaf is None else jax.device_put(leaf, edges)
        return dataclasses.replace(
            self,
            senders=put(self.senders),
            receivers=put(self.receivers),
            edge_mask=put(self.edge_mask),
            edge_id=put(self.edge_id),
            edge_weight=put(self.edge_weight),
            slot=jax.device_put(self.slot, replicated),
        )

    def __repr__(self) -> str:
        return (f"ShardedGraph(n_nodes={self.n_nodes}, n_edges={self.n_edges}, n_shards={self.n_shards}, "
                f"shard_size={self.shard_size}, weighted={self.edge_weight is not None})")


jax.tree_util.register_dataclass(
    ShardedGraph,
    data_fields=["senders", "receivers", "edge_mask", "edge_id", "slot", "edge_weight"],
    meta_fields=["n_nodes", "n_edges"],
)


def check_mesh(where: str, mesh: Mesh, graph: ShardedGraph) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{where}: mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}. "
                        "Build one with jgrad.parallel.make_mesh.")
    if not isinstance(graph, ShardedGraph):
        raise TypeError(f"{where}: graph must be a ShardedGraph; got {type(graph).__name__}. Partition it "
                        f"first: partition_edges(graph, n_shards=mesh.shape[{EDGE_AXIS!r}]).")
    if EDGE_AXIS not in mesh.shape:
        raise ValueError(f"{where}: the mesh has no {EDGE_AXIS!r} axis; got axes {tuple(mesh.axis_names)}.")
    if mesh.shape[EDGE_AXIS] != graph.n_shards:
        raise ValueError(
            f"{where}: the graph has {graph.n_shards} edge shards but the mesh's {EDGE_AXIS!r} axis has "
            f"{mesh.shape[EDGE_AXIS]} devices; expected them equal. Partition with "
            f"partition_edges(graph, n_shards=mesh.shape[{EDGE_AXIS!r}])."
        )


def partition_edges(graph: Graph, n_shards: int, *, sort_by_receiver: bool = True) -> ShardedGraph:
    """Splits the edges of ``graph`` into ``n_shards`` shards with at most one edge difference in size.

    Edges are (optionally) sorted by (receiver, sender), then cut into D contiguous runs of
    ``E // D`` or ``E // D + 1`` real edges, and every run is padded with masked slots to
    ``E_shard = ceil(E / D)``. Sorting keeps each receiver's edges together, so most receivers' partial
    results live on one or two devices. Padding edges of ``graph`` (``edge_mask`` False) are dropped
    first; edge weights travel with their edges. Eager only (the shard sizes depend on values).

    Args:
      graph: the graph to partition (its ``edge_weight``, if any, is partitioned with it).
      n_shards: D >= 1, usually ``mesh.shape["edges"]``.
      sort_by_receiver: sort edges by receiver before cutting (default); otherwise keep their order.

    Returns:
      A `ShardedGraph` with arrays of shape (D, E_shard) (a zero-edge graph gets E_shard = 1, all padding).

    Raises:
      ValueError: if ``n_shards`` is not a positive int, or an index of a real edge is outside [0, N).
      TypeError: if ``graph`` is not a `jgrad.Graph`.

    Example:
      >>> import jgrad
      >>> from jgrad.parallel import partition_edges
      >>> g = jgrad.Graph.from_edges([0, 1, 2, 0, 1], [1, 2, 0, 2, 0], n_nodes=3)
      >>> sg = partition_edges(g, 2)
      >>> sg.senders.shape, sg.edges_per_shard().tolist()
      ((2, 3), [2, 3])
    """
    where = "partition_edges"
    check_graph(where, graph)
    if not isinstance(n_shards, int) or isinstance(n_shards, bool) or n_shards < 1:
        raise ValueError(f"{where}: n_shards must be a positive int; got {n_shards!r}.")
    _checks.require_concrete(where, graph.senders, graph.receivers)
    _checks.check_graph_indices(where, graph)  # gathers would clamp an out-of-range index silently
    senders = np.asarray(graph.senders, np.int64)
    receivers = np.asarray(graph.receivers, np.int64)
    live = np.ones(senders.shape, bool) if graph.edge_mask is None else np.asarray(graph.edge_mask, bool)
    original = np.flatnonzero(live)
    if sort_by_receiver and original.size:
        order = np.lexsort((senders[original], receivers[original]))
        original = original[order]
    n_real = int(original.size)
    shard_size = max(math.ceil(n_real / n_shards), 1)
    # Shard d gets real edges [starts[d], starts[d + 1]): sizes E // D or E // D + 1.
    starts = np.array([(d * n_real) // n_shards for d in range(n_shards + 1)])
    counts = np.diff(starts)
    position = np.arange(shard_size)
    mask = position[None, :] < counts[:, None]
    source = np.where(mask, starts[:-1, None] + position[None, :], 0)
    source = np.minimum(source, max(n_real - 1, 0))
    edge_pos = original[source] if n_real else np.zeros_like(source)  # index into the input graph
    edge_pos = np.where(mask, edge_pos, 0)
    # The (E,) edge order of the *sharded* graph's edge data is the order of live edges of `graph`.
    rank = np.empty(senders.shape[0], np.int64)
    rank[np.flatnonzero(live)] = np.arange(n_real)
    edge_id = np.where(mask, rank[edge_pos] if n_real else 0, 0)
    slot = np.empty(n_real, np.int64)
    slot[edge_id[mask]] = np.flatnonzero(mask.reshape(-1))
    edge_weight = None
    if graph.edge_weight is not None:
        weight = np.asarray(graph.edge_weight)
        gathered = weight[edge_pos] if weight.shape[0] else np.zeros(edge_pos.shape + weight.shape[1:], weight.dtype)
        wmask = mask.reshape(mask.shape + (1,) * (weight.ndim - 1))
        edge_weight = jnp.asarray(np.where(wmask, gathered, 0).astype(weight.dtype))
    return ShardedGraph(
        senders=jnp.asarray(np.where(mask, senders[edge_pos] if n_real else 0, 0), jnp.int32),
        receivers=jnp.asarray(np.where(mask, receivers[edge_pos] if n_real else 0, 0), jnp.int32),
        edge_mask=jnp.asarray(mask),
        edge_id=jnp.asarray(edge_id, jnp.int32),
        slot=jnp.asarray(slot, jnp.int32),
        n_nodes=graph.n_nodes,
        n_edges=n_real,
        edge_weight=edge_weight,
    )
