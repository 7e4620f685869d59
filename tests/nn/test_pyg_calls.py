"""PyG's call forms on the jgrad.nn layers and models, ``conv(graph, x, edge_weight)`` and the ``edge_weight=`` /
``edge_attr=`` / ``edge_index=`` keywords, raise one TypeError line naming jgrad's equivalent."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jgrad
from jgrad.nn import GATConv, GCNConv, GINConv, GraphConv, MessagePassing, SAGEConv

LAYERS = {
    "GCNConv": lambda: GCNConv(3, 2, rngs=nnx.Rngs(0)),
    "GraphConv": lambda: GraphConv(3, 2, rngs=nnx.Rngs(0)),
    "SAGEConv": lambda: SAGEConv(3, 2, rngs=nnx.Rngs(0)),
    "GINConv": lambda: GINConv(3, 2, rngs=nnx.Rngs(0)),
    "GATConv": lambda: GATConv(3, 2, rngs=nnx.Rngs(0)),
    "MessagePassing": lambda: MessagePassing(),
    "GCN": lambda: jgrad.nn.GCN(3, 4, 2, rngs=nnx.Rngs(0)),
    "GAT": lambda: jgrad.nn.GAT(3, 4, 2, heads=2, rngs=nnx.Rngs(0)),
    "GraphSAGE": lambda: jgrad.nn.GraphSAGE(3, 4, 2, rngs=nnx.Rngs(0)),
    "GIN": lambda: jgrad.nn.GIN(3, 4, 2, rngs=nnx.Rngs(0)),
}
G = jgrad.Graph.from_edges([0, 1, 2], [1, 2, 0], n_nodes=3)
X = jnp.ones((3, 3))
W = jnp.array([0.5, 1.0, 2.0])


def _raises(call, message):
    with pytest.raises(TypeError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text
    assert text == message, text


@pytest.mark.parametrize("name", LAYERS)
def test_positional_edge_weight_points_to_with_edge_weight(name):
    layer = LAYERS[name]()
    _raises(lambda: layer(G, X, W),
            f"{name}: takes (graph, x) and got 1 more positional argument; PyG's edge_weight belongs to the graph "
            "in jgrad: layer(graph.with_edge_weight(edge_weight), x).")


@pytest.mark.parametrize("name", LAYERS)
def test_edge_weight_keyword_points_to_with_edge_weight(name):
    layer = LAYERS[name]()
    _raises(lambda: layer(G, X, edge_weight=W),
            f"{name}: unexpected keyword argument edge_weight (PyG's); jgrad's layers read the weights from the "
            "graph: layer(graph.with_edge_weight(edge_weight), x).")


@pytest.mark.parametrize("name", LAYERS)
def test_edge_attr_keyword_points_to_the_graph_and_message_passing(name):
    layer = LAYERS[name]()
    _raises(lambda: layer(G, X, edge_attr=W),
            f"{name}: unexpected keyword argument edge_attr (PyG's); a weight per edge goes in the graph, "
            "layer(graph.with_edge_weight(edge_attr), x), and other edge features reach a message function "
            "through jgrad.nn.functional.message_passing(graph, x, message_fn, edge_data=edge_attr).")


@pytest.mark.parametrize("name", LAYERS)
def test_edge_index_keyword_points_to_from_edge_index(name):
    layer = LAYERS[name]()
    _raises(lambda: layer(G, X, edge_index=jnp.stack([G.senders, G.receivers])),
            f"{name}: unexpected keyword argument edge_index (PyG's); the graph takes its place: layer(graph, x) "
            "with graph = jgrad.Graph.from_edge_index(edge_index).")


def test_pyg_argument_order_with_edge_weight_points_to_from_edge_index():
    edge_index = jnp.stack([G.senders, G.receivers])
    for call in (lambda: GCNConv(3, 2, rngs=nnx.Rngs(0))(X, edge_index, W),
                 lambda: GCNConv(3, 2, rngs=nnx.Rngs(0))(X, edge_index, edge_weight=W)):
        _raises(call, "GCNConv: called with PyG's arguments (x, edge_index, ...); jgrad's call is layer(graph, x) "
                      "with the edge weights in the graph: graph = jgrad.Graph.from_edge_index(edge_index, "
                      "edge_weight=edge_weight).")


def test_positional_key_and_unknown_keywords():
    layer = GATConv(3, 2, rngs=nnx.Rngs(0))
    _raises(lambda: layer(G, X, jax.random.key(0)),
            "GATConv: takes (graph, x) and got 1 more positional argument; the random key goes by keyword: "
            "layer(graph, x, key=key).")
    _raises(lambda: layer(G, X, W, W, size=None),
            "GATConv: takes (graph, x) and got 2 more positional arguments; PyG's edge_weight belongs to the graph "
            "in jgrad: layer(graph.with_edge_weight(edge_weight), x); unexpected keyword argument size.")


def test_subclass_is_named_and_the_pointed_call_works():
    class Diff(MessagePassing):
        def message(self, x_sender, x_receiver, edge_data):
            return edge_data[:, None] * (x_sender - x_receiver)

    layer = Diff()
    with pytest.raises(TypeError, match=re.escape("Diff: unexpected keyword argument edge_weight (PyG's)")):
        layer(G, X, edge_weight=W)
    # The equivalent the message names computes the weighted call.
    got = layer(G.with_edge_weight(W), X * jnp.arange(3.0)[:, None])
    x = np.arange(3.0)
    expected = np.zeros(3)
    for s, r, w in zip([0, 1, 2], [1, 2, 0], [0.5, 1.0, 2.0]):
        expected[r] += w * (x[s] - x[r])
    np.testing.assert_allclose(np.asarray(got)[:, 0], expected)
    # The documented keywords still work.
    assert GCNConv(3, 2, rngs=nnx.Rngs(0))(G, X, key=jax.random.key(0),
                                           scaling=GCNConv(3, 2, rngs=nnx.Rngs(0)).prepare(G)).shape == (3, 2)
