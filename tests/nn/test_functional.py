"""nn.functional directly: options the modules do not expose, the generic message-passing block, dropout,
and the error messages of every check."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad.nn import functional as F

GRAPH = jgrad.Graph.from_edges([0, 1, 2, 2], [1, 2, 0, 1], n_nodes=3, edge_weight=[0.5, 2.0, 1.5, 1.0])
X = jnp.array([[1.0, -1.0], [2.0, 0.5], [-3.0, 4.0]])
KERNEL = jnp.array([[1.0, 2.0, 0.0], [0.5, -1.0, 1.0]])


def test_gcn_conv_without_normalisation_is_a_plus_fill_identity():
    a = np.asarray(GRAPH.to_dense())
    run = jax.jit(lambda fill, loops: F.gcn_conv({"kernel": KERNEL}, GRAPH, X, normalize=False,
                                                 add_self_loops=loops, fill=fill), static_argnums=1)
    np.testing.assert_allclose(run(2.0, True), (a + 2.0 * np.eye(3)) @ X @ KERNEL, rtol=1e-6)
    np.testing.assert_allclose(run(2.0, False), a @ X @ KERNEL, rtol=1e-6)


def _aggregated_widths(layer, x) -> set[int]:
    """The feature widths of the (N, F) aggregations in ``layer(x)``'s program."""
    jaxpr = jax.make_jaxpr(layer)(x)
    return {eqn.outvars[0].aval.shape[-1] for eqn in jaxpr.eqns
            if eqn.primitive.name in ("jgrad_gspmm", "jgrad_layout_sum") and eqn.outvars[0].aval.ndim == 2}


@pytest.mark.parametrize("aggregator", ["mean", "sum", "max"])
def test_sage_conv_aggregates_the_narrower_side_of_its_kernel(aggregator):
    """A linear aggregation of F_in = 3 features into F_out = 2 aggregates x @ kernel (2 columns);
    max, which does not commute with the kernel, aggregates x itself."""
    params = {"neighbour_kernel": KERNEL.T, "root_kernel": KERNEL.T}  # (3, 2)
    widths = _aggregated_widths(lambda x: F.sage_conv(params, GRAPH, x, aggregator=aggregator), X @ KERNEL)
    assert widths == ({3} if aggregator == "max" else {2}), widths


def test_gcn_conv_propagates_the_narrower_side_of_its_kernel():
    widening = _aggregated_widths(lambda x: F.gcn_conv({"kernel": KERNEL}, GRAPH, x), X)  # 2 -> 3
    narrowing = _aggregated_widths(lambda x: F.gcn_conv({"kernel": KERNEL.T}, GRAPH, x), X @ KERNEL)  # 3 -> 2
    assert widening == {2} and narrowing == {2}, (widening, narrowing)


def test_gin_conv_aggregates_the_narrower_side_of_its_first_kernel():
    gin = lambda kernel: lambda x: F.gin_conv({"eps": 0.5, "mlp": [{"kernel": kernel}, {"kernel": kernel.T}]},
                                              GRAPH, x)
    widening, narrowing = _aggregated_widths(gin(KERNEL), X), _aggregated_widths(gin(KERNEL.T), X @ KERNEL)
    assert widening == {2} and narrowing == {2}, (widening, narrowing)


# Node 3 has no incoming edge, so without self loops its degree is 0 (scale 0, no NaN).
NORM_SENDERS, NORM_RECEIVERS = [0, 1, 2, 2, 0, 3], [1, 2, 0, 1, 2, 0]


def _dense_gcn(weight, x, kernel, bias, norm, add_self_loops, fill):
    """The dense float64 reference: A[v, u] = weight of u -> v, Â = A + fill·I."""
    a = jnp.zeros((4, 4), weight.dtype).at[jnp.array(NORM_RECEIVERS), jnp.array(NORM_SENDERS)].add(weight)
    if add_self_loops:
        a = a + fill * jnp.eye(4, dtype=weight.dtype)
    degree = a.sum(1)
    safe = jnp.where(degree > 0, degree, 1.0)
    if norm == "sym":
        s = jnp.where(degree > 0, safe ** -0.5, 0.0)
        a = s[:, None] * a * s[None, :]
    elif norm == "row":
        a = jnp.where(degree > 0, 1.0 / safe, 0.0)[:, None] * a
    return a @ (x @ kernel) + bias[None, :]


@pytest.mark.parametrize("add_self_loops", [True, False])
@pytest.mark.parametrize("norm", ["sym", "row", None])
def test_gcn_conv_norm_values_and_gradients_match_a_dense_reference(x64, norm, add_self_loops):
    rng = np.random.default_rng(0)
    weight = jnp.asarray(rng.uniform(0.5, 2.0, len(NORM_SENDERS)))
    x, kernel, bias = (jnp.asarray(rng.normal(size=shape)) for shape in [(4, 3), (3, 2), (2,)])
    fill = 1.5
    options = dict(norm=norm, add_self_loops=add_self_loops, fill=fill)

    def layer(weight, x, kernel, bias, precomputed=False):
        graph = jgrad.Graph.from_edges(NORM_SENDERS, NORM_RECEIVERS, n_nodes=4, edge_weight=weight)
        scaling = None
        if precomputed and norm is not None:
            scaling = F.gcn_scaling(graph, add_self_loops=add_self_loops, fill=fill, norm=norm)
        return F.gcn_conv({"kernel": kernel, "bias": bias}, graph, x, scaling=scaling, **options)

    args = (weight, x, kernel, bias)
    expected = _dense_gcn(*args, **options)
    assert expected.dtype == jnp.float64
    for precomputed in (False, True):
        run = jax.jit(lambda *a: layer(*a, precomputed=precomputed))
        np.testing.assert_allclose(run(*args), expected, rtol=1e-12, atol=1e-12)
        loss = lambda *a: jnp.sum(jnp.sin(run(*a)))
        dense_loss = lambda *a: jnp.sum(jnp.sin(_dense_gcn(*a, **options)))
        for got, want in zip(jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args),
                             jax.jit(jax.grad(dense_loss, argnums=(0, 1, 2, 3)))(*args)):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    if norm == "row" and add_self_loops:  # the mean of row_norm over the self-looped graph
        graph = jgrad.Graph.from_edges(NORM_SENDERS, NORM_RECEIVERS, n_nodes=4, edge_weight=weight)
        mean = jgrad.ops.spmm(jgrad.ops.row_norm(graph.add_self_loops(fill)), x @ kernel) + bias[None, :]
        np.testing.assert_allclose(layer(*args), mean, rtol=1e-12)


def test_gcn_conv_layer_and_model_pass_norm_through():
    from flax import nnx

    graph = jgrad.Graph.from_edges(NORM_SENDERS, NORM_RECEIVERS, n_nodes=4)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32))
    for norm in ("sym", "row", None):
        layer = jgrad.nn.GCNConv(2, 3, norm=norm, rngs=nnx.Rngs(0))
        params = {"kernel": layer.kernel[...], "bias": layer.bias[...]}
        expected = F.gcn_conv(params, graph, x, norm=norm)
        np.testing.assert_allclose(layer(graph, x), expected, rtol=1e-6)
        np.testing.assert_allclose(layer(graph, x, scaling=layer.prepare(graph)), expected, rtol=1e-6)
        model = jgrad.nn.GCN(2, 3, 2, norm=norm, rngs=nnx.Rngs(0))
        assert [conv.norm for conv in model.layers] == [norm, norm]
        first = model.layers[0]
        hidden = jax.nn.relu(F.gcn_conv({"kernel": first.kernel[...], "bias": first.bias[...]}, graph, x, norm=norm))
        second = model.layers[1]
        logits = F.gcn_conv({"kernel": second.kernel[...], "bias": second.bias[...]}, graph, hidden, norm=norm)
        np.testing.assert_allclose(model(graph, x), logits, rtol=1e-5, atol=1e-6)
    assert jgrad.nn.GCNConv(2, 3, normalize=False, rngs=nnx.Rngs(0)).norm is None
    with pytest.raises(ValueError, match="gcn_conv: unknown norm 'mean'; expected one of 'sym', 'row', None"):
        F.gcn_conv({"kernel": jnp.ones((2, 3))}, graph, x, norm="mean")
    with pytest.raises(ValueError, match="GCNConv: unknown norm 'left'; expected one of 'sym', 'row', None"):
        jgrad.nn.GCNConv(2, 3, norm="left", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="gcn_scaling: unknown norm None; expected one of 'sym', 'row'"):
        F.gcn_scaling(graph, norm=None)


def test_gcn_scaling_is_inverse_square_root_of_weighted_degree_plus_fill():
    np.testing.assert_allclose(F.gcn_scaling(GRAPH, fill=0.5), 1.0 / np.sqrt([1.5 + 0.5, 1.5 + 0.5, 2.0 + 0.5]),
                               rtol=1e-6)
    isolated = jgrad.Graph.from_edges([0], [1], n_nodes=3)
    np.testing.assert_allclose(F.gcn_scaling(isolated, add_self_loops=False), [0.0, 1.0, 0.0])


def test_message_passing_sums_user_messages_and_skips_padding_edges():
    padded = jgrad.pad(GRAPH, n_nodes=4, n_edges=6)
    x = jnp.concatenate([X, jnp.full((1, 2), 1e3)])

    def message(x_sender, x_receiver, edge_data):
        return edge_data[:, None] * (x_sender["h"] - x_receiver["h"])

    def update(x, aggregated):
        return x["h"] + aggregated

    out = jax.jit(lambda g, x: F.message_passing(g, {"h": x}, message, "sum", update))(padded, x)
    a = np.asarray(GRAPH.to_dense())
    expected = X + a @ X - a.sum(1, keepdims=True) * X
    np.testing.assert_allclose(out[:3], expected, rtol=1e-6)
    np.testing.assert_allclose(out[3], x[3])  # the padding node receives nothing


def test_dropout_scales_kept_entries_and_is_identity_without_key():
    x = jnp.ones((1000,))
    np.testing.assert_array_equal(F.dropout(x, 0.3, None), x)
    dropped = F.dropout(x, 0.3, jax.random.key(0))
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept], 1.0 / 0.7, rtol=1e-6)
    assert 0.6 < float(kept.mean()) < 0.8
    with pytest.raises(ValueError, match=r"dropout: rate must be in \[0, 1\); got 1\.0"):
        F.dropout(x, 1.0, jax.random.key(0))


def test_functional_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"gcn_conv: a kernel must have shape \(F_in, F_out\); got \(2,\)"):
        F.gcn_conv({"kernel": jnp.ones(2)}, GRAPH, X)
    with pytest.raises(ValueError, match=r"gat_conv: att_src and att_dst must both have shape \(H, F_out\) "
                                         r"with kernel \(F_in, H·F_out\); got att_src \(2, 3\), att_dst \(2, 2\)"):
        F.gat_conv({"kernel": jnp.ones((2, 6)), "att_src": jnp.ones((2, 3)), "att_dst": jnp.ones((2, 2))},
                   GRAPH, X)
    with pytest.raises(ValueError, match=r"gin_conv: params\['mlp'\] must be a non-empty list"):
        F.gin_conv({"mlp": []}, GRAPH, X)
    with pytest.raises(ValueError, match="sage_conv: unknown aggregator 'median'"):
        F.sage_conv({"neighbour_kernel": KERNEL, "root_kernel": KERNEL}, GRAPH, X, aggregator="median")
    with pytest.raises(ValueError, match="message_passing: unknown aggregate 'prod'"):
        F.message_passing(GRAPH, X, lambda s, r, e: s, "prod")
    with pytest.raises(TypeError, match="message_passing: message_fn must be callable; got int"):
        F.message_passing(GRAPH, X, 3)
    with pytest.raises(ValueError, match=r"message_passing: x must have one row per node; got shapes \[\(2, 2\)\]"):
        F.message_passing(GRAPH, X[:2], lambda s, r, e: s)
    with pytest.raises(ValueError, match=r"message_fn must return one row per edge; got shape \(3, 2\), "
                                         r"expected \(4, \.\.\.\)"):
        F.message_passing(GRAPH, X, lambda s, r, e: s[:3])
    with pytest.raises(ValueError, match=r"mean_aggregate: x must have one row per node; got 2 rows"):
        F.mean_aggregate(GRAPH, X[:2])


def test_gat_conv_attends_to_an_existing_self_loop_once():
    import jax
    heads, out = 2, 3
    keys = jax.random.split(jax.random.key(3), 4)
    params = {"kernel": jax.random.normal(keys[0], (4, heads * out)),
              "att_src": jax.random.normal(keys[1], (heads, out)),
              "att_dst": jax.random.normal(keys[2], (heads, out))}
    x = jax.random.normal(keys[3], (3, 4))
    with_loop = jgrad.Graph.from_edges([0, 1, 1, 2], [1, 1, 2, 0], n_nodes=3)
    without_loop = jgrad.Graph.from_edges([0, 1, 2], [1, 2, 0], n_nodes=3)
    np.testing.assert_allclose(jgrad.nn.functional.gat_conv(params, with_loop, x),
                               jgrad.nn.functional.gat_conv(params, without_loop, x), rtol=1e-5, atol=1e-6)
