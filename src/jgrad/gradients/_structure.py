"""The structure probe: the factored `jgrad.adjacency_grad`'s check for uses of which edges exist.

The factored gradient follows the weights. A model that also reads which edges exist, e.g. an
aggregation written by hand as ``jax.ops.segment_sum(x[graph.senders], graph.receivers, n)``, an edge
count or ``graph.n_edges``, is not a function of A: adding an edge changes it by a jump, so dL/dA has
no value at the missing pairs, and the factors, which do not see those uses, agree with `edge_grad`
at the existing edges all the same. A function of A does not change when edges of weight 0 are added,
so every real node gets one more incoming edge of weight 0 (from the next real node of its own graph)
and the loss must stay the same up to rounding (`structure_error`). It runs once per model and graph
shapes: a model that passed is not probed again (`_PASSED`). Inside the caller's ``jit`` it runs on
every call, and a failure makes the result NaN.

The probe runs the model twice in one compiled function, on the graph with the added edges and on
the graph without them, both in the form the added edges need (an edge mask, no plan: the plain
path), so that a sum or normalised model gives the same loss to the last bit even where the loss is
0 up to rounding (a margin at the decision boundary, the output's change from a clean output):
compared with the loss of the gradient's pass, another program on the graph as given, such a loss
changed by up to 100% of itself. The probed graph's ``n_edge_per_graph`` counts the added edges. A use
of the structure that the loss does not feel at the current values (behind a saturated ``tanh``), or
only through another sender than the one added, is not seen; nor is it by ``mode="dense"``, which
compares loss values the same way.
"""

from __future__ import annotations

import collections
import dataclasses

import jax
import jax.numpy as jnp

from ..graph import Graph
from ._compile import Call, call_key, rebuild_args, run_cached
from ._edge import check_scalar

_PASSED: collections.OrderedDict = collections.OrderedDict()
"""Keys (model, args, graph shapes) whose model passed the probe, most recent last; at most
`_REMEMBERED` (a key holds the arrays the model closes over)."""
_REMEMBERED = 256


def structure_error(fn, graph: Graph, args: tuple, weight: jax.Array) -> jax.Array | None:
    """Relative change of ``fn(graph, *args)`` (weights ``weight``) when every real node gets one
    more incoming edge of weight 0: a scalar (traced inside the caller's jit), or None when this model
    and these shapes passed before."""
    key, _ = call_key(fn, args, ("structure",))
    signature = None if key is None else (key, jax.tree.structure(graph), weight.dtype,
                                          tuple((leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(graph)))
    if signature in _PASSED:
        _PASSED.move_to_end(signature)
        return None
    error = run_cached(_probe_build, fn, args, ("probe",), graph, weight)
    if signature is not None and not isinstance(error, jax.core.Tracer) and float(error) <= tolerance(weight.dtype):
        _PASSED[signature] = True
        while len(_PASSED) > _REMEMBERED:
            _PASSED.popitem(last=False)
    return error


def loss_scale(weight: jax.Array, weight_grad: jax.Array, edge_mask) -> jax.Array:
    """``sum_e |w_e dL/dw_e|`` over the live edges: how large the loss's dependence on the weights is,
    a size against which to measure a change of the loss that is itself near 0 (a margin at the
    decision boundary), where its rounding is of the order of its terms, not of its value."""
    terms = jnp.abs(weight * weight_grad)
    return jnp.sum(terms if edge_mask is None else jnp.where(edge_mask, terms, 0))


def relative_change(own: jax.Array, other: jax.Array, scale: jax.Array) -> jax.Array:
    """``|other - own| / max(|own|, |other|, scale)``: a change of the loss relative to its size."""
    size = jnp.maximum(jnp.maximum(jnp.abs(own), jnp.abs(other)), jnp.abs(scale))
    return jnp.abs(other - own) / jnp.maximum(size, jnp.finfo(size.dtype).tiny)


def tolerance(dtype) -> float:
    """The largest relative disagreement that `jgrad.adjacency_grad`'s checks accept as float rounding
    (with `edge_grad` at the existing edges, and between loss values)."""
    return 1e-8 if jnp.dtype(dtype) == jnp.float64 else 1e-4


def raise_if_structural(error: jax.Array | None, dtype) -> None:
    """Raises when `structure_error` measured a change above float rounding (concrete values only)."""
    if error is None or isinstance(error, jax.core.Tracer):
        return
    value = float(error)
    if not value <= tolerance(dtype):
        raise ValueError(
            "adjacency_grad: the model reads which edges exist, not only their weights: one more edge of "
            f"weight 0 into every node changed the loss (relative change {value:.3g}, tolerance "
            f"{tolerance(dtype):g}), so it is not a function of A and dL/dA has no value at the missing "
            "pairs. Typical causes: an aggregation written by hand that ignores the weights "
            "(jax.ops.segment_sum(x[graph.senders], graph.receivers, ...): use jgrad.ops.spmm), edge "
            "counts or graph.n_edges, random numbers per edge (dropout with a key). Use jgrad.edge_grad "
            "for the existing edges, or pass check=False if those uses are constants by design."
        )


def _probe_build(graph: Graph, weight: jax.Array, arrays: list, *, call: Call) -> jax.Array:
    """The loss's change (`relative_change`) when every real node gets one more edge of weight 0."""
    args = rebuild_args(call, arrays)
    senders, receivers, live = _one_more_edge_per_node(graph)
    own_mask = jnp.ones(graph.senders.shape, bool) if graph.edge_mask is None else graph.edge_mask
    # The reference: the graph itself, in the probed graph's form (an edge mask, no plan), so that
    # both losses take the same code path and differ only by the added edges.
    same = dataclasses.replace(graph, edge_weight=weight, edge_mask=own_mask, plan=None)
    probed = dataclasses.replace(
        same,
        senders=jnp.concatenate([graph.senders, senders]),
        receivers=jnp.concatenate([graph.receivers, receivers]),
        edge_weight=jnp.concatenate([weight, jnp.zeros(senders.shape, weight.dtype)]),
        edge_mask=jnp.concatenate([own_mask, live]),
        n_edge_per_graph=_counted(graph, receivers, live),
    )
    own, more = call.fn(same, *args), call.fn(probed, *args)
    check_scalar("adjacency_grad", more)
    own, more = jnp.asarray(own, weight.dtype), jnp.asarray(more, weight.dtype)
    # relative to the loss alone (no `loss_scale`): the two losses take one code path and agree to the
    # last bit for a function of A, so the probe is as sensitive as the loss's own size allows
    return relative_change(own, more, 0.0)


def _counted(graph: Graph, receivers: jax.Array, live: jax.Array) -> jax.Array | None:
    """``graph.n_edge_per_graph`` with the added edges that are ``live`` (into ``receivers``) counted in."""
    counts = graph.n_edge_per_graph
    if counts is None:
        return None
    owner = graph.node_graph_index()[receivers]
    return counts + jax.ops.segment_sum(live.astype(counts.dtype), owner, num_segments=counts.shape[0])


def _one_more_edge_per_node(graph: Graph) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(senders, receivers, live), (N,) each: an edge into every real node from the next real node of
    its own graph (cyclically); padding nodes and graphs of one node get a dead edge. jit-safe."""
    n = graph.n_nodes
    real = jnp.ones((n,), bool) if graph.node_mask is None else graph.node_mask
    group = jnp.where(real, graph.node_graph_index(), n)  # padding nodes after every graph
    order = jnp.argsort(group, stable=True).astype(jnp.int32)
    grouped = group[order]
    position = jnp.arange(n)
    first = jnp.searchsorted(grouped, grouped, side="left")  # where each node's group starts
    following = jnp.minimum(position + 1, n - 1)
    successor = jnp.where((position + 1 < n) & (grouped[following] == grouped), position + 1, first)
    senders, receivers = order[successor], order
    return senders, receivers, real[order] & (senders != receivers)
