"""csbm and power_law_graph: sizes, symmetry, determinism by seed, and the properties each model promises."""

import numpy as np
import pytest

from jgrad.data import NodeDataset, csbm, power_law_graph
from jgrad.data._synthetic import _power_law_edges


def _edges(graph) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(graph.senders), np.asarray(graph.receivers)


def _assert_simple_symmetric(senders: np.ndarray, receivers: np.ndarray, n_nodes: int) -> None:
    assert senders.dtype == np.int32 and receivers.dtype == np.int32
    assert (senders != receivers).all()
    key = receivers.astype(np.int64) * n_nodes + senders
    assert (np.diff(key) > 0).all()  # sorted by receiver, then sender, and no duplicates
    reverse = np.sort(senders.astype(np.int64) * n_nodes + receivers)
    np.testing.assert_array_equal(reverse, key)


@pytest.fixture(scope="module")
def small_csbm() -> NodeDataset:
    return csbm(3000, 3, avg_degree=10.0, homophily=0.9, feature_dim=8, signal=4.0, seed=0)


def test_csbm_shapes_dtypes_and_balanced_classes(small_csbm):
    data = small_csbm
    assert data.graph.n_nodes == 3000 and data.n_classes == 3 and data.name == "csbm"
    assert data.features.shape == (3000, 8) and data.features.dtype == np.float32
    assert data.labels.shape == (3000,) and data.labels.dtype == np.int32
    assert np.bincount(data.labels).tolist() == [1000, 1000, 1000]
    assert data.graph.edge_weight is None


def test_csbm_split_is_a_60_20_20_partition(small_csbm):
    masks = np.stack([small_csbm.train_mask, small_csbm.val_mask, small_csbm.test_mask])
    assert masks.sum(axis=1).tolist() == [1800, 600, 600]
    assert (masks.sum(axis=0) == 1).all()


def test_csbm_graph_is_symmetric_and_simple(small_csbm):
    _assert_simple_symmetric(*_edges(small_csbm.graph), 3000)


def test_csbm_degree_and_homophily_match_the_request(small_csbm):
    senders, receivers = _edges(small_csbm.graph)
    assert small_csbm.graph.n_edges / 3000 == pytest.approx(10.0, rel=0.05)
    same_class = small_csbm.labels[senders] == small_csbm.labels[receivers]
    assert same_class.mean() == pytest.approx(0.9, abs=0.02)


def test_csbm_features_carry_the_class_signal(small_csbm):
    data = small_csbm
    means = np.stack([data.features[data.labels == c].mean(axis=0) for c in range(3)])
    nearest = np.argmin(((data.features[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (nearest == data.labels).mean() > 0.9
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 4.0, rtol=0.1)


def test_csbm_is_deterministic_by_seed():
    first, again, other = (csbm(500, 2, avg_degree=6.0, seed=seed) for seed in (7, 7, 8))
    for name in ("features", "labels", "train_mask", "val_mask", "test_mask"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    np.testing.assert_array_equal(np.asarray(first.graph.senders), np.asarray(again.graph.senders))
    np.testing.assert_array_equal(np.asarray(first.graph.receivers), np.asarray(again.graph.receivers))
    assert not np.array_equal(first.features, other.features)


def test_csbm_scales_to_200k_nodes_and_2m_edges():
    data = csbm(200_000, 4, avg_degree=10.0, seed=1)
    assert data.graph.n_nodes == 200_000
    assert 1_950_000 < data.graph.n_edges <= 2_050_000


def test_csbm_reports_every_bad_argument():
    with pytest.raises(ValueError) as error:
        csbm(10, 0, homophily=1.5, avg_degree=-1.0, seed=0)
    message = str(error.value)
    assert "csbm: n_classes is too small; got 0, expected >= 1." in message
    assert "csbm: homophily is out of range; got 1.5, expected 0.0 <= homophily <= 1.0." in message
    assert "csbm: avg_degree is out of range; got -1.0" in message


def test_csbm_rejects_a_degree_that_needs_probabilities_above_one():
    with pytest.raises(ValueError, match=r"csbm: avg_degree=50.0 with homophily=0.8 needs edge probabilities"):
        csbm(20, 2, avg_degree=50.0, seed=0)


def test_csbm_requires_a_keyword_seed():
    with pytest.raises(TypeError):
        csbm(100, 2)  # type: ignore[call-arg]


def test_power_law_graph_has_exactly_the_requested_edges():
    graph = power_law_graph(20_000, avg_degree=16.0, exponent=2.5, seed=0)
    assert graph.n_nodes == 20_000 and graph.n_edges == 320_000
    assert graph.edge_weight is None
    _assert_simple_symmetric(*_edges(graph), 20_000)


@pytest.mark.parametrize("exponent", [2.1, 2.5, 3.0])
def test_power_law_graph_has_hubs(exponent):
    senders, receivers = _power_law_edges(20_000, 16.0, exponent, seed=3)
    degree = np.bincount(receivers, minlength=20_000)
    assert degree.mean() == pytest.approx(16.0)
    assert degree.max() > 20 * degree.mean()
    assert np.median(degree) < degree.mean()


def test_power_law_hubs_get_heavier_as_the_exponent_approaches_two():
    max_degree = [np.bincount(_power_law_edges(20_000, 16.0, e, seed=0)[1]).max() for e in (2.1, 3.0)]
    assert max_degree[0] > 3 * max_degree[1]


def test_power_law_graph_is_deterministic_by_seed():
    first, again, other = (_power_law_edges(2000, 8.0, seed=seed) for seed in (5, 5, 6))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_power_law_graph_at_a_million_nodes_and_16_million_edges():
    graph = power_law_graph(1_000_000, avg_degree=16.0, exponent=2.5, seed=0)
    assert graph.n_edges == 16_000_000
    degree = np.bincount(np.asarray(graph.receivers), minlength=1_000_000)
    assert degree.max() > 1000 * degree.mean()


def test_power_law_graph_rejects_bad_arguments():
    with pytest.raises(ValueError) as error:
        power_law_graph(1, avg_degree=4.0, exponent=2.0, seed=0)
    message = str(error.value)
    assert "power_law_graph: n_nodes is too small; got 1, expected >= 2." in message
    assert "power_law_graph: exponent is out of range; got 2.0, expected 2.0 < exponent." in message
    with pytest.raises(ValueError, match=r"avg_degree is too large; got 20.0, expected <= n_nodes - 1 = 9"):
        power_law_graph(10, avg_degree=20.0, seed=0)
