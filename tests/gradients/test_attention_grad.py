"""adjacency_grad of attention models: GAT with the edge weight inside the normalisation, exact at every pair."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jgrad
from jgrad.gradients import adjacency_grad, edge_grad
from jgrad.nn import functional as F

N, F_IN, HEADS, HIDDEN, CLASSES = 11, 5, 4, 3, 3
SLOPE = 0.2


def _graph():
    """Weighted, directed; self loops (1->1, 2->2), duplicate edges (3->4 twice), isolated nodes 9, 10."""
    rng = np.random.default_rng(0)
    senders = np.concatenate([rng.integers(0, 9, 30), [1, 2, 3, 3]])
    receivers = np.concatenate([rng.integers(0, 9, 30), [1, 2, 4, 4]])
    weight = rng.random(len(senders)) + 0.5
    return jgrad.Graph.from_edges(senders, receivers, N, edge_weight=weight)


def _layer_params(f_in, heads, f_out, seed, bias_width):
    rng = np.random.default_rng(seed)
    return {"kernel": jnp.asarray(rng.standard_normal((f_in, heads * f_out)) / 2),
            "att_src": jnp.asarray(rng.standard_normal((heads, f_out))),
            "att_dst": jnp.asarray(rng.standard_normal((heads, f_out))),
            "bias": jnp.asarray(rng.standard_normal((bias_width,)) / 4)}


def _problem():
    rng = np.random.default_rng(3)
    params = (_layer_params(F_IN, HEADS, HIDDEN, 1, HEADS * HIDDEN), _layer_params(HEADS * HIDDEN, HEADS, CLASSES, 2, CLASSES))
    return params, jnp.asarray(rng.standard_normal((N, F_IN))), jnp.asarray(rng.integers(0, CLASSES, N))


def _sparse_loss(graph, params, x, labels, add_self_loops=True):
    h = jax.nn.elu(F.gat_conv(params[0], graph, x, edge_weight_mode="normalise", add_self_loops=add_self_loops))
    out = F.gat_conv(params[1], graph, h, concat=False, edge_weight_mode="normalise", add_self_loops=add_self_loops)
    return -jnp.mean(jax.nn.log_softmax(out)[jnp.arange(N), labels])


def _dense_layer(params, a, x, concat, add_self_loops):
    """The same layer on a dense adjacency: alpha[v, u] = Â[v, u] exp(s[v, u]) / sum_k Â[v, k] exp(s[v, k])."""
    heads, f_out = params["att_src"].shape
    h = (x @ params["kernel"]).reshape(N, heads, f_out)
    src, dst = jnp.sum(h * params["att_src"][None], -1), jnp.sum(h * params["att_dst"][None], -1)
    a_hat = jnp.where(jnp.eye(N, dtype=bool), 1.0, a) if add_self_loops else a
    scores = jax.nn.leaky_relu(dst[:, None, :] + src[None, :, :], SLOPE)
    weights = a_hat[..., None] * jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=1, keepdims=True)))
    total = weights.sum(axis=1, keepdims=True)
    safe = jnp.where(total > 0, total, 1.0)  # a node without incoming weight gets 0 (the bias), as in gat_conv
    out = jnp.einsum("vuh,uhf->vhf", weights / safe, h)
    return (out.reshape(N, -1) if concat else out.mean(axis=1)) + params["bias"][None]


def _dense_loss(a, params, x, labels, add_self_loops=True):
    h = jax.nn.elu(_dense_layer(params[0], a, x, True, add_self_loops))
    out = _dense_layer(params[1], a, h, False, add_self_loops)
    return -jnp.mean(jax.nn.log_softmax(out)[jnp.arange(N), labels])


# The dense references compiled whole (eagerly, each of their many small ops would compile on its own).
_dense_grad = jax.jit(jax.grad(_dense_loss), static_argnums=4)


@pytest.fixture(scope="module")
def gat_case():
    """(graph, dense adjacency, AdjacencyGrad, jax.grad of the dense model, edge_grad) in float64."""
    with jax.enable_x64(True):
        graph = _graph()
        params, x, labels = _problem()
        grad = adjacency_grad(_sparse_loss, graph, params, x, labels)
        a = graph.to_dense()
        reference = np.asarray(_dense_grad(a, params, x, labels, True))
        edges = np.asarray(edge_grad(_sparse_loss, graph, params, x, labels))
    return graph, np.asarray(a), grad, reference, edges  # outside the block: x64 does not stay on


def test_sparse_and_dense_gat_agree_in_value(x64):
    graph = _graph()
    params, x, labels = _problem()
    sparse = jax.jit(_sparse_loss)(graph, params, x, labels)
    np.testing.assert_allclose(sparse, jax.jit(_dense_loss)(graph.to_dense(), params, x, labels), rtol=1e-13)


def test_gat_gradient_is_exact_at_every_pair(x64, gat_case):
    graph, a, grad, reference, _ = gat_case
    assert len(grad.attention) == 2 and grad.rank == 0
    assert float(grad.edge_error) < 1e-12
    scale = np.abs(reference).max()
    np.testing.assert_allclose(grad.dense(), reference, rtol=0, atol=1e-10 * scale)
    missing = (a == 0) & ~np.eye(N, dtype=bool)
    assert missing.sum() > 50 and np.abs(reference[missing]).max() > 1e-3 * scale  # non-trivial at non-edges
    rows, cols = np.nonzero(np.ones((N, N)))
    np.testing.assert_allclose(grad.at(rows, cols), reference[rows, cols], rtol=0, atol=1e-10 * scale)
    for v in (0, 3, 9):  # 9 is isolated
        np.testing.assert_allclose(grad.row(v), reference[v], rtol=0, atol=1e-10 * scale)
    # the layers replace A[v, v] by their own loops: the diagonal is exactly 0, as in the dense model
    np.testing.assert_array_equal(np.diag(np.asarray(grad.dense())), 0.0)


def test_gat_gradient_at_the_edges_equals_edge_grad(x64, gat_case):
    graph, _, grad, _, edges = gat_case
    at_edges = grad.at(graph.receivers, graph.senders)
    np.testing.assert_allclose(at_edges, edges, rtol=0, atol=1e-10 * np.abs(edges).max())
    # the duplicate edges 3 -> 4 share one entry of A, and so one gradient
    duplicates = np.flatnonzero((np.asarray(graph.senders) == 3) & (np.asarray(graph.receivers) == 4))
    assert len(duplicates) >= 2 and np.ptp(edges[duplicates]) < 1e-12


def test_gat_topk_and_symmetric_match_the_dense_reference(x64, gat_case):
    _, a, grad, reference, _ = gat_case
    missing = (a == 0) & ~np.eye(N, dtype=bool)
    top = grad.topk(6, among="non_edges", block_size=4)
    order = np.argsort(-np.where(missing, reference, -np.inf).ravel())[:6]
    np.testing.assert_array_equal(np.stack([top.rows, top.cols]), np.stack([order // N, order % N]))
    np.testing.assert_allclose(top.values, reference.ravel()[order], rtol=1e-10)

    sym = grad.symmetric()
    expected = reference + reference.T - np.diag(np.diag(reference))
    np.testing.assert_allclose(sym.dense(), expected, rtol=0, atol=1e-10 * np.abs(expected).max())
    np.testing.assert_allclose(sym.row(2), expected[2], rtol=0, atol=1e-10 * np.abs(expected).max())
    top = sym.topk(4, among="all", sign=-1, block_size=3)
    assert np.all(top.rows <= top.cols)
    upper = np.where(np.triu(np.ones((N, N), bool)), expected, np.inf).ravel()
    np.testing.assert_allclose(top.values, np.sort(upper)[:4], rtol=1e-10)


def test_gat_without_self_loops_has_a_diagonal_gradient(x64):
    graph = _graph()
    params, x, labels = _problem()
    a = np.asarray(graph.to_dense())
    has_input = a.sum(axis=1) > 0  # rows of nodes with no incoming weight are not differentiable
    first = int(np.flatnonzero(~has_input)[0])
    with pytest.raises(ValueError, match=f"node {first} has no incoming weight and the model normalises its attention"):
        adjacency_grad(_sparse_loss, graph, params, x, labels, False)
    grad = adjacency_grad(_sparse_loss, graph, params, x, labels, False, check=False)
    reference = np.asarray(_dense_grad(graph.to_dense(), params, x, labels, False))
    got = np.asarray(grad.dense())
    np.testing.assert_allclose(got[has_input], reference[has_input], rtol=0, atol=1e-10 * np.abs(reference).max())
    assert np.abs(np.diag(reference)[has_input]).max() > 0


def test_gat_module_with_normalise_mode_is_exact(x64):
    graph = _graph()
    model = jgrad.nn.GAT(F_IN, HIDDEN, CLASSES, heads=HEADS, out_heads=2, dropout=0.0, rngs=nnx.Rngs(0),
                         param_dtype=jnp.float64, edge_weight_mode="normalise")
    _, x, _ = _problem()

    def loss(g, x):
        return jnp.sum(jnp.tanh(model(g, x)))

    grad = adjacency_grad(loss, graph, x)
    layers = model.layers
    params = tuple({"kernel": layer.kernel[...], "att_src": layer.att_src[...], "att_dst": layer.att_dst[...],
                    "bias": layer.bias[...]} for layer in layers)

    def dense(a):
        h = jax.nn.elu(_dense_layer(params[0], a, x, True, True))
        return jnp.sum(jnp.tanh(_dense_layer(params[1], a, h, False, True)))

    reference = jax.jit(jax.grad(dense))(graph.to_dense())
    np.testing.assert_allclose(grad.dense(), reference, rtol=0, atol=1e-10 * np.abs(reference).max())


def test_a_weight_zero_edge_changes_neither_the_normalised_attention_nor_its_rounding(x64):
    """An edge of weight 0 is a missing one: the layer's output is the same to the last bit, even when its
    logit is far above the others (the softmax shift used to include it: with features scaled x100 the
    real terms lost their digits and adjacency_grad's probe, one weight-0 edge per node, saw a change).
    Its derivative is the dense model's at that pair."""
    graph, (params, x, _) = _graph(), _problem()
    params = params[0]
    layer = jax.jit(lambda g, x: F.gat_conv(params, g, x, edge_weight_mode="normalise", add_self_loops=False))
    big = 100 * x
    extra = jgrad.Graph.from_edges(np.concatenate([np.asarray(graph.senders), np.arange(N)]),  # u -> 0, weight 0
                                   np.concatenate([np.asarray(graph.receivers), np.zeros(N, int)]), N,
                                   edge_weight=jnp.concatenate([graph.edge_weight, jnp.zeros(N)]))
    for features in (x, big):
        np.testing.assert_array_equal(layer(extra, features), layer(graph, features))
    at_zero = jax.jit(jax.grad(lambda w: jnp.sum(jnp.tanh(layer(extra.with_edge_weight(w), x)))))(extra.edge_weight)
    dense = jax.jit(jax.grad(lambda a: jnp.sum(jnp.tanh(_dense_layer(params, a, x, True, False)))))(graph.to_dense())
    missing = np.flatnonzero(np.asarray(graph.to_dense())[0] == 0)
    np.testing.assert_allclose(at_zero[-N:][missing], dense[0, missing], rtol=1e-10)
    looped = lambda g, x: F.gat_conv(params, g, x, edge_weight_mode="normalise")  # noqa: E731
    scaled = jgrad.adjacency_grad(lambda g, x: jnp.sum(jnp.tanh(looped(g, 100 * x))), graph, x)  # no false alarm
    assert float(scaled.edge_error) <= 1e-8


def test_normalise_equals_after_softmax_on_an_unweighted_graph():
    graph = jgrad.Graph.from_edges([0, 1, 2, 2, 3], [1, 2, 0, 3, 3], 4)
    params = jax.tree.map(lambda a: a.astype(jnp.float32), _layer_params(2, 2, 3, 0, 6))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 2)), jnp.float32)
    layer = jax.jit(F.gat_conv, static_argnames=("edge_weight_mode",))
    np.testing.assert_allclose(layer(params, graph, x, edge_weight_mode="normalise"),
                               layer(params, graph, x, edge_weight_mode="after_softmax"), rtol=1e-5, atol=1e-6)


def test_after_softmax_gat_refuses_with_the_option_named():
    graph = jgrad.Graph.from_edges([0, 1, 2], [1, 2, 0], 3)
    model = jgrad.nn.GAT(2, 2, 2, heads=2, dropout=0.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="edge_weight_mode='after_softmax'.*edge_weight_mode='normalise'"):
        adjacency_grad(lambda g, x: model(g, x).sum(), graph, jnp.ones((3, 2)))


def test_attention_dropout_refuses():
    graph = jgrad.Graph.from_edges([0, 1, 2], [1, 2, 0], 3)
    model = jgrad.nn.GAT(2, 2, 2, heads=2, dropout=0.5, rngs=nnx.Rngs(0), edge_weight_mode="normalise")
    with pytest.raises(ValueError, match="attention dropout"):
        adjacency_grad(lambda g, x: model(g, x, key=jax.random.key(0)).sum(), graph, jnp.ones((3, 2)))


def test_unknown_edge_weight_mode_is_named():
    with pytest.raises(ValueError, match="edge_weight_mode"):
        jgrad.nn.GATConv(2, 2, edge_weight_mode="inside", rngs=nnx.Rngs(0))
    graph = jgrad.Graph.from_edges([0], [1], 2)
    with pytest.raises(ValueError, match="edge_weight_mode"):
        F.gat_conv(_layer_params(2, 1, 2, 0, 2), graph, jnp.ones((2, 2)), edge_weight_mode="inside")
