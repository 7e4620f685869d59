"""Conversion to and from scipy.sparse and networkx, with the A[v, u] = weight of u -> v convention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

import jgrad
from jgrad import Graph
from jgrad.graph import from_networkx, from_scipy, to_networkx, to_scipy


def _weighted_graph() -> Graph:
    return Graph.from_edges([0, 1, 1, 3], [1, 2, 2, 3], n_nodes=4, edge_weight=[1.0, 2.0, 3.0, 4.0])


def test_from_scipy_entry_v_u_becomes_edge_u_to_v():
    m = sp.csr_matrix(np.array([[0.0, 2.0], [0.0, 0.0]]))
    g = from_scipy(m)
    assert (g.senders.tolist(), g.receivers.tolist(), g.edge_weight.tolist()) == ([1], [0], [2.0])


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_scipy_round_trip_preserves_the_dense_adjacency(fmt):
    rng = np.random.default_rng(0)
    m = sp.random(9, 9, density=0.3, format=fmt, random_state=rng, dtype=np.float32)
    g = from_scipy(m)
    np.testing.assert_array_equal(g.to_dense(), m.toarray())
    back = to_scipy(g, format=fmt)
    assert back.format == fmt
    np.testing.assert_array_equal(back.toarray(), m.toarray())


def test_from_scipy_keeps_explicit_zeros_as_edges():
    m = sp.coo_matrix((np.array([0.0, 1.0]), (np.array([0, 1]), np.array([1, 0]))), shape=(2, 2))
    assert from_scipy(m).n_edges == 2


def test_to_scipy_sums_duplicates_and_drops_padding():
    g = jgrad.pad(_weighted_graph(), n_nodes=6, n_edges=8)
    m = to_scipy(g)
    assert m.shape == (6, 6)
    np.testing.assert_array_equal(m.toarray(), g.to_dense())
    assert m.toarray()[2, 1] == 5.0
    assert m.nnz == 3


def test_to_scipy_of_an_unweighted_graph_has_unit_weights():
    g = Graph.from_edges([0, 1], [1, 0], n_nodes=2)
    np.testing.assert_array_equal(to_scipy(g).toarray(), [[0.0, 1.0], [1.0, 0.0]])


def test_networkx_digraph_round_trip_keeps_edges_and_weights():
    d = nx.DiGraph()
    d.add_nodes_from(range(4))
    d.add_weighted_edges_from([(0, 1, 0.5), (1, 2, 2.0), (2, 0, 3.0), (3, 3, 1.5)])
    g = from_networkx(d)
    assert (g.n_nodes, g.n_edges, g.is_weighted) == (4, 4, True)
    assert g.to_dense()[1, 0] == 0.5  # networkx edge (0, 1) is 0 -> 1
    back = to_networkx(g)
    assert isinstance(back, nx.DiGraph)
    assert sorted(back.edges(data="weight")) == sorted(d.edges(data="weight"))


def test_from_networkx_relabels_nodes_in_iteration_order():
    d = nx.DiGraph()
    d.add_edge("b", "a")
    g = from_networkx(d)
    assert (g.senders.tolist(), g.receivers.tolist()) == ([0], [1])
    assert not g.is_weighted


def test_from_networkx_undirected_gives_both_directions_and_one_self_loop():
    u = nx.Graph()
    u.add_edges_from([(0, 1), (1, 2), (2, 2)])
    g = from_networkx(u)
    assert g.n_edges == 5
    dense = np.asarray(g.to_dense())
    np.testing.assert_array_equal(dense, dense.T)
    np.testing.assert_array_equal(dense, nx.to_numpy_array(u))


def test_from_networkx_missing_weight_attributes_count_one():
    d = nx.DiGraph()
    d.add_edge(0, 1, weight=3.0)
    d.add_edge(1, 0)
    g = from_networkx(d)
    np.testing.assert_array_equal(g.to_dense(), [[0.0, 1.0], [3.0, 0.0]])
    assert not from_networkx(d, weight=None).is_weighted


def test_karate_club_from_networkx():
    karate = nx.karate_club_graph()
    g = from_networkx(karate)
    assert (g.n_nodes, g.n_edges) == (34, 2 * karate.number_of_edges())
    dense = np.asarray(g.to_dense())
    np.testing.assert_array_equal(dense, dense.T)
    np.testing.assert_allclose(dense, nx.to_numpy_array(karate).T)  # networkx rows are senders
    unweighted = from_networkx(karate, weight=None)
    np.testing.assert_array_equal(unweighted.in_degree(), [d for _, d in karate.degree()])


def test_to_networkx_sums_duplicates_and_drops_padding():
    g = jgrad.pad(_weighted_graph(), n_nodes=5, n_edges=7)
    d = to_networkx(g)
    assert d.number_of_nodes() == 5
    assert sorted(d.edges(data="weight")) == [(0, 1, 1.0), (1, 2, 5.0), (3, 3, 4.0)]


def test_networkx_and_scipy_agree():
    g = _weighted_graph()
    np.testing.assert_array_equal(nx.to_scipy_sparse_array(to_networkx(g)).T.toarray(), to_scipy(g).toarray())


def test_to_networkx_rejects_vector_edge_weights():
    g = jgrad.Graph.from_edges([0], [1], n_nodes=2, edge_weight=[[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"to_networkx: needs scalar edge weights"):
        jgrad.graph.to_networkx(g)


@pytest.mark.parametrize("convert", [to_scipy, to_networkx], ids=["to_scipy", "to_networkx"])
def test_conversions_reject_out_of_range_indices_of_unvalidated_graphs(convert):
    bad = Graph(senders=jnp.array([0, 3]), receivers=jnp.array([1, 0]), n_nodes=2)
    with pytest.raises(ValueError, match=rf"^{convert.__name__}: the graph has indices out of range: 1 senders out "
                                         r"of range \(senders\[1\]=3\)"):
        convert(bad)


def test_weights_take_the_default_float_dtype(x64):
    weights = np.array([0.1, 1 / 3, 2.5])  # not exact in float32
    m = sp.coo_matrix((weights, ([1, 2, 0], [0, 1, 2])), shape=(3, 3))
    d = nx.DiGraph()
    d.add_weighted_edges_from([(0, 1, 0.1), (1, 2, 1 / 3), (2, 0, 2.5)])
    for g in (from_scipy(m), from_networkx(d)):
        assert g.edge_weight.dtype == np.float64
        np.testing.assert_array_equal(np.sort(np.asarray(g.edge_weight)), np.sort(weights))
    with jax.enable_x64(False):
        assert from_scipy(m).edge_weight.dtype == np.float32 and from_networkx(d).edge_weight.dtype == np.float32
