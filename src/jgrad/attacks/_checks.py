"""Checks of an attack's inputs; each raises a one-line error naming the function, the argument and the value.

Shapes and dtypes are checked always (they are known under ``jit``); values (label range, empty masks,
undirected edges) only when the arrays are concrete.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._src._checks import is_concrete
from .._src._search import edges_without_reverse
from ..graph import Graph


def _dtype_and_shape(value: Any) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and shape of an array, a tracer or a nested list, without copying an array."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return np.dtype(value.dtype), tuple(value.shape)
    value = np.asarray(value)
    return value.dtype, value.shape


def check_undirected(where: str, graph: Graph) -> None:
    """Raises ValueError if a real edge ``u -> v`` (``u != v``) has no real ``v -> u``; skipped under ``jit``."""
    if not is_concrete(graph.senders, graph.receivers, graph.edge_mask):
        return
    unmatched = edges_without_reverse(graph.senders, graph.receivers, graph.n_nodes, graph.edge_mask)
    if unmatched is not None:
        u, v, count = unmatched
        more = f" ({count - 1} more such edges)" if count > 1 else ""
        raise ValueError(f"{where}: graph must be undirected; got edge {u} -> {v} without {v} -> {u}{more}, "
                         "expected both directions of every edge. Use graph.to_undirected().")


def check_labels(where: str, labels: Any, n_nodes: int, n_classes: int) -> None:
    """Raises unless ``labels`` is an int array of shape (N,) with values in ``[0, n_classes)`` (when concrete)."""
    dtype, shape = _dtype_and_shape(labels)
    if not np.issubdtype(dtype, np.integer):
        hint = " One-hot labels? Pass labels.argmax(-1)." if len(shape) == 2 else ""
        raise TypeError(f"{where}: labels must be class indices of an integer dtype; got {dtype}, shape {shape}, "
                        f"expected ints of shape ({n_nodes},).{hint}")
    if shape != (n_nodes,):
        raise ValueError(f"{where}: labels must have one class index per node; got shape {shape}, "
                         f"expected ({n_nodes},).")
    if is_concrete(labels) and n_nodes:
        values = np.asarray(labels)
        bad = np.flatnonzero((values < 0) | (values >= n_classes))
        if bad.size:
            more = f" ({bad.size - 1} more)" if bad.size > 1 else ""
            raise ValueError(f"{where}: labels[{bad[0]}]={values[bad[0]]} is out of range{more}; "
                             f"expected 0 <= label < n_classes={n_classes}.")


def check_mask(where: str, name: str, mask: Any, n_nodes: int, *, nonempty: bool = True) -> None:
    """Raises unless ``mask`` is a bool array of shape (N,) that, when concrete and ``nonempty``, selects a node."""
    dtype, shape = _dtype_and_shape(mask)
    if dtype != np.bool_:
        raise TypeError(f"{where}: {name} must be a bool mask; got dtype {dtype}, expected bool of shape "
                        f"({n_nodes},). A 0/1 mask? Pass {name}.astype(bool).")
    if shape != (n_nodes,):
        raise ValueError(f"{where}: {name} must have one entry per node; got shape {shape}, expected ({n_nodes},).")
    if nonempty and is_concrete(mask) and not np.any(np.asarray(mask)):
        raise ValueError(f"{where}: {name} selects no node; expected at least one of the {n_nodes} nodes.")


def check_node_inputs(where: str, graph: Graph, labels: Any, train_mask: Any, val_mask: Any, n_classes: int) -> None:
    """The checks of an attack's setup: an undirected graph, (N,) int labels in range, (N,) bool masks, and
    at least one training, one validation and one unlabelled node (the attacker scores the unlabelled ones)."""
    n = int(graph.n_nodes)
    check_undirected(where, graph)
    check_labels(where, labels, n, n_classes)
    check_mask(where, "train_mask", train_mask, n)
    check_mask(where, "val_mask", val_mask, n)
    if is_concrete(train_mask) and np.all(np.asarray(train_mask)):
        raise ValueError(f"{where}: train_mask selects all {n} nodes; expected some unlabelled nodes for the "
                         "attacker to score.")
