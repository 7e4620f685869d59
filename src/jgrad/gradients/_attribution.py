"""Batched gradient studies: per-target saliency and integrated gradients over edge weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ..graph import Graph
from ._edge import edge_grad, trace_of_weights, tracked_weights


def saliency(
    fn: Callable[..., jax.Array],
    graph: Graph,
    *args: Any,
    targets: jax.typing.ArrayLike,
    chunk_size: int | None = None,
) -> jax.Array:
    """Per-target edge saliency: the Jacobian of node outputs w.r.t. the edge weights, target rows only.

    Semantics: ``out[t, e] = d fn(graph, *args)[targets[t]] / d w[e]`` for a per-node scalar output
    ``fn(graph, *args)`` of shape (N,) (e.g. the loss or the logit of the predicted class at each node).

    One forward pass is shared by all targets (``jax.vjp``); the pullback is ``vmap``-ed over one-hot
    cotangents, one per target.

    Args:
      fn: ``fn(graph, *args) -> (N,)`` node outputs.
      graph: the graph; an unweighted graph is differentiated at weights of ones.
      *args: further arguments of ``fn``.
      targets: (T,) integer node indices (keyword-only).
      chunk_size: if given, targets are processed ``chunk_size`` at a time (``jax.lax.map`` with
        ``batch_size``), bounding the backward's working memory (keyword-only).

    Returns:
      (T, E) in the weights' dtype; row t is `edge_grad` of ``fn(...)[targets[t]]``.

    Notes:
      Memory: the result is T x E; the vmapped backward additionally holds T copies of the
      backward activations, O(T·(N·F + E)). With ``chunk_size=C`` that working set is O(C·(N·F + E))
      (the T x E result remains). jit-safe; ``targets`` may be traced, its length is static.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> from jgrad.gradients import saliency
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 2], n_nodes=3)
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> saliency(lambda g, x: jgrad.ops.spmm(g, x), g, x, targets=jnp.array([2, 1])).tolist()
      [[0.0, 2.0], [1.0, 0.0]]
    """
    where = "saliency"
    weight = tracked_weights(where, graph)
    targets = jnp.asarray(targets)
    if targets.ndim != 1 or not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"{where}: targets must be a 1-D integer array of node indices; got shape "
                         f"{tuple(targets.shape)} and dtype {targets.dtype}.")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"{where}: chunk_size must be a positive int or None; got {chunk_size!r}.")

    try:
        _, outputs = trace_of_weights(fn, graph, args, weight)  # an nnx.jit-wrapped fn too
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        def outputs(w):  # fn reads concrete values: differentiate it as it runs
            return fn(graph.with_edge_weight(w), *args)
    out, pullback = jax.vjp(outputs, weight)
    if out.shape != (graph.n_nodes,):
        raise ValueError(f"{where}: fn must return one scalar per node; got shape {tuple(out.shape)}, "
                         f"expected ({graph.n_nodes},).")

    def one(target):
        cotangent = jnp.zeros(out.shape, out.dtype).at[target].set(1)
        return pullback(cotangent)[0]

    if chunk_size is None:
        return jax.vmap(one)(targets)
    return jax.lax.map(one, targets, batch_size=chunk_size)


def integrated_gradients(
    fn: Callable[..., jax.Array],
    graph: Graph,
    *args: Any,
    baseline: jax.typing.ArrayLike | None = None,
    steps: int = 50,
    chunk_size: int | None = None,
) -> jax.Array:
    """Integrated gradients of a scalar ``fn(graph, *args)`` w.r.t. the edge weights.

    Semantics, with ``w`` the weights (ones if unweighted), ``b`` the baseline and the midpoint rule::

        attribution[e] = (w[e] - b[e]) * mean_{s=0..steps-1} dfn/dw[e] at b + (s + 1/2)/steps * (w - b)

    The ``steps`` gradients are one `edge_grad` vmapped over a (steps, E) batch of weight vectors.
    Completeness: ``sum(attribution) ≈ fn(w) - fn(b)``, with error O(1/steps^2) for a smooth model.

    Args:
      fn: ``fn(graph, *args) -> scalar``.
      graph: the graph.
      *args: further arguments of ``fn``.
      baseline: (E,) weights of the reference graph; default zeros (every edge removed).
      steps: number of points on the path (a positive int).
      chunk_size: evaluate the path points ``chunk_size`` at a time (``jax.lax.map``) to bound memory.

    Returns:
      (E,) attributions in the weights' dtype.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> from jgrad.gradients import integrated_gradients
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 1], n_nodes=2)
      >>> x = jnp.array([[2.0], [3.0]])
      >>> integrated_gradients(lambda g, x: jgrad.ops.spmm(g, x).sum(), g, x).tolist()  # linear: exact
      [2.0, 3.0]
    """
    where = "integrated_gradients"
    weight = tracked_weights(where, graph)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{where}: steps must be a positive int; got {steps!r}.")
    baseline = jnp.zeros_like(weight) if baseline is None else jnp.asarray(baseline, weight.dtype)
    if baseline.shape != weight.shape:
        raise ValueError(f"{where}: baseline must have the weights' shape; got {tuple(baseline.shape)}, "
                         f"expected {tuple(weight.shape)}.")
    alphas = (jnp.arange(steps, dtype=weight.dtype) + 0.5) / steps
    path = baseline[None] + alphas.reshape((steps,) + (1,) * weight.ndim) * (weight - baseline)[None]

    def grad_at(w):
        return edge_grad(fn, graph.with_edge_weight(w), *args)

    if chunk_size is None:
        grads = jax.vmap(grad_at)(path)
    else:
        grads = jax.lax.map(grad_at, path, batch_size=chunk_size)
    return (weight - baseline) * jnp.mean(grads, axis=0)
