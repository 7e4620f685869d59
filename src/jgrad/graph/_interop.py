"""Conversion to and from scipy.sparse and networkx (both imported lazily, on first use).

The matrix convention carries over: a scipy matrix ``M`` has ``M[v, u]`` = weight of ``u -> v``, and a
networkx edge ``(u, v, {"weight": w})`` is the edge ``u -> v``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _checks
from ._graph import Graph


def from_scipy(matrix: Any) -> Graph:
    """A weighted graph from a square scipy.sparse matrix; ``matrix[v, u]`` weighs ``u -> v``.

    Stored entries become edges (explicit zeros included; duplicates are kept as parallel edges).
    """
    coo = matrix.tocoo()
    if coo.shape[0] != coo.shape[1]:
        raise ValueError(f"from_scipy: matrix must be square N x N; got shape {coo.shape}.")
    return Graph.from_edges(coo.col, coo.row, int(coo.shape[0]), edge_weight=np.asarray(coo.data, np.float32))


def to_scipy(graph: Graph, format: str = "csr") -> Any:
    """The adjacency as a scipy.sparse matrix in ``format``; duplicates are summed; padding dropped."""
    import scipy.sparse as sp

    _checks.require_concrete("to_scipy", graph.senders)
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
    edge has that attribute, the graph is weighted (missing attributes count 1).
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
        edge_weight=np.asarray(weights, np.float32) if has_weight else None,
    )


def to_networkx(graph: Graph) -> Any:
    """A networkx.DiGraph with nodes 0..N-1 and a ``weight`` attribute per edge (duplicates summed)."""
    import networkx as nx

    _checks.require_concrete("to_networkx", graph.senders)
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
