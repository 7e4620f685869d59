"""The reference models: dense GCN reference, dropout only with a key, NNX split/merge, the weight-decay
parameter paths, and GIN graph classification over a padded batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jgrad
from jgrad.nn import GAT, GCN, GIN, GraphSAGE, readout


def ring(n, offset=0.0):
    senders = np.arange(n)
    receivers = (senders + 1) % n
    graph = jgrad.Graph.from_edges(np.concatenate([senders, receivers]), np.concatenate([receivers, senders]),
                                   n_nodes=n, edge_weight=np.linspace(0.5, 1.5, 2 * n) + offset)
    return graph


def features(n, f=4, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, f)).astype(np.float32))


MODELS = {
    "gcn": lambda: GCN(4, 8, 3, rngs=nnx.Rngs(0)),
    "gat": lambda: GAT(4, 5, 3, heads=2, out_heads=2, rngs=nnx.Rngs(0)),
    "sage": lambda: GraphSAGE(4, 8, 3, n_layers=3, aggregator="max", rngs=nnx.Rngs(0)),
    "gin": lambda: GIN(4, 8, 3, n_layers=2, dropout=0.5, rngs=nnx.Rngs(0)),
}


def test_gcn_model_matches_dense_reference():
    graph, x = ring(6), features(6)
    model = GCN(4, 8, 3, rngs=nnx.Rngs(0))
    a_hat = np.asarray(graph.to_dense(), np.float64) + np.eye(6)
    d = 1.0 / np.sqrt(a_hat.sum(1))
    s = d[:, None] * a_hat * d[None, :]
    w1, b1 = (np.asarray(model.layers[0].kernel[...]), np.asarray(model.layers[0].bias[...]))
    w2, b2 = (np.asarray(model.layers[1].kernel[...]), np.asarray(model.layers[1].bias[...]))
    expected = s @ np.maximum(s @ np.asarray(x) @ w1 + b1, 0.0) @ w2 + b2
    np.testing.assert_allclose(jax.jit(lambda m, g, x: m(g, x))(model, graph, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_model_dropout_is_active_only_with_a_key_and_split_merge_round_trips(name, keys):
    model, graph, x = MODELS[name](), ring(6), features(6)
    graphdef, state = nnx.split(model)

    @jax.jit
    def apply(state, key):
        return nnx.merge(graphdef, state)(graph, x, key=key)

    @jax.jit
    def evaluate(state):
        return nnx.merge(graphdef, state)(graph, x)

    deterministic = evaluate(state)
    assert deterministic.shape == (6, 3) and bool(jnp.all(jnp.isfinite(deterministic)))
    np.testing.assert_allclose(evaluate(state), deterministic)
    key = next(keys)
    train = apply(state, key)
    np.testing.assert_array_equal(apply(state, key), train)
    assert not np.allclose(train, deterministic)
    grads = jax.jit(jax.grad(lambda m: jnp.sum(m(graph, x, key=key) ** 2)))(model)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(nnx.state(grads, nnx.Param)))


def _first_layer(params):
    """The recipe of the jgrad.nn models docstring: a mask function, not a precomputed mask."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[0].key == "layers" and path[1].key == 0, params)


def test_weight_decay_on_the_first_layer_only_with_nnx_optimizer_and_with_optax_on_pure_dicts():
    model = GCN(4, 8, 3, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    assert {path for path, _ in params.flat_state()} == {
        ("layers", 0, "kernel"), ("layers", 0, "bias"), ("layers", 1, "kernel"), ("layers", 1, "bias")}
    before = {i: np.asarray(model.layers[i].kernel[...]) for i in (0, 1)}
    tx = optax.chain(optax.masked(optax.add_decayed_weights(0.5), _first_layer), optax.sgd(1.0))
    # nnx.Optimizer: with zero gradients the only update is the decay, -0.5 * w on layer 0
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    optimizer.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
    np.testing.assert_allclose(model.layers[0].kernel[...], 0.5 * before[0], rtol=1e-6)
    np.testing.assert_array_equal(model.layers[1].kernel[...], before[1])
    # optax on the pure-dict parameters of jgrad.train.split_model
    from jgrad.train import split_model

    _, pure = split_model(model)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, pure), tx.init(pure), pure)
    np.testing.assert_allclose(updates["layers"][0]["kernel"], -0.5 * pure["layers"][0]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(updates["layers"][1]["kernel"], 0.0)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_gin_graph_classification_over_a_padded_batch_ignores_padding(reduce):
    graphs = [ring(3), ring(5, offset=0.2)]
    xs = [features(3, seed=1), features(5, seed=2)]
    batch = jgrad.batch(graphs)
    padded = jgrad.pad(batch, n_nodes=12, n_edges=24)
    x_padded = jnp.concatenate([*xs, 100.0 * jnp.ones((4, 4))])  # loud padding features
    model = GIN(4, 8, 2, n_layers=2, dropout=0.5, readout=reduce, rngs=nnx.Rngs(0))
    apply = jax.jit(lambda m, g, x: m(g, x))
    logits = apply(model, padded, x_padded)
    assert logits.shape == (3, 2)  # two graphs and the padding graph
    np.testing.assert_allclose(logits[:2], apply(model, batch, jnp.concatenate(xs)), rtol=1e-5, atol=1e-5)
    for g, (graph, x) in enumerate(zip(graphs, xs)):
        np.testing.assert_allclose(logits[g], apply(model, graph, x)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[2], model.head.bias[...], rtol=1e-6)  # padding graph pools to zero


def test_readout_excludes_padding_nodes():
    batch = jgrad.pad(jgrad.batch([ring(2), ring(3)]), n_nodes=7, n_edges=12)
    h = jnp.arange(14.0).reshape(7, 2)
    pooled = jax.jit(lambda g, h: [readout(g, h, reduce) for reduce in ("sum", "mean", "max")])(batch, h)
    np.testing.assert_allclose(pooled[0], [[2.0, 4.0], [18.0, 21.0], [0.0, 0.0]])
    np.testing.assert_allclose(pooled[1], [[1.0, 2.0], [6.0, 7.0], [0.0, 0.0]])
    np.testing.assert_allclose(pooled[2], [[2.0, 3.0], [8.0, 9.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="readout: unknown reduce 'min'; expected one of 'sum', 'mean', 'max'"):
        readout(batch, h, "min")


def test_model_constructor_and_input_errors():
    with pytest.raises(ValueError, match=r"GCN: n_layers must be an int >= 1; got 0\. "
                                         r"dropout must be in \[0, 1\); got 1\.0"):
        GCN(4, 8, 3, n_layers=0, dropout=1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="GIN: unknown readout 'avg'"):
        GIN(4, 8, 3, readout="avg", rngs=nnx.Rngs(0))
    model = GCN(4, 8, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"expected \(6, 4\) for in_features=4"):
        model(ring(6), jnp.ones((6, 5)))
