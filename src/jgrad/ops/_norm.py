"""Differentiable degree normalisations of edge weights: symmetric (GCN) and row (mean) norms.

Degrees are *weighted* in-degrees, ``deg[v] = sum of w[e] over edges e into v``, so gradients flow
through them. Where a degree is 0 (a node whose incoming weights were all driven to 0, e.g. by a
structure attack), the inverse power is defined as 0 and so is its derivative: values and gradients
stay finite, with no host synchronisation (double ``where``).

Weights must be non-negative: a negative weight can make a degree zero or negative, where the
normalisation is undefined. Concrete weights (and ``fill``) are checked and refused with a
``ValueError``; traced weights are checked under `jgrad.checked`, and otherwise a degree <= 0 gives
weight 0 on its edges. The ones of an unweighted graph take the default float dtype (float64 under
``jax.enable_x64``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from .._src import _taps
from .._src._checks import check_graph, check_graph_indices, debug_checks_on, is_concrete
from .._src._degree import inverse_degree, unfolded
from .._src._types import default_float_dtype
from ..graph import Graph
from ._segment import segment_sum

ArrayLike = jax.typing.ArrayLike


def _scalar_weights(where: str, graph: Graph, edge_weight) -> jax.Array:
    check_graph(where, graph)
    weight = graph.edge_weight if edge_weight is None else jnp.asarray(edge_weight)
    if weight is None:
        weight = jnp.ones((graph.n_edges,), default_float_dtype())
    if weight.shape != (graph.n_edges,):
        raise ValueError(f"{where}: needs one scalar weight per edge; got shape {tuple(weight.shape)}, "
                         f"expected ({graph.n_edges},).")
    if not jnp.issubdtype(weight.dtype, jnp.floating):
        raise TypeError(f"{where}: edge_weight must be a float array; got dtype {weight.dtype}.")
    check_graph_indices(where, graph)
    _check_non_negative(where, weight, graph.edge_mask)
    return weight


def _check_non_negative(where: str, weight: jax.Array, edge_mask) -> None:
    """Refuses negative weights on real edges: eagerly when concrete, else as a checkify debug check
    under `jgrad.checked`."""
    if weight.shape[0] == 0:
        return
    negative = weight < 0
    if edge_mask is not None:
        negative = negative & edge_mask
    if not is_concrete(weight, edge_mask):
        if not debug_checks_on():
            return
        first = jnp.argmax(negative)
        checkify.debug_check(
            ~jnp.any(negative),
            f"{where}: edge_weight[{{position}}]={{value}} is negative; expected weights >= 0 (a degree "
            "normalisation is undefined for a degree <= 0).",
            position=first,
            value=weight[first],
        )
        return
    bad = np.flatnonzero(np.asarray(negative))
    if bad.size:
        host = np.asarray(weight)
        listed = ", ".join(f"edge_weight[{i}]={host[i]:g}" for i in bad[:5])
        more = f" and {bad.size - 5} more" if bad.size > 5 else ""
        raise ValueError(
            f"{where}: edge_weight is negative on {bad.size} edge(s); got {listed}{more}, expected "
            "edge_weight >= 0 (a negative weight can make a degree zero or negative, where the normalisation "
            "is undefined)."
        )


def _check_fill(fill) -> None:
    if is_concrete(fill) and not np.all(np.asarray(fill) >= 0):
        raise ValueError(f"gcn_norm: fill is negative or NaN; got {fill!r}, expected fill >= 0 (the self-loop "
                         "weight enters every degree).")


def gcn_norm(
    graph: Graph,
    edge_weight: ArrayLike | None = None,
    *,
    add_self_loops: bool = True,
    fill: float = 1.0,
) -> Graph:
    """The graph with symmetric-normalised weights ``D^-1/2 Â D^-1/2`` (Kipf & Welling).

    Semantics: with ``Â = A + fill·I`` (if ``add_self_loops``) and ``deg[v] = sum_u Â[v, u]``::

        w_norm[e] = w[e] / sqrt(deg[receivers[e]] * deg[senders[e]])

    Args:
      graph: the graph; its ``edge_weight`` (or ones) is used unless ``edge_weight`` is given.
      edge_weight: optional (E,) weights overriding the graph's; differentiable.
      add_self_loops: append ``v -> v`` with weight ``fill`` before normalising.
      fill: weight of the added self loops.

    Returns:
      A weighted `Graph` (E + N edges with self loops) whose ``edge_weight`` holds ``w_norm``.
      ``spmm(gcn_norm(g), x)`` is the GCN propagation.

    Raises:
      ValueError: concrete weights with a negative value on a real edge, or a negative ``fill``
        (traced weights are checked under `jgrad.checked`).

    Notes:
      Differentiable w.r.t. the weights through the degrees; a zero degree gives weight 0 and
      gradient 0 there (no NaN). jit-, vmap- and grad-safe. An unweighted graph gets weights of the
      default float dtype (float64 under ``jax.enable_x64``).

    Example:
      >>> import jgrad
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2)
      >>> [round(w, 6) for w in jgrad.ops.gcn_norm(g).edge_weight.tolist()]  # every degree is 2
      [0.5, 0.5, 0.5, 0.5]
    """
    weight = _scalar_weights("gcn_norm", graph, edge_weight)
    base = graph.with_edge_weight(weight)
    if add_self_loops:
        _check_fill(fill)
    looped = base.add_self_loops(fill) if add_self_loops else base
    # The degrees and weights of the graph's own edges, then of the loops (node-sized, the loops of
    # padding nodes weigh 0): the same sums and products as over the looped edges, in the same order,
    # without reading the looped graph's (E + N) index arrays, which XLA can then drop.
    edge_weights = base.weights(weight.dtype)
    degree = segment_sum(edge_weights, unfolded(base.receivers), base.n_nodes)
    if add_self_loops:
        loop_weights = looped.weights(weight.dtype)[base.n_edges:]
        degree = degree + loop_weights
    inv_sqrt = inverse_degree(base, _taps.mark(base, "degree", degree, weight, base.receivers), 0.5, weight)
    normalised = inv_sqrt[base.receivers] * edge_weights * inv_sqrt[base.senders]
    if add_self_loops:
        normalised = jnp.concatenate([normalised, inv_sqrt * loop_weights * inv_sqrt])
    return looped.with_edge_weight(_mark_scaled(base, looped, weight, normalised, inv_sqrt, inv_sqrt))


def row_norm(graph: Graph, edge_weight: ArrayLike | None = None) -> Graph:
    """The graph with row-normalised weights ``D^-1 A``: a weighted mean over incoming edges.

    Semantics: ``w_norm[e] = w[e] / deg[receivers[e]]`` with ``deg[v] = sum_u A[v, u]``.

    Args:
      graph: the graph; its ``edge_weight`` (or ones) is used unless ``edge_weight`` is given.
      edge_weight: optional (E,) weights overriding the graph's; differentiable.

    Returns:
      A weighted `Graph` with the same edges and ``w_norm`` as weights. A node whose degree is 0 gets
      weights 0 and gradient 0. An unweighted graph gets the default float dtype.

    Raises:
      ValueError: concrete weights with a negative value on a real edge (traced weights are checked
        under `jgrad.checked`).

    Example:
      >>> import jgrad
      >>> g = jgrad.Graph.from_edges([0, 1, 2], [2, 2, 0], n_nodes=3, edge_weight=[1.0, 3.0, 2.0])
      >>> jgrad.ops.row_norm(g).edge_weight.tolist()
      [0.25, 0.75, 1.0]
    """
    weight = _scalar_weights("row_norm", graph, edge_weight)
    base = graph.with_edge_weight(weight)
    degree = segment_sum(base.weights(weight.dtype), unfolded(base.receivers), base.n_nodes)
    inverse = inverse_degree(base, _taps.mark(base, "degree", degree, weight, base.receivers), 1.0, weight)
    normalised = inverse[base.receivers] * base.weights(weight.dtype)
    return base.with_edge_weight(_mark_scaled(base, base, weight, normalised, inverse, jnp.ones_like(inverse)))


def _mark_scaled(base: Graph, out: Graph, weight, normalised, left, right):
    """Marks ``normalised`` (the weights of ``out``) as ``diag(left) (A + C) diag(right)`` for
    `jgrad.adjacency_grad`, A being ``base`` with ``weight`` and C the appended self loops."""
    return _taps.mark(base, "scaled", normalised, weight, base.senders, base.receivers, left, right,
                      out.senders, out.receivers)
