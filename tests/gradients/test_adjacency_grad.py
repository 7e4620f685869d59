"""adjacency_grad: exact against jax.grad on a dense adjacency, factored accessors, non-linear detection."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad.gradients import AdjacencyGrad, adjacency_grad, edge_grad, propagate

N = 9
F = 3


def _random_graph(n=N, n_edges=24, seed=0, weighted=True, dtype=np.float64):
    """A directed graph without duplicate pairs or self loops, with node n-1 isolated."""
    rng = np.random.default_rng(seed)
    pairs = [(u, v) for u in range(n - 1) for v in range(n - 1) if u != v]
    chosen = rng.choice(len(pairs), size=n_edges, replace=False)
    senders = np.array([pairs[i][0] for i in chosen])
    receivers = np.array([pairs[i][1] for i in chosen])
    weight = (rng.random(n_edges) + 0.5).astype(dtype) if weighted else None
    return jgrad.Graph.from_edges(senders, receivers, n, edge_weight=weight)


def _params(seed=1, f_in=F, hidden=4, f_out=2):
    rng = np.random.default_rng(seed)
    return {
        "w1": jnp.asarray(rng.standard_normal((f_in, hidden)) / 2),
        "w2": jnp.asarray(rng.standard_normal((hidden, f_out)) / 2),
        "ws": jnp.asarray(rng.standard_normal((f_in, hidden)) / 2),
        "x": jnp.asarray(rng.standard_normal((N, f_in))),
        "c": jnp.asarray(rng.standard_normal((N, f_out))),
    }


def _inverse(values, power):
    positive = values > 0
    safe = jnp.where(positive, values, 1.0)
    return jnp.where(positive, safe ** -power, 0.0)


# Each family: (model on a Graph, the same model on a dense adjacency A[v, u]).
def _gcn(g, p):
    h = jax.nn.relu(propagate(g, p["x"] @ p["w1"]))
    return jnp.sum(jnp.tanh(propagate(g, h @ p["w2"])) * p["c"])


def _gcn_dense(a, p):
    a_hat = a + jnp.eye(N)
    s = _inverse(a_hat.sum(1), 0.5)[:, None]
    step = lambda z: s * (a_hat @ (s * z))
    h = jax.nn.relu(step(p["x"] @ p["w1"]))
    return jnp.sum(jnp.tanh(step(h @ p["w2"])) * p["c"])


def _sage(g, p):
    mean = lambda z: propagate(g, z, norm="row", add_self_loops=False)
    h = jax.nn.relu(p["x"] @ p["ws"] + mean(p["x"]) @ p["w1"])
    return jnp.sum(jnp.tanh(mean(h) @ p["w2"]) * p["c"])


def _sage_dense(a, p):
    mean = lambda z: _inverse(a.sum(1), 1.0)[:, None] * (a @ z)
    h = jax.nn.relu(p["x"] @ p["ws"] + mean(p["x"]) @ p["w1"])
    return jnp.sum(jnp.tanh(mean(h) @ p["w2"]) * p["c"])


def _gin(g, p, eps=0.3):
    h = jnp.tanh((jgrad.ops.spmm(g, p["x"]) + (1 + eps) * p["x"]) @ p["w1"])
    return jnp.sum(jnp.tanh(propagate(g, h, norm="none", fill=1 + eps) @ p["w2"]) * p["c"])


def _gin_dense(a, p, eps=0.3):
    h = jnp.tanh((a @ p["x"] + (1 + eps) * p["x"]) @ p["w1"])
    return jnp.sum(jnp.tanh((a @ h + (1 + eps) * h) @ p["w2"]) * p["c"])


def _appnp(g, p, steps=3, alpha=0.2):
    h0 = jnp.tanh(p["x"] @ p["w1"]) @ p["w2"]
    z = h0
    for _ in range(steps):
        z = (1 - alpha) * propagate(g, z) + alpha * h0
    return jnp.sum(jnp.sin(z) * p["c"])


def _appnp_dense(a, p, steps=3, alpha=0.2):
    h0 = jnp.tanh(p["x"] @ p["w1"]) @ p["w2"]
    a_hat = a + jnp.eye(N)
    s = _inverse(a_hat.sum(1), 0.5)[:, None]
    z = h0
    for _ in range(steps):
        z = (1 - alpha) * s * (a_hat @ (s * z)) + alpha * h0
    return jnp.sum(jnp.sin(z) * p["c"])


def _reverse_out_degree(g, p):
    """Aggregation on the reversed graph (A^T @ m) and the weighted out-degree."""
    h = jnp.tanh(jgrad.ops.spmm(g.reverse(), p["x"]) @ p["w1"])
    scale = _inverse(g.out_degree() + 1.0, 1.0)[:, None]
    return jnp.sum(jnp.tanh(scale * jgrad.ops.spmm(g, h) @ p["w2"]) * p["c"])


def _reverse_out_degree_dense(a, p):
    h = jnp.tanh((a.T @ p["x"]) @ p["w1"])
    scale = _inverse(a.sum(0) + 1.0, 1.0)[:, None]
    return jnp.sum(jnp.tanh(scale * (a @ h) @ p["w2"]) * p["c"])


FAMILIES = {
    "gcn": (_gcn, _gcn_dense),
    "sage_mean": (_sage, _sage_dense),
    "gin": (_gin, _gin_dense),
    "appnp": (_appnp, _appnp_dense),
    "reverse_out_degree": (_reverse_out_degree, _reverse_out_degree_dense),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_factored_gradient_equals_dense_autodiff(x64, family):
    model, dense_model = FAMILIES[family]
    graph, params = _random_graph(), _params()
    mean_at_an_isolated_node = family == "sage_mean"  # node N - 1: not differentiable in its row
    if mean_at_an_isolated_node:
        with pytest.raises(ValueError, match=f"node {N - 1} has no incoming weight and the model takes a mean"):
            adjacency_grad(model, graph, params)
    grad = adjacency_grad(model, graph, params, check=not mean_at_an_isolated_node)  # 0 in that row
    expected = jax.grad(dense_model)(graph.to_dense(), params)
    assert isinstance(grad, AdjacencyGrad)
    np.testing.assert_allclose(grad.dense(), expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(grad.at(graph.receivers, graph.senders), edge_grad(model, graph, params),
                               rtol=1e-10, atol=1e-13)


def test_unweighted_graph_is_differentiated_at_ones(x64):
    graph, params = _random_graph(weighted=False), _params()
    grad = adjacency_grad(_gcn, graph, params)
    expected = jax.grad(_gcn_dense)(graph.to_dense().astype(jnp.float64), params)
    np.testing.assert_allclose(grad.dense(), expected, rtol=1e-10, atol=1e-13)


def test_at_existing_edges_equals_edge_grad_in_float32():
    graph = _random_graph(weighted=False)
    params = jax.tree.map(lambda a: a.astype(jnp.float32), _params())
    grad = adjacency_grad(_gcn, graph, params)
    assert grad.left.dtype == jnp.float32
    np.testing.assert_allclose(grad.at(graph.receivers, graph.senders), edge_grad(_gcn, graph, params),
                               rtol=1e-5, atol=1e-6)
    assert float(grad.edge_error) < 1e-4


def test_row_and_at_agree_with_dense(x64):
    graph, params = _random_graph(), _params()
    grad = adjacency_grad(_sage, graph, params, check=False)  # check=False: a mean at the isolated node N - 1
    dense = grad.dense()
    for v in (0, 4, N - 1):
        np.testing.assert_allclose(grad.row(v), dense[v], rtol=1e-12, atol=1e-14)
    rows, cols = jnp.array([0, 3, 8, 2]), jnp.array([0, 5, 1, 2])
    np.testing.assert_allclose(grad.at(rows, cols), dense[rows, cols], rtol=1e-12, atol=1e-14)
    # rank: one column per aggregated feature, one per degree call
    assert grad.rank == F + 4 + 2


def test_symmetric_counts_both_directions_and_the_diagonal_once(x64):
    graph, params = _random_graph().to_undirected(reduce="mean"), _params()
    grad = adjacency_grad(_gcn, graph, params)
    g = grad.dense()
    expected = g + g.T - jnp.diag(jnp.diag(g))
    np.testing.assert_allclose(grad.symmetric().dense(), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(adjacency_grad(_gcn, graph, params, symmetric=True).dense(), expected,
                               rtol=1e-12, atol=1e-14)
    sym = grad.symmetric()
    assert sym.is_symmetric and sym.symmetric() is sym
    np.testing.assert_allclose(sym.row(3), expected[3], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sym.at(jnp.array([2, 5]), jnp.array([2, 1])), expected[[2, 5], [2, 1]],
                               rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# topk against a dense argsort
# --------------------------------------------------------------------------------------------------
def _topk_graph():
    rng = np.random.default_rng(3)
    n, e = 150, 500
    senders, receivers = rng.integers(0, n, e), rng.integers(0, n, e)
    keep = senders != receivers
    graph = jgrad.Graph.from_edges(senders[keep], receivers[keep], n)
    x = jnp.asarray(rng.standard_normal((n, 2)))
    c = jnp.asarray(rng.standard_normal((n, 2)))
    model = lambda g, x, c: jnp.sum(jnp.tanh(propagate(g, jnp.tanh(propagate(g, x)))) * c)
    return graph, x, c, model


@functools.lru_cache(maxsize=None)
def _topk_grad(symmetric):
    """One float64 gradient per orientation, shared by the topk grid (call under the x64 fixture)."""
    graph, x, c, model = _topk_graph()
    return graph, adjacency_grad(model, graph, x, c, symmetric=symmetric)


def _expected_topk(dense, graph, k, among, sign, symmetric):
    n = dense.shape[0]
    allowed = np.ones((n, n), bool)
    existing = np.zeros((n, n), bool)
    existing[np.asarray(graph.receivers), np.asarray(graph.senders)] = True
    if symmetric:
        existing = existing | existing.T
        allowed &= np.triu(np.ones((n, n), bool))
    if among == "non_edges":
        allowed &= ~existing & ~np.eye(n, dtype=bool)
    elif among == "edges":
        allowed &= existing
    scores = np.where(allowed, sign * np.asarray(dense), -np.inf)
    flat = np.argsort(-scores, axis=None, kind="stable")[:k]
    return np.sort(flat), np.asarray(dense).reshape(-1)[flat]  # best first


@pytest.mark.parametrize("symmetric", [False, True], ids=["directed", "symmetric"])
@pytest.mark.parametrize("sign", [1, -1], ids=["largest", "most_negative"])
@pytest.mark.parametrize("among", ["non_edges", "edges", "all"])
def test_topk_matches_dense_argsort(x64, among, sign, symmetric):
    graph, grad = _topk_grad(symmetric)
    k = 20
    top = grad.topk(k, among=among, sign=sign, block_size=32)
    positions, values = _expected_topk(grad.dense(), graph, k, among, sign, symmetric)
    n = graph.n_nodes
    np.testing.assert_array_equal(np.sort(np.asarray(top.rows) * n + np.asarray(top.cols)), positions)
    np.testing.assert_allclose(top.values, values, rtol=1e-12)
    np.testing.assert_allclose(top.values, grad.at(top.rows, top.cols), rtol=1e-12)
    assert np.all(np.diff(sign * np.asarray(top.values)) <= 0)  # best first


def test_topk_under_jit_matches_eager(x64):
    graph, x, c, model = _topk_graph()
    grad = adjacency_grad(model, graph, x, c)
    eager = grad.topk(7, block_size=64)
    traced = jax.jit(lambda gr: gr.topk(7, block_size=64))(grad)
    np.testing.assert_array_equal(eager.rows, traced.rows)
    np.testing.assert_array_equal(eager.cols, traced.cols)
    np.testing.assert_allclose(eager.values, traced.values, rtol=1e-12)


def test_topk_pads_when_fewer_candidates_than_k(x64):
    graph = jgrad.Graph.from_edges([0, 1], [1, 2], n_nodes=3)
    x = jnp.array([[1.0], [2.0], [3.0]])
    grad = adjacency_grad(lambda g, x: jgrad.ops.spmm(g, x).sum(), graph, x)
    top = grad.topk(4, among="edges")
    assert top.rows.tolist()[2:] == [-1, -1] and np.isnan(np.asarray(top.values)[2:]).all()
    assert sorted(zip(top.rows.tolist()[:2], top.cols.tolist()[:2])) == [(1, 0), (2, 1)]


def test_topk_rejects_bad_arguments():
    graph = jgrad.Graph.from_edges([0], [1], n_nodes=2)
    grad = adjacency_grad(lambda g: jgrad.ops.spmm(g, jnp.ones((2, 1))).sum(), graph)
    with pytest.raises(ValueError, match="unknown candidate set 'missing'"):
        grad.topk(1, among="missing")
    with pytest.raises(ValueError, match="sign must be"):
        grad.topk(1, sign=2)
    with pytest.raises(ValueError, match="k must be a positive int"):
        grad.topk(0)


# --------------------------------------------------------------------------------------------------
# Non-linear models
# --------------------------------------------------------------------------------------------------
def _gcn_norm_model(g, p):
    norm = jgrad.ops.gcn_norm(g)
    h = jax.nn.relu(jgrad.ops.spmm(norm, p["x"] @ p["w1"]))
    return jnp.sum(jnp.tanh(jgrad.ops.spmm(norm, h @ p["w2"])) * p["c"])


def _squared_weights_model(g, p):
    h = jax.nn.relu(jgrad.ops.spmm(g, p["x"] @ p["w1"], g.edge_weight ** 2))
    return jnp.sum(jnp.tanh(jgrad.ops.spmm(g, h @ p["w2"])) * p["c"])


def _attention_model(g, p):
    h = p["x"] @ p["w1"]
    logits = g.edge_weight * jgrad.ops.gsddmm(g, "dot", h, h, "u", "v")[:, 0]
    alpha = jgrad.ops.edge_softmax(g, logits)
    return jnp.sum(jnp.tanh(jgrad.ops.spmm(g, h, alpha) @ p["w2"]) * p["c"])


@pytest.mark.parametrize("model", [_squared_weights_model, _attention_model], ids=["squared", "attention"])
def test_non_linear_use_of_the_adjacency_raises(x64, model):
    graph, params = _random_graph(), _params()
    with pytest.raises(ValueError, match="uses the edge weights outside the operations.*mode='dense'"):
        adjacency_grad(model, graph, params)


def test_non_linear_use_is_detected_in_float32():
    graph = _random_graph(dtype=np.float32)
    params = jax.tree.map(lambda a: a.astype(jnp.float32), _params())
    with pytest.raises(ValueError, match="max relative error"):
        adjacency_grad(_squared_weights_model, graph, params)


@pytest.mark.parametrize("mode", ["factored", "dense"])
def test_a_non_finite_loss_or_gradient_is_named_as_such(mode):
    """A NaN feature made the checks blame the model ('uses the edge weights outside...', 'looks at
    the edge structure'); the error now says what is not finite."""
    graph = jgrad.Graph.from_edges([0, 1, 2], [1, 2, 0], n_nodes=3)
    loss = lambda g, x: jgrad.ops.spmm(g, x).sum()  # noqa: E731
    for x, what in ((jnp.array([[1.0], [jnp.nan], [2.0]]), "a loss of nan" if mode == "factored" else "NaN"),
                    (jnp.array([[1.0], [jnp.inf], [2.0]]), "a loss of inf" if mode == "factored" else "NaN")):
        with pytest.raises(ValueError, match=f"adjacency_grad: got .*{what}.*expected finite values"):
            adjacency_grad(loss, graph, x, mode=mode)


def test_dense_mode_handles_a_non_linear_model(x64):
    graph, params = _random_graph(), _params()
    grad = adjacency_grad(_gcn_norm_model, graph, params, mode="dense")
    # gcn_norm on the dense adjacency is the same GCN as _gcn_dense
    expected = jax.grad(_gcn_dense)(graph.to_dense(), params)
    np.testing.assert_allclose(grad.dense(), expected, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(grad.at(graph.receivers, graph.senders), edge_grad(_gcn_norm_model, graph, params),
                               rtol=1e-10, atol=1e-13)
    top = grad.topk(3, among="non_edges")
    np.testing.assert_allclose(top.values, grad.at(top.rows, top.cols))


def test_dense_mode_refuses_large_graphs_unless_forced():
    graph = jgrad.Graph.from_edges([0], [1], n_nodes=3000)
    with pytest.raises(ValueError, match="n_nodes=3000, expected at most 2048"):
        adjacency_grad(lambda g: jgrad.ops.spmm(g, jnp.ones((3000, 1))).sum(), graph, mode="dense")


def test_rejects_bad_inputs():
    graph = jgrad.Graph.from_edges([0], [1], n_nodes=2)
    with pytest.raises(ValueError, match="fn must return a scalar"):
        adjacency_grad(lambda g: jgrad.ops.spmm(g, jnp.ones((2, 1))), graph)
    with pytest.raises(ValueError, match="unknown mode 'sparse'"):
        adjacency_grad(lambda g: g.in_degree().sum(), graph, mode="sparse")
    with pytest.raises(ValueError, match="one scalar weight per edge"):
        adjacency_grad(lambda g: g.in_degree().sum(), graph.with_edge_weight(jnp.ones((1, 2))))


def test_works_under_jit(x64):
    graph, params = _random_graph(), _params()

    @jax.jit
    def dense_grad(weight):
        grad = adjacency_grad(_gcn, graph.with_edge_weight(weight), params)
        return grad.dense(), grad.edge_error

    dense, error = dense_grad(graph.edge_weight)
    np.testing.assert_allclose(dense, jax.grad(_gcn_dense)(graph.to_dense(), params), rtol=1e-10, atol=1e-13)
    assert float(error) < 1e-12


def test_repr_gives_the_sizes_not_the_factors():
    graph, params = _random_graph(dtype=np.float32), jax.tree.map(lambda a: a.astype(jnp.float32), _params())
    grad = adjacency_grad(_gcn, graph, params)
    text = repr(grad)
    assert text.startswith(f"AdjacencyGrad(n_nodes={N}, rank={grad.rank}, n_edges={graph.n_edges}")
    assert "edge_error=" in text and "dtype=float32" in text and "[" not in text and len(text) < 160
    assert "symmetric=True" in repr(grad.symmetric())


def _padded_problem():
    """_random_graph padded to 12 nodes (3 padding nodes with non-zero features) and 30 edges."""
    graph = _random_graph()
    padded = jgrad.pad(graph, n_nodes=12, n_edges=30)
    rng = np.random.default_rng(5)
    params = _params()
    padded_params = dict(params, x=jnp.concatenate([params["x"], jnp.asarray(rng.standard_normal((3, F)))]),
                         c=jnp.concatenate([params["c"], jnp.zeros((3, params["c"].shape[1]))]))
    return graph, params, padded, padded_params


def _gcn_any(g, p):  # _gcn for any number of nodes
    h = jax.nn.relu(propagate(g, p["x"] @ p["w1"]))
    return jnp.sum(jnp.tanh(propagate(g, h @ p["w2"])) * p["c"])


def test_pairs_touching_padding_nodes_are_zero_and_never_ranked(x64):
    graph, params, padded, padded_params = _padded_problem()
    real = np.asarray(padded.node_mask)
    assert real.tolist() == [True] * N + [False] * 3
    for symmetric in (False, True):
        own = adjacency_grad(_gcn_any, graph, params, symmetric=symmetric)
        grad = adjacency_grad(_gcn_any, padded, padded_params, symmetric=symmetric)
        assert grad.node_mask is not None and grad.is_symmetric == symmetric
        dense = np.asarray(grad.dense())
        np.testing.assert_array_equal(dense[N:], 0.0)
        np.testing.assert_array_equal(dense[:, N:], 0.0)
        np.testing.assert_allclose(dense[:N, :N], own.dense(), rtol=1e-10, atol=1e-13)
        for v in range(12):
            row = np.asarray(grad.row(v))
            np.testing.assert_array_equal(row[N:], 0.0)
            np.testing.assert_allclose(row, dense[v], rtol=1e-12, atol=1e-16)
        rows, cols = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
        values = np.asarray(grad.at(rows.ravel(), cols.ravel()))
        np.testing.assert_allclose(values, dense.ravel(), rtol=1e-12, atol=1e-16)
        np.testing.assert_array_equal(values[~(real[rows] & real[cols]).ravel()], 0.0)
        for among, k in (("non_edges", 60), ("all", 81), ("edges", 30)):
            for sign in (1, -1):
                top = grad.topk(k, among=among, sign=sign, block_size=5)
                found = np.asarray(top.rows) >= 0
                assert np.all(real[np.asarray(top.rows)[found]]) and np.all(real[np.asarray(top.cols)[found]])
                # the same candidates as the unpadded graph, in the same order
                expected = own.topk(k, among=among, sign=sign, block_size=5)
                np.testing.assert_array_equal(top.rows, expected.rows)
                np.testing.assert_array_equal(top.cols, expected.cols)
                np.testing.assert_allclose(top.values, expected.values, rtol=1e-10, atol=1e-13)
    # the "all" candidates of the padded symmetric gradient are exactly the 45 unordered real pairs
    assert int(np.sum(np.asarray(grad.topk(144, among="all").rows) >= 0)) == N * (N + 1) // 2


def test_padding_mask_survives_jit_and_dense_mode(x64):
    graph, params, padded, padded_params = _padded_problem()
    expected = np.asarray(adjacency_grad(_gcn_any, graph, params).dense())

    dense = np.asarray(jax.jit(lambda g, p: adjacency_grad(_gcn_any, g, p).dense())(padded, padded_params))
    np.testing.assert_array_equal(dense[N:], 0.0)
    np.testing.assert_array_equal(dense[:, N:], 0.0)
    np.testing.assert_allclose(dense[:N, :N], expected, rtol=1e-10, atol=1e-13)

    traced = jax.jit(lambda g, p: adjacency_grad(_gcn_any, g, p, symmetric=True))(padded, padded_params)
    np.testing.assert_array_equal(traced.node_mask, padded.node_mask)
    top = traced.topk(50, among="non_edges", sign=-1)
    assert np.all(np.asarray(top.cols)[np.asarray(top.rows) >= 0] < N)

    dense_mode = np.asarray(adjacency_grad(_gcn_any, padded, padded_params, mode="dense").dense())
    np.testing.assert_array_equal(dense_mode[N:], 0.0)
    np.testing.assert_array_equal(dense_mode[:, N:], 0.0)
    np.testing.assert_allclose(dense_mode[:N, :N], expected, rtol=1e-10, atol=1e-13)


def test_a_gradient_that_is_zero_at_every_edge_is_not_mistaken_for_a_non_linear_use():
    """The only edge is a self loop the loss does not feel (dL/dw = 0 there, rounding aside): the check
    against edge_grad measures against the gradient's size, so it neither raises nor, inside jit,
    turns every entry to NaN; the entries equal dense mode's."""
    kernel = jnp.ones((3, 2))
    loss = lambda g, x: jnp.sum(jnp.tanh(jgrad.nn.functional.gcn_conv({"kernel": kernel, "bias": None}, g, x)) ** 2)
    graph, x = jgrad.Graph.from_edges([0], [0], n_nodes=2), jnp.ones((2, 3))
    eager = adjacency_grad(loss, graph, x).dense()
    inside = jax.jit(lambda g, x: adjacency_grad(loss, g, x).dense())(graph, x)
    reference = adjacency_grad(loss, graph, x, mode="dense").dense()
    assert np.abs(np.asarray(reference)).max() > 1e-2  # the missing pairs do matter
    for got in (eager, inside):
        np.testing.assert_allclose(got, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("attention", [False, True])
def test_at_over_many_pairs_holds_a_chunk_of_gathered_factor_rows_not_all(monkeypatch, attention):
    """The check against edge_grad and topk(among="edges") evaluate `at` at every edge: the (P, R)
    gathered factor rows must not all be in memory at once (1.2 GB each at 1.2e7 edges and R = 25)."""
    from jgrad.gradients import _adjacency_result
    from flax import nnx

    n, n_edges, width = 300, 3000, 64
    rng = np.random.default_rng(0)
    graph = jgrad.Graph.from_edges(rng.integers(0, n, n_edges), rng.integers(0, n, n_edges), n)
    x = jnp.asarray(rng.standard_normal((n, width)), jnp.float32)
    if attention:
        layer = jgrad.nn.GATConv(width, 8, heads=2, edge_weight_mode="normalise", rngs=nnx.Rngs(0))
        loss = lambda g, x: jnp.sum(jnp.tanh(layer(g, x)) ** 2)
    else:
        loss = lambda g, x: jnp.sum(jnp.tanh(jgrad.ops.spmm(g, x)) ** 2)  # R = 64
    monkeypatch.setattr(_adjacency_result, "PAIR_CHUNK_ELEMENTS", 100 * width)
    grad = adjacency_grad(loss, graph, x)  # its own check runs `at` in chunks too
    assert float(grad.edge_error) < 1e-4
    at_edges = jax.jit(lambda grad: grad.at(grad.receivers, grad.senders))
    temp = at_edges.lower(grad).compile().memory_analysis().temp_size_in_bytes
    one_gathered_factor = n_edges * width * 4
    assert temp < one_gathered_factor / 2, (temp, one_gathered_factor)
    dense = np.asarray(grad.dense())
    np.testing.assert_allclose(at_edges(grad), dense[graph.receivers, graph.senders], rtol=1e-5, atol=1e-6)
    rows, cols = rng.integers(0, n, (50, 41)), rng.integers(0, n, (50, 41))  # any shape, 2050 pairs
    np.testing.assert_allclose(grad.at(rows, cols), dense[rows, cols], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad.at(3, 7), dense[3, 7], rtol=1e-5, atol=1e-6)


def test_dense_mode_refuses_more_pairs_than_int32_indexes_even_when_forced(monkeypatch):
    """N^2 edges of the complete graph above 2**31 - 1 (N > 46340) would wrap int32 edge indices, and
    allocate N^2 weights first: refused before anything is built, force=True or not."""
    from jgrad.gradients import _adjacency

    monkeypatch.setattr(_adjacency, "MAX_SIZE", 99)  # stands for 2**31 - 1: 10 nodes are 100 pairs
    loss = lambda g: jgrad.ops.spmm(g, jnp.ones((g.n_nodes, 1))).sum()
    for force in (False, True):
        with pytest.raises(ValueError, match=r"n_nodes=10, 100 edges, expected at most .* even with force=True") as error:
            adjacency_grad(loss, jgrad.Graph.from_edges([0], [1], n_nodes=10), mode="dense", force=force)
        assert "\n" not in str(error.value)
    small = adjacency_grad(loss, jgrad.Graph.from_edges([0], [1], n_nodes=9), mode="dense")  # 81 pairs
    np.testing.assert_allclose(small.dense(), np.ones((9, 9)))


def test_topk_cuts_blocks_whose_entries_int32_cannot_number(monkeypatch, x64):
    """A block's B x N entries are numbered in int32: B = 256 rows wrap from 8.4e6 nodes on (and a larger
    block_size sooner), naming wrong pairs. Blocks are cut to (2**31 - 1) // N rows; the result is the same."""
    from jgrad.gradients import _adjacency_result

    graph, params = _random_graph(), _params()
    grad = adjacency_grad(_gcn, graph, params)
    expected = {among: grad.topk(7, among=among) for among in ("non_edges", "all")}
    seen = []
    blocks = _adjacency_result._TOPK_BLOCKS
    monkeypatch.setattr(_adjacency_result, "_TOPK_BLOCKS", lambda *args: seen.append(args[4]) or blocks(*args))
    monkeypatch.setattr(_adjacency_result, "MAX_SIZE", 3 * N)  # stands for 2**31 - 1: three rows of N entries
    for among, want in expected.items():
        got = grad.topk(7, among=among, block_size=256)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    assert seen == [3, 3]


@pytest.mark.parametrize("among", ["non_edges", "all"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_a_long_topk_runs_in_calls_that_report_progress(monkeypatch, capsys, x64, among, symmetric):
    """topk among N^2 pairs took 16.5 s at 1e5 nodes (R = 25) and would take about half an hour at 1e6,
    in one compiled call: silent, and deaf to Ctrl-C. Above TOPK_CALL_WORK products it runs its row
    blocks in several calls and prints progress on stderr; the result is the same."""
    from jgrad.gradients import _adjacency_result

    graph, params = _random_graph(), _params()
    grad = adjacency_grad(_gcn, graph, params, symmetric=symmetric)
    want = grad.topk(7, among=among, block_size=2)
    assert capsys.readouterr().err == ""  # small: one call, nothing said
    monkeypatch.setattr(_adjacency_result, "TOPK_CALL_WORK", 1)  # one block of 2 rows per call: 5 calls
    monkeypatch.setattr(_adjacency_result, "TOPK_PROGRESS_AFTER", 0.0)
    got = grad.topk(7, among=among, block_size=2)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 5, lines
    assert lines[0].startswith("jgrad: AdjacencyGrad.topk: rows 2/9 (22%) in ")
    assert lines[-1].startswith("jgrad: AdjacencyGrad.topk: rows 9/9 (100%) in ") and "about 0 s left" in lines[-1]
    jitted = jax.jit(lambda grad: grad.topk(7, among=among, block_size=2))(grad)  # traced: one call
    for a, b in zip(jitted, want):
        np.testing.assert_array_equal(a, b)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("symmetric", [False, True])
def test_topk_among_edges_finds_the_distinct_pairs_on_the_host(monkeypatch, x64, symmetric):
    """With concrete indices the distinct edge pairs come from one numpy sort of int64 keys (0.5 s at
    1.2e7 edges) instead of XLA's three-key sort (5.6 s, most of topk(among="edges") at 1e6 nodes);
    the result is the traced path's, duplicate and padding edges included."""
    import dataclasses

    from jgrad.gradients import _adjacency_result

    _, _, padded, padded_params = _padded_problem()
    senders, receivers = np.asarray(padded.senders), np.asarray(padded.receivers)
    doubled = jgrad.Graph.from_edges(np.r_[senders, senders[:5]], np.r_[receivers, receivers[:5]],
                                     padded.n_nodes, edge_weight=np.r_[padded.edge_weight, padded.edge_weight[:5]])
    doubled = dataclasses.replace(doubled, node_mask=padded.node_mask,  # 5 duplicates, padding kept
                                  edge_mask=jnp.asarray(np.r_[padded.edge_mask, padded.edge_mask[:5]]))
    grad = adjacency_grad(_gcn_any, doubled, padded_params, symmetric=symmetric)
    traced = {(k, sign): jax.jit(lambda grad, k=k, sign=sign: grad.topk(k, among="edges", sign=sign))(grad)
              for k in (5, 100) for sign in (1, -1)}
    monkeypatch.setattr(_adjacency_result, "_TOPK_EDGES", None)  # the XLA sort is not called eagerly
    for (k, sign), want in traced.items():
        got = grad.topk(k, among="edges", sign=sign)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    assert 0 < int(np.sum(np.asarray(traced[100, 1].rows) >= 0)) < 100  # fewer pairs than k: padded


def test_a_float32_model_with_float64_weights_is_checked_at_float32_rounding(x64):
    """Under x64 an unweighted graph's weights are float64 while the model computes in float32: the
    edge check allowed float64 rounding (1e-8) and raised 'uses the edge weights outside...' on float32
    rounding (about 1e-7); it now allows the coarser of the two dtypes."""
    rng = np.random.default_rng(0)
    graph = jgrad.Graph.from_edges(*rng.integers(0, 30, (2, 120)), n_nodes=30)
    x = jnp.asarray(rng.normal(size=(30, 8)), jnp.float32)
    params = {name: jnp.asarray(rng.normal(size=shape), jnp.float32)
              for name, shape in (("kernel", (8, 8)), ("att_src", (2, 4)), ("att_dst", (2, 4)))}
    gat = lambda g, x: jgrad.nn.functional.gat_conv(params, g, x, edge_weight_mode="normalise")  # noqa: E731
    loss = lambda g, x: jnp.sum(jnp.tanh(gat(g, x)))  # noqa: E731
    result = adjacency_grad(loss, graph, x)
    assert loss(graph, x).dtype == jnp.float32 and 0 < float(result.edge_error) <= 1e-4


@pytest.mark.parametrize("mode", ["factored", "dense"])
def test_a_loss_that_is_zero_at_the_graph_passes_the_loss_value_checks(x64, mode):
    """A loss that is 0 at the graph (as a margin at the decision boundary): rounding of the order of its
    terms made dense mode's comparison with the complete graph 100% of the loss and raise 'looks at the
    edge structure'; it now measures against the loss's size, sum_e |w_e dL/dw_e|. The factored mode's
    structure probe compares two losses of one code path, equal to the last bit."""
    rng = np.random.default_rng(0)
    graph = jgrad.Graph.from_edges(*rng.integers(0, 20, (2, 60)), n_nodes=20, edge_weight=rng.random(60) + 0.5)
    x = jnp.asarray(rng.normal(size=(20, 4)))
    base = lambda g, x: jnp.sum(jnp.tanh(jgrad.ops.spmm(jgrad.ops.gcn_norm(g), x)))  # noqa: E731
    at_graph = base(graph, x)
    loss = lambda g, x: base(g, x) - at_graph  # noqa: E731
    result = adjacency_grad(loss, graph, x, mode=mode)
    reference = adjacency_grad(base, graph, x, mode=mode)
    np.testing.assert_allclose(result.dense(), reference.dense(), rtol=1e-10, atol=1e-12)
