"""Conversion to and from scipy.sparse, networkx, PyTorch Geometric and jraph (imported lazily).

The matrix convention carries over: a scipy matrix ``M`` has ``M[v, u]`` = weight of ``u -> v``, and a
networkx edge ``(u, v, {"weight": w})`` is the edge ``u -> v``. A PyG ``edge_index[:, e]`` is the edge
``edge_index[0, e] -> edge_index[1, e]``, and jraph's senders and receivers are jgrad's.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._src import _checks
from .._src._checks import check_graph
from .._src._types import default_float_dtype
from ._batching import unbatch as unbatch_graphs
from ._graph import _from_torch, Graph


def from_scipy(matrix: Any) -> Graph:
    """A weighted graph from a square scipy.sparse matrix; ``matrix[v, u]`` weighs ``u -> v``.

    Stored entries become edges (explicit zeros included; duplicates are kept as parallel edges). The
    weights have the default float dtype (float32, or float64 under ``jax.enable_x64``).
    """
    coo = matrix.tocoo()
    if coo.shape[0] != coo.shape[1]:
        raise ValueError(f"from_scipy: matrix must be square N x N; got shape {coo.shape}.")
    return Graph.from_edges(coo.col, coo.row, int(coo.shape[0]), edge_weight=np.asarray(coo.data, default_float_dtype()))


def to_scipy(graph: Graph, format: str = "csr") -> Any:
    """The adjacency as a scipy.sparse matrix in ``format``; duplicates are summed; padding dropped.

    Indices are range-checked (ValueError naming them), as for every jgrad function that reads them.
    """
    check_graph("to_scipy", graph)
    import scipy.sparse as sp

    _checks.require_concrete("to_scipy", graph.senders)
    _checks.check_graph_indices("to_scipy", graph)
    weight = np.asarray(graph.weights())
    if weight.ndim != 1:
        raise ValueError(f"to_scipy: needs scalar edge weights; got edge_weight of shape {weight.shape}.")
    live = np.ones(graph.n_edges, bool) if graph.edge_mask is None else np.asarray(graph.edge_mask)
    coo = sp.coo_matrix(
        (weight[live], (np.asarray(graph.receivers)[live], np.asarray(graph.senders)[live])),
        shape=(graph.n_nodes, graph.n_nodes),
    )
    return coo.asformat(format)


def from_networkx(nx_graph: Any, weight: str | None = "weight") -> Graph:
    """A graph from a networkx (Di)Graph with nodes relabelled 0..N-1 in iteration order.

    An undirected networkx graph gives both directions of every edge. If ``weight`` is given and any
    edge has that attribute, the graph is weighted (missing attributes count 1), with weights of the
    default float dtype (float32, or float64 under ``jax.enable_x64``).
    """
    nodes = list(nx_graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}
    senders, receivers, weights = [], [], []
    directed = nx_graph.is_directed()
    for u, v, data in nx_graph.edges(data=True):
        w = data.get(weight, 1.0) if weight else 1.0
        pairs = [(u, v)] if directed or u == v else [(u, v), (v, u)]
        for a, b in pairs:
            senders.append(index[a])
            receivers.append(index[b])
            weights.append(w)
    has_weight = weight is not None and any(weight in d for _, _, d in nx_graph.edges(data=True))
    return Graph.from_edges(
        np.asarray(senders, np.int32),
        np.asarray(receivers, np.int32),
        len(nodes),
        edge_weight=np.asarray(weights, default_float_dtype()) if has_weight else None,
    )


def to_networkx(graph: Graph) -> Any:
    """A networkx.DiGraph with nodes 0..N-1 and a ``weight`` attribute per edge (duplicates summed).

    Indices are range-checked (ValueError), so a bad index never adds a node beyond N.
    """
    check_graph("to_networkx", graph)
    import networkx as nx

    _checks.require_concrete("to_networkx", graph.senders)
    _checks.check_graph_indices("to_networkx", graph)
    weight = np.asarray(graph.weights())
    if weight.ndim != 1:
        raise ValueError(f"to_networkx: needs scalar edge weights; got edge_weight of shape {weight.shape}.")
    out = nx.DiGraph()
    out.add_nodes_from(range(graph.n_nodes))
    live = np.ones(graph.n_edges, bool) if graph.edge_mask is None else np.asarray(graph.edge_mask)
    for s, r, w, keep in zip(np.asarray(graph.senders), np.asarray(graph.receivers), weight, live):
        if not keep:
            continue
        previous = out.get_edge_data(int(s), int(r), {"weight": 0.0})["weight"]
        out.add_edge(int(s), int(r), weight=previous + float(w))
    return out


# --------------------------------------------------------------------------------------------------
# PyTorch Geometric: ``Data(edge_index, edge_weight, num_nodes, x)``; row 0 of edge_index = senders.
# --------------------------------------------------------------------------------------------------
def from_pyg(data: Any, *, edge_weight: str | None = "edge_weight") -> Graph:
    """A graph from a PyTorch Geometric ``Data`` (or ``Batch``); torch is only touched, never imported.

    ``data.edge_index[0]`` are the senders and ``data.edge_index[1]`` the receivers (PyG's
    ``source_to_target`` flow), so jgrad's aggregation at receivers is PyG's aggregation at targets.
    ``data.num_nodes`` gives N (when PyG has to infer it, it takes the largest index + 1 and
    ``x.size(0)``; its warning about that is not repeated here). A ``Batch`` becomes a jgrad batch:
    per-graph node counts from ``data.ptr``, per-graph edge counts from the graph of each receiver.
    Node features are not part of a `Graph`: read them as ``jnp.asarray(data.x.numpy())``.

    Args:
      data: a ``torch_geometric.data.Data`` or ``Batch``.
      edge_weight: name of the attribute holding the (E,) or (E, ...) floating-point edge weights
        (``"edge_weight"``, or ``"edge_attr"``); a missing or ``None`` attribute, or ``edge_weight=None``,
        gives an unweighted graph. Integer attributes (e.g. categorical ``edge_attr``) raise TypeError.

    Returns:
      A validated `Graph` (see `Graph.from_edges`).

    Example:
      >>> import numpy as np, jgrad
      >>> g = jgrad.Graph.from_edge_index(np.array([[0, 1], [1, 2]]), edge_weight=np.array([0.5, 2.0]))
      >>> data = jgrad.graph.to_pyg(g)  # torch_geometric.data.Data
      >>> data.edge_index.tolist(), data.edge_weight.tolist(), data.num_nodes
      ([[0, 1], [1, 2]], [0.5, 2.0], 3)
      >>> back = jgrad.graph.from_pyg(data)
      >>> back.senders.tolist(), back.receivers.tolist()
      ([0, 1], [1, 2])
    """
    edge_index = getattr(data, "edge_index", None)
    if edge_index is None:
        raise ValueError("from_pyg: data has no edge_index; got None, expected a (2, E) integer tensor.")
    weight = None if edge_weight is None else getattr(data, edge_weight, None)
    with warnings.catch_warnings():  # PyG warns when it infers num_nodes from edge_index
        warnings.simplefilter("ignore")
        n_nodes = data.num_nodes
    if n_nodes is not None:
        n_nodes = int(n_nodes)
    graph = Graph.from_edge_index(edge_index, n_nodes, weight)
    ptr = getattr(data, "ptr", None)
    if ptr is None:
        return graph
    ptr = np.asarray(_from_torch(ptr), np.int64)
    node_counts = np.diff(ptr)
    owner = np.searchsorted(ptr, np.asarray(graph.receivers), side="right") - 1
    edge_counts = np.bincount(owner, minlength=node_counts.shape[0])
    return dataclasses.replace(
        graph,
        n_node_per_graph=jnp.asarray(node_counts, jnp.int32),
        n_edge_per_graph=jnp.asarray(edge_counts, jnp.int32),
    )


def to_pyg(graph: Graph, x: Any = None, *, edge_weight: str = "edge_weight") -> Any:
    """The graph as a PyTorch Geometric ``Data`` (a ``Batch`` for a jgrad batch); imports torch.

    ``edge_index`` is ``stack([senders, receivers])`` as int64, ``num_nodes`` is N, the weights of a
    weighted graph go to the attribute named by ``edge_weight`` (``"edge_weight"`` or ``"edge_attr"``),
    and ``x`` (optional node features, (N, ...)) to ``x``. Padding edges are dropped; padding nodes of a
    single graph stay as isolated nodes. A batch (``n_node_per_graph`` set) becomes
    ``Batch.from_data_list`` of its graphs (`unbatch`), its padding graph dropped and ``x`` split to
    match. Eager only.

    Args:
      graph: the graph or batch.
      x: optional node features, shape (N, ...), numpy/JAX/torch.
      edge_weight: attribute name for the weights, keyword-only.

    Returns:
      ``torch_geometric.data.Data`` or ``torch_geometric.data.Batch``.
    """
    check_graph("to_pyg", graph)
    import torch

    with warnings.catch_warnings():  # torch_geometric 2.8 uses torch.jit.script, deprecated in torch 2.13
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch_geometric.data import Batch, Data

    _checks.require_concrete("to_pyg", graph.senders, graph.receivers)
    if x is not None:
        x = np.asarray(_from_torch(x))
        if x.ndim == 0 or x.shape[0] != graph.n_nodes:
            raise ValueError(f"to_pyg: x must have one row per node; got shape {x.shape}, expected "
                             f"({graph.n_nodes}, ...).")
    if graph.n_node_per_graph is not None:
        parts = unbatch_graphs(graph)
        counts = np.asarray(graph.n_node_per_graph, np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        live = np.ones(counts.shape[0], bool) if graph.graph_mask is None else np.asarray(graph.graph_mask)
        rows = [x[starts[g]:starts[g + 1]] if x is not None else None for g in np.flatnonzero(live)]
        return Batch.from_data_list([to_pyg(part, rows_g, edge_weight=edge_weight)
                                     for part, rows_g in zip(parts, rows)])
    _checks.check_graph_indices("to_pyg", graph)
    live = np.ones(graph.n_edges, bool) if graph.edge_mask is None else np.asarray(graph.edge_mask, bool)
    edge_index = np.stack([np.asarray(graph.senders)[live], np.asarray(graph.receivers)[live]]).astype(np.int64)
    attributes = {"edge_index": torch.from_numpy(edge_index), "num_nodes": graph.n_nodes}
    if graph.edge_weight is not None:
        attributes[edge_weight] = torch.from_numpy(np.array(graph.edge_weight)[live])
    if x is not None:
        attributes["x"] = torch.from_numpy(np.array(x))
    return Data(**attributes)


# --------------------------------------------------------------------------------------------------
# jraph: ``GraphsTuple(nodes, edges, receivers, senders, globals, n_node, n_edge)``, same direction.
# --------------------------------------------------------------------------------------------------
def from_jraph(graphs: Any, *, padded: bool = False) -> Graph:
    """A graph (or batch) from a jraph ``GraphsTuple``; jraph is not imported.

    jraph's senders and receivers mean what jgrad's do. ``n_node`` and ``n_edge`` give the graphs of a
    batch: a tuple of one graph gives a single `Graph`, several give a jgrad batch (``n_node_per_graph``
    = ``n_node``, ``n_edge_per_graph`` = ``n_edge``). ``edges`` become the edge weights when they are one
    floating-point array of shape (E,) or (E, ...); ``None`` gives an unweighted graph. ``nodes`` and
    ``globals`` are not part of a `Graph` (only their leading sizes are checked): keep them beside it.

    Args:
      graphs: a ``jraph.GraphsTuple`` with concrete ``n_node``/``n_edge`` (they fix N and E).
      padded: the tuple comes from ``jraph.pad_with_graphs``: its last graph, and the empty graphs
        after it, are padding, and the result carries jgrad's masks (``node_mask``, ``edge_mask``,
        ``graph_mask`` False for them), as `jgrad.pad` builds them. Keyword-only.

    Returns:
      A validated `Graph`.

    Raises:
      TypeError: ``edges`` that are not None or one floating-point array.
      ValueError: ``n_node``/``n_edge`` that disagree with the arrays, or an edge outside its graph.
    """
    where = "from_jraph"
    n_node = np.asarray(_checks_concrete(where, "n_node", graphs.n_node), np.int64).reshape(-1)
    n_edge = np.asarray(_checks_concrete(where, "n_edge", graphs.n_edge), np.int64).reshape(-1)
    if n_node.shape != n_edge.shape or (n_node < 0).any() or (n_edge < 0).any():
        raise ValueError(f"{where}: n_node and n_edge must be non-negative with one entry per graph; got "
                         f"shapes {n_node.shape} and {n_edge.shape}.")
    n_nodes, n_edges = int(n_node.sum()), int(n_edge.sum())
    for name, leaves, rows in (("nodes", graphs.nodes, n_nodes), ("globals", graphs.globals, n_node.shape[0])):
        for leaf in jax.tree.leaves(leaves):
            if np.ndim(leaf) == 0 or np.shape(leaf)[0] != rows:
                raise ValueError(f"{where}: {name} must have {rows} rows, one per "
                                 f"{'node' if name == 'nodes' else 'graph'}; got a leaf of shape "
                                 f"{np.shape(leaf)}, expected ({rows}, ...).")
    edges = graphs.edges
    if edges is not None and not (hasattr(edges, "dtype") and jnp.issubdtype(edges.dtype, jnp.floating)):
        got = f"dtype {np.dtype(edges.dtype).name}" if hasattr(edges, "dtype") else type(edges).__name__
        raise TypeError(
            f"{where}: edges must be None or one floating-point array of edge weights; got {got}. Pass "
            "graphs._replace(edges=None) and keep the edge features beside the graph."
        )
    if np.shape(graphs.senders) != (n_edges,):
        raise ValueError(f"{where}: senders must have sum(n_edge) = {n_edges} entries; got shape "
                         f"{np.shape(graphs.senders)}.")
    graph = Graph.from_edges(graphs.senders, graphs.receivers, n_nodes, edges)
    graph_index = np.repeat(np.arange(n_node.shape[0]), n_edge)
    offsets = np.concatenate([[0], np.cumsum(n_node)])
    for name in ("senders", "receivers"):
        owner = np.searchsorted(offsets, np.asarray(getattr(graph, name)), side="right") - 1
        bad = np.flatnonzero(owner != graph_index)
        if bad.size:
            e = int(bad[0])
            raise ValueError(
                f"{where}: {bad.size} edge(s) have {name} outside their graph (first: edge {e} of graph "
                f"{graph_index[e]} has {name}[{e}]={int(getattr(graph, name)[e])}); expected node ids in "
                f"[{offsets[graph_index[e]]}, {offsets[graph_index[e] + 1]})."
            )
    if n_node.shape[0] == 1 and not padded:
        return graph
    per_graph = {
        "n_node_per_graph": jnp.asarray(n_node, jnp.int32),
        "n_edge_per_graph": jnp.asarray(n_edge, jnp.int32),
    }
    if padded:
        if n_node.shape[0] < 2 or n_node[-1 - _trailing_empty(n_node)] == 0:
            raise ValueError(f"{where}: padded=True needs a padding graph with at least one node after the "
                             f"real graphs, as jraph.pad_with_graphs makes; got n_node={n_node.tolist()}.")
        n_padding = _trailing_empty(n_node) + 1
        graph_mask = np.arange(n_node.shape[0]) < n_node.shape[0] - n_padding
        per_graph.update(
            graph_mask=jnp.asarray(graph_mask),
            node_mask=jnp.asarray(np.repeat(graph_mask, n_node)),
            edge_mask=jnp.asarray(np.repeat(graph_mask, n_edge)),
        )
    return dataclasses.replace(graph, **per_graph)


def to_jraph(graph: Graph, nodes: Any = None, edges: Any = None, globals: Any = None) -> Any:  # noqa: A002
    """The graph (or batch) as a jraph ``GraphsTuple``; jit-safe (jraph is imported for the type only).

    ``senders``/``receivers`` as int32; ``n_node``/``n_edge`` are the per-graph counts of a batch
    (``[N]``/``[E]`` for a single graph). jraph keeps each graph's edges together, so the edges of a
    batch are stably reordered by the graph of their receiver (edges that `add_self_loops` appended
    after batching move into their graph); within a graph their order is kept. ``edges`` defaults to
    the weights of a weighted graph (padding edges 0) and ``None`` otherwise. A padded jgrad batch
    (`jgrad.pad`) comes out as ``jraph.pad_with_graphs`` lays it out: the padding graph last, its
    padding edges on its first node. Concrete indices are range-checked (ValueError); on tracers the
    check is skipped.

    Args:
      graph: the graph or batch.
      nodes: optional node features, a pytree of (N, ...) arrays, passed through.
      edges: optional edge features, a pytree of (E, ...) arrays in the graph's edge order; they get
        the same reordering. Default: the edge weights (or ``None``).
      globals: optional per-graph features, a pytree of (G, ...) arrays, passed through.

    Returns:
      ``jraph.GraphsTuple``.

    Example:
      >>> import jgrad
      >>> b = jgrad.batch([jgrad.Graph.from_edges([0], [1], n_nodes=2)] * 2)
      >>> gt = jgrad.graph.to_jraph(b)
      >>> gt.senders.tolist(), gt.receivers.tolist(), gt.n_node.tolist(), gt.n_edge.tolist()
      ([0, 2], [1, 3], [2, 2], [1, 1])
      >>> jgrad.graph.from_jraph(gt).n_node_per_graph.tolist()
      [2, 2]
    """
    check_graph("to_jraph", graph)
    import jraph

    _checks.check_graph_indices("to_jraph", graph)  # when concrete; skipped on tracers
    if edges is None and graph.edge_weight is not None:
        edges = graph.weights()
    senders, receivers = graph.senders, graph.receivers
    if graph.n_node_per_graph is None:
        n_node = jnp.asarray([graph.n_nodes], jnp.int32)
        n_edge = jnp.asarray([graph.n_edges], jnp.int32)
    elif _checks.is_concrete(receivers, graph.n_node_per_graph):
        # On the host: eager jnp ops would compile for every new shape.
        counts = np.asarray(graph.n_node_per_graph, np.int64)
        if (counts < 0).any() or counts.sum() != graph.n_nodes:
            raise ValueError(f"to_jraph: n_node_per_graph must be non-negative and add up to n_nodes; got sum "
                             f"{counts.sum()}, expected {graph.n_nodes}.")
        owner = np.searchsorted(np.cumsum(counts), np.asarray(receivers), side="right")
        order = np.argsort(owner, kind="stable")
        senders, receivers = jnp.asarray(np.asarray(senders)[order]), jnp.asarray(np.asarray(receivers)[order])
        edges = jax.tree.map(lambda leaf: _take_rows(leaf, order), edges)
        n_node = jnp.asarray(counts, jnp.int32)
        n_edge = jnp.asarray(np.bincount(owner, minlength=counts.shape[0]), jnp.int32)
    else:
        owner = graph.node_graph_index()[receivers]
        order = jnp.argsort(owner, stable=True)
        senders, receivers = senders[order], receivers[order]
        edges = jax.tree.map(lambda leaf: jnp.asarray(leaf)[order], edges)
        n_node = jnp.asarray(graph.n_node_per_graph, jnp.int32)
        n_edge = jnp.bincount(owner, length=graph.n_graphs).astype(jnp.int32)
    return jraph.GraphsTuple(nodes=nodes, edges=edges, receivers=receivers, senders=senders, globals=globals,
                             n_node=n_node, n_edge=n_edge)


def _take_rows(leaf: Any, order: np.ndarray) -> jax.Array:
    """``leaf[order]``, on the host when ``leaf`` is concrete."""
    if _checks.is_concrete(leaf):
        return jnp.asarray(np.asarray(leaf)[order])
    return jnp.asarray(leaf)[order]


def _trailing_empty(n_node: np.ndarray) -> int:
    """How many graphs at the end have no nodes (jraph's extra padding graphs)."""
    nonzero = np.flatnonzero(n_node)
    return int(n_node.shape[0] - 1 - nonzero[-1]) if nonzero.size else int(n_node.shape[0])


def _checks_concrete(where: str, name: str, value: Any) -> Any:
    if not _checks.is_concrete(value):
        raise TypeError(f"{where}: {name} must be concrete (it fixes the static node and edge counts); got a "
                        "traced value. Convert outside jax.jit.")
    return value

