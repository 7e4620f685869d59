"""The `Graph` pytree: edge-index arrays, optional weights and masks, and the node count as static data.

Convention, used everywhere in jgrad: a message flows ``sender -> receiver`` and is aggregated at the
receiver. As a matrix, ``A[v, u]`` is the weight of the edge ``u -> v``, so aggregation is ``y = A @ x``
and ``graph.reverse()`` is the transpose.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks, _taps

ArrayLike = jax.typing.ArrayLike


@dataclasses.dataclass(frozen=True)
class Graph:
    """A directed graph (or a disjoint union of graphs) as edge-index arrays; a JAX pytree.

    Attributes:
      senders: source node of each edge, shape (E,), int32.
      receivers: destination node of each edge, shape (E,), int32.
      n_nodes: number of nodes N, a static Python int (it fixes output shapes; changing it recompiles).
      edge_weight: weight of each edge, shape (E,) or (E, ...), float; ``None`` for an unweighted graph
        (every edge weighs 1). Differentiable: ``jax.grad(f, allow_int=True)`` w.r.t. a Graph yields a
        Graph whose ``edge_weight`` holds dL/dw (the integer index leaves need ``allow_int``; or
        differentiate w.r.t. the weights, ``jax.grad(lambda w: f(graph.with_edge_weight(w)))``).
      node_mask: (N,) bool, False for padding nodes; ``None`` when nothing is padded.
      edge_mask: (E,) bool, False for padding edges; ``None`` when nothing is padded. Padding edges
        contribute nothing to any jgrad op.
      graph_mask: (G,) bool, False for the padding graph of a padded batch; ``None`` otherwise.
      n_node_per_graph: (G,) int32 node count of each graph of a batch; ``None`` for a single graph.
      n_edge_per_graph: (G,) int32 edge count of each graph of a batch; ``None`` for a single graph.

    The plain constructor does no conversion or checking (JAX rebuilds pytrees with placeholder leaves);
    build graphs with `Graph.from_edges`, `Graph.from_dense` or `jgrad.batch`, which validate.

    Example:
      >>> import jgrad
      >>> g = jgrad.Graph.from_edges([0, 1, 2], [1, 2, 0], n_nodes=3)
      >>> g
      Graph(n_nodes=3, n_edges=3, weighted=False)
      >>> g.to_dense().tolist()  # A[v, u] = weight of u -> v
      [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """

    senders: jax.Array
    receivers: jax.Array
    n_nodes: int
    edge_weight: jax.Array | None = None
    node_mask: jax.Array | None = None
    edge_mask: jax.Array | None = None
    graph_mask: jax.Array | None = None
    n_node_per_graph: jax.Array | None = None
    n_edge_per_graph: jax.Array | None = None

    # ----------------------------------------------------------------------------------------------
    # Construction
    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_edges(
        cls,
        senders: ArrayLike,
        receivers: ArrayLike,
        n_nodes: int,
        edge_weight: ArrayLike | None = None,
    ) -> Graph:
        """Builds a validated graph from edge lists.

        Args:
          senders: (E,) integer source nodes.
          receivers: (E,) integer destination nodes.
          n_nodes: N, a non-negative Python int.
          edge_weight: optional (E,) or (E, ...) float weights; ``None`` means unweighted.

        Returns:
          A `Graph` with int32 indices.

        Raises:
          TypeError: non-integer indices, non-float weights, non-int ``n_nodes``.
          ValueError: wrong ranks, mismatched lengths, and (when values are concrete, i.e. outside
            ``jit``) indices outside ``[0, n_nodes)`` and non-finite weights. Every problem is reported.
        """
        where = "Graph.from_edges"
        n_nodes = _checks.check_n_nodes(where, n_nodes)
        senders, receivers = _checks.check_edge_index(where, senders, receivers, n_nodes)
        if edge_weight is not None:
            edge_weight = _checks.check_edge_weight(where, edge_weight, senders.shape[0])
        return cls(senders=senders, receivers=receivers, n_nodes=n_nodes, edge_weight=edge_weight)

    @classmethod
    def from_dense(cls, adjacency: ArrayLike) -> Graph:
        """Builds a weighted graph from a dense (N, N) matrix, one edge per non-zero entry.

        ``adjacency[v, u]`` is the weight of the edge ``u -> v``. Edges come out sorted by receiver, then
        sender. Eager only (the edge count depends on values).

        Example:
          >>> import numpy as np, jgrad
          >>> g = jgrad.Graph.from_dense(np.array([[0., 2.], [0., 0.]]))
          >>> g.senders.tolist(), g.receivers.tolist(), g.edge_weight.tolist()
          ([1], [0], [2.0])
        """
        where = "Graph.from_dense"
        matrix = _checks.check_dense_square(where, adjacency)
        receivers, senders = np.nonzero(matrix)
        weight = matrix[receivers, senders]
        return cls.from_edges(senders, receivers, matrix.shape[0], edge_weight=weight)

    # ----------------------------------------------------------------------------------------------
    # Views
    # ----------------------------------------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        """E, the number of edges (padding edges included)."""
        return int(self.senders.shape[0])

    @property
    def n_graphs(self) -> int:
        """G, the number of graphs in a batch (1 for a single graph)."""
        return 1 if self.n_node_per_graph is None else int(self.n_node_per_graph.shape[0])

    @property
    def is_weighted(self) -> bool:
        return self.edge_weight is not None

    def weights(self, dtype: Any = jnp.float32) -> jax.Array:
        """Edge weights with padding edges set to 0: ``edge_weight``, or ones for an unweighted graph.

        Returns:
          (E,) or (E, ...) float array.
        """
        weight = jnp.ones((self.n_edges,), dtype) if self.edge_weight is None else self.edge_weight
        if self.edge_mask is not None:
            mask = self.edge_mask.reshape(self.edge_mask.shape + (1,) * (weight.ndim - 1))
            weight = jnp.where(mask, weight, jnp.zeros((), weight.dtype))
        return weight

    def with_edge_weight(self, edge_weight: ArrayLike | None) -> Graph:
        """The same graph with new edge weights ((E,) or (E, ...)); shape is checked, values are not."""
        if edge_weight is not None:
            edge_weight = jnp.asarray(edge_weight)
            if edge_weight.ndim == 0 or edge_weight.shape[0] != self.n_edges:
                raise ValueError(
                    f"Graph.with_edge_weight: edge_weight has the wrong leading dimension; got shape "
                    f"{tuple(edge_weight.shape)}, expected ({self.n_edges}, ...) for {self.n_edges} edges."
                )
        return dataclasses.replace(self, edge_weight=edge_weight)

    def node_graph_index(self) -> jax.Array:
        """(N,) int32 index of the graph each node belongs to (all zeros for a single graph)."""
        if self.n_node_per_graph is None:
            return jnp.zeros((self.n_nodes,), jnp.int32)
        return jnp.repeat(
            jnp.arange(self.n_graphs, dtype=jnp.int32),
            self.n_node_per_graph,
            total_repeat_length=self.n_nodes,
        )

    def in_degree(self, weighted: bool = True) -> jax.Array:
        """(N,) sum of incoming edge weights, ``deg[receivers[e]] += w[e]`` (counts if not weighted).

        Differentiable w.r.t. ``edge_weight``; padding edges count 0. jit- and vmap-safe.
        """
        return _degree(self, self.receivers, weighted)

    def out_degree(self, weighted: bool = True) -> jax.Array:
        """(N,) sum of outgoing edge weights, ``deg[senders[e]] += w[e]`` (counts if not weighted)."""
        return _degree(self, self.senders, weighted)

    def to_dense(self) -> jax.Array:
        """The dense adjacency, ``A[receivers[e], senders[e]] += w[e]``; shape (N, N) or (N, N, ...).

        Duplicate edges add up; padding edges count 0. jit-, vmap- and grad-safe.
        """
        weight = self.weights()
        dense = jnp.zeros((self.n_nodes, self.n_nodes) + weight.shape[1:], weight.dtype)
        return dense.at[self.receivers, self.senders].add(weight)

    # ----------------------------------------------------------------------------------------------
    # Structural transforms (see _structure.py)
    # ----------------------------------------------------------------------------------------------
    def reverse(self) -> Graph:
        """Swaps senders and receivers: the transpose of the adjacency. jit-safe."""
        return dataclasses.replace(self, senders=self.receivers, receivers=self.senders)

    def add_self_loops(self, fill: float = 1.0) -> Graph:
        """Appends one edge ``v -> v`` per node with weight ``fill`` (padding nodes get masked loops)."""
        from ._structure import add_self_loops

        return add_self_loops(self, fill)

    def remove_self_loops(self) -> Graph:
        """Drops every edge ``v -> v``. Eager only."""
        from ._structure import remove_self_loops

        return remove_self_loops(self)

    def coalesce(self) -> Graph:
        """Merges duplicate edges, summing weights; sorts by (receiver, sender). Eager only."""
        from ._structure import coalesce

        return coalesce(self)

    def to_undirected(self) -> Graph:
        """Adds each missing reverse edge (same weight) and merges duplicate edges. Eager only."""
        from ._structure import to_undirected

        return to_undirected(self)

    def sort_by_receiver(self) -> tuple[Graph, jax.Array]:
        """Sorts edges into CSR order by (receiver, sender). Returns ``(sorted_graph, perm)``."""
        from ._structure import sort_by_receiver

        return sort_by_receiver(self)

    def __repr__(self) -> str:
        parts = [f"n_nodes={self.n_nodes}", f"n_edges={self.n_edges}", f"weighted={self.is_weighted}"]
        if self.n_node_per_graph is not None:
            parts.append(f"n_graphs={self.n_graphs}")
        if self.edge_mask is not None or self.node_mask is not None:
            parts.append("padded=True")
        return f"Graph({', '.join(parts)})"


jax.tree_util.register_dataclass(
    Graph,
    data_fields=[
        "senders",
        "receivers",
        "edge_weight",
        "node_mask",
        "edge_mask",
        "graph_mask",
        "n_node_per_graph",
        "n_edge_per_graph",
    ],
    meta_fields=["n_nodes"],
)


def _degree(graph: Graph, index: jax.Array, weighted: bool) -> jax.Array:
    weight = graph.weights() if weighted else graph.with_edge_weight(None).weights()
    degree = jax.ops.segment_sum(weight, index, num_segments=graph.n_nodes)
    recorder = _taps.active_recorder()
    if weighted and recorder is not None:  # adjacency_grad is tracing: probe the weighted degree
        degree = recorder.tap_degree(graph.edge_weight, index, degree)
    return degree
