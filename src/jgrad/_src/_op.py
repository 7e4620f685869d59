"""`Op`: a differentiable kernel in every mode of JAX, as two primitives.

jgrad's kernels have hand-written backward passes (for memory and speed) and must work in forward mode
too (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``), also through ``jax.jit``, ``lax.scan`` and
``lax.fori_loop`` bodies traced before forward mode reaches them. ``jax.custom_vjp`` cannot do the
second, so an `Op` is built from JAX's primitive machinery instead:

- ``<name>``, the op: its value is ``forward(*operands, **static)``;
- ``<name>_tangent``, its tangent map: linear in the tangents of the operands, evaluated in forward
  mode with ``tangent`` and transposed in reverse mode with ``backward``.

Reverse mode linearises (the op's JVP rule binds both primitives) and transposes the tangent map, so
``jax.grad`` runs the hand-written ``backward`` and keeps only the operands and outputs as residuals.
Under ``vmap`` both primitives record, per level, the batch axis of each argument and stay single
equations (their implementations are the functions under ``jax.vmap``). Inside ``shard_map`` the
operands are cast to the union of their varying manual axes first, so that the transpose of that cast
sums the cotangents of replicated operands.

Writing a kernel as an `Op` (see `jgrad.ops._primitives` for the plain-path g-SpMM and g-SDDMM):

- ``forward(*operands, **static)``: the value, one array or a tuple of arrays.
- ``tangent(operands, outputs, tangents, **static)``: the outputs' tangents (a tuple like the outputs;
  None for integer outputs), linear in ``tangents``: one per operand, None where the operand is not
  differentiated. `tangent_of` builds it from any JAX-differentiable formula of the same value.
- ``backward(operands, outputs, cotangents, wanted, **static)``: one cotangent per operand (None where
  ``wanted[i]`` is False: that operand needs none), given the outputs' cotangents (None for integer
  outputs). It must be differentiable itself (built from `Op` calls or JAX ops) for higher orders.
  `backward_of` builds it from a JAX-differentiable formula, for ops (a kernel's own backward) whose
  derivative is that of their XLA reference.

Operands are arrays, None or pytrees of arrays (a plan); only float arrays at the top level are
differentiated. ``static`` values must be hashable: they are part of ``jit``'s cache key.

Under ``vmap`` an op may fold the batch into its own arrays instead of running once per batch entry
(``batch``, e.g. the batch of a sum's features as more feature columns: one walk over the graph for
the whole batch). ``batch(operands, dims, **static)`` gets the operands with their batch axes and the
axis of each top-level operand (None where not batched); it returns ``(outputs, output axes)`` by
calling the op on folded operands, or None to leave it to the default (``jax.vmap`` of ``forward``).

Each op traces ``forward`` (and its tangent map) once per signature into a cached jaxpr that the
abstract evaluation, the lowering and eager calls share; a trace holds the kernels it called, so code
that swaps kernels at run time calls `forget_traces`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive, jaxpr_as_fun
from jax.interpreters import ad, batching, mlir

from ._checks import not_checking


def _is_float(x: Any) -> bool:
    return x is not None and hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)


def _varying(x: Any) -> frozenset:
    """The manual mesh axes ``x`` varies over (inside ``shard_map``); empty elsewhere."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)
    return frozenset(getattr(mat, "varying", None) or getattr(aval, "vma", None) or ())


def _substituted(operands, positions, values) -> list:
    """``operands`` with ``values`` at ``positions``."""
    full = list(operands)
    for i, value in zip(positions, values):
        full[i] = value
    return full


def tangent_of(plain: Callable) -> Callable:
    """A ``tangent`` function from ``plain(*operands, **static)``, any JAX-differentiable formula of the
    op's value: forward mode of ``plain`` in the differentiated operands."""

    def tangent(operands, outputs, tangents, **static):
        moving = [i for i, t in enumerate(tangents) if t is not None]
        of_moving = lambda *values: plain(*_substituted(operands, moving, values), **static)  # noqa: E731
        return jax.jvp(of_moving, tuple(operands[i] for i in moving), tuple(tangents[i] for i in moving))[1]

    return tangent


def backward_of(reference: Callable, over: tuple[int, ...]) -> Callable:
    """A ``backward`` from ``reference(*operands, **static)``, a JAX-differentiable formula of the op's
    value: reverse mode of ``reference`` in the operands at ``over`` (the others get None). For ops
    whose own backward is their reference's (a kernel's backward, differentiated once more)."""

    def backward(operands, outputs, cotangents, wanted, **static):
        of_over = lambda *values: reference(*_substituted(operands, over, values), **static)  # noqa: E731
        grads = jax.vjp(of_over, *(operands[i] for i in over))[1](cotangents)
        return tuple(_substituted([None] * len(operands), over, grads))

    return backward


class Op:
    """A differentiable kernel (see the module docstring); call it like ``forward``.

    ``saves``: the indices of the operands that ``tangent`` and ``backward`` read (default: all). The
    others reach them as None, and reverse mode keeps no residual for them (edge softmax keeps its
    output, not its logits).
    """

    def __init__(self, name: str, forward: Callable, *, tangent: Callable, backward: Callable,
                 saves: tuple[int, ...] | None = None, batch: Callable | None = None):
        self.name, self._forward, self._tangent, self._backward = name, forward, tangent, backward
        self._saves, self._fold = saves, batch
        self.op_p, self.tangent_p = Primitive(name), Primitive(name + "_tangent")
        for primitive, impl, abstract in ((self.op_p, self._op_impl, self._op_abstract),
                                          (self.tangent_p, self._tangent_impl, self._tangent_abstract)):
            primitive.multiple_results = True
            primitive.def_impl(impl)
            primitive.def_abstract_eval(abstract)
            mlir.register_lowering(primitive, mlir.lower_fun(impl, multiple_results=True))
        ad.primitive_jvps[self.op_p] = self._op_jvp
        ad.primitive_jvps[self.tangent_p] = self._tangent_jvp
        ad.primitive_transposes[self.tangent_p] = self._tangent_transpose
        batching.primitive_batchers[self.op_p] = functools.partial(self._batch, self.op_p)
        batching.primitive_batchers[self.tangent_p] = functools.partial(self._batch, self.tangent_p)

    def __repr__(self) -> str:
        return f"Op({self.name})"

    def __call__(self, *operands: Any, **static: Any) -> Any:
        leaves, tree = jax.tree.flatten(operands)
        axes = frozenset().union(*(_varying(leaf) for leaf in leaves))
        if axes:  # inside shard_map
            leaves = [leaf if _varying(leaf) == axes else
                      jax.lax.pcast(leaf, tuple(sorted(axes - _varying(leaf), key=str)), to="varying")
                      for leaf in leaves]
        static = tuple(sorted(static.items()))
        out_tree = self._op_jaxpr(tuple(jax.typeof(leaf) for leaf in leaves), tree, static, ())[1]
        flat = self.op_p.bind(*leaves, tree=tree, out_tree=out_tree, static=static, levels=())
        return jax.tree.unflatten(out_tree, flat)

    # --- the op ------------------------------------------------------------------------------------
    def _forward_fn(self, tree, static, levels):
        """The flat forward, under one ``jax.vmap`` per batching level (innermost first)."""

        def flat(*leaves):
            return tuple(jax.tree.leaves(self._forward(*jax.tree.unflatten(tree, leaves), **dict(static))))

        for dims in levels:
            flat = jax.vmap(flat, in_axes=dims, out_axes=0)
        return flat

    @functools.lru_cache(maxsize=4096)
    def _op_jaxpr(self, avals, tree, static, levels):
        """``forward`` traced once per signature: its jaxpr (which the abstract evaluation, the
        lowering and eager calls all use) and the structure of its result."""
        with not_checking():  # the primitive is opaque to checkify: checks inside it would never run
            if levels:
                return jax.make_jaxpr(self._forward_fn(tree, static, levels))(*avals), None
            structured = lambda *leaves: self._forward(*jax.tree.unflatten(tree, leaves), **dict(static))  # noqa: E731
            closed, shapes = jax.make_jaxpr(structured, return_shape=True)(*avals)
        return closed, jax.tree.structure(shapes)

    def _op_impl(self, *leaves, tree, out_tree, static, levels):
        closed = self._op_jaxpr(tuple(jax.typeof(leaf) for leaf in leaves), tree, static, levels)[0]
        return jaxpr_as_fun(closed)(*leaves)

    def _op_abstract(self, *avals, tree, out_tree, static, levels):
        return list(self._op_jaxpr(avals, tree, static, levels)[0].out_avals)

    def _op_jvp(self, primals, tangents, *, tree, out_tree, static, levels):
        outs = self.op_p.bind(*primals, tree=tree, out_tree=out_tree, static=static, levels=levels)
        zeros = [ad.Zero(jax.typeof(o).to_tangent_aval()) for o in outs]
        # one tangent per top-level operand: only top-level float arrays are differentiated
        spans = _spans(tree)
        operands = jax.tree.unflatten(tree, primals)
        moving = tuple(_is_float(x) and stop - start == 1 and type(tangents[start]) is not ad.Zero
                       for x, (start, stop) in zip(operands, spans))
        float_outs = tuple(_is_float(o) for o in outs)
        if not any(moving) or not any(float_outs):
            return outs, zeros
        saved = [i for i in range(len(spans)) if self._saves is None or i in self._saves]
        kept = [j for i in saved for j in range(*spans[i])]  # the leaves the tangent map reads
        saved_tree = jax.tree.structure(tuple(x if i in saved else None for i, x in enumerate(operands)))
        moved = [spans[i][0] for i, m in enumerate(moving) if m]
        levels_t = tuple(tuple(dims[j] for j in kept) + (0,) * len(outs) + tuple(dims[j] for j in moved)
                         for dims in levels)
        t_outs = iter(self.tangent_p.bind(*[primals[j] for j in kept], *outs, *[tangents[j] for j in moved],
                                          tree=saved_tree, out_tree=out_tree, static=static, moving=moving,
                                          float_outs=float_outs, levels=levels_t))
        return outs, [next(t_outs) if f else z for f, z in zip(float_outs, zeros)]

    # --- the tangent map ---------------------------------------------------------------------------
    def _split_args(self, args, tree, out_tree, moving, float_outs):
        """(operands, outputs, per-operand tangents or cotangent slots) of the tangent map's flat args."""
        n = tree.num_leaves
        operands = jax.tree.unflatten(tree, args[:n])
        outputs = jax.tree.unflatten(out_tree, args[n:n + len(float_outs)])
        rest = iter(args[n + len(float_outs):])
        return operands, outputs, tuple(next(rest) if m else None for m in moving)

    def _tangent_fn(self, tree, out_tree, static, moving, float_outs, levels):
        def flat(*args):
            operands, outputs, tangents = self._split_args(args, tree, out_tree, moving, float_outs)
            result = self._tangent(operands, outputs, tangents, **dict(static))
            # align with the outputs, None (no output, or an integer one) included
            is_none = lambda x: x is None  # noqa: E731
            pairs = zip(jax.tree.leaves(outputs, is_leaf=is_none), jax.tree.leaves(result, is_leaf=is_none))
            return tuple(t for o, t in pairs if _is_float(o))

        for dims in levels:
            flat = jax.vmap(flat, in_axes=dims, out_axes=0)
        return flat

    @functools.lru_cache(maxsize=4096)
    def _tangent_jaxpr(self, avals, tree, out_tree, static, moving, float_outs, levels):
        """The tangent map traced once per signature (see `_op_jaxpr`)."""
        with not_checking():
            return jax.make_jaxpr(self._tangent_fn(tree, out_tree, static, moving, float_outs, levels))(*avals)

    def _tangent_impl(self, *args, tree, out_tree, static, moving, float_outs, levels):
        avals = tuple(jax.typeof(arg) for arg in args)
        return jaxpr_as_fun(self._tangent_jaxpr(avals, tree, out_tree, static, moving, float_outs, levels))(*args)

    def _tangent_abstract(self, *avals, tree, out_tree, static, moving, float_outs, levels):
        return list(self._tangent_jaxpr(avals, tree, out_tree, static, moving, float_outs, levels).out_avals)

    def _tangent_jvp(self, primals, tangents, *, tree, out_tree, static, moving, float_outs, levels):
        # Forward mode of the tangent map itself (reverse over forward, forward over forward): JAX
        # differentiates its formula.
        fn = self._tangent_fn(tree, out_tree, static, moving, float_outs, levels)
        dense = [i for i, p in enumerate(primals) if _is_float(p)]
        of_dense = lambda *values: fn(*_substituted(primals, dense, values))  # noqa: E731
        out, t_out = jax.jvp(of_dense, tuple(primals[i] for i in dense),
                             tuple(ad.instantiate_zeros(tangents[i]) for i in dense))
        return list(out), list(t_out)

    def _tangent_transpose(self, cotangents, *args, tree, out_tree, static, moving, float_outs, levels):
        n, n_out = tree.num_leaves, len(float_outs)
        if any(ad.is_undefined_primal(a) for a in args[:n + n_out]):
            raise NotImplementedError(f"{self.name}: the tangent map is linear in the tangents only")
        linear = [ad.is_undefined_primal(a) for a in args[n + n_out:]]
        if not any(linear):
            return [None] * len(args)
        dtypes = [a.aval.dtype for a, keep in zip(args[n + n_out:], linear) if keep]
        moving_at = [i for i, m in enumerate(moving) if m]
        linear_ops = {i for i, keep in zip(moving_at, linear) if keep}
        wanted = tuple(i in linear_ops for i in range(len(moving)))

        def flat(*values):
            operands, outputs, _ = self._split_args(values[:n + n_out], tree, out_tree, (False,) * len(moving),
                                                    float_outs)
            cts = iter(values[n + n_out:])
            out_cts = jax.tree.unflatten(out_tree, [next(cts) if f else None for f in float_outs])
            grads = self._backward(operands, outputs, out_cts, wanted, **dict(static))
            # None from the backward: the operand does not change the value (it is held constant)
            picked = [jnp.zeros_like(operands[i]) if grads[i] is None else grads[i]
                      for i in moving_at if i in linear_ops]
            return tuple(g.astype(dtype) for g, dtype in zip(picked, dtypes))

        kept = [k for k, keep in enumerate(linear) if keep]
        n_float = sum(float_outs)
        for dims in levels:  # the cotangents are batched like the tangent map's outputs: at 0
            in_dims = tuple(dims[:n + n_out]) + (0,) * n_float
            out_dims = tuple(dims[n + n_out + k] for k in kept)
            inner = jax.vmap(flat, in_axes=in_dims, out_axes=tuple(0 if d is None else d for d in out_dims))
            flat = functools.partial(_sum_unbatched, inner, out_dims)
        float_cts = [ad.instantiate_zeros(c) for c in cotangents]
        grads = iter(flat(*args[:n + n_out], *float_cts))
        return [None] * (n + n_out) + [next(grads) if keep else None for keep in linear]

    # --- vmap --------------------------------------------------------------------------------------
    def _batch(self, primitive, args, dims, **params):
        if primitive is self.op_p and self._fold is not None and not params["levels"]:
            folded = self._folded(args, dims, **params)
            if folded is not None:
                return folded
        outs = primitive.bind(*args, **dict(params, levels=params["levels"] + (tuple(dims),)))
        return outs, [0] * len(outs)

    def _folded(self, args, dims, *, tree, out_tree, static, levels):
        """The op's own batching rule (``batch``), or None where it does not apply."""
        operand_dims = []
        for operand, (start, stop) in zip(jax.tree.unflatten(tree, args), _spans(tree)):
            batched = [d for d in dims[start:stop] if d is not None]
            if batched and not (stop - start == 1 and hasattr(operand, "shape")):
                return None  # a batched pytree operand (a plan): the default rule
            operand_dims.append(batched[0] if batched else None)
        result = self._fold(jax.tree.unflatten(tree, args), tuple(operand_dims), **dict(static))
        if result is None:
            return None
        outs, out_dims = result
        return jax.tree.leaves(outs), list(jax.tree.leaves(out_dims))


def forget_traces() -> None:
    """Drops every op's cached traces. A trace holds the kernels it called, so code that swaps a
    backend's kernels at run time (tests that count or replace them) calls this before and after."""
    Op._op_jaxpr.cache_clear()
    Op._tangent_jaxpr.cache_clear()


def _spans(tree) -> list[tuple[int, int]]:
    """The leaf range of each top-level operand of an operand tuple's tree."""
    spans, start = [], 0
    for child in tree.children():
        spans.append((start, start + child.num_leaves))
        start += child.num_leaves
    return spans


def _sum_unbatched(inner, out_dims, *args):
    """``inner(*args)`` with the cotangents of operands that were not batched summed over the batch."""
    return tuple(g.sum(0) if d is None else g for g, d in zip(inner(*args), out_dims))
