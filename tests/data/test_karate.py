"""karate_club: counts, symmetry, the faction labels and the split."""

import jax
import numpy as np
import pytest

from jgrad.data import NodeDataset, karate_club


@pytest.fixture(scope="module")
def karate() -> NodeDataset:
    return karate_club()


def _pairs(data: NodeDataset) -> list[tuple[int, int]]:
    return list(zip(np.asarray(data.graph.senders).tolist(), np.asarray(data.graph.receivers).tolist()))


def test_karate_club_has_34_nodes_156_directed_edges_and_2_classes(karate):
    assert karate.graph.n_nodes == 34
    assert karate.graph.n_edges == 156
    assert karate.graph.edge_weight is None
    assert karate.n_classes == 2
    assert karate.name == "karate"


def test_karate_club_graph_is_symmetric_without_self_loops_or_duplicates(karate):
    pairs = _pairs(karate)
    assert len(set(pairs)) == 156
    assert set(pairs) == {(v, u) for u, v in pairs}
    assert all(u != v for u, v in pairs)


def test_karate_club_edges_are_sorted_by_receiver_then_sender(karate):
    pairs = _pairs(karate)
    assert pairs == sorted(pairs, key=lambda edge: (edge[1], edge[0]))


def test_karate_club_matches_networkx_edges_and_factions(karate):
    import networkx as nx
    reference = nx.karate_club_graph()
    assert {frozenset(edge) for edge in _pairs(karate)} == {frozenset(edge) for edge in reference.edges()}
    expected = [0 if reference.nodes[v]["club"] == "Mr. Hi" else 1 for v in range(34)]
    assert np.asarray(karate.labels).tolist() == expected


def test_karate_club_arrays_have_documented_shapes_and_dtypes(karate):
    np.testing.assert_array_equal(karate.features, np.eye(34, dtype=np.float32))
    assert karate.features.dtype == np.float32
    assert karate.labels.shape == (34,) and karate.labels.dtype == np.int32
    assert np.bincount(karate.labels).tolist() == [17, 17]
    for mask in (karate.train_mask, karate.val_mask, karate.test_mask):
        assert mask.shape == (34,) and mask.dtype == np.bool_


def test_karate_club_trains_on_the_two_leaders_and_tests_on_the_rest(karate):
    assert np.flatnonzero(karate.train_mask).tolist() == [0, 33]
    assert karate.labels[0] == 0 and karate.labels[33] == 1
    assert not karate.val_mask.any()
    np.testing.assert_array_equal(karate.test_mask, ~karate.train_mask)


def test_karate_club_dataset_passes_through_jit(karate):
    n_train = jax.jit(lambda data: data.train_mask.sum() + data.graph.n_nodes * 0)(karate)
    assert int(n_train) == 2
