"""Focused behaviour of gspmm and spmm: input errors, saved residuals, higher order and forward mode.

Value and gradient agreement over every op x reducer x shape lives in test_common_suite.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import Graph
from jgrad.ops import gspmm, spmm

N, E, F = 8, 20, 3


@pytest.fixture(scope="module")
def graph():
    rng = np.random.default_rng(0)
    return Graph.from_edges(rng.integers(0, N, E), rng.integers(0, N, E), N)


def _plain_spmm(graph, x, w):
    """Plain autodiff reference: gather the senders' rows, scale, segment-sum at the receivers."""
    return jax.ops.segment_sum(x[graph.senders] * w[:, None], graph.receivers, num_segments=graph.n_nodes)


# --------------------------------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------------------------------
def test_unknown_names_are_rejected_with_the_valid_ones(graph):
    u, e = jnp.ones((N, F)), jnp.ones((E,))
    with pytest.raises(ValueError, match=r"gspmm: unknown message op 'u_pow_e'; expected one of 'copy_u', "
                                         r"'copy_e', 'u_add_e', 'u_sub_e', 'u_mul_e', 'u_div_e'\."):
        gspmm(graph, "u_pow_e", "sum", u, e)
    with pytest.raises(ValueError, match=r"gspmm: unknown reducer 'avg'; expected one of 'sum', 'mean', 'max', "
                                         r"'min'\."):
        gspmm(graph, "u_mul_e", "avg", u, e)
    with pytest.raises(ValueError, match=r"gspmm: unknown tie rule 'last'; expected one of 'split', 'first'\."):
        gspmm(graph, "u_mul_e", "max", u, e, tie="last")


def test_missing_operand_names_the_op(graph):
    with pytest.raises(ValueError, match=r"gspmm: op 'u_mul_e' needs node data u; got u=None\."):
        gspmm(graph, "u_mul_e", "sum", None, jnp.ones((E,)))
    with pytest.raises(ValueError, match=r"gspmm: op 'copy_e' needs edge data e; got e=None\."):
        gspmm(graph, "copy_e", "sum", jnp.ones((N, F)))


def test_wrong_leading_dimensions_are_all_reported(graph):
    with pytest.raises(ValueError, match=r"u must have one row per node; got shape \(7, 3\), expected \(8, \.\.\.\) "
                                         r"for n_nodes=8\. e must have one row per edge; got shape \(19,\), "
                                         r"expected \(20, \.\.\.\) for 20 edges\."):
        gspmm(graph, "u_mul_e", "sum", jnp.ones((N - 1, F)), jnp.ones((E - 1,)))
    with pytest.raises(ValueError, match=r"u must have one row per node; got shape \(\)"):
        gspmm(graph, "copy_u", "sum", jnp.float32(1.0))


def test_edge_data_that_cannot_broadcast_names_both_shapes(graph):
    with pytest.raises(ValueError, match=r"gspmm: e cannot broadcast against u of shape \(8, 2, 3\); got \(20, 3\), "
                                         r"expected one of \(20,\), \(20, 1\), \(20, 2, 1\), \(20, 2, 3\)\."):
        gspmm(graph, "u_mul_e", "sum", jnp.ones((N, 2, F)), jnp.ones((E, 3)))
    with pytest.raises(ValueError, match=r"got \(20, 3, 1\), expected one of \(20,\), \(20, 1\), \(20, 3\)\."):
        gspmm(graph, "u_add_e", "max", jnp.ones((N, F)), jnp.ones((E, F, 1)))


@pytest.mark.parametrize("name", ["u", "e"])
def test_non_float_operands_raise_type_error(graph, name):
    u, e = jnp.ones((N, F)), jnp.ones((E,))
    operands = {"u": u, "e": e, name: jnp.ones((N, F) if name == "u" else (E,), jnp.int32)}
    with pytest.raises(TypeError, match=rf"gspmm: {name} must be a float array; got dtype int32\."):
        gspmm(graph, "u_mul_e", "sum", **operands)


# --------------------------------------------------------------------------------------------------
# The memory claim: residuals are the inputs, never the (E, F) messages.
# --------------------------------------------------------------------------------------------------
def _residual_sizes(fn, *args):
    """Sizes of the arrays ``jax.vjp`` keeps for the backward pass (traced abstractly: nothing compiles)."""
    pullback = jax.eval_shape(lambda *args: jax.vjp(fn, *args)[1], *args)
    return [leaf.size for leaf in jax.tree.leaves(pullback)]


@pytest.mark.parametrize("op, reduce", [("u_mul_e", "sum"), ("u_mul_e", "mean"), ("u_div_e", "sum"),
                                        ("u_mul_e", "max"), ("u_add_e", "min")])
def test_residuals_hold_no_edge_by_feature_tensor(op, reduce):
    n, e, f = 16, 4000, 64  # E >> N and F large: an (E, F) residual would dominate
    rng = np.random.default_rng(1)
    graph = Graph.from_edges(rng.integers(0, n, e), rng.integers(0, n, e), n)
    x = jnp.asarray(rng.normal(size=(n, f)), jnp.float32)
    w = jnp.asarray(rng.uniform(1.0, 2.0, e), jnp.float32)

    jgrad_sizes = _residual_sizes(lambda x, w: gspmm(graph, op, reduce, x, w), x, w)
    assert max(jgrad_sizes) < e * f
    assert sum(jgrad_sizes) <= 4 * e + 2 * n * f  # O(N·F + E): the inputs and the index arrays
    if (op, reduce) == ("u_mul_e", "sum"):
        assert max(_residual_sizes(lambda x, w: spmm(graph, x, w), x, w)) < e * f
        # Plain autodiff keeps the gathered (E, F) rows for the edge-weight gradient.
        assert e * f in _residual_sizes(lambda x, w: _plain_spmm(graph, x, w), x, w)


# --------------------------------------------------------------------------------------------------
# Higher order and forward mode.
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def operands(x64, graph):
    rng = np.random.default_rng(2)
    return jnp.asarray(rng.normal(size=(N, F))), jnp.asarray(rng.uniform(0.5, 2.0, E))


def _loss(spmm_fn, graph):
    # Quartic in w, so second derivatives w.r.t. the edge weights are non-trivial.
    return lambda x, w: jnp.sum(spmm_fn(graph, x, w) ** 2) ** 2 / 100.0


def test_grad_of_grad_wrt_edge_weights_equals_plain_autodiff(graph, operands):
    x, w = operands
    direction = jnp.linspace(-1.0, 1.0, E)

    @jax.jit  # one program for both formulations rather than op by op
    def second_order(x, w):
        return [(jax.grad(lambda w: jnp.vdot(jax.grad(_loss(fn, graph), argnums=1)(x, w), direction))(w),  # noqa: B023
                 jax.jacrev(jax.grad(_loss(fn, graph), argnums=1), argnums=0)(x, w)) for fn in (spmm, _plain_spmm)]

    (got, mixed), (want, mixed_want) = second_order(x, w)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(mixed, mixed_want, rtol=1e-12, atol=1e-12)


def test_forward_mode_jvp_jacfwd_and_hessian_equal_plain_autodiff(graph, operands):
    x, w = operands
    tangents = (jnp.ones_like(x), jnp.linspace(0.0, 1.0, E))

    @jax.jit  # jit outside forward mode, as documented; one program for both formulations
    def forward_mode(x, w):
        return [(jax.jvp(lambda x, w: fn(graph, x, w), (x, w), tangents),  # noqa: B023
                 jax.jacfwd(lambda w: fn(graph, x, w))(w),  # noqa: B023
                 jax.hessian(lambda w: _loss(fn, graph)(x, w))(w)) for fn in (spmm, _plain_spmm)]  # noqa: B023

    ((out, tangent), jacobian, hessian), ((want_out, want_tangent), want_jacobian, want_hessian) = forward_mode(x, w)
    np.testing.assert_allclose(out, want_out, rtol=1e-12)
    np.testing.assert_allclose(tangent, want_tangent, rtol=1e-12)
    np.testing.assert_allclose(jacobian, want_jacobian, rtol=1e-12)
    np.testing.assert_allclose(hessian, want_hessian, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_hessian_of_other_reducers_equals_plain_autodiff(graph, operands, reduce):
    x, w = operands
    segment = {"mean": lambda m, r: jax.ops.segment_sum(m, r, N) / jnp.maximum(
        jax.ops.segment_sum(jnp.ones(E), r, N), 1.0)[:, None], "max": None}[reduce]

    def plain(w):
        messages = x[graph.senders] * w[:, None]
        if reduce == "max":
            top = jax.ops.segment_max(messages, graph.receivers, N)
            return jnp.where(jnp.isfinite(top), top, 0.0)
        return segment(messages, graph.receivers)

    loss = lambda fn: lambda w: jnp.sum(jnp.sin(fn(w)))  # noqa: E731
    hessians = jax.jit(lambda w: [jax.hessian(loss(fn))(w) for fn in (lambda w: gspmm(graph, "u_mul_e", reduce, x, w),
                                                                        plain)])
    got, want = hessians(w)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_jvp_under_jit_is_supported_when_jit_is_outside(graph, operands):
    x, w = operands
    f = lambda w: spmm(graph, x, w)  # noqa: E731
    tangent = jnp.ones_like(w)
    got = jax.jit(lambda w, t: jax.jvp(f, (w,), (t,)))(w, tangent)
    want = jax.jvp(lambda w: _plain_spmm(graph, x, w), (w,), (tangent,))
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("backend", ["xla", "native", "bucket"])
def test_forward_mode_reaches_into_jit_and_scan(graph, backend):
    """Forward mode applied to a function already under jax.jit, or looping in lax.scan, differentiates
    jgrad's ops (jvp, hessian) on every backend, equal to plain autodiff."""
    from jgrad.ops import with_backend

    g = with_backend(graph, backend)
    rng = np.random.default_rng(1)
    x, w = jnp.asarray(rng.normal(size=(N, F))), jnp.asarray(rng.normal(size=E))
    loss = lambda op: lambda w: jnp.sum(jnp.sin(op(g, x, w)))  # noqa: E731
    steps = lambda op: lambda w: jax.lax.scan(lambda h, _: (jnp.tanh(op(g, h, w)), None), x, None,  # noqa: E731
                                              length=2)[0].sum()
    tangent = jnp.asarray(rng.normal(size=E))
    for make in (loss, steps):
        got = jax.jvp(jax.jit(make(spmm)), (w,), (tangent,))
        want = jax.jvp(make(_plain_spmm), (w,), (tangent,))
        np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(jax.hessian(jax.jit(loss(spmm)))(w), jax.hessian(loss(_plain_spmm))(w), rtol=1e-10,
                               atol=1e-12)
