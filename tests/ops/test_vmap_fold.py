"""A plan's sum and edge dot under ``vmap``, with the plain path's values and gradients.

`jgrad.ops._kernels.layout_sum` folds a batch of features into more feature columns (`_sum_batched`):
one sum for the whole batch; batches of weights and the edge dots run once per batch entry. Every
placement of the batch axes, with and without heads, is checked against plain autodiff in float64 (the
value, the gradient under vmap and the gradient of the vmapped op), on the native and bucket backends.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import Graph
from jgrad._src import _plan
from jgrad.ops import _kernels, spmm, with_backend

pytestmark = pytest.mark.usefixtures("x64")

N, E, B, H, F = 7, 23, 3, 2, 4
RNG = np.random.default_rng(0)
GRAPH = Graph.from_edges(RNG.integers(0, N, E), RNG.integers(0, N, E), N)
U2, W1 = RNG.normal(size=(B, N, F)), RNG.normal(size=(B, E))
U3, W2 = RNG.normal(size=(B, N, H, F)), RNG.normal(size=(B, E, H))

# name -> (vmap in_axes of (u, w), u, w): u (N, F) with w (E,) or None, or per head u (N, H, F), w (E, H)
CASES = {
    "features": ((0, None), U2, W1[0]),
    "features, no weights": ((0, None), U2, None),
    "features, batch axis 2": ((2, None), np.moveaxis(U2, 0, 2), W1[0]),
    "weights": ((None, 0), U2[0], W1),
    "both, weights' batch axis 1": ((0, 1), U2, W1.T),
    "heads, features": ((0, None), U3, W2[0]),
    "heads, features' batch axis 3": ((3, None), np.moveaxis(U3, 0, 3), W2[0]),
    "heads, weights": ((None, 0), U3[0], W2),
    "heads, both": ((1, 2), np.moveaxis(U3, 0, 1), np.moveaxis(W2, 0, 2)),
}


def _plain(graph, u, w):
    weight = jnp.ones(E) if w is None else w
    return jax.ops.segment_sum(u[graph.senders] * weight.reshape(weight.shape + (1,) * (u.ndim - weight.ndim)),
                               graph.receivers, N)


def _plain_dot(graph, u, v):
    return jnp.sum(u[graph.senders] * v[graph.receivers], axis=-1)


# name -> (vmap in_axes of (u, v), u, v), both (N, F) or (N, H, F)
DOT_CASES = {
    "u": ((0, None), U2, U2[1]),
    "v, batch axis 2": ((None, 2), U2[0], np.moveaxis(U2, 0, 2)),
    "both": ((0, 0), U2, 2 * U2),
    "heads, u": ((0, None), U3, U3[1]),
    "heads, both": ((0, 1), U3, np.moveaxis(U3, 0, 1)),
}


def _three(fn, axes, u, w):
    """The vmapped value, the vmapped gradient and the gradient of the vmapped sum."""
    argnums = (0,) if w is None else (0, 1)
    loss = lambda u, w: jnp.sum(jnp.sin(fn(u, w)))  # noqa: E731
    return (jax.vmap(fn, axes)(u, w), jax.vmap(jax.grad(loss, argnums), axes)(u, w),
            jax.grad(lambda u, w: jnp.sum(jnp.sin(jax.vmap(fn, axes)(u, w))), argnums)(u, w))


@pytest.mark.parametrize("backend", ["native", "bucket"])
def test_a_vmapped_sum_equals_the_plain_path(backend):
    graph = with_backend(GRAPH, backend)
    plan = _plan.resolve(graph)
    ours = lambda u, w: _kernels.layout_sum(plan, u, w)  # noqa: E731
    arrays = {name: (jnp.asarray(u), None if w is None else jnp.asarray(w)) for name, (_, u, w) in CASES.items()}
    plain = lambda u, w: _plain(graph, u, w)  # noqa: E731
    run = jax.jit(lambda arrays: {name: (_three(ours, CASES[name][0], u, w), _three(plain, CASES[name][0], u, w))
                                  for name, (u, w) in arrays.items()})
    for name, (got, want) in run(arrays).items():
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=name)


def test_vmap_over_features_is_one_unbatched_sum_in_the_program():
    graph = with_backend(GRAPH, "native")
    w = jnp.asarray(W1[0])
    jaxpr = jax.make_jaxpr(jax.vmap(lambda u: spmm(graph, u, w)))(jnp.asarray(U2))
    sums = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "jgrad_layout_sum"]
    assert len(sums) == 1 and sums[0].params["levels"] == (), sums
    assert sums[0].outvars[0].aval.shape == (N, B * F)


@pytest.mark.parametrize("backend", ["native", "bucket"])
def test_a_vmapped_edge_dot_equals_the_plain_path(backend):
    graph = with_backend(GRAPH, backend)
    plan = _plan.resolve(graph)
    ours = lambda u, v: _kernels.layout_edge_dot(plan, u, v)  # noqa: E731
    plain = lambda u, v: _plain_dot(graph, u, v)  # noqa: E731
    arrays = {name: (jnp.asarray(u), jnp.asarray(v)) for name, (_, u, v) in DOT_CASES.items()}
    run = jax.jit(lambda arrays: {name: tuple(_three(fn, DOT_CASES[name][0], u, v) for fn in (ours, plain))
                                  for name, (u, v) in arrays.items()})
    for name, (got, want) in run(arrays).items():
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=name)
