"""Array aliases, the default float dtype, ``Literal`` types for named choices, and the check that
rejects unknown names.

Other modules import their vocabulary from here so that every reducer name and tie rule is spelled in one
place, and every unknown name is rejected with the same message.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

Array: TypeAlias = jax.Array
"""An array produced by jgrad: always a ``jax.Array``."""

ArrayLike: TypeAlias = jax.typing.ArrayLike
"""Anything jgrad accepts as an array input: JAX arrays, NumPy arrays and Python scalars."""


def default_float_dtype() -> np.dtype:
    """float64 under ``jax.enable_x64``, float32 otherwise (read at call time, so contexts apply)."""
    return jax.dtypes.canonicalize_dtype(np.float64)


def accumulation_dtype(dtype: Any) -> np.dtype:
    """The dtype in which jgrad sums values of ``dtype``: float32 for narrower floats (bfloat16,
    float16), whose running sums stop growing once they reach 2^8 (bfloat16) or 2^11 (float16) times
    a term; ``dtype`` itself otherwise. Results are cast back to ``dtype``."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return dtype


Reducer: TypeAlias = Literal["sum", "mean", "max", "min"]
"""How messages arriving at one segment (or node) are combined."""

REDUCERS: tuple[Reducer, ...] = ("sum", "mean", "max", "min")
"""Every valid :data:`Reducer`, in the order error messages list them."""

TieRule: TypeAlias = Literal["split", "first"]
"""Where the gradient of a max or min goes when several entries attain the extremum.

``"split"`` divides it equally among all of them (JAX's rule); ``"first"`` gives all of it to the
lowest-index one (PyTorch-scatter's rule).
"""

TIE_RULES: tuple[TieRule, ...] = ("split", "first")
"""Every valid :data:`TieRule`."""


def check_choice(where: str, argument: str, value: Any, valid: tuple[Any, ...]) -> None:
    """Raises ``ValueError`` unless ``value`` is one of ``valid``.

    Comparison is by type and equality, so arrays and other unhashable values are rejected cleanly
    rather than raising from inside ``in``.

    Args:
      where: the public function doing the check, for the start of the message.
      argument: the argument's name, e.g. ``"reducer"``.
      value: what the caller passed.
      valid: the allowed values, in the order the message lists them.

    Raises:
      ValueError: ``"{where}: unknown {argument} {value!r}; expected one of 'sum', 'mean', ..."``.

    Example:
      >>> check_choice("segment_reduce", "reducer", "sum", REDUCERS)
      >>> check_choice("segment_reduce", "reducer", "avg", REDUCERS)
      Traceback (most recent call last):
      ...
      ValueError: segment_reduce: unknown reducer 'avg'; expected one of 'sum', 'mean', 'max', 'min'.
    """
    if any(type(value) is type(option) and value == option for option in valid):
        return
    options = ", ".join(repr(option) for option in valid)
    raise ValueError(f"{where}: unknown {argument} {value!r}; expected one of {options}.")


def check_callable(where: str, fn: Any, expected: str) -> None:
    """Raises ``TypeError`` unless ``fn`` is callable; ``expected`` says what it should be."""
    if not callable(fn):
        raise TypeError(f"{where}: fn must be callable; got {type(fn).__name__} {fn!r:.60}, expected {expected}.")


def check_flags(where: str, **flags: Any) -> None:
    """Raises ``TypeError`` naming the first of ``flags`` (keyword name -> value) that is not a bool."""
    for flag, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{where}: {flag} must be a bool; got {type(value).__name__} {value!r:.60}, "
                            "expected True or False.")
