"""Finds every use of the adjacency in a model's jaxpr and turns it into a structure-gradient term.

`adjacency_grad` traces the model once, ``jax.make_jaxpr`` of ``fn(graph, *args)`` on a graph with
``tapped=True``, so that jgrad's ops leave named tap equations in the jaxpr (``jgrad._src._taps``).
`Interpreter` then evaluates that jaxpr equation by equation:

- Ordinary equations are bound as they are (under ``jax.grad`` they differentiate as usual).
- ``jit``/``nnx.jit`` calls and ``jax.checkpoint`` bodies that contain taps are inlined, and
  ``lax.scan`` loops that contain taps (``lax.fori_loop`` with static bounds is a scan) are unrolled,
  so that each step is its own term. A ``while_loop``, ``cond`` or custom-derivative function with a
  tap inside raises, naming the construct.
- A tap becomes ``out + probe``: the gradient w.r.t. the zero probe is ``G = dL/dout`` exactly. Its
  node quantities are recorded as a `Term`, but only if its weight operand *is* the tracked
  adjacency: values carry tags (the tracked weights and index arrays, and the weights of graphs that
  ``scaled`` taps declare to be ``diag(l) A diag(r)``), and a tag follows a value through inlined
  calls and loops; any arithmetic on a value makes a new, untagged value.

A use of the weights that is not a recognised tap yields no term; `adjacency_grad` then sees the
factors disagree with ``edge_grad`` at the existing edges and raises, so a term is never lost silently.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from .._src._taps import PREFIX, REFUSALS
from ._compile import split_arrays

_CALLS = ("pjit", "jit", "closed_call", "core_call", "remat", "remat2", "checkpoint")


@dataclasses.dataclass
class Term:
    """One recorded use of the adjacency.

    Attributes:
      kind: ``"aggregate"`` (``out = diag(l) A diag(r) @ u``), ``"aggregate_t"`` (the same with ``A^T``)
        or ``"attention"`` / ``"attention_fixed"``.
      shape, dtype: of the tapped output (and of its probe).
      data: for aggregations ``(u, left, right)`` with ``left``/``right`` (N,) or ``None`` (ones); for
        attention the tuple ``(values, score_src, score_dst, log_normaliser, out, slope)``.
    """

    kind: str
    shape: tuple[int, ...]
    dtype: Any
    data: tuple


@dataclasses.dataclass(frozen=True)
class _Weights:
    """Tag of an edge-weight value: the weights of edge set ``key`` scaled to ``diag(left) A diag(right)``."""

    key: int
    left: Any = None
    right: Any = None


def trace(fn, graph, args) -> jex_core.ClosedJaxpr:
    """The jaxpr of ``fn(graph, *args)`` with the array leaves of ``(graph, args)`` as its inputs, in the
    order of `array_leaves`; other leaves (Python numbers, flags) are constants of the trace."""
    arrays, rebuild = split_arrays((graph, args))

    def model(*arrays):
        graph, args = rebuild(list(arrays))
        return fn(graph, *args)

    return jax.make_jaxpr(model)(*arrays)


def array_leaves(graph, args) -> list:
    """The array leaves of ``(graph, args)``: the inputs of the jaxpr `trace` made."""
    return split_arrays((graph, args))[0]


class Interpreter:
    """Evaluates a model's jaxpr, turning each tap on the tracked adjacency into a probe and a `Term`.

    Args:
      n_nodes: N of the tracked graph.
      probes: one array per term, added to the tapped outputs; ``None`` to discover the terms (the
        outputs are then left as they are).
      node_mask: (N,) bool of the tracked graph's real nodes, or None (all real).
      poison: make NaN what a zero degree leaves undefined: the inverse degrees at those nodes (so the
        scaled outputs there, and with a symmetric scaling the messages they send), and the attention
        rows there. Whether the loss is then NaN tells whether it depends on those nodes at all.

    Attributes:
      undefined: ``{"row": (N,) bool or None, "sym": ..., "attention": ...}``, the real nodes at which
        a row or symmetric normalisation, or an attention normalised inside its softmax, divided by a
        zero degree (total weight) of the tracked adjacency.
    """

    def __init__(self, n_nodes: int, probes: list | None = None, *, node_mask: Any = None, poison: bool = False):
        self.n_nodes = n_nodes
        self.probes = probes
        self.node_mask = node_mask
        self.poison = poison
        self.undefined: dict[str, Any] = {"row": None, "sym": None, "attention": None}
        self.terms: list[Term] = []
        self._tags: dict[int, tuple[Any, Any]] = {}
        self._index_tags: dict[int, tuple[Any, set]] = {}
        self._next_key = 1

    def run(self, closed: jex_core.ClosedJaxpr, inputs: list, weight: Any, senders: Any, receivers: Any):
        """The model's outputs, with ``weight``/``senders``/``receivers`` (among ``inputs``) as edge set 0."""
        self._tags[id(weight)] = (weight, _Weights(0))
        self._tag_index(senders, ("s", 0))
        self._tag_index(receivers, ("r", 0))
        return self._eval(closed.jaxpr, closed.consts, inputs)

    # tags ---------------------------------------------------------------------------------------
    def _weights_tag(self, value) -> _Weights | None:
        entry = self._tags.get(id(value))
        return entry[1] if entry is not None and entry[0] is value else None

    def _tag_index(self, value, role: tuple[str, int]) -> None:
        entry = self._index_tags.get(id(value))
        if entry is None or entry[0] is not value:
            entry = (value, set())
            self._index_tags[id(value)] = entry
        entry[1].add(role)

    def _has_index(self, value, role: tuple[str, int]) -> bool:
        entry = self._index_tags.get(id(value))
        return entry is not None and entry[0] is value and role in entry[1]

    def _direction(self, key: int, senders, receivers) -> str | None:
        """``"direct"`` for edge set ``key``'s own direction, ``"transposed"`` for the reverse, else None."""
        if self._has_index(senders, ("s", key)) and self._has_index(receivers, ("r", key)):
            return "direct"
        if self._has_index(senders, ("r", key)) and self._has_index(receivers, ("s", key)):
            return "transposed"
        return None

    # evaluation ---------------------------------------------------------------------------------
    def _eval(self, jaxpr: jex_core.Jaxpr, consts, args) -> list:
        env: dict[Any, Any] = {}

        def read(var):
            return var.val if isinstance(var, jex_core.Literal) else env[var]

        env.update(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, args))
        for eqn in jaxpr.eqns:
            outs = self._equation(eqn, [read(var) for var in eqn.invars])
            for var, value in zip(eqn.outvars, outs):
                if not isinstance(var, jex_core.DropVar):
                    env[var] = value
        return [read(var) for var in jaxpr.outvars]

    def _equation(self, eqn, inputs: list) -> list:
        name = eqn.primitive.name
        callee = str(eqn.params.get("name", ""))
        if name in _CALLS and callee.startswith(PREFIX):
            return [self._tap(callee[len(PREFIX):], inputs)]
        if _has_tap_inside(eqn):
            if name in _CALLS:
                inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
                if isinstance(inner, jex_core.ClosedJaxpr):
                    return self._eval(inner.jaxpr, inner.consts, inputs)
                return self._eval(inner, [], inputs)
            if name == "scan":
                return self._unroll(eqn, inputs)
            raise ValueError(_unsupported(name))
        params = eqn.primitive.get_bind_params(eqn.params)
        subfuns, params = params if isinstance(params, tuple) else ([], params)
        outs = eqn.primitive.bind(*subfuns, *inputs, **params)
        outs = outs if eqn.primitive.multiple_results else [outs]
        if name in ("convert_element_type", "copy", "copy_p"):  # the same weights in another dtype
            tag = self._weights_tag(inputs[0])
            if tag is not None:
                self._tags[id(outs[0])] = (outs[0], tag)
        return outs

    def _unroll(self, eqn, inputs: list) -> list:
        params = eqn.params
        body: jex_core.ClosedJaxpr = params["jaxpr"]
        consts, carry, xs = _scan_inputs(params, inputs)
        n_carry, length = len(carry), params["length"]
        steps: list[list] = [[] for _ in range(length)]
        for i in (reversed(range(length)) if params["reverse"] else range(length)):
            outs = self._eval(body.jaxpr, body.consts, consts + carry + [x[i] for x in xs])
            carry, steps[i] = outs[:n_carry], outs[n_carry:]
        stacked = [jnp.stack(column) for column in zip(*steps)] if length else [
            jnp.zeros(var.aval.shape, var.aval.dtype) for var in eqn.outvars[n_carry:]]
        return list(carry) + stacked

    # taps ---------------------------------------------------------------------------------------
    def _tap(self, kind: str, inputs: list):
        out = inputs[0]
        if kind.startswith("refuse__"):
            if self._weights_tag(inputs[1]) is not None:
                raise ValueError(REFUSALS[kind[len("refuse__"):]])
            return out
        if kind == "scaled":
            self._declare_scaled(*inputs)
            return out
        if kind.startswith("inverse_degree__"):
            return self._inverse_degree(kind[len("inverse_degree__"):], *inputs)
        if kind == "aggregate":
            _, u, weight, senders, receivers = inputs
        elif kind == "degree":
            _, weight, index = inputs
            u = jnp.ones((self.n_nodes,), out.dtype)  # deg = A @ 1 (in) or A^T @ 1 (out)
        else:  # attention, attention_fixed
            weight, senders, receivers = inputs[6:9]
        tag = self._weights_tag(weight)
        if tag is None:
            return out
        if kind == "degree":
            direction = ("direct" if self._has_index(index, ("r", tag.key)) else
                         "transposed" if self._has_index(index, ("s", tag.key)) else None)
        else:
            direction = self._direction(tag.key, senders, receivers)
        if direction is None or out.shape[:1] != (self.n_nodes,):
            return out
        if kind.startswith("attention"):
            if tag.key != 0 or direction != "direct":
                return out
            data = (inputs[1], inputs[2], inputs[3], inputs[4], out, inputs[5])
            log_normaliser = inputs[4]  # (N, H): +inf where the node's total incoming weight is 0
            zero = jnp.any(log_normaliser == jnp.inf, axis=-1)
            self._record_undefined("attention", zero)
            return self._poisoned(zero, self._probe(Term(kind, tuple(out.shape), out.dtype, data), out))
        kind = "aggregate" if direction == "direct" else "aggregate_t"
        return self._probe(Term(kind, tuple(out.shape), out.dtype, (u, tag.left, tag.right)), out)

    def _inverse_degree(self, norm: str, inverse, degree, weight):
        """A normalisation's power of a degree of the tracked adjacency: records the real nodes whose
        degree is 0, where the model jumps as soon as an edge into them is added."""
        if self._weights_tag(weight) is not None:
            self._record_undefined(norm, degree <= 0)
            return self._poisoned(degree <= 0, inverse)
        return inverse

    def _poisoned(self, zero, out):
        """``out`` with NaN in the rows of the real nodes among ``zero`` (N,) bool, if ``poison``."""
        if not self.poison:
            return out
        if self.node_mask is not None:
            zero = zero & self.node_mask
        return jnp.where(zero.reshape(zero.shape + (1,) * (out.ndim - 1)), jnp.asarray(jnp.nan, out.dtype), out)

    def _record_undefined(self, kind: str, zero) -> None:
        """Adds the real nodes among ``zero`` (N,) bool to ``undefined[kind]``."""
        if self.node_mask is not None:
            zero = zero & self.node_mask
        previous = self.undefined[kind]
        self.undefined[kind] = zero if previous is None else previous | zero

    def _declare_scaled(self, out, weight, senders_in, receivers_in, left, right, senders_out, receivers_out):
        """Tags ``out`` as the weights of a new edge set ``diag(left) W diag(right)``, W the tagged input.

        An input that is itself ``diag(l0) A diag(r0)`` gives ``diag(left l0) A diag(r0 right)`` (plus
        constants): normalising a graph with appended self loops composes.
        """
        tag = self._weights_tag(weight)
        if tag is None or self._direction(tag.key, senders_in, receivers_in) != "direct":
            return
        key, self._next_key = self._next_key, self._next_key + 1
        self._tags[id(out)] = (out, _Weights(key, _times(left, tag.left), _times(right, tag.right)))
        self._tag_index(senders_out, ("s", key))
        self._tag_index(receivers_out, ("r", key))

    def _probe(self, term: Term, out):
        index = len(self.terms)
        self.terms.append(term)
        if self.probes is None:
            return out
        if index >= len(self.probes) or tuple(self.probes[index].shape) != term.shape:
            raise ValueError("adjacency_grad: the model's jaxpr gave different taps on its second "
                             f"evaluation; got tap {index} of shape {term.shape}, expected the "
                             f"{len(self.probes)} taps of the first.")
        return out + self.probes[index].astype(out.dtype)


def _times(scaling, other):
    return scaling if other is None else scaling * other


def _unsupported(primitive: str) -> str:
    construct = {
        "while": "lax.while_loop (or lax.fori_loop with traced bounds)",
        "cond": "lax.cond / lax.switch",
        "custom_jvp_call": "a jax.custom_jvp function",
        "custom_vjp_call": "a jax.custom_vjp function",
        "custom_vjp_call_jaxpr": "a jax.custom_vjp function",
    }.get(primitive, f"a '{primitive}' transformation")
    return (f"adjacency_grad: the model aggregates over the graph inside {construct}; got a construct "
            "whose steps cannot be followed one by one, expected propagation in plain code, jax.jit, "
            "jax.checkpoint, lax.scan or lax.fori_loop with static bounds (which adjacency_grad unrolls).")


def _scan_inputs(params: dict, inputs: list) -> tuple[list, list, list]:
    """A scan equation's inputs split into (consts, carry, xs): jax 0.10 counts them in ``num_consts`` /
    ``num_carry``, jax 0.11 describes them by the flat tree ``ft_in``."""
    if "ft_in" in params:
        consts, carry, xs = params["ft_in"].update(inputs).unpack()
        return list(consts), list(carry), list(xs)
    n_consts, n_carry = params["num_consts"], params["num_carry"]
    return inputs[:n_consts], inputs[n_consts:n_consts + n_carry], inputs[n_consts + n_carry:]


def _has_tap_inside(eqn) -> bool:
    return any(_jaxpr_has_tap(inner) for inner in jex_core.jaxprs_in_params(eqn.params))


@functools.lru_cache(maxsize=4096)
def _jaxpr_has_tap(jaxpr: jex_core.Jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if str(eqn.params.get("name", "")).startswith(PREFIX) or _has_tap_inside(eqn):
            return True
    return False
