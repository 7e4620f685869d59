"""Compiling a gradient function once per model: the cache `adjacency_grad` and `edge_grad` share.

`run_cached(builder, fn, args, options, *operands)` runs ``builder(*operands, arrays, call=key)`` under
``jax.jit``, where ``key`` (a `Call`) is static: fn, the structure and non-array leaves of ``args``, and
a fingerprint of everything fn reads (closure cells, defaults, globals, bound object: jax arrays by
identity, numpy arrays by content, Python values by value). Equal keys reuse one compiled function;
new arrays of the same shapes do not recompile, and a changed closed-over array gives a new key, so a
cached function never sees stale values. A call whose fn or args hold a tracer (inside the caller's
``jit``) is compiled for that call only.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def split_arrays(args: Any) -> tuple[list, Callable[[list], Any]]:
    """The array leaves of ``args`` (passed through ``jit``) and a function rebuilding ``args`` from them.

    Non-array leaves (Python numbers, strings, callables) stay as they are, closed over as constants.
    """
    leaves, treedef = jax.tree.flatten(args)
    is_array = [isinstance(leaf, (jax.Array, np.ndarray, np.generic)) for leaf in leaves]
    arrays = [leaf for leaf, flag in zip(leaves, is_array) if flag]

    def rebuild(new_arrays: list) -> tuple:
        it = iter(new_arrays)
        return jax.tree.unflatten(treedef, [next(it) if flag else leaf for leaf, flag in zip(leaves, is_array)])

    return arrays, rebuild


class _Same:
    """Wraps an object so that it hashes and compares by identity (and keeps it alive while cached)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj


def _fingerprint(obj: Any, seen: set, depth: int) -> Any:
    """A hashable summary of what a traced function reads from ``obj``: jax arrays by identity, numpy
    arrays by content, hashable values by value, other objects by identity plus their array leaves.
    Returns ``None`` when ``obj`` holds a tracer (such a call is not cached)."""
    if isinstance(obj, jax.core.Tracer):
        return None
    if isinstance(obj, jax.Array):
        return _Same(obj)
    if isinstance(obj, (np.ndarray, np.generic)):
        array = np.asarray(obj)
        return ("numpy", array.shape, array.dtype.str, hash(array.tobytes()))
    if id(obj) in seen or depth > 4 or isinstance(obj, (types.ModuleType, type)):
        return _Same(obj)
    seen.add(id(obj))
    parts: list[Any] = [type(obj)]
    if not isinstance(obj, types.MethodType):  # a method is new at each attribute access: known by its parts below
        try:
            hash(obj)
            parts.append(obj if isinstance(obj, (int, float, complex, str, bytes, bool, type(None))) else _Same(obj))
        except TypeError:
            parts.append(_Same(obj))
    inner: list[Any]
    if isinstance(obj, types.FunctionType):  # what a function reads: closure cells, defaults, globals
        inner = [cell.cell_contents for cell in (obj.__closure__ or ()) if _cell_filled(cell)]
        inner += list(obj.__defaults__ or ()) + list((obj.__kwdefaults__ or {}).values())
        inner += [obj.__globals__[name] for name in sorted(_global_names(obj.__code__))
                  if name in obj.__globals__]
    elif isinstance(obj, types.MethodType):
        inner = [obj.__self__, obj.__func__]
    elif isinstance(obj, functools.partial):
        inner = [obj.func, obj.args, obj.keywords]
    else:
        try:
            inner = jax.tree.leaves(obj)
        except Exception:  # noqa: BLE001 - not a pytree
            inner = [obj]
        if len(inner) == 1 and inner[0] is obj:  # a plain object: its attributes
            inner = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
    for item in inner:
        mark = _fingerprint(item, seen, depth + 1)
        if mark is None:
            return None
        parts.append(mark)
    return tuple(parts)


def _global_names(code: types.CodeType) -> set[str]:
    """Names a code object (and the functions defined inside it) may read as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _cell_filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class Call:
    """The static part of one call: fn, the structure and non-array leaves of args, what fn closes over.

    Equal keys reuse one compiled function (``jax.jit`` static argument); a changed closed-over array
    (e.g. parameters updated in place) gives a new key, so a cached function never sees stale values.
    """

    fn: Any
    treedef: Any
    statics: tuple
    closure: Any
    options: tuple
    leaves: tuple = dataclasses.field(default=(), compare=False)  # the non-array leaves themselves


def call_key(fn, args: tuple, options: tuple) -> tuple[Call | None, list]:
    """The `Call` that identifies ``fn`` with ``args`` (None when they hold tracers or values that
    cannot be fingerprinted), and the array leaves of ``args``."""
    leaves, treedef = jax.tree.flatten(args)
    arrays = [leaf for leaf in leaves if isinstance(leaf, (jax.Array, np.ndarray, np.generic))]
    statics = []
    for leaf in leaves:
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            statics.append(None)
        else:
            mark = _fingerprint(leaf, set(), 0)
            if mark is None:
                return None, arrays
            statics.append(mark)
    closure = _fingerprint(fn, set(), 0)
    if closure is None:
        return None, arrays
    try:
        key = Call(fn, treedef, tuple(statics), closure, options,
                    tuple(None if mark is None else leaf for mark, leaf in zip(statics, leaves)))
        hash(key)
    except TypeError:
        return None, arrays
    return key, arrays


def run_cached(builder, fn, args: tuple, options: tuple, *operands):
    """``builder(call, *operands, arrays)`` under ``jax.jit``, compiled once per equal `Call` key."""
    key, arrays = call_key(fn, args, options)
    if key is None:  # fn or args hold a tracer (inside the caller's jit): compile for this call only
        _, rebuild = split_arrays(args)
        key = Call(fn, None, (), _Same(rebuild), options)
        return jax.jit(functools.partial(builder, call=key))(*operands, arrays)
    return _jitted(builder)(*operands, arrays, call=key)


_JITTED: dict[Any, Any] = {}


def _jitted(builder):
    if builder not in _JITTED:
        _JITTED[builder] = jax.jit(builder, static_argnames=("call",))
    return _JITTED[builder]


def rebuild_args(call: Call, arrays: list) -> tuple:
    if call.treedef is None:  # uncached call: the closure holds the rebuild function
        return call.closure.obj(arrays)
    it = iter(arrays)
    return jax.tree.unflatten(call.treedef, [next(it) if mark is None else leaf
                                             for mark, leaf in zip(call.statics, call.leaves)])
