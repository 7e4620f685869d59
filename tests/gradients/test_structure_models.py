"""adjacency_grad on models as researchers write them: PyG-style normalisation, jit, loops, every layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jgrad
from jgrad.gradients import adjacency_grad, edge_grad

N, F_IN, HIDDEN, CLASSES = 10, 4, 5, 3


def _graph(weighted=True):
    """Self loops (1->1, 2->2), a duplicate edge (3->4 twice), isolated nodes 8 and 9."""
    rng = np.random.default_rng(0)
    senders = np.concatenate([rng.integers(0, 8, 24), [1, 2, 3, 3]])
    receivers = np.concatenate([rng.integers(0, 8, 24), [1, 2, 4, 4]])
    weight = rng.random(len(senders)) + 0.5 if weighted else None
    return jgrad.Graph.from_edges(senders, receivers, N, edge_weight=weight)


def _params():
    rng = np.random.default_rng(1)
    return {"w1": jnp.asarray(rng.standard_normal((F_IN, HIDDEN)) / 2),
            "w2": jnp.asarray(rng.standard_normal((HIDDEN, CLASSES)) / 2),
            "x": jnp.asarray(rng.standard_normal((N, F_IN))),
            "c": jnp.asarray(rng.standard_normal((N, CLASSES)))}


def _sym(a):
    """``D^-1/2 (A + I) D^-1/2`` on a dense adjacency (every degree >= 1 here)."""
    a_hat = a + jnp.eye(N)
    s = a_hat.sum(1) ** -0.5
    return s[:, None] * a_hat * s[None, :]


def _check(grad, dense_loss, loss, graph, *args):
    """``grad.dense()`` equals jax.grad of the dense model, and ``grad.at(edges)`` equals edge_grad."""
    reference = np.asarray(jax.grad(dense_loss)(graph.to_dense(), *args))
    scale = np.abs(reference).max()
    assert scale > 0
    np.testing.assert_allclose(grad.dense(), reference, rtol=0, atol=1e-10 * scale)
    edges = np.asarray(edge_grad(loss, graph, *args))
    np.testing.assert_allclose(grad.at(graph.receivers, graph.senders), edges, rtol=0, atol=1e-10 * scale)


# --------------------------------------------------------------------------------------------------
# PyG style: per-edge normalised weights, then spmm
# --------------------------------------------------------------------------------------------------
def _pyg_gcn(g, p):
    norm = jgrad.ops.gcn_norm(g)  # a graph with self loops and D^-1/2 Â D^-1/2 weights
    h = jax.nn.relu(jgrad.ops.spmm(norm, p["x"] @ p["w1"]))
    return jnp.sum(jnp.tanh(jgrad.ops.spmm(norm, h @ p["w2"])) * p["c"])


def _pyg_gcn_dense(a, p):
    h = jax.nn.relu(_sym(a) @ (p["x"] @ p["w1"]))
    return jnp.sum(jnp.tanh(_sym(a) @ (h @ p["w2"])) * p["c"])


def _row_mean(g, p):
    norm = jgrad.ops.row_norm(g)
    out = jgrad.ops.spmm(norm, p["x"] @ p["w1"]) + jgrad.ops.spmm(norm.reverse(), p["x"] @ p["w1"])
    return jnp.sum(jnp.tanh(out))


def _row_mean_dense(a, p):
    degree = a.sum(1)
    inverse = jnp.where(degree > 0, 1 / jnp.where(degree > 0, degree, 1), 0)
    a_row = inverse[:, None] * a
    h = p["x"] @ p["w1"]
    return jnp.sum(jnp.tanh(a_row @ h + a_row.T @ h))


@pytest.mark.parametrize("case", ["gcn_norm", "gcn_norm_jit", "row_norm_and_transpose"])
def test_pyg_style_normalised_weights_are_exact(x64, case):
    graph, params = _graph(), _params()
    loss, dense = {"gcn_norm": (_pyg_gcn, _pyg_gcn_dense), "gcn_norm_jit": (jax.jit(_pyg_gcn), _pyg_gcn_dense),
                   "row_norm_and_transpose": (_row_mean, _row_mean_dense)}[case]
    mean = case == "row_norm_and_transpose"  # a mean at the isolated nodes 8 and 9: checked apart below
    _check(adjacency_grad(loss, graph, params, check=not mean), dense, loss, graph, params)


# --------------------------------------------------------------------------------------------------
# Loops: APPNP under lax.fori_loop, SGC under lax.scan
# --------------------------------------------------------------------------------------------------
K, ALPHA = 10, 0.1


def _appnp(g, p):
    norm = jgrad.ops.gcn_norm(g)
    h0 = p["x"] @ p["w1"]
    h = jax.lax.fori_loop(0, K, lambda _, h: (1 - ALPHA) * jgrad.ops.spmm(norm, h) + ALPHA * h0, h0)
    return jnp.sum(jnp.tanh(h @ p["w2"]) * p["c"])


def _appnp_dense(a, p):
    h0 = p["x"] @ p["w1"]
    h = h0
    for _ in range(K):
        h = (1 - ALPHA) * _sym(a) @ h + ALPHA * h0
    return jnp.sum(jnp.tanh(h @ p["w2"]) * p["c"])


def _sgc_scan(g, p):  # propagate recomputes the degrees at every step, inside a rematerialised loop body
    step = jax.checkpoint(lambda h: jgrad.gradients.propagate(g, h))
    h, _ = jax.lax.scan(lambda h, _: (step(h), None), p["x"], None, length=3)
    return jnp.sum(jnp.tanh(h @ p["w1"]))


def _sgc_dense(a, p):
    h = p["x"]
    for _ in range(3):
        h = _sym(a) @ h
    return jnp.sum(jnp.tanh(h @ p["w1"]))


def test_appnp_under_fori_loop_is_exact_with_one_term_per_step(x64):
    graph, params = _graph(), _params()
    grad = adjacency_grad(_appnp, graph, params)
    _check(grad, _appnp_dense, _appnp, graph, params)
    assert grad.rank == K * HIDDEN + 1  # one aggregation term per step, plus gcn_norm's degree


def test_sgc_under_checkpointed_scan_inside_jit_is_exact(x64):
    graph, params = _graph(), _params()
    _check(adjacency_grad(jax.jit(_sgc_scan), graph, params), _sgc_dense, _sgc_scan, graph, params)


# --------------------------------------------------------------------------------------------------
# jgrad.nn layers and models, plain, under jax.jit and nnx.jit
# --------------------------------------------------------------------------------------------------
def _layer(name):
    rngs = nnx.Rngs(0)
    options = dict(rngs=rngs, param_dtype=jnp.float64)
    return {
        "gcn_sym": lambda: jgrad.nn.GCNConv(F_IN, HIDDEN, **options),
        "gcn_row_no_loops_no_bias": lambda: jgrad.nn.GCNConv(F_IN, HIDDEN, norm="row", add_self_loops=False,
                                                             use_bias=False, **options),
        "gcn_none": lambda: jgrad.nn.GCNConv(F_IN, HIDDEN, norm=None, **options),
        "graph_conv": lambda: jgrad.nn.GraphConv(F_IN, HIDDEN, **options),
        "sage_mean": lambda: jgrad.nn.SAGEConv(F_IN, HIDDEN, **options),
        "sage_sum": lambda: jgrad.nn.SAGEConv(F_IN, HIDDEN, aggregator="sum", **options),
        "gin_eps": lambda: jgrad.nn.GINConv(F_IN, HIDDEN, eps=0.3, **options),
        "gat_normalise": lambda: jgrad.nn.GATConv(F_IN, HIDDEN, heads=1, edge_weight_mode="normalise",
                                                  **options),
        "message_passing_sum": lambda: _Linear(jgrad.nn.MessagePassing(aggregate="sum"), rngs),
        # 2·HIDDEN -> HIDDEN: the layer aggregates x @ neighbour_kernel, the narrower rows
        "sage_mean_narrowing": lambda: _Linear(jgrad.nn.SAGEConv(2 * HIDDEN, HIDDEN, **options), rngs, 2 * HIDDEN),
        "graph_conv_narrowing": lambda: _Linear(jgrad.nn.GraphConv(2 * HIDDEN, HIDDEN, **options), rngs, 2 * HIDDEN),
        "gin_narrowing": lambda: _Linear(jgrad.nn.GINConv(2 * HIDDEN, HIDDEN, hidden_features=HIDDEN, eps=0.3,
                                                          **options), rngs, 2 * HIDDEN),
    }[name]()


class _Linear(nnx.Module):
    """A layer after a linear map F_IN -> width, so that it has the (F_IN -> HIDDEN) shape of the others."""

    def __init__(self, inner, rngs, width=HIDDEN):
        self.inner, self.linear = inner, nnx.Linear(F_IN, width, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, graph, x):
        return self.inner(graph, self.linear(x))


@pytest.mark.parametrize("name", ["gcn_sym", "gcn_row_no_loops_no_bias", "gcn_none", "graph_conv", "sage_mean",
                                  "sage_sum", "gin_eps", "gat_normalise", "message_passing_sum",
                                  "sage_mean_narrowing", "graph_conv_narrowing", "gin_narrowing"])
def test_every_sum_or_normalised_layer_matches_dense_mode(x64, name):
    """Dense mode runs the layer on the complete graph with weights A[v, u] (0 for missing pairs)."""
    graph, params = _graph(), _params()
    layer = _layer(name)

    def loss(g, x):
        return jnp.sum(jnp.tanh(layer(g, x)) * jnp.sin(jnp.arange(N * HIDDEN, dtype=float)).reshape(N, HIDDEN))

    # The means without self loops are not differentiable in the rows of the isolated nodes 8 and 9:
    # they raise (checked below), and with check=False give 0 there, as dense mode does.
    mean = name in ("gcn_row_no_loops_no_bias", "graph_conv", "sage_mean", "sage_mean_narrowing",
                    "graph_conv_narrowing")
    factored = adjacency_grad(jax.jit(loss) if name == "gat_normalise" else loss, graph, params["x"], check=not mean)
    dense = adjacency_grad(loss, graph, params["x"], mode="dense")
    scale = np.abs(np.asarray(dense.dense())).max()
    np.testing.assert_allclose(factored.dense(), dense.dense(), rtol=0, atol=1e-10 * scale)


def test_cached_gcn_normalisation_is_exact(x64):
    graph, params = _graph(), _params()
    layer = jgrad.nn.GCNConv(F_IN, HIDDEN, cached=True, rngs=nnx.Rngs(0), param_dtype=jnp.float64)

    def loss(g, x):  # the scaling computed inside the loss from the graph passed in
        return jnp.sum(jnp.tanh(layer(g, x, scaling=layer.prepare(g))))

    factored = adjacency_grad(loss, graph, params["x"])
    dense = adjacency_grad(loss, graph, params["x"], mode="dense")
    np.testing.assert_allclose(factored.dense(), dense.dense(), rtol=0, atol=1e-10 * np.abs(dense.dense()).max())


@pytest.mark.parametrize("wrap", ["jax.jit", "nnx.jit"])
def test_gcn_model_under_jit_is_exact(x64, wrap):
    graph, params = _graph(), _params()
    model = jgrad.nn.GCN(F_IN, HIDDEN, CLASSES, dropout=0.0, rngs=nnx.Rngs(0), param_dtype=jnp.float64)

    def loss(g, model, x):
        return jnp.sum(jnp.tanh(model(g, x)) * params["c"])

    jitted = jax.jit(loss) if wrap == "jax.jit" else nnx.jit(loss)
    grad = adjacency_grad(jitted, graph, model, params["x"])
    (w1, b1), (w2, b2) = ((layer.kernel[...], layer.bias[...]) for layer in model.layers)

    def dense_loss(a, model, x):
        h = jax.nn.relu(_sym(a) @ (x @ w1) + b1[None])
        return jnp.sum(jnp.tanh(_sym(a) @ (h @ w2) + b2[None]) * params["c"])

    np.testing.assert_allclose(loss(graph, model, params["x"]), dense_loss(graph.to_dense(), model, params["x"]),
                               rtol=1e-12)
    _check(grad, dense_loss, loss, graph, model, params["x"])


# --------------------------------------------------------------------------------------------------
# What cannot be exact raises and names the cause
# --------------------------------------------------------------------------------------------------
def _sage_max(g, x):
    layer = jgrad.nn.SAGEConv(F_IN, 2, aggregator="max", rngs=nnx.Rngs(0))
    return layer(g, x).sum()


def _mean_messages(g, x):
    return jgrad.ops.gspmm(g, "u_mul_e", "mean", x, g.edge_weight).sum()


def _copy_u(g, x):
    return jnp.tanh(jgrad.ops.gspmm(g, "copy_u", "sum", x)).sum()


def _edge_counts(g, x):
    scale = (g.in_degree(weighted=False) + 1.0)[:, None] ** -0.5
    return jnp.tanh(scale * jgrad.ops.spmm(g, scale * x)).sum()


def _while(g, x):
    return jax.lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, jgrad.ops.spmm(g, c[1])), (0, x))[1].sum()


def _cond(g, x):
    return jax.lax.cond(x.sum() > 0, lambda: jgrad.ops.spmm(g, x), lambda: x).sum()


def _squared(g, x):
    return jgrad.ops.spmm(g, x, g.edge_weight ** 2).sum()


def _hand_written_sum(g, x):
    """A weighted jgrad sum plus an aggregation written by hand that ignores the weights."""
    by_hand = jax.ops.segment_sum(x[g.senders], g.receivers, num_segments=g.n_nodes)
    return jnp.tanh(jgrad.ops.spmm(g, x) + by_hand).sum()


def _degree_feature(g, x):
    """The edge count of every node, counted by hand, as a feature."""
    count = jax.ops.segment_sum(jnp.ones(g.senders.shape), g.receivers, num_segments=g.n_nodes)
    return jnp.sin(jgrad.ops.spmm(g, x * count[:, None])).sum()


def _weighted_in_message(g, x):
    """A message function that multiplies by the weights itself (the maths of the default message)."""
    weighted = lambda x_sender, x_receiver, w: x_sender * w[:, None]  # noqa: E731
    return jnp.tanh(jgrad.nn.functional.message_passing(g, x, weighted)).sum()


def _per_edge_mean(g, x):
    return jnp.tanh(jgrad.ops.spmm(g, x)).sum() / g.n_edges


@pytest.mark.parametrize("model, message", [
    (_sage_max, r"max/min \(e.g. SAGEConv\(aggregator='max'\), MessagePassing\(aggregate='max'\)"),
    (_mean_messages, r"reduce='mean'\) divides by the number of incoming edges"),
    (_copy_u, r"gspmm\(op='copy_u'\) aggregates the messages without the edge weights"),
    (_edge_counts, r"the model counts edges \(in_degree\(weighted=False\)"),
    (_while, r"inside lax.while_loop \(or lax.fori_loop with traced bounds\)"),
    (_cond, r"inside lax.cond / lax.switch"),
    (_squared, r"uses the edge weights outside the operations adjacency_grad follows"),
    (_weighted_in_message, r"a message function that multiplies by the weights itself \(jgrad.nn.MessagePassing"),
    (_hand_written_sum, r"reads which edges exist, not only their weights: one more edge of weight 0"),
    (_degree_feature, r"reads which edges exist, not only their weights"),
    (_per_edge_mean, r"reads which edges exist, not only their weights"),
], ids=["sage_max", "mean", "copy_u", "edge_counts", "while_loop", "cond", "squared_weights", "message_fn",
        "hand_written_sum", "degree_feature", "n_edges"])
def test_models_without_an_exact_structure_gradient_raise_naming_the_cause(model, message):
    graph = _graph(weighted=True)
    x = jnp.ones((N, F_IN), jnp.float32)
    with pytest.raises(ValueError, match=message):
        adjacency_grad(model, graph.with_edge_weight(graph.edge_weight.astype(jnp.float32)), x)


def test_a_model_reading_the_structure_gives_nan_inside_jit_and_is_probed_once_when_it_passes(monkeypatch):
    """Inside the caller's jit the structure probe cannot raise: every entry is NaN. A model that passes
    is not probed again for the same shapes; check=False does not probe."""
    from jgrad.gradients import _structure
    graph = _graph(weighted=True)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((N, F_IN)))
    dense = jax.jit(lambda g, x: adjacency_grad(_hand_written_sum, g, x).dense())(graph, x)
    assert np.isnan(np.asarray(dense)).all()
    probes = []
    monkeypatch.setattr(_structure, "run_cached", lambda *a: probes.append(a[0]) or _structure_probe(*a))
    _structure_probe = jgrad.gradients._compile.run_cached

    def model(g, x):
        return jnp.tanh(jgrad.ops.spmm(g, x)).sum()
    first, second = adjacency_grad(model, graph, x), adjacency_grad(model, graph, 2 * x)
    assert len(probes) == 1 and float(first.edge_error) <= 1e-4
    reference = adjacency_grad(model, graph, 2 * x, mode="dense").dense()
    np.testing.assert_allclose(second.dense(), reference, rtol=1e-4, atol=1e-5)
    adjacency_grad(_hand_written_sum, graph, x, check=False)
    assert len(probes) == 1
    monkeypatch.setattr(_structure, "_REMEMBERED", 1)  # the memory of passed models is bounded
    other = lambda g, x: model(g, x) + 1.0  # noqa: E731
    adjacency_grad(other, graph, x), adjacency_grad(model, graph, x)
    assert len(probes) == 3


def test_the_structure_probe_adds_one_edge_into_every_real_node_from_its_own_graph():
    from jgrad.gradients._structure import _one_more_edge_per_node
    graphs = [jgrad.Graph.from_edges([0], [1], 3), jgrad.Graph.from_edges([], [], 1),
              jgrad.Graph.from_edges([0, 1], [1, 0], 2)]
    padded = jgrad.pad(jgrad.batch(graphs), 9, 5)
    senders, receivers, live = (np.asarray(a) for a in _one_more_edge_per_node(padded))
    graph_of = np.asarray(padded.node_graph_index())
    real = np.asarray(padded.node_mask)
    assert sorted(receivers[live].tolist()) == [0, 1, 2, 4, 5]  # not the 1-node graph's node 3, nor padding
    assert (graph_of[senders[live]] == graph_of[receivers[live]]).all() and real[senders[live]].all()
    assert (senders[live] != receivers[live]).all()


def _row_mean_model(g, x):
    return jnp.tanh(jgrad.nn.functional.mean_aggregate(g, x)).sum()


def _sym_without_loops(g, x):
    return jnp.tanh(jgrad.ops.spmm(jgrad.ops.gcn_norm(g, add_self_loops=False), x)).sum()


@pytest.mark.parametrize("model, words", [
    (_row_mean_model, "takes a mean over its incoming edges"),
    (_sym_without_loops, r"scales by its degree \*\* -1/2"),
    (lambda g, x: _row_mean_model(jgrad.ops.row_norm(g), x), "takes a mean over its incoming edges"),
], ids=["mean_aggregate", "gcn_norm_without_loops", "row_norm"])
def test_a_normalisation_by_a_zero_degree_raises_naming_the_node(x64, model, words):
    """Nodes 7, 8 and 9 receive nothing: an edge added into them makes the model jump. Eagerly that
    raises; inside jit their rows (only theirs) are NaN; with self loops, or with those nodes as
    padding, nothing is undefined; check=False gives 0 in those rows, as autodiff of the dense model."""
    graph, x = _graph(), jnp.asarray(np.random.default_rng(2).standard_normal((N, F_IN)))
    receive_nothing = np.flatnonzero(np.asarray(graph.in_degree()) == 0).tolist()
    assert receive_nothing == [7, 8, 9]
    with pytest.raises(ValueError, match=f"node 7 has no incoming weight and the model {words}.*2 more such"):
        adjacency_grad(model, graph, x)
    inside = jax.jit(lambda w: adjacency_grad(model, graph.with_edge_weight(w), x).dense())(graph.edge_weight)
    assert np.flatnonzero(np.isnan(np.asarray(inside)).any(axis=1)).tolist() == receive_nothing
    assert np.isfinite(np.asarray(inside)[:7]).all()
    unchecked = adjacency_grad(model, graph, x, check=False).dense()
    reference = adjacency_grad(model, graph, x, mode="dense").dense()
    np.testing.assert_allclose(unchecked, reference, rtol=0, atol=1e-10 * np.abs(reference).max())
    np.testing.assert_array_equal(np.asarray(unchecked)[7:], 0.0)
    adjacency_grad(model, graph.add_self_loops(), x)  # every degree positive
    real = jnp.arange(N) < 7
    padded = jgrad.Graph(graph.senders, graph.receivers, N, edge_weight=graph.edge_weight, node_mask=real,
                         edge_mask=real[graph.senders] & real[graph.receivers])
    adjacency_grad(model, padded, x)  # 7, 8 and 9 as padding nodes, their edges masked


def test_zero_degree_nodes_that_the_loss_does_not_reach_get_exact_zeros(x64):
    """Nodes 7, 8 and 9 receive nothing. A loss over nodes 0..6 of one mean layer does not depend on
    their means: no error, and dL/dA equals the dense model's (0 in their rows), inside jit too. Through
    a second layer node 7's mean reaches nodes 0, 3 and 4 (7 sends to them): that raises."""
    graph, x = _graph(), jnp.asarray(np.random.default_rng(2).standard_normal((N, F_IN)))
    mean = jgrad.nn.functional.mean_aggregate

    def one_layer(g, x):
        return jnp.tanh(mean(g, x))[:7].sum()

    reference = adjacency_grad(one_layer, graph, x, mode="dense").dense()
    for result in (adjacency_grad(one_layer, graph, x).dense(),
                   jax.jit(lambda w: adjacency_grad(one_layer, graph.with_edge_weight(w), x).dense())(graph.edge_weight)):
        np.testing.assert_allclose(result, reference, rtol=0, atol=1e-10 * np.abs(reference).max())
        np.testing.assert_array_equal(np.asarray(result)[7:], 0.0)
    with pytest.raises(ValueError, match="node 7 has no incoming weight .* a loss that depends on such nodes"):
        adjacency_grad(lambda g, x: jnp.tanh(mean(g, jnp.tanh(mean(g, x))))[:7].sum(), graph, x)


def test_a_training_loss_of_a_mean_model_is_exact_with_isolated_nodes_outside_the_training_set(x64):
    """The robustness setting: a two-layer SAGE (mean) with jgrad.train's masked cross-entropy over the
    training nodes; nodes 8 and 9 are isolated and not training nodes (as Citeseer's 48 isolated nodes).
    That raised for every such node; their rows are 0, exactly, as the dense model's. (Node 7, also
    without incoming edges, sends to training nodes: with it, the call raises.)"""
    base = _graph()
    graph = jgrad.Graph.from_edges(np.append(np.asarray(base.senders), 0), np.append(np.asarray(base.receivers), 7),
                                   N, edge_weight=np.append(np.asarray(base.edge_weight), 1.0))
    rng = np.random.default_rng(7)
    x, labels = jnp.asarray(rng.standard_normal((N, F_IN))), jnp.asarray(rng.integers(0, CLASSES, N))
    train = jnp.arange(N) < 6
    model = jgrad.nn.GraphSAGE(F_IN, HIDDEN, CLASSES, aggregator="mean", dropout=0.0, rngs=nnx.Rngs(0),
                               param_dtype=jnp.float64)

    def loss(g, x):
        return jgrad.train.masked_cross_entropy(model(g, x), labels, train)[0]

    reference = adjacency_grad(loss, graph, x, mode="dense").dense()
    result = adjacency_grad(loss, graph, x).dense()
    np.testing.assert_allclose(result, reference, rtol=0, atol=1e-10 * np.abs(reference).max())
    np.testing.assert_array_equal(np.asarray(result)[8:], 0.0)
    with pytest.raises(ValueError, match="node 7 has no incoming weight"):
        adjacency_grad(loss, base, x)


def test_a_zero_degree_node_the_loss_depends_on_raises_even_where_an_added_edge_would_carry_nothing(x64):
    """Nodes 0 and 9 receive nothing; the loss covers 9 but not 0. An edge 0 -> 9 would leave the loss
    as it is (node 0's features are 0: the mean at 9 'jumps' from 0 to 0), an edge from any other node
    would not: the loss depends on node 9, which a probe with one added edge per node missed. NaN in
    what the zero degrees leave undefined reaches the loss: that raises, and inside jit those rows are
    NaN."""
    graph = jgrad.Graph.from_edges([1, 2, 3, 4, 5, 6, 7, 8], [2, 3, 4, 5, 6, 7, 8, 1], N)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((N, F_IN))).at[0].set(0.0)
    model = lambda g, x: jnp.tanh(jgrad.nn.functional.mean_aggregate(g, x))[1:].sum()  # noqa: E731
    with pytest.raises(ValueError, match=r"node 0 has no incoming weight .*\(1 more such nodes\), and a loss that depends"):
        adjacency_grad(model, graph, x)
    inside = jax.jit(lambda w: adjacency_grad(model, graph.with_edge_weight(w), x).dense())(jnp.ones(8))
    assert np.flatnonzero(np.isnan(np.asarray(inside)).any(axis=1)).tolist() == [0, 9]


def test_a_smooth_dependence_on_a_zero_degree_node_is_not_taken_for_a_jump(x64):
    """Node 0 receives nothing (a directed graph). A GCN layer (with self loops: smooth in A everywhere)
    then a mean, with the loss over every node but 0: the mean at 0 does not reach the loss, but an edge
    into 0 changes node 0's GCN output, which reaches others. A probe edge of weight 1 saw that smooth
    change and raised; the derivative exists, and equals the dense model's."""
    graph = jgrad.Graph.from_edges([0, 0, 1, 2, 3, 4], [1, 2, 2, 3, 4, 1], 5)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((5, F_IN)))
    w1 = jnp.asarray(np.random.default_rng(6).standard_normal((F_IN, 3)))

    def model(g, x):
        h = jnp.tanh(jgrad.ops.spmm(jgrad.ops.gcn_norm(g), x @ w1))
        return jnp.tanh(jgrad.nn.functional.mean_aggregate(g, h))[1:].sum()

    reference = adjacency_grad(model, graph, x, mode="dense").dense()
    np.testing.assert_allclose(adjacency_grad(model, graph, x).dense(), reference, rtol=0,
                               atol=1e-10 * np.abs(reference).max())


def test_inside_jit_a_failed_check_gives_nan_instead_of_a_wrong_gradient():
    graph = _graph()
    x = jnp.ones((N, F_IN), jnp.float32)
    weight = graph.edge_weight.astype(jnp.float32)
    dense = jax.jit(lambda w: adjacency_grad(_squared, graph.with_edge_weight(w), x).dense())(weight)
    assert np.isnan(np.asarray(dense)).all()
    fine = jax.jit(lambda w: adjacency_grad(_sgc_scan, graph.with_edge_weight(w), {"x": x, "w1": x.T}).dense())(weight)
    assert np.isfinite(np.asarray(fine)).all()


def test_no_tap_is_left_in_a_model_outside_adjacency_grad():
    graph = _graph()
    jaxpr = jax.make_jaxpr(lambda g, x: _pyg_gcn(g, x))(graph, _params())
    assert "jgrad_tap_" not in str(jaxpr)
    tapped = jax.make_jaxpr(lambda g, x: _pyg_gcn(g, x))(jgrad.Graph(**{**graph.__dict__, "tapped": True}),
                                                         _params())
    assert "jgrad_tap_aggregate" in str(tapped) and "jgrad_tap_scaled" in str(tapped)


# --------------------------------------------------------------------------------------------------
# The probes compare two losses computed on the same code path
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("model_name", ["gin", "gcn"])
def test_a_loss_that_is_zero_up_to_rounding_passes_the_structure_probe(dtype, model_name):
    """A margin at the decision boundary, or the output's change from the clean output along a fixed
    direction, is 0 up to rounding at the clean graph. Compared with the loss of the gradient's pass
    (another program, on the graph without an edge mask), the probed loss changed by up to 100% of
    itself: the call raised, and inside jit every entry was NaN. Both losses now come from one
    program, on one code path."""
    with jax.enable_x64(dtype == "float64"):
        graph = _graph()
        graph = graph.with_edge_weight(graph.edge_weight.astype(dtype))
        params = _params()
        x = params["x"].astype(dtype)
        options = dict(dropout=0.0, rngs=nnx.Rngs(0), param_dtype=jnp.dtype(dtype))
        model = (jgrad.nn.GIN(F_IN, HIDDEN, CLASSES, **options) if model_name == "gin"
                 else jgrad.nn.GCN(F_IN, HIDDEN, CLASSES, **options))
        clean = model(graph, x)

        def margin(g, x):  # node 5's margin against its clean value
            out = model(g, x)
            return out[5, 0] - out[5, 1] - (clean[5, 0] - clean[5, 1])

        def shift(g, x):  # the output's change from the clean output, along a fixed direction
            return jnp.sum((model(g, x) - clean) * params["c"].astype(dtype))

        for loss in (margin, shift):
            factored = adjacency_grad(loss, graph, x)
            # dense mode's own check compares loss values across two programs: it raises for these losses
            dense = adjacency_grad(loss, graph, x, mode="dense", check=False)
            scale = np.abs(np.asarray(dense.dense())).max()
            np.testing.assert_allclose(factored.dense(), dense.dense(), rtol=0,
                                       atol=(1e-5 if dtype == "float32" else 1e-12) * max(scale, 1.0))
            inside = jax.jit(lambda w: adjacency_grad(loss, graph.with_edge_weight(w), x).dense())(graph.edge_weight)
            assert np.isfinite(np.asarray(inside)).all()


def test_a_loss_that_is_zero_up_to_rounding_passes_the_zero_degree_probe(x64):
    """Nodes 7, 8 and 9 receive nothing; one mean plus one GIN layer, over nodes 0..6, does not depend
    on their means (nor on the edges into them): their rows are 0, also when the loss is the output's
    change from the clean output along a fixed direction, 0 up to rounding at the clean graph. It
    raised, as if the loss depended on them."""
    graph, params = _graph(), _params()
    x = params["x"]
    mean = jgrad.nn.functional.mean_aggregate
    gin = jgrad.nn.GINConv(F_IN, F_IN, eps=0.3, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    clean = jnp.tanh(mean(graph, x) + gin(graph, x))[:7]

    def shift(g, x):
        return jnp.sum((jnp.tanh(mean(g, x) + gin(g, x))[:7] - clean) * params["c"][:7, :1])

    reference = adjacency_grad(shift, graph, x, mode="dense", check=False).dense()
    result = adjacency_grad(shift, graph, x).dense()
    np.testing.assert_allclose(result, reference, rtol=0, atol=1e-10 * np.abs(reference).max())
    np.testing.assert_array_equal(np.asarray(result)[7:], 0.0)


def test_a_model_reading_the_edge_count_of_each_graph_of_a_batch_raises_naming_the_cause():
    """``n_edge_per_graph`` counts the probe's added edges: the probe sees the model read it (it was
    None in the probed graph, and the model failed with a TypeError)."""
    rng = np.random.default_rng(0)
    graphs = [jgrad.Graph.from_edges(rng.integers(0, n, 3 * n), rng.integers(0, n, 3 * n), n) for n in (6, 9, 4)]
    x = jnp.asarray(rng.standard_normal((19, 3)), jnp.float32)

    def per_graph_mean(g, x):  # a readout divided by each graph's edge count
        out = jgrad.nn.functional.readout(g, jnp.tanh(jgrad.ops.spmm(g, x)), "sum")
        return jnp.sum(out / g.n_edge_per_graph[:, None])

    for graph in (jgrad.batch(graphs), jgrad.pad(jgrad.batch(graphs), 25, 80)):
        with pytest.raises(ValueError, match="reads which edges exist, not only their weights"):
            adjacency_grad(per_graph_mean, graph, jnp.zeros((graph.n_nodes, 3)).at[:19].set(x))
