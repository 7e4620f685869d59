"""Size caps: node counts, edge counts and padded sizes stop at 2**31 - 1 (int32 indexing), never wrap."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import Graph
from jgrad.graph import add_self_loops, to_undirected

LIMIT = r"2\*\*31 - 1 = 2147483647\."
BIG = 1_500_000_000  # three of these exceed the limit; a graph this size without edges allocates nothing


def test_from_edges_refuses_n_nodes_beyond_int32_instead_of_wrapping():
    with pytest.raises(ValueError, match=r"^Graph\.from_edges: n_nodes is too large for int32 indexing; got "
                                         r"4000000000, expected n_nodes <= " + LIMIT + "$"):
        Graph.from_edges([3_000_000_000], [1], 4_000_000_000)
    with pytest.raises(ValueError, match=r"n_nodes is too large for int32 indexing; got 2147483648"):
        Graph.from_edges(np.array([3_000_000_000], np.int64), [1], np.int64(2**31))


def test_float_sizes_and_float_indices_are_refused_not_rounded():
    with pytest.raises(TypeError, match=r"Graph\.from_edges: n_nodes must be an int; got float 4000000000\.0\."):
        Graph.from_edges([3e9], [1], 4e9)
    with pytest.raises(TypeError, match=r"Graph\.from_edges: senders must have an integer dtype; got float64\."):
        Graph.from_edges([3e9], [1], 4_000_000)
    with pytest.raises(TypeError, match=r"pad: n_edges must be an int; got float"):
        jgrad.pad(Graph.from_edges([0], [1], 2), 4, 1e13)


def test_indices_beyond_int32_are_out_of_range_at_the_largest_n_nodes():
    n = 2**31 - 1
    g = Graph.from_edges([n - 1], [0], n)  # the largest index that fits
    assert g.senders.tolist() == [n - 1] and g.n_nodes == n
    with pytest.raises(ValueError, match=r"senders\[0\]=2147483647\); expected 0 <= index < n_nodes=2147483647"):
        Graph.from_edges([n], [0], n)


def test_from_edge_index_refuses_an_inferred_n_nodes_beyond_int32():
    with pytest.raises(ValueError, match=r"^Graph\.from_edges: n_nodes is too large for int32 indexing; got "
                                         r"3000000001"):
        Graph.from_edge_index(np.array([[3_000_000_000], [0]], np.int64))


def test_batch_refuses_a_total_node_count_beyond_int32():
    g = Graph.from_edges([], [], BIG)
    assert jgrad.batch([g]).n_nodes == BIG
    with pytest.raises(ValueError, match=r"^batch: n_nodes is too large for int32 indexing; got 4500000000 \(the "
                                         r"sum over 3 graphs\), expected n_nodes <= " + LIMIT + "$"):
        jgrad.batch([g, g, g])


def test_batch_offsets_near_the_limit_stay_exact():
    big = Graph.from_edges([BIG - 1], [0], BIG)
    small = Graph.from_edges([0], [1], 2)
    b = jgrad.batch([big, small])
    assert b.senders.tolist() == [BIG - 1, BIG] and b.receivers.tolist() == [0, BIG + 1]


def test_pad_refuses_sizes_beyond_int32_with_a_value_error_not_a_memory_error():
    g = Graph.from_edges([0], [1], 2)
    with pytest.raises(ValueError, match=r"^pad: n_edges is too large for int32 indexing; got 10000000000000, "
                                         r"expected n_edges <= " + LIMIT + "$"):
        jgrad.pad(g, 4, 10**13)
    with pytest.raises(ValueError, match=r"^pad: n_nodes is too large for int32 indexing; got 2147483648"):
        jgrad.pad(g, 2**31, 4)


def test_add_self_loops_refuses_an_edge_count_beyond_int32():
    g = Graph(senders=jnp.zeros(2, jnp.int32), receivers=jnp.zeros(2, jnp.int32), n_nodes=2**31 - 2)
    with pytest.raises(ValueError, match=r"^add_self_loops: n_edges is too large for int32 indexing; got "
                                         r"2147483648 \(2 edges \+ 2147483646 loops\)"):
        add_self_loops(g)


def test_to_undirected_checks_indices_first():
    g = Graph(senders=jnp.array([0, 3]), receivers=jnp.array([1, 0]), n_nodes=2)
    with pytest.raises(ValueError, match=r"^to_undirected: the graph has indices out of range: 1 senders"):
        to_undirected(g)


def test_segment_ops_refuse_a_segment_count_beyond_int32_before_allocating():
    data, ids = jnp.ones(3), jnp.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"^segment_sum: num_segments is too large for int32 indexing; got "
                                         r"3000000000, expected num_segments <= 2\*\*31 - 1 = 2147483647\.$"):
        jgrad.ops.segment_sum(data, ids, num_segments=3_000_000_000)
    with pytest.raises(ValueError, match=r"segment_softmax: num_segments is too large"):
        jgrad.ops.segment_softmax(data, ids, num_segments=2**31)
