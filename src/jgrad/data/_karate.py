"""Zachary's karate club: 34 club members, 78 friendships, two factions after the split."""

from __future__ import annotations

import importlib.resources

import numpy as np

from jgrad.graph import Graph

from ._dataset import NodeDataset, symmetric_edges

N_NODES = 34
N_UNDIRECTED_EDGES = 78

# The faction each member joined after the club split: 0 = Mr. Hi (the instructor, node 0),
# 1 = the Officer (the administrator, node 33).
FACTIONS = (
    0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    0, 0, 0, 0, 1, 1, 0, 0, 1, 0,
    1, 0, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1,
)  # fmt: skip


def _karate_undirected_edges() -> np.ndarray:
    """The 78 friendships as an int64 array of shape (78, 2), one ``(u, v)`` row per pair with u < v."""
    text = importlib.resources.files(__package__).joinpath("karate_edges.txt").read_text(encoding="ascii")
    pairs = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    edges = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if edges.shape != (N_UNDIRECTED_EDGES, 2) or edges.min() < 0 or edges.max() >= N_NODES:
        raise RuntimeError(f"karate_edges.txt is damaged: expected {N_UNDIRECTED_EDGES} pairs of ids in [0, 34).")
    return edges


def _karate_edges() -> tuple[np.ndarray, np.ndarray]:
    """Both directions of every friendship: ``(senders, receivers)``, int32 arrays of shape (156,).

    Edges are sorted by receiver, then sender.
    """
    pairs = _karate_undirected_edges()
    return symmetric_edges(pairs[:, 0], pairs[:, 1], N_NODES)


def karate_club() -> NodeDataset:
    """Zachary's karate club as a two-class node-classification dataset.

    The graph has ``N = 34`` members and the 78 friendships observed by Zachary, stored in both directions
    (156 directed edges, unweighted, no self loops, sorted by receiver then sender). The label of a member
    is the faction they joined when the club split: 0 for Mr. Hi (node 0), 1 for the Officer (node 33).
    The data ships with jgrad, so no files or network are needed.

    Returns:
      A `NodeDataset` named ``"karate"`` with

      - ``features``: the identity, shape (34, 34), float32 (one learnable embedding per member);
      - ``labels``: shape (34,), int32, 17 members in each class;
      - ``train_mask``: the two leaders, nodes 0 and 33 (one per class);
      - ``val_mask``: empty;
      - ``test_mask``: the other 32 members.

    Example:
      >>> from jgrad.data import karate_club
      >>> data = karate_club()
      >>> data.graph.n_nodes, data.graph.n_edges, data.n_classes
      (34, 156, 2)

    References:
      W. W. Zachary, "An information flow model for conflict and fission in small groups",
      Journal of Anthropological Research 33(4), 452-473, 1977.
    """
    senders, receivers = _karate_edges()
    labels = np.asarray(FACTIONS, dtype=np.int32)
    train_mask = np.zeros(N_NODES, dtype=bool)
    train_mask[[0, N_NODES - 1]] = True
    return NodeDataset(
        graph=Graph.from_edges(senders, receivers, N_NODES),
        features=np.eye(N_NODES, dtype=np.float32),
        labels=labels,
        train_mask=train_mask,
        val_mask=np.zeros(N_NODES, dtype=bool),
        test_mask=~train_mask,
        n_classes=2,
        name="karate",
    )
