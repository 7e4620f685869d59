"""The `Graph` pytree: edge-index arrays, optional weights and masks, and the node count as static data.

Convention, used everywhere in jgrad: a message flows ``sender -> receiver`` and is aggregated at the
receiver. As a matrix, ``A[v, u]`` is the weight of the edge ``u -> v``, so aggregation is ``y = A @ x``
and ``graph.reverse()`` is the transpose.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._src import _checks, _plan, _pyg_names, _taps
from .._src._degree import unfolded
from .._src._types import accumulation_dtype, default_float_dtype
from . import _limits, _structure

ArrayLike = jax.typing.ArrayLike


@dataclasses.dataclass(frozen=True)
class Graph(_checks.GraphBase):
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
      plan: the execution plan the fast backends read (CSR order of both directions, bucket tables),
        planned on the host the first time the graph is used eagerly or passed into a transform
        (``jit``, ``vmap``, ``tree.map``) with concrete indices; ``None`` runs the plain XLA path (small
        graphs, graphs built from traced indices inside ``jit``). Rebuilding a graph with other
        indices re-plans it; see `jgrad.ops.use_backend` and `jgrad.ops.with_backend` to choose.
        Plans of large graphs differ in structure from graph to graph, so stack graphs for ``vmap``
        with `jgrad.parallel.stack_graphs`, not ``jax.tree.map(jnp.stack, ...)``.
      tapped: static; True only on the graph `jgrad.adjacency_grad` passes to the model, on which jgrad's
        ops mark their uses of the adjacency (see ``jgrad._src._taps``). Transforms keep it.

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
    plan: Any = dataclasses.field(default=_plan.AUTO, repr=False, compare=False)
    tapped: bool = dataclasses.field(default=False, repr=False)

    def __post_init__(self):
        # A plan describes the index arrays it was made for; a graph rebuilt with other ones re-plans.
        if isinstance(self.plan, _plan.Plan) and not _plan.is_bound(self.plan, self):
            object.__setattr__(self, "plan", _plan.AUTO)

    # ----------------------------------------------------------------------------------------------
    # Construction
    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_edges(
        cls,
        senders: ArrayLike,
        receivers: ArrayLike | None = None,
        n_nodes: int | None = None,
        edge_weight: ArrayLike | None = None,
    ) -> Graph:
        """Builds a validated graph from edge lists.

        Args:
          senders: (E,) integer source nodes (numpy, JAX or torch).
          receivers: (E,) integer destination nodes. Required: for a PyG-style (2, E) ``edge_index`` use
            `Graph.from_edge_index` or ``Graph.from_edges(*edge_index, n_nodes)``.
          n_nodes: N, a non-negative Python int, at most ``2**31 - 1`` (int32 indexing). Required.
          edge_weight: optional (E,) or (E, ...) floating-point weights; ``None`` means unweighted.
            Integer and boolean weights are refused (no silent cast): convert them explicitly.

        Returns:
          A `Graph` with int32 indices.

        Raises:
          TypeError: non-integer indices, non-float weights, ``n_nodes`` that is not an int (a float
            such as ``4e9`` included), a missing ``receivers`` or ``n_nodes``.
          ValueError: wrong ranks, mismatched lengths, ``n_nodes`` or E above ``2**31 - 1``, and (when
            values are concrete, i.e. outside ``jit``) indices outside ``[0, n_nodes)`` and non-finite
            weights. Every problem is reported.
        """
        where = "Graph.from_edges"
        senders, receivers, edge_weight = _from_torch(senders), _from_torch(receivers), _from_torch(edge_weight)
        if receivers is None:
            shape = tuple(np.shape(senders))
            if len(shape) == 2 and shape[0] == 2:
                raise TypeError(
                    f"{where}: senders has shape {shape}, a (2, E) edge_index; got receivers=None, expected "
                    "two (E,) arrays. Use Graph.from_edge_index(edge_index, n_nodes) or "
                    "Graph.from_edges(*edge_index, n_nodes)."
                )
            raise TypeError(f"{where}: receivers is required; got None, expected an (E,) integer array.")
        if n_nodes is None:
            raise TypeError(
                f"{where}: n_nodes must be an int; got None, expected the node count N "
                "(Graph.from_edge_index infers it as the largest index + 1)."
            )
        n_nodes = _limits.check_size(where, n_nodes)
        senders, receivers = _checks.check_edge_index(where, senders, receivers, n_nodes)
        _limits.check_total(where, "n_edges", int(senders.shape[0]))
        if edge_weight is not None:
            check_float_weight(where, edge_weight)
            edge_weight = _checks.check_edge_weight(where, edge_weight, senders.shape[0])
        return cls(senders=senders, receivers=receivers, n_nodes=n_nodes, edge_weight=edge_weight)

    @classmethod
    def from_edge_index(
        cls,
        edge_index: ArrayLike,
        n_nodes: int | None = None,
        edge_weight: ArrayLike | None = None,
        **unexpected: Any,
    ) -> Graph:
        """Builds a validated graph from a (2, E) ``edge_index``, the PyTorch Geometric convention.

        Row 0 holds the senders (sources) and row 1 the receivers, so ``edge_index[:, e]`` is the edge
        ``edge_index[0, e] -> edge_index[1, e]``, exactly as in PyG's ``MessagePassing``.

        Args:
          edge_index: (2, E) integer array: numpy, JAX or torch (a torch tensor is copied to the host;
            torch is never imported by jgrad for this).
          n_nodes: N; ``None`` infers the largest index + 1 (0 for a graph without edges), which needs
            concrete values (outside ``jit``) and drops trailing isolated nodes: pass N when you know it.
          edge_weight: optional (E,) or (E, ...) floating-point weights (numpy, JAX or torch).

        Returns:
          A `Graph`, validated as by `Graph.from_edges`.

        Raises:
          TypeError / ValueError: as `Graph.from_edges`, and a ``edge_index`` that is not (2, E). A
            keyword this method does not take raises a TypeError that gives jgrad's name for PyG's
            (``num_nodes`` is ``n_nodes``, ``edge_attr`` is ``edge_weight``).

        Example:
          >>> import numpy as np, jgrad
          >>> g = jgrad.Graph.from_edge_index(np.array([[0, 1, 1], [1, 0, 2]]))
          >>> g.n_nodes, g.senders.tolist(), g.receivers.tolist()
          (3, [0, 1, 1], [1, 0, 2])
        """
        where = "Graph.from_edge_index"
        if unexpected:
            raise _pyg_names.unexpected_keywords(where, unexpected)
        edge_index = _from_torch(edge_index)
        if not hasattr(edge_index, "shape"):
            edge_index = np.asarray(edge_index)
            if edge_index.size == 0:
                edge_index = edge_index.reshape(2, 0).astype(np.int32)
        shape = tuple(edge_index.shape)
        if len(shape) != 2 or shape[0] != 2:
            hint = " Transpose it: edge_index.T." if len(shape) == 2 and shape[1] == 2 else ""
            raise ValueError(f"{where}: edge_index must have shape (2, E); got shape {shape}.{hint}")
        if n_nodes is None:
            if not _checks.is_concrete(edge_index):
                raise TypeError(
                    f"{where}: n_nodes=None needs concrete indices to infer N; got a traced edge_index. "
                    "Pass n_nodes explicitly inside jit."
                )
            host = np.asarray(edge_index)
            if not np.issubdtype(host.dtype, np.integer):
                raise TypeError(f"{where}: edge_index must have an integer dtype; got {host.dtype.name}. "
                                "Convert with edge_index.astype('int32') if the values are whole numbers.")
            n_nodes = int(host.max()) + 1 if host.size else 0
            n_nodes = max(n_nodes, 0)  # negative indices are reported by the range check below
        graph = cls.from_edges(edge_index[0], edge_index[1], n_nodes, edge_weight)
        return graph

    @classmethod
    def from_dense(cls, adjacency: ArrayLike) -> Graph:
        """Builds a weighted graph from a dense (N, N) matrix, one edge per non-zero entry.

        ``adjacency[v, u]`` is the weight of the edge ``u -> v``. Edges come out sorted by receiver, then
        sender. An integer or boolean matrix (a 0/1 adjacency) gives weights of the default float dtype
        (float32, or float64 under ``jax.enable_x64``); a float matrix keeps its dtype. Eager only (the
        edge count depends on values).

        Example:
          >>> import numpy as np, jgrad
          >>> g = jgrad.Graph.from_dense(np.array([[0., 2.], [0., 0.]]))
          >>> g.senders.tolist(), g.receivers.tolist(), g.edge_weight.tolist()
          ([1], [0], [2.0])
        """
        where = "Graph.from_dense"
        matrix = _checks.check_dense_square(where, _from_torch(adjacency))
        _limits.check_total(where, "n_nodes", matrix.shape[0])
        receivers, senders = np.nonzero(matrix)
        weight = matrix[receivers, senders]
        if np.issubdtype(weight.dtype, np.integer) or np.issubdtype(weight.dtype, np.bool_):
            weight = weight.astype(default_float_dtype())
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

    def weights(self, dtype: Any = None) -> jax.Array:
        """Edge weights with padding edges set to 0: ``edge_weight``, or ones for an unweighted graph.

        Args:
          dtype: dtype of the ones of an unweighted graph; ``None`` means the default float dtype
            (float32, or float64 under ``jax.enable_x64``). Stored weights keep their own dtype.

        Returns:
          (E,) or (E, ...) float array.
        """
        if self.edge_weight is None:
            weight = jnp.ones((self.n_edges,), default_float_dtype() if dtype is None else dtype)
        else:
            weight = self.edge_weight
        if self.edge_mask is not None:
            mask = self.edge_mask.reshape(self.edge_mask.shape + (1,) * (weight.ndim - 1))
            weight = jnp.where(mask, weight, jnp.zeros((), weight.dtype))
        return weight

    def with_edge_weight(self, edge_weight: ArrayLike | None) -> Graph:
        """The same graph with new edge weights ((E,) or (E, ...)); shape and dtype are checked, values are not.

        Raises:
          TypeError: integer or boolean weights (they are not cast silently).
          ValueError: a leading dimension other than E.
        """
        if edge_weight is not None:
            check_float_weight("Graph.with_edge_weight", edge_weight)
            edge_weight = jnp.asarray(edge_weight)
            if edge_weight.ndim == 0 or edge_weight.shape[0] != self.n_edges:
                raise ValueError(
                    f"Graph.with_edge_weight: edge_weight has the wrong leading dimension; got shape "
                    f"{tuple(edge_weight.shape)}, expected ({self.n_edges}, ...) for {self.n_edges} edges."
                )
        return dataclasses.replace(self, edge_weight=edge_weight)

    def node_graph_index(self) -> jax.Array:
        """(N,) int32 index of the graph each node belongs to (all zeros for a single graph).

        Raises:
          ValueError: when concrete, per-graph node counts that are negative or do not add up to N
            (skipped on tracers).
        """
        if self.n_node_per_graph is None:
            return jnp.zeros((self.n_nodes,), jnp.int32)
        if _checks.is_concrete(self.n_node_per_graph):
            counts = np.asarray(self.n_node_per_graph, np.int64)
            if (counts < 0).any() or counts.sum() != self.n_nodes:
                raise ValueError(
                    f"Graph.node_graph_index: n_node_per_graph must be non-negative and add up to n_nodes; "
                    f"got {_short(counts)} (sum {counts.sum()}), expected sum {self.n_nodes}."
                )
        return jnp.repeat(
            jnp.arange(self.n_graphs, dtype=jnp.int32),
            self.n_node_per_graph,
            total_repeat_length=self.n_nodes,
        )

    def in_degree(self, weighted: bool = True) -> jax.Array:
        """(N,) sum of incoming edge weights, ``deg[receivers[e]] += w[e]`` (counts if not weighted).

        Differentiable w.r.t. ``edge_weight``; padding edges count 0. jit- and vmap-safe. Counts have the
        default float dtype (float64 under ``jax.enable_x64``); weighted degrees the weights' dtype.

        Raises:
          ValueError: when the indices are concrete, an (unmasked) index outside ``[0, n_nodes)``, e.g. of
            a graph built with the plain constructor. The check is skipped on tracers (inside ``jit``),
            where `jgrad.checked` does it.
        """
        _checks.check_graph_indices("Graph.in_degree", self)
        return _degree(self, self.receivers, weighted)

    def out_degree(self, weighted: bool = True) -> jax.Array:
        """(N,) sum of outgoing edge weights, ``deg[senders[e]] += w[e]`` (counts if not weighted).

        As `in_degree`, with the same dtype rule and index check.
        """
        _checks.check_graph_indices("Graph.out_degree", self)
        return _degree(self, self.senders, weighted)

    def to_dense(self) -> jax.Array:
        """The dense adjacency, ``A[receivers[e], senders[e]] += w[e]``; shape (N, N) or (N, N, ...).

        Duplicate edges add up; padding edges count 0. jit-, vmap- and grad-safe. An unweighted graph gives
        the default float dtype (float64 under ``jax.enable_x64``).

        Raises:
          ValueError: when the indices are concrete, an (unmasked) index outside ``[0, n_nodes)`` (a
            scatter would drop it silently). Skipped on tracers (inside ``jit``); use `jgrad.checked` there.
        """
        _checks.check_graph_indices("Graph.to_dense", self)
        weight = self.weights()
        dense = jnp.zeros((self.n_nodes, self.n_nodes) + weight.shape[1:], weight.dtype)
        return dense.at[self.receivers, self.senders].add(weight)

    # ----------------------------------------------------------------------------------------------
    # Structural transforms (see _structure.py)
    # ----------------------------------------------------------------------------------------------
    def reverse(self) -> Graph:
        """Swaps senders and receivers: the transpose of the adjacency. jit-safe."""
        plan = self.plan.transpose() if isinstance(self.plan, _plan.Plan) else self.plan
        reversed_graph = dataclasses.replace(self, senders=self.receivers, receivers=self.senders, plan=None)
        object.__setattr__(reversed_graph, "plan", _plan.bind(plan, reversed_graph))
        return reversed_graph

    def add_self_loops(self, fill: float = 1.0) -> Graph:
        """Appends one edge ``v -> v`` per node with weight ``fill`` (padding nodes get masked loops)."""
        return _structure.add_self_loops(self, fill)

    def remove_self_loops(self) -> Graph:
        """Drops every edge ``v -> v``. Eager only."""
        return _structure.remove_self_loops(self)

    def coalesce(self) -> Graph:
        """Merges duplicate edges, summing weights; sorts by (receiver, sender). Eager only."""
        return _structure.coalesce(self)

    def to_undirected(self, *, reduce: str | None = None) -> Graph:
        """Adds each missing reverse edge (same weight) and merges duplicates: a symmetric ``A``. Eager only.

        A pair present in both directions with different weights raises unless ``reduce`` is ``"mean"``,
        ``"max"`` or ``"min"`` (see `jgrad.graph.to_undirected`).
        """
        return _structure.to_undirected(self, reduce=reduce)

    def sort_by_receiver(self) -> tuple[Graph, jax.Array]:
        """Sorts edges into CSR order by (receiver, sender). Returns ``(sorted_graph, perm)``."""
        return _structure.sort_by_receiver(self)

    def __getattr__(self, name: str) -> Any:
        # Reached only for attributes that do not exist: PyG's names get jgrad's in the message.
        raise _pyg_names.missing_attribute(self, name, _pyg_names.GRAPH)

    def __repr__(self) -> str:
        # A graph stacked along leading axes (the output of jax.vmap, or jax.tree.map(jnp.stack) over graphs)
        # has senders of shape (*batch, E): its repr gives the batch shape and the per-graph sizes, where
        # n_edges (senders.shape[0]) would read the batch size.
        batch = tuple(self.senders.shape[:-1])
        parts = [f"n_nodes={self.n_nodes}", f"n_edges={self.senders.shape[-1]}", f"weighted={self.is_weighted}"]
        if self.n_node_per_graph is not None:
            parts.append(f"n_graphs={self.n_node_per_graph.shape[-1]}")
        if self.edge_mask is not None or self.node_mask is not None:
            parts.append("padded=True")
        if batch:
            return f"Graph(stacked {batch} graphs, each: {', '.join(parts)})"
        return f"Graph({', '.join(parts)})"


_DATA_FIELDS = ("senders", "receivers", "edge_weight", "node_mask", "edge_mask", "graph_mask",
                "n_node_per_graph", "n_edge_per_graph", "plan")


def _flatten_with_keys(graph: Graph):
    _plan.resolve(graph)  # a concrete graph is planned when it first enters a transformation
    children = tuple((jax.tree_util.GetAttrKey(name), getattr(graph, name)) for name in _DATA_FIELDS)
    return children, (graph.n_nodes, graph.tapped)


def _flatten(graph: Graph):
    _plan.resolve(graph)
    return tuple(getattr(graph, name) for name in _DATA_FIELDS), (graph.n_nodes, graph.tapped)


def _unflatten(static: tuple[int, bool], children) -> Graph:
    # Rebuilt without __init__ (JAX passes placeholder leaves); the plan is bound to the new indices.
    graph = object.__new__(Graph)
    for name, value in zip(_DATA_FIELDS, children):
        object.__setattr__(graph, name, value)
    object.__setattr__(graph, "n_nodes", static[0])
    object.__setattr__(graph, "tapped", static[1])
    _plan.bind(graph.plan, graph)
    return graph


jax.tree_util.register_pytree_with_keys(Graph, _flatten_with_keys, _unflatten, _flatten)


def _degree(graph: Graph, index: jax.Array, weighted: bool) -> jax.Array:
    weight = graph.weights() if weighted else graph.with_edge_weight(None).weights()
    wide = accumulation_dtype(weight.dtype)  # bfloat16 weights: summed in float32
    degree = jax.ops.segment_sum(weight.astype(wide), unfolded(index), num_segments=graph.n_nodes)
    degree = degree.astype(weight.dtype)
    if weighted and graph.edge_weight is not None:
        degree = _taps.mark(graph, "degree", degree, graph.edge_weight, index)
    elif graph.edge_weight is not None:  # counts of a weighted (or tracked) graph: its structure, not A
        degree = _taps.refuse(graph, "edge_count", degree, graph.edge_weight)
    return degree


def check_float_weight(where: str, edge_weight: Any) -> None:
    """Raises a TypeError for integer or boolean edge weights (checked on the dtype, so jit-safe)."""
    dtype = getattr(edge_weight, "dtype", None)
    if dtype is None:
        dtype = np.asarray(edge_weight).dtype
    if np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_):
        raise TypeError(
            f"{where}: edge_weight must have a floating-point dtype; got {np.dtype(dtype).name}, expected "
            "float16/32/64. Integer and boolean weights are not cast silently: convert them with "
            "edge_weight.astype('float32')."
        )


def _from_torch(value: Any) -> Any:
    """A torch tensor as a numpy array (detached, on the host); anything else unchanged.

    torch is never imported here: a value can only be a torch tensor if torch is already loaded.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def _short(values: np.ndarray) -> str:
    listed = values.tolist()
    return str(listed) if len(listed) <= 8 else str(listed[:8])[:-1] + ", ...]"
