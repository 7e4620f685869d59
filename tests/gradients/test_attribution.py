"""Batched studies: per-target saliency, integrated gradients, and edge gradients of many models at once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jgrad
from jgrad.gradients import edge_grad, integrated_gradients, propagate, saliency


def _setup():
    rng = np.random.default_rng(0)
    senders, receivers = rng.integers(0, 8, 20), rng.integers(0, 8, 20)
    graph = jgrad.Graph.from_edges(senders, receivers, 8, edge_weight=(rng.random(20) + 0.5).astype(np.float32))
    x = jnp.asarray(rng.standard_normal((8, 3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 2)), jnp.float32)
    return graph, x, w


def _node_outputs(graph, x, w):
    """One scalar per node: the first logit of a 2-step GCN."""
    return propagate(graph, jnp.tanh(propagate(graph, x)) @ w)[:, 0]


def test_saliency_rows_are_the_jacobian_rows_of_the_targets():
    graph, x, w = _setup()
    targets = jnp.array([5, 0, 5, 7])
    result = saliency(_node_outputs, graph, x, w, targets=targets)
    # The reference Jacobian compiled as one program (eager, jacrev ran its vmapped pullback op by op).
    jacobian = jax.jit(jax.jacrev(lambda weight: _node_outputs(graph.with_edge_weight(weight), x, w)))(graph.edge_weight)
    assert result.shape == (4, graph.n_edges)
    np.testing.assert_allclose(result, jacobian[targets], rtol=1e-5, atol=1e-6)


def test_chunked_saliency_equals_unchunked():
    graph, x, w = _setup()
    targets = jnp.arange(7)
    full = saliency(_node_outputs, graph, x, w, targets=targets)
    chunked = saliency(_node_outputs, graph, x, w, targets=targets, chunk_size=3)
    np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-7)


def test_saliency_rejects_a_scalar_output_and_bad_targets():
    graph, x, w = _setup()
    with pytest.raises(ValueError, match="one scalar per node"):
        saliency(lambda g, x, w: _node_outputs(g, x, w).sum(), graph, x, w, targets=jnp.array([0]))
    with pytest.raises(ValueError, match="targets must be a 1-D integer array"):
        saliency(_node_outputs, graph, x, w, targets=jnp.array([[0]]))


def test_integrated_gradients_are_complete():
    graph, x, w = _setup()
    loss = lambda g, x, w: jnp.sum(jnp.tanh(_node_outputs(g, x, w)) ** 2)
    attributions = integrated_gradients(loss, graph, x, w, steps=128)  # midpoint error O(1/steps^2)
    baseline_value = loss(graph.with_edge_weight(jnp.zeros_like(graph.edge_weight)), x, w)
    difference = loss(graph, x, w) - baseline_value
    assert attributions.shape == (graph.n_edges,)
    np.testing.assert_allclose(jnp.sum(attributions), difference, rtol=2e-3, atol=1e-4)


def test_integrated_gradients_with_a_baseline_and_chunks():
    graph, x, w = _setup()
    loss = lambda g, x, w: jnp.sum(_node_outputs(g, x, w) ** 2)
    baseline = 0.5 * graph.edge_weight
    full = integrated_gradients(loss, graph, x, w, baseline=baseline, steps=32)
    chunked = integrated_gradients(loss, graph, x, w, baseline=baseline, steps=32, chunk_size=8)
    np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-7)
    difference = loss(graph, x, w) - loss(graph.with_edge_weight(baseline), x, w)
    np.testing.assert_allclose(jnp.sum(full), difference, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="baseline must have the weights' shape"):
        integrated_gradients(loss, graph, x, w, baseline=jnp.zeros(3))


def _init(key, f_in, hidden, f_out):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (f_in, hidden)) / jnp.sqrt(f_in),
        "b1": jnp.zeros((hidden,)),
        "w2": jax.random.normal(k2, (hidden, f_out)) / jnp.sqrt(hidden),
        "b2": jnp.zeros((f_out,)),
    }


def _gcn_loss(graph, params, x, labels):
    h = jax.nn.relu(propagate(graph, x @ params["w1"]) + params["b1"][None, :])
    logits = propagate(graph, h @ params["w2"]) + params["b2"][None, :]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def test_many_seeds_train_in_one_jit_and_give_edge_gradients_together():
    rng = np.random.default_rng(0)
    graph = jgrad.Graph.from_edges(rng.integers(0, 34, 150), rng.integers(0, 34, 150), 34)
    x = jnp.asarray(rng.standard_normal((graph.n_nodes, 4)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 2, graph.n_nodes), jnp.int32)
    optimizer = optax.adam(0.05)
    seeds = jnp.arange(3)

    @jax.jit
    def train(seeds):
        def one(seed):
            params = _init(jax.random.key(seed), 4, 8, 2)
            state = optimizer.init(params)

            def step(carry, _):
                params, state = carry
                loss, grads = jax.value_and_grad(_gcn_loss, argnums=1)(graph, params, x, labels)
                updates, state = optimizer.update(grads, state, params)
                return (optax.apply_updates(params, updates), state), loss

            (params, _), losses = jax.lax.scan(step, (params, state), None, length=5)
            return params, losses

        params, losses = jax.vmap(one)(seeds)
        edge_grads = jax.vmap(lambda p: edge_grad(_gcn_loss, graph, p, x, labels))(params)
        return params, losses, edge_grads

    params, losses, edge_grads = train(seeds)
    assert losses.shape == (3, 5) and edge_grads.shape == (3, graph.n_edges)
    assert np.all(np.asarray(losses[:, -1]) < np.asarray(losses[:, 0]))  # every seed learns
    for s in range(3):
        one = jax.tree.map(lambda leaf: leaf[s], params)
        np.testing.assert_allclose(edge_grads[s], edge_grad(_gcn_loss, graph, one, x, labels), rtol=1e-4, atol=1e-6)
    assert not np.allclose(edge_grads[0], edge_grads[1])  # the seeds are different models


def test_saliency_of_an_nnx_jit_wrapped_model_and_of_one_that_reads_values():
    """fn is traced with the module's arrays as inputs of the same trace (an nnx.jit-wrapped fn runs);
    a fn with Python control flow on array values still runs as it is."""
    from flax import nnx

    data = jgrad.data.karate_club()
    model = jgrad.nn.GCN(data.features.shape[1], 4, 2, rngs=nnx.Rngs(0))
    plain = lambda g, m, x: m(g, x)[:, 0]
    targets = jnp.arange(3)
    expected = saliency(plain, data.graph, model, data.features, targets=targets)
    np.testing.assert_allclose(saliency(nnx.jit(plain), data.graph, model, data.features, targets=targets),
                               expected, rtol=1e-5, atol=1e-7)
    reads = lambda g, m, x: (2.0 if float(jnp.sum(x)) > -1e9 else 1.0) * plain(g, m, x)
    np.testing.assert_allclose(saliency(reads, data.graph, model, data.features, targets=targets), 2 * expected,
                               rtol=1e-5, atol=1e-7)
