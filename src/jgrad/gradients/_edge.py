"""Gradient of a scalar model output w.r.t. the edge weights of its graph."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ..graph import Graph


def float_dtype() -> Any:
    """The default float dtype: float64 when x64 is enabled, else float32."""
    return jnp.zeros((), float).dtype


def tracked_weights(where: str, graph: Graph) -> jax.Array:
    """The graph's weights as the differentiation point: ``edge_weight``, or ones if unweighted.

    Padding edges keep their stored value; every jgrad op masks them, so their gradient is 0.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"{where}: graph must be a jgrad.Graph; got {type(graph).__name__}.")
    if graph.edge_weight is None:
        return jnp.ones((graph.n_edges,), float_dtype())
    weight = jnp.asarray(graph.edge_weight)
    if not jnp.issubdtype(weight.dtype, jnp.floating):
        raise TypeError(f"{where}: graph.edge_weight must be a float array; got dtype {weight.dtype}.")
    return weight


def check_scalar(where: str, value: Any) -> None:
    shape = getattr(value, "shape", None)
    if shape is None or tuple(shape) != ():
        raise ValueError(f"{where}: fn must return a scalar; got {type(value).__name__} of shape {shape}, "
                         "expected (). Reduce the output, e.g. with a loss or .sum().")


def edge_grad(fn: Callable[..., jax.Array], graph: Graph, *args: Any) -> jax.Array:
    """The gradient of a scalar ``fn(graph, *args)`` w.r.t. the graph's edge weights.

    Semantics: ``dL/dw[e]`` with ``L = fn(graph.with_edge_weight(w), *args)`` at ``w = graph.edge_weight``,
    or at ``w = ones(E)`` for an unweighted graph (an unweighted graph is a weighted one with unit weights).

    Args:
      fn: ``fn(graph, *args) -> scalar``, a JAX-traceable function of a `jgrad.Graph`.
      graph: the graph; its ``edge_weight`` (E,) or (E, ...), or none.
      *args: further arguments of ``fn`` (parameters, features, labels), passed unchanged.

    Returns:
      dL/dw with the weights' shape, (E,) for an unweighted graph, in their dtype (the default float
      dtype for an unweighted graph: float32, or float64 under x64). Padding edges get 0.

    Raises:
      TypeError: ``graph`` is not a Graph or has non-float weights.
      ValueError: ``fn`` does not return a scalar.

    Notes:
      Plain reverse mode through jgrad's custom VJPs: one forward and one backward pass, O(N·F + E)
      memory. Works under ``jit`` and ``vmap``: to study many weight vectors at once, vmap over the
      weights, e.g. ``jax.vmap(lambda w: edge_grad(fn, graph.with_edge_weight(w), x))(W)`` for W of
      shape (B, E), or over parameters of many models, ``jax.vmap(lambda p: edge_grad(fn, graph, p))``.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 1], n_nodes=2)
      >>> x = jnp.array([[2.0], [3.0]])
      >>> jgrad.edge_grad(lambda g, x: jgrad.ops.spmm(g, x).sum(), g, x).tolist()
      [2.0, 3.0]
    """
    weight = tracked_weights("edge_grad", graph)

    def loss(w: jax.Array) -> jax.Array:
        value = fn(graph.with_edge_weight(w), *args)
        check_scalar("edge_grad", value)
        return value

    return jax.grad(loss)(weight)
