"""partition_edges, ShardedGraph layout helpers, meshes and the checks of the parallel API (one device)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad.parallel import (
    data_parallel_value_and_grad,
    make_data_mesh,
    make_mesh,
    partition_edges,
    shard_batch,
    sharded_edge_softmax,
    sharded_gspmm,
    sharded_spmm,
    stack_graphs,
    stack_node_data,
)


def _graph(n=9, e=23, seed=0):
    rng = np.random.default_rng(seed)
    return jgrad.Graph.from_edges(rng.integers(0, n, e), rng.integers(0, n, e), n,
                                  edge_weight=rng.uniform(0.5, 1.5, e).astype(np.float32))


@pytest.mark.parametrize("n_shards", [1, 2, 4, 7, 30])
def test_partition_balances_edges_and_pads_with_masked_slots(n_shards):
    graph = _graph()
    sg = partition_edges(graph, n_shards)
    counts = sg.edges_per_shard()
    assert sg.senders.shape == (n_shards, -(-23 // n_shards))
    assert counts.sum() == 23 and counts.max() - counts.min() <= 1
    mask = np.asarray(sg.edge_mask)
    assert np.all(np.asarray(sg.edge_weight)[~mask] == 0)
    # Every real edge appears exactly once, with its weight.
    ids = np.asarray(sg.edge_id)[mask]
    assert sorted(ids.tolist()) == list(range(23))
    np.testing.assert_array_equal(np.asarray(sg.senders)[mask], np.asarray(graph.senders)[ids])
    np.testing.assert_array_equal(np.asarray(sg.edge_weight)[mask], np.asarray(graph.edge_weight)[ids])


def test_shard_and_unshard_edge_data_are_inverse_and_differentiable():
    graph = _graph()
    sg = partition_edges(graph, 4)
    data = jnp.arange(23.0 * 2).reshape(23, 2)
    np.testing.assert_array_equal(sg.unshard_edge_data(sg.shard_edge_data(data)), data)
    grad = jax.grad(lambda d: jnp.sum(sg.shard_edge_data(d) ** 2))(data)
    np.testing.assert_allclose(grad, 2 * data)


def test_partition_drops_padding_edges_and_handles_zero_edges():
    padded = jgrad.pad(_graph(), n_nodes=12, n_edges=40)
    sg = partition_edges(padded, 3)
    assert sg.n_edges == 23 and sg.edges_per_shard().sum() == 23
    empty = partition_edges(jgrad.Graph.from_edges(np.zeros(0, int), np.zeros(0, int), 3), 2)
    assert empty.senders.shape == (2, 1) and not np.asarray(empty.edge_mask).any()
    out = sharded_spmm(make_mesh(1), partition_edges(jgrad.Graph.from_edges([], [], 3), 1), jnp.ones((3, 2)))
    np.testing.assert_array_equal(out, np.zeros((3, 2)))


def test_partition_rejects_indices_out_of_range():
    """A Graph built without Graph.from_edges is not validated; sender 5 of a 3-node graph used to be
    clamped to node 2 by the sharded gather, a wrong result without an error."""
    bad = jgrad.Graph(senders=jnp.array([0, 5]), receivers=jnp.array([1, 2]), n_nodes=3)
    with pytest.raises(ValueError, match=r"partition_edges: the graph has indices out of range: .*senders\[1\]=5"):
        partition_edges(bad, 1)


def test_one_shard_matches_the_plain_ops():
    graph = _graph()
    mesh = make_mesh(1)
    sg = partition_edges(graph, 1).put(mesh)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(9, 3)).astype(np.float32))
    logits = jnp.linspace(-3.0, 3.0, 23)

    @jax.jit  # every op of both sides in one program: one compilation instead of one per eager op
    def sharded_and_plain(x, logits):
        sharded = [sharded_spmm(mesh, sg, x)] + [sharded_gspmm(mesh, sg, "copy_u", r, x) for r in ("mean", "max", "min")]
        plain = [jgrad.ops.spmm(graph, x)] + [jgrad.ops.gspmm(graph, "copy_u", r, x) for r in ("mean", "max", "min")]
        sharded.append(sg.unshard_edge_data(sharded_edge_softmax(mesh, sg, sg.shard_edge_data(logits))))
        plain.append(jgrad.ops.edge_softmax(graph, logits))
        return sharded, plain

    sharded, plain = sharded_and_plain(x, logits)
    for name, got, expected in zip(["spmm", "mean", "max", "min", "edge_softmax"], sharded, plain):
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=name)


def test_edge_softmax_of_a_receiver_whose_logits_are_all_minus_inf_is_zero_like_the_plain_op():
    """-inf logits mask edges out; node 2's two edges are both masked. The sharded softmax gave NaN
    there (0 / 0) and NaN gradients; jgrad.ops.edge_softmax gives 0."""
    graph = jgrad.Graph.from_edges([0, 1, 2, 0], [2, 2, 0, 0], n_nodes=3)
    mesh, sg = make_mesh(1), partition_edges(graph, 1)
    logits = jnp.array([-jnp.inf, -jnp.inf, 1.0, -jnp.inf])
    weight = jnp.array([1.0, 2.0, 3.0, 4.0])
    sharded = lambda l: sg.unshard_edge_data(sharded_edge_softmax(mesh, sg, sg.shard_edge_data(l)))
    plain = lambda l: jgrad.ops.edge_softmax(graph, l)
    got = jax.jit(lambda l: (sharded(l), jax.grad(lambda l: jnp.sum(sharded(l) * weight))(l)))(logits)
    expected = plain(logits), jax.grad(lambda l: jnp.sum(plain(l) * weight))(logits)
    np.testing.assert_array_equal(got[0], [0.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_errors_name_the_problem():
    graph = _graph()
    mesh = make_mesh(1)
    with pytest.raises(ValueError, match=r"partition_edges: n_shards must be a positive int; got 0"):
        partition_edges(graph, 0)
    with pytest.raises(ValueError, match=r"the graph has 2 edge shards but the mesh's 'edges' axis has 1 devices"):
        sharded_spmm(mesh, partition_edges(graph, 2), jnp.ones((9, 1)))
    sg = partition_edges(graph, 1)
    with pytest.raises(ValueError, match=r"sharded_gspmm: e must have the shard layout; got shape \(23,\)"):
        sharded_gspmm(mesh, sg, "u_mul_e", "sum", jnp.ones((9, 1)), jnp.ones(23))
    with pytest.raises(ValueError, match=r"u must have one row per node; got shape \(8, 1\)"):
        sharded_gspmm(mesh, sg, "copy_u", "sum", jnp.ones((8, 1)))
    with pytest.raises(ValueError, match=r"unknown reducer 'avg'"):
        sharded_gspmm(mesh, sg, "copy_u", "avg", jnp.ones((9, 1)))
    with pytest.raises(TypeError, match=r"u must be a float array; got dtype int32"):
        sharded_gspmm(mesh, sg, "copy_u", "sum", jnp.ones((9, 1), jnp.int32))
    with pytest.raises(ValueError, match=r"make_mesh: needs n_edge_shards \* n_feature_shards = 64 devices"):
        make_mesh(64)
    with pytest.raises(ValueError, match=r"shard_batch: every leaf needs the same leading batch size B divisible "
                                         r"by 1 devices; got leading sizes 2 \(batch\['b'\]\), 3 \(batch\['a'\]\)"):
        shard_batch({"a": jnp.ones((3,)), "b": jnp.ones((2,))}, make_data_mesh(1))
    # A scalar leaf: shard_map's 9-line error from inside the call before.
    value_and_grad = jax.jit(data_parallel_value_and_grad(lambda w, b: jnp.mean(b["x"] * w), make_data_mesh(1)))
    with pytest.raises(ValueError, match=r"data_parallel_value_and_grad: every leaf needs the same leading batch "
                                         r"size .*got leading sizes 4 \(batch\['x'\]\), a scalar \(batch\['s'\]\)"):
        value_and_grad(1.0, {"x": jnp.ones(4), "s": jnp.float32(1.0)})
    # These used to fail with an AttributeError or numpy's "all input arrays must have the same shape".
    with pytest.raises(TypeError, match=r"sharded_gspmm: graph must be a ShardedGraph; got Graph. Partition it first"):
        sharded_gspmm(mesh, graph, "copy_u", "sum", jnp.ones((9, 1)))
    with pytest.raises(TypeError, match=r"sharded_edge_softmax: graph must be a ShardedGraph; got Graph"):
        sharded_edge_softmax(mesh, graph, jnp.ones((1, 23)))
    padded = jgrad.pad(graph, 10, 30)
    with pytest.raises(ValueError, match=r"expected \(23, \.\.\.\)\. partition_edges drops the padding edges"):
        partition_edges(padded, 1).shard_edge_data(padded.edge_weight)
    unweighted = jgrad.Graph.from_edges([0], [1], 2)
    with pytest.raises(ValueError, match=r"stack_graphs: graphs must be all weighted or all unweighted; "
                                         r"graphs \[1\] have no"):
        stack_graphs([graph, unweighted])
    with pytest.raises(ValueError, match=r"stack_graphs: edge weights must have the same trailing shape; "
                                         r"got graphs\[0\]: \(E,\), graphs\[1\]: \(E, 2\)\.$"):
        stack_graphs([graph, unweighted.with_edge_weight(jnp.ones((1, 2)))])
    with pytest.raises(TypeError, match=r"stack_graphs \(graphs\[1\]\): graph must be a jgrad.Graph"):
        stack_graphs([graph, jnp.zeros((2, 3), jnp.int32)])
    with pytest.raises(ValueError, match=r"stack_node_data: arrays\[1\] has shape \(2, 4\); "
                                         r"expected \(3,\) after axis 0"):
        stack_node_data([np.ones((2, 3)), np.ones((2, 4))], 4)


def test_stack_graphs_pads_to_common_sizes():
    graphs = [jgrad.Graph.from_edges([0], [1], 2), jgrad.Graph.from_edges([0, 1, 2], [1, 2, 0], 3)]
    stacked = stack_graphs(graphs)
    assert stacked.senders.shape == (2, 3) and stacked.node_mask.shape == (2, 4)
    assert np.asarray(stacked.edge_mask).sum(axis=1).tolist() == [1, 3]
    out = jax.jit(jax.vmap(lambda g: jgrad.ops.spmm(g, jnp.ones((4, 1)))))(stacked)  # one compilation
    assert out[:, :, 0].tolist() == [[0, 1, 0, 0], [1, 1, 1, 0]]


@pytest.mark.parametrize("backend", ["native", "bucket"])
def test_stack_graphs_of_planned_graphs_whose_plans_differ(backend, x64):
    """One graph's edges sorted by receiver, the others' not (CSR plans with another static flag), or
    bucket tables of other shapes: the graphs still stack (native plans kept, bucket ones dropped for
    the plain path), and the vmapped sum and its gradient are each graph's own."""
    rng = np.random.default_rng(0)

    def graph(sort):
        s, r = rng.integers(0, 30, 120), rng.integers(0, 30, 120)
        order = np.lexsort((s, r)) if sort else np.arange(120)
        return jgrad.Graph.from_edges(s[order], r[order], n_nodes=30, edge_weight=rng.random(120))

    with jgrad.ops.use_backend(backend):
        graphs = [graph(True), graph(False), graph(False)]
        stacked = stack_graphs(graphs)
    assert (stacked.plan is not None) == (backend == "native")
    x = jnp.asarray(rng.normal(size=(3, 31, 4)))
    loss = lambda g, x: jnp.sum(jgrad.ops.spmm(g, x) ** 2)
    out, grad = jax.vmap(lambda g, x: (jgrad.ops.spmm(g, x), jax.grad(loss, 1)(g, x)))(stacked, x)
    for i, g in enumerate(graphs):
        dense = np.zeros((31, 31))
        np.add.at(dense, (np.asarray(g.receivers), np.asarray(g.senders)), np.asarray(g.edge_weight))
        np.testing.assert_allclose(out[i], dense @ x[i], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grad[i], 2 * dense.T @ dense @ x[i], rtol=1e-12, atol=1e-12)


def test_bfloat16_sums_run_in_float32_like_the_plain_ops():
    """A hub of 2000 in-edges: a bfloat16 running sum stalls at 256; the sharded ops sum in float32
    and return bfloat16, as jgrad.ops does."""
    graph = jgrad.Graph.from_edges(np.arange(1, 2001), np.zeros(2000, int), n_nodes=2001)
    mesh, sharded = make_mesh(1), partition_edges(graph, 1)
    out = jax.jit(sharded_spmm, static_argnums=0)(mesh, sharded, jnp.ones((2001, 2), jnp.bfloat16))
    assert out.dtype == jnp.bfloat16 and float(out[0, 0]) == 2000.0
    logits = sharded.shard_edge_data(jnp.zeros(2000, jnp.bfloat16))
    weights = sharded.unshard_edge_data(jax.jit(sharded_edge_softmax, static_argnums=0)(mesh, sharded, logits))
    assert weights.dtype == jnp.bfloat16
    np.testing.assert_allclose(float(jnp.sum(weights.astype(jnp.float32))), 1.0, rtol=2 ** -7)
