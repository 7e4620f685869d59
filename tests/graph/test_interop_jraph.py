"""jraph interop: GraphsTuple round trips (single, batched, padded), checked against jraph itself."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

import jgrad
from jgrad import Graph
from jgrad.graph import from_jraph, to_jraph


def _tuple(seed: int, n: int, e: int, weighted: bool = True) -> jraph.GraphsTuple:
    rng = np.random.default_rng(seed)
    return jraph.GraphsTuple(
        nodes=rng.normal(size=(n, 2)).astype(np.float32),
        edges=rng.uniform(0.5, 2.0, e).astype(np.float32) if weighted else None,
        senders=rng.integers(0, n, e).astype(np.int32),
        receivers=rng.integers(0, n, e).astype(np.int32),
        globals=np.zeros((1, 1), np.float32),
        n_node=np.array([n], np.int32),
        n_edge=np.array([e], np.int32),
    )


def _assert_same_tuple(a: jraph.GraphsTuple, b: jraph.GraphsTuple) -> None:
    for name in jraph.GraphsTuple._fields:
        left, right = getattr(a, name), getattr(b, name)
        assert (left is None) == (right is None), name
        if left is not None:
            np.testing.assert_array_equal(np.asarray(left), np.asarray(right), err_msg=name)


def test_from_jraph_of_one_graph_is_a_single_graph_with_the_same_direction():
    gt = _tuple(0, n=5, e=7)
    g = from_jraph(gt)
    assert g.n_nodes == 5 and g.n_node_per_graph is None
    np.testing.assert_array_equal(g.senders, gt.senders)
    np.testing.assert_array_equal(g.edge_weight, gt.edges)
    # jraph's own sum aggregation at receivers equals jgrad's spmm.
    expected = jax.ops.segment_sum(gt.nodes[gt.senders] * gt.edges[:, None], gt.receivers, 5)
    np.testing.assert_allclose(jgrad.ops.spmm(g, jnp.asarray(gt.nodes), g.edge_weight), expected, rtol=1e-6)


def test_jraph_round_trip_of_one_graph():
    gt = _tuple(1, n=4, e=6)
    _assert_same_tuple(to_jraph(from_jraph(gt), nodes=gt.nodes, globals=gt.globals), gt)


def test_jraph_batch_becomes_a_jgrad_batch_and_back():
    parts = [_tuple(2, n=3, e=4), _tuple(3, n=5, e=2), _tuple(4, n=2, e=0)]
    batched = jraph.batch(parts)
    g = from_jraph(batched)
    expected = jgrad.batch([from_jraph(p) for p in parts])
    for name in ("senders", "receivers", "edge_weight", "n_node_per_graph", "n_edge_per_graph"):
        np.testing.assert_array_equal(getattr(g, name), getattr(expected, name))
    back = to_jraph(g, nodes=batched.nodes, globals=batched.globals)
    _assert_same_tuple(back, batched)
    for original, restored in zip(parts, jraph.unbatch(back)):
        _assert_same_tuple(restored, original)


def test_jraph_padding_maps_to_jgrad_masks_and_back():
    batched = jraph.batch([_tuple(5, n=3, e=4), _tuple(6, n=2, e=3)])
    padded = jraph.pad_with_graphs(batched, n_node=8, n_edge=10, n_graph=3)
    g = from_jraph(padded, padded=True)
    np.testing.assert_array_equal(g.graph_mask, jraph.get_graph_padding_mask(padded))
    np.testing.assert_array_equal(g.node_mask, jraph.get_node_padding_mask(padded))
    np.testing.assert_array_equal(g.edge_mask, jraph.get_edge_padding_mask(padded))
    # jgrad.pad lays out the same padding as jraph.pad_with_graphs (one padding graph).
    ours = jgrad.pad(from_jraph(batched), n_nodes=8, n_edges=10)
    _assert_same_tuple(to_jraph(ours, nodes=padded.nodes, globals=padded.globals[:3]),
                       jraph.pad_with_graphs(batched, n_node=8, n_edge=10, n_graph=3))
    assert [p.n_nodes for p in jgrad.unbatch(g)] == [3, 2]


def test_pad_with_n_graphs_lays_out_the_empty_graphs_of_jraph_pad_with_graphs():
    batched = jraph.batch([_tuple(10, n=3, e=4), _tuple(11, n=2, e=3)])
    expected = jraph.pad_with_graphs(batched, n_node=8, n_edge=10, n_graph=5)
    ours = jgrad.pad(from_jraph(batched), n_nodes=8, n_edges=10, n_graphs=5)
    _assert_same_tuple(to_jraph(ours, nodes=expected.nodes, globals=expected.globals), expected)
    back = from_jraph(expected, padded=True)
    for name in ("graph_mask", "node_mask", "edge_mask", "n_node_per_graph", "n_edge_per_graph"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ours, name), err_msg=name)


def test_to_jraph_regroups_edges_appended_after_batching():
    b = jgrad.batch([Graph.from_edges([0], [1], n_nodes=2), Graph.from_edges([1], [0], n_nodes=2)])
    looped = b.add_self_loops()  # the 4 loops are appended after both graphs' edges
    gt = to_jraph(looped)
    assert gt.n_edge.tolist() == [3, 3]
    assert gt.senders.tolist() == [0, 0, 1, 3, 2, 3] and gt.receivers.tolist() == [1, 0, 1, 2, 2, 3]
    assert [len(p.senders) for p in jraph.unbatch(gt)] == [3, 3]


def test_to_jraph_is_jit_safe():
    g = jgrad.batch([from_jraph(_tuple(7, n=3, e=3)), from_jraph(_tuple(8, n=2, e=2))])
    _assert_same_tuple(jax.jit(to_jraph)(g), to_jraph(g))


def test_from_jraph_refuses_edge_features_that_are_not_one_float_array():
    gt = _tuple(9, n=3, e=2)
    with pytest.raises(TypeError, match=r"^from_jraph: edges must be None or one floating-point array of edge "
                                        r"weights; got dict\. Pass graphs\._replace\(edges=None\)"):
        from_jraph(gt._replace(edges={"bond": gt.edges}))
    with pytest.raises(TypeError, match=r"got dtype int32"):
        from_jraph(gt._replace(edges=np.zeros(2, np.int32)))


def test_from_jraph_refuses_counts_and_edges_that_disagree():
    gt = jraph.batch([_tuple(10, n=2, e=1), _tuple(11, n=2, e=1)])
    with pytest.raises(ValueError, match=r"^from_jraph: nodes must have 4 rows, one per node; got a leaf of "
                                         r"shape \(3, 2\)"):
        from_jraph(gt._replace(nodes=gt.nodes[:3]))
    crossing = gt._replace(senders=np.array([0, 0], np.int32))  # edge 1 belongs to graph 1, sender in graph 0
    with pytest.raises(ValueError, match=r"^from_jraph: 1 edge\(s\) have senders outside their graph \(first: edge 1 "
                                         r"of graph 1 has senders\[1\]=0\); expected node ids in \[2, 4\)\."):
        from_jraph(crossing)
    with pytest.raises(ValueError, match=r"padded=True needs a padding graph with at least one node"):
        from_jraph(_tuple(12, n=2, e=1), padded=True)


def test_from_jraph_refuses_inconsistent_counts_and_traced_counts():
    gt = _tuple(13, n=3, e=2)
    with pytest.raises(ValueError, match=r"^from_jraph: n_node and n_edge must be non-negative with one entry per "
                                         r"graph; got shapes \(1,\) and \(2,\)\.$"):
        from_jraph(gt._replace(n_edge=np.array([1, 1], np.int32)))
    with pytest.raises(ValueError, match=r"^from_jraph: senders must have sum\(n_edge\) = 3 entries; got shape \(2,\)"):
        from_jraph(gt._replace(n_edge=np.array([3], np.int32)))
    with pytest.raises(TypeError, match=r"^from_jraph: n_node must be concrete \(it fixes the static node and edge "
                                        r"counts\); got a traced value"):
        jax.jit(lambda t: from_jraph(t).senders)(gt._replace(globals=None))


def test_to_jraph_rejects_out_of_range_indices_when_concrete():
    bad = Graph(senders=jnp.array([0, 2]), receivers=jnp.array([1, 0]), n_nodes=2)
    with pytest.raises(ValueError, match=r"^to_jraph: the graph has indices out of range: 1 senders out of range "
                                         r"\(senders\[1\]=2\)"):
        to_jraph(bad)


def test_to_jraph_rejects_per_graph_counts_that_do_not_add_up():
    b = jgrad.batch([Graph.from_edges([0], [1], n_nodes=2)] * 2)
    bad = dataclasses.replace(b, n_node_per_graph=jnp.array([2, 1], jnp.int32))
    with pytest.raises(ValueError, match=r"^to_jraph: n_node_per_graph must be non-negative and add up to n_nodes; "
                                         r"got sum 3, expected 4\.$"):
        to_jraph(bad)
