"""Disjoint-union batches, unbatch, padding, size buckets, and the recompiles they bound."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from graph_strategies import edge_multiset, graphs, host_dense
from hypothesis import given, settings
from hypothesis import strategies as st

import jgrad
from jgrad import Graph
from jgrad.graph import bucket_size, pad_to_bucket

_to_dense = jax.jit(Graph.to_dense)


def _pair() -> tuple[Graph, Graph]:
    g1 = Graph.from_edges([0, 1], [1, 0], n_nodes=2, edge_weight=[1.0, 2.0])
    g2 = Graph.from_edges([0, 2, 2], [1, 1, 2], n_nodes=3, edge_weight=[3.0, 4.0, 5.0])
    return g1, g2


# --------------------------------------------------------------------------------------------------
# batch / unbatch
# --------------------------------------------------------------------------------------------------
def test_batch_shifts_node_ids_and_records_per_graph_counts():
    g1, g2 = _pair()
    b = jgrad.batch([g1, g2])
    assert (b.n_nodes, b.n_edges, b.n_graphs) == (5, 5, 2)
    np.testing.assert_array_equal(b.senders, [0, 1, 2, 4, 4])
    np.testing.assert_array_equal(b.receivers, [1, 0, 3, 3, 4])
    np.testing.assert_array_equal(b.edge_weight, [1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(b.n_node_per_graph, [2, 3])
    np.testing.assert_array_equal(b.n_edge_per_graph, [2, 3])
    assert b.node_mask is None and b.edge_mask is None and b.graph_mask is None
    assert repr(b) == "Graph(n_nodes=5, n_edges=5, weighted=True, n_graphs=2)"


def test_batch_of_batches_flattens():
    g1, g2 = _pair()
    nested = jgrad.batch([jgrad.batch([g1, g2]), g1])
    flat = jgrad.batch([g1, g2, g1])
    assert nested.n_graphs == 3
    np.testing.assert_array_equal(nested.n_node_per_graph, flat.n_node_per_graph)
    np.testing.assert_array_equal(nested.senders, flat.senders)
    np.testing.assert_array_equal(nested.receivers, flat.receivers)


def test_batch_handles_graphs_without_edges_and_unweighted_graphs():
    empty = Graph.from_edges([], [], n_nodes=2)
    g = Graph.from_edges([0], [1], n_nodes=2)
    b = jgrad.batch([empty, g, empty])
    assert not b.is_weighted
    np.testing.assert_array_equal(b.n_edge_per_graph, [0, 1, 0])
    np.testing.assert_array_equal(b.senders, [2])
    parts = jgrad.unbatch(b)
    assert [p.n_edges for p in parts] == [0, 1, 0]


def test_unbatch_of_a_single_graph_returns_it():
    g1, _ = _pair()
    assert jgrad.unbatch(g1) == [g1]


@settings(max_examples=20, deadline=None)  # compiles to_dense for each new shape
@given(st.booleans().flatmap(lambda w: st.lists(graphs(weighted=w, max_nodes=6, max_edges=10),
                                                min_size=1, max_size=4)))
def test_batch_is_block_diagonal(gs):
    b = jgrad.batch(gs)
    expected = scipy.linalg.block_diag(*[host_dense(g) for g in gs])
    np.testing.assert_array_equal(_to_dense(b), expected)
    np.testing.assert_array_equal(b.n_node_per_graph, [g.n_nodes for g in gs])
    np.testing.assert_array_equal(b.n_edge_per_graph, [g.n_edges for g in gs])


@settings(max_examples=30, deadline=None)
@given(st.booleans().flatmap(lambda w: st.lists(graphs(weighted=w), min_size=1, max_size=4)))
def test_unbatch_inverts_batch(gs):
    parts = jgrad.unbatch(jgrad.batch(gs))
    assert len(parts) == len(gs)
    for part, g in zip(parts, gs):
        assert part.n_nodes == g.n_nodes
        assert part.is_weighted == g.is_weighted
        assert edge_multiset(part) == edge_multiset(g)
        if g.is_weighted:  # edges keep their order within a graph
            np.testing.assert_array_equal(part.edge_weight, g.edge_weight)


# --------------------------------------------------------------------------------------------------
# pad
# --------------------------------------------------------------------------------------------------
def test_pad_appends_masked_nodes_edges_and_one_padding_graph():
    g1, _ = _pair()
    p = jgrad.pad(g1, n_nodes=4, n_edges=5)
    assert (p.n_nodes, p.n_edges, p.n_graphs) == (4, 5, 2)
    np.testing.assert_array_equal(p.node_mask, [True, True, False, False])
    np.testing.assert_array_equal(p.edge_mask, [True, True, False, False, False])
    np.testing.assert_array_equal(p.graph_mask, [True, False])
    np.testing.assert_array_equal(p.senders[2:], [2, 2, 2])  # self loops on the first padding node
    np.testing.assert_array_equal(p.receivers[2:], [2, 2, 2])
    np.testing.assert_array_equal(p.edge_weight[2:], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(p.n_node_per_graph, [2, 2])
    np.testing.assert_array_equal(p.n_edge_per_graph, [2, 3])
    assert "padded=True" in repr(p)


def test_pad_to_the_same_size_only_adds_masks():
    g1, _ = _pair()
    p = jgrad.pad(g1, n_nodes=2, n_edges=2)
    assert p.n_graphs == 1
    assert bool(p.node_mask.all()) and bool(p.edge_mask.all())
    np.testing.assert_array_equal(p.to_dense(), g1.to_dense())


def test_pad_nodes_only_adds_isolated_masked_nodes():
    g1, _ = _pair()
    p = jgrad.pad(g1, n_nodes=5, n_edges=2)
    np.testing.assert_array_equal(p.n_node_per_graph, [2, 3])
    np.testing.assert_array_equal(p.n_edge_per_graph, [2, 0])


def test_pad_keeps_multi_head_weight_shape():
    g = Graph.from_edges([0], [1], n_nodes=2, edge_weight=np.ones((1, 3), np.float32))
    p = jgrad.pad(g, n_nodes=3, n_edges=4)
    assert p.edge_weight.shape == (4, 3)
    assert p.to_dense().shape == (3, 3, 3)


def test_pad_of_a_padded_batch_adds_another_padding_graph():
    g1, g2 = _pair()
    p = jgrad.pad(jgrad.pad(jgrad.batch([g1, g2]), n_nodes=7, n_edges=8), n_nodes=9, n_edges=10)
    np.testing.assert_array_equal(p.graph_mask, [True, True, False, False])
    parts = jgrad.unbatch(p)
    assert len(parts) == 2
    np.testing.assert_array_equal(parts[1].to_dense(), g2.to_dense())


def test_pad_works_under_jit_for_a_single_graph():
    g1, _ = _pair()
    out = jax.jit(lambda g: jgrad.pad(g, n_nodes=4, n_edges=6).to_dense())(g1)
    np.testing.assert_array_equal(out, jgrad.pad(g1, n_nodes=4, n_edges=6).to_dense())


def test_padding_graph_can_be_batched_again_and_unbatched():
    g1, g2 = _pair()
    b = jgrad.batch([jgrad.pad(g1, n_nodes=3, n_edges=3), g2])
    np.testing.assert_array_equal(b.graph_mask, [True, False, True])
    parts = jgrad.unbatch(b)
    assert [p.n_nodes for p in parts] == [2, 3]


@settings(max_examples=30, deadline=None)
@given(st.lists(graphs(weighted=True, max_nodes=8, max_edges=12), min_size=1, max_size=3),
       st.integers(1, 5), st.integers(0, 10))
def test_pad_preserves_the_real_block_and_unbatch_drops_the_padding_graph(gs, extra_nodes, extra_edges):
    b = jgrad.batch(gs)
    p = jgrad.pad(b, n_nodes=b.n_nodes + extra_nodes, n_edges=b.n_edges + extra_edges)
    dense = host_dense(p)
    np.testing.assert_array_equal(dense[:b.n_nodes, :b.n_nodes], host_dense(b))
    np.testing.assert_array_equal(dense[b.n_nodes:], 0.0)
    np.testing.assert_array_equal(dense[:, b.n_nodes:], 0.0)
    assert int(np.asarray(p.edge_mask).sum()) == b.n_edges
    parts = jgrad.unbatch(p)
    assert len(parts) == len(gs)
    for part, g in zip(parts, gs):
        assert part.n_nodes == g.n_nodes and part.edge_mask is None and part.node_mask is None
        assert edge_multiset(part) == edge_multiset(g)


def test_to_dense_of_a_padded_batch_compiled_matches_the_host_reference():
    g1, g2 = _pair()
    p = jgrad.pad(jgrad.batch([g1, g2]), n_nodes=8, n_edges=9)
    np.testing.assert_array_equal(_to_dense(p), host_dense(p))


# --------------------------------------------------------------------------------------------------
# node_graph_index
# --------------------------------------------------------------------------------------------------
def test_node_graph_index_of_a_single_graph_is_zeros():
    g1, _ = _pair()
    np.testing.assert_array_equal(g1.node_graph_index(), [0, 0])
    assert g1.node_graph_index().dtype == jnp.int32


def test_node_graph_index_of_a_batch():
    g1, g2 = _pair()
    np.testing.assert_array_equal(jgrad.batch([g1, g2, g1]).node_graph_index(), [0, 0, 1, 1, 1, 2, 2])


def test_node_graph_index_of_a_padded_batch_puts_padding_nodes_in_the_padding_graph():
    g1, g2 = _pair()
    p = jgrad.pad(jgrad.batch([g1, g2]), n_nodes=8, n_edges=6)
    index = p.node_graph_index()
    np.testing.assert_array_equal(index, [0, 0, 1, 1, 1, 2, 2, 2])
    assert not bool(p.graph_mask[index[-1]])


def test_node_graph_index_works_under_jit_as_a_segment_id():
    g1, g2 = _pair()
    p = jgrad.pad(jgrad.batch([g1, g2]), n_nodes=8, n_edges=6)

    @jax.jit
    def per_graph_in_degree(g):
        return jax.ops.segment_sum(g.in_degree(), g.node_graph_index(), num_segments=g.n_graphs)

    np.testing.assert_array_equal(per_graph_in_degree(p), [3.0, 12.0, 0.0])


# --------------------------------------------------------------------------------------------------
# Buckets and recompiles
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "kwargs", "expected"),
    [(0, {}, 16), (1, {}, 16), (16, {}, 16), (17, {}, 32), (32, {}, 32), (33, {}, 64), (100, {}, 128),
     (1000, {}, 1024), (5, {"minimum": 4}, 8), (10, {"growth": 1.5, "minimum": 4}, 14)],
)
def test_bucket_size_is_the_smallest_ladder_step_at_least_size(size, kwargs, expected):
    assert bucket_size(size, **kwargs) == expected


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([1.25, 1.5, 2.0, 3.0]), st.integers(1, 64))
def test_bucket_size_is_at_least_size_and_monotone(size, growth, minimum):
    bucket = bucket_size(size, growth=growth, minimum=minimum)
    assert bucket >= size and bucket >= minimum
    assert bucket_size(size + 1, growth=growth, minimum=minimum) >= bucket
    assert bucket_size(bucket, growth=growth, minimum=minimum) == bucket


def test_pad_to_bucket_reserves_a_padding_node_and_rounds_both_sizes_up():
    g = Graph.from_edges(np.arange(16) % 16, (np.arange(16) + 1) % 16, n_nodes=16)
    p = pad_to_bucket(g)
    assert (p.n_nodes, p.n_edges) == (32, 16)  # 16 + 1 nodes -> 32; 16 edges fit their bucket
    np.testing.assert_array_equal(p.to_dense()[:16, :16], g.to_dense())
    q = pad_to_bucket(Graph.from_edges([0], [1], n_nodes=2), growth=4.0, minimum=4)
    assert (q.n_nodes, q.n_edges) == (4, 4)


def test_bucketing_bounds_recompiles_of_a_jitted_function():
    rng = np.random.default_rng(0)
    graphs_ = []
    for _ in range(40):
        n = int(rng.integers(5, 201))
        e = int(rng.integers(n, 2 * n + 1))
        graphs_.append(Graph.from_edges(rng.integers(0, n, e), rng.integers(0, n, e), n_nodes=n))

    traces = []

    def total_in_degree(g):
        traces.append((g.n_nodes, g.n_edges))  # runs only while tracing, i.e. once per compilation
        return jnp.sum(g.in_degree())

    bucketed = jax.jit(total_in_degree)
    for g in graphs_:
        padded = pad_to_bucket(g)
        assert float(bucketed(padded)) == g.n_edges  # padding edges count 0
    bucket_shapes = {(bucket_size(g.n_nodes + 1), bucket_size(g.n_edges)) for g in graphs_}
    assert sorted(traces) == sorted(bucket_shapes)
    # Nodes 6..201 span 5 node buckets (16..256); edges in [n, 2n] add at most one edge bucket each.
    assert len(traces) <= 10

    # Unpadded, every new shape is traced (and would be compiled) again. `.trace` stops before
    # compiling, which only keeps the test fast; calls share the same per-shape cache.
    traces.clear()
    unbucketed = jax.jit(total_in_degree)
    for g in graphs_:
        unbucketed.trace(g)
    raw_shapes = {(g.n_nodes, g.n_edges) for g in graphs_}
    assert len(traces) == len(raw_shapes) > 30
    unbucketed.trace(graphs_[0])
    assert len(traces) == len(raw_shapes)


def test_batch_rejects_edge_weights_of_different_trailing_shapes():
    a = jgrad.Graph.from_edges([0], [1], n_nodes=2, edge_weight=[1.0])
    b = jgrad.Graph.from_edges([0], [1], n_nodes=2, edge_weight=[[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"same trailing shape.*graphs\[1\]: \(E, 2\)"):
        jgrad.batch([a, b])


def test_pad_of_a_batch_works_under_jit():
    g = jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2)
    batch = jgrad.batch([g, g])
    eager = jgrad.pad(batch, 8, 10)
    traced = jax.jit(lambda b: jgrad.pad(b, 8, 10))(batch)
    for name in ("senders", "receivers", "node_mask", "edge_mask", "graph_mask", "n_node_per_graph",
                 "n_edge_per_graph"):
        np.testing.assert_array_equal(np.asarray(getattr(traced, name)), np.asarray(getattr(eager, name)))


def test_batch_refuses_an_out_of_range_index_that_would_land_in_the_next_graph():
    bad = Graph(senders=jnp.array([0, 2]), receivers=jnp.array([1, 0]), n_nodes=2)
    with pytest.raises(ValueError, match=r"^batch: graphs\[0\]: the graph has indices out of range: 1 senders out "
                                         r"of range \(senders\[1\]=2\)"):
        jgrad.batch([bad, Graph.from_edges([0], [1], n_nodes=2)])


def test_unbatch_refuses_edges_between_graphs_and_counts_that_do_not_add_up():
    b = jgrad.batch([Graph.from_edges([0], [1], n_nodes=2)] * 2)
    crossing = dataclasses.replace(b, senders=jnp.array([0, 1]))  # edge 1 -> 3 joins graphs 0 and 1
    with pytest.raises(ValueError, match=r"^unbatch: 1 edge\(s\) join two graphs of the batch \(first: edge 1, "
                                         r"1 -> 3\); expected each edge inside one graph's node range\.$"):
        jgrad.unbatch(crossing)
    miscounted = dataclasses.replace(b, n_node_per_graph=jnp.array([2, 1], jnp.int32))
    with pytest.raises(ValueError, match=r"^unbatch: n_node_per_graph must be non-negative and add up to n_nodes; "
                                         r"got sum 3 over 2 graphs, expected 4\.$"):
        jgrad.unbatch(miscounted)
