"""Choosing between a kernel's custom VJP and its forward-mode formulation.

``jax.custom_vjp`` functions refuse forward mode (``jax.jvp``, ``jax.jacfwd``). jgrad's kernels keep
their hand-written backward for reverse mode, the common case, and switch to a plain, forward-mode-safe
formulation of the same maths when a forward-mode tracer reaches them. Reverse mode over forward mode
and forward over reverse (``jax.hessian``) both work: in the latter the custom VJP's backward is itself
traced in forward mode, and the kernels it calls switch in turn.

Limitation: a function compiled with ``jax.jit`` (or a ``lax.scan``/``lax.cond`` body) *before* forward
mode is applied to it never sees a forward-mode tracer; write ``jax.jit(lambda x: jax.jvp(f, ...))``
rather than ``jax.jvp(jax.jit(f), ...)``.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.interpreters import ad

try:  # the batching tracer wraps forward-mode tracers under vmap; unwrap it to look inside
    from jax._src.interpreters.batching import BatchTracer as _BatchTracer
except ImportError:  # pragma: no cover - layout of a future jax
    _BatchTracer = ()


def in_forward_mode(*values: Any) -> bool:
    """True when any array among ``values`` carries a forward-mode (JVP) tangent."""
    for leaf in jax.tree.leaves(values):
        while _BatchTracer and isinstance(leaf, _BatchTracer):
            leaf = leaf.val
        if isinstance(leaf, ad.JVPTracer):
            return True
    return False
