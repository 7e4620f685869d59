"""Message and edge ops shared by gspmm, gsddmm and their sharded forms: names, broadcasting and partial derivatives.

Broadcasting of edge data against node data is *left-aligned* after the edge axis: an edge array of
shape (E, d1, ..., dk) is padded with trailing 1s to the rank of the node array, and each dimension must
then equal the node array's or be 1. So for u of shape (N, H, F) the edge data may be (E,), (E, 1),
(E, H), (E, H, 1) or (E, H, F).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from ._types import check_choice

MessageOp = Literal["copy_u", "copy_e", "u_add_e", "u_sub_e", "u_mul_e", "u_div_e"]
MESSAGE_OPS: tuple[str, ...] = ("copy_u", "copy_e", "u_add_e", "u_sub_e", "u_mul_e", "u_div_e")

EdgeOp = Literal["add", "sub", "mul", "div", "dot", "copy_lhs", "copy_rhs"]
EDGE_OPS: tuple[str, ...] = ("add", "sub", "mul", "div", "dot", "copy_lhs", "copy_rhs")

Target = Literal["u", "v", "e"]
TARGETS: tuple[str, ...] = ("u", "v", "e")


def check_message_op(where: str, op: str) -> None:
    check_choice(where, "message op", op, MESSAGE_OPS)


def uses_u(op: str) -> bool:
    return op != "copy_e"


def uses_e(op: str) -> bool:
    return op != "copy_u"


def align_edge(edge: jax.Array, node_rank: int) -> jax.Array:
    """Pads ``edge`` (E, ...) with trailing size-1 axes to rank ``node_rank`` (left-aligned broadcast)."""
    return edge.reshape(edge.shape + (1,) * max(node_rank - edge.ndim, 0))


def check_broadcast(where: str, edge_name: str, edge_shape: tuple, node_name: str, node_shape: tuple) -> None:
    """Raises if edge data of ``edge_shape`` (E, ...) cannot broadcast against node data (N, ...)."""
    trailing = tuple(edge_shape[1:])
    node_trailing = tuple(node_shape[1:])
    ok = len(trailing) <= len(node_trailing) and all(
        d == 1 or d == n for d, n in zip(trailing, node_trailing)
    )
    if not ok:
        e = edge_shape[0]
        expected = [(e,), (e, 1)]
        if len(node_trailing) >= 2:
            expected.append((e,) + node_trailing[:-1] + (1,))
        expected.append((e,) + node_trailing)
        listed = ", ".join(str(s) for s in dict.fromkeys(expected))
        raise ValueError(
            f"{where}: {edge_name} cannot broadcast against {node_name} of shape {tuple(node_shape)}; "
            f"got {tuple(edge_shape)}, expected one of {listed}."
        )


# The elementwise arithmetic of both kinds of op: gsddmm's "add" ... "div", and gspmm's "u_add_e" ...
# "u_div_e" (the same operation between the gathered u and e).
_ARITHMETIC = {"add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply, "div": jnp.divide}
_MESSAGE_ARITHMETIC = {f"u_{name}_e": fn for name, fn in _ARITHMETIC.items()}


def message(op: str, u_edge: jax.Array | None, e: jax.Array | None) -> jax.Array:
    """The per-edge message ``op(u[senders[e]], e[e])``; ``u_edge`` is already gathered, (E, ...)."""
    if op == "copy_u":
        return u_edge
    if op == "copy_e":
        return e
    return _MESSAGE_ARITHMETIC[op](u_edge, align_edge(e, u_edge.ndim))


def message_cotangents(op: str, d_msg: jax.Array, u_edge: jax.Array | None, e: jax.Array | None, *,
                       want_u: bool = True, want_e: bool = True) -> tuple[jax.Array | None, jax.Array | None]:
    """The cotangents of a message's two inputs at every edge, given the message's cotangent d_msg (E, ...):
    ``(of u_edge, of e)``, both of d_msg's shape (sum the second to e's shape); None for an input the op
    does not use or that is not wanted. ``u_edge`` is u gathered at the senders (read for ``u_mul_e``
    and ``u_div_e``); ``e`` must have no zeros at padding edges (``u_div_e`` divides by it)."""
    d_u = d_e = None
    if want_u and uses_u(op):
        d_u = (d_msg * align_edge(e, d_msg.ndim) if op == "u_mul_e" else
               d_msg / align_edge(e, d_msg.ndim) if op == "u_div_e" else d_msg)
    if want_e and uses_e(op):
        d_e = (d_msg * u_edge if op == "u_mul_e" else
               -d_msg * u_edge / jnp.square(align_edge(e, d_msg.ndim)) if op == "u_div_e" else
               -d_msg if op == "u_sub_e" else d_msg)
    return d_u, d_e


def sum_to_shape(x: jax.Array, shape: tuple) -> jax.Array:
    """Sums ``x`` over the axes where ``shape`` (left-aligned, padded with 1s) has size 1 and x has not.

    The cotangent of a left-aligned broadcast: returns an array of exactly ``shape``.
    """
    padded = tuple(shape) + (1,) * (x.ndim - len(shape))
    axes = tuple(i for i, (s, d) in enumerate(zip(padded, x.shape)) if s == 1 and d != 1)
    if axes:
        x = jnp.sum(x, axis=axes, keepdims=True)
    return x.reshape(shape)


def output_shape(op: str, n: int, u_shape: tuple | None, e_shape: tuple | None) -> tuple:
    if op == "copy_e":
        return (n,) + tuple(e_shape[1:])
    return (n,) + tuple(u_shape[1:])


def edge_binary(op: str, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """The per-edge binary op of gsddmm on gathered (E, ...) operands, broadcast left-aligned."""
    if op == "copy_lhs":
        return lhs
    if op == "copy_rhs":
        return rhs
    rank = max(lhs.ndim, rhs.ndim)
    lhs, rhs = align_edge(lhs, rank), align_edge(rhs, rank)
    if op == "dot":
        return jnp.sum(lhs * rhs, axis=-1, keepdims=True)
    return _ARITHMETIC[op](lhs, rhs)


def check_operands(where: str, op: str, u, e, n_nodes: int, edge_problem):
    """Validates gspmm-style operands; returns ``(u, e)`` as float arrays (None where unused).

    ``u`` must be a float (N, ...) array when the op reads node data, ``e`` a float array when it reads
    edge data; ``edge_problem(e)`` returns a message for a badly shaped ``e`` (its expected layout
    differs between one device and sharded edges) or None. Every shape problem is reported at once.
    """
    problems = []
    if uses_u(op):
        if u is None:
            raise ValueError(f"{where}: op {op!r} needs node data u; got u=None.")
        u = float_array(where, "u", u)
        if u.ndim == 0 or u.shape[0] != n_nodes:
            problems.append(f"u must have one row per node; got shape {tuple(u.shape)}, expected "
                            f"({n_nodes}, ...) for n_nodes={n_nodes}.")
    else:
        u = None
    if uses_e(op):
        if e is None:
            raise ValueError(f"{where}: op {op!r} needs edge data e; got e=None.")
        e = float_array(where, "e", e)
        problem = edge_problem(e)
        if problem:
            problems.append(problem)
    else:
        e = None
    if problems:
        raise ValueError(f"{where}: " + " ".join(problems))
    return u, e


def float_array(where: str, name: str, value) -> jax.Array:
    """``value`` as a jax array, or a TypeError naming ``name`` if its dtype is not floating."""
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"{where}: {name} must be a float array; got dtype {value.dtype}. "
                        f"Cast it, e.g. {name}.astype(jnp.float32).")
    return value
