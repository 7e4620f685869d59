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

TapKind = Literal["spmm", "spmm_t", "in_degree", "out_degree", "attention"]
"""What a probe stands for: ``A @ m`` (``spmm``), ``A^T @ m`` (``spmm_t``, on the reversed graph),
the weighted in-degree ``A @ 1``, the weighted out-degree ``A^T @ 1``, or an attention aggregation
whose weights enter inside the normalisation (``attention``, see `Recorder.tap_attention`)."""

_ACTIVE: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("jgrad_tap_recorder", default=None)


class Recorder:
    """Hands out zero probes to the taps of one tracked graph and records what they saw.

    Attributes:
      weight: the tracked edge-weight array object, shape (E,); a tap fires only for this object.
      senders, receivers: the tracked (E,) index array objects.
      kinds: one `TapKind` per probe handed out, in call order.
      shapes: the shape of each probe (that of the tapped output).
      dtypes: the dtype of each probe.
      messages: for ``spmm``/``spmm_t`` probes the aggregated node data m_c (N, ...); for
        ``attention`` probes the tuple ``(values, score_src, score_dst, log_normaliser, out,
        negative_slope)``; ``None`` for degree probes.
      options: per probe, ``fixed_diagonal`` for ``attention`` probes (the layer replaces the
        diagonal of A by its own self loops), else ``None``.

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
        self.messages: list[Any] = []
        self.options: list[Any] = []

    def _probe(self, kind: TapKind, like: jax.Array, message: Any, option: Any = None) -> jax.Array:
        index = len(self.kinds)
        self.kinds.append(kind)
        self.shapes.append(tuple(like.shape))
        self.dtypes.append(like.dtype)
        self.messages.append(message)
        self.options.append(option)
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


    def _is_tracked(self, graph: Any) -> bool:
        return (graph.edge_weight is self.weight and graph.senders is self.senders
                and graph.receivers is self.receivers)

    def tap_attention(self, graph: Any, *, values: jax.Array, score_src: jax.Array, score_dst: jax.Array,
                      negative_slope: Any, log_normaliser: jax.Array, out: jax.Array, fixed_diagonal: bool,
                      dropout_active: bool) -> jax.Array:
        """``out + z_c`` for an attention aggregation with the weights inside the normalisation.

        The layer computes, per head h, ``out[v] = sum_u A[v,u] e[v,u] values[u] / sum_k A[v,k] e[v,k]``
        with ``e[v,u] = exp(leaky_relu(score_src[u] + score_dst[v], negative_slope))`` and
        ``log_normaliser[v] = log sum_k A[v,k] e[v,k]``. Its explicit derivative w.r.t. any entry
        ``A[v, u]`` is ``e[v,u] / Z[v] * (values[u] - out[v])``, so these node quantities and
        ``G = dL/dout`` give dL/dA at every pair.

        Args:
          graph: the graph the layer was called with (before any self loops were appended); the tap
            fires only when its weights and indices are the tracked objects.
          values: (N, H, F) the aggregated node values z.
          score_src, score_dst: (N, H) the attention halves of the senders and receivers.
          negative_slope: the LeakyReLU slope (scalar).
          log_normaliser: (N, H) ``log Z[v]``; ``+inf`` where ``Z[v] = 0``.
          out: (N, H, F) the normalised aggregation.
          fixed_diagonal: whether the layer ignores ``A[v, v]`` and attends to v itself with weight 1.
          dropout_active: whether attention dropout is applied (then no dense-adjacency model exists).

        Raises:
          ValueError: attention dropout is active on the tracked graph.
        """
        if not self._is_tracked(graph):
            return out
        if dropout_active:
            raise ValueError(
                "adjacency_grad: gat_conv applies attention dropout (a key was passed with a non-zero "
                "dropout rate); got a random mask per edge, expected a deterministic model. Call the "
                "model without key (evaluation mode) inside the loss."
            )
        message = (values, score_src, score_dst, log_normaliser, out, jnp.asarray(negative_slope, out.dtype))
        return out + self._probe("attention", out, message, fixed_diagonal)

    def refuse_attention(self, graph: Any, where: str) -> None:
        """Raises if ``graph`` is the tracked graph: its weights multiply the attention after the softmax.

        Raises:
          ValueError: always for the tracked graph, naming the convention and the option to use.
        """
        if graph.edge_weight is self.weight:
            raise ValueError(
                f"adjacency_grad: {where} multiplies the attention by the edge weight after the softmax "
                "(edge_weight_mode='after_softmax'); got a model in which an edge's presence (softmax over "
                "the existing edges) and its weight are different things, so dL/dA of a missing pair is not "
                "defined. Build the layer with edge_weight_mode='normalise' (GATConv, GAT, gat_conv), in "
                "which A[v, u] weighs exp(score) inside the softmax, or use jgrad.edge_grad for the existing "
                "edges only."
            )


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
