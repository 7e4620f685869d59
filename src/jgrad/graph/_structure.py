"""Structural transforms of a `Graph`: self loops, duplicate edges, symmetrisation, CSR order.

``add_self_loops`` and ``sort_by_receiver`` keep shapes static and work under ``jit``; the others change
the edge count depending on values and run eagerly on the host (they raise a clear error on tracers).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from ._graph import Graph


def add_self_loops(graph: Graph, fill: float = 1.0) -> Graph:
    """Appends the edges ``v -> v`` for v = 0..N-1 with weight ``fill``; shape (E + N,). jit-safe.

    Existing self loops are kept (use `remove_self_loops` first to replace them). A weighted graph
    gets ``fill`` as the weight of each new loop (broadcast over trailing weight dimensions); an
    unweighted graph stays unweighted when ``fill == 1``. Loops on padding nodes are masked out.
    Per-graph edge counts of a batch are updated.
    """
    n = graph.n_nodes
    loops = jnp.arange(n, dtype=jnp.int32)
    edge_weight = graph.edge_weight
    if edge_weight is None and not _is_one(fill):
        edge_weight = jnp.ones((graph.n_edges,), jnp.float32)
    if edge_weight is not None:
        loop_weight = jnp.full((n,) + edge_weight.shape[1:], fill, edge_weight.dtype)
        edge_weight = jnp.concatenate([edge_weight, loop_weight])
    edge_mask = graph.edge_mask
    if edge_mask is not None or graph.node_mask is not None:
        old = jnp.ones((graph.n_edges,), bool) if edge_mask is None else edge_mask
        new = jnp.ones((n,), bool) if graph.node_mask is None else graph.node_mask
        edge_mask = jnp.concatenate([old, new])
    n_edge_per_graph = graph.n_edge_per_graph
    if n_edge_per_graph is not None:
        # Loops go after all edges; `unbatch` assigns edges to graphs by receiver, so counts suffice.
        n_edge_per_graph = n_edge_per_graph + graph.n_node_per_graph
    return dataclasses.replace(
        graph,
        senders=jnp.concatenate([graph.senders, loops]),
        receivers=jnp.concatenate([graph.receivers, loops]),
        edge_weight=edge_weight,
        edge_mask=edge_mask,
        n_edge_per_graph=n_edge_per_graph,
    )


def _is_one(fill: float) -> bool:
    return not isinstance(fill, jax.core.Tracer) and float(fill) == 1.0


def _select_edges(graph: Graph, keep: np.ndarray) -> Graph:
    """The graph restricted to the edges where ``keep`` is True (host-side)."""
    index = jnp.asarray(np.flatnonzero(keep), jnp.int32)
    take = lambda a: None if a is None else jnp.asarray(a)[index]
    n_edge_per_graph = graph.n_edge_per_graph
    if n_edge_per_graph is not None:
        # An edge belongs to the graph of its receiver (as in `unbatch`); edges need not be grouped by
        # graph, e.g. after `add_self_loops` appends the loops of every graph at the end.
        offsets = np.concatenate([[0], np.cumsum(np.asarray(graph.n_node_per_graph))])
        owner = np.searchsorted(offsets, np.asarray(graph.receivers)[keep], side="right") - 1
        n_edge_per_graph = jnp.asarray(np.bincount(owner, minlength=graph.n_graphs), jnp.int32)
    return dataclasses.replace(
        graph,
        senders=take(graph.senders),
        receivers=take(graph.receivers),
        edge_weight=take(graph.edge_weight),
        edge_mask=take(graph.edge_mask),
        n_edge_per_graph=n_edge_per_graph,
    )


def remove_self_loops(graph: Graph) -> Graph:
    """Drops every edge ``v -> v``. Eager only."""
    _checks.require_concrete("remove_self_loops", graph.senders, graph.receivers)
    keep = np.asarray(graph.senders) != np.asarray(graph.receivers)
    return _select_edges(graph, keep)


def sort_by_receiver(graph: Graph) -> tuple[Graph, jax.Array]:
    """Sorts edges by (receiver, sender), the CSR order of ``A``. jit-safe.

    Returns:
      ``(sorted_graph, perm)`` with ``sorted_graph.senders == graph.senders[perm]`` (likewise for
      receivers, weights and mask); ``perm`` is (E,) int32. Scatter ``values[perm]`` back with
      ``out.at[perm].set(values)``. Per-graph edge counts stay valid because a batch's node ranges
      are contiguous.
    """
    perm = jnp.lexsort((graph.senders, graph.receivers)).astype(jnp.int32)
    take = lambda a: None if a is None else a[perm]
    sorted_graph = dataclasses.replace(
        graph,
        senders=graph.senders[perm],
        receivers=graph.receivers[perm],
        edge_weight=take(graph.edge_weight),
        edge_mask=take(graph.edge_mask),
    )
    return sorted_graph, perm


def coalesce(graph: Graph) -> Graph:
    """Merges duplicate edges (same sender and receiver), summing their weights. Eager only.

    ``to_dense()`` is unchanged: an unweighted graph with duplicate edges becomes weighted, each merged
    edge weighing its multiplicity (an unweighted graph without duplicates stays unweighted). The
    result is sorted by (receiver, sender). Padding edges are dropped first, so a padded graph
    comes back unpadded in its edges (node masks are kept). Coalescing twice changes nothing.
    """
    _checks.require_concrete("coalesce", graph.senders, graph.receivers)
    if graph.edge_mask is not None:
        graph = _select_edges(graph, np.asarray(graph.edge_mask))
        graph = dataclasses.replace(graph, edge_mask=None)
    senders = np.asarray(graph.senders, np.int64)
    receivers = np.asarray(graph.receivers, np.int64)
    key = receivers * max(graph.n_nodes, 1) + senders
    unique_key, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    edge_weight = graph.edge_weight
    if edge_weight is None and unique_key.shape[0] < key.shape[0]:
        # Duplicates of an unweighted graph become one edge weighing their count, so that the
        # adjacency (and every aggregation over it) is unchanged.
        edge_weight = np.ones(key.shape[0], np.float32)
    if edge_weight is not None:
        host = np.asarray(edge_weight)
        merged = np.zeros((unique_key.shape[0],) + host.shape[1:], host.dtype)
        np.add.at(merged, inverse, host)
        edge_weight = jnp.asarray(merged)
    n_edge_per_graph = graph.n_edge_per_graph
    if n_edge_per_graph is not None:
        offsets = np.concatenate([[0], np.cumsum(np.asarray(graph.n_node_per_graph))])
        owner = np.searchsorted(offsets, receivers[first], side="right") - 1
        n_edge_per_graph = jnp.asarray(np.bincount(owner, minlength=graph.n_graphs), jnp.int32)
    return dataclasses.replace(
        graph,
        senders=jnp.asarray(senders[first], jnp.int32),
        receivers=jnp.asarray(receivers[first], jnp.int32),
        edge_weight=edge_weight,
        n_edge_per_graph=n_edge_per_graph,
    )


def to_undirected(graph: Graph) -> Graph:
    """Makes every edge two-way: the pattern of ``A`` becomes symmetric. Eager only.

    For each edge ``u -> v`` whose reverse ``v -> u`` is absent, adds ``v -> u`` with the same weight;
    then merges duplicate edges (summing their weights) as `coalesce` does. A graph that is already
    symmetric comes back coalesced and otherwise unchanged. Padding edges are dropped.
    """
    _checks.require_concrete("to_undirected", graph.senders, graph.receivers)
    if graph.edge_mask is not None:
        graph = dataclasses.replace(_select_edges(graph, np.asarray(graph.edge_mask)), edge_mask=None)
    senders = np.asarray(graph.senders)
    receivers = np.asarray(graph.receivers)
    forward = set(zip(senders.tolist(), receivers.tolist()))
    missing = np.array([(r, s) not in forward for s, r in zip(senders.tolist(), receivers.tolist())], bool)
    missing &= senders != receivers
    extra_senders = receivers[missing]
    extra_receivers = senders[missing]
    edge_weight = graph.edge_weight
    if edge_weight is not None:
        edge_weight = jnp.concatenate([edge_weight, jnp.asarray(edge_weight)[np.flatnonzero(missing)]])
    both = dataclasses.replace(
        graph,
        senders=jnp.asarray(np.concatenate([senders, extra_senders]), jnp.int32),
        receivers=jnp.asarray(np.concatenate([receivers, extra_receivers]), jnp.int32),
        edge_weight=edge_weight,
    )
    return coalesce(both)  # coalesce recounts the per-graph edges of a batch

