"""Host-side preprocessing of node datasets: undirected pairs, the largest connected component, random splits."""

from __future__ import annotations

import numpy as np

from jgrad.graph import Graph

from .._src._search import sorted_unique
from ._dataset import NodeDataset, symmetric_edges


def normalize_rows(features: np.ndarray) -> np.ndarray:
    """Each row of ``features`` (shape (N, F)) divided by its sum; rows that sum to zero stay zero."""
    row_sum = features.sum(axis=1, keepdims=True)
    return np.divide(features, row_sum, out=np.zeros_like(features), where=row_sum != 0)


def undirected_pairs(senders: np.ndarray, receivers: np.ndarray, n_nodes: int) -> np.ndarray:
    """The distinct unordered pairs ``(i, j)``, ``i < j``, of an edge list; self loops dropped.

    Args:
      senders: int array of shape (E,).
      receivers: int array of shape (E,), ids in ``[0, n_nodes)`` like ``senders``.
      n_nodes: the number of nodes ``N``.

    Returns:
      int64 array of shape (P, 2), sorted by ``i``, then ``j``. An edge in either direction, repeated or
      of any weight, gives one pair: this symmetrises and binarises the graph.
    """
    senders, receivers = np.asarray(senders, np.int64), np.asarray(receivers, np.int64)
    keep = senders != receivers
    low = np.minimum(senders[keep], receivers[keep])
    high = np.maximum(senders[keep], receivers[keep])
    codes = sorted_unique(low * n_nodes + high)
    return np.stack([codes // n_nodes, codes % n_nodes], axis=1)


def largest_component_nodes(pairs: np.ndarray, n_nodes: int) -> np.ndarray:
    """The nodes of the largest connected component, ascending; the lowest-numbered one wins a tie.

    Args:
      pairs: int array of shape (P, 2), undirected edges.
      n_nodes: the number of nodes ``N``.

    Returns:
      int64 array of shape (N',).
    """
    import scipy.sparse as sparse  # imported here so that `import jgrad.data` stays light
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    adjacency = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n_nodes, n_nodes))
    _, component = connected_components(adjacency, directed=False)
    return np.flatnonzero(component == np.argmax(np.bincount(component)))


def largest_component(dataset: NodeDataset, *, name: str | None = None) -> NodeDataset:
    """The dataset restricted to its largest connected component (edges taken as undirected).

    Node order is kept, features, labels and masks are carried over, and the graph becomes unweighted and
    symmetric without self loops (edge weights and padding are dropped).

    Args:
      dataset: any `NodeDataset`.
      name: the name of the result; defaults to ``dataset.name``.

    Returns:
      A `NodeDataset` of numpy arrays with ``N'`` nodes.
    """
    graph = dataset.graph
    senders, receivers = np.asarray(graph.senders), np.asarray(graph.receivers)
    if graph.edge_mask is not None:
        keep_edge = np.asarray(graph.edge_mask, bool)
        senders, receivers = senders[keep_edge], receivers[keep_edge]
    n_nodes = dataset.n_nodes
    pairs = undirected_pairs(senders, receivers, n_nodes)
    keep = largest_component_nodes(pairs, n_nodes)
    new_index = np.full(n_nodes, -1, np.int64)
    new_index[keep] = np.arange(len(keep))
    inside = new_index[pairs]
    inside = inside[(inside >= 0).all(axis=1)]
    new_senders, new_receivers = symmetric_edges(inside[:, 0], inside[:, 1], len(keep))
    return NodeDataset(
        graph=Graph.from_edges(new_senders, new_receivers, len(keep)),
        features=np.asarray(dataset.features)[keep],
        labels=np.asarray(dataset.labels)[keep],
        train_mask=np.asarray(dataset.train_mask)[keep],
        val_mask=np.asarray(dataset.val_mask)[keep],
        test_mask=np.asarray(dataset.test_mask)[keep],
        n_classes=dataset.n_classes,
        name=dataset.name if name is None else name,
    )


def random_split_masks(labels: np.ndarray, *, train: float, val: float, seed: int,
                       stratify: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded random train / val / test split of the nodes; test gets the rest.

    With ``stratify`` each class is split in the same proportions: per class ``c`` with ``n_c`` members,
    a permutation drawn from ``numpy.random.default_rng(seed)`` puts ``round(train * n_c)`` in train, the
    next ``round(val * n_c)`` in val and the rest in test (classes in ascending order, one generator).
    Without it, the nodes are split as one class.

    Args:
      labels: int array of shape (N,).
      train: fraction of each class to train on, ``0 < train``.
      val: fraction to validate on, ``0 <= val`` and ``train + val < 1``.
      seed: the seed of the split.
      stratify: split each class separately (the default) or all nodes together.

    Returns:
      ``(train_mask, val_mask, test_mask)``, bool arrays of shape (N,), disjoint and covering every node.

    Raises:
      ValueError: if the fractions break the rules above.
    """
    if not (0 < train and 0 <= val and train + val < 1):
        raise ValueError(
            f"random_split: the fractions are invalid; got train={train}, val={val}, "
            "expected 0 < train, 0 <= val and train + val < 1."
        )
    labels = np.asarray(labels)
    n_nodes = labels.shape[0]
    groups = labels if stratify else np.zeros(n_nodes, np.int64)
    rng = np.random.default_rng(seed)
    masks = [np.zeros(n_nodes, bool) for _ in range(3)]
    for label in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == label))
        n_train, n_val = int(round(train * len(members))), int(round(val * len(members)))
        masks[0][members[:n_train]] = True
        masks[1][members[n_train:n_train + n_val]] = True
        masks[2][members[n_train + n_val:]] = True
    return masks[0], masks[1], masks[2]
