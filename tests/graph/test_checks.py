"""Validation: every bad input raises with a message naming what is wrong; checked mode under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax.experimental.checkify import JaxRuntimeError

import jgrad
from jgrad import Graph
from jgrad.graph import bucket_size, coalesce, from_scipy, remove_self_loops, to_scipy, to_undirected


# --------------------------------------------------------------------------------------------------
# Indices
# --------------------------------------------------------------------------------------------------
def test_out_of_range_receivers_name_position_value_and_n_nodes():
    with pytest.raises(ValueError, match=r"Graph\.from_edges: 1 receivers out of range \(receivers\[2\]=5\); "
                                         r"expected 0 <= index < n_nodes=5\."):
        Graph.from_edges([0, 1, 2], [1, 2, 5], n_nodes=5)


def test_negative_senders_are_reported_as_negative():
    with pytest.raises(ValueError, match=r"senders\[1\]=-1.*Negative indices are not allowed"):
        Graph.from_edges([0, -1], [1, 0], n_nodes=3)


def test_every_index_problem_is_reported_in_one_message():
    with pytest.raises(ValueError) as info:
        Graph.from_edges([9, 0, -2], [0, 7, 1], n_nodes=3)
    message = str(info.value)
    assert "2 senders out of range (senders[0]=9, senders[2]=-2)" in message
    assert "1 receivers out of range (receivers[1]=7)" in message


def test_long_lists_of_bad_indices_are_summarised():
    with pytest.raises(ValueError, match=r"8 receivers out of range \(receivers\[0\]=4, .*receivers\[4\]=4 "
                                         r"and 3 more\)"):
        Graph.from_edges(np.zeros(8, np.int32), np.full(8, 4), n_nodes=4)


def test_int64_indices_beyond_int32_are_out_of_range_not_wrapped():
    with pytest.raises(ValueError, match=r"senders\[0\]=4294967297"):
        Graph.from_edges(np.array([2**32 + 1]), np.array([0]), n_nodes=5)


@pytest.mark.parametrize("bad", [[0.0, 1.0], np.array([0, 1], np.float32), np.array([True, False])],
                         ids=["float-list", "float32", "bool"])
def test_non_integer_index_dtype_is_a_type_error(bad):
    with pytest.raises(TypeError, match=r"Graph\.from_edges: senders must have an integer dtype; got \w+\."):
        Graph.from_edges(bad, [0, 1], n_nodes=2)


def test_two_dimensional_senders_are_rejected():
    with pytest.raises(ValueError, match=r"senders must be 1-D \(E,\); got shape \(2, 1\)"):
        Graph.from_edges([[0], [1]], [0, 1], n_nodes=2)


def test_scalar_receivers_are_rejected():
    with pytest.raises(ValueError, match=r"receivers must be 1-D \(E,\); got shape \(\)"):
        Graph.from_edges([0], 0, n_nodes=2)


def test_mismatched_senders_and_receivers_lengths():
    with pytest.raises(ValueError, match=r"senders and receivers must have the same length; got 3 senders "
                                         r"and 2 receivers"):
        Graph.from_edges([0, 1, 0], [1, 0], n_nodes=2)


def test_index_dtype_and_rank_are_checked_while_tracing():
    with pytest.raises(TypeError, match="integer dtype"):
        jax.jit(lambda s: Graph.from_edges(s, s, n_nodes=2))(jnp.zeros(2))


def test_index_values_are_not_checked_while_tracing():
    out = jax.jit(lambda s: Graph.from_edges(s, s, n_nodes=2).senders)(jnp.array([0, 9]))
    np.testing.assert_array_equal(out, [0, 9])


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------
def test_edge_weight_length_mismatch():
    with pytest.raises(ValueError, match=r"edge_weight must have one row per edge; got shape \(2,\), "
                                         r"expected \(3,\) or \(3, \.\.\.\)"):
        Graph.from_edges([0, 1, 0], [1, 0, 0], n_nodes=2, edge_weight=[1.0, 2.0])


def test_scalar_edge_weight_is_rejected():
    with pytest.raises(ValueError, match=r"edge_weight must have one row per edge; got shape \(\)"):
        Graph.from_edges([0], [1], n_nodes=2, edge_weight=1.0)


def test_non_finite_edge_weight_names_the_position():
    with pytest.raises(ValueError, match=r"edge_weight must be finite; got 2 non-finite value\(s\) "
                                         r"\(edge_weight\[1\]=nan, edge_weight\[2\]=inf\)"):
        Graph.from_edges([0, 1, 0], [1, 0, 0], n_nodes=2, edge_weight=[1.0, np.nan, np.inf])


def test_non_finite_multi_head_weight_names_row_and_head():
    w = np.ones((2, 3), np.float32)
    w[1, 2] = -np.inf
    with pytest.raises(ValueError, match=r"edge_weight\[\(1, 2\)\]=-inf"):
        Graph.from_edges([0, 1], [1, 0], n_nodes=2, edge_weight=w)


def test_non_numeric_edge_weight_is_a_type_error():
    with pytest.raises(TypeError, match=r"edge_weight must be a float array; got dtype complex64"):
        Graph.from_edges([0], [1], n_nodes=2, edge_weight=np.array([1j], np.complex64))


def test_with_edge_weight_checks_the_leading_dimension():
    g = Graph.from_edges([0, 1], [1, 0], n_nodes=2)
    with pytest.raises(ValueError, match=r"Graph\.with_edge_weight: .*got shape \(3,\), expected \(2, \.\.\.\)"):
        g.with_edge_weight(jnp.ones(3))


# --------------------------------------------------------------------------------------------------
# n_nodes and dense input
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [3.0, "3", True, None], ids=["float", "str", "bool", "none"])
def test_n_nodes_must_be_an_int(bad):
    with pytest.raises(TypeError, match=r"Graph\.from_edges: n_nodes must be an int; got "):
        Graph.from_edges([0], [0], n_nodes=bad)


def test_n_nodes_accepts_numpy_integers():
    assert Graph.from_edges([0], [0], n_nodes=np.int64(2)).n_nodes == 2


def test_n_nodes_must_be_non_negative():
    with pytest.raises(ValueError, match=r"n_nodes must be non-negative; got -1"):
        Graph.from_edges([], [], n_nodes=-1)


def test_traced_n_nodes_asks_for_a_static_argument():
    with pytest.raises(TypeError, match=r"n_nodes must be a static Python int, not a traced value"
                                        r".*static_argnames"):
        jax.jit(lambda n: Graph.from_edges([0], [0], n_nodes=n))(3)


def test_from_dense_rejects_a_non_square_matrix():
    with pytest.raises(ValueError, match=r"Graph\.from_dense: adjacency must be a square N x N matrix; "
                                         r"got shape \(2, 3\)"):
        Graph.from_dense(np.zeros((2, 3)))


def test_from_dense_rejects_a_non_finite_matrix():
    with pytest.raises(ValueError, match=r"adjacency must be finite; got 1 non-finite entries"):
        Graph.from_dense(np.array([[0.0, np.nan], [0.0, 0.0]]))


def test_from_dense_under_jit_is_a_clear_type_error():
    with pytest.raises(TypeError, match=r"Graph\.from_dense: needs a concrete matrix"):
        jax.jit(Graph.from_dense)(jnp.eye(2))


# --------------------------------------------------------------------------------------------------
# Batching, padding, buckets, interop
# --------------------------------------------------------------------------------------------------
def test_pad_to_smaller_sizes_reports_both_problems():
    g = Graph.from_edges([0, 1, 2], [1, 2, 0], n_nodes=3)
    with pytest.raises(ValueError, match=r"pad: n_nodes=2 is smaller than the graph's 3 nodes\. "
                                         r"n_edges=1 is smaller than the graph's 3 edges\."):
        jgrad.pad(g, n_nodes=2, n_edges=1)


def test_pad_edges_without_a_padding_node():
    g = Graph.from_edges([0], [1], n_nodes=2)
    with pytest.raises(ValueError, match=r"padding 2 edges needs at least one padding node; got n_nodes=2, "
                                         r"expected > 2\. Use jgrad\.graph\.pad_to_bucket, which "
                                         r"reserves one\.$"):
        jgrad.pad(g, n_nodes=2, n_edges=3)


def test_pad_names_the_bad_argument():
    g = Graph.from_edges([0], [1], n_nodes=2)
    with pytest.raises(TypeError, match=r"pad: n_edges must be an int; got float 3\.0"):
        jgrad.pad(g, n_nodes=3, n_edges=3.0)
    with pytest.raises(ValueError, match=r"pad: n_nodes must be non-negative; got -3"):
        jgrad.pad(g, n_nodes=-3, n_edges=3)


def test_pad_n_graphs_must_leave_room_for_a_padding_graph():
    b = jgrad.batch([Graph.from_edges([0], [1], n_nodes=2)] * 3)
    for n_graphs in (3, 2, 0):
        with pytest.raises(ValueError, match=rf"^pad: n_graphs={n_graphs} leaves no room for a padding graph after "
                                             rf"the graph's 3 graph\(s\); expected n_graphs > 3\.$"):
            jgrad.pad(b, n_nodes=8, n_edges=8, n_graphs=n_graphs)
    with pytest.raises(ValueError, match=r"^pad: n_nodes=5 is smaller than the graph's 6 nodes\. n_graphs=1 leaves "
                                         r"no room"):
        jgrad.pad(b, n_nodes=5, n_edges=8, n_graphs=1)
    with pytest.raises(ValueError, match=r"^pad: padding 2 edges needs at least one padding node"):
        jgrad.pad(b, n_nodes=6, n_edges=5, n_graphs=5)  # empty padding graphs cannot hold edges
    with pytest.raises(TypeError, match=r"^pad: n_graphs must be an int; got float 5\.0"):
        jgrad.pad(b, n_nodes=8, n_edges=8, n_graphs=5.0)
    with pytest.raises(TypeError, match=r"^pad: n_graphs must be an int; got bool True"):
        jgrad.pad(b, n_nodes=8, n_edges=8, n_graphs=True)
    with pytest.raises(TypeError, match=r"positional"):
        jgrad.pad(b, 8, 8, 5)  # keyword-only


def test_pad_to_bucket_names_a_bad_graph_count():
    g = jgrad.batch([Graph.from_edges([0], [1], n_nodes=2)] * 3)
    with pytest.raises(ValueError, match=r"^pad_to_bucket: n_graphs must be None, an int or 'bucket'; "
                                         r"got 'buckets'\.$"):
        jgrad.graph.pad_to_bucket(g, n_graphs="buckets")
    with pytest.raises(ValueError, match=r"^pad: n_graphs=3 leaves no room for a padding graph"):
        jgrad.graph.pad_to_bucket(g, n_graphs=3)


def test_batch_of_nothing():
    with pytest.raises(ValueError, match=r"batch: needs at least one graph; got an empty sequence"):
        jgrad.batch([])


def test_batch_of_mixed_weighted_and_unweighted_graphs_names_the_unweighted_ones():
    weighted = Graph.from_edges([0], [1], n_nodes=2, edge_weight=[2.0])
    plain = Graph.from_edges([0], [1], n_nodes=2)
    with pytest.raises(ValueError, match=r"all weighted or all unweighted; graphs \[1, 2\] have no edge_weight"):
        jgrad.batch([weighted, plain, plain])


def test_batch_of_a_non_graph_is_a_type_error():
    with pytest.raises(TypeError, match=r"batch: graphs\[0\] is a ndarray, expected a jgrad\.Graph"):
        jgrad.batch([np.zeros(2)])


def test_bucket_size_growth_must_exceed_one():
    with pytest.raises(ValueError, match=r"bucket_size: growth must be > 1; got 1\.0"):
        bucket_size(10, growth=1.0)


def test_from_scipy_rejects_a_non_square_matrix():
    with pytest.raises(ValueError, match=r"from_scipy: matrix must be square N x N; got shape \(2, 3\)"):
        from_scipy(sp.csr_matrix(np.zeros((2, 3))))


def test_to_scipy_needs_scalar_weights():
    g = Graph.from_edges([0], [1], n_nodes=2, edge_weight=np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"to_scipy: needs scalar edge weights; "
                                         r"got edge_weight of shape \(1, 2\)"):
        to_scipy(g)


@pytest.mark.parametrize("transform", [coalesce, remove_self_loops, to_undirected, jgrad.batch, jgrad.unbatch],
                         ids=["coalesce", "remove_self_loops", "to_undirected", "batch", "unbatch"])
def test_host_side_transforms_under_jit_are_clear_type_errors(transform):
    g = jgrad.batch([Graph.from_edges([0], [1], n_nodes=2)] * 2)
    arg = [g] if transform is jgrad.batch else g
    with pytest.raises(TypeError, match=r"works on concrete arrays only, because its output size depends on "
                                        r"the values; call it outside jax\.jit"):
        jax.jit(lambda x: transform(x).senders if transform is not jgrad.unbatch else transform(x)[0].senders)(arg)


# --------------------------------------------------------------------------------------------------
# Checked mode
# --------------------------------------------------------------------------------------------------
def test_plain_jit_does_not_catch_an_out_of_range_index_but_checked_does():
    g = Graph(senders=jnp.array([0, 5]), receivers=jnp.array([1, 0]), n_nodes=2)
    jax.jit(lambda graph: graph.in_degree())(g)  # silently wrong: no check without checked mode
    with pytest.raises(JaxRuntimeError, match=r"Graph: senders\[1\]=5 is out of range; "
                                              r"expected 0 <= index < n_nodes=2"):
        jgrad.checked(lambda graph: graph.in_degree())(g)


def test_checked_catches_negative_receivers_of_a_graph_built_inside_a_transform():
    def make(receivers):  # built with the raw constructor from traced values: no eager check possible
        return Graph(senders=jnp.array([0, 1, 2]), receivers=receivers, n_nodes=3)

    g = jax.jit(make)(jnp.array([1, -1, 0]))
    with pytest.raises(JaxRuntimeError, match=r"Graph: receivers\[1\]=-1 is out of range"):
        jgrad.checked(lambda graph: graph.to_dense().sum())(g)


def test_checked_catches_non_finite_edge_weights():
    g = Graph(senders=jnp.array([0, 1]), receivers=jnp.array([1, 0]), n_nodes=2,
              edge_weight=jnp.array([1.0, jnp.inf]))
    with pytest.raises(JaxRuntimeError, match=r"Graph: edge_weight\[1\] is not finite"):
        jgrad.checked(lambda graph: graph.in_degree())(g)


def test_checked_catches_non_finite_outputs():
    g = Graph.from_edges([0], [1], n_nodes=2)

    def inverse_in_degree(graph):
        return 1.0 / graph.in_degree()  # node 0 has no incoming edge

    with pytest.raises(JaxRuntimeError, match=r"inverse_in_degree: an output is not finite"):
        jgrad.checked(inverse_in_degree)(g)


def test_checked_without_index_checks_ignores_out_of_range_indices_on_padding_edges():
    g = Graph(senders=jnp.array([0, 7]), receivers=jnp.array([1, 7]), n_nodes=2,
              edge_mask=jnp.array([True, False]))
    degree = jgrad.checked(lambda graph: graph.in_degree(), index_checks=False)
    np.testing.assert_array_equal(degree(g), [0.0, 1.0])
    # With index checks (the default) the degree's scatter reads index 7: padding edges must hold
    # in-range indices too, as jgrad.pad makes them.
    with pytest.raises(JaxRuntimeError, match=r"index 7 is out of bounds for axis 0 with size 2"):
        jgrad.checked(lambda graph: graph.in_degree())(g)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "no-jit"])
def test_checked_returns_the_value_for_a_good_graph(jit):
    g = jgrad.pad(Graph.from_edges([0, 1, 1], [1, 2, 0], n_nodes=3, edge_weight=[1.0, 2.0, 3.0]),
                  n_nodes=4, n_edges=5)
    fn = jgrad.checked(lambda graph, x: graph.to_dense() @ x, jit=jit)
    x = jnp.arange(4.0)
    np.testing.assert_allclose(fn(g, x), g.to_dense() @ x)


def test_checked_accepts_a_graph_without_edges():
    g = Graph.from_edges([], [], n_nodes=3, edge_weight=np.zeros(0, np.float32))
    np.testing.assert_array_equal(jgrad.checked(lambda graph: graph.in_degree())(g), np.zeros(3))


def test_checked_keeps_the_wrapped_function_name():
    def my_readout(graph):
        return graph.in_degree()

    assert jgrad.checked(my_readout).__name__ == "my_readout"
