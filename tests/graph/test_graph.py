"""The Graph pytree: transforms (jit, vmap, grad), dense conversion and its convention, degrees."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from graph_strategies import manual_aggregate
from jax.test_util import check_grads

import jgrad
from jgrad import Graph


def _cycle(weighted: bool = False) -> Graph:
    weight = np.array([1.0, 2.0, 3.0], np.float32) if weighted else None
    return Graph.from_edges([0, 1, 2], [1, 2, 0], n_nodes=3, edge_weight=weight)


def _random_graph(rng: np.random.Generator, n_nodes: int = 6, n_edges: int = 14, weighted=True) -> Graph:
    senders = rng.integers(0, n_nodes, n_edges)
    receivers = rng.integers(0, n_nodes, n_edges)
    weight = rng.uniform(0.5, 2.0, n_edges).astype(np.float32) if weighted else None
    return Graph.from_edges(senders, receivers, n_nodes, edge_weight=weight)


# --------------------------------------------------------------------------------------------------
# Pytree behaviour
# --------------------------------------------------------------------------------------------------
def test_graph_flattens_to_arrays_with_n_nodes_in_the_treedef():
    g = _cycle(weighted=True)
    leaves, treedef = jax.tree.flatten(g)
    assert len(leaves) == 3  # senders, receivers, edge_weight; unset masks are empty subtrees
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert rebuilt.n_nodes == 3
    np.testing.assert_array_equal(rebuilt.to_dense(), g.to_dense())
    other = Graph.from_edges([0, 1, 2], [1, 2, 0], n_nodes=4, edge_weight=np.ones(3, np.float32))
    assert jax.tree.structure(other) != treedef


def test_from_edges_stores_int32_indices_and_repr_summarises():
    g = Graph.from_edges(np.array([0, 1], np.int64), np.array([1, 0], np.uint8), n_nodes=2)
    assert g.senders.dtype == jnp.int32 and g.receivers.dtype == jnp.int32
    assert (g.n_nodes, g.n_edges, g.n_graphs, g.is_weighted) == (2, 2, 1, False)
    assert repr(g) == "Graph(n_nodes=2, n_edges=2, weighted=False)"


def test_from_edges_accepts_empty_edge_lists():
    g = Graph.from_edges([], [], n_nodes=3)
    assert g.n_edges == 0
    np.testing.assert_array_equal(g.to_dense(), np.zeros((3, 3)))
    np.testing.assert_array_equal(g.in_degree(), np.zeros(3))


@pytest.mark.parametrize("weight", [[3], np.array([1], np.int8), jnp.array([True])], ids=["list", "int8", "bool"])
def test_from_edges_refuses_integer_and_boolean_weights(weight):
    with pytest.raises(TypeError, match=r"^Graph\.from_edges: edge_weight must have a floating-point dtype; got "
                                        r"(int64|int8|bool), expected float16/32/64\. .*astype\('float32'\)"):
        Graph.from_edges([0], [1], n_nodes=2, edge_weight=weight)


def test_with_edge_weight_refuses_integer_weights_even_under_jit():
    g = _cycle()
    with pytest.raises(TypeError, match=r"Graph\.with_edge_weight: edge_weight must have a floating-point dtype; "
                                        r"got int32"):
        jax.jit(lambda w: g.with_edge_weight(w).to_dense())(jnp.ones(3, jnp.int32))


def test_from_dense_of_an_integer_or_boolean_matrix_gives_default_float_weights():
    g = Graph.from_dense(np.array([[0, 2], [1, 0]]))
    assert g.edge_weight.dtype == jnp.float32 and g.edge_weight.tolist() == [2.0, 1.0]
    assert Graph.from_dense(np.eye(2, dtype=bool)).edge_weight.dtype == jnp.float32


def test_from_edges_given_a_2_by_e_edge_index_names_the_fix():
    edge_index = np.array([[0, 1, 2], [1, 2, 0]])
    fix = r"Use Graph\.from_edge_index\(edge_index, n_nodes\) or Graph\.from_edges\(\*edge_index, n_nodes\)\.$"
    with pytest.raises(TypeError, match=r"^Graph\.from_edges: senders has shape \(2, 3\), a \(2, E\) edge_index; "
                                        r"got receivers=None, expected two \(E,\) arrays\. " + fix):
        Graph.from_edges(edge_index, n_nodes=3)
    with pytest.raises(TypeError, match=fix):
        Graph.from_edges(edge_index, None, 3)
    g = Graph.from_edges(*edge_index, 3)
    assert g.senders.tolist() == [0, 1, 2] and g.receivers.tolist() == [1, 2, 0]


def test_from_edges_without_receivers_or_n_nodes_says_which_is_missing():
    with pytest.raises(TypeError, match=r"Graph\.from_edges: receivers is required; got None"):
        Graph.from_edges([0, 1])
    with pytest.raises(TypeError, match=r"Graph\.from_edges: n_nodes must be an int; got None, "
                                        r"expected the node count N"):
        Graph.from_edges([0, 1], [1, 0])


# --------------------------------------------------------------------------------------------------
# from_edge_index (PyG's (2, E) convention)
# --------------------------------------------------------------------------------------------------
def test_from_edge_index_reads_row_0_as_senders_and_infers_n_nodes():
    g = Graph.from_edge_index(np.array([[0, 3, 1], [1, 0, 3]]), edge_weight=np.array([1.0, 2.0, 3.0], np.float32))
    assert (g.n_nodes, g.senders.tolist(), g.receivers.tolist()) == (4, [0, 3, 1], [1, 0, 3])
    assert g.to_dense()[0, 3] == 2.0  # A[v, u] weighs u -> v
    assert Graph.from_edge_index(jnp.array([[0], [1]]), n_nodes=5).n_nodes == 5


def test_from_edge_index_without_edges_has_no_nodes_unless_told():
    assert Graph.from_edge_index(np.zeros((2, 0), np.int64)).n_nodes == 0
    assert Graph.from_edge_index([[], []], n_nodes=3).n_nodes == 3


def test_from_edge_index_rejects_other_shapes_and_hints_at_the_transpose():
    with pytest.raises(ValueError, match=r"^Graph\.from_edge_index: edge_index must have shape \(2, E\); "
                                         r"got shape \(3, 2\)\. Transpose it: edge_index\.T\.$"):
        Graph.from_edge_index(np.zeros((3, 2), np.int32))
    with pytest.raises(ValueError, match=r"got shape \(4,\)\.$"):
        Graph.from_edge_index(np.zeros(4, np.int32))


def test_from_edge_index_validates_like_from_edges():
    with pytest.raises(ValueError, match=r"receivers out of range \(receivers\[0\]=5\); expected 0 <= index < "
                                         r"n_nodes=3"):
        Graph.from_edge_index(np.array([[0], [5]]), n_nodes=3)
    with pytest.raises(ValueError, match=r"senders out of range \(senders\[0\]=-1\)"):
        Graph.from_edge_index(np.array([[-1], [0]]))
    with pytest.raises(TypeError, match=r"Graph\.from_edge_index: edge_index must have an integer dtype; got float64"):
        Graph.from_edge_index(np.array([[0.0], [1.0]]))


def test_from_edge_index_needs_n_nodes_under_jit():
    edge_index = jnp.array([[0, 1], [1, 0]])
    with pytest.raises(TypeError, match=r"n_nodes=None needs concrete indices to infer N; got a traced edge_index"):
        jax.jit(lambda e: Graph.from_edge_index(e).senders)(edge_index)
    out = jax.jit(lambda e: Graph.from_edge_index(e, n_nodes=2).in_degree())(edge_index)
    np.testing.assert_array_equal(out, [1.0, 1.0])


def test_graph_is_a_jit_argument_and_changing_n_nodes_recompiles():
    traces = []

    @jax.jit
    def f(g):
        traces.append(g.n_nodes)
        return g.in_degree()

    g3 = Graph.from_edges([0, 1], [1, 2], n_nodes=3)
    np.testing.assert_array_equal(f(g3), [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(f(Graph.from_edges([2, 2], [0, 1], n_nodes=3)), [1.0, 1.0, 0.0])
    assert traces == [3]  # same structure, new index values: no retrace
    np.testing.assert_array_equal(f(Graph.from_edges([0, 1], [1, 2], n_nodes=4)), [0.0, 1.0, 1.0, 0.0])
    assert traces == [3, 4]


def test_n_nodes_is_static_inside_jit():
    @jax.jit
    def f(g):
        assert isinstance(g.n_nodes, int)
        return jnp.zeros((g.n_nodes,))

    assert f(_cycle()).shape == (3,)


def test_vmap_over_edge_weights_with_a_graph_of_axes():
    g = _cycle(weighted=True)
    w = jnp.arange(12, dtype=jnp.float32).reshape(4, 3) + 1
    batched = dataclasses.replace(g, edge_weight=w)
    in_axes = dataclasses.replace(jax.tree.map(lambda _: None, g), edge_weight=0)
    out = jax.vmap(lambda graph: graph.to_dense(), in_axes=(in_axes,))(batched)
    assert out.shape == (4, 3, 3)
    for b in range(4):
        np.testing.assert_allclose(out[b], g.with_edge_weight(w[b]).to_dense())


def test_vmap_over_edge_weights_with_tree_map_in_axes():
    g = _cycle(weighted=True)
    w = jnp.arange(6, dtype=jnp.float32).reshape(2, 3)
    batched = dataclasses.replace(g, edge_weight=w)
    in_axes = jax.tree.map(lambda leaf: 0 if jnp.issubdtype(leaf.dtype, jnp.floating) else None, batched)
    out = jax.vmap(lambda graph: graph.in_degree(), in_axes=(in_axes,))(batched)
    expected = np.stack([g.with_edge_weight(w[b]).in_degree() for b in range(2)])
    np.testing.assert_allclose(out, expected)


def test_vmap_over_weights_closing_over_the_graph():
    g = _cycle()
    w = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    out = jax.vmap(lambda weight: g.with_edge_weight(weight).out_degree())(w)
    np.testing.assert_allclose(out, w)  # each node sends exactly one edge in the cycle


def test_grad_of_weighted_in_degree_sum_is_one_per_edge():
    g = _random_graph(np.random.default_rng(0))
    grad = jax.grad(lambda w: g.with_edge_weight(w).in_degree().sum())(g.edge_weight)
    np.testing.assert_allclose(grad, np.ones(g.n_edges))


def test_grad_with_respect_to_a_graph_is_a_graph_of_weight_gradients():
    g = _cycle(weighted=True)
    x = jnp.array([1.0, 10.0, 100.0])
    grad = jax.grad(lambda graph: (graph.to_dense() @ x).sum(), allow_int=True)(g)
    assert isinstance(grad, Graph) and grad.n_nodes == 3
    np.testing.assert_allclose(grad.edge_weight, x[g.senders])  # d/dw_e of sum_e w_e x[s_e]


def test_grad_with_respect_to_a_graph_needs_allow_int_for_the_index_leaves():
    with pytest.raises(TypeError, match="allow_int"):
        jax.grad(lambda graph: graph.to_dense().sum())(_cycle(weighted=True))


def test_grad_is_zero_for_padding_edges():
    g = jgrad.pad(_cycle(weighted=True), n_nodes=5, n_edges=6)
    grad = jax.grad(lambda w: g.with_edge_weight(w).in_degree().sum())(g.edge_weight)
    np.testing.assert_array_equal(grad, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0])


def test_unweighted_in_degree_has_zero_gradient():
    g = _cycle(weighted=True)
    grad = jax.grad(lambda w: g.with_edge_weight(w).in_degree(weighted=False).sum())(g.edge_weight)
    np.testing.assert_array_equal(grad, np.zeros(3))


# --------------------------------------------------------------------------------------------------
# Dense conversion and the A[v, u] convention
# --------------------------------------------------------------------------------------------------
def test_to_dense_entry_v_u_is_the_weight_of_edge_u_to_v():
    g = Graph.from_edges([0], [2], n_nodes=3, edge_weight=[5.0])
    dense = np.asarray(g.to_dense())
    assert dense[2, 0] == 5.0
    assert dense.sum() == 5.0


@pytest.mark.parametrize("weighted", [True, False], ids=["weighted", "unweighted"])
def test_to_dense_matmul_equals_manual_aggregation(weighted):
    rng = np.random.default_rng(1)
    g = _random_graph(rng, weighted=weighted)
    x = rng.normal(size=(g.n_nodes, 3)).astype(np.float32)
    np.testing.assert_allclose(g.to_dense() @ x, manual_aggregate(g, x), rtol=1e-5, atol=1e-5)


def test_to_dense_agrees_across_eager_jit_and_vmap(variant):
    g = _random_graph(np.random.default_rng(2))
    out = variant(lambda graph: graph.to_dense(), g)
    np.testing.assert_allclose(out, g.to_dense())


def test_to_dense_of_multi_head_weights_has_a_trailing_head_axis():
    rng = np.random.default_rng(3)
    g = _random_graph(rng, weighted=False)
    w = rng.uniform(size=(g.n_edges, 4)).astype(np.float32)
    dense = g.with_edge_weight(w).to_dense()
    assert dense.shape == (g.n_nodes, g.n_nodes, 4)
    for h in range(4):
        np.testing.assert_allclose(dense[..., h], g.with_edge_weight(w[:, h]).to_dense(), rtol=1e-6)


def test_to_dense_adds_up_duplicate_edges():
    g = Graph.from_edges([0, 0, 0], [1, 1, 1], n_nodes=2, edge_weight=[1.0, 2.0, 4.0])
    np.testing.assert_array_equal(g.to_dense(), [[0.0, 0.0], [7.0, 0.0]])
    np.testing.assert_array_equal(Graph.from_edges([0, 0], [1, 1], n_nodes=2).to_dense(), [[0, 0], [2, 0]])


def test_to_dense_ignores_padding_edges():
    g = _cycle(weighted=True)
    padded = jgrad.pad(g, n_nodes=5, n_edges=7)
    dense = np.asarray(padded.to_dense())
    np.testing.assert_array_equal(dense[:3, :3], g.to_dense())
    np.testing.assert_array_equal(dense[3:], 0.0)
    np.testing.assert_array_equal(dense[:, 3:], 0.0)


def test_padding_edges_count_zero_even_with_nonzero_stored_weight():
    g = Graph(senders=jnp.array([0, 1]), receivers=jnp.array([1, 1]), n_nodes=2,
              edge_weight=jnp.array([2.0, 9.0]), edge_mask=jnp.array([True, False]))
    np.testing.assert_array_equal(g.weights(), [2.0, 0.0])
    np.testing.assert_array_equal(g.to_dense(), [[0.0, 0.0], [2.0, 0.0]])
    np.testing.assert_array_equal(g.in_degree(), [0.0, 2.0])
    np.testing.assert_array_equal(g.in_degree(weighted=False), [0.0, 1.0])


def test_weights_of_an_unweighted_graph_are_ones():
    np.testing.assert_array_equal(_cycle().weights(), np.ones(3))


def test_from_dense_to_dense_round_trip():
    rng = np.random.default_rng(4)
    dense = rng.uniform(size=(7, 7)).astype(np.float32) * (rng.uniform(size=(7, 7)) < 0.4)
    g = Graph.from_dense(dense)
    assert g.n_edges == int((dense != 0).sum())
    np.testing.assert_array_equal(g.to_dense(), dense)


def test_from_dense_sorts_edges_by_receiver_then_sender():
    dense = np.array([[0.0, 2.0, 3.0], [0.0, 0.0, 0.0], [4.0, 5.0, 0.0]])
    g = Graph.from_dense(dense)
    assert g.receivers.tolist() == [0, 0, 2, 2]
    assert g.senders.tolist() == [1, 2, 0, 1]
    assert g.edge_weight.tolist() == [2.0, 3.0, 4.0, 5.0]


def test_from_dense_of_zeros_has_no_edges():
    g = Graph.from_dense(np.zeros((4, 4)))
    assert (g.n_nodes, g.n_edges) == (4, 0)


# --------------------------------------------------------------------------------------------------
# Degrees
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighted", [True, False], ids=["weighted", "unweighted"])
def test_degrees_are_row_and_column_sums_of_the_dense_adjacency(weighted):
    g = _random_graph(np.random.default_rng(5))
    dense = np.asarray(g.to_dense() if weighted else g.with_edge_weight(None).to_dense())
    np.testing.assert_allclose(g.in_degree(weighted=weighted), dense.sum(axis=1), rtol=1e-6)
    np.testing.assert_allclose(g.out_degree(weighted=weighted), dense.sum(axis=0), rtol=1e-6)


def test_degrees_of_an_unweighted_graph_count_edges():
    g = Graph.from_edges([0, 0, 1, 1], [1, 1, 2, 1], n_nodes=4)
    np.testing.assert_array_equal(g.in_degree(), [0, 3, 1, 0])
    np.testing.assert_array_equal(g.out_degree(), [2, 2, 0, 0])


def test_degrees_agree_across_eager_jit_and_vmap(variant):
    g = _random_graph(np.random.default_rng(6))
    out = variant(lambda graph: (graph.in_degree(), graph.out_degree()), g)
    np.testing.assert_allclose(out[0], g.in_degree(), rtol=1e-6)
    np.testing.assert_allclose(out[1], g.out_degree(), rtol=1e-6)


def test_degrees_of_a_graph_closed_over_by_jit_are_not_evaluated_at_compile_time(optimized):
    """Its indices are constants of the program; XLA would fold the degree sums into constants while
    compiling, which took 3-7 s per compile for GCN and SAGE models at 1.6e6 edges."""
    g = _random_graph(np.random.default_rng(7), weighted=False)
    degrees = jax.jit(lambda: (g.in_degree(), g.out_degree()))
    entry = degrees.lower().compile().as_text().split("ENTRY")[1]
    assert "f32[6]{0} constant(" not in entry, entry  # a folded degree vector would be a constant here
    np.testing.assert_array_equal(degrees()[0], g.in_degree())


def test_degrees_of_multi_head_weights_are_per_head():
    g = _cycle()
    w = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]], np.float32)
    np.testing.assert_array_equal(g.with_edge_weight(w).in_degree(), [[3.0, 30.0], [1.0, 10.0], [2.0, 20.0]])


def test_padding_edges_count_zero_in_degrees():
    g = _cycle(weighted=True)
    padded = jgrad.pad(g, n_nodes=4, n_edges=8)
    for weighted in (True, False):
        np.testing.assert_array_equal(padded.in_degree(weighted)[:3], g.in_degree(weighted))
        np.testing.assert_array_equal(padded.out_degree(weighted)[:3], g.out_degree(weighted))
        assert float(padded.in_degree(weighted)[3]) == 0.0
        assert float(padded.out_degree(weighted)[3]) == 0.0


@pytest.mark.parametrize("direction", ["in_degree", "out_degree"])
def test_weighted_degree_gradients_check_in_float64(x64, direction):
    rng = np.random.default_rng(7)
    g = _random_graph(rng, weighted=False)
    w = jnp.asarray(rng.uniform(0.5, 2.0, g.n_edges))
    assert w.dtype == jnp.float64

    def f(weight):
        deg = getattr(g.with_edge_weight(weight), direction)()
        return jnp.sum(deg**2)  # non-linear, so second-order terms are exercised

    check_grads(f, (w,), order=2, modes=("rev",))
    check_grads(f, (w,), order=1, modes=("fwd",))


def test_to_dense_gradient_checks_in_float64(x64):
    rng = np.random.default_rng(8)
    g = _random_graph(rng, n_edges=10, weighted=False)
    w = jnp.asarray(rng.uniform(0.5, 2.0, g.n_edges))
    x = jnp.asarray(rng.normal(size=(g.n_nodes,)))
    f = jax.jit(lambda weight: jnp.sum(jnp.tanh(g.with_edge_weight(weight).to_dense() @ x)))
    check_grads(f, (w,), order=2, modes=("rev",))
    check_grads(f, (w,), order=1, modes=("fwd",))


# --------------------------------------------------------------------------------------------------
# Index checks of methods on unvalidated graphs (the plain constructor does not validate)
# --------------------------------------------------------------------------------------------------
_RAW = Graph(senders=jnp.array([0, 5]), receivers=jnp.array([1, -1]), n_nodes=2)


@pytest.mark.parametrize("method", ["to_dense", "in_degree", "out_degree"])
def test_methods_that_read_indices_reject_out_of_range_edges_instead_of_dropping_them(method):
    with pytest.raises(ValueError, match=rf"^Graph\.{method}: the graph has indices out of range: 1 senders out of "
                                         r"range \(senders\[1\]=5\); .* 1 receivers out of range "
                                         r"\(receivers\[1\]=-1\)"):
        getattr(_RAW, method)()


def test_index_checks_skip_padding_edges_and_tracers():
    g = Graph(senders=jnp.array([0, 9]), receivers=jnp.array([1, 9]), n_nodes=2,
              edge_mask=jnp.array([True, False]))
    np.testing.assert_array_equal(g.in_degree(), [0.0, 1.0])  # the masked edge is not checked
    # Under jit the indices are tracers: no check (jgrad.checked does it), the scatter drops the edge.
    np.testing.assert_array_equal(jax.jit(lambda graph: graph.in_degree())(_RAW), [0.0, 1.0])


def test_node_graph_index_rejects_counts_that_do_not_add_up():
    g = dataclasses.replace(jgrad.batch([_cycle(), _cycle()]), n_node_per_graph=jnp.array([3, 2], jnp.int32))
    with pytest.raises(ValueError, match=r"Graph\.node_graph_index: n_node_per_graph must be non-negative and add "
                                         r"up to n_nodes; got \[3, 2\] \(sum 5\), expected sum 6\."):
        g.node_graph_index()


# --------------------------------------------------------------------------------------------------
# Default float dtype (x64-consistent)
# --------------------------------------------------------------------------------------------------
def test_unweighted_weights_and_degrees_are_float32_without_x64():
    g = _cycle()
    for value in (g.weights(), g.in_degree(), g.out_degree(), g.to_dense(), g.in_degree(weighted=False)):
        assert value.dtype == jnp.float32


def test_unweighted_weights_and_degrees_are_float64_under_x64(x64):
    g = _cycle()
    for value in (g.weights(), g.in_degree(), g.out_degree(), g.to_dense(), g.out_degree(weighted=False),
                  g.add_self_loops(fill=2.0).edge_weight,
                  Graph.from_edges([0, 0], [1, 1], n_nodes=2).coalesce().edge_weight):
        assert value.dtype == jnp.float64
    assert jax.jit(lambda graph: graph.in_degree())(g).dtype == jnp.float64
    assert g.weights(jnp.float32).dtype == jnp.float32  # an explicit dtype still wins


# --------------------------------------------------------------------------------------------------
# repr of a stacked graph (leading batch axes on every array)
# --------------------------------------------------------------------------------------------------
def test_repr_of_a_stacked_graph_gives_the_batch_shape_and_the_per_graph_edge_count():
    rng = np.random.default_rng(3)
    graphs = [_random_graph(rng, n_nodes=10, n_edges=30) for _ in range(4)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *graphs)
    assert stacked.senders.shape == (4, 30)
    assert repr(stacked) == "Graph(stacked (4,) graphs, each: n_nodes=10, n_edges=30, weighted=True)"
    assert stacked.n_edges == 4  # n_edges keeps reading senders.shape[0]; only the repr changed
    # The output of jax.vmap is the same stacked graph; inside the vmapped function each graph is one graph.
    seen = []

    def reweight(graph, scale):
        seen.append(repr(graph))
        return graph.with_edge_weight(graph.edge_weight * scale)

    out = jax.vmap(reweight)(stacked, jnp.arange(4.0))
    assert seen == ["Graph(n_nodes=10, n_edges=30, weighted=True)"]
    assert repr(out) == "Graph(stacked (4,) graphs, each: n_nodes=10, n_edges=30, weighted=True)"
    batched = jgrad.batch([_cycle(True), _cycle(True)])
    twice = jax.tree.map(lambda *leaves: jnp.stack(leaves), batched, batched)
    assert repr(twice) == "Graph(stacked (2,) graphs, each: n_nodes=6, n_edges=6, weighted=True, n_graphs=2)"
    assert repr(graphs[0]) == "Graph(n_nodes=10, n_edges=30, weighted=True)"
