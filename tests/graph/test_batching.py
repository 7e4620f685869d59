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


# --------------------------------------------------------------------------------------------------
# pad with a fixed graph count (n_graphs)
# --------------------------------------------------------------------------------------------------
def _triangles(count: int) -> Graph:
    """A batch of ``count`` directed triangles: 3 nodes and 3 edges each."""
    return jgrad.batch([Graph.from_edges([0, 1, 2], [1, 2, 0], n_nodes=3)] * count)


@pytest.mark.parametrize("count", [8, 16])
def test_pad_with_n_graphs_gives_exactly_n_graphs_for_partial_and_full_batches(count):
    b = _triangles(count)
    p = jgrad.pad(b, n_nodes=64, n_edges=64, n_graphs=17)
    assert (p.n_nodes, p.n_edges, p.n_graphs) == (64, 64, 17)
    padding = 17 - count
    # The first padding graph holds the padding nodes and edges, the others are empty, as in jraph.
    np.testing.assert_array_equal(p.n_node_per_graph, [3] * count + [64 - 3 * count] + [0] * (padding - 1))
    np.testing.assert_array_equal(p.n_edge_per_graph, [3] * count + [64 - 3 * count] + [0] * (padding - 1))
    np.testing.assert_array_equal(p.graph_mask, [True] * count + [False] * padding)
    np.testing.assert_array_equal(p.node_mask, np.arange(64) < 3 * count)
    np.testing.assert_array_equal(p.edge_mask, np.arange(64) < 3 * count)
    np.testing.assert_array_equal(p.senders[3 * count:], 3 * count)  # self loops on the first padding node
    np.testing.assert_array_equal(p.node_graph_index()[3 * count:], count)
    assert p.n_node_per_graph.dtype == jnp.int32 and p.n_edge_per_graph.dtype == jnp.int32


def test_pad_with_n_graphs_keeps_g_when_the_batch_exactly_fills_n_nodes():
    b = _triangles(7)  # 21 nodes, 21 edges
    # Without n_graphs G depends on whether a padding node is needed (kept for compatibility).
    assert jgrad.pad(b, n_nodes=21, n_edges=21).n_graphs == 7
    assert jgrad.pad(b, n_nodes=22, n_edges=28).n_graphs == 8
    full = jgrad.pad(b, n_nodes=21, n_edges=21, n_graphs=9)
    partial = jgrad.pad(b, n_nodes=22, n_edges=28, n_graphs=9)
    assert full.n_graphs == partial.n_graphs == 9
    np.testing.assert_array_equal(full.n_node_per_graph, [3] * 7 + [0, 0])
    np.testing.assert_array_equal(full.n_edge_per_graph, [3] * 7 + [0, 0])
    np.testing.assert_array_equal(full.graph_mask, [True] * 7 + [False, False])
    assert bool(full.node_mask.all()) and bool(full.edge_mask.all())
    np.testing.assert_array_equal(partial.n_node_per_graph, [3] * 7 + [1, 0])
    np.testing.assert_array_equal(partial.n_edge_per_graph, [3] * 7 + [7, 0])
    np.testing.assert_array_equal(partial.graph_mask, [True] * 7 + [False, False])


def test_pad_with_n_graphs_of_a_single_graph_and_of_a_padded_batch():
    g1, g2 = _pair()
    single = jgrad.pad(g1, n_nodes=2, n_edges=2, n_graphs=3)
    np.testing.assert_array_equal(single.n_node_per_graph, [2, 0, 0])
    np.testing.assert_array_equal(single.graph_mask, [True, False, False])
    np.testing.assert_array_equal(single.to_dense(), g1.to_dense())
    once = jgrad.pad(jgrad.batch([g1, g2]), n_nodes=7, n_edges=8)  # G = 3, one padding graph
    twice = jgrad.pad(once, n_nodes=9, n_edges=10, n_graphs=6)
    np.testing.assert_array_equal(twice.n_node_per_graph, [2, 3, 2, 2, 0, 0])
    np.testing.assert_array_equal(twice.graph_mask, [True, True, False, False, False, False])
    assert [p.n_nodes for p in jgrad.unbatch(twice)] == [2, 3]


def test_pad_with_n_graphs_under_jit_matches_eager():
    b = _triangles(3)
    eager = jgrad.pad(b, 12, 15, n_graphs=6)
    traced = jax.jit(lambda g: jgrad.pad(g, 12, 15, n_graphs=6))(b)
    for name in ("senders", "receivers", "node_mask", "edge_mask", "graph_mask", "n_node_per_graph",
                 "n_edge_per_graph"):
        np.testing.assert_array_equal(np.asarray(getattr(traced, name)), np.asarray(getattr(eager, name)))
    assert traced.n_graphs == 6


def test_a_jitted_readout_step_traces_once_across_batches_of_8_and_16_graphs():
    rng = np.random.default_rng(0)
    batches = [_triangles(count) for count in (16, 8, 16, 8)]
    traces = []

    def make_step():  # a new function each time: jit's trace cache is keyed by the function
        def step(g, x):
            traces.append(g.n_graphs)  # runs only while tracing
            return jgrad.nn.readout(g, x, "sum")
        return jax.jit(step)

    jitted = make_step()
    for b in batches:
        p = jgrad.pad(b, n_nodes=64, n_edges=64, n_graphs=17)
        x = jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)
        out = jitted(p, x)
        assert out.shape == (17, 4)
        np.testing.assert_allclose(out[:b.n_graphs], jgrad.nn.readout(b, x[:b.n_nodes], "sum"), rtol=1e-6)
        np.testing.assert_array_equal(out[b.n_graphs:], 0.0)
    assert traces == [17]
    # Without n_graphs the two graph counts are two shapes: G = 17 and G = 9.
    traces.clear()
    jitted = make_step()
    for b in batches:
        jitted(jgrad.pad(b, n_nodes=64, n_edges=64), jnp.zeros((64, 4)))
    assert traces == [17, 9]


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_readout_of_real_graphs_is_unchanged_and_empty_padding_graphs_give_zeros(reduce):
    g1, g2 = _pair()
    b = jgrad.batch([g1, g2, g1])
    x = jnp.asarray(np.random.default_rng(1).normal(size=(7, 3)), jnp.float32) - 5.0  # all negative
    for n_nodes, n_edges in ((7, 7), (10, 12)):  # exact fill (all padding graphs empty), then padding
        p = jgrad.pad(b, n_nodes=n_nodes, n_edges=n_edges, n_graphs=6)
        xp = jnp.concatenate([x, jnp.full((n_nodes - 7, 3), 100.0)])  # padding nodes must not leak in
        out = jgrad.nn.readout(p, xp, reduce)
        assert out.shape == (6, 3)
        np.testing.assert_allclose(out[:3], jgrad.nn.readout(b, x, reduce), rtol=1e-6)
        np.testing.assert_array_equal(out[3:], 0.0)  # neither NaN (mean) nor -inf (max)
        np.testing.assert_array_equal(jax.jit(jgrad.nn.readout, static_argnums=2)(p, xp, reduce), out)
        grad = jax.grad(lambda h: jnp.sum(jgrad.nn.readout(p, h, reduce) ** 2))(xp)
        assert bool(jnp.isfinite(grad).all())
        np.testing.assert_array_equal(grad[7:], 0.0)


def test_unbatch_drops_empty_padding_graphs():
    g1, g2 = _pair()
    for n_nodes, n_edges in ((5, 5), (8, 9)):
        p = jgrad.pad(jgrad.batch([g1, g2]), n_nodes=n_nodes, n_edges=n_edges, n_graphs=5)
        parts = jgrad.unbatch(p)
        assert len(parts) == 2
        for part, g in zip(parts, (g1, g2)):
            np.testing.assert_array_equal(part.to_dense(), g.to_dense())


def test_pad_to_bucket_rounds_or_fixes_the_graph_count():
    b = _triangles(3)  # 9 nodes, 9 edges, 3 graphs
    default = pad_to_bucket(b)
    assert (default.n_nodes, default.n_edges, default.n_graphs) == (16, 16, 4)
    fixed = pad_to_bucket(b, n_graphs=9)
    assert (fixed.n_nodes, fixed.n_edges, fixed.n_graphs) == (16, 16, 9)
    np.testing.assert_array_equal(fixed.n_node_per_graph, [3, 3, 3, 7, 0, 0, 0, 0, 0])
    bucketed = pad_to_bucket(b, n_graphs="bucket")
    assert bucketed.n_graphs == 16
    assert pad_to_bucket(_triangles(20), n_graphs="bucket").n_graphs == 32  # 21 -> 32
    assert pad_to_bucket(b, n_graphs="bucket", growth=2.0, minimum=4).n_graphs == 4
    np.testing.assert_array_equal(bucketed.graph_mask, np.arange(16) < 3)


def test_pad_to_bucket_with_a_graph_count_bounds_recompiles_of_the_graph_axis():
    traces = []

    def make_step():  # a new function each time: jit's trace cache is keyed by the function
        def per_graph_sum(g, x):
            traces.append((g.n_nodes, g.n_edges, g.n_graphs))  # runs only while tracing
            return jgrad.nn.readout(g, x, "sum")
        return jax.jit(per_graph_sum)

    counts = [6, 7, 8, 9, 10, 6, 8, 10, 7, 9, 6, 8, 10]  # 13 batches, 18-30 nodes and edges: bucket 32
    for n_graphs, expected in ((None, 5), ("bucket", 1), (11, 1)):  # G: 7-11 graphs, 16, 11
        traces.clear()
        jitted = make_step()
        for count in counts:
            p = pad_to_bucket(_triangles(count), n_graphs=n_graphs)
            out = jitted(p, jnp.ones((p.n_nodes, 1)))
            np.testing.assert_array_equal(out[:count, 0], 3.0)
            np.testing.assert_array_equal(out[count:, 0], 0.0)
        assert len(traces) == expected, (n_graphs, traces)
