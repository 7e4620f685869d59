"""Hypothesis strategies and small helpers shared by the graph tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import jgrad


@st.composite
def graphs(draw, *, weighted: bool | None = None, min_nodes: int = 1, max_nodes: int = 12,
           max_edges: int = 30) -> jgrad.Graph:
    """Random small graphs: duplicates and self loops allowed, weights optional.

    Weights are positive multiples of 1/4, so sums of them are exact in float32 and dense
    comparisons can be exact; positive weights never cancel, so nonzero patterns are meaningful.
    """
    n_nodes = draw(st.integers(min_nodes, max_nodes))
    n_edges = draw(st.integers(0, max_edges))
    index = st.lists(st.integers(0, n_nodes - 1), min_size=n_edges, max_size=n_edges)
    senders = np.asarray(draw(index), np.int32)
    receivers = np.asarray(draw(index), np.int32)
    if weighted is None:
        weighted = draw(st.booleans())
    edge_weight = None
    if weighted:
        quarters = draw(st.lists(st.integers(1, 8), min_size=n_edges, max_size=n_edges))
        edge_weight = np.asarray(quarters, np.float32) / 4
    return jgrad.Graph.from_edges(senders, receivers, n_nodes, edge_weight=edge_weight)


def edge_multiset(graph: jgrad.Graph) -> list[tuple]:
    """The sorted list of (sender, receiver, weight...) of the live edges of ``graph``."""
    weight = np.asarray(graph.weights())
    weight = weight.reshape(graph.n_edges, int(np.prod(weight.shape[1:])))
    live = np.ones(graph.n_edges, bool) if graph.edge_mask is None else np.asarray(graph.edge_mask)
    senders, receivers = np.asarray(graph.senders), np.asarray(graph.receivers)
    return sorted(
        (int(s), int(r), *map(float, w)) for s, r, w, keep in zip(senders, receivers, weight, live) if keep
    )


def manual_aggregate(graph: jgrad.Graph, x: np.ndarray) -> np.ndarray:
    """``y[receivers[e]] += w[e] * x[senders[e]]``, one edge at a time on the host."""
    y = np.zeros((graph.n_nodes,) + x.shape[1:], np.float64)
    weight = np.asarray(graph.weights(), np.float64)
    for e, (s, r) in enumerate(zip(np.asarray(graph.senders), np.asarray(graph.receivers))):
        y[r] += weight[e] * x[s]
    return y


def host_dense(graph: jgrad.Graph) -> np.ndarray:
    """A host-side reference for ``graph.to_dense()``: ``A[r, s] += w`` over live edges, in numpy.

    Property tests use it to compare many differently shaped graphs without compiling for each shape.
    """
    weight = np.asarray(graph.weights())
    dense = np.zeros((graph.n_nodes, graph.n_nodes) + weight.shape[1:], weight.dtype)
    np.add.at(dense, (np.asarray(graph.receivers), np.asarray(graph.senders)), weight)
    return dense
