"""Focused behaviour of gsddmm: input errors, the sampled product, residuals, higher order, forward mode.

Agreement over every op x target pair x shape lives in test_common_suite.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import Graph
from jgrad.ops import gsddmm

N, E, F = 8, 20, 3


@pytest.fixture(scope="module")
def graph():
    rng = np.random.default_rng(0)
    return Graph.from_edges(rng.integers(0, N, E), rng.integers(0, N, E), N)


def test_unknown_op_and_targets_list_the_valid_names(graph):
    x = jnp.ones((N, F))
    with pytest.raises(ValueError, match=r"gsddmm: unknown edge op 'pow'; expected one of 'add', 'sub', 'mul', "
                                         r"'div', 'dot', 'copy_lhs', 'copy_rhs'\."):
        gsddmm(graph, "pow", x, x)
    with pytest.raises(ValueError, match=r"gsddmm: unknown lhs_target 'w'; expected one of 'u', 'v', 'e'\."):
        gsddmm(graph, "dot", x, x, lhs_target="w")
    with pytest.raises(ValueError, match=r"gsddmm: unknown rhs_target 'src'; expected one of 'u', 'v', 'e'\."):
        gsddmm(graph, "dot", x, x, rhs_target="src")


def test_missing_operand_is_reported(graph):
    with pytest.raises(ValueError, match=r"gsddmm: this op needs rhs; got rhs=None\."):
        gsddmm(graph, "mul", jnp.ones((N, F)), None)
    # copy ops need only their own operand.
    assert gsddmm(graph, "copy_lhs", jnp.ones((N, F)), None).shape == (E, F)
    assert gsddmm(graph, "copy_rhs", None, jnp.ones((E, 2)), rhs_target="e").shape == (E, 2)


def test_wrong_leading_dimension_names_the_target(graph):
    with pytest.raises(ValueError, match=r"gsddmm: lhs with target 'e' must have one row per edge; got shape "
                                         r"\(8, 3\), expected \(20, \.\.\.\)\."):
        gsddmm(graph, "add", jnp.ones((N, F)), jnp.ones((N, F)), lhs_target="e")
    with pytest.raises(ValueError, match=r"gsddmm: rhs with target 'v' must have one row per node; got shape "
                                         r"\(20, 3\), expected \(8, \.\.\.\)\."):
        gsddmm(graph, "add", jnp.ones((N, F)), jnp.ones((E, F)))


def test_operands_that_cannot_broadcast_name_both_shapes(graph):
    with pytest.raises(ValueError, match=r"gsddmm: lhs and rhs cannot broadcast; got trailing shapes \(2, 3\) and "
                                         r"\(3,\), expected each axis equal or 1 \(left-aligned\)\."):
        gsddmm(graph, "mul", jnp.ones((N, 2, F)), jnp.ones((N, F)))


def test_non_float_operand_raises_type_error(graph):
    with pytest.raises(TypeError, match=r"gsddmm: lhs must be a float array; got dtype int32\."):
        gsddmm(graph, "add", jnp.ones((N, F), jnp.int32), jnp.ones((N, F)))


def test_dot_samples_the_dense_product_at_the_edges(graph, x64):
    rng = np.random.default_rng(1)
    x, y = jnp.asarray(rng.normal(size=(N, F))), jnp.asarray(rng.normal(size=(N, F)))
    out = gsddmm(graph, "dot", x, y, "u", "v")
    np.testing.assert_allclose(out[:, 0], (y @ x.T)[graph.receivers, graph.senders], rtol=1e-12)


def test_residuals_hold_no_edge_by_feature_tensor():
    n, e, f = 16, 4000, 64
    rng = np.random.default_rng(2)
    graph = Graph.from_edges(rng.integers(0, n, e), rng.integers(0, n, e), n)
    x = jnp.asarray(rng.normal(size=(n, f)), jnp.float32)
    # Traced abstractly (nothing compiles): the arrays jax.vjp keeps for the backward pass.
    pullback = jax.eval_shape(lambda x, y: jax.vjp(lambda x, y: gsddmm(graph, "dot", x, y, "u", "v"), x, y)[1], x, x)
    assert max(leaf.size for leaf in jax.tree.leaves(pullback)) < e * f


@pytest.fixture
def operands(x64):
    rng = np.random.default_rng(3)
    return jnp.asarray(rng.normal(size=(N, F))), jnp.asarray(rng.uniform(1.0, 2.0, (N, F)))


def _plain(graph, op, x, y):
    left, right = x[graph.senders], y[graph.receivers]
    return {"dot": jnp.sum(left * right, -1, keepdims=True), "div": left / right, "mul": left * right}[op]


@pytest.mark.parametrize("op", ["dot", "div", "mul"])
def test_higher_order_and_forward_mode_equal_plain_autodiff(graph, operands, op):
    x, y = operands
    loss = lambda fn: lambda x, y: jnp.sum(jnp.sin(fn(x, y)))  # noqa: E731
    ours = loss(lambda x, y: gsddmm(graph, op, x, y, "u", "v"))
    plain = loss(lambda x, y: _plain(graph, op, x, y))
    tangents = (jnp.ones_like(x), jnp.full_like(y, 0.5))

    @jax.jit  # jit outside forward mode, as documented; one program for both formulations
    def derivatives(x, y, tx, ty):
        return [(jax.hessian(fn)(x, y), jax.jacrev(jax.grad(fn), argnums=1)(x, y),
                 jax.jvp(fn, (x, y), (tx, ty))[1], jax.jacfwd(fn)(x, y)) for fn in (ours, plain)]

    got, want = derivatives(x, y, *tangents)
    for tolerance, a, b in zip((dict(rtol=1e-10, atol=1e-12),) * 2 + (dict(rtol=1e-12),) * 2, got, want, strict=True):
        np.testing.assert_allclose(a, b, **tolerance)
