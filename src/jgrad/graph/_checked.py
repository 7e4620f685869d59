"""`checked`: the opt-in checked mode, which runs the graph and value checks inside compiled code.

The checks themselves are in ``jgrad._src._checks``; this module wraps a user function with
``jax.experimental.checkify`` so that they raise there too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from .._src._checks import checking, finite_checks, graph_value_checks, is_concrete
from .._src._types import check_callable, check_flags
from ._graph import Graph

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

    The op-level checks are ``checkify.debug_check``s that ops add only while `checked` runs, so
    plain ``jax.jit`` programs carry none (and keep JAX's fast dispatch); a jitted function traced
    before, outside `checked`, is traced again inside it, with them. (A bare ``checkify.checkify`` of
    ``fn`` gets no op-level checks: use `checked`.) ``checked(fn)`` may itself be
    wrapped in ``jax.jit``: then a failed check raises ``jax.errors.JaxRuntimeError`` from the
    compiled call (through a host callback), with the check's message at the end.

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
            with checking():
                error, out = compiled(*args, **kwargs)
        except IndexError as failure:
            if not index_checks:
                raise
            try:  # does fn trace without checkify's index checks? Then they are what failed.
                without = checkify.checkify(validated, errors=CHECKED_ERRORS - checkify.index_checks)
                with checking():
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
