"""Structural transforms of a `Graph`: self loops, duplicate edges, symmetrisation, CSR order.

``add_self_loops`` and ``sort_by_receiver`` keep shapes static and work under ``jit``; the others change
the edge count depending on values and run eagerly on the host (they raise a clear error on tracers).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from .._src import _checks, _loops, _plan, _taps
from .._src._checks import check_graph
from .._src._search import sorted_find
from .._src._types import default_float_dtype
from . import _limits

if TYPE_CHECKING:  # a Graph's methods call these functions, so the class is imported for annotations only
    from ._graph import Graph


def add_self_loops(graph: Graph, fill: float = 1.0) -> Graph:
    """Appends the edges ``v -> v`` for v = 0..N-1 with weight ``fill``; shape (E + N,). jit-safe.

    Existing self loops are kept (use `remove_self_loops` first to replace them). A weighted graph
    gets ``fill`` as the weight of each new loop (broadcast over trailing weight dimensions); an
    unweighted graph stays unweighted when ``fill == 1`` and otherwise gets weights of the default float
    dtype (float64 under ``jax.enable_x64``). Loops on padding nodes are masked out. Per-graph edge
    counts of a batch are updated.

    Raises:
      ValueError: when E + N exceeds ``2**31 - 1`` (int32 indexing).
    """
    check_graph("add_self_loops", graph)
    n = graph.n_nodes
    _limits.check_total("add_self_loops", "n_edges", graph.n_edges + n,
                        f" ({graph.n_edges} edges + {n} loops)")
    loops = jnp.arange(n, dtype=jnp.int32)
    edge_weight = graph.edge_weight
    if edge_weight is None and not _is_one(fill):
        edge_weight = jnp.ones((graph.n_edges,), default_float_dtype())
    if edge_weight is not None:
        loop_weight = jnp.full((n,) + edge_weight.shape[1:], fill, edge_weight.dtype)
        edge_weight = jnp.concatenate([edge_weight, loop_weight])
    n_edge_per_graph = graph.n_edge_per_graph
    if n_edge_per_graph is not None:
        # Loops go after all edges; `unbatch` assigns edges to graphs by receiver, so counts suffice.
        n_edge_per_graph = n_edge_per_graph + graph.n_node_per_graph
    senders = jnp.concatenate([graph.senders, loops])
    receivers = jnp.concatenate([graph.receivers, loops])
    if graph.tapped and graph.edge_weight is not None and graph.edge_weight.ndim == 1:
        ones = jnp.ones((n,), edge_weight.dtype)  # A + fill I: the adjacency plus a constant
        edge_weight = _taps.mark(graph, "scaled", edge_weight, graph.edge_weight, graph.senders, graph.receivers,
                                 ones, ones, senders, receivers)
    looped = dataclasses.replace(
        graph,
        senders=senders,
        receivers=receivers,
        edge_weight=edge_weight,
        edge_mask=_loops.looped_edge_mask(graph),
        n_edge_per_graph=n_edge_per_graph,
    )
    return _plan.attach(looped, _plan.with_self_loops(graph))  # the plan kept, loops as a flag, also under jit


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
    """Drops every edge ``v -> v``. Eager only; indices are range-checked (ValueError)."""
    check_graph("remove_self_loops", graph)
    _checks.require_concrete("remove_self_loops", graph.senders, graph.receivers)
    _checks.check_graph_indices("remove_self_loops", graph)
    keep = np.asarray(graph.senders) != np.asarray(graph.receivers)
    return _select_edges(graph, keep)


def sort_by_receiver(graph: Graph) -> tuple[Graph, jax.Array]:
    """Sorts edges by (receiver, sender), the CSR order of ``A``. jit-safe.

    Returns:
      ``(sorted_graph, perm)`` with ``sorted_graph.senders == graph.senders[perm]`` (likewise for
      receivers, weights and mask); ``perm`` is (E,) int32. Scatter ``values[perm]`` back with
      ``out.at[perm].set(values)``. Per-graph edge counts stay valid because a batch's node ranges
      are contiguous.

    Raises:
      ValueError: when the indices are concrete, an index outside ``[0, n_nodes)``; skipped on tracers.
    """
    check_graph("sort_by_receiver", graph)
    _checks.check_graph_indices("sort_by_receiver", graph)
    if _checks.is_concrete(graph.senders, graph.receivers):
        # the same stable order from one numpy sort of int64 keys: 1.2·10^7 edges in 1-2 s, where
        # XLA's two-key sort takes 5-6 s
        key = np.asarray(graph.receivers, np.int64) * max(graph.n_nodes, 1) + np.asarray(graph.senders, np.int64)
        perm = jnp.asarray(np.argsort(key, kind="stable"), jnp.int32)
    else:
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
    edge weighing its multiplicity (an unweighted graph without duplicates stays unweighted; the
    multiplicities have the default float dtype). The result is sorted by (receiver, sender). Padding
    edges are dropped first, so a padded graph comes back unpadded in its edges (node masks are kept).
    Coalescing twice changes nothing. Indices are range-checked (ValueError), since an out-of-range
    pair could otherwise merge with an unrelated edge.
    """
    check_graph("coalesce", graph)
    _checks.require_concrete("coalesce", graph.senders, graph.receivers)
    _checks.check_graph_indices("coalesce", graph)
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
        edge_weight = np.ones(key.shape[0], default_float_dtype())
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


_REDUCERS = ("mean", "max", "min")


def to_undirected(graph: Graph, *, reduce: str | None = None) -> Graph:
    """Makes every edge two-way, so that ``A`` becomes symmetric. Eager only.

    Duplicate edges are merged first (weights summed, as `coalesce` does). Then each edge ``u -> v``
    whose reverse is absent gets the reverse ``v -> u`` with the same weight. A pair present in both
    directions must have equal weights, ``A[v, u] == A[u, v]``; otherwise the result would not be
    symmetric, and ``reduce`` says how to combine them:

      * ``None`` (default): raise a ValueError naming the pairs;
      * ``"mean"``, ``"max"``, ``"min"``: both directions get ``reduce(A[v, u], A[u, v])``
        (elementwise for (E, ...) weights).

    An unweighted graph without duplicate edges has nothing to combine; duplicates count as a weight
    (``u -> v`` twice and ``v -> u`` once weigh 2 and 1, so they need ``reduce``, or `coalesce` with
    the weights dropped first). A graph that is already symmetric comes back coalesced
    and otherwise unchanged. Padding edges are dropped; the result is sorted by (receiver, sender).

    Args:
      graph: the graph (or batch) to symmetrise.
      reduce: ``None``, ``"mean"``, ``"max"`` or ``"min"``, keyword-only.

    Returns:
      A `Graph` with ``to_dense()`` symmetric (per trailing weight index).

    Raises:
      ValueError: unequal weights in the two directions of a pair with ``reduce=None``; an unknown
        ``reduce``; out-of-range indices; more than ``2**31 - 1`` edges.

    Example:
      >>> import jgrad
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2, edge_weight=[1.0, 3.0])
      >>> jgrad.graph.to_undirected(g, reduce="mean").to_dense().tolist()
      [[0.0, 2.0], [2.0, 0.0]]
    """
    where = "to_undirected"
    check_graph(where, graph)
    if reduce is not None and reduce not in _REDUCERS:
        raise ValueError(f"{where}: unknown reduce {reduce!r}; expected None or one of "
                         f"{', '.join(repr(r) for r in _REDUCERS)}.")
    _checks.require_concrete(where, graph.senders, graph.receivers)
    _checks.check_graph_indices(where, graph)
    graph = coalesce(graph)  # drops padding edges, merges duplicates, sorts by key = receiver * N + sender
    senders = np.asarray(graph.senders, np.int64)
    receivers = np.asarray(graph.receivers, np.int64)
    n = max(graph.n_nodes, 1)
    key = receivers * n + senders
    reverse_key = senders * n + receivers
    position, has_reverse = sorted_find(key, reverse_key)
    missing = ~has_reverse
    edge_weight = graph.edge_weight
    if edge_weight is not None:
        host = np.asarray(edge_weight)
        reverse_weight = host[position]
        differs = has_reverse & (host != reverse_weight).reshape(host.shape[0], -1).any(axis=1) \
            if host.size else np.zeros(host.shape[0], bool)
        if differs.any():
            if reduce is None:
                pairs = np.flatnonzero(differs & (senders < receivers))
                listed = ", ".join(
                    f"{senders[e]}->{receivers[e]} weighs {_scalar(host[e])}, "
                    f"{receivers[e]}->{senders[e]} weighs {_scalar(reverse_weight[e])}"
                    for e in pairs[:5]
                )
                more = f" and {pairs.size - 5} more" if pairs.size > 5 else ""
                raise ValueError(
                    f"{where}: {pairs.size} pair(s) have different weights in the two directions "
                    f"({listed}{more}); expected A[v, u] == A[u, v]. Pass reduce='mean', 'max' or 'min' "
                    "to combine them."
                )
            combine = {"mean": lambda a, b: (a + b) / 2, "max": np.maximum, "min": np.minimum}[reduce]
            host = np.where(has_reverse.reshape((-1,) + (1,) * (host.ndim - 1)),
                            combine(host, reverse_weight), host).astype(host.dtype)
        edge_weight = jnp.asarray(np.concatenate([host, host[missing]]))
    _limits.check_total(where, "n_edges", key.shape[0] + int(missing.sum()))
    both = dataclasses.replace(
        graph,
        senders=jnp.asarray(np.concatenate([senders, receivers[missing]]), jnp.int32),
        receivers=jnp.asarray(np.concatenate([receivers, senders[missing]]), jnp.int32),
        edge_weight=edge_weight,
    )
    return coalesce(both)  # sorts again and recounts the per-graph edges of a batch


def _scalar(value: np.ndarray) -> str:
    return str(value.item()) if np.ndim(value) == 0 else str(value.tolist())
