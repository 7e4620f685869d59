"""NodeDataset: from_arrays conversion and checks, pytree behaviour, and the shared edge clean-up."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jgrad.data import NodeDataset
from jgrad._src._search import sorted_unique
from jgrad.data._dataset import symmetric_edges
from jgrad.graph import Graph


def _graph(n_nodes: int = 4) -> Graph:
    return Graph.from_edges(np.arange(n_nodes - 1), np.arange(1, n_nodes), n_nodes)


def _masks(n_nodes: int = 4):
    train = np.array([True, False, False, False])[:n_nodes]
    return train, ~train, np.zeros(n_nodes, bool)


def test_from_arrays_converts_dtypes_and_infers_n_classes():
    data = NodeDataset.from_arrays(_graph(), np.ones((4, 3)), np.array([0, 2, 1, 2], np.int64), *_masks(), name="toy")
    assert data.features.dtype == np.float32
    assert data.labels.dtype == np.int32
    assert data.n_classes == 3
    assert (data.n_nodes, data.n_features, data.name) == (4, 3, "toy")


def test_from_arrays_reports_every_shape_problem():
    with pytest.raises(ValueError) as error:
        NodeDataset.from_arrays(
            _graph(), np.ones((5, 3)), np.zeros(3, np.int32), np.zeros(4, bool), np.zeros(2, bool), np.zeros(4, bool)
        )
    message = str(error.value)
    assert "features has the wrong shape; got (5, 3), expected (N, F) with N=4" in message
    assert "labels has the wrong shape; got (3,), expected (4,)" in message
    assert "val_mask has the wrong shape; got (2,), expected (4,)" in message


def test_from_arrays_rejects_labels_outside_n_classes():
    with pytest.raises(ValueError, match=r"labels\[3\] is out of range; got 5, expected 0 <= label < n_classes=2"):
        NodeDataset.from_arrays(_graph(), np.ones((4, 1)), np.array([0, 1, 0, 5]), *_masks(), n_classes=2)


def test_from_arrays_rejects_non_boolean_masks_and_float_labels():
    with pytest.raises(TypeError) as error:
        NodeDataset.from_arrays(_graph(), np.ones((4, 1)), np.zeros(4), np.zeros(4, np.int32), *_masks()[1:])
    assert "labels must be integers; got dtype float64" in str(error.value)
    assert "train_mask must be boolean; got dtype int32" in str(error.value)


def test_node_dataset_is_a_pytree_with_static_n_classes_and_name():
    data = NodeDataset.from_arrays(_graph(), np.ones((4, 2)), np.array([0, 1, 0, 1]), *_masks(), name="toy")
    leaves, treedef = jax.tree.flatten(data)
    assert not any(isinstance(leaf, (int, str)) for leaf in leaves)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert (rebuilt.n_classes, rebuilt.name) == (2, "toy")
    on_device = jax.device_put(data)
    assert isinstance(on_device.features, jax.Array)
    total = jax.jit(lambda d: d.features.sum() * d.n_classes)(data)
    assert float(total) == 16.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=40))
def test_symmetric_edges_matches_a_set_reference(pairs):
    senders = np.array([u for u, _ in pairs], dtype=np.int64)
    receivers = np.array([v for _, v in pairs], dtype=np.int64)
    out_senders, out_receivers = symmetric_edges(senders, receivers, 8)
    assert out_senders.dtype == np.int32 and out_receivers.dtype == np.int32
    got = list(zip(out_senders.tolist(), out_receivers.tolist()))
    expected = {(u, v) for u, v in pairs if u != v} | {(v, u) for u, v in pairs if u != v}
    assert got == sorted(expected, key=lambda edge: (edge[1], edge[0]))


def test_sorted_unique_matches_numpy_unique():
    values = np.random.default_rng(0).integers(0, 50, 200)
    np.testing.assert_array_equal(sorted_unique(values), np.unique(values))
    assert sorted_unique(np.zeros(0, np.int64)).shape == (0,)
