"""The gradient w.r.t. every entry of the adjacency, existing edges and missing ones, held as factors.

For a model whose use of ``A`` is linear per call once node scalings are held fixed (aggregations
``y_c = diag(l_c) A diag(r_c) @ m_c`` through `jgrad.ops.spmm` / `gspmm` on the graph or on a
`gcn_norm` / `row_norm` / ``add_self_loops`` of it, and weighted degrees, which are aggregations of
ones), the gradient of a scalar loss w.r.t. the dense adjacency is exactly::

    dL/dA = sum_c (l_c G_c) (r_c m_c)^T           G_c = dL/dy_c (N, F_c), m_c (N, F_c)

(the scalings' own dependence on A goes through the degree terms), an N x N matrix of rank
<= sum_c F_c, which `AdjacencyGrad` stores as two (N, R) factors. `jgrad.gradients._recording` finds
every call c in the model's jaxpr and gets ``G_c`` from a zero probe added to its output. Attention
layers that normalise the weight inside their softmax add one `AttentionTerm` each, an entry computed
in O(H·F) from node quantities (see `jgrad.gradients._attention`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from .._src._checks import is_concrete
from .._src._limits import MAX_SIZE
from .._src._types import check_callable, check_choice, check_flags
from ..graph import Graph
from . import _recording, _structure
from ._adjacency_result import AdjacencyGrad
from ._attention import attention_term
from ._compile import Call, rebuild_args, run_cached
from ._edge import check_scalar, check_weights_used, trace_of_weights, tracked_weights

MODES = ("factored", "dense")
DENSE_NODE_LIMIT = 2048


def adjacency_grad(
    fn: Callable[..., jax.Array],
    graph: Graph,
    *args: Any,
    symmetric: bool = False,
    mode: Literal["factored", "dense"] = "factored",
    check: bool = True,
    force: bool = False,
) -> AdjacencyGrad:
    """The exact gradient of a scalar ``fn(graph, *args)`` w.r.t. every entry of the adjacency.

    Semantics: ``dL/dA[v, u]`` for all N^2 pairs, where ``A[v, u]`` is the weight of ``u -> v``
    (``0`` for a missing edge; an unweighted graph has weights of ones), i.e. how the loss changes
    when the edge ``u -> v`` is re-weighted, added or removed to first order.

    Mode ``"factored"`` (the default) follows every use of the adjacency in the model's jaxpr: sums
    ``jgrad.ops.spmm(graph, m)`` / ``gspmm(graph, "u_mul_e", "sum", m, w)`` with the graph's weights
    (also on ``graph.reverse()``), weighted degrees ``graph.in_degree()`` / ``out_degree()``, and graphs
    made by `jgrad.ops.gcn_norm`, `row_norm`, ``graph.add_self_loops()`` or `propagate`; any number of
    layers and calls, any non-linearity between them, in plain code, under ``jax.jit`` / ``nnx.jit``
    and in ``lax.scan`` / ``lax.fori_loop`` (static bounds) loops, which are unrolled. Each call c is
    ``y_c = diag(l_c) A diag(r_c) @ m_c`` for node scalings l, r (ones without a normalisation), and::

        dL/dA = sum_c (l_c G_c) (r_c m_c)^T

    exactly, with ``G_c = dL/dy_c`` (the scalings' own dependence on A enters through their degree
    terms), found by one forward and one backward pass with zero probes added to each call's output.
    Max/min/mean message reductions, weights used as per-edge data (gsddmm, edge_softmax) and
    propagation inside ``while_loop`` / ``cond`` raise, naming the cause.

    The result is checked: the factors evaluated at the existing edges must equal `edge_grad`
    (relative error <= 1e-4 in float32, 1e-8 in float64), which catches any other use of the weights
    (arithmetic on ``graph.edge_weight``, weights built from it): the call raises. Uses of the
    structure that touch no weight (an aggregation written by hand over ``graph.senders``, edge
    counts, ``n_edges``) are caught by running the model once more with one extra edge of weight 0
    into every real node: the loss must not change (first call per model and shapes; see
    ``jgrad.gradients._structure``).

    Attention: `jgrad.nn.GATConv` / `GAT` / ``gat_conv`` with ``edge_weight_mode="normalise"``
    (``alpha[v,u] = A[v,u] exp(s[v,u]) / sum_k A[v,k] exp(s[v,k])``) add one exact attention term per
    layer, ``dL/dA[v,u] += sum_h exp(s[v,u,h]) / Z[v,h] (<G[v,h], z[u,h]> - <G[v,h], out[v,h]>)``;
    with the default ``"after_softmax"`` the call raises, naming the option.

    Mode ``"dense"`` runs ``fn`` on the complete graph (all N^2 pairs as edges, weight ``A[v, u]``,
    0 for a missing edge) and differentiates w.r.t. those weights: O(N^2) time and memory. It is
    checked like the factored mode (dL/dA at the existing edges against `edge_grad`) and the loss on
    the complete graph against the loss on ``graph``: a model that looks at the edge *structure*
    (``edge_weight_mode="after_softmax"`` attention, unweighted degrees, ``n_edges``) is a different
    model on the complete graph, and the call raises.

    Compilation: the work runs under ``jax.jit``, compiled once and reused while ``fn``, the
    structure and non-array leaves of ``args`` and everything ``fn`` reads (its closure, defaults,
    globals and bound object: arrays by identity, numpy arrays and Python values by value) are
    unchanged. Passing new arrays of the same shapes does not recompile.

    Args:
      fn: ``fn(graph, *args) -> scalar``, plain or wrapped in ``jax.jit`` / ``nnx.jit``; traced once to
        a jaxpr on the first call.
      graph: the graph; scalar weights (E,) or unweighted.
      *args: further arguments of ``fn``.
      symmetric: return the gradient w.r.t. an undirected adjacency (see `AdjacencyGrad.symmetric`).
      mode: ``"factored"`` or ``"dense"``.
      check: compare with `edge_grad` at the existing edges (in dense mode also the loss values) and
        raise on disagreement; when the values are traced (``adjacency_grad`` inside ``jit``) a
        disagreement makes every entry NaN instead. ``edge_error`` always holds the measured error.
        In factored mode, also raise (inside ``jit``: NaN in the node's row) when a normalisation
        divides by a real node's zero degree (a mean at a node with no incoming weight), where the
        model is not differentiable in A, and the loss depends on such nodes (NaN in their outputs
        reaches it; if not, their rows are 0); ``check=False`` gives 0 in such rows.
      force: allow ``mode="dense"`` above 2048 nodes (never above 46340: N^2 edges need int32 indices).

    Returns:
      `AdjacencyGrad` (in the weights' dtype). Factors have R = sum_c F_c + (number of degree calls)
      columns (doubled by ``symmetric``).

    Raises:
      ValueError: non-scalar output, weights with trailing dimensions, unknown mode, a dense request
        above the size limit, a model that traces differently twice, and, in factored mode, a
        disagreement with `edge_grad` (a non-linear use of the adjacency) or a normalisation by a
        zero degree (see ``check``).
      TypeError: non-Graph input, non-float weights, a non-callable fn, non-bool flags.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 2], n_nodes=3)
      >>> x = jnp.array([[1.0], [2.0], [3.0]])
      >>> grad = jgrad.adjacency_grad(lambda g, x: jgrad.ops.spmm(g, x).sum(), g, x)
      >>> grad.dense().tolist()  # dL/dA[v, u] = x[u] for this loss
      [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
      >>> grad.topk(1, among="non_edges").cols.tolist()
      [2]
    """
    where = "adjacency_grad"
    check_callable(where, fn, "fn(graph, *args) -> scalar loss")
    check_flags(where, symmetric=symmetric, check=check, force=force)
    check_choice(where, "mode", mode, MODES)
    weight = tracked_weights(where, graph)
    if weight.ndim != 1:
        raise ValueError(f"{where}: needs one scalar weight per edge; got edge_weight of shape "
                         f"{tuple(weight.shape)}, expected ({graph.n_edges},).")
    if mode == "dense":
        result = _dense_grad(fn, graph, args, weight, force, check)
    else:
        result = _factored_grad(fn, graph, args, weight, check)
    return result.symmetric() if symmetric else result


def _factored_build(graph: Graph, w: jax.Array, arrays: list, *,
                    call: Call) -> tuple[AdjacencyGrad, dict, jax.Array, jax.Array]:
    """The factored gradient, the real nodes at which it may not exist (see `_raise_if_undefined`), the
    loss, and whether the loss depends on those nodes (a scalar bool)."""
    where = "adjacency_grad"
    args = rebuild_args(call, arrays)
    n = graph.n_nodes

    def tracked(w):
        return dataclasses.replace(graph, edge_weight=w, tapped=True)

    closed = _recording.trace(call.fn, tracked(w), args)

    def run(probes, w, poison=False):
        graph_w = tracked(w)
        interpreter = _recording.Interpreter(n, probes, node_mask=graph.node_mask, poison=poison)
        inputs = _recording.array_leaves(graph_w, args)
        (value,) = interpreter.run(closed, inputs, graph_w.edge_weight, graph_w.senders, graph_w.receivers)
        check_scalar(where, value)
        return value, interpreter.terms, interpreter.undefined

    # pass 1: which taps, of which shapes (abstract evaluation, no FLOPs)
    discovered: list = []
    jax.eval_shape(lambda w: discovered.append(run(None, w)[1:]) or 0.0, w)
    terms, normalised = discovered[-1][0], any(nodes is not None for nodes in discovered[-1][1].values())
    if not terms:  # no use of the adjacency that adjacency_grad follows: does the loss use it at all?
        check_weights_used(where, trace_of_weights(call.fn, tracked(w), args, w)[0])
    probes = [jnp.zeros(term.shape, term.dtype) for term in terms]

    def objective(probes, w):
        value, found, undefined = run(probes, w)
        return value, ([term.data for term in found], undefined, value)

    # pass 2: dL/dprobe = G for every term, and dL/dw for the check, in one backward pass
    (probe_grads, weight_grad), (data, undefined, value) = jax.grad(objective, argnums=(0, 1), has_aux=True)(probes, w)
    result = _assemble([term.kind for term in terms], probe_grads, data, graph, w.dtype)
    result = dataclasses.replace(result, edge_error=_edge_error(result, weight_grad, graph.edge_mask))
    none = jnp.zeros((n,), bool)
    rows = {norm: none if nodes is None else nodes for norm, nodes in undefined.items()}
    # pass 3, only if a normalisation divided by a zero degree: the loss with NaN in what that left
    # undefined (`_felt_by_the_loss`); not even compiled for a model without degree normalisations
    depends = jnp.zeros((), bool)
    if normalised:
        depends = jax.lax.cond(jnp.any(rows["row"] | rows["sym"] | rows["attention"]),
                               lambda w: jnp.isnan(run(None, w, poison=True)[0]), lambda w: depends, w)
    return result, rows, value, depends


def _felt_by_the_loss(rows: dict, depends: jax.Array) -> dict:
    """``rows`` (see `_raise_if_undefined`) if the loss depends on their nodes, else no rows: a loss that
    does not depend on them has dL/dA = 0 there, exactly.

    ``depends``: whether the loss is NaN with NaN in everything a zero degree leaves undefined (the
    scaled outputs at those nodes and, with a symmetric scaling, their messages; their attention rows;
    `_recording.Interpreter`'s ``poison``). A loss that is not NaN then never computed with those
    values, so no jump of theirs reaches it. NaN can reach a loss that does not depend on them, by a
    product with 0 (``(per_node * mask).sum()`` rather than ``jnp.where``): then it raises, to be safe.
    """
    if is_concrete(depends):
        return rows if bool(depends) else {kind: jnp.zeros_like(mask) for kind, mask in rows.items()}
    return {kind: mask & depends for kind, mask in rows.items()}


def _raise_if_undefined(rows: dict) -> None:
    """Raises when a normalisation of the adjacency divided by a zero degree at a real node (``rows``:
    ``{"row": ..., "sym": ..., "attention": ...}``, (N,) bool each, from the `_recording.Interpreter`)
    that the loss depends on (`_felt_by_the_loss`): an edge added into such a node makes the model
    jump, so dL/dA has no value in its row. Traced rows are left to `_poisoned_rows`.
    """
    for norm, mask in rows.items():
        try:
            nodes = np.flatnonzero(np.asarray(mask))
        except jax.errors.TracerArrayConversionError:
            return
        if nodes.size == 0:
            continue
        how = {"row": "takes a mean over its incoming edges (row_norm, mean_aggregate, "
                      "SAGEConv(aggregator='mean'), propagate(norm='row')), which jumps as soon as an edge "
                      "into it is added",
               "sym": "scales by its degree ** -1/2 (gcn_norm, propagate(norm='sym') without self loops), whose "
                      "derivative is unbounded at 0",
               "attention": "normalises its attention by the node's total incoming weight (GATConv with "
                            "edge_weight_mode='normalise' and no self loops), which jumps as soon as an edge "
                            "into it is added"}[norm]
        more = f" ({nodes.size - 1} more such nodes)" if nodes.size > 1 else ""
        raise ValueError(
            f"adjacency_grad: node {int(nodes[0])} has no incoming weight and the model {how}; got a model "
            f"that is not differentiable in A in that node's row{more}, and a loss that depends on such "
            "nodes (NaN in their outputs reaches it). Add self loops (graph.add_self_loops(), or "
            "add_self_loops=True), leave those nodes out of the loss, use jgrad.edge_grad for the existing "
            "edges, or pass check=False to take 0 in their rows."
        )


def _poisoned_rows(result: AdjacencyGrad, rows: dict) -> AdjacencyGrad:
    """``result`` with NaN in the rows of the nodes in ``rows`` (see `_raise_if_undefined`), under
    ``jit``, where they cannot raise."""
    if not isinstance(rows["row"], jax.core.Tracer) or result.left.shape[1] == 0:
        return result
    bad = (rows["row"] | rows["sym"] | rows["attention"])[:, None]
    return dataclasses.replace(result, left=jnp.where(bad, jnp.asarray(jnp.nan, result.left.dtype), result.left))


def _factored_grad(fn, graph: Graph, args, weight: jax.Array, check: bool) -> AdjacencyGrad:
    result, undefined_rows, value, depends = run_cached(_factored_build, fn, args, ("factored",), graph, weight)
    if not check:
        return result
    _raise_if_not_finite(value, result.edge_error)
    undefined_rows = _felt_by_the_loss(undefined_rows, depends)
    _raise_if_undefined(undefined_rows)
    # the rounding the checks allow for: the coarser of the weights' and the loss's dtype (float64 weights
    # of a float32 model, under x64, still round as float32)
    dtype = weight.dtype if jnp.finfo(weight.dtype).eps >= jnp.finfo(value.dtype).eps else value.dtype
    _raise_if_nonlinear(result.edge_error, dtype)
    structure_error = _structure.structure_error(fn, graph, args, weight)
    _structure.raise_if_structural(structure_error, dtype)
    if structure_error is not None:  # measured: edge_error holds it too (inside jit: NaN when too large)
        result = dataclasses.replace(result, edge_error=jnp.maximum(result.edge_error, structure_error))
    return _poisoned_rows(_poisoned_if_wrong(result, dtype), undefined_rows)


def _assemble(kinds, probe_grads, data, graph: Graph, dtype) -> AdjacencyGrad:
    """Stacks the recorded terms into the (N, R) factors, attention terms aside.

    An aggregation ``y = diag(l) A diag(r) @ u`` with ``G = dL/dy`` adds ``(l G)(r u)^T``; its
    transpose ``y = diag(r) A^T diag(l) @ u`` adds ``(l u)(r G)^T`` (l, r are ones when absent).
    """
    n = graph.n_nodes
    lefts, rights, attention = [], [], []
    for kind, grad, term_data in zip(kinds, probe_grads, data):
        if kind.startswith("attention"):
            attention.append(attention_term(term_data, grad, kind == "attention_fixed", dtype))
            continue
        u, left, right = term_data
        grad = grad.astype(dtype)
        u = jnp.broadcast_to(u.reshape(u.shape + (1,) * (grad.ndim - u.ndim)), grad.shape).astype(dtype)
        at_rows, at_cols = (grad, u) if kind == "aggregate" else (u, grad)
        lefts.append(_scale(at_rows.reshape(n, -1), left, dtype))
        rights.append(_scale(at_cols.reshape(n, -1), right, dtype))
    result = _directed_grad(
        graph,
        jnp.concatenate(lefts, axis=1) if lefts else jnp.zeros((n, 0), dtype),
        jnp.concatenate(rights, axis=1) if rights else jnp.zeros((n, 0), dtype),
    )
    return dataclasses.replace(result, attention=tuple(attention))


def _scale(factor: jax.Array, scaling, dtype) -> jax.Array:
    """``diag(scaling) @ factor`` for an (N,) node scaling, or ``factor`` when there is none."""
    return factor if scaling is None else factor * scaling.astype(dtype)[:, None]


def _directed_grad(graph: Graph, left: jax.Array, right: jax.Array) -> AdjacencyGrad:
    """``left @ right.T`` as the (not symmetrised) gradient w.r.t. ``graph``'s adjacency."""
    n, dtype = graph.n_nodes, left.dtype
    return AdjacencyGrad(
        left=left,
        right=right,
        diagonal_offset=jnp.zeros((n,), dtype),
        senders=graph.senders,
        receivers=graph.receivers,
        edge_mask=graph.edge_mask,
        edge_error=jnp.zeros((), dtype),
        n_nodes=n,
        node_mask=graph.node_mask,
    )


def _edge_error(result: AdjacencyGrad, weight_grad: jax.Array, edge_mask) -> jax.Array:
    """max |factored - dL/dw| over the real edges, relative to the gradient's size (0 for a graph
    without edges).

    The size is the largest |dL/dw| at an edge, or, if larger, a bound on every entry of the factored
    part, ``max_i |left_i| · max_j |right_j|``: where dL/dw is 0 at every edge (a graph whose only
    edges are self loops the loss does not feel), float rounding of the factors is not mistaken for
    a disagreement.
    """
    if weight_grad.shape[0] == 0:
        return jnp.zeros((), weight_grad.dtype)
    factored = result.at(result.receivers, result.senders)
    difference = jnp.abs(factored - weight_grad)
    scale = jnp.abs(weight_grad)
    if edge_mask is not None:
        difference = jnp.where(edge_mask, difference, 0)
        scale = jnp.where(edge_mask, scale, 0)
    bound = jnp.zeros((), weight_grad.dtype)
    if result.left.shape[1] and result.left.shape[0]:
        bound = (jnp.max(jnp.linalg.norm(result.left, axis=1)) *
                 jnp.max(jnp.linalg.norm(result.right, axis=1))).astype(weight_grad.dtype)
    tiny = jnp.finfo(weight_grad.dtype).tiny
    return jnp.max(difference) / jnp.maximum(jnp.maximum(jnp.max(scale), bound), tiny)


def _poisoned_if_wrong(result: AdjacencyGrad, dtype) -> AdjacencyGrad:
    """``result``, or NaN in every entry when its check failed: under ``jit`` the check cannot raise."""
    if isinstance(result.edge_error, jax.core.Tracer):
        bad = ~(result.edge_error <= _structure.tolerance(dtype))
        poison = lambda value: jnp.where(bad, jnp.asarray(jnp.nan, value.dtype), value)
        left, right = result.left, result.right
        if left.shape[1] == 0:  # no factor columns to carry the NaN: one column that is 0 unless bad
            left, right = jnp.zeros((left.shape[0], 1), left.dtype), jnp.ones((right.shape[0], 1), right.dtype)
        attention = tuple(dataclasses.replace(term, cotangent=poison(term.cotangent)) for term in result.attention)
        return dataclasses.replace(result, left=poison(left), right=right,
                                   diagonal_offset=poison(result.diagonal_offset), attention=attention)
    return result


def _raise_if_nonlinear(error: jax.Array, dtype) -> None:
    try:
        value = float(error)
    except jax.errors.ConcretizationTypeError:
        return  # traced: the caller reads edge_error
    tolerance = _structure.tolerance(dtype)
    if not value <= tolerance:
        raise ValueError(
            "adjacency_grad: the model uses the edge weights outside the operations adjacency_grad follows "
            "(spmm and gspmm sums, in/out degrees, gcn_norm, row_norm, add_self_loops, propagate, "
            "normalised attention), e.g. arithmetic on graph.edge_weight or weights built from it, or a "
            "message function that multiplies by the weights itself (jgrad.nn.MessagePassing.message, "
            "message_passing); the factored gradient disagrees with dL/dw at the existing edges (max "
            f"relative error {value:.3g}, tolerance {tolerance:g}). Pass the weights to those operations "
            "unchanged (MessagePassing's default message is gspmm(graph, 'u_mul_e', ...): transform the "
            "features before the layer instead of inside message), or use mode='dense' for small graphs."
        )


def _dense_grad(fn, graph: Graph, args, weight: jax.Array, force: bool, check: bool) -> AdjacencyGrad:
    n = graph.n_nodes
    if n * n > MAX_SIZE:  # even with force: the complete graph's edges are indexed with int32
        raise ValueError(
            f"adjacency_grad: mode='dense' builds a complete graph of N^2 edges, indexed with int32; got "
            f"n_nodes={n}, {n * n} edges, expected at most 2**31 - 1 = {MAX_SIZE} (n_nodes <= "
            f"{math.isqrt(MAX_SIZE)}), even with force=True. Use mode='factored' with a linear model."
        )
    if n > DENSE_NODE_LIMIT and not force:
        raise ValueError(
            f"adjacency_grad: mode='dense' builds a complete graph of N^2 edges; got n_nodes={n}, "
            f"expected at most {DENSE_NODE_LIMIT} ({n * n} edges would be built). Pass force=True to "
            "run it anyway, or use mode='factored' with a linear model."
        )
    result, value_error = run_cached(_dense_build, fn, args, ("dense",), graph, weight)
    if check:
        _raise_if_structural(result.edge_error, value_error, weight.dtype)
    return _poisoned_if_wrong(result, weight.dtype) if check else result


def _dense_build(graph: Graph, weight: jax.Array, arrays: list, *, call: Call):
    """dL/dA on the complete graph, and how far it is from the model on its own graph.

    Returns the `AdjacencyGrad` (``edge_error``: the larger of the relative disagreements of dL/dA at
    the existing edges with `edge_grad` and of the loss values) and the loss-value disagreement.
    """
    n, dtype = graph.n_nodes, weight.dtype
    args = rebuild_args(call, arrays)
    check_weights_used("adjacency_grad", trace_of_weights(call.fn, graph, args, weight)[0])
    dense = graph.with_edge_weight(weight).to_dense().astype(dtype)  # A[v, u]; padding edges count 0
    nodes = jnp.arange(n, dtype=jnp.int32)
    complete = dataclasses.replace(
        graph,
        senders=jnp.tile(nodes, n),  # pair (v, u) is edge v * N + u
        receivers=jnp.repeat(nodes, n),
        edge_weight=None,
        edge_mask=None,
        n_edge_per_graph=None,
    )

    def loss(g, w):
        value = call.fn(g.with_edge_weight(w), *args)
        check_scalar("adjacency_grad", value)
        return value

    complete_value, grad = jax.value_and_grad(lambda w: loss(complete, w))(dense.reshape(-1))
    own_value, weight_grad = jax.value_and_grad(lambda w: loss(graph, w))(weight)
    result = _directed_grad(graph, grad.reshape(n, n), jnp.eye(n, dtype=grad.dtype))
    scale = _structure.loss_scale(weight, weight_grad, graph.edge_mask)
    value_error = _structure.relative_change(own_value, complete_value, scale).astype(dtype)
    edge_error = jnp.maximum(_edge_error(result, weight_grad, graph.edge_mask), value_error)
    return dataclasses.replace(result, edge_error=edge_error), value_error


def _raise_if_not_finite(loss: jax.Array, edge_error: jax.Array) -> None:
    """Raises when the loss, or the gradient at the existing edges (``edge_error`` is then NaN), is NaN
    or infinite, before the checks that would blame the model for it (concrete values only)."""
    if not is_concrete(loss, edge_error):
        return
    loss = float(loss)
    if np.isfinite(loss) and not np.isnan(float(edge_error)):
        return
    raise _not_finite(f"a loss of {loss}" if not np.isfinite(loss) else
                      "a gradient at the existing edges that is NaN or infinite")


def _not_finite(what: str) -> ValueError:
    """The error for a non-finite ``what`` (loss, gradient), which the other checks would blame on the model."""
    return ValueError(
        f"adjacency_grad: got {what}; expected finite values. Check the features, parameters and edge "
        "weights for NaN or infinite values (jnp.isfinite), and the model for divisions by 0."
    )


def _raise_if_structural(error: jax.Array, value_error: jax.Array, dtype) -> None:
    try:
        value, loss_error = float(error), float(value_error)
    except jax.errors.ConcretizationTypeError:
        return  # traced: the caller reads edge_error
    if np.isnan(loss_error) or np.isnan(value):
        raise _not_finite("a loss or a gradient at the existing edges that is NaN or infinite, on the graph "
                          "or on the complete graph")
    tolerance = _structure.tolerance(dtype)
    if not value <= tolerance:
        raise ValueError(
            "adjacency_grad: mode='dense' disagrees with the model on its own graph; got relative error "
            f"{value:.3g} (dL/dA at the existing edges against edge_grad, and the loss value: {loss_error:.3g}), "
            f"expected at most {tolerance:g}. The model looks at the edge structure, not only at the "
            "weights, so on the complete graph it is a different model: e.g. gat_conv with "
            "edge_weight_mode='after_softmax' (its softmax runs over all N nodes; use "
            "edge_weight_mode='normalise'), unweighted degrees, or graph.n_edges. Only a model that is a "
            "function of the weighted adjacency has a dL/dA at missing pairs."
        )
