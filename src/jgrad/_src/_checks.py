"""Validators for graph input, and the checkify checks that the opt-in checked mode adds.

Two kinds of check:
  * static checks (rank, dtype, shape agreement, static ints) run always, even while tracing;
  * value checks (indices in range, finite weights) run only when the values are concrete, i.e. outside
    ``jit``/``vmap``. Inside compiled code `jgrad.checked` (``graph/_checked.py``) re-runs them with
    ``jax.experimental.checkify``, and only there (see `checking`).

Messages follow ``<where>: <what is wrong>; got <value>, expected <rule>.`` and list every problem found.
"""

from __future__ import annotations

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
    if not is_concrete(senders, receivers):
        return jnp.asarray(senders, jnp.int32), jnp.asarray(receivers, jnp.int32)
    # Check before the int32 cast, which would wrap out-of-range int64 values into range.
    problems = _index_problems("senders", np.asarray(senders), n_nodes)
    problems += _index_problems("receivers", np.asarray(receivers), n_nodes)
    if problems:
        raise ValueError(f"{where}: " + " ".join(problems))
    # Concrete indices stay concrete inside jit (NumPy ones would become traced constants there), so a
    # graph built from them inside a jitted function can still be planned, like one closed over.
    with jax.ensure_compile_time_eval():
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
    segment reductions: a silently wrong result rather than an error. On traced values it adds the same
    checks (and finite weights) as ``checkify.debug_check``s instead, under `checked` only (see
    `graph_debug_checks` and `checking`).
    """
    if graph.n_edges == 0:
        return
    if not is_concrete(graph.senders, graph.receivers, graph.edge_mask, graph.edge_weight):
        graph_debug_checks(where, graph)
    if not is_concrete(graph.senders, graph.receivers, graph.edge_mask):
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
# The value checks inside compiled code, via checkify (`jgrad.checked` runs them; ``graph/_checked.py``).
#
# Two kinds of checkify check are used. `checked` adds plain ``checkify.check``s at its boundary (it
# always functionalizes them). Library ops add ``checkify.debug_check``s where they meet traced
# indices, but only while `checked` traces (`checking`): a debug check is dropped from the compiled
# program, yet its effect stays on the traced function and turns off ``jax.jit``'s fast dispatch,
# which cost 0.3-0.4 ms per call (a Cora GCN training step took 5.6 instead of 5.2 ms).
# --------------------------------------------------------------------------------------------------
_CHECKING = jax.make_user_context(default_value=False)


def checking():
    """Context in which jgrad's ops add their debug checks (`checked` enters it around each call).

    It is part of ``jax.jit``'s cache key, so a jitted function traced before, outside it, is traced
    again inside it, with the checks.
    """
    return _CHECKING(True)


def not_checking():
    """Context without the ops' debug checks, for traces cached across calls (`jgrad._src._op.Op`)."""
    return _CHECKING(False)


def debug_checks_on() -> bool:
    """Whether ops should add their ``checkify.debug_check``s now (inside `checking`)."""
    return bool(_CHECKING.value)


def graph_value_checks(graph: Any, where: str = "Graph", *, debug: bool = False) -> None:
    """Adds checkify checks (indices in range, finite weights) for a Graph; use under `checkify`.

    With ``debug=True`` the checks are ``checkify.debug_check``s, added only inside `checking`.
    """
    if debug and not debug_checks_on():
        return
    n = graph.n_nodes
    if graph.n_edges == 0:  # nothing to check, and argmin of an empty array is an error
        return
    live = graph.edge_mask
    for name in ("senders", "receivers"):
        index_range_check(where, name, getattr(graph, name), n, "n_nodes", live=live, debug=debug)
    if graph.edge_weight is not None:
        finite = jnp.isfinite(graph.edge_weight).reshape(graph.n_edges, -1).all(axis=1)
        if live is not None:
            finite = finite | ~live
        first_bad = jnp.argmin(finite)
        _check(debug)(
            jnp.all(finite),
            f"{where}: edge_weight[{{position}}] is not finite; got {{value}}, expected finite weights.",
            position=first_bad,
            value=graph.edge_weight.reshape(graph.n_edges, -1)[first_bad, 0],
        )


def graph_debug_checks(where: str, graph: Any) -> None:
    """`graph_value_checks` as debug checks, for ops that meet a traced graph (``where`` names the op)."""
    graph_value_checks(graph, where, debug=True)


def index_range_check(
    where: str,
    name: str,
    index: Any,
    bound: int,
    bound_name: str,
    *,
    live: Any = None,
    debug: bool = True,
) -> None:
    """Adds a checkify check that ``0 <= index[i] < bound`` wherever ``live[i]`` (all i if ``live`` is None).

    The message names the first bad position and value:
    ``<where>: <name>[3]=7 is out of range; expected 0 <= index < <bound_name>=5.``
    With ``debug`` (the default) it is a ``checkify.debug_check``, added only inside `checking`.
    """
    if debug and not debug_checks_on():
        return
    index = jnp.asarray(index)
    if index.size == 0:
        return
    valid = (index >= 0) & (index < bound)
    if live is not None:
        valid = valid | ~jnp.asarray(live, bool)
    if index.ndim == 0:
        _check(debug)(valid, f"{where}: {name}={{value}} is out of range; expected 0 <= {name} < {bound_name}={bound}.",
                      value=index)
        return
    flat = valid.reshape(-1)
    first_bad = jnp.argmin(flat)
    _check(debug)(
        jnp.all(flat),
        f"{where}: {name}[{{position}}]={{value}} is out of range; expected 0 <= index < {bound_name}={bound}.",
        position=first_bad,
        value=index.reshape(-1)[first_bad],
    )


def label_checks(where: str, labels: Any, n_classes: int, mask: Any = None) -> None:
    """Debug-checks class labels: ``0 <= labels[i] < n_classes`` wherever ``mask[i]``.

    A label of -1 (a common "unlabelled" marker) would otherwise be read as the last class by
    ``take_along_axis``; reported only under `checked` (a ``checkify.debug_check``).
    """
    index_range_check(where, "labels", labels, n_classes, "n_classes", live=mask, debug=True)


def _check(debug: bool) -> Callable[..., None]:
    return checkify.debug_check if debug else checkify.check


def finite_checks(where: str, name: str, value: Any, location: str = "") -> None:
    """Adds checkify checks that the float array ``value`` is finite, naming its first bad element.

    Use under `checkify` (`checked` calls it on its floating-point arguments); integer and boolean
    arrays are ignored. NaN is refused everywhere; ``inf`` is refused in arrays of rank >= 1 and
    allowed in scalars, which serve as sentinels (``TrainState.best_val_loss`` starts at ``inf``).
    """
    if not (hasattr(value, "dtype") and jnp.issubdtype(value.dtype, jnp.inexact)) or value.size == 0:
        return
    bad = jnp.isnan(value) if value.ndim == 0 else ~jnp.isfinite(value)
    flat = bad.reshape(-1)
    first_bad = jnp.argmax(flat)
    rule = "not NaN (a scalar may be infinite)" if value.ndim == 0 else "finite values"
    checkify.check(
        ~jnp.any(flat),
        f"{where}: {name} is not finite; got {{value}} at flat index {{position}} of shape "
        f"{tuple(value.shape)}{location}, expected {rule}.",
        value=value.reshape(-1)[first_bad],
        position=first_bad,
    )


class GraphBase:
    """The base class of `jgrad.Graph`, so that `check_graph` needs no import of the graph package
    (which builds on this module)."""

    __slots__ = ()


def check_graph(where: str, value: Any) -> None:
    """Raises a TypeError naming what was passed where a `Graph` belongs. An array there is most often
    PyG's argument order, ``conv(x, edge_index)``, where jgrad's is ``conv(graph, x)``."""
    if isinstance(value, GraphBase):
        return
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        raise TypeError(f"{where}: graph must be a jgrad.Graph; got an array of dtype {value.dtype} and shape "
                        f"{tuple(value.shape)}. The graph comes first (op(graph, x), layer(graph, x)); a PyG "
                        "edge_index (2, E) becomes one with jgrad.Graph.from_edge_index(edge_index).")
    raise TypeError(f"{where}: graph must be a jgrad.Graph; got {type(value).__name__}.")


def check_same_weighting(where: str, graphs: list) -> None:
    """Raises unless ``graphs`` are all unweighted, or all weighted with edge weights of one trailing
    shape: what combining them into one batch (`jgrad.batch`, `jgrad.parallel.stack_graphs`) needs."""
    unweighted = [i for i, g in enumerate(graphs) if g.edge_weight is None]
    if 0 < len(unweighted) < len(graphs):
        raise ValueError(
            f"{where}: graphs must be all weighted or all unweighted; graphs {unweighted[:5]} have no "
            "edge_weight. Give them weights of ones with g.with_edge_weight(jnp.ones(g.n_edges))."
        )
    if unweighted:
        return
    shapes = [tuple(np.shape(g.edge_weight)[1:]) for g in graphs]
    if len(set(shapes)) > 1:
        listed = ", ".join(f"graphs[{i}]: (E, {', '.join(map(str, s))})" if s else f"graphs[{i}]: (E,)"
                           for i, s in enumerate(shapes[:5]))
        raise ValueError(f"{where}: edge weights must have the same trailing shape; got {listed}.")
