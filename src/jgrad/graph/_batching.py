"""Many graphs as one: disjoint-union batches, padding to fixed sizes, and size buckets.

A jit-compiled function recompiles for every new ``(n_nodes, n_edges)``, and for every new graph count
when it has per-graph arrays (readouts, labels). Padding each batch up to a bucket size (`bucket_size`,
`pad_to_bucket`), and to a fixed or bucketed graph count (``n_graphs``), bounds the number of distinct
shapes, and so the number of compilations, by the number of buckets. (A graph large enough to carry a native plan adds one more
static fact, whether its edges come sorted by receiver, by sender or neither: batches of one
generator or loader share it.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._src import _checks
from .._src._checks import check_graph
from . import _limits
from ._graph import Graph


def batch(graphs: Sequence[Graph]) -> Graph:
    """The disjoint union of ``graphs``: node ids of graph g are shifted by the nodes before it.

    The adjacency of the result is block diagonal, ``blockdiag(A_1, ..., A_G)``. Per-graph node and
    edge counts are stored (``n_node_per_graph``, ``n_edge_per_graph``), so `unbatch` and graph-level
    readouts (``graph.node_graph_index()``) work. Batching batches flattens them. Eager only.

    Args:
      graphs: a non-empty sequence of graphs; all weighted or all unweighted, with weights of equal
        trailing shape.

    Returns:
      One `Graph` with N = sum of n_nodes and E = sum of n_edges.

    Raises:
      TypeError: an element that is not a `Graph`, or traced indices.
      ValueError: mixed weighted and unweighted graphs, weights of different trailing shapes, a total
        N or E above ``2**31 - 1`` (int32 indexing; checked before anything is allocated), and indices
        outside a graph's ``[0, n_nodes)`` (they would land in another graph of the batch).

    Example:
      >>> import jgrad
      >>> g = jgrad.Graph.from_edges([0], [1], n_nodes=2)
      >>> b = jgrad.batch([g, g])
      >>> b.senders.tolist(), b.receivers.tolist(), b.n_node_per_graph.tolist()
      ([0, 2], [1, 3], [2, 2])
    """
    graphs = list(graphs)
    if not graphs:
        raise ValueError("batch: needs at least one graph; got an empty sequence.")
    for i, g in enumerate(graphs):
        if not isinstance(g, Graph):
            raise TypeError(f"batch: graphs[{i}] is a {type(g).__name__}, expected a jgrad.Graph.")
        _checks.require_concrete("batch", g.senders)
    total_nodes = sum(g.n_nodes for g in graphs)
    total_edges = sum(g.n_edges for g in graphs)
    _limits.check_total("batch", "n_nodes", total_nodes, f" (the sum over {len(graphs)} graphs)")
    _limits.check_total("batch", "n_edges", total_edges, f" (the sum over {len(graphs)} graphs)")
    for i, g in enumerate(graphs):
        _checks.check_graph_indices(f"batch: graphs[{i}]", g)
    _checks.check_same_weighting("batch", graphs)
    node_counts = np.concatenate([_node_counts(g) for g in graphs])
    edge_counts = np.concatenate([_edge_counts(g) for g in graphs])
    offsets = np.cumsum([0] + [g.n_nodes for g in graphs[:-1]], dtype=np.int64)
    senders = np.concatenate([np.asarray(g.senders) + o for g, o in zip(graphs, offsets)])
    receivers = np.concatenate([np.asarray(g.receivers) + o for g, o in zip(graphs, offsets)])
    edge_weight = None if graphs[0].edge_weight is None else jnp.concatenate([g.edge_weight for g in graphs])
    return Graph(
        senders=jnp.asarray(senders, jnp.int32),
        receivers=jnp.asarray(receivers, jnp.int32),
        n_nodes=int(total_nodes),
        edge_weight=edge_weight,
        node_mask=_concat_masks([g.node_mask for g in graphs], [g.n_nodes for g in graphs]),
        edge_mask=_concat_masks([g.edge_mask for g in graphs], [g.n_edges for g in graphs]),
        graph_mask=_concat_masks([g.graph_mask for g in graphs], [g.n_graphs for g in graphs]),
        n_node_per_graph=jnp.asarray(node_counts, jnp.int32),
        n_edge_per_graph=jnp.asarray(edge_counts, jnp.int32),
    )


def _node_counts(g: Graph, xp=np):
    return xp.asarray([g.n_nodes]) if g.n_node_per_graph is None else xp.asarray(g.n_node_per_graph)


def _edge_counts(g: Graph, xp=np):
    return xp.asarray([g.n_edges]) if g.n_edge_per_graph is None else xp.asarray(g.n_edge_per_graph)


def _concat_masks(masks: list, sizes: list[int]):
    if all(m is None for m in masks):
        return None
    return jnp.concatenate([jnp.ones((n,), bool) if m is None else m for m, n in zip(masks, sizes)])


def unbatch(graph: Graph) -> list[Graph]:
    """Splits a batch back into its graphs; the padding graph of a padded batch is dropped. Eager only.

    Edges are assigned to the graph that owns their receiver, so edges appended after batching (for
    example self loops) are split correctly. Padding edges are dropped.

    Raises:
      TypeError: a non-Graph argument or non-integer ``n_node_per_graph``.
      ValueError: indices outside ``[0, n_nodes)``, per-graph node counts that do not add up to N, an
        edge whose sender lies in another graph than its receiver (it cannot be split), or masks and
        weights whose shapes do not match the batch.
    """
    _check_batch_fields("unbatch", graph)
    if graph.n_node_per_graph is None:
        return [graph]
    _checks.require_concrete("unbatch", graph.senders, graph.n_node_per_graph)
    _checks.check_graph_indices("unbatch", graph)
    counts = np.asarray(graph.n_node_per_graph, np.int64)
    if (counts < 0).any() or counts.sum() != graph.n_nodes:
        raise ValueError(
            f"unbatch: n_node_per_graph must be non-negative and add up to n_nodes; got sum "
            f"{counts.sum()} over {counts.size} graphs, expected {graph.n_nodes}."
        )
    offsets = np.concatenate([[0], np.cumsum(counts)])
    senders = np.asarray(graph.senders)
    receivers = np.asarray(graph.receivers)
    live = np.ones(graph.n_edges, bool) if graph.edge_mask is None else np.asarray(graph.edge_mask)
    owner = np.searchsorted(offsets, receivers, side="right") - 1
    crossing = np.flatnonzero(live & (np.searchsorted(offsets, senders, side="right") - 1 != owner))
    if crossing.size:
        e = int(crossing[0])
        raise ValueError(
            f"unbatch: {crossing.size} edge(s) join two graphs of the batch (first: edge {e}, "
            f"{senders[e]} -> {receivers[e]}); expected each edge inside one graph's node range."
        )
    graph_live = np.ones(len(counts), bool) if graph.graph_mask is None else np.asarray(graph.graph_mask)
    out = []
    for g in range(len(counts)):
        if not graph_live[g]:
            continue
        select = np.flatnonzero((owner == g) & live)
        weight = None if graph.edge_weight is None else _take(graph.edge_weight, select)
        node_mask = None
        if graph.node_mask is not None:
            node_mask = np.asarray(graph.node_mask)[offsets[g]:offsets[g + 1]]
            node_mask = None if node_mask.all() else jnp.asarray(node_mask)
        out.append(Graph(
            senders=jnp.asarray(senders[select] - offsets[g], jnp.int32),
            receivers=jnp.asarray(receivers[select] - offsets[g], jnp.int32),
            n_nodes=int(counts[g]),
            edge_weight=weight,
            node_mask=node_mask,
        ))
    return out


def _take(values, index: np.ndarray):
    """``values[index]``, on the host when ``values`` is concrete (eager jnp indexing compiles per shape)."""
    if _checks.is_concrete(values):
        return jnp.asarray(np.asarray(values)[index])
    return jnp.asarray(values)[index]


def pad(graph: Graph, n_nodes: int, n_edges: int, *, n_graphs: int | None = None) -> Graph:
    """Pads ``graph`` to exactly ``n_nodes`` nodes and ``n_edges`` edges (and ``n_graphs`` graphs), with masks.

    Padding nodes are appended after the real ones; padding edges are self loops on the first padding
    node, so at least one padding node is needed when edges are padded. The padding nodes and edges form
    one extra graph in the batch (``graph_mask`` False), so graph-level readouts keep their real graphs
    intact. jgrad's ops send nothing along padding edges and padding nodes receive nothing, but layers
    may still give padding nodes non-zero rows (a bias, or a term of the node's own features, as in
    GCNConv, SAGEConv, GraphConv, GINConv and GATConv): readouts and losses should mask them
    (``node_mask``, ``graph_mask``); `jgrad.nn.readout` does.

    Without ``n_graphs`` the number of graphs G of the result depends on the input: the input's graphs,
    plus one padding graph when nodes are padded (none when the graph already has ``n_nodes`` nodes).
    Under ``jax.jit`` every G is a new shape for per-graph arrays (``n_node_per_graph``, ``graph_mask``,
    a readout's (G, F) output, labels), so batches with different graph counts compile again. With
    ``n_graphs`` G is fixed, as in ``jraph.pad_with_graphs``: the real graphs, then the padding graph
    with the padding nodes and edges, then empty padding graphs (0 nodes, 0 edges) up to ``n_graphs``.
    Readouts give 0 for the empty graphs, and `unbatch` drops them. Unlike jraph, a batch that already
    has ``n_nodes`` nodes is accepted: its padding graphs are all empty.

    Args:
      graph: the graph or batch to pad.
      n_nodes: target N (>= graph.n_nodes, and > graph.n_nodes if edges are padded), at most
        ``2**31 - 1``.
      n_edges: target E (>= graph.n_edges), at most ``2**31 - 1``.
      n_graphs: target G, keyword-only: more than ``graph.n_graphs`` (at least one padding graph), for
        example ``batch_size + 1`` for batches of at most ``batch_size`` graphs. ``None`` (the
        default): at most one padding graph, as described above.

    Raises:
      TypeError: sizes that are not Python ints (floats such as ``1e9`` included).
      ValueError: sizes smaller than the graph's (``n_graphs`` not above its graph count), above
        ``2**31 - 1`` (int32 indexing; checked before anything is allocated), or edge padding without a
        padding node.

    Returns:
      A padded `Graph` with ``node_mask``, ``edge_mask`` and ``graph_mask`` set.

    Example:
      >>> import jgrad
      >>> g = jgrad.pad(jgrad.Graph.from_edges([0], [1], n_nodes=2), n_nodes=4, n_edges=3)
      >>> g.node_mask.tolist(), g.edge_mask.tolist(), g.senders.tolist()
      ([True, True, False, False], [True, False, False], [0, 2, 2])
      >>> b = jgrad.pad(jgrad.Graph.from_edges([0], [1], n_nodes=2), n_nodes=4, n_edges=3, n_graphs=4)
      >>> b.n_node_per_graph.tolist(), b.n_edge_per_graph.tolist(), b.graph_mask.tolist()
      ([2, 2, 0, 0], [1, 2, 0, 0], [True, False, False, False])
    """
    check_graph("pad", graph)
    n_nodes = _limits.check_size("pad", n_nodes)
    n_edges = _limits.check_size("pad", n_edges, name="n_edges")
    if n_graphs is not None:
        n_graphs = _limits.check_size("pad", n_graphs, name="n_graphs")
    extra_nodes = n_nodes - graph.n_nodes
    extra_edges = n_edges - graph.n_edges
    problems = []
    if extra_nodes < 0:
        problems.append(f"n_nodes={n_nodes} is smaller than the graph's {graph.n_nodes} nodes.")
    if extra_edges < 0:
        problems.append(f"n_edges={n_edges} is smaller than the graph's {graph.n_edges} edges.")
    if extra_edges > 0 and extra_nodes == 0:
        problems.append(
            f"padding {extra_edges} edges needs at least one padding node; got n_nodes={n_nodes}, "
            f"expected > {graph.n_nodes}. Use jgrad.graph.pad_to_bucket, which reserves one."
        )
    if n_graphs is not None and n_graphs <= graph.n_graphs:
        problems.append(
            f"n_graphs={n_graphs} leaves no room for a padding graph after the graph's {graph.n_graphs} "
            f"graph(s); expected n_graphs > {graph.n_graphs}."
        )
    if problems:
        raise ValueError("pad: " + " ".join(problems))
    # Build on the host when the graph is concrete: eager jnp ops would compile for every new shape,
    # which costs more than the recompiles that padding to buckets saves.
    xp = np if _checks.is_concrete(*jax.tree.leaves(graph)) else jnp
    pad_node = graph.n_nodes
    pad_index = xp.full((extra_edges,), pad_node, np.int32)
    edge_weight = graph.edge_weight
    if edge_weight is not None:
        edge_weight = xp.asarray(edge_weight)
        edge_weight = xp.concatenate([edge_weight, xp.zeros((extra_edges,) + edge_weight.shape[1:],
                                                            edge_weight.dtype)])
        edge_weight = jnp.asarray(edge_weight)
    ones = lambda n: xp.ones((n,), bool)
    old_node_mask = ones(graph.n_nodes) if graph.node_mask is None else xp.asarray(graph.node_mask)
    old_edge_mask = ones(graph.n_edges) if graph.edge_mask is None else xp.asarray(graph.edge_mask)
    old_graph_mask = ones(graph.n_graphs) if graph.graph_mask is None else xp.asarray(graph.graph_mask)
    n_node_per_graph = _node_counts(graph, xp)
    n_edge_per_graph = _edge_counts(graph, xp)
    if n_graphs is None:
        n_padding_graphs = 1 if extra_nodes else 0
    else:
        n_padding_graphs = n_graphs - graph.n_graphs
    if n_padding_graphs:
        empty = xp.zeros((n_padding_graphs - 1,), np.int32)
        n_node_per_graph = xp.concatenate([xp.asarray(n_node_per_graph, np.int32),
                                           xp.asarray([extra_nodes], np.int32), empty])
        n_edge_per_graph = xp.concatenate([xp.asarray(n_edge_per_graph, np.int32),
                                           xp.asarray([extra_edges], np.int32), empty])
        old_graph_mask = xp.concatenate([old_graph_mask, xp.zeros((n_padding_graphs,), bool)])
    return Graph(
        senders=jnp.asarray(xp.concatenate([xp.asarray(graph.senders), pad_index]), jnp.int32),
        receivers=jnp.asarray(xp.concatenate([xp.asarray(graph.receivers), pad_index]), jnp.int32),
        n_nodes=n_nodes,
        edge_weight=edge_weight,
        node_mask=jnp.asarray(xp.concatenate([old_node_mask, xp.zeros((extra_nodes,), bool)])),
        edge_mask=jnp.asarray(xp.concatenate([old_edge_mask, xp.zeros((extra_edges,), bool)])),
        graph_mask=jnp.asarray(old_graph_mask),
        n_node_per_graph=jnp.asarray(n_node_per_graph, jnp.int32),
        n_edge_per_graph=jnp.asarray(n_edge_per_graph, jnp.int32),
    )


def bucket_size(size: int, *, growth: float = 2.0, minimum: int = 16) -> int:
    """The smallest bucket >= ``size`` in the geometric ladder ``minimum * growth**k``.

    With growth 2, sizes up to S fall in about log2(S / minimum) + 1 buckets, and padding wastes
    less than half of any bucket.

    Example:
      >>> from jgrad.graph import bucket_size
      >>> [bucket_size(n) for n in (1, 16, 17, 100)]
      [16, 16, 32, 128]
    """
    if growth <= 1.0:
        raise ValueError(f"bucket_size: growth must be > 1; got {growth}.")
    if size <= minimum:
        return minimum
    steps = math.ceil(math.log(size / minimum, growth) - 1e-9)
    # Buckets are rounded up to ints, so a lower step may already hold `size` (e.g. growth 1.25).
    while steps > 0 and math.ceil(minimum * growth ** (steps - 1)) >= size:
        steps -= 1
    return int(math.ceil(minimum * growth**steps))


def pad_to_bucket(
    graph: Graph, *, growth: float = 2.0, minimum: int = 16, n_graphs: int | str | None = None
) -> Graph:
    """Pads to the next bucket sizes (`bucket_size`), reserving one padding node for padding edges.

    N is rounded up from ``graph.n_nodes + 1`` and E from ``graph.n_edges``, both on the ladder of
    `bucket_size` with ``growth`` and ``minimum``. The graph count G is set by ``n_graphs``, as in `pad`:

    - ``None`` (the default): one padding graph is appended, so G = ``graph.n_graphs + 1`` and changes
      with the number of graphs in the batch (a last, smaller batch compiles again).
    - an int: exactly that many graphs, e.g. ``batch_size + 1`` for batches of at most ``batch_size``
      graphs, so all of them share one G.
    - ``"bucket"``: G rounded up from ``graph.n_graphs + 1`` on the same ladder as N and E.

    Example:
      >>> import jgrad
      >>> g = jgrad.batch([jgrad.Graph.from_edges([0], [1], n_nodes=2)] * 3)
      >>> [jgrad.graph.pad_to_bucket(g, n_graphs=k).n_graphs for k in (None, 9, "bucket")]
      [4, 9, 16]
    """
    check_graph("pad_to_bucket", graph)
    if isinstance(n_graphs, str):
        if n_graphs != "bucket":
            raise ValueError(f"pad_to_bucket: n_graphs must be None, an int or 'bucket'; got {n_graphs!r}.")
        n_graphs = bucket_size(graph.n_graphs + 1, growth=growth, minimum=minimum)
    return pad(
        graph,
        n_nodes=bucket_size(graph.n_nodes + 1, growth=growth, minimum=minimum),
        n_edges=bucket_size(graph.n_edges, growth=growth, minimum=minimum),
        n_graphs=n_graphs,
    )


def _check_batch_fields(where: str, graph: Any) -> None:
    """Checks a (possibly raw-constructed) batch before host-side splitting: its type and the shapes and
    dtypes of ``n_node_per_graph``, ``graph_mask``, ``node_mask``, ``edge_mask`` and ``edge_weight``.

    All problems are reported together in one ``ValueError``; a wrong type or dtype is a ``TypeError``.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"{where}: graph must be a jgrad.Graph; got {type(graph).__name__}, expected a batch "
                        "made by jgrad.batch.")
    counts = graph.n_node_per_graph
    if counts is None:
        return
    dtype = np.dtype(getattr(counts, "dtype", None) or np.asarray(counts).dtype)  # no host copy of tracers
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"{where}: n_node_per_graph must have an integer dtype; got {dtype.name}, expected int32 "
                        "node counts.")
    problems = []
    if np.ndim(counts) != 1:
        problems.append(f"n_node_per_graph must be 1-D; got shape {tuple(np.shape(counts))}, expected (G,).")
    n_graphs = np.shape(counts)[0] if np.ndim(counts) == 1 else None
    expected = {"graph_mask": (n_graphs,), "node_mask": (graph.n_nodes,), "edge_mask": (graph.n_edges,)}
    for name, shape in expected.items():
        value = getattr(graph, name)
        if value is not None and shape[0] is not None and tuple(np.shape(value)) != shape:
            problems.append(f"{name} has the wrong shape; got {tuple(np.shape(value))}, expected {shape}.")
    weight = graph.edge_weight
    if weight is not None and (np.ndim(weight) == 0 or np.shape(weight)[0] != graph.n_edges):
        problems.append(f"edge_weight must have one row per edge; got shape {tuple(np.shape(weight))}, "
                        f"expected ({graph.n_edges}, ...).")
    if problems:
        raise ValueError(f"{where}: " + " ".join(problems))
