"""Focused behaviour of gcn_norm and row_norm: input errors, self loops, degrees, zero degrees, transforms.

Agreement with dense references on the awkward graphs lives in test_common_suite.py.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import Graph
from jgrad.ops import gcn_norm, row_norm, spmm

N, E = 6, 14


@pytest.fixture(scope="module")
def graph():
    rng = np.random.default_rng(0)
    return Graph.from_edges(rng.integers(0, N, E), rng.integers(0, N, E), N)


@pytest.mark.parametrize("norm", [gcn_norm, row_norm], ids=["gcn_norm", "row_norm"])
def test_non_scalar_weights_are_rejected(graph, norm):
    message = f"{norm.__name__}: needs one scalar weight per edge; got shape ({E}, 2), expected ({E},)."
    with pytest.raises(ValueError, match=re.escape(message)):
        norm(graph, jnp.ones((E, 2)))
    with pytest.raises(ValueError, match=re.escape(f"got shape ({E - 1},), expected ({E},).")):
        norm(graph, jnp.ones((E - 1,)))


@pytest.mark.parametrize("norm", [gcn_norm, row_norm], ids=["gcn_norm", "row_norm"])
def test_integer_weights_raise_type_error(graph, norm):
    with pytest.raises(TypeError, match=rf"{norm.__name__}: edge_weight must be a float array; got dtype int32\."):
        norm(graph, jnp.ones((E,), jnp.int32))


def test_gcn_norm_appends_one_loop_per_node_with_fill(graph, x64):
    normed = gcn_norm(graph, jnp.ones(E), fill=2.0)
    assert normed.n_edges == E + N
    np.testing.assert_array_equal(normed.senders[E:], np.arange(N))
    np.testing.assert_array_equal(normed.receivers[E:], np.arange(N))
    degree = jax.ops.segment_sum(jnp.ones(E), graph.receivers, N) + 2.0
    np.testing.assert_allclose(normed.edge_weight[E:], 2.0 / degree, rtol=1e-12)
    assert gcn_norm(graph, add_self_loops=False).n_edges == E


def test_unweighted_graph_uses_ones_and_matches_explicit_ones(graph):
    np.testing.assert_allclose(gcn_norm(graph).edge_weight, gcn_norm(graph, jnp.ones(E)).edge_weight)
    np.testing.assert_allclose(row_norm(graph).edge_weight, row_norm(graph, jnp.ones(E)).edge_weight)


def test_row_norm_rows_sum_to_one_where_a_node_receives(graph, x64):
    w = jnp.asarray(np.random.default_rng(1).uniform(0.5, 2.0, E))
    dense = row_norm(graph, w).to_dense()
    receives = np.isin(np.arange(N), np.asarray(graph.receivers))
    np.testing.assert_allclose(dense.sum(1)[receives], 1.0, rtol=1e-12)
    np.testing.assert_array_equal(dense.sum(1)[~receives], 0.0)


@pytest.mark.parametrize("norm", ["gcn", "row"])
def test_zero_degree_value_and_gradient_are_zero_and_finite(graph, x64, norm):
    # All weights into node `target` driven to 0, no self loops: its degree is 0, which _norm.py maps to
    # an inverse power of 0 with derivative 0.
    target = int(np.asarray(graph.receivers)[0])
    into = np.asarray(graph.receivers) == target
    w = jnp.where(jnp.asarray(into), 0.0, jnp.asarray(np.random.default_rng(2).uniform(0.5, 2.0, E)))
    apply = (lambda g, w: gcn_norm(g, w, add_self_loops=False)) if norm == "gcn" else row_norm
    x = jnp.asarray(np.random.default_rng(3).normal(size=(N, 3)))

    @jax.jit  # the value and derivatives in one program rather than op by op
    def derivatives(graph, w):
        loss = lambda w: jnp.sum(jnp.sin(spmm(apply(graph, w), x)))  # noqa: E731
        return (apply(graph, w).edge_weight, jax.grad(loss)(w), jax.hessian(loss)(w),
                jax.jacfwd(lambda w: apply(graph, w).edge_weight)(w))

    normed, grad, hessian, jacobian = derivatives(graph, w)
    np.testing.assert_array_equal(normed[into], 0.0)
    assert np.isfinite(grad).all()
    np.testing.assert_array_equal(grad[into], 0.0)
    assert np.isfinite(hessian).all()
    assert np.isfinite(jacobian).all()


def test_gradient_flows_through_the_degrees(graph, x64):
    # Changing the weight of edge 0 changes every normalised weight that shares a degree with it.
    w = jnp.asarray(np.random.default_rng(4).uniform(0.5, 2.0, E))
    jacobian, looped = jax.jit(lambda w: (jax.jacrev(lambda w: gcn_norm(graph, w).edge_weight)(w),  # (E + N, E)
                                          gcn_norm(graph, w)))(w)
    receiver = int(graph.receivers[0])
    touches = (np.asarray(looped.receivers) == receiver) | (np.asarray(looped.senders) == receiver)
    assert (np.abs(np.asarray(jacobian[:, 0])[touches]) > 0).all()
    np.testing.assert_array_equal(np.asarray(jacobian[:, 0])[~touches], 0.0)


@pytest.mark.parametrize("norm", [gcn_norm, row_norm], ids=["gcn_norm", "row_norm"])
def test_jit_vmap_and_forward_mode(graph, x64, norm):
    weights = jnp.asarray(np.random.default_rng(5).uniform(0.5, 2.0, (3, E)))
    edge_weight = lambda w: norm(graph, w).edge_weight  # noqa: E731

    @jax.jit  # vmap, each weight vector alone and both Jacobians in one program
    def transformed(weights):
        return (jax.vmap(edge_weight)(weights), [edge_weight(w) for w in weights],
                jax.jacfwd(edge_weight)(weights[0]), jax.jacrev(edge_weight)(weights[0]))

    batched, jitted, forward, reverse = transformed(weights)
    for k in range(3):
        np.testing.assert_allclose(batched[k], edge_weight(weights[k]), rtol=1e-12)  # eager
        np.testing.assert_allclose(jitted[k], batched[k], rtol=1e-12)
    np.testing.assert_allclose(forward, reverse, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("norm", [gcn_norm, row_norm], ids=["gcn_norm", "row_norm"])
def test_negative_weights_are_refused_naming_the_edges(graph, norm):
    w = jnp.ones(E).at[3].set(-1.0).at[7].set(-0.5)
    message = (f"{norm.__name__}: edge_weight is negative on 2 edge(s); got edge_weight[3]=-1, edge_weight[7]=-0.5, "
               "expected edge_weight >= 0 (a negative weight can make a degree zero or negative, where the "
               "normalisation is undefined).")
    with pytest.raises(ValueError, match=re.escape(message)):
        norm(graph, w)


def test_negative_weights_on_padding_edges_are_ignored():
    from jgrad import pad

    padded = pad(Graph.from_edges([0, 1], [1, 0], n_nodes=2), 3, 4)
    normed = gcn_norm(padded, jnp.array([1.0, 1.0, -5.0, -5.0]))
    np.testing.assert_allclose(normed.edge_weight[:2], 0.5)


def test_gcn_norm_refuses_a_negative_fill(graph):
    with pytest.raises(ValueError, match=re.escape("gcn_norm: fill is negative or NaN; got -1.0, expected fill >= 0")):
        gcn_norm(graph, fill=-1.0)


def test_negative_traced_weights_are_reported_under_checked(graph):
    import jgrad
    from jax.experimental import checkify

    w = jnp.ones(E).at[2].set(-1.0)
    assert np.isfinite(jax.jit(lambda w: gcn_norm(graph, w).edge_weight)(w)).all()  # unchecked: not reported
    with pytest.raises(checkify.JaxRuntimeError, match=re.escape("gcn_norm: edge_weight[2]=-1.0 is negative; "
                                                                 "expected weights >= 0")):
        jgrad.checked(lambda w: gcn_norm(graph, w).edge_weight)(w)


@pytest.mark.parametrize("norm", [gcn_norm, row_norm], ids=["gcn_norm", "row_norm"])
def test_unweighted_graph_takes_the_default_float_dtype(graph, norm):
    assert norm(graph).edge_weight.dtype == jnp.float32
    with jax.enable_x64(True):
        normed = norm(graph)
        assert normed.edge_weight.dtype == jnp.float64
        exact = norm(graph, jnp.ones(E, jnp.float64)).edge_weight
        np.testing.assert_array_equal(normed.edge_weight, exact)  # float64 ones, not float32 ones cast up
        assert jax.jit(lambda g: norm(g).edge_weight)(graph).dtype == jnp.float64
