"""Edge-sharded message passing: every device aggregates its own edges, collectives combine the parts.

Memory model, for D edge shards over a mesh axis ``"edges"`` (and optionally K feature shards):

* each device holds its ``E_shard = ceil(E / D)`` edge slots (senders, receivers, mask, edge data),
* the node data it reads, N x F (or N x F/K with feature sharding), replicated along ``"edges"``,
* an N x F (or N x F/K) partial output, which ``psum`` (``pmax`` / ``pmin`` for max/min) turns into
  the full result; for edge softmax two N-sized per-receiver vectors (max and sum) are combined instead.

So per-device memory is O(E/D + N·F): edges scale out, node features do not (shard F for that).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from .._src._messages import (
    MESSAGE_OPS,
    align_edge,
    check_broadcast,
    check_operands,
    message,
    message_cotangents,
    sum_to_shape,
)
from .._src._op import Op
from .._src._types import REDUCERS, TIE_RULES, accumulation_dtype, check_choice
from ..graph import Graph
from ..ops import gspmm
from ._mesh import EDGE_AXIS, FEATURE_AXIS, shard_map
from ._partition import ShardedGraph, check_mesh

ArrayLike = jax.typing.ArrayLike


def sharded_gspmm(
    mesh: Mesh,
    graph: ShardedGraph,
    op: str,
    reduce: str,
    u: ArrayLike | None = None,
    e: ArrayLike | None = None,
    *,
    tie: str = "split",
) -> jax.Array:
    """`jgrad.ops.gspmm` with the edges split over the mesh's ``"edges"`` axis.

    Semantics, as for ``gspmm`` on the unsharded graph, for every real edge ``e = (u -> v)``::

        out[v] = reduce(out[v], op(u[senders[e]], e[e]))

    Each device reduces the messages of its own edges into an (N, ...) partial result with jgrad's
    kernels; ``sum`` partials are added with ``psum``; ``mean`` adds sums and in-degree counts with
    ``psum`` and divides; ``max`` / ``min`` take the extremum of the partials with ``pmax`` / ``pmin``
    (devices with no edge into v contribute -inf / +inf), and a ``pmax`` of (N, ...) uint8 flags says
    where any device has an edge into v (0 elsewhere) and where a partial is NaN (NaN there, which
    ``pmax`` / ``pmin`` may drop). Inside ``shard_map`` over `make_mesh`.

    Args:
      mesh: a mesh with an ``"edges"`` axis of size D = ``graph.n_shards`` and optionally a
        ``"features"`` axis (see `make_mesh`); if that axis is longer than 1, node data is split along
        its axis 1 (F must be divisible by its size) and so is the output.
      graph: the `ShardedGraph` from `partition_edges`, ideally already placed with ``graph.put(mesh)``.
      op: ``"copy_u"``, ``"copy_e"``, ``"u_add_e"``, ``"u_sub_e"``, ``"u_mul_e"`` or ``"u_div_e"``.
      reduce: ``"sum"``, ``"mean"``, ``"max"`` or ``"min"``.
      u: node data, shape (N, ...), float; replicated over ``"edges"``.
      e: edge data in the shard layout, shape (D, E_shard, ...) (use ``graph.shard_edge_data`` to
        convert (E, ...) data); it broadcasts left-aligned against u as in ``gspmm``.
      tie: for max/min, ``"split"`` shares the gradient equally among all messages attaining the
        extremum (on any device); ``"first"`` gives it to the lowest original edge id.

    Returns:
      (N, ...), the same numbers as ``gspmm`` on one device (up to float summation order); replicated
      over ``"edges"``. A node with no incoming edge gets 0.

    Raises:
      ValueError: unknown op/reducer/tie, missing operand, shapes that disagree with the graph or mesh.
      TypeError: non-float operands, or a mesh that is not a `jax.sharding.Mesh`.

    Notes:
      Differentiable w.r.t. u and e in reverse mode to any order and in forward mode: sum/mean go
      through ``gspmm``'s backward and ``psum``; max/min route the cotangent (and the tangent) to the
      attaining messages on every device by the tie rule (`jgrad._src._op.Op`). The cotangent of u is a
      partial sum per device that the transpose of the replication sums with ``psum``. Works under
      ``jit``; ``mesh``, ``op``, ``reduce`` and ``tie`` are static.

    Example:
      >>> import jax, jax.numpy as jnp, jgrad
      >>> from jgrad.parallel import make_mesh, partition_edges, sharded_gspmm
      >>> mesh = make_mesh(1)
      >>> g = jgrad.Graph.from_edges([0, 1], [2, 2], n_nodes=3)
      >>> gspmm = jax.jit(sharded_gspmm, static_argnums=(0, 2, 3))  # mesh, op and reducer are static
      >>> gspmm(mesh, partition_edges(g, 1), "copy_u", "max", jnp.array([[1.0], [2.0], [5.0]])).tolist()
      [[0.0], [0.0], [2.0]]
    """
    where = "sharded_gspmm"
    check_choice(where, "message op", op, MESSAGE_OPS)
    check_choice(where, "reducer", reduce, REDUCERS)
    check_choice(where, "tie rule", tie, TIE_RULES)
    check_mesh(where, mesh, graph)
    u, e = _check_operands(where, graph, op, u, e)
    out_dtype = jnp.result_type(*(value for value in (u, e) if value is not None))
    wide = accumulation_dtype(out_dtype)  # bfloat16 / float16: summed in float32, as jgrad.ops.gspmm does
    u, e = (None if value is None else value.astype(wide) for value in (u, e))
    out_ndim = u.ndim if u is not None else e.ndim - 1
    feature_split = _feature_split(where, mesh, u, e, op)

    node_spec = P(None, FEATURE_AXIS) if feature_split else P()
    edge_spec = P(EDGE_AXIS)
    if e is not None and feature_split and e.ndim >= 3 and e.shape[2] > 1:
        e_spec = P(EDGE_AXIS, None, FEATURE_AXIS)
    else:
        e_spec = edge_spec
    args = {"senders": graph.senders, "receivers": graph.receivers, "mask": graph.edge_mask,
            "edge_id": graph.edge_id}
    specs = {"senders": edge_spec, "receivers": edge_spec, "mask": edge_spec, "edge_id": edge_spec}
    if u is not None:
        args["u"], specs["u"] = u, node_spec
    if e is not None:
        args["e"], specs["e"] = e, e_spec
    out_spec = P(None, FEATURE_AXIS) if feature_split and out_ndim >= 2 else P()
    # Edge data that is not itself split over features meets feature-split node data: its cotangent is
    # then a partial sum per feature shard, to be added up over that axis.
    widen_e = feature_split and e is not None and e_spec == edge_spec
    local = functools.partial(_local_gspmm, op, reduce, tie, graph.n_nodes, widen_e)
    return shard_map(local, mesh=mesh, in_specs=(specs,), out_specs=out_spec)(args).astype(out_dtype)


def sharded_spmm(mesh: Mesh, graph: ShardedGraph, x: ArrayLike, edge_weight: ArrayLike | None = None) -> jax.Array:
    """Edge-sharded ``y = A @ x``: ``y[receivers[e]] += w[e] * x[senders[e]]``, combined with ``psum``.

    Args:
      mesh: see `sharded_gspmm`.
      graph: the `ShardedGraph`; its ``edge_weight`` is used unless ``edge_weight`` is given, and an
        unweighted graph has weights of ones.
      x: node features, shape (N, ...), replicated over ``"edges"`` (or split over ``"features"``).
      edge_weight: optional weights in the shard layout, (D, E_shard) or (D, E_shard, ...).

    Returns:
      (N, ...), equal to ``jgrad.ops.spmm`` on the unsharded graph. Differentiable w.r.t. x and the
      weights, to any order.

    Example:
      >>> import jax, jax.numpy as jnp, jgrad
      >>> from jgrad.parallel import make_mesh, partition_edges, sharded_spmm
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2, edge_weight=[2.0, 3.0])
      >>> spmm = jax.jit(sharded_spmm, static_argnums=0)  # the mesh is static
      >>> spmm(make_mesh(1), partition_edges(g, 1), jnp.array([[1.0], [1.0]])).tolist()
      [[3.0], [2.0]]
    """
    weight = graph.edge_weight if edge_weight is None else edge_weight
    if weight is None:
        return sharded_gspmm(mesh, graph, "copy_u", "sum", u=x)
    return sharded_gspmm(mesh, graph, "u_mul_e", "sum", u=x, e=weight)


def sharded_edge_softmax(mesh: Mesh, graph: ShardedGraph, logits: ArrayLike) -> jax.Array:
    """Edge-sharded `jgrad.ops.edge_softmax`: a softmax over each receiver's incoming edges, on all devices.

    Semantics: ``out[e] = exp(logits[e]) / sum(exp(logits[e']) for e' with receivers[e'] == receivers[e])``,
    where the edges of one receiver may lie on several devices. Each device takes the per-receiver
    maximum of its logits, ``pmax`` makes it global (N values), each device exponentiates its shifted
    logits and sums them per receiver, and ``psum`` makes the (N,) denominators global.

    Args:
      mesh: a mesh with an ``"edges"`` axis of size ``graph.n_shards`` (a ``"features"`` axis, if any, is
        not used: the logits are replicated along it).
      graph: the `ShardedGraph`.
      logits: edge scores in the shard layout, shape (D, E_shard) or (D, E_shard, H), float.

    Returns:
      The softmax in the shard layout, shape of ``logits``; padding slots are 0, and so are the edges of
      a receiver whose logits are all ``-inf``. Bring it back to the original edge order with
      ``graph.unshard_edge_data``.

    Notes:
      Reverse mode (any order), forward mode, ``jit`` and ``vmap``: the maximum is a shift held
      constant (softmax does not depend on it), so gradients go only through the exponentials and the
      ``psum``; per device it saves O(E_shard·H) residuals. Stable for scores of any magnitude; NaN and
      ``+inf`` scores give the NaNs of `jgrad.ops.edge_softmax`.

    Example:
      >>> import jax, jax.numpy as jnp, jgrad
      >>> from jgrad.parallel import make_mesh, partition_edges, sharded_edge_softmax
      >>> sg = partition_edges(jgrad.Graph.from_edges([0, 1, 2], [2, 2, 0], n_nodes=3), 1)
      >>> softmax = jax.jit(sharded_edge_softmax, static_argnums=0)  # the mesh is static
      >>> out = softmax(make_mesh(1), sg, sg.shard_edge_data(jnp.array([0.0, 0.0, 5.0])))
      >>> sg.unshard_edge_data(out).tolist()
      [0.5, 0.5, 1.0]
    """
    where = "sharded_edge_softmax"
    check_mesh(where, mesh, graph)
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"{where}: logits must be a float array; got dtype {logits.dtype}.")
    if logits.shape[:2] != graph.senders.shape:
        raise ValueError(f"{where}: logits must have the shard layout; got shape {tuple(logits.shape)}, "
                         f"expected {tuple(graph.senders.shape)} + (...). Convert (E, ...) logits with "
                         "graph.shard_edge_data(logits).")
    spec = P(EDGE_AXIS)
    local = functools.partial(_local_edge_softmax, graph.n_nodes)
    wide = accumulation_dtype(logits.dtype)  # bfloat16 / float16: the sums in float32
    return shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec)(
        graph.receivers, graph.edge_mask, logits.astype(wide)).astype(logits.dtype)


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------
def _check_operands(where: str, graph: ShardedGraph, op: str, u, e):
    def edge_problem(e):
        if e.shape[:2] != graph.senders.shape:
            return (f"e must have the shard layout; got shape {tuple(e.shape)}, expected "
                    f"{tuple(graph.senders.shape)} + (...). Convert (E, ...) edge data with "
                    "graph.shard_edge_data(e).")
        return None

    u, e = check_operands(where, op, u, e, graph.n_nodes, edge_problem)
    if u is not None and e is not None:
        check_broadcast(where, "e", e.shape[1:], "u", u.shape)
    return u, e


def _feature_split(where: str, mesh: Mesh, u, e, op: str) -> bool:
    k = mesh.shape.get(FEATURE_AXIS, 1)
    if k == 1:
        return False
    width = u.shape[1] if u is not None and u.ndim >= 2 else (e.shape[2] if u is None and e.ndim >= 3 else None)
    if width is None or width % k:
        raise ValueError(
            f"{where}: the mesh splits features {k} ways, so the node data's axis 1 must be divisible by "
            f"{k}; got {width if width is not None else 'no feature axis'}. Use make_mesh(n, 1) to "
            "replicate features instead."
        )
    return True


# --------------------------------------------------------------------------------------------------
# Per-device bodies (run inside shard_map; array leaves carry a leading shard axis of size 1)
# --------------------------------------------------------------------------------------------------
def _local_gspmm(op, reduce, tie, n, widen_e, args):
    senders, receivers = args["senders"][0], args["receivers"][0]
    mask, edge_id = args["mask"][0], args["edge_id"][0]
    u = args.get("u")
    e = args["e"][0] if "e" in args else None
    if u is not None:
        # Node data is the same on every edge shard; mark it per-device so that its cotangent (a
        # partial sum per device) is added up by the transpose of this cast, a psum.
        u = jax.lax.pcast(u, EDGE_AXIS, to="varying")
    if widen_e:
        e = jax.lax.pcast(e, FEATURE_AXIS, to="varying")
    if reduce in ("sum", "mean"):
        local_graph = Graph(senders=senders, receivers=receivers, n_nodes=n, edge_mask=mask)
        partial = gspmm(local_graph, op, "sum", u, e)
        total = jax.lax.psum(partial, EDGE_AXIS)
        if reduce == "sum":
            return total
        count = jax.lax.psum(jax.ops.segment_sum(mask.astype(total.dtype), receivers, n), EDGE_AXIS)
        return total / align_edge(jnp.maximum(count, 1.0), total.ndim)
    return _extremum(op, reduce, tie, n, senders, receivers, mask, edge_id, u, e)


def _safe_edge(e, mask):
    if e is None:
        return None
    return jnp.where(align_edge(mask, e.ndim), e, jnp.ones((), e.dtype))


def _messages(op, senders, mask, u, e):
    return message(op, u[senders] if u is not None else None, _safe_edge(e, mask))


def _extremum(op, reduce, tie, n, senders, receivers, mask, edge_id, u, e):
    """max/min over every device's edges (``pmax``/``pmin``); differentiable in every mode, with the
    cotangent (and the tangent) routed to the attaining messages by the tie rule (`_shares`)."""
    return _EXTREMUM(senders, receivers, mask, edge_id, u, e, op=op, reduce=reduce, tie=tie, n=n)


def _extremum_forward(senders, receivers, mask, edge_id, u, e, *, op, reduce, tie, n):
    msg = _messages(op, senders, mask, u, e)
    live = align_edge(mask, msg.ndim)
    if reduce == "max":
        local = jax.ops.segment_max(jnp.where(live, msg, -jnp.inf), receivers, num_segments=n)
        combined = jax.lax.pmax(local, EDGE_AXIS)
    else:
        local = jax.ops.segment_min(jnp.where(live, msg, jnp.inf), receivers, num_segments=n)
        combined = jax.lax.pmin(local, EDGE_AXIS)
    # One pmax of (N, ...) uint8 flags: 1 where some device has an edge into v (else the result is 0),
    # 2 where some device's partial is NaN, which pmax / pmin may drop (pmax(NaN, -inf) is -inf on CPU).
    has_edge = jax.ops.segment_max(mask.astype(jnp.uint8), receivers, num_segments=n)
    flags = jax.lax.pmax(align_edge(has_edge, local.ndim) | (jnp.isnan(local).astype(jnp.uint8) << 1), EDGE_AXIS)
    combined = jnp.where(flags == 1, combined, jnp.zeros((), combined.dtype))
    return jnp.where(flags >= 2, jnp.full((), jnp.nan, combined.dtype), combined)


def _shares(operands, out, *, op, tie, n):
    """Each message's share of its receiver's extremum, (E, ...): split equally among every attaining
    message on every device (``"split"``), or all to the lowest original edge id (``"first"``)."""
    senders, receivers, mask, edge_id, u, e = operands
    msg = jax.lax.stop_gradient(_messages(op, senders, mask, u, e))
    hit = (msg == jax.lax.stop_gradient(out)[receivers]) & align_edge(mask, msg.ndim)
    if tie == "split":
        count = jax.lax.psum(jax.ops.segment_sum(hit.astype(msg.dtype), receivers, num_segments=n), EDGE_AXIS)
        return hit / jnp.maximum(count, 1.0)[receivers]
    position = jnp.broadcast_to(align_edge(edge_id, msg.ndim), msg.shape)
    position = jnp.where(hit, position, jnp.iinfo(jnp.int32).max)
    first = jax.lax.pmin(jax.ops.segment_min(position, receivers, num_segments=n), EDGE_AXIS)
    return (hit & (position == first[receivers])).astype(msg.dtype)


def _extremum_tangent(operands, out, tangents, *, op, reduce, tie, n):
    """The attaining messages' tangents, weighted by their shares and summed over every device."""
    senders, receivers, mask, edge_id, u, e = operands
    moving = [i for i in (4, 5) if tangents[i] is not None]  # u, e

    def messages(*values):
        given = dict(zip(moving, values))
        return _messages(op, senders, mask, given.get(4, u), given.get(5, e))

    d_msg = jax.jvp(messages, tuple(operands[i] for i in moving), tuple(tangents[i] for i in moving))[1]
    share = _shares(operands, out, op=op, tie=tie, n=n)
    return jax.lax.psum(jax.ops.segment_sum(d_msg * share, receivers, num_segments=n), EDGE_AXIS)


def _extremum_backward(operands, out, cotangent, wanted, *, op, reduce, tie, n):
    senders, receivers, mask, edge_id, u, e = operands
    d_msg = cotangent[receivers] * _shares(operands, out, op=op, tie=tie, n=n)
    u_edge = u[senders] if wanted[5] and op in ("u_mul_e", "u_div_e") else None  # read by de only
    d_u_edge, d_e_edge = message_cotangents(op, d_msg, u_edge, _safe_edge(e, mask), want_u=wanted[4],
                                            want_e=wanted[5])
    du = de = None
    if d_u_edge is not None:
        du = sum_to_shape(jax.ops.segment_sum(d_u_edge, senders, num_segments=n), u.shape)
    if d_e_edge is not None:
        de = sum_to_shape(d_e_edge, e.shape)
        de = jnp.where(align_edge(mask, de.ndim), de, jnp.zeros((), de.dtype))
    return None, None, None, None, du, de


_EXTREMUM = Op("jgrad_sharded_extremum", _extremum_forward, tangent=_extremum_tangent, backward=_extremum_backward)


def _local_edge_softmax(n, receivers, mask, logits):
    receivers, mask, logits = receivers[0], mask[0], logits[0]
    live = align_edge(mask, logits.ndim)
    safe = jnp.where(live, logits, jnp.zeros((), logits.dtype))
    frozen = jax.lax.stop_gradient(safe)
    local_max = jax.ops.segment_max(jnp.where(live, frozen, -jnp.inf), receivers, num_segments=n)
    shift = jax.lax.stop_gradient(jax.lax.pmax(local_max, EDGE_AXIS))
    shift = jnp.where(jnp.isfinite(shift), shift, jnp.zeros((), shift.dtype))
    z = jnp.where(live, jnp.exp(safe - shift[receivers]), jnp.zeros((), logits.dtype))
    denominator = jax.lax.psum(jax.ops.segment_sum(z, receivers, num_segments=n), EDGE_AXIS)[receivers]
    alive = live & (denominator != 0)  # a receiver whose logits are all -inf: 0, as jgrad.ops.edge_softmax
    return jnp.where(alive, z / jnp.where(alive, denominator, jnp.ones((), logits.dtype)), 0)[None]
