"""Dropout: keep rate, scaling, independence of the masks within a call, across keys and across calls,
determinism, transforms, and dropout of sparse (BCOO) features.

The statistical checks use 100,000 entries and a 5-sigma band, so a correct mask fails them with
probability below 1e-6, while a mask that is off by 1% in its keep rate, or whose entries or keys are
correlated, fails them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import sparse

import jgrad
from jgrad.nn import functional as F

SHAPE = (200, 500)
N_ENTRIES = SHAPE[0] * SHAPE[1]
RNGS = ["hash", "key"]


def keep_mask(rate, key, rng, shape=SHAPE):
    return np.asarray(F.dropout(jnp.ones(shape), rate, key, rng=rng)) != 0


def assert_fraction(observed, p, n, what):
    band = 5 * np.sqrt(p * (1 - p) / n)
    assert abs(observed - p) < band, f"{what}: {observed:.5f}, expected {p:.5f} ± {band:.5f}"


def assert_uncorrelated(a, b, what):
    r = np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1]
    assert abs(r) < 5 / np.sqrt(a.size), f"{what}: correlation {r:.4f}"


@pytest.mark.parametrize("rng", RNGS)
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.6, 0.9])
def test_dropout_keeps_each_entry_with_probability_one_minus_rate(rng, rate):
    assert_fraction(keep_mask(rate, jax.random.key(7), rng).mean(), 1 - rate, N_ENTRIES, f"keep rate {rng}")


@pytest.mark.parametrize("rng", RNGS)
def test_dropout_scales_kept_entries_by_one_over_keep_rate_and_zeroes_the_rest(rng):
    x = jnp.asarray(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32))
    out = np.asarray(F.dropout(x, 0.6, jax.random.key(1), rng=rng))
    kept = out != 0
    np.testing.assert_allclose(out[kept], np.asarray(x)[kept] / 0.4, rtol=1e-6)
    assert_fraction(kept.mean(), 0.4, N_ENTRIES, "keep rate")
    np.testing.assert_array_equal(F.dropout(x, 0.6, None, rng=rng), x)
    np.testing.assert_array_equal(F.dropout(x, 0.0, jax.random.key(1), rng=rng), x)


@pytest.mark.parametrize("rng", RNGS)
def test_dropout_mask_entries_are_independent_of_their_neighbours(rng):
    mask = keep_mask(0.5, jax.random.key(2), rng)
    assert_uncorrelated(mask[:, 1:], mask[:, :-1], "left/right neighbours")
    assert_uncorrelated(mask[1:], mask[:-1], "upper/lower neighbours")
    flat = mask.ravel()
    assert_uncorrelated(flat[2:], flat[:-2], "entries two apart")
    # both halves of the 32-bit draw space are used: a mask from 16-bit draws would be as good, one
    # that repeats with a short period would not
    assert_uncorrelated(flat[N_ENTRIES // 2:], flat[:N_ENTRIES // 2], "first and second half")


@pytest.mark.parametrize("rng", RNGS)
def test_dropout_masks_of_different_keys_and_successive_calls_are_independent(rng):
    # keys as jgrad.train makes them: adjacent seeds, then split per step and per layer
    seed_keys = [jax.random.key(0), jax.random.key(1)]
    step_key = jax.random.split(seed_keys[0])[1]
    layer_keys = list(jax.random.split(step_key, 2))
    masks = [keep_mask(0.5, k, rng) for k in seed_keys + layer_keys]
    for i in range(len(masks)):
        for j in range(i):
            assert_uncorrelated(masks[i], masks[j], f"masks {i} and {j}")
            assert_fraction((masks[i] & masks[j]).mean(), 0.25, N_ENTRIES, f"both kept in {i} and {j}")


@pytest.mark.parametrize("rng", RNGS)
def test_dropout_is_a_pure_function_of_the_key_under_jit_and_vmap(rng):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(30, 40)).astype(np.float32))
    keys = jax.random.split(jax.random.key(3), 4)
    eager = np.stack([F.dropout(x, 0.5, k, rng=rng) for k in keys])
    jitted = jax.jit(lambda k: F.dropout(x, 0.5, k, rng=rng))
    np.testing.assert_array_equal(np.stack([jitted(k) for k in keys]), eager)
    np.testing.assert_array_equal(jax.vmap(lambda k: F.dropout(x, 0.5, k, rng=rng))(keys), eager)
    assert len({m.tobytes() for m in eager != 0}) == 4  # four different masks
    # a raw uint32 key gives the same mask as the typed key with the same data
    raw = jax.random.key_data(keys[0])
    np.testing.assert_array_equal(F.dropout(x, 0.5, raw, rng=rng), eager[0])


@pytest.mark.parametrize("rng", RNGS)
def test_dropout_gradient_and_tangent_are_the_mask_over_the_keep_rate(rng):
    x = jnp.asarray(np.random.default_rng(2).normal(size=(20, 30)).astype(np.float32))
    weight = jnp.asarray(np.random.default_rng(3).normal(size=(20, 30)).astype(np.float32))
    key = jax.random.key(4)
    keep = keep_mask(0.3, key, rng, shape=x.shape)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(weight * F.dropout(x, 0.3, key, rng=rng))))(x)
    np.testing.assert_allclose(grad, keep * np.asarray(weight) / 0.7, rtol=1e-6)
    _, tangent = jax.jvp(lambda x: F.dropout(x, 0.3, key, rng=rng), (x,), (weight,))
    np.testing.assert_allclose(tangent, keep * np.asarray(weight) / 0.7, rtol=1e-6)


def test_dropout_of_sparse_features_drops_only_stored_entries():
    rng = np.random.default_rng(5)
    dense = np.where(rng.random(SHAPE) < 0.2, rng.normal(size=SHAPE), 0.0).astype(np.float32)
    x = sparse.BCOO.fromdense(jnp.asarray(dense))
    out = F.dropout(x, 0.5, jax.random.key(6))
    assert isinstance(out, sparse.BCOO) and out.shape == x.shape
    np.testing.assert_array_equal(out.indices, x.indices)
    kept = np.asarray(out.data) != 0
    assert_fraction(kept.mean(), 0.5, x.nse, "keep rate of stored entries")
    np.testing.assert_allclose(np.asarray(out.data)[kept], np.asarray(x.data)[kept] * 2.0, rtol=1e-6)
    result = np.asarray(out.todense())
    assert np.all(result[dense == 0] == 0)
    # batched keys give one mask per key over the shared indices
    data = jax.jit(jax.vmap(lambda k: F.dropout(x, 0.5, k).data))(jax.random.split(jax.random.key(7), 2))
    assert_uncorrelated(np.asarray(data[0]) != 0, np.asarray(data[1]) != 0, "sparse masks of two keys")
    assert F.dropout(x, 0.5, None) is x


def test_dropout_errors_name_the_argument():
    x = jnp.ones(4)
    with pytest.raises(ValueError, match=r"dropout: rate must be in \[0, 1\); got 1\.0"):
        F.dropout(x, 1.0, jax.random.key(0))
    with pytest.raises(ValueError, match="dropout: unknown rng 'philox'; expected one of 'hash', 'key'"):
        F.dropout(x, 0.5, jax.random.key(0), rng="philox")
    with pytest.raises(ValueError, match=r"dropout: rng='hash' numbers at most 2\*\*32 - 1 entries; got shape "
                                         r"\(65536, 65536\)"):
        jax.eval_shape(lambda: F.dropout(jnp.zeros((65536, 65536), jnp.float32), 0.5, jax.random.key(0)))


def test_models_take_sparse_features_and_give_the_dense_results():
    from flax import nnx

    rng = np.random.default_rng(8)
    dense = jnp.asarray(np.where(rng.random((6, 5)) < 0.4, rng.random((6, 5)), 0.0).astype(np.float32))
    x = sparse.BCOO.fromdense(dense)
    graph = jgrad.Graph.from_edges([0, 1, 2, 3, 4, 5, 1], [1, 2, 3, 4, 5, 0, 4], n_nodes=6)
    gcn = jgrad.nn.GCN(5, 4, 3, rngs=nnx.Rngs(0))
    forward = jax.jit(lambda m, x: m(graph, x))  # compiled: eager dispatch of the BCOO ops was most of the cost
    np.testing.assert_allclose(forward(gcn, x), forward(gcn, dense), rtol=1e-5, atol=1e-6)
    grad = jax.jit(jax.grad(lambda m, x: jnp.sum(m(graph, x) ** 2)))
    for g_sparse, g_dense in zip(jax.tree.leaves(nnx.state(grad(gcn, x), nnx.Param)),
                                 jax.tree.leaves(nnx.state(grad(gcn, dense), nnx.Param)), strict=True):
        np.testing.assert_allclose(g_sparse, g_dense, rtol=1e-4, atol=1e-6)
    train = jax.jit(jax.vmap(lambda k: gcn(graph, x, key=k)))(jax.random.split(jax.random.key(9), 3))
    assert train.shape == (3, 6, 3) and bool(jnp.all(jnp.isfinite(train)))
    gat = jgrad.nn.GAT(5, 4, 3, heads=2, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(forward(gat, x), forward(gat, dense), rtol=1e-5, atol=1e-6)
    # sage_conv projects a BCOO first when its kernel narrows the features (mean, sum); max aggregates
    # the densified features before projecting
    params = {"neighbour_kernel": jnp.ones((5, 2)), "root_kernel": jnp.ones((5, 2))}
    for aggregator in ("mean", "max"):
        sage = jax.jit(lambda x: F.sage_conv(params, graph, x, aggregator=aggregator))
        np.testing.assert_allclose(sage(x), sage(dense), rtol=1e-6)


def test_sparse_features_of_the_wrong_shape_name_the_problem():
    x = sparse.BCOO.fromdense(jnp.ones((4, 3)))
    graph = jgrad.Graph.from_edges([0], [1], n_nodes=5)
    with pytest.raises(ValueError, match=r"gcn_conv: x must have one row per node; got 4 rows, expected n_nodes=5"):
        F.gcn_conv({"kernel": jnp.ones((3, 2))}, graph, x)
    batched = sparse.BCOO.fromdense(jnp.ones((5, 3)), n_batch=1)
    with pytest.raises(ValueError, match=r"gcn_conv: x must have shape \(N, F_in\); got a BCOO with n_batch=1"):
        F.gcn_conv({"kernel": jnp.ones((3, 2))}, graph, batched)
