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

from .._types import check_callable, check_flags

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
    segment reductions: a silently wrong result rather than an error. On traced values it adds the same
    checks (and finite weights) as ``checkify.debug_check``s instead, see `graph_debug_checks`.
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


def check_batch_fields(where: str, graph: Any) -> None:
    """Checks a (possibly raw-constructed) batch before host-side splitting: its type and the shapes and
    dtypes of ``n_node_per_graph``, ``graph_mask``, ``node_mask``, ``edge_mask`` and ``edge_weight``.

    All problems are reported together in one ``ValueError``; a wrong type or dtype is a ``TypeError``.
    """
    from ._graph import Graph

    if not isinstance(graph, Graph):
        raise TypeError(f"{where}: graph must be a jgrad.Graph; got {type(graph).__name__}, expected a batch "
                        "made by jgrad.batch.")
    counts = graph.n_node_per_graph
    if counts is None:
        return
    dtype = np.dtype(getattr(counts, "dtype", None) or np.asarray(counts).dtype)  # no host copy of tracers
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"{where}: n_node_per_graph must have an integer dtype; got {dtype.name}, expected int32 "
                        "node counts.")
    problems = []
    if np.ndim(counts) != 1:
        problems.append(f"n_node_per_graph must be 1-D; got shape {tuple(np.shape(counts))}, expected (G,).")
    n_graphs = np.shape(counts)[0] if np.ndim(counts) == 1 else None
    expected = {"graph_mask": (n_graphs,), "node_mask": (graph.n_nodes,), "edge_mask": (graph.n_edges,)}
    for name, shape in expected.items():
        value = getattr(graph, name)
        if value is not None and shape[0] is not None and tuple(np.shape(value)) != shape:
            problems.append(f"{name} has the wrong shape; got {tuple(np.shape(value))}, expected {shape}.")
    weight = graph.edge_weight
    if weight is not None and (np.ndim(weight) == 0 or np.shape(weight)[0] != graph.n_edges):
        problems.append(f"edge_weight must have one row per edge; got shape {tuple(np.shape(weight))}, "
                        f"expected ({graph.n_edges}, ...).")
    if problems:
        raise ValueError(f"{where}: " + " ".join(problems))


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
#
# Two kinds of checkify check are used. `checked` adds plain ``checkify.check``s at its boundary (it
# always functionalizes them). Library ops add ``checkify.debug_check``s where they meet traced
# indices: those are checked only under ``checkify`` (so under `checked`) and are dropped, with the
# arithmetic that feeds them, everywhere else, so plain ``jax.jit`` and cached traces are unaffected.
# --------------------------------------------------------------------------------------------------
def graph_value_checks(graph: Any, where: str = "Graph", *, debug: bool = False) -> None:
    """Adds checkify checks (indices in range, finite weights) for a Graph; use under `checkify`.

    With ``debug=True`` the checks are ``checkify.debug_check``s: no-ops unless functionalized.
    """
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
    """
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


CHECKED_ERRORS = checkify.user_checks | checkify.nan_checks | checkify.index_checks


def checked(
    fn: Callable[..., Any], *, jit: bool = True, finite_inputs: bool = True, index_checks: bool = True
) -> Callable[..., Any]:
    """Wraps ``fn`` so that bad graphs, indices and non-finite values raise even inside compiled code.

    What is checked, at run time, with ``jax.experimental.checkify``:

    - every `Graph` among the arguments: indices in ``[0, n_nodes)`` and finite weights on its real
      edges (with ``index_checks``, the gathers and scatters of padding edges must be in range too, as
      `jgrad.pad` makes them; ``index_checks=False`` lets padding edges hold any index);
    - every graph an op meets inside ``fn``, including graphs built or changed there: the ops
      (`jgrad.ops`, degrees, ``to_dense``) check the graph's indices and weights at the op and name it
      (e.g. ``spmm: receivers[1]=3 is out of range``);
    - segment ids of the ``jgrad.ops.segment_*`` reductions in ``[0, num_segments)`` (masked entries
      excepted), and class labels of the library's loss in ``[0, n_classes)`` where the loss mask is
      set (so a label of -1 is reported);
    - with ``index_checks``, every gather and scatter (``x[idx]``, ``.at[idx]``) in range (checkify's
      index checks; negative indices count from the end as in NumPy and are allowed);
    - with ``finite_inputs``, every floating-point argument that is not a graph: no NaN, and no
      ``inf`` except in scalars (sentinels such as ``TrainState.best_val_loss = inf`` of a fresh state
      pass);
    - every floating-point output by the same rule (no NaN; no ``inf`` except in scalars), and no
      operation creating a NaN (checkify's NaN checks).

    The op-level checks are ``checkify.debug_check``s, so outside `checked` they cost nothing and
    leave plain ``jax.jit`` untouched. ``checked(fn)`` may itself be wrapped in ``jax.jit``: then a
    failed check raises ``jax.errors.JaxRuntimeError`` from the compiled call (through a host
    callback), with the check's message at the end.

    Args:
      fn: the function to check.
      jit: compile the checked function with ``jax.jit`` (default).
      finite_inputs: check floating-point arguments as above; pass False when infinite inputs are
        intended (e.g. ``-inf`` logits that mask entries).
      index_checks: check every gather and scatter. checkify cannot process some scatters (in jax
        0.10, the gradient of ``jnp.take_along_axis``); ``checked`` then raises NotImplementedError
        saying so, and ``index_checks=False`` keeps every other check.

    Returns:
      A function with ``fn``'s signature and outputs that raises ``checkify.JaxRuntimeError`` naming
      the first problem.

    Raises:
      TypeError: a non-callable ``fn`` or a non-bool flag.
      NotImplementedError: (when called) ``fn`` has an operation that checkify's index checks cannot
        process.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> g = jgrad.Graph(senders=jnp.array([0, 5]), receivers=jnp.array([1, 0]), n_nodes=2)
      >>> jgrad.checked(lambda g: g.in_degree())(g)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jax...JaxRuntimeError: Graph: senders[1]=5 is out of range; expected 0 <= index < n_nodes=2...
    """
    from ._graph import Graph

    check_callable("checked", fn, "a function of arrays and graphs")
    check_flags("checked", jit=jit, finite_inputs=finite_inputs, index_checks=index_checks)
    name = getattr(fn, "__name__", "fn")

    def validated(*args: Any, **kwargs: Any) -> Any:
        leaves = jax.tree_util.tree_leaves_with_path((args, kwargs), is_leaf=lambda x: isinstance(x, Graph))
        for path, leaf in leaves:
            if isinstance(leaf, Graph):
                graph_value_checks(leaf)
            elif finite_inputs:
                finite_checks(name, "argument " + _argument_name(path), leaf)
        out = fn(*args, **kwargs)
        for path, leaf in jax.tree_util.tree_leaves_with_path(out):
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
                finite_checks(name, "an output", leaf, f" in out{jax.tree_util.keystr(path)}")
        return out

    errors = CHECKED_ERRORS if index_checks else CHECKED_ERRORS - checkify.index_checks
    checkified = checkify.checkify(validated, errors=errors)
    compiled = jax.jit(checkified) if jit else checkified

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            error, out = compiled(*args, **kwargs)
        except IndexError as failure:
            if not index_checks:
                raise
            try:  # does fn trace without checkify's index checks? Then they are what failed.
                without = checkify.checkify(validated, errors=CHECKED_ERRORS - checkify.index_checks)
                jax.eval_shape(without, *args, **kwargs)
            except Exception:
                raise failure from None
            raise NotImplementedError(
                f"checked: checkify's index checks cannot process an operation of {name} (a JAX "
                f"limitation, e.g. the gradient of jnp.take_along_axis); got IndexError: {failure}, "
                "expected a gather or scatter it supports. Pass index_checks=False to keep every other "
                "check, or index with x[rows, cols] instead of take_along_axis."
            ) from failure
        if is_concrete(*jax.tree.leaves(error)):
            error.throw()
        else:  # inside the caller's jit / vmap: raise when the compiled code runs
            jax.debug.callback(_throw, error)
        return out

    return wrapper


def _throw(error: Any) -> None:
    error.throw()


def _argument_name(path: tuple) -> str:
    """``args[1]`` / ``kwargs['x']`` style name of a leaf of ``(args, kwargs)`` from its tree path."""
    head, *rest = path
    return ("args" if head.idx == 0 else "kwargs") + "".join(str(key) for key in rest)
