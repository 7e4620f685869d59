"""sparse_features: bag-of-words features stored as BCOO, built on the host."""

from __future__ import annotations

import dataclasses

import numpy as np
from jax.experimental import sparse

import jgrad
from jgrad.train._experiment import sparse_features


def test_host_built_features_equal_bcoo_fromdense():
    data = jgrad.data.load("karate")
    rng = np.random.default_rng(0)
    features = (rng.random((data.graph.n_nodes, 50)) < 0.05) * rng.random((data.graph.n_nodes, 50))
    dataset = dataclasses.replace(data, features=features.astype(np.float32))
    stored = sparse_features(dataset, "gcn").features
    expected = sparse.BCOO.fromdense(dataset.features)
    assert isinstance(stored, sparse.BCOO) and stored.shape == expected.shape
    np.testing.assert_array_equal(stored.indices, expected.indices)
    np.testing.assert_array_equal(stored.data, expected.data)
    assert stored.indices.dtype == expected.indices.dtype and stored.data.dtype == expected.data.dtype
    assert stored.indices_sorted and stored.unique_indices
    np.testing.assert_array_equal(stored.todense(), dataset.features)
    assert sparse_features(dataset, "sage").features is dataset.features  # not a product model: unchanged
