"""`jgrad._src._op.Op`: a kernel with a hand-written backward, differentiable in every mode of JAX.

A small op (a weighted segment sum with a hand-written backward) is checked against plain autodiff of
the same formula under each transformation and their compositions, in float64: forward mode applied
to functions already under ``jax.jit`` or looping in ``lax.scan`` (what ``jax.custom_vjp`` refuses),
reverse mode to second order, ``vmap`` over any operand and nested, ``checkify`` and ``shard_map``.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from jgrad._src._op import Op, tangent_of

pytestmark = pytest.mark.usefixtures("x64")

N, E, F = 6, 14, 3
RNG = np.random.default_rng(0)
SENDERS, RECEIVERS = RNG.integers(0, N, E), RNG.integers(0, N, E)
U0, W0 = RNG.standard_normal((N, F)), RNG.standard_normal(E)


def _formula(senders, receivers, u, w, *, n):
    return jax.ops.segment_sum(u[senders] * w[:, None], receivers, n)


BACKWARD_CALLS = []


def _backward(operands, out, cotangent, wanted, *, n):
    senders, receivers, u, w = operands
    BACKWARD_CALLS.append(wanted)
    du = jax.ops.segment_sum(cotangent[receivers] * w[:, None], senders, n) if wanted[2] else None
    dw = jnp.sum(cotangent[receivers] * u[senders], -1) if wanted[3] else None
    return None, None, du, dw


WEIGHTED_SUM = Op("test_weighted_sum", _formula, tangent=tangent_of(_formula), backward=_backward)


def ours(u, w):
    return WEIGHTED_SUM(jnp.asarray(SENDERS), jnp.asarray(RECEIVERS), u, w, n=N)


def plain(u, w):
    return _formula(jnp.asarray(SENDERS), jnp.asarray(RECEIVERS), u, w, n=N)


def loss(op):
    return lambda u, w: jnp.sum(jnp.tanh(op(u, w)) ** 2)


def scan(op):
    return lambda u, w: jax.lax.scan(lambda h, _: (jnp.tanh(op(h, w)), None), u, None, length=3)[0].sum()


CASES = {
    "value": lambda op, a: op(a.u, a.w),
    "grad": lambda op, a: jax.grad(loss(op), (0, 1))(a.u, a.w),
    "grad of grad": lambda op, a: jax.grad(lambda u, w: jnp.sum(jax.grad(loss(op))(u, w) ** 2), (0, 1))(a.u, a.w),
    "jvp": lambda op, a: jax.jvp(op, (a.u, a.w), (a.u, a.w)),
    "jvp of jit": lambda op, a: jax.jvp(jax.jit(op), (a.u, a.w), (a.u, a.w)),
    "jvp of scan": lambda op, a: jax.jvp(scan(op), (a.u, a.w), (a.u, a.w)),
    "grad of scan": lambda op, a: jax.grad(scan(op), (0, 1))(a.u, a.w),
    "hessian": lambda op, a: jax.hessian(loss(op), (0, 1))(a.u, a.w),
    "hessian of jit": lambda op, a: jax.hessian(jax.jit(loss(op)), (0, 1))(a.u, a.w),
    "jacfwd": lambda op, a: jax.jacfwd(op, (0, 1))(a.u, a.w),
    "jacrev": lambda op, a: jax.jacrev(op, (0, 1))(a.u, a.w),
    "reverse over forward": lambda op, a: jax.grad(lambda u: jax.jvp(loss(op), (u, a.w), (u, a.w))[1])(a.u),
    "linearize": lambda op, a: jax.linearize(op, a.u, a.w)[1](a.u, a.w),
    "vmap u": lambda op, a: jax.vmap(op, (0, None))(a.bu, a.w),
    "vmap w, axis 1": lambda op, a: jax.vmap(op, (None, 1))(a.u, a.bw.T),
    "vmap of vmap": lambda op, a: jax.vmap(jax.vmap(op, (0, None)), (None, 0))(a.bu, a.bw),
    "vmap of grad": lambda op, a: jax.vmap(jax.grad(loss(op), (0, 1)), (0, None))(a.bu, a.w),
    "grad of vmap of vmap": lambda op, a: jax.grad(
        lambda u, w: jnp.sum(jax.vmap(jax.vmap(op, (0, None)), (None, 0))(u, w) ** 2), (0, 1))(a.bu, a.bw),
    "jvp of vmap": lambda op, a: jax.jvp(jax.vmap(op, (0, None)), (a.bu, a.w), (a.bu, a.w)),
    "checkify": lambda op, a: checkify.checkify(jax.jit(op))(a.u, a.w)[1],
}


@pytest.fixture
def a():
    """The operands in float64 (made while the x64 fixture is on, not at import), and batches of them."""
    u, w = jnp.asarray(U0), jnp.asarray(W0)
    assert u.dtype == jnp.float64
    return types.SimpleNamespace(u=u, w=w, bu=jnp.stack([u, 2 * u, -u]), bw=jnp.stack([w, 3 * w, -w]))


@pytest.mark.parametrize("case", CASES)
def test_every_transformation_equals_plain_autodiff(case, a):
    got, want = CASES[case](ours, a), CASES[case](plain, a)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_reverse_mode_runs_the_backward_and_asks_only_for_what_is_needed(a):
    BACKWARD_CALLS.clear()
    jax.grad(lambda u: loss(ours)(u, a.w))(a.u)
    assert BACKWARD_CALLS == [(False, False, True, False)]
    BACKWARD_CALLS.clear()
    jax.grad(lambda w: loss(ours)(a.u, w))(a.w)
    assert BACKWARD_CALLS == [(False, False, False, True)]


def test_inside_shard_map_replicated_operands_get_summed_cotangents(a):
    """A replicated u next to sharded edges: its cotangent is summed over the edge shards."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("edges",))
    spec = jax.sharding.PartitionSpec

    def total(op):
        def local(s, r, u, w):
            return jax.lax.psum(WEIGHTED_SUM(s, r, u, w, n=N) if op is ours else _formula(s, r, u, w, n=N), "edges")
        sharded = jax.shard_map(local, mesh=mesh, in_specs=(spec("edges"), spec("edges"), spec(), spec("edges")),
                                out_specs=spec())
        return lambda u, w: jnp.sum(jnp.sin(sharded(jnp.asarray(SENDERS), jnp.asarray(RECEIVERS), u, w)))

    got = jax.jit(jax.grad(total(ours), (0, 1)))(a.u, a.w)
    want = jax.jit(jax.grad(total(plain), (0, 1)))(a.u, a.w)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
