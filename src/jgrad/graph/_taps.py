"""Recording taps: how `jgrad.gradients.adjacency_grad` sees every linear use of the adjacency.

For a model whose use of the adjacency ``A`` is linear per call, aggregations ``y_c = A @ m_c`` and
weighted degrees ``d = A @ 1`` (in) or ``A^T @ 1`` (out), the gradient w.r.t. every entry of A is::

    dL/dA = sum_c G_c m_c^T  +  g_in 1^T  +  1 g_out^T,    G_c = dL/dy_c,  g = dL/dd

To get ``G_c`` without touching the model, each such output gets a zero "probe" added, ``y_c + z_c``
with ``z_c = 0``; then ``dL/dz_c = dL/dy_c`` exactly. While `adjacency_grad` traces the model, a
`Recorder` is held in a context variable; the two call sites that can use A linearly,
`jgrad.ops.gspmm` (``u_mul_e`` + ``sum``) and `Graph.in_degree` / `Graph.out_degree`, ask
`active_recorder` and, when the weights are the *tracked array object* (identity, not equality),
record the messages and add a probe. Outside `adjacency_grad` no recorder is active and the taps
cost one context-variable lookup.

The recorder is plain Python state used only during tracing; nothing here is a JAX transformation.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp

TapKind = Literal["spmm", "spmm_t", "in_degree", "out_degree"]
"""What a probe stands for: ``A @ m`` (``spmm``), ``A^T @ m`` (``spmm_t``, on the reversed graph),
the weighted in-degree ``A @ 1`` or the weighted out-degree ``A^T @ 1``."""

_ACTIVE: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("jgrad_tap_recorder", default=None)


class Recorder:
    """Hands out zero probes to the taps of one tracked graph and records what they saw.

    Attributes:
      weight: the tracked edge-weight array object, shape (E,); a tap fires only for this object.
      senders, receivers: the tracked (E,) index array objects.
      kinds: one `TapKind` per probe handed out, in call order.
      shapes: the shape of each probe (that of the tapped output).
      dtypes: the dtype of each probe.
      messages: for ``spmm``/``spmm_t`` probes the aggregated node data m_c (N, ...); ``None`` for
        degree probes.

    With ``probes=None`` (discovery) each probe is a fresh zero array; otherwise ``probes[i]`` is used
    for the i-th tap, and a mismatch in count or shape raises ``ValueError`` (the model must trace the
    same way twice).
    """

    def __init__(self, weight: Any, senders: Any, receivers: Any, probes: Sequence[jax.Array] | None = None):
        self.weight = weight
        self.senders = senders
        self.receivers = receivers
        self.probes = None if probes is None else list(probes)
        self.kinds: list[TapKind] = []
        self.shapes: list[tuple[int, ...]] = []
        self.dtypes: list[Any] = []
        self.messages: list[jax.Array | None] = []

    def _probe(self, kind: TapKind, like: jax.Array, message: jax.Array | None) -> jax.Array:
        index = len(self.kinds)
        self.kinds.append(kind)
        self.shapes.append(tuple(like.shape))
        self.dtypes.append(like.dtype)
        self.messages.append(message)
        if self.probes is None:
            return jnp.zeros(like.shape, like.dtype)
        if index >= len(self.probes) or tuple(self.probes[index].shape) != tuple(like.shape):
            raise ValueError(
                "adjacency_grad: the model used the adjacency differently on its second trace; got "
                f"tap {index} ({kind}) of shape {tuple(like.shape)}, expected the {len(self.probes)} "
                "taps of the first trace. The model must be deterministic in its Python control flow."
            )
        return self.probes[index].astype(like.dtype)

    def tap_gspmm(self, senders: Any, receivers: Any, op: str, reduce: str, u: Any, e: Any,
                  out: jax.Array) -> jax.Array:
        """``out + z_c`` if this is ``A @ u`` or ``A^T @ u`` with the tracked weights, else ``out``."""
        if e is not self.weight or op != "u_mul_e" or reduce != "sum":
            return out
        if senders is self.senders and receivers is self.receivers:
            kind: TapKind = "spmm"
        elif senders is self.receivers and receivers is self.senders:
            kind = "spmm_t"
        else:
            return out
        return out + self._probe(kind, out, u)

    def tap_degree(self, weight: Any, index: Any, degree: jax.Array) -> jax.Array:
        """``degree + z_d`` if this is the weighted in- or out-degree of the tracked weights."""
        if weight is not self.weight:
            return degree
        if index is self.receivers:
            kind: TapKind = "in_degree"
        elif index is self.senders:
            kind = "out_degree"
        else:
            return degree
        return degree + self._probe(kind, degree, None)


def active_recorder() -> Recorder | None:
    """The recorder of the innermost `recording` context, or ``None`` (the normal case)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    """Makes ``recorder`` active for the taps while the body runs (nested contexts shadow outer ones)."""
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)
