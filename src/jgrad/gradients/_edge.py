"""Gradient of a scalar model output w.r.t. the edge weights of its graph."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from .._src._checks import check_graph, is_concrete
from ..graph import Graph
from .._src._search import edges_without_reverse
from ._compile import Call, rebuild_args, run_cached, split_arrays


def float_dtype() -> Any:
    """The default float dtype: float64 when x64 is enabled, else float32."""
    return jnp.zeros((), float).dtype


def tracked_weights(where: str, graph: Graph) -> jax.Array:
    """The graph's weights as the differentiation point: ``edge_weight``, or ones if unweighted.

    Padding edges keep their stored value; every jgrad op masks them, so their gradient is 0.
    """
    check_graph(where, graph)
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


class PairGrad(NamedTuple):
    """The gradient w.r.t. one shared weight per undirected pair, ``edge_grad(..., symmetric=True)``.

    Attributes:
      values: (P,) ``dL/da_ij = sum of dL/dw[e]`` over every edge e between i and j, in either
        direction (``g(i -> j) + g(j -> i)`` for an undirected graph storing each direction once;
        a self loop's own gradient for ``i == j``).
      rows: (P,) int32, the smaller node i of each pair.
      cols: (P,) int32, the larger node j (``rows <= cols``).

    Pairs are distinct and sorted by ``(rows, cols)``; padding edges belong to no pair. With concrete
    edge indices P is the number of distinct pairs. Under ``jit`` (traced indices) P is E: the
    distinct pairs come first and the tail has ``rows = cols = -1`` and value 0.
    ``adjacency_grad(..., symmetric=True).at(rows, cols)`` equals ``values`` when each direction of
    each pair is stored once.
    """

    values: jax.Array
    rows: jax.Array
    cols: jax.Array


def edge_grad(fn: Callable[..., jax.Array], graph: Graph, *args: Any, symmetric: bool = False) -> Any:
    """The gradient of a scalar ``fn(graph, *args)`` w.r.t. the graph's edge weights.

    Semantics: ``dL/dw[e]`` with ``L = fn(graph.with_edge_weight(w), *args)`` at ``w = graph.edge_weight``,
    or at ``w = ones(E)`` for an unweighted graph (an unweighted graph is a weighted one with unit weights).
    With ``symmetric=True``, one value per undirected pair ``{i, j}``: the gradient w.r.t. a weight
    ``a_ij`` shared by all the edges between i and j, ``sum_e dL/dw[e]`` over those edges (see `PairGrad`).

    Args:
      fn: ``fn(graph, *args) -> scalar``, a JAX-traceable function of a `jgrad.Graph`.
      graph: the graph; its ``edge_weight`` (E,) or (E, ...), or none ((E,) for ``symmetric``).
      *args: further arguments of ``fn`` (parameters, features, labels), passed unchanged.
      symmetric: return a `PairGrad` for an undirected graph (keyword-only).

    Returns:
      dL/dw with the weights' shape, (E,) for an unweighted graph, in their dtype (the default float
      dtype for an unweighted graph: float32, or float64 under x64). Padding edges get 0. With
      ``symmetric``, a `PairGrad` of (P,) arrays.

    Raises:
      TypeError: ``graph`` is not a Graph or has non-float weights.
      ValueError: ``fn`` does not return a scalar; ``symmetric`` with weights of shape other than (E,);
        ``symmetric`` on a directed graph: a real edge ``u -> v`` (``u != v``) without a real
        ``v -> u``, whose pair value would hold only the stored direction while
        ``adjacency_grad(..., symmetric=True)`` adds both. Checked on the host when the edge indices
        (and ``edge_mask``) are concrete; under ``jit`` (traced indices) it cannot be checked, and such
        a pair gets the stored direction's gradient.

    Notes:
      Plain reverse mode through jgrad's backward passes: one forward and one backward pass, O(N·F + E)
      memory, compiled with ``jax.jit`` once per model and reused while fn, the structure of args and
      what fn reads are unchanged (the cache `adjacency_grad` uses); a fn that needs concrete values
      (Python control flow on array values) runs eagerly instead. Works under ``jit`` and ``vmap``: to study many weight vectors at once, vmap over the
      weights, e.g. ``jax.vmap(lambda w: edge_grad(fn, graph.with_edge_weight(w), x))(W)`` for W of
      shape (B, E), or over parameters of many models, ``jax.vmap(lambda p: edge_grad(fn, graph, p))``.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 1], n_nodes=2)
      >>> x = jnp.array([[2.0], [3.0]])
      >>> jgrad.edge_grad(lambda g, x: jgrad.ops.spmm(g, x).sum(), g, x).tolist()
      [2.0, 3.0]
      >>> u = jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2)   # one undirected edge {0, 1}
      >>> pair = jgrad.edge_grad(lambda g, x: jgrad.ops.spmm(g, x).sum(), u, x, symmetric=True)
      >>> pair.values.tolist(), pair.rows.tolist(), pair.cols.tolist()   # 2 + 3: both directions
      ([5.0], [0], [1])
    """
    where = "edge_grad"
    weight = tracked_weights(where, graph)
    if symmetric and weight.ndim != 1:
        raise ValueError(f"{where}: symmetric=True needs one scalar weight per edge; got edge_weight of "
                         f"shape {tuple(weight.shape)}, expected ({graph.n_edges},).")
    if symmetric:
        _raise_if_directed(where, graph)

    try:
        grad = run_cached(_edge_build, fn, args, ("edge",), graph, weight)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        grad = _weight_grad(fn, graph, weight, args)  # fn reads concrete values: run it eagerly
    return pair_sums(graph, grad) if symmetric else grad


def _edge_build(graph: Graph, weight: jax.Array, arrays: list, *, call: Call) -> jax.Array:
    """`_weight_grad` of ``call.fn`` with the args rebuilt from their arrays (compiled by `run_cached`)."""
    traced, loss = trace_of_weights(_scalar(call.fn), graph, rebuild_args(call, arrays), weight)
    check_weights_used("edge_grad", traced)  # fn traced once, for the check and the gradient
    return jax.grad(loss)(weight)


def trace_of_weights(fn, graph: Graph, args: tuple, weight: jax.Array):
    """``(traced, f)``: the jaxpr of ``w -> fn(graph.with_edge_weight(w), *args)`` and ``f`` evaluating
    it, a function of w alone.

    The array leaves of args are inputs of the same trace, after w (other leaves stay Python values):
    an ``nnx.jit``-wrapped fn updates its module's variables, which flax allows only at the trace
    level they were made at, so a closure over them inside a new trace fails.
    """
    inputs, rebuild = split_arrays(args)

    def of_inputs(w, *inputs):
        return fn(graph.with_edge_weight(w), *rebuild(list(inputs)))

    traced = jax.make_jaxpr(of_inputs)(weight, *inputs)
    return traced, lambda w: jex_core.jaxpr_as_fun(traced)(w, *inputs)[0]


def _scalar(fn) -> Callable[..., jax.Array]:
    """``fn(graph, *args)``, checked to return a scalar."""

    def loss(graph: Graph, *args: Any) -> jax.Array:
        value = fn(graph, *args)
        check_scalar("edge_grad", value)
        return value

    return loss


def _weight_grad(fn, graph: Graph, weight: jax.Array, args: tuple) -> jax.Array:
    """dL/dw at ``weight`` by one ``jax.grad`` of ``fn(graph.with_edge_weight(w), *args)``, run as it is."""
    return jax.grad(lambda w: _scalar(fn)(graph.with_edge_weight(w), *args))(weight)


def check_weights_used(where: str, traced: jex_core.ClosedJaxpr) -> None:
    """Raises if the traced loss of the weights, ``w -> L``, does not depend on them at all, so that its
    gradient would be 0 on every edge (or pair): the loss reads another graph than its argument (a
    closure over ``data.graph``), or only ops that ignore the weights (``gspmm(op='copy_u')``).

    Dependence is followed forward through the program, into the bodies of calls (``jit``,
    ``nnx.jit``, custom derivatives), whose arguments are passed whole (a loss wrapped in ``jit`` gets
    the graph as an argument even when it reads another one); any other equation with a dependent
    operand counts as dependent in all its outputs, so a loss is never wrongly said to ignore them.
    """
    if not _depends(traced.jaxpr, [True] + [False] * (len(traced.jaxpr.invars) - 1))[0]:
        raise ValueError(
            f"{where}: fn does not use the edge weights of the graph it is given; got a loss whose gradient "
            "would be 0 everywhere. Either it reads another graph than its argument (e.g. a closure over "
            "data.graph: use the graph fn receives), or its ops ignore the weights, as gspmm(op='copy_u') "
            "does (an unweighted graph is differentiated at weights of ones): weigh the messages by the "
            "graph's weights, jgrad.ops.spmm(graph, x) or gspmm(graph, 'u_mul_e', reduce, x, graph.edge_weight)."
        )


def _depends(jaxpr, dependent_inputs: list[bool]) -> list[bool]:
    """Which outputs of ``jaxpr`` depend on the inputs flagged in ``dependent_inputs`` (see
    `check_weights_used`)."""
    dependent = {var for var, flag in zip(jaxpr.invars, dependent_inputs) if flag}
    is_dependent = lambda v: not isinstance(v, jex_core.Literal) and v in dependent
    for eqn in jaxpr.eqns:
        flags = [is_dependent(v) for v in eqn.invars]
        if not any(flags):
            continue
        body = _call_body(eqn)
        if body is None:
            dependent.update(eqn.outvars)
        else:
            dependent.update(v for v, flag in zip(eqn.outvars, _depends(body, flags)) if flag)
    return [is_dependent(v) for v in jaxpr.outvars]


def _call_body(eqn):
    """The jaxpr an equation calls with its own operands and results one for one (``jit``, ``nnx.jit``,
    custom derivatives), or None."""
    for name in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        body = eqn.params.get(name)
        body = getattr(body, "jaxpr", body)  # a ClosedJaxpr's jaxpr
        if isinstance(body, jex_core.Jaxpr) and len(body.invars) == len(eqn.invars) and \
                len(body.outvars) == len(eqn.outvars):
            return body  # its constants (constvars) depend on nothing
    return None


def _raise_if_directed(where: str, graph: Graph) -> None:
    """Raises if a real edge ``u -> v`` (``u != v``) has no real ``v -> u``; O(E log E) on the host.

    Does nothing when the indices or the edge mask are traced (under ``jit``). Padding edges (and
    self loops, such as `jgrad.pad`'s on a padding node) need no counterpart.
    """
    if not is_concrete(graph.senders, graph.receivers, graph.edge_mask):
        return
    unmatched = edges_without_reverse(graph.senders, graph.receivers, graph.n_nodes, graph.edge_mask)
    if unmatched is None:
        return
    u, v, count = unmatched
    more = f" ({count - 1} more such edges)" if count > 1 else ""
    raise ValueError(
        f"{where}: symmetric=True needs an undirected graph; got edge {u} -> {v} without {v} -> {u}{more}, "
        "so its pair would hold one direction's gradient only. Use graph.to_undirected(), or "
        "adjacency_grad(..., symmetric=True) for dL/dA[u, v] + dL/dA[v, u] of a directed graph."
    )


def pair_sums(graph: Graph, values: jax.Array) -> PairGrad:
    """Sums per-edge ``values`` (E,) over each undirected pair of ``graph`` (see `PairGrad`).

    On the host (numpy) when the indices and values are concrete, else with JAX ops (padded to E).
    """
    try:
        return _host_pair_sums(graph, values)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return _traced_pair_sums(graph, values)


def _host_pair_sums(graph: Graph, values: jax.Array) -> PairGrad:
    senders, receivers, host = np.asarray(graph.senders), np.asarray(graph.receivers), np.asarray(values)
    valid = np.ones(senders.shape, bool) if graph.edge_mask is None else np.asarray(graph.edge_mask, bool)
    low = np.minimum(senders, receivers)[valid].astype(np.int64)
    high = np.maximum(senders, receivers)[valid].astype(np.int64)
    pairs, inverse = np.unique(low * graph.n_nodes + high, return_inverse=True)  # sorted by (low, high)
    sums = np.bincount(inverse.reshape(-1), weights=host[valid], minlength=pairs.size).astype(host.dtype)
    rows, cols = (pairs // graph.n_nodes).astype(np.int32), (pairs % graph.n_nodes).astype(np.int32)
    return PairGrad(jnp.asarray(sums), jnp.asarray(rows), jnp.asarray(cols))


def _traced_pair_sums(graph: Graph, values: jax.Array) -> PairGrad:
    n_edges = graph.n_edges
    low = jnp.minimum(graph.senders, graph.receivers).astype(jnp.int32)
    high = jnp.maximum(graph.senders, graph.receivers).astype(jnp.int32)
    valid = jnp.ones((n_edges,), bool) if graph.edge_mask is None else jnp.asarray(graph.edge_mask, bool)
    order = jnp.lexsort((high, low, ~valid))  # valid edges first, by (low, high)
    low, high, valid, values = low[order], high[order], valid[order], values[order]
    new = jnp.ones((n_edges,), bool).at[1:].set((low[1:] != low[:-1]) | (high[1:] != high[:-1]))
    pair_id = jnp.cumsum(new & valid) - 1  # position of each valid edge's pair
    pair_id = jnp.where(valid, pair_id, n_edges)  # padding edges are dropped
    sums = jnp.zeros((n_edges,), values.dtype).at[pair_id].add(values, mode="drop")
    rows = jnp.full((n_edges,), -1, jnp.int32).at[pair_id].set(low, mode="drop")
    cols = jnp.full((n_edges,), -1, jnp.int32).at[pair_id].set(high, mode="drop")
    try:
        n_pairs = int(jnp.sum(new & valid))
    except jax.errors.ConcretizationTypeError:
        return PairGrad(sums, rows, cols)  # traced: padded to E
    return PairGrad(sums[:n_pairs], rows[:n_pairs], cols[:n_pairs])
