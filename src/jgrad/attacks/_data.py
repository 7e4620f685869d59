"""The attack setting of Pro-GNN and Metattack: the largest connected component and a random split."""

from __future__ import annotations

import numpy as np

from .. import data
from .._src._search import sorted_unique
from ..data import NodeDataset
from ..graph import Graph


def undirected_pairs(graph: Graph) -> np.ndarray:
    """The distinct unordered pairs ``(i, j)``, ``i < j``, of a graph's edges, shape (P, 2), host int64.

    Self loops and padding edges are dropped; an edge in either direction makes the pair.
    """
    senders, receivers = np.asarray(graph.senders), np.asarray(graph.receivers)
    keep = senders != receivers
    if graph.edge_mask is not None:
        keep &= np.asarray(graph.edge_mask)
    low = np.minimum(senders[keep], receivers[keep]).astype(np.int64)
    high = np.maximum(senders[keep], receivers[keep]).astype(np.int64)
    codes = sorted_unique(low * graph.n_nodes + high)
    return np.stack([codes // graph.n_nodes, codes % graph.n_nodes], axis=1)


def graph_from_pairs(pairs: np.ndarray, n_nodes: int) -> Graph:
    """An unweighted undirected graph holding both directions of each pair (sorted by receiver)."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    senders = np.concatenate([pairs[:, 0], pairs[:, 1]])
    receivers = np.concatenate([pairs[:, 1], pairs[:, 0]])
    order = np.lexsort((senders, receivers))
    return Graph.from_edges(senders[order].astype(np.int32), receivers[order].astype(np.int32), n_nodes)


def largest_component(dataset: NodeDataset) -> NodeDataset:
    """The dataset restricted to its largest connected component (edges taken as undirected).

    Node order is kept; the masks are carried over (re-split with `random_split`); the name gets the
    suffix ``_lcc``. For Planetoid Cora this gives the 2485-node, 5069-edge graph of Metattack and Pro-GNN.
    See `jgrad.data.largest_component`.
    """
    return data.largest_component(dataset, name=dataset.name + "_lcc")


def random_split(dataset: NodeDataset, *, train: float = 0.1, val: float = 0.1, seed: int,
                 stratify: bool = True) -> NodeDataset:
    """A random train / val / test split of the nodes (test gets the rest), as in Pro-GNN.

    With ``stratify`` each class is split in the same proportions (rounded per class), otherwise the
    nodes are split uniformly at random; see `jgrad.data.random_split_masks`, which draws the masks.
    """
    if not (0 < train and 0 <= val and train + val < 1):
        raise ValueError(f"random_split: need 0 < train, 0 <= val and train + val < 1; got train={train}, val={val}.")
    masks = data.random_split_masks(np.asarray(dataset.labels), train=train, val=val, seed=seed, stratify=stratify)
    return NodeDataset.from_arrays(dataset.graph, dataset.features, dataset.labels, *masks,
                                   n_classes=dataset.n_classes, name=dataset.name)
