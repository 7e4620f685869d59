"""Focused behaviour of edge_softmax: input errors, stability at huge logits, padding, forward mode.

Agreement with a dense masked softmax and with plain autodiff lives in test_common_suite.py.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import Graph
from jgrad.ops import edge_softmax

N, E, H = 6, 16, 2


@pytest.fixture(scope="module")
def graph():
    rng = np.random.default_rng(0)
    return Graph.from_edges(rng.integers(0, N, E), rng.integers(0, N - 1, E), N)  # node 5 receives nothing


def _group_sums(graph, values):
    return jax.ops.segment_sum(values, graph.receivers, graph.n_nodes)


def test_non_float_logits_raise_type_error(graph):
    with pytest.raises(TypeError, match=r"edge_softmax: logits must be a float array; got dtype int32\."):
        edge_softmax(graph, jnp.ones((E,), jnp.int32))


def test_complex_logits_raise_type_error(graph):
    with pytest.raises(TypeError, match=r"edge_softmax: logits must be a float array; got dtype complex64\."):
        edge_softmax(graph, jnp.ones((E,), jnp.complex64))


def test_a_nan_score_makes_its_receivers_attention_nan_and_leaves_the_others_exact():
    graph = Graph.from_edges([0, 1, 2, 2], [0, 0, 1, 1], n_nodes=3)  # node 2 receives nothing
    logits = jnp.array([jnp.nan, 1.0, 2.0, 3.0])
    weights = jnp.array([0.5, -1.0, 2.0, 0.25])

    def loss(z, edges):
        return jnp.sum((edge_softmax(graph, z) * weights)[edges])

    @jax.jit  # one program (jit outside forward mode, as documented)
    def results(logits):
        return (edge_softmax(graph, logits), jax.grad(loss)(logits, slice(0, 2)), jax.grad(loss)(logits, slice(2, 4)),
                jax.grad(loss)(logits.at[0].set(0.0), slice(2, 4)),
                jax.jvp(lambda z: edge_softmax(graph, z), (logits,), (jnp.ones(4),))[1])

    out, nan_grad, finite_grad, clean_grad, tangent = map(np.asarray, results(logits))
    assert np.isnan(out[:2]).all()
    np.testing.assert_allclose(out[2:], [0.268941, 0.731059], rtol=1e-5)
    assert np.isnan(nan_grad[:2]).all()
    np.testing.assert_allclose(finite_grad[2:], clean_grad[2:], rtol=1e-6)
    assert np.isnan(tangent[:2]).all() and np.isfinite(tangent[2:]).all()


@pytest.mark.parametrize("shape", [(E - 1,), (), (N, H)])
def test_wrong_leading_dimension_raises(graph, shape):
    message = f"edge_softmax: logits must have one row per edge; got shape {tuple(shape)}, expected (16, ...)."
    with pytest.raises(ValueError, match=re.escape(message)):
        edge_softmax(graph, jnp.ones(shape))


@jax.jit
def _value_gradient_and_hessian(graph, logits):
    """The softmax, the gradient of an edge-weighted sum of it and the Hessian of its sum of squares, compiled
    once per logits shape (the scales below share the program)."""
    ramp = jnp.arange(graph.n_edges, dtype=logits.dtype).reshape((graph.n_edges,) + (1,) * (logits.ndim - 1))
    grad = jax.grad(lambda z: jnp.sum(edge_softmax(graph, z) * ramp))(logits)
    return edge_softmax(graph, logits), grad, jax.hessian(lambda z: jnp.sum(edge_softmax(graph, z) ** 2))(logits)


@pytest.mark.parametrize("scale", [1e4, -1e4])
@pytest.mark.parametrize("trailing", [(), (H,)])
def test_huge_logits_give_finite_values_and_gradients(graph, scale, trailing):
    rng = np.random.default_rng(1)
    logits = jnp.asarray(scale * (1.0 + rng.uniform(size=(E,) + trailing)), jnp.float32)
    out, grad, hessian = _value_gradient_and_hessian(graph, logits)
    assert np.isfinite(out).all() and np.isfinite(grad).all()
    receiving = np.isin(np.arange(N), np.asarray(graph.receivers))
    np.testing.assert_allclose(np.asarray(_group_sums(graph, out))[receiving], 1.0, rtol=1e-5)
    # The gradient of a softmax sums to zero within each receiver's group.
    np.testing.assert_allclose(_group_sums(graph, grad), 0.0, atol=1e-3)
    assert np.isfinite(hessian).all()


def test_is_invariant_to_a_shift_per_receiver(graph, x64):
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(E, H)))
    shift = jnp.asarray(rng.normal(size=(N, H)) * 1e3)
    shifted, plain = jax.jit(lambda z, shift: (edge_softmax(graph, z + shift[graph.receivers]), edge_softmax(graph, z)))(
        logits, shift)
    np.testing.assert_allclose(shifted, plain, rtol=1e-9, atol=1e-12)


def test_padding_edges_get_zero_and_take_no_share(graph, x64):
    padded = jgrad.pad(graph, n_nodes=N + 1, n_edges=E + 4)
    logits = jnp.concatenate([jnp.linspace(-1.0, 1.0, E), jnp.full((4,), 50.0)])

    @jax.jit  # one program rather than op by op
    def results(logits):
        grad = jax.grad(lambda z: jnp.sum(edge_softmax(padded, z) * jnp.arange(E + 4.0)))(logits)
        return edge_softmax(padded, logits), edge_softmax(graph, logits[:E]), grad

    out, unpadded, grad = results(logits)
    np.testing.assert_allclose(out[:E], unpadded, rtol=1e-12)
    np.testing.assert_array_equal(out[E:], 0.0)
    np.testing.assert_array_equal(grad[E:], 0.0)


def test_residual_is_the_output_only():
    n, e, h = 8, 4000, 4
    rng = np.random.default_rng(3)
    graph = Graph.from_edges(rng.integers(0, n, e), rng.integers(0, n, e), n)
    logits = jnp.asarray(rng.normal(size=(e, h)), jnp.float32)
    # Traced abstractly (nothing compiles): the arrays jax.vjp keeps for the backward pass.
    pullback = jax.eval_shape(lambda z: jax.vjp(lambda z: edge_softmax(graph, z), z)[1], logits)
    float_leaves = [leaf for leaf in jax.tree.leaves(pullback) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert [leaf.shape for leaf in float_leaves] == [(e, h)]


def _plain(graph, logits):
    top = jax.ops.segment_max(logits, graph.receivers, graph.n_nodes)
    exp = jnp.exp(logits - jax.lax.stop_gradient(top)[graph.receivers])
    return exp / _group_sums(graph, exp)[graph.receivers]


def test_forward_mode_and_higher_order_equal_plain_autodiff(graph, x64):
    logits = jnp.asarray(np.random.default_rng(4).normal(size=(E,)))
    loss = lambda fn: lambda z: jnp.sum(fn(graph, z) * jnp.linspace(0.0, 1.0, E))  # noqa: E731

    @jax.jit  # one program for both formulations (jit outside forward mode, as the docstring allows)
    def derivatives(z, t):
        return [(jax.jacfwd(lambda z: fn(graph, z))(z), jax.hessian(loss(fn))(z),  # noqa: B023
                 jax.jvp(lambda z: fn(graph, z), (z,), (t,))[1]) for fn in (edge_softmax, _plain)]  # noqa: B023

    (jacobian, hessian, tangent), (plain_jacobian, plain_hessian, plain_tangent) = derivatives(logits, jnp.ones_like(logits))
    np.testing.assert_allclose(jacobian, plain_jacobian, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(hessian, plain_hessian, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(tangent, plain_tangent, atol=1e-14)
