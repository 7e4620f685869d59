"""Every formula of docs/gradients.md, checked against jax.grad on a dense implementation.

Each test's docstring names the section of the page it backs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import Graph
from jgrad.ops import edge_softmax, gcn_norm, gsddmm, gspmm, row_norm, spmm

N, E, F, F_OUT = 7, 18, 4, 3


@pytest.fixture
def setup(x64):
    rng = np.random.default_rng(0)
    senders = np.concatenate([rng.integers(0, N, E - 2), [3, 3]])  # a duplicate pair and a self loop
    receivers = np.concatenate([rng.integers(0, N, E - 2), [5, 3]])
    senders[0], receivers[0] = 3, 5
    graph = Graph.from_edges(senders, receivers, N)
    x = jnp.asarray(rng.normal(size=(N, F)))
    w = jnp.asarray(rng.uniform(0.5, 2.0, E))
    g = jnp.asarray(rng.normal(size=(N, F)))  # the output cotangent Ȳ
    return graph, x, w, g


def _dense(graph, w):
    return jnp.zeros((graph.n_nodes, graph.n_nodes), w.dtype).at[graph.receivers, graph.senders].add(w)


def test_node_feature_gradient_is_transposed_adjacency(setup):
    """Section 1: X̄ = A^T Ȳ, a g-SpMM on the reversed graph."""
    graph, x, w, g = setup
    x_bar, dense, reversed_spmm = jax.jit(lambda x, w, g: (
        jax.grad(lambda x: jnp.sum(spmm(graph, x, w) * g))(x), _dense(graph, w).T @ g, spmm(graph.reverse(), g, w)))(x, w, g)
    np.testing.assert_allclose(x_bar, dense, rtol=1e-12)
    np.testing.assert_allclose(x_bar, reversed_spmm, rtol=1e-12)


def test_edge_weight_gradient_is_an_sddmm(setup):
    """Section 2: w̄[e] = <Ȳ[r(e)], X[s(e)]>, the SDDMM of Ȳ and X sampled at the edges."""
    graph, x, w, g = setup
    w_bar, sddmm = jax.jit(lambda x, w, g: (jax.grad(lambda w: jnp.sum(spmm(graph, x, w) * g))(w),
                                            gsddmm(graph, "dot", x, g, "u", "v")[:, 0]))(x, w, g)
    np.testing.assert_allclose(w_bar, sddmm, rtol=1e-12)
    np.testing.assert_allclose(w_bar, (np.asarray(g) @ np.asarray(x).T)[graph.receivers, graph.senders], rtol=1e-12)
    assert w_bar[0] == w_bar[E - 2]  # the duplicate edge 3 -> 5 gets the same value


def test_dense_adjacency_gradient_is_the_rank_f_outer_product(setup):
    """Section 3: Ā = Ȳ X^T over all pairs (rank <= F); sampled at the edges it is w̄."""
    graph, x, w, g = setup
    a_bar, w_bar = jax.jit(lambda x, w, g: (jax.grad(lambda a: jnp.sum((a @ x) * g))(_dense(graph, w)),
                                            jax.grad(lambda w: jnp.sum(spmm(graph, x, w) * g))(w)))(x, w, g)
    np.testing.assert_allclose(a_bar, np.asarray(g) @ np.asarray(x).T, rtol=1e-12)
    assert np.linalg.matrix_rank(np.asarray(a_bar)) <= F
    np.testing.assert_allclose(a_bar[graph.receivers, graph.senders], w_bar, rtol=1e-12)


@pytest.mark.parametrize("op", ["copy_u", "copy_e", "u_add_e", "u_sub_e", "u_mul_e", "u_div_e"])
def test_generalised_message_gradients_follow_the_table(setup, op):
    """Section 4: the per-op table, ū by a reversed-graph g-SpMM and ē by a g-SDDMM."""
    graph, x, w, g = setup
    e = np.broadcast_to(np.asarray(w)[:, None], (E, F)) * np.linspace(1.0, 1.5, F)[None, :]  # (E, F) edge data
    u_bar, e_bar = jax.jit(jax.grad(lambda u, e: jnp.sum(gspmm(graph, op, "sum", u, e) * g), argnums=(0, 1)))(x, e)
    senders = np.asarray(graph.senders)
    m_bar = np.asarray(g)[np.asarray(graph.receivers)]  # message cotangent
    u_edge = np.asarray(x)[senders]
    per_edge_u = {"copy_u": m_bar, "copy_e": 0 * m_bar, "u_add_e": m_bar, "u_sub_e": m_bar,
                  "u_mul_e": m_bar * e, "u_div_e": m_bar / e}[op]
    want_e = {"copy_u": 0 * m_bar, "copy_e": m_bar, "u_add_e": m_bar, "u_sub_e": -m_bar,
              "u_mul_e": m_bar * u_edge, "u_div_e": -m_bar * u_edge / e**2}[op]
    want_u = np.zeros((N, F))
    np.add.at(want_u, senders, per_edge_u)  # the sum over each sender's edges
    np.testing.assert_allclose(u_bar, want_u, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(e_bar, want_e, rtol=1e-12, atol=1e-14)


def test_mean_scales_the_cotangent_by_the_in_degree_count(setup):
    """Section 4 (mean): Y = D_count^-1 A X, so X̄ = A^T (Ȳ / max(count, 1))."""
    graph, x, _, g = setup
    count = np.bincount(np.asarray(graph.receivers), minlength=N)
    adjacency = np.zeros((N, N))
    np.add.at(adjacency, (np.asarray(graph.receivers), np.asarray(graph.senders)), 1.0)
    x_bar = jax.jit(jax.grad(lambda x: jnp.sum(gspmm(graph, "copy_u", "mean", x) * g)))(x)
    np.testing.assert_allclose(x_bar, adjacency.T @ (np.asarray(g) / np.maximum(count, 1.0)[:, None]), rtol=1e-12)


def test_max_routes_the_cotangent_to_the_arg_max_edge(setup):
    """Section 4 (max/min): Ȳ[v] goes, per feature, to the message attaining the maximum."""
    graph, x, w, g = setup
    e_bar = jax.jit(jax.grad(lambda w: jnp.sum(gspmm(graph, "u_mul_e", "max", x, w) * g)))(w)
    x, g, senders = np.asarray(x), np.asarray(g), np.asarray(graph.senders)
    messages = x[senders] * np.asarray(w)[:, None]
    want = np.zeros(E)
    for v in range(N):
        edges = np.flatnonzero(np.asarray(graph.receivers) == v)
        for f in range(F):
            if len(edges):
                winner = edges[np.argmax(messages[edges, f])]
                want[winner] += g[v, f] * x[senders[winner], f]
    np.testing.assert_allclose(e_bar, want, rtol=1e-12)


def test_sddmm_dot_backward_is_a_spmm(setup):
    """Section 5: for dot(u, v), lhs̄ = Ā_out^T rhs and rhs̄ = Ā_out lhs, with ōut placed at the edges."""
    graph, x, w, g = setup
    lhs_bar, rhs_bar = jax.jit(jax.grad(lambda l, r: jnp.sum(gsddmm(graph, "dot", l, r, "u", "v")[:, 0] * w),
                                        argnums=(0, 1)))(x, g)
    out_bar = np.asarray(_dense(graph, w))
    np.testing.assert_allclose(lhs_bar, out_bar.T @ np.asarray(g), rtol=1e-12)
    np.testing.assert_allclose(rhs_bar, out_bar @ np.asarray(x), rtol=1e-12)


def test_edge_softmax_backward_subtracts_the_weighted_average(setup):
    """Section 6: z̄[e] = a[e] (ā[e] - sum over e' into r(e) of a[e'] ā[e'])."""
    graph, _, w, _ = setup
    z = np.log(np.asarray(w)) * 3.0
    a_bar = np.linspace(-1.0, 1.0, E)
    z_bar, a = jax.jit(lambda z: (jax.grad(lambda z: jnp.sum(edge_softmax(graph, z) * a_bar))(z), edge_softmax(graph, z)))(z)
    a, receivers = np.asarray(a), np.asarray(graph.receivers)
    average = np.bincount(receivers, a * a_bar, minlength=N)[receivers]
    np.testing.assert_allclose(z_bar, a * (a_bar - average), rtol=1e-12, atol=1e-15)


def _gcn_dense(a, fill, h, weight, row=False):
    a_hat = a + fill * jnp.eye(a.shape[0])
    d = a_hat.sum(1)
    s = a_hat / d[:, None] if row else a_hat / jnp.sqrt(d[:, None] * d[None, :])
    return jnp.tanh((s @ h) @ weight.T)


@pytest.fixture
def layer(setup):
    graph, x, w, g = setup
    weight = jnp.asarray(np.random.default_rng(1).normal(size=(F_OUT, F)))
    h_bar_out = jnp.asarray(np.random.default_rng(2).normal(size=(N, F_OUT)))
    return graph, x, w, weight, h_bar_out


def test_gcn_layer_backward_formulas(layer):
    """Section 7: W̄ = Z̄^T P, H̄ = S^T Z̄ W, and the edge gradient with its degree term."""
    graph, h, w, weight, h_bar_out = layer
    fill = 1.0

    def jgrad_layer(h, w, weight, fill):
        return jnp.tanh(spmm(gcn_norm(graph, w, fill=fill), h) @ weight.T)

    @jax.jit  # the formulas and both gradients in one program rather than op by op
    def formulas_and_gradients(h, w, weight, fill):
        a_hat = _dense(graph, w) + fill * jnp.eye(N)
        d = a_hat.sum(1)
        s = a_hat / jnp.sqrt(d[:, None] * d[None, :])
        p = s @ h
        z = p @ weight.T
        z_bar = h_bar_out * (1 - jnp.tanh(z) ** 2)
        p_bar = z_bar @ weight
        s_bar = p_bar @ h.T
        d_bar = -(jnp.sum(s_bar * s, 1) + jnp.sum(s_bar * s, 0)) / (2 * d)
        a_hat_bar = s_bar / jnp.sqrt(d[:, None] * d[None, :]) + d_bar[:, None]
        grads = jax.grad(lambda *args: jnp.sum(jgrad_layer(*args) * h_bar_out), argnums=(0, 1, 2, 3))(
            h, w, weight, fill)
        dense = jax.grad(lambda h, a, weight, fill: jnp.sum(_gcn_dense(a, fill, h, weight) * h_bar_out),
                         argnums=(0, 1, 2, 3))(h, _dense(graph, w), weight, fill)
        return (s, p, z_bar, p_bar, a_hat_bar), grads, dense

    (s, p, z_bar, p_bar, a_hat_bar), grads, dense = formulas_and_gradients(h, w, weight, fill)
    np.testing.assert_allclose(grads[2], z_bar.T @ p, rtol=1e-12)  # W̄
    np.testing.assert_allclose(grads[0], s.T @ p_bar, rtol=1e-12)  # H̄
    np.testing.assert_allclose(grads[1], a_hat_bar[graph.receivers, graph.senders], rtol=1e-12)  # w̄
    np.testing.assert_allclose(grads[3], np.trace(a_hat_bar), rtol=1e-12)  # fill̄
    np.testing.assert_allclose(dense[1], a_hat_bar, rtol=1e-12)  # the dense (all pairs) gradient
    for got, want in zip((grads[0], grads[2]), (dense[0], dense[2])):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_gcn_degree_term(layer):
    """Section 7: d̄[k] = -(row k + column k of S̄ ⊙ S) / (2 d[k]), as jax.grad w.r.t. the degrees finds it."""
    graph, h, w, weight, h_bar_out = layer

    @jax.jit  # the formula and the gradient in one program
    def gradient_and_formula(w):
        a_hat = _dense(graph, w) + jnp.eye(N)
        d = a_hat.sum(1)

        def loss_of_degrees(d):
            s = a_hat / jnp.sqrt(d[:, None] * d[None, :])
            return jnp.sum(jnp.tanh((s @ h) @ weight.T) * h_bar_out)

        s = a_hat / jnp.sqrt(d[:, None] * d[None, :])
        z = (s @ h) @ weight.T
        s_bar = ((h_bar_out * (1 - jnp.tanh(z) ** 2)) @ weight) @ h.T
        return jax.grad(loss_of_degrees)(d), -(jnp.sum(s_bar * s, 1) + jnp.sum(s_bar * s, 0)) / (2 * d)

    np.testing.assert_allclose(*gradient_and_formula(w), rtol=1e-12)


def test_row_normalised_layer_backward(layer):
    """Section 7 (row normalisation): Â̄[v, u] = (S̄[v, u] - sum_u' S̄[v, u'] S[v, u']) / d[v]."""
    graph, h, w, weight, h_bar_out = layer
    looped = graph.add_self_loops(1.0).with_edge_weight(np.concatenate([w, np.ones(N)]))

    @jax.jit  # the formula and both gradients in one program
    def formula_and_gradients(w):
        a_hat = _dense(graph, w) + jnp.eye(N)
        d = a_hat.sum(1)
        s = a_hat / d[:, None]
        z = (s @ h) @ weight.T
        s_bar = ((h_bar_out * (1 - jnp.tanh(z) ** 2)) @ weight) @ h.T
        a_hat_bar = (s_bar - jnp.sum(s_bar * s, 1, keepdims=True)) / d[:, None]
        w_bar = jax.grad(lambda w: jnp.sum(jnp.tanh(spmm(row_norm(looped, w), h) @ weight.T) * h_bar_out))(
            looped.edge_weight)
        dense = jax.grad(lambda a: jnp.sum(_gcn_dense(a, 1.0, h, weight, row=True) * h_bar_out))(_dense(graph, w))
        return a_hat_bar, w_bar, dense

    a_hat_bar, w_bar, dense = formula_and_gradients(w)
    np.testing.assert_allclose(w_bar, a_hat_bar[looped.receivers, looped.senders], rtol=1e-12)
    np.testing.assert_allclose(dense, a_hat_bar, rtol=1e-12)


def test_zero_degree_has_zero_weight_and_zero_gradient(setup):
    """Section 7 (zero degrees): d^-p is 0 with derivative 0 where d = 0; nothing is NaN."""
    graph, x, w, g = setup
    into_five = np.asarray(graph.receivers) == 5
    w = np.where(into_five, 0.0, w)
    normed, w_bar = jax.jit(lambda w: (gcn_norm(graph, w, add_self_loops=False), jax.grad(
        lambda w: jnp.sum(spmm(gcn_norm(graph, w, add_self_loops=False), x) * g))(w)))(w)
    np.testing.assert_array_equal(normed.edge_weight[into_five], 0.0)
    np.testing.assert_array_equal(w_bar[into_five], 0.0)
    assert np.isfinite(w_bar).all()


def test_forward_mode_tangent_is_a_dx_plus_da_x(setup):
    """Section 8: the tangent of Y = A X is dY = A dX + dA X, and jit outside jvp is supported."""
    graph, x, w, g = setup
    dx, dw = g, jnp.linspace(-1.0, 1.0, E)
    _, tangent = jax.jit(lambda x, w, dx, dw: jax.jvp(lambda x, w: spmm(graph, x, w), (x, w), (dx, dw)))(
        x, w, dx, dw)
    dense = lambda w: np.asarray(_dense(graph, w))  # noqa: E731
    np.testing.assert_allclose(tangent, dense(w) @ np.asarray(dx) + dense(dw) @ np.asarray(x), rtol=1e-12)


def test_residuals_are_the_inputs_not_the_messages(setup):
    """Section 9: jax.vjp of spmm keeps O(N·F + E), plain autodiff keeps the (E, F) gathered rows."""
    graph, x, w, _ = setup
    x = jnp.tile(x, (1, 8))  # F = 32 > N, so an (E, F) residual is unmistakable

    def pullback(fn):  # the arrays jax.vjp keeps for the backward pass, traced abstractly (nothing compiles)
        return jax.tree.leaves(jax.eval_shape(lambda x, w: jax.vjp(fn, x, w)[1], x, w))

    assert all(leaf.size < E * x.shape[1] for leaf in pullback(lambda x, w: spmm(graph, x, w)))
    plain = pullback(lambda x, w: jax.ops.segment_sum(x[graph.senders] * w[:, None], graph.receivers, N))
    assert any(leaf.shape == (E, x.shape[1]) for leaf in plain)
