"""Self loops as `Graph.add_self_loops` appends them, edges E .. E + N - 1: their edge mask.

One rule, shared by `add_self_loops` and by the attention that takes the loops as terms instead of
edges (`jgrad.ops.gat_attention`): a padding node (``node_mask`` False) gets a masked-out loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def looped_edge_mask(graph) -> jax.Array | None:
    """The (E + N,) edge mask of ``graph`` with a loop per node appended: its ``edge_mask`` (E,) (or
    all True), then its ``node_mask`` (N,) (or all True); None when it has neither (all live)."""
    if graph.edge_mask is None and graph.node_mask is None:
        return None
    old = jnp.ones((graph.n_edges,), bool) if graph.edge_mask is None else graph.edge_mask
    new = jnp.ones((graph.n_nodes,), bool) if graph.node_mask is None else graph.node_mask
    return jnp.concatenate([old, new])
