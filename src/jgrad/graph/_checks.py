"""Validators for graph input, and the opt-in checked mode for compiled code.

Two kinds of check:
  * static checks (rank, dtype, shape agreement, static ints) run always, even while tracing;
  * value checks (indices in range, finite weights) run only when the values are concrete, i.e. outside
    ``jit``/``vmap``. Inside compiled code use `checked`, which re-runs them with
    ``jax.experimental.checkify``.

Messages follow ``<where>: <what is wrong>; got <value>, expected <rule>.`` and list every problem found.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

_MAX_LISTED = 5  # how many offending positions a message names before summarising


def is_concrete(*values: Any) -> bool:
    """True when no value is a tracer, so value checks can run on the host."""
    return not any(isinstance(v, jax.core.Tracer) for v in values)


def check_n_nodes(where: str, n_nodes: Any, name: str = "n_nodes") -> int:
    """Checks a static non-negative int; ``name`` is the argument named in messages."""
    if isinstance(n_nodes, jax.core.Tracer):
        raise TypeError(
            f"{where}: {name} must be a static Python int, not a traced value; got {n_nodes!r}. "
            "Mark it static (jax.jit(..., static_argnames=...)) or compute it outside jit."
        )
    if isinstance(n_nodes, (bool, np.bool_)) or not isinstance(n_nodes, (int, np.integer)):
        raise TypeError(f"{where}: {name} must be an int; got {type(n_nodes).__name__} {n_nodes!r}.")
    if n_nodes < 0:
        raise ValueError(f"{where}: {name} must be non-negative; got {n_nodes}.")
    return int(n_nodes)


def _as_index_array(where: str, name: str, value: Any) -> Any:
    """Checks dtype and rank; returns ``value`` unconverted, so range checks see the original values."""
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        value = np.asarray(value)
        if value.size == 0:
            value = value.astype(np.int32)
        dtype = value.dtype
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(
            f"{where}: {name} must have an integer dtype; got {np.dtype(dtype).name}. "
            f"Convert with {name}.astype('int32') if the values are whole numbers."
        )
    if np.ndim(value) != 1:
        raise ValueError(f"{where}: {name} must be 1-D (E,); got shape {tuple(np.shape(value))}.")
    return value


def check_edge_index(where: str, senders: Any, receivers: Any, n_nodes: int) -> tuple[jax.Array, jax.Array]:
    """Checks dtype, rank, equal length and (when concrete) range; returns int32 arrays."""
    senders = _as_index_array(where, "senders", senders)
    receivers = _as_index_array(where, "receivers", receivers)
    if np.shape(senders) != np.shape(receivers):
        raise ValueError(
            f"{where}: senders and receivers must have the same length; got {np.shape(senders)[0]} senders "
            f"and {np.shape(receivers)[0]} receivers."
        )
    if is_concrete(senders, receivers):
        # Check before the int32 cast, which would wrap out-of-range int64 values into range.
        problems = _index_problems("senders", np.asarray(senders), n_nodes)
        problems += _index_problems("receivers", np.asarray(receivers), n_nodes)
        if problems:
            raise ValueError(f"{where}: " + " ".join(problems))
    return jnp.asarray(senders, jnp.int32), jnp.asarray(receivers, jnp.int32)


def _index_problems(name: str, index: np.ndarray, n_nodes: int) -> list[str]:
    bad = np.flatnonzero((index < 0) | (index >= n_nodes))
    if bad.size == 0:
        return []
    listed = ", ".join(f"{name}[{i}]={index[i]}" for i in bad[:_MAX_LISTED])
    more = f" and {bad.size - _MAX_LISTED} more" if bad.size > _MAX_LISTED else ""
    hint = " Negative indices are not allowed." if (index[bad] < 0).any() else ""
    return [
        f"{bad.size} {name} out of range ({listed}{more}); expected 0 <= index < n_nodes={n_nodes}.{hint}"
    ]


def check_edge_weight(where: str, edge_weight: Any, n_edges: int) -> jax.Array:
    """Checks a float (E,) or (E, ...) weight array and (when concrete) that it is finite."""
    dtype = getattr(edge_weight, "dtype", None) or np.asarray(edge_weight).dtype
    if not np.issubdtype(dtype, np.floating):
        if np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_):
            edge_weight = jnp.asarray(edge_weight, jnp.float32)
        else:
            raise TypeError(f"{where}: edge_weight must be a float array; got dtype {np.dtype(dtype).name}.")
    edge_weight = jnp.asarray(edge_weight)
    if edge_weight.ndim == 0 or edge_weight.shape[0] != n_edges:
        raise ValueError(
            f"{where}: edge_weight must have one row per edge; got shape {tuple(edge_weight.shape)}, "
            f"expected ({n_edges},) or ({n_edges}, ...)."
        )
    if is_concrete(edge_weight):
        host = np.asarray(edge_weight)
        bad = np.argwhere(~np.isfinite(host))
        if bad.size:
            listed = ", ".join(f"edge_weight[{tuple(int(i) for i in b) if len(b) > 1 else int(b[0])}]="
                               f"{host[tuple(b)]}" for b in bad[:_MAX_LISTED])
            raise ValueError(
                f"{where}: edge_weight must be finite; got {len(bad)} non-finite value(s) ({listed})."
            )
    return edge_weight


def check_graph_indices(where: str, graph: Any) -> None:
    """Eagerly checks that a graph's (unmasked) indices lie in ``[0, n_nodes)``; skipped on tracers.

    Ops call this because the plain ``Graph(...)`` constructor (and any pytree rebuild) does not
    validate, and an out-of-range index would otherwise be clamped by gathers and dropped by the
    segment reductions: a silently wrong result rather than an error.
    """
    if graph.n_edges == 0 or not is_concrete(graph.senders, graph.receivers, graph.edge_mask):
        return
    live = None if graph.edge_mask is None else np.asarray(graph.edge_mask, bool)
    problems = []
    for name in ("senders", "receivers"):
        index = np.asarray(getattr(graph, name))
        if live is not None:
            index = np.where(live, index, 0)
        problems += _index_problems(name, index, graph.n_nodes)
    if problems:
        raise ValueError(
            f"{where}: the graph has indices out of range: " + " ".join(problems)
            + " Build graphs with Graph.from_edges, which validates them."
        )


def check_dense_square(where: str, adjacency: Any) -> np.ndarray:
    if isinstance(adjacency, jax.core.Tracer):
        raise TypeError(f"{where}: needs a concrete matrix (the edge count depends on its values); "
                        "call it outside jit.")
    matrix = np.asarray(adjacency)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{where}: adjacency must be a square N x N matrix; got shape {matrix.shape}.")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{where}: adjacency must be finite; got {int((~np.isfinite(matrix)).sum())} "
                         "non-finite entries.")
    return matrix


def require_concrete(where: str, *values: Any) -> None:
    """Raises a clear error when a host-side (data-dependent shape) transform meets a tracer."""
    if not is_concrete(*values):
        raise TypeError(
            f"{where}: works on concrete arrays only, because its output size depends on the values; "
            "call it outside jax.jit / jax.vmap and pass the result in."
        )


# --------------------------------------------------------------------------------------------------
# Checked mode: the value checks inside compiled code, via checkify.
# --------------------------------------------------------------------------------------------------
def graph_value_checks(graph: Any) -> None:
    """Adds checkify checks (indices in range, finite weights) for a Graph; use under `checkify`."""
    n = graph.n_nodes
    if graph.n_edges == 0:  # nothing to check, and argmin of an empty array is an error
        return
    for name in ("senders", "receivers"):
        index = getattr(graph, name)
        valid = (index >= 0) & (index < n)
        if graph.edge_mask is not None:
            valid = valid | ~graph.edge_mask
        first_bad = jnp.argmin(valid)
        checkify.check(
            jnp.all(valid),
            f"Graph: {name}[{{position}}]={{value}} is out of range; expected 0 <= index < n_nodes={n}.",
            position=first_bad,
            value=index[first_bad],
        )
    if graph.edge_weight is not None:
        finite = jnp.isfinite(graph.edge_weight).reshape(graph.n_edges, -1).all(axis=1)
        first_bad = jnp.argmin(finite)
        checkify.check(
            jnp.all(finite),
            "Graph: edge_weight[{position}] is not finite.",
            position=first_bad,
        )


def finite_checks(where: str, name: str, value: Any) -> None:
    """Adds a checkify check that the float array ``value`` is finite, naming its first bad element.

    Use under `checkify` (`checked` calls it on every floating-point argument); integer and boolean
    arrays are ignored.
    """
    if not (hasattr(value, "dtype") and jnp.issubdtype(value.dtype, jnp.inexact)) or value.size == 0:
        return
    finite = jnp.isfinite(value).reshape(-1)
    first_bad = jnp.argmin(finite)
    checkify.check(
        jnp.all(finite),
        f"{where}: {name} is not finite; got {{value}} at flat index {{position}} of shape "
        f"{tuple(value.shape)}, expected finite values.",
        value=value.reshape(-1)[first_bad],
        position=first_bad,
    )


def checked(fn: Callable[..., Any], *, jit: bool = True, finite_inputs: bool = True) -> Callable[..., Any]:
    """Wraps ``fn`` so that bad graphs and non-finite values raise even inside compiled code.

    Every `Graph` among the arguments gets its value checks (indices in ``[0, n_nodes)``, finite
    weights); with ``finite_inputs`` every other floating-point argument (e.g. node features) is checked
    to be finite; every floating-point output is checked to be finite, and checkify's NaN checks watch
    every operation. The wrapped function is compiled with ``jax.jit`` (unless ``jit=False``) and raises
    ``checkify.JaxRuntimeError`` naming the first problem. Pass ``finite_inputs=False`` when infinite
    inputs are intended (e.g. ``-inf`` logits that mask entries).

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> g = jgrad.Graph(senders=jnp.array([0, 5]), receivers=jnp.array([1, 0]), n_nodes=2)
      >>> jgrad.checked(lambda g: g.in_degree())(g)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jax...JaxRuntimeError: Graph: senders[1]=5 is out of range; expected 0 <= index < n_nodes=2...
    """
    from ._graph import Graph

    def validated(*args: Any, **kwargs: Any) -> Any:
        name = getattr(fn, "__name__", "fn")
        leaves = jax.tree_util.tree_leaves_with_path((args, kwargs), is_leaf=lambda x: isinstance(x, Graph))
        for path, leaf in leaves:
            if isinstance(leaf, Graph):
                graph_value_checks(leaf)
            elif finite_inputs:
                finite_checks(name, "argument " + _argument_name(path), leaf)
        out = fn(*args, **kwargs)
        for leaf in jax.tree.leaves(out):
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
                checkify.check(jnp.all(jnp.isfinite(leaf)), f"{name}: an output is not finite.")
        return out

    checkified = checkify.checkify(validated, errors=checkify.user_checks | checkify.nan_checks)
    compiled = jax.jit(checkified) if jit else checkified

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        error, out = compiled(*args, **kwargs)
        error.throw()
        return out

    return wrapper


def _argument_name(path: tuple) -> str:
    """``args[1]`` / ``kwargs['x']`` style name of a leaf of ``(args, kwargs)`` from its tree path."""
    head, *rest = path
    return ("args" if head.idx == 0 else "kwargs") + "".join(str(key) for key in rest)
