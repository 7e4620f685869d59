"""Structural transforms: reverse, self loops, coalesce, to_undirected, sort_by_receiver."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from graph_strategies import edge_multiset, graphs, host_dense
from hypothesis import given, settings

import jgrad
from jgrad import Graph
from jgrad.graph import add_self_loops, coalesce, remove_self_loops, sort_by_receiver, to_undirected

PROPERTY = settings(max_examples=30, deadline=None)
_to_dense = jax.jit(Graph.to_dense)  # one compilation per shape, for property tests over many shapes


def _weighted_graph() -> Graph:
    return Graph.from_edges([0, 1, 1, 2, 0], [1, 2, 2, 0, 1], n_nodes=4,
                            edge_weight=[1.0, 2.0, 3.0, 4.0, 5.0])


# --------------------------------------------------------------------------------------------------
# reverse
# --------------------------------------------------------------------------------------------------
def test_reverse_swaps_senders_and_receivers_and_transposes_the_adjacency():
    g = _weighted_graph()
    r = g.reverse()
    np.testing.assert_array_equal(r.senders, g.receivers)
    np.testing.assert_array_equal(r.receivers, g.senders)
    np.testing.assert_array_equal(r.to_dense(), g.to_dense().T)


def test_reverse_works_under_jit():
    g = _weighted_graph()
    np.testing.assert_array_equal(jax.jit(lambda graph: graph.reverse().to_dense())(g), g.to_dense().T)


@PROPERTY
@given(graphs())
def test_reverse_twice_is_the_identity(g):
    rr = g.reverse().reverse()
    np.testing.assert_array_equal(rr.senders, g.senders)
    np.testing.assert_array_equal(rr.receivers, g.receivers)
    assert rr.n_nodes == g.n_nodes
    if g.is_weighted:
        np.testing.assert_array_equal(rr.edge_weight, g.edge_weight)


@settings(max_examples=20, deadline=None)  # compiles to_dense for each new shape
@given(graphs())
def test_to_dense_of_reverse_is_the_transpose(g):
    np.testing.assert_array_equal(_to_dense(g.reverse()), _to_dense(g).T)


# --------------------------------------------------------------------------------------------------
# add_self_loops / remove_self_loops
# --------------------------------------------------------------------------------------------------
def test_add_self_loops_on_an_unweighted_graph_adds_the_identity_and_stays_unweighted():
    g = Graph.from_edges([0, 1], [1, 2], n_nodes=3)
    looped = add_self_loops(g)
    assert not looped.is_weighted
    assert looped.n_edges == 5
    np.testing.assert_array_equal(looped.senders[2:], [0, 1, 2])
    np.testing.assert_array_equal(looped.receivers[2:], [0, 1, 2])
    np.testing.assert_array_equal(looped.to_dense(), g.to_dense() + np.eye(3))


def test_add_self_loops_on_a_weighted_graph_uses_fill_as_the_loop_weight():
    g = _weighted_graph()
    looped = g.add_self_loops(fill=0.5)
    np.testing.assert_array_equal(looped.edge_weight[g.n_edges:], [0.5] * 4)
    np.testing.assert_array_equal(looped.to_dense(), g.to_dense() + 0.5 * np.eye(4))


def test_add_self_loops_with_fill_other_than_one_makes_an_unweighted_graph_weighted():
    g = Graph.from_edges([0], [1], n_nodes=2)
    looped = add_self_loops(g, fill=3.0)
    assert looped.is_weighted
    np.testing.assert_array_equal(looped.edge_weight, [1.0, 3.0, 3.0])


def test_add_self_loops_broadcasts_fill_over_multi_head_weights():
    g = Graph.from_edges([0], [1], n_nodes=2, edge_weight=np.array([[1.0, 2.0]], np.float32))
    looped = add_self_loops(g, fill=2.0)
    np.testing.assert_array_equal(looped.edge_weight, [[1.0, 2.0], [2.0, 2.0], [2.0, 2.0]])


def test_add_self_loops_keeps_existing_loops():
    g = Graph.from_edges([0], [0], n_nodes=2)
    np.testing.assert_array_equal(add_self_loops(g).to_dense(), [[2.0, 0.0], [0.0, 1.0]])


def test_add_self_loops_masks_loops_on_padding_nodes():
    g = Graph.from_edges([0, 1], [1, 0], n_nodes=2, edge_weight=[2.0, 3.0])
    padded = jgrad.pad(g, n_nodes=4, n_edges=3)
    looped = add_self_loops(padded)
    np.testing.assert_array_equal(looped.edge_mask, [True, True, False, True, True, False, False])
    dense = np.asarray(looped.to_dense())
    np.testing.assert_array_equal(dense[:2, :2], [[1.0, 3.0], [2.0, 1.0]])
    np.testing.assert_array_equal(dense[2:], 0.0)
    np.testing.assert_array_equal(looped.in_degree(weighted=False), [2.0, 2.0, 0.0, 0.0])


def test_add_self_loops_is_jit_safe_including_a_traced_fill():
    g = _weighted_graph()
    out = jax.jit(lambda graph, fill: add_self_loops(graph, fill).to_dense())(g, jnp.float32(2.0))
    np.testing.assert_array_equal(out, g.to_dense() + 2.0 * np.eye(4))


def test_add_self_loops_on_a_batch_updates_edge_counts_and_unbatches():
    g1 = Graph.from_edges([0], [1], n_nodes=2)
    g2 = Graph.from_edges([0, 1], [1, 2], n_nodes=3)
    looped = add_self_loops(jgrad.batch([g1, g2]))
    np.testing.assert_array_equal(looped.n_edge_per_graph, [3, 5])
    parts = jgrad.unbatch(looped)
    np.testing.assert_array_equal(parts[0].to_dense(), add_self_loops(g1).to_dense())
    np.testing.assert_array_equal(parts[1].to_dense(), add_self_loops(g2).to_dense())


def test_remove_self_loops_drops_every_loop_and_keeps_weights_aligned():
    g = Graph.from_edges([0, 1, 1, 2, 2], [0, 2, 1, 0, 2], n_nodes=3, edge_weight=[1.0, 2.0, 3.0, 4.0, 5.0])
    r = remove_self_loops(g)
    np.testing.assert_array_equal(r.senders, [1, 2])
    np.testing.assert_array_equal(r.receivers, [2, 0])
    np.testing.assert_array_equal(r.edge_weight, [2.0, 4.0])
    np.testing.assert_array_equal(g.remove_self_loops().to_dense(), r.to_dense())


def test_remove_self_loops_undoes_add_self_loops_on_a_loop_free_graph():
    g = _weighted_graph()
    np.testing.assert_array_equal(remove_self_loops(add_self_loops(g, fill=7.0)).to_dense(), g.to_dense())


def test_remove_self_loops_on_a_batch_with_appended_loops_keeps_edge_counts_right():
    g = Graph.from_edges([0], [1], n_nodes=2)
    r = remove_self_loops(add_self_loops(jgrad.batch([g, g])))
    np.testing.assert_array_equal(r.n_edge_per_graph, [1, 1])
    assert [part.n_edges for part in jgrad.unbatch(r)] == [1, 1]


# --------------------------------------------------------------------------------------------------
# coalesce
# --------------------------------------------------------------------------------------------------
def test_coalesce_sums_duplicate_weights_and_sorts_by_receiver_then_sender():
    g = Graph.from_edges([2, 0, 1, 0, 2], [0, 1, 0, 1, 0], n_nodes=3, edge_weight=[1.0, 2.0, 3.0, 4.0, 5.0])
    c = coalesce(g)
    assert list(zip(c.receivers.tolist(), c.senders.tolist())) == [(0, 1), (0, 2), (1, 0)]
    np.testing.assert_array_equal(c.edge_weight, [3.0, 6.0, 6.0])
    np.testing.assert_array_equal(c.to_dense(), g.to_dense())


def test_coalesce_sums_multi_head_weights():
    g = Graph.from_edges([0, 0], [1, 1], n_nodes=2, edge_weight=np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    np.testing.assert_array_equal(coalesce(g).edge_weight, [[4.0, 6.0]])


def test_coalesce_of_an_unweighted_graph_keeps_the_pattern():
    g = Graph.from_edges([0, 0, 1], [1, 1, 0], n_nodes=2)
    c = g.coalesce()
    assert c.n_edges == 2
    np.testing.assert_array_equal(c.to_dense() != 0, g.to_dense() != 0)


def test_coalesce_drops_padding_edges_and_keeps_the_node_mask():
    g = jgrad.pad(_weighted_graph(), n_nodes=6, n_edges=9)
    c = coalesce(g)
    assert c.edge_mask is None
    assert c.n_edges == 3  # (0, 1) and (1, 2) appear twice
    np.testing.assert_array_equal(c.node_mask, g.node_mask)
    np.testing.assert_array_equal(c.to_dense(), g.to_dense())
    np.testing.assert_array_equal(c.n_edge_per_graph, [3, 0])


def test_coalesce_on_a_batch_recounts_edges_per_graph():
    g1 = Graph.from_edges([0, 0], [1, 1], n_nodes=2)
    g2 = Graph.from_edges([0, 1, 0], [1, 0, 1], n_nodes=2)
    c = coalesce(jgrad.batch([g1, g2]))
    np.testing.assert_array_equal(c.n_edge_per_graph, [1, 2])


@PROPERTY
@given(graphs())
def test_coalesce_is_idempotent_and_preserves_to_dense(g):
    once = coalesce(g)
    twice = coalesce(once)
    np.testing.assert_array_equal(twice.senders, once.senders)
    np.testing.assert_array_equal(twice.receivers, once.receivers)
    if g.is_weighted:
        np.testing.assert_array_equal(twice.edge_weight, once.edge_weight)
        np.testing.assert_array_equal(host_dense(once), host_dense(g))
    else:
        np.testing.assert_array_equal(host_dense(once) != 0, host_dense(g) != 0)
    pairs = list(zip(once.receivers.tolist(), once.senders.tolist()))
    assert pairs == sorted(set(pairs))  # sorted, no duplicates


# --------------------------------------------------------------------------------------------------
# to_undirected
# --------------------------------------------------------------------------------------------------
def test_to_undirected_adds_missing_reverse_edges_with_the_same_weight():
    g = Graph.from_edges([0, 1, 2], [1, 0, 3], n_nodes=4, edge_weight=[1.5, 1.5, 5.0])
    u = to_undirected(g)
    dense = np.asarray(u.to_dense())
    np.testing.assert_array_equal(dense, dense.T)
    assert dense[3, 2] == 5.0 and dense[2, 3] == 5.0
    assert dense[1, 0] == 1.5 and dense[0, 1] == 1.5


def test_to_undirected_refuses_a_pair_with_different_weights_in_its_two_directions():
    g = Graph.from_edges([0, 1, 2], [1, 0, 3], n_nodes=4, edge_weight=[1.0, 2.0, 5.0])
    with pytest.raises(ValueError, match=r"^to_undirected: 1 pair\(s\) have different weights in the two "
                                         r"directions \(0->1 weighs 1\.0, 1->0 weighs 2\.0\); "
                                         r"expected A\[v, u\] == A\[u, v\]\. "
                                         r"Pass reduce='mean', 'max' or 'min'"):
        to_undirected(g)


def test_to_undirected_counts_unweighted_duplicates_as_weights():
    g = Graph.from_edges([0, 0, 1], [1, 1, 0], n_nodes=2)  # 0->1 twice, 1->0 once: A is not symmetric
    with pytest.raises(ValueError, match=r"0->1 weighs 2\.0, 1->0 weighs 1\.0"):
        g.to_undirected()
    np.testing.assert_array_equal(g.to_undirected(reduce="max").to_dense(), [[0.0, 2.0], [2.0, 0.0]])


@pytest.mark.parametrize("reduce, expected", [("mean", 1.5), ("max", 2.0), ("min", 1.0)])
def test_to_undirected_reduce_combines_the_two_directions_symmetrically(reduce, expected):
    g = Graph.from_edges([0, 1, 2], [1, 0, 3], n_nodes=4, edge_weight=[1.0, 2.0, 5.0])
    dense = np.asarray(g.to_undirected(reduce=reduce).to_dense())
    np.testing.assert_array_equal(dense, dense.T)
    assert dense[0, 1] == expected and dense[3, 2] == 5.0


def test_to_undirected_reduce_is_elementwise_for_multi_head_weights():
    g = Graph.from_edges([0, 1], [1, 0], n_nodes=2, edge_weight=[[1.0, 4.0], [3.0, 4.0]])
    u = g.to_undirected(reduce="min")
    np.testing.assert_array_equal(u.edge_weight, [[1.0, 4.0], [1.0, 4.0]])


def test_to_undirected_looks_up_the_reverse_edges_in_sorted_order(monkeypatch):
    """The reverse keys of a graph sorted by receiver are in random order; searched as they come, every
    step of every binary search missed the cache: to_undirected of a 1e6-node graph with 1.2e7 random
    edges took 26.7 s, 13.8 s of it in np.searchsorted (1.8 s with the needles sorted first)."""
    searchsorted = np.searchsorted

    def sorted_needles_only(keys, needles, *args, **kwargs):
        assert np.all(np.diff(needles) >= 0), "np.searchsorted called with unsorted needles"
        return searchsorted(keys, needles, *args, **kwargs)

    rng = np.random.default_rng(0)
    senders, receivers = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    g = Graph.from_edges(senders, receivers, n_nodes=30, edge_weight=rng.random(200).astype(np.float32))
    expected = to_undirected(g, reduce="max")
    monkeypatch.setattr(np, "searchsorted", sorted_needles_only)
    got = to_undirected(g, reduce="max")
    for name in ("senders", "receivers", "edge_weight"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    dense = np.asarray(g.coalesce().to_dense())
    np.testing.assert_array_equal(got.to_dense(), np.where(dense.T != 0, np.maximum(dense, dense.T), dense))


def test_to_undirected_rejects_an_unknown_reduce():
    g = Graph.from_edges([0], [1], n_nodes=2)
    with pytest.raises(ValueError, match=r"to_undirected: unknown reduce 'sum'; expected None or one of 'mean'"):
        g.to_undirected(reduce="sum")


def test_to_undirected_does_not_double_self_loops():
    g = Graph.from_edges([1], [1], n_nodes=2, edge_weight=[3.0])
    np.testing.assert_array_equal(to_undirected(g).to_dense(), [[0.0, 0.0], [0.0, 3.0]])


def test_to_undirected_of_a_symmetric_graph_is_unchanged_up_to_order():
    g = Graph.from_edges([1, 0, 2, 1], [0, 1, 1, 2], n_nodes=3, edge_weight=[1.0, 1.0, 2.0, 2.0])
    u = g.to_undirected()
    assert edge_multiset(u) == edge_multiset(g)
    np.testing.assert_array_equal(u.to_dense(), g.to_dense())


def test_to_undirected_on_a_batch_recounts_edges_per_graph():
    g1 = Graph.from_edges([0], [1], n_nodes=2)
    g2 = Graph.from_edges([0, 1], [1, 2], n_nodes=3)
    u = to_undirected(jgrad.batch([g1, g2]))
    np.testing.assert_array_equal(u.n_edge_per_graph, [2, 4])
    assert [part.n_edges for part in jgrad.unbatch(u)] == [2, 4]


def test_to_undirected_drops_padding_edges():
    g = jgrad.pad(Graph.from_edges([0], [1], n_nodes=2), n_nodes=3, n_edges=4)
    u = to_undirected(g)
    assert u.edge_mask is None and u.n_edges == 2


@settings(max_examples=20, deadline=None)
@given(graphs())
def test_to_undirected_gives_a_symmetric_nonzero_pattern(g):
    dense = host_dense(to_undirected(g, reduce="mean"))
    np.testing.assert_allclose(dense, np.swapaxes(dense, 0, 1), rtol=1e-6)
    np.testing.assert_array_equal(dense != 0, dense.T != 0)
    original = host_dense(g)
    np.testing.assert_array_equal(dense != 0, (original != 0) | (original.T != 0))


# --------------------------------------------------------------------------------------------------
# sort_by_receiver
# --------------------------------------------------------------------------------------------------
def test_sort_by_receiver_returns_the_permutation_that_sorts():
    g = Graph.from_edges([3, 0, 2, 1, 0], [1, 2, 0, 1, 1], n_nodes=4, edge_weight=[1.0, 2.0, 3.0, 4.0, 5.0])
    s, perm = sort_by_receiver(g)
    assert perm.dtype == jnp.int32
    np.testing.assert_array_equal(s.senders, g.senders[perm])
    np.testing.assert_array_equal(s.receivers, g.receivers[perm])
    np.testing.assert_array_equal(s.edge_weight, g.edge_weight[perm])
    assert list(zip(s.receivers.tolist(), s.senders.tolist())) == [(0, 2), (1, 0), (1, 1), (1, 3), (2, 0)]
    np.testing.assert_array_equal(s.to_dense(), g.to_dense())
    values = jnp.arange(5.0)[perm]  # per-edge values in sorted order, scattered back
    np.testing.assert_array_equal(jnp.zeros(5).at[perm].set(values), jnp.arange(5.0))


def test_sort_by_receiver_permutes_the_edge_mask():
    g = jgrad.pad(Graph.from_edges([1, 0], [1, 0], n_nodes=2), n_nodes=3, n_edges=3)
    s, perm = g.sort_by_receiver()
    np.testing.assert_array_equal(s.edge_mask, g.edge_mask[perm])
    np.testing.assert_array_equal(s.to_dense(), g.to_dense())


def test_sort_by_receiver_is_jit_safe():
    g = _weighted_graph()
    s_jit, perm_jit = jax.jit(sort_by_receiver)(g)
    s, perm = sort_by_receiver(g)
    np.testing.assert_array_equal(perm_jit, perm)
    np.testing.assert_array_equal(s_jit.receivers, s.receivers)
    assert np.all(np.diff(np.asarray(s_jit.receivers)) >= 0)


def test_sort_by_receiver_sorts_concrete_indices_on_the_host(monkeypatch):
    """XLA's two-key sort took 5-6 s for the 1.2e7 edges of a 1e6-node graph, one numpy sort of int64 keys
    1-2 s: concrete indices take the numpy sort, with the same stable order (duplicates included) as the
    traced path."""
    rng = np.random.default_rng(0)
    g = Graph.from_edges(rng.integers(0, 7, 60), rng.integers(0, 7, 60), n_nodes=7,
                         edge_weight=rng.random(60).astype(np.float32))  # many duplicate pairs
    s_jit, perm_jit = jax.jit(sort_by_receiver)(g)
    monkeypatch.setattr(jnp, "lexsort", None)  # not called with concrete indices
    s, perm = sort_by_receiver(g)
    np.testing.assert_array_equal(perm, perm_jit)
    for name in ("senders", "receivers", "edge_weight"):
        np.testing.assert_array_equal(getattr(s, name), getattr(s_jit, name))
    assert perm.dtype == jnp.int32


def test_coalesce_of_unweighted_duplicates_keeps_the_adjacency():
    g = jgrad.Graph.from_edges([0, 0, 1], [1, 1, 0], n_nodes=2)
    merged = g.coalesce()
    assert merged.n_edges == 2
    np.testing.assert_array_equal(np.asarray(merged.to_dense()), np.asarray(g.to_dense()))
    assert jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2).coalesce().edge_weight is None


@pytest.mark.parametrize("transform", [coalesce, remove_self_loops, lambda g: sort_by_receiver(g)[0]],
                         ids=["coalesce", "remove_self_loops", "sort_by_receiver"])
def test_transforms_of_an_unvalidated_graph_reject_out_of_range_indices(transform):
    bad = Graph(senders=jnp.array([0, 1]), receivers=jnp.array([1, 4]), n_nodes=2)
    with pytest.raises(ValueError, match=r": the graph has indices out of range: 1 receivers out of range "
                                         r"\(receivers\[1\]=4\); expected 0 <= index < n_nodes=2\."):
        transform(bad)
