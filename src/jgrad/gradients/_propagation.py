"""Normalised propagation written as node scalings around the raw-weight spmm: linear in A per call.

GCN's ``D^-1/2 (A + fill·I) D^-1/2 x`` can be computed two ways. `jgrad.ops.gcn_norm` builds per-edge
weights ``w[e] / sqrt(deg[v] deg[u])``, a non-linear function of the weights, so the gradient w.r.t.
the dense adjacency no longer factorises through the aggregation. `propagate` scales the *nodes*
instead and aggregates with the raw weights::

    deg  = in_degree(graph) + fill          # weighted, differentiable
    dinv = deg ** -1/2
    y    = dinv * (spmm(graph, dinv * x) + fill * dinv * x)

Every use of ``A`` is then an ``A @ m`` product or a weighted in-degree, which is exactly the form
`jgrad.gradients.adjacency_grad` can capture and factor. Layers should use this form.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from .._src._checks import check_graph
from .._src._degree import inverse_degree
from .._src._types import check_choice
from ..graph import Graph
from ..ops import spmm

ArrayLike = jax.typing.ArrayLike

NORMS = ("sym", "row", "none")


def propagate(
    graph: Graph,
    x: ArrayLike,
    *,
    norm: Literal["sym", "row", "none"] = "sym",
    add_self_loops: bool = True,
    fill: float = 1.0,
) -> jax.Array:
    """One step of (normalised) propagation ``y = Â_norm @ x`` with ``Â = A + fill·I``.

    Semantics, with ``deg[v] = sum_u A[v, u] + fill`` (``+ fill`` only with ``add_self_loops``)::

        norm="sym":  y[v] = sum_u Â[v, u] x[u] / sqrt(deg[v] deg[u])     # GCN, D^-1/2 Â D^-1/2
        norm="row":  y[v] = sum_u Â[v, u] x[u] / deg[v]                  # weighted mean, D^-1 Â
        norm="none": y[v] = sum_u Â[v, u] x[u]                           # sum, e.g. GIN with fill=1+eps

    computed as node scalings around ``spmm(graph, ·)`` with the graph's raw weights (ones for an
    unweighted graph) and the weighted in-degree ``graph.in_degree()``; no self-loop edges are
    appended and no per-edge normalised weights are built.

    Args:
      graph: the graph; ``graph.edge_weight`` (E,) or ones. Padding edges count 0.
      x: node features, shape (N, ...), float.
      norm: ``"sym"``, ``"row"`` or ``"none"`` (keyword-only).
      add_self_loops: add ``fill`` to every node's own term and degree (keyword-only).
      fill: weight of the implicit self loop (keyword-only); may be a traced scalar.

    Returns:
      (N, ...), x's shape and dtype. On real (non-padding) nodes, equal to ``spmm(gcn_norm(graph), x)``
      for ``norm="sym"`` and to ``spmm(row_norm(graph), x)`` for ``norm="row", add_self_loops=False``
      (padding nodes get their implicit self loop here, and none in `gcn_norm`).

    Notes:
      A node whose degree is 0 gets scale 0 (value and gradient finite, no NaN). Differentiable
      w.r.t. ``x``, the edge weights and ``fill``; jit- and vmap-safe. Because every use of the
      adjacency is an aggregation ``A @ m`` or the in-degree, `jgrad.gradients.adjacency_grad` gives
      the exact gradient w.r.t. every entry of A for models built from it.

    Raises:
      ValueError: unknown ``norm``; x without one row per node.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> from jgrad.gradients import propagate
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2)
      >>> x = jnp.array([[1.0], [3.0]])
      >>> propagate(g, x, norm="row").tolist()  # every degree is 2: mean of self and neighbour
      [[2.0], [2.0]]
      >>> propagate(g, x, norm="none", fill=0.5).tolist()
      [[3.5], [2.5]]
    """
    where = "propagate"
    check_graph(where, graph)
    check_choice(where, "norm", norm, NORMS)
    x = jnp.asarray(x)
    if x.ndim == 0 or x.shape[0] != graph.n_nodes:
        raise ValueError(f"{where}: x must have one row per node; got shape {tuple(x.shape)}, expected "
                         f"({graph.n_nodes}, ...) for n_nodes={graph.n_nodes}.")
    loop = fill if add_self_loops else 0.0

    def as_column(node_values: jax.Array) -> jax.Array:
        return node_values.astype(x.dtype).reshape((graph.n_nodes,) + (1,) * (x.ndim - 1))

    if norm == "none":
        out = spmm(graph, x)
        return out + loop * x if add_self_loops else out
    degree = graph.in_degree().astype(x.dtype) + loop
    if norm == "sym":
        scale = as_column(inverse_degree(graph, degree, 0.5, graph.edge_weight))
        scaled = scale * x
        out = spmm(graph, scaled)
        if add_self_loops:
            out = out + loop * scaled
        return scale * out
    scale = as_column(inverse_degree(graph, degree, 1.0, graph.edge_weight))
    out = spmm(graph, x)
    if add_self_loops:
        out = out + loop * x
    return scale * out
