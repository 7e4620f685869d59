"""Degree arithmetic shared by the graph, the ops, the layers and the gradients.

`unfolded` hides an edge index from XLA's constant folding before a sum over edges,
`safe_inverse_power` turns degrees into normalisation factors that stay finite at degree 0, and
`inverse_degree` is that power of a weighted degree, marked for `jgrad.adjacency_grad`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from . import _taps


def unfolded(index: jax.Array) -> jax.Array:
    """``index`` (E,) behind an optimisation barrier, for sums over a graph's edges such as degrees.

    A graph closed over by a jitted function has constant indices, and XLA evaluates a sum over them
    while compiling when its other operand is constant too (ones, or fixed weights): 3-17 s per
    compile at 1.6e6 edges (GCN and SAGE models, `row_norm`), for a sum that takes a millisecond.
    """
    return jax.lax.optimization_barrier(index)


def safe_inverse_power(degree: jax.Array, power: float) -> jax.Array:
    """``degree ** -power`` (N,) where degree > 0, else 0; finite gradient everywhere (0 where degree <= 0)."""
    positive = degree > 0
    safe = jnp.where(positive, degree, jnp.ones((), degree.dtype))
    return jnp.where(positive, safe ** (-power), jnp.zeros((), degree.dtype))


def inverse_degree(graph: Any, degree: jax.Array, power: float, weight: Any) -> jax.Array:
    """``safe_inverse_power(degree, power)`` (N,) for a degree of the edge weights ``weight``, marked on
    a tapped ``graph`` (``inverse_degree__row`` for power 1, ``__sym`` for 1/2): where a node's degree
    is 0 the model is not differentiable in A, which `jgrad.adjacency_grad` checks."""
    if power not in (0.5, 1.0):
        raise ValueError(f"inverse_degree: power must be 0.5 or 1; got {power}.")
    inverse = safe_inverse_power(degree, power)
    if weight is None:
        return inverse
    return _taps.mark(graph, "inverse_degree__" + ("row" if power == 1.0 else "sym"), inverse, degree, weight)
