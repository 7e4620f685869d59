"""Every NNX layer against a dense-matrix reference, under jit, vmapped over edge weights, and its
gradient w.r.t. the edge weights against finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jgrad
from jgrad.nn import GATConv, GCNConv, GINConv, GraphConv, MessagePassing, SAGEConv

# Node 4 is isolated; no duplicate edges and no self loops, so the dense matrix holds every edge.
SENDERS = [0, 1, 1, 2, 3, 0, 2]
RECEIVERS = [1, 0, 2, 3, 1, 3, 0]
N, F_IN = 5, 3


def make_graph(dtype=np.float32, weighted=True):
    weight = np.linspace(0.5, 1.7, len(SENDERS)).astype(dtype) if weighted else None
    return jgrad.Graph.from_edges(SENDERS, RECEIVERS, n_nodes=N, edge_weight=weight)


def make_x(dtype=np.float32):
    return jnp.asarray(np.random.default_rng(0).normal(size=(N, F_IN)).astype(dtype))


def p(param):
    return np.asarray(param[...], np.float64)


# ------------------------------------------------------------------------------------------------
# Dense references: A[v, u] = weight of u -> v.
# ------------------------------------------------------------------------------------------------
# gcn, graph_conv and gin references also run on jax.numpy (xp=jnp), for dense autodiff.
def gcn_reference(layer, a, x, xp=np):
    a_hat = a + xp.eye(N)
    d = 1.0 / xp.sqrt(a_hat.sum(1))
    return (d[:, None] * a_hat * d[None, :]) @ x @ p(layer.kernel) + p(layer.bias)[None]


def mean_matrix(a, xp=np):
    deg = a.sum(1, keepdims=True)
    return xp.where(deg > 0, a / xp.where(deg > 0, deg, 1.0), 0.0)


def graph_conv_reference(layer, a, x, xp=np):
    return mean_matrix(a, xp) @ x @ p(layer.neighbour_kernel) + x @ p(layer.root_kernel) + p(layer.bias)[None]


def sage_reference(layer, a, x):
    if layer.aggregator == "mean":
        agg = mean_matrix(a) @ x
    elif layer.aggregator == "sum":
        agg = a @ x
    else:
        agg = np.zeros_like(x)
        for v in range(N):
            senders = np.nonzero(a[v])[0]
            if len(senders):
                agg[v] = (a[v, senders, None] * x[senders]).max(0)
    return agg @ p(layer.neighbour_kernel) + x @ p(layer.root_kernel) + p(layer.bias)


def gat_reference(layer, a, x):
    heads, out = layer.heads, layer.out_features
    h = (x @ p(layer.kernel)).reshape(N, heads, out)
    a_hat = a + np.eye(N)  # self loops weigh 1
    src = (h * p(layer.att_src)).sum(-1)  # (N, H)
    dst = (h * p(layer.att_dst)).sum(-1)
    result = np.zeros((N, heads, out))
    for k in range(heads):
        scores = dst[:, k, None] + src[None, :, k]  # scores[v, u]
        scores = np.where(scores > 0, scores, layer.negative_slope * scores)
        scores = np.where(a_hat != 0, scores, -np.inf)
        alpha = np.exp(scores - scores.max(1, keepdims=True))
        alpha = alpha / alpha.sum(1, keepdims=True) * a_hat
        result[:, k] = alpha @ h[:, k]
    result = result.reshape(N, heads * out) if layer.concat else result.mean(1)
    return result + p(layer.bias)


def gin_reference(layer, a, x, xp=np):
    h = (1.0 + float(p(layer.eps))) * x + a @ x
    h = xp.maximum(h @ p(layer.mlp[0].kernel) + p(layer.mlp[0].bias)[None], 0.0)
    return h @ p(layer.mlp[1].kernel) + p(layer.mlp[1].bias)[None]


class EdgeMLP(MessagePassing):
    """A custom layer: message ``w * (x_u - x_v) @ kernel``, max-aggregated, plus a root term."""

    def __init__(self, in_features, out_features, *, rngs):
        super().__init__(aggregate="max")
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (in_features, out_features)))

    def message(self, x_sender, x_receiver, edge_data):
        return edge_data[:, None] * ((x_sender - x_receiver) @ self.kernel[...])

    def update(self, x, aggregated):
        return aggregated + x @ self.kernel[...]


def message_passing_reference(layer, a, x):
    kernel = p(layer.kernel)
    out = np.zeros((N, kernel.shape[1]))
    for v in range(N):
        senders = np.nonzero(a[v])[0]
        if len(senders):
            out[v] = (a[v, senders, None] * ((x[senders] - x[v]) @ kernel)).max(0)
    return out + x @ kernel


LAYERS = {
    "gcn": (lambda rngs, dt: GCNConv(F_IN, 4, rngs=rngs, param_dtype=dt), gcn_reference),
    "graph_conv": (lambda rngs, dt: GraphConv(F_IN, 4, rngs=rngs, param_dtype=dt), graph_conv_reference),
    "sage_mean": (lambda rngs, dt: SAGEConv(F_IN, 4, rngs=rngs, param_dtype=dt), sage_reference),
    "sage_max": (lambda rngs, dt: SAGEConv(F_IN, 4, aggregator="max", rngs=rngs, param_dtype=dt),
                 sage_reference),
    "sage_sum": (lambda rngs, dt: SAGEConv(F_IN, 4, aggregator="sum", rngs=rngs, param_dtype=dt),
                 sage_reference),
    # F_out < F_in: the linear aggregators aggregate x @ neighbour_kernel (the narrower rows) instead
    "graph_conv_narrowing": (lambda rngs, dt: GraphConv(F_IN, 2, rngs=rngs, param_dtype=dt), graph_conv_reference),
    "sage_mean_narrowing": (lambda rngs, dt: SAGEConv(F_IN, 2, rngs=rngs, param_dtype=dt), sage_reference),
    "sage_sum_narrowing": (lambda rngs, dt: SAGEConv(F_IN, 2, aggregator="sum", rngs=rngs, param_dtype=dt),
                           sage_reference),
    "gat_concat": (lambda rngs, dt: GATConv(F_IN, 4, heads=2, rngs=rngs, param_dtype=dt), gat_reference),
    "gat_mean": (lambda rngs, dt: GATConv(F_IN, 4, heads=3, concat=False, rngs=rngs, param_dtype=dt),
                 gat_reference),
    "gin": (lambda rngs, dt: GINConv(F_IN, 4, hidden_features=6, eps=0.3, rngs=rngs, param_dtype=dt),
            gin_reference),
    "gin_narrowing": (lambda rngs, dt: GINConv(F_IN, 4, hidden_features=2, eps=0.3, rngs=rngs, param_dtype=dt),
                      gin_reference),
    "message_passing": (lambda rngs, dt: EdgeMLP(F_IN, 4, rngs=rngs), message_passing_reference),
}


def make_layer(name, dtype=jnp.float32):
    layer = LAYERS[name][0](nnx.Rngs(0), dtype)
    # Non-zero biases, so that the reference checks where they are added.
    for path, value in nnx.iter_graph(layer):
        if isinstance(value, nnx.Param) and path[-1] == "bias":
            value[...] = jnp.linspace(-1.0, 1.0, value.shape[0], dtype=value[...].dtype)
    return layer


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_dense_reference_under_jit(name):
    layer, graph, x = make_layer(name), make_graph(), make_x()
    expected = LAYERS[name][1](layer, np.asarray(graph.to_dense(), np.float64), np.asarray(x, np.float64))
    jitted = jax.jit(lambda layer, graph, x: layer(graph, x))(layer, graph, x)
    np.testing.assert_allclose(jitted, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gcn", "graph_conv", "sage_mean", "gat_concat", "gin"])
def test_layer_on_unweighted_graph_matches_all_ones_weights(name):
    layer, x = make_layer(name), make_x()
    unweighted = make_graph(weighted=False)
    ones = unweighted.with_edge_weight(jnp.ones((unweighted.n_edges,)))
    apply = jax.jit(lambda graph: layer(graph, x))
    np.testing.assert_allclose(apply(unweighted), apply(ones), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_vmaps_over_edge_weights(name):
    layer, graph, x = make_layer(name), make_graph(), make_x()
    weights = jnp.stack([graph.edge_weight, 2.0 * graph.edge_weight, jnp.flip(graph.edge_weight)])
    def apply(w):
        return layer(graph.with_edge_weight(w), x)

    batched = jax.jit(jax.vmap(apply))(weights)
    one = jax.jit(apply)
    one_by_one = jnp.stack([one(w) for w in weights])
    assert batched.shape == (3,) + one_by_one.shape[1:]
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_edge_weight_gradient_matches_finite_differences(name, x64):
    layer, graph, x = make_layer(name, jnp.float64), make_graph(np.float64), make_x(np.float64)
    shape = jax.eval_shape(lambda: layer(graph, x)).shape
    probe = jnp.asarray(np.random.default_rng(1).normal(size=shape))

    @jax.jit
    def loss(w):
        return jnp.sum(layer(graph.with_edge_weight(w), x) * probe)

    w0 = graph.edge_weight
    grad = jax.jit(jax.grad(loss))(w0)
    assert grad.dtype == jnp.float64 and bool(jnp.all(jnp.isfinite(grad)))
    step = 1e-6
    for e in (0, 4):
        bump = jnp.zeros_like(w0).at[e].set(step)
        finite_difference = (loss(w0 + bump) - loss(w0 - bump)) / (2 * step)
        np.testing.assert_allclose(grad[e], finite_difference, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", [n for n in LAYERS if n != "message_passing"])
def test_wrong_feature_dimension_names_in_features(name):
    layer, graph = make_layer(name), make_graph()
    with pytest.raises(ValueError, match=r"wrong feature dimension; got shape \(5, 2\), expected \(5, 3\) "
                                         r"for in_features=3"):
        layer(graph, jnp.ones((N, 2)))


def test_layer_input_errors_name_the_problem():
    layer, graph = make_layer("gcn"), make_graph()
    with pytest.raises(ValueError, match=r"gcn_conv: x must have one row per node; got 4 rows, expected "
                                         r"n_nodes=5\. x has the wrong feature dimension"):
        layer(graph, jnp.ones((4, 2)))
    with pytest.raises(ValueError, match=r"x must have shape \(N, F_in\); got shape \(5,\)"):
        layer(graph, jnp.ones((N,)))
    with pytest.raises(TypeError, match="x must be a float array; got dtype int32"):
        layer(graph, jnp.ones((N, F_IN), jnp.int32))
    with pytest.raises(ValueError, match=r"needs one scalar weight per edge; got edge_weight of shape \(7, 2\)"):
        layer(graph.with_edge_weight(jnp.ones((7, 2))), jnp.ones((N, F_IN)))
    with pytest.raises(ValueError, match="SAGEConv: unknown aggregator 'min'; expected one of 'mean', 'max', 'sum'"):
        SAGEConv(3, 4, aggregator="min", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="GATConv: feature sizes must be positive ints; got heads=0"):
        GATConv(3, 4, heads=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"Summed: unknown aggregate 'avg'; expected one of 'sum', 'mean'"):
        Summed(aggregate="avg")


def test_gcn_cached_layer_uses_the_prepared_scaling_and_requires_it():
    graph, x = make_graph(), make_x()
    plain = make_layer("gcn")
    cached = GCNConv(F_IN, 4, cached=True, rngs=nnx.Rngs(0))
    cached.bias[...] = plain.bias[...]
    scaling = cached.prepare(graph)
    np.testing.assert_allclose(cached(graph, x, scaling=scaling), plain(graph, x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"cached=True needs the precomputed normalisation; got scaling=None"):
        cached(graph, x)
    with pytest.raises(ValueError, match=r"scaling must have shape \(N,\); got \(4,\), expected \(5,\)"):
        plain(graph, x, scaling=jnp.ones(4))


class Summed(MessagePassing):
    """The base class unchanged: weighted sum aggregation, ``A @ x``."""


def test_message_passing_base_class_is_weighted_sum_aggregation():
    graph, x = make_graph(), make_x()
    np.testing.assert_allclose(Summed()(graph, x), graph.to_dense() @ x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["gcn", "graph_conv", "gin"])
def test_layer_adjacency_gradient_factors_and_matches_dense_autodiff(name, x64):
    # These layers touch A only through spmm and the weighted in-degree, so adjacency_grad applies
    # and gives dL/dA for every pair, edges and non-edges.
    layer, graph, x = make_layer(name, jnp.float64), make_graph(np.float64), make_x(np.float64)
    reference = LAYERS[name][1]
    loss = lambda g, x: jnp.sum(jnp.tanh(layer(g, x)))
    mean = name == "graph_conv"  # a mean at the isolated node 4, not differentiable in its row
    if mean:
        with pytest.raises(ValueError, match="node 4 has no incoming weight"):
            jgrad.adjacency_grad(loss, graph, x)
    grad = jgrad.adjacency_grad(loss, graph, x, check=not mean)  # 0 in that row, as in the dense autodiff

    def dense_loss(a):
        return jnp.sum(jnp.tanh(reference(layer, a, x, xp=jnp)))

    expected = jax.jit(jax.grad(dense_loss))(graph.to_dense())  # compiled whole, not op by op
    np.testing.assert_allclose(grad.dense(), expected, rtol=1e-8, atol=1e-10)


def test_gat_attention_dropout_is_active_only_with_a_key(keys):
    graph, x = make_graph(), make_x()
    layer = GATConv(F_IN, 4, heads=2, dropout=0.5, rngs=nnx.Rngs(0))
    no_dropout = GATConv(F_IN, 4, heads=2, dropout=0.0, rngs=nnx.Rngs(0))
    apply = jax.jit(lambda layer, key: layer(graph, x, key=key))
    evaluate = apply(layer, None)
    np.testing.assert_allclose(evaluate, apply(no_dropout, None), rtol=1e-6)
    key = next(keys)
    first, again = apply(layer, key), apply(layer, key)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, evaluate)


def test_layer_split_merge_round_trip_and_grad_through_the_module():
    layer, graph, x = make_layer("gat_concat"), make_graph(), make_x()
    graphdef, state = nnx.split(layer)
    merged = nnx.merge(graphdef, state)
    apply = jax.jit(lambda layer: layer(graph, x))
    np.testing.assert_array_equal(apply(merged), apply(layer))
    grads = jax.jit(jax.grad(lambda m: jnp.sum(m(graph, x) ** 2)))(layer)
    assert isinstance(grads, GATConv) and grads.att_src[...].shape == (2, 4)
    paths = {path for path, _ in nnx.state(layer, nnx.Param).flat_state()}
    assert paths == {("kernel",), ("att_src",), ("att_dst",), ("bias",)}


@pytest.mark.parametrize("backend", ["native", "bucket"])
def test_gat_layers_give_the_plain_paths_values_gradients_and_dropout_on_every_backend(backend, x64, keys):
    """The self loops are terms of the attention (native: of its kernels' walks), not edges of a looped
    graph; values, gradients and dropout masks equal the plain path's, and the dense reference's."""
    graph, x = make_graph(np.float64), make_x(np.float64)
    fast, plain = jgrad.ops.with_backend(graph, backend), jgrad.ops.with_backend(graph, "xla")
    key = next(keys)
    for concat in (True, False):
        layer = GATConv(F_IN, 4, heads=3, concat=concat, dropout=0.5, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
        expected = gat_reference(layer, np.asarray(graph.to_dense()), np.asarray(x))
        run = jax.jit(lambda layer, graph, x, key: (layer(graph, x), layer(graph, x, key=key), jax.grad(
            lambda layer, w, x: jnp.sum(jnp.sin(layer(graph.with_edge_weight(w), x))), (0, 1, 2))(
                layer, graph.edge_weight, x)))
        got, reference = run(layer, fast, x, key), run(layer, plain, x, key)
        np.testing.assert_allclose(got[0], expected, rtol=1e-12, atol=1e-12)
        assert not np.allclose(got[1], got[0])  # the dropout is active
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_gat_layer_on_a_padded_graph_equals_it_unpadded_and_builds_no_looped_graph(x64):
    """Padding nodes (loud features) get no self loop: the real nodes' outputs and gradients are the
    unpadded layer's, the padding nodes' the bias, and the native step attends to the loops as terms."""
    graph, x = jgrad.ops.with_backend(make_graph(np.float64), "native"), make_x(np.float64)
    padded = jgrad.ops.with_backend(jgrad.pad(graph, n_nodes=N + 2, n_edges=len(SENDERS) + 3), "native")
    x_padded = jnp.concatenate([x, jnp.full((2, F_IN), 1e3)])
    layer = GATConv(F_IN, 4, heads=3, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    run = jax.jit(lambda layer, graph, x: (layer(graph, x), jax.grad(
        lambda layer, x: jnp.sum(jnp.sin(layer(graph, x)[:N])), (0, 1))(layer, x)))
    (out, grads), (out_padded, grads_padded) = run(layer, graph, x), run(layer, padded, x_padded)
    np.testing.assert_allclose(out_padded[:N], out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out_padded[N:], np.broadcast_to(p(layer.bias), (2, 12)), rtol=1e-12)
    np.testing.assert_allclose(grads_padded[1][:N], grads[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(grads_padded[1][N:], 0.0)
    for a, b in zip(jax.tree.leaves(grads_padded[0]), jax.tree.leaves(grads[0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    compiled = run.lower(layer, padded, x_padded).compile().as_text()
    assert f"s32[{padded.n_edges + padded.n_nodes}]" not in compiled, "a looped graph was built"


@pytest.mark.parametrize("name", ["gcn", "sage", "gin", "gat"])
def test_bfloat16_layers_sum_a_hub_in_float32(name):
    """A hub of 3000 in-edges: bfloat16 parameters and features give bfloat16 outputs within a few
    bfloat16 roundings of float32 (a bfloat16 running sum would stall at 256 terms), bfloat16 grads."""
    n = 3001
    graph = jgrad.Graph.from_edges(np.arange(1, n), np.zeros(n - 1, int), n_nodes=n)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(n, 4)), jnp.float32)
    layer = {"gcn": lambda: GCNConv(4, 3, rngs=nnx.Rngs(0)), "sage": lambda: SAGEConv(4, 3, rngs=nnx.Rngs(0)),
             "gin": lambda: GINConv(4, 3, rngs=nnx.Rngs(0)),
             "gat": lambda: GATConv(4, 3, heads=2, rngs=nnx.Rngs(0))}[name]()
    graphdef, state = nnx.split(layer)
    half = nnx.merge(graphdef, jax.tree.map(lambda a: a.astype(jnp.bfloat16), state))
    exact, low = layer(graph, x)[0], half(graph, x.astype(jnp.bfloat16))[0]
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), exact, rtol=0, atol=0.02 * float(jnp.abs(exact).max()))
    grads = jax.grad(lambda m: jnp.sum(m(graph, x.astype(jnp.bfloat16)).astype(jnp.float32)))(half)
    assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype(jnp.bfloat16)}
