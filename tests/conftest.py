"""Shared fixtures: strict JAX numerics, fresh PRNG keys, float64, and the eager/jit/vmap variants."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def keys():
    """An iterator of fresh PRNG keys, seeded per test."""

    def _gen():
        key = jax.random.key(0)
        while True:
            key, sub = jax.random.split(key)
            yield sub

    return _gen()


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(params=["eager", "jit", "vmap"])
def variant(request):
    """Runs ``fn(*args)`` eagerly, under ``jax.jit``, or under ``jax.vmap`` over a batch of one.

    Under ``vmap`` every floating-point array leaf of ``args`` (Graph edge weights included) gets a leading
    batch axis of size 1; integer leaves (indices) stay unbatched. The result is unbatched again, so the
    three variants must return the same numbers.
    """
    mode = request.param

    def run(fn, *args):
        if mode == "eager":
            return fn(*args)
        if mode == "jit":
            return jax.jit(fn)(*args)
        in_axes = jax.tree.map(lambda leaf: 0 if _is_float_array(leaf) else None, args)
        batched = jax.tree.map(lambda leaf: leaf[None] if _is_float_array(leaf) else leaf, args)
        out = jax.vmap(fn, in_axes=in_axes)(*batched)
        return jax.tree.map(lambda leaf: leaf[0], out)

    run.mode = mode
    return run


def _is_float_array(leaf) -> bool:
    return hasattr(leaf, "dtype") and np.issubdtype(leaf.dtype, np.floating)


@pytest.fixture(scope="session")
def planetoid_dir() -> Path:
    """The Planetoid directory from ``JGRAD_DATA`` or ``../shared/data/planetoid`` beside the checkout."""
    env = os.environ.get("JGRAD_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "planetoid"
    if not (root / "ind.cora.x").exists():
        pytest.fail(f"Planetoid files not found in {root}; set JGRAD_DATA to the folder holding ind.cora.*")
    return root
