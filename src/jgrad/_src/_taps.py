"""Structure taps: how jgrad's ops mark each use of the adjacency for `jgrad.adjacency_grad`.

`adjacency_grad` hands the model a graph with ``tapped=True`` (a static field, so it survives ``jit``,
``nnx.jit``, ``lax.scan`` and ``lax.fori_loop`` like any pytree). On such a graph every op that uses
the edge weights wraps its result in a named identity call, ``jax.jit`` of a function called
``jgrad_tap_<kind>``, whose operands are the result followed by the node quantities the structure
gradient needs. The call is an equation of the model's jaxpr wherever the op ran; the recording
interpreter (`jgrad.gradients._recording`) finds it there, checks that its weight operand really is the
tracked adjacency (by following values through the jaxpr, not by Python object identity) and turns it
into a gradient term. On any other graph a tap returns its first operand: nothing is added.

Kinds and operands (``A`` is the tracked adjacency, ``s``/``r`` the senders/receivers of the graph
the op ran on):

- ``aggregate (out, u, e, s, r)``: ``out[v] = sum over edges u -> v of e * u[u]`` (a g-SpMM sum).
- ``degree (deg, w, index)``: ``deg = segment_sum(w, index)`` plus a constant (a weighted degree).
- ``scaled (w_out, w_in, s_in, r_in, left, right, s_out, r_out)``: the graph ``(s_out, r_out)`` with
  weights ``w_out`` is ``diag(left) (A(w_in) + C) diag(right)`` for a constant C (appended self loops);
  ``left``/``right`` are (N,) node scalings (a normalisation such as `jgrad.ops.gcn_norm`).
- ``attention`` / ``attention_fixed (out, values, score_src, score_dst, log_normaliser, slope, w, s, r)``:
  a normalised-attention aggregation (see `jgrad.gradients._attention`); ``_fixed`` when the layer
  replaces A's diagonal by its own self loops.
- ``inverse_degree__row`` / ``__sym (inverse, degree, w)``: ``inverse = degree ** -1`` (a row
  normalisation) or ``** -1/2`` (a symmetric one), 0 where the degree is 0; where the degree, a
  function of A through ``w``, is 0 at a real node the model is not differentiable in A.
- ``refuse__<reason> (out, w)``: ``w`` enters the model in a way that has no gradient w.r.t. missing
  pairs; the interpreter raises `REFUSALS[reason]` if ``w`` is the tracked adjacency.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

PREFIX = "jgrad_tap_"

REFUSALS = {
    "extremum": (
        "adjacency_grad: gspmm reduces the tracked edge weights with max/min (e.g. SAGEConv(aggregator='max'), "
        "MessagePassing(aggregate='max')); got a model that is not a function of the weighted adjacency (a "
        "missing pair would enter the max as a message of weight 0), so dL/dA at missing pairs does not "
        "exist. Use jgrad.edge_grad for the existing edges, or a sum/normalised aggregation."
    ),
    "mean": (
        "adjacency_grad: gspmm(reduce='mean') divides by the number of incoming edges, which does not "
        "change continuously with A; got a model that is not a function of the weighted adjacency. Divide "
        "by the weighted degree instead (jgrad.ops.row_norm, or propagate(norm='row')), or use "
        "jgrad.edge_grad for the existing edges."
    ),
    "copy_u": (
        "adjacency_grad: gspmm(op='copy_u') aggregates the messages without the edge weights; got a model "
        "in which only which edges exist enters, not the entries of A, so dL/dA would be 0 at every pair. "
        "Weigh the messages by the graph's weights, which gives the same values on an unweighted graph: "
        "jgrad.ops.spmm(graph, x), or gspmm(graph, 'u_mul_e', reduce, x, graph.edge_weight)."
    ),
    "edge_count": (
        "adjacency_grad: the model counts edges (in_degree(weighted=False) or out_degree(weighted=False)); "
        "got a model that uses which edges exist, not the entries of A, so dL/dA at missing pairs is not "
        "defined (an unweighted graph is differentiated at weights of ones, which the counts ignore). Use the "
        "weighted degree, graph.in_degree(), which equals the counts on an unweighted graph, or jgrad.edge_grad "
        "for the existing edges."
    ),
    "message_op": (
        "adjacency_grad: gspmm combines the tracked edge weights with node data by addition, subtraction "
        "or division; got a model in which a missing pair (weight 0) would still send a message, so it is "
        "not a function of the weighted adjacency. Multiply by the weights (op='u_mul_e', spmm), or use "
        "jgrad.edge_grad for the existing edges."
    ),
    "edge_data": (
        "adjacency_grad: the tracked edge weights are used as edge data of gsddmm or edge_softmax; got a "
        "model in which the weights act per existing edge, so dL/dA at missing pairs is not defined. Use "
        "jgrad.edge_grad for the existing edges, or mode='dense' on a small graph."
    ),
    "after_softmax": (
        "adjacency_grad: gat_conv multiplies the attention by the edge weight after the softmax "
        "(edge_weight_mode='after_softmax'); got a model in which an edge's presence (softmax over the "
        "existing edges) and its weight are different things, so dL/dA of a missing pair is not defined. "
        "Build the layer with edge_weight_mode='normalise' (GATConv, GAT, gat_conv), in which A[v, u] "
        "weighs exp(score) inside the softmax, or use jgrad.edge_grad for the existing edges only."
    ),
}


@functools.cache
def _identity(name: str):
    """``jax.jit`` of a function named ``name`` returning its first operand (through a barrier, so that
    the call is never folded away while tracing)."""

    def first(*operands):
        return jax.lax.optimization_barrier(operands)[0]

    first.__name__ = first.__qualname__ = name
    return jax.jit(first)


def mark(graph: Any, kind: str, *operands: Any) -> Any:
    """``operands[0]``, wrapped in the named identity call ``jgrad_tap_<kind>`` when ``graph.tapped``."""
    if not getattr(graph, "tapped", False):
        return operands[0]
    return _identity(PREFIX + kind)(*operands)


def refuse(graph: Any, reason: str, value: Any, weight: Any) -> Any:
    """``value``, marked so that `adjacency_grad` raises `REFUSALS[reason]` if ``weight`` is the adjacency."""
    if reason not in REFUSALS:
        raise KeyError(reason)
    return mark(graph, "refuse__" + reason, value, weight)
