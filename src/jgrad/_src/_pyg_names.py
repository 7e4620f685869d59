"""PyTorch Geometric's names for what jgrad names otherwise, in one table per kind of object.

An attribute or keyword looked up by its PyG name fails with an error that gives jgrad's name
(``graph.num_nodes``: ``n_nodes``; ``dataset.x``: ``features``), and a layer called as PyG's
``conv(x, edge_index, edge_weight)`` says where each argument goes, so that code ported from PyG finds
its way without a search through the docs.
"""

from __future__ import annotations

import jax

from ._checks import GraphBase

GRAPH = {
    "num_nodes": "jgrad's is n_nodes",
    "num_edges": "jgrad's is n_edges",
    "num_graphs": "jgrad's is n_graphs",
    "edge_index": "jgrad keeps senders and receivers (PyG's edge_index is jnp.stack([graph.senders, "
                  "graph.receivers]))",
    "edge_attr": "jgrad's is edge_weight",
    "batch": "jgrad's is node_graph_index",
    "x": "a jgrad Graph holds no node features; they are passed to the ops and layers",
}
"""`jgrad.Graph`: hints for the attributes of a PyG ``Data`` / ``Batch``."""

DATASET = {
    "x": "jgrad's is features",
    "y": "jgrad's is labels",
    "edge_index": "jgrad's dataset holds a graph, with graph.senders and graph.receivers",
    "num_nodes": "jgrad's is n_nodes",
    "num_features": "jgrad's is n_features",
    "num_node_features": "jgrad's is n_features",
    "num_classes": "jgrad's is n_classes",
}
"""`jgrad.data.NodeDataset`: hints for the attributes of a PyG node-classification ``Data``."""

KEYWORDS = {
    "num_nodes": "n_nodes",
    "edge_attr": "edge_weight",
}
"""jgrad's keywords for PyG's keywords of the graph constructors."""


def missing_attribute(owner: object, name: str, hints: dict[str, str]) -> AttributeError:
    """The AttributeError for ``owner.name``, with the hint for PyG's ``name`` if it has one."""
    message = f"'{type(owner).__name__}' object has no attribute '{name}'"
    if name in hints:
        message += f"; that is PyG's name: {hints[name]}."
    return AttributeError(message)


def unexpected_keywords(where: str, keywords: dict) -> TypeError:
    """The TypeError for keywords a function does not take, giving jgrad's keyword for PyG's."""
    named = [f"{name} (PyG's name; jgrad's is {KEYWORDS[name]})" if name in KEYWORDS else name for name in keywords]
    return TypeError(f"{where}: unexpected keyword argument{'s' if len(named) > 1 else ''} {', '.join(named)}.")


LAYER_KEYWORDS = {
    "edge_weight": "jgrad's layers read the weights from the graph: layer(graph.with_edge_weight(edge_weight), x)",
    "edge_attr": "a weight per edge goes in the graph, layer(graph.with_edge_weight(edge_attr), x), and other edge "
                 "features reach a message function through jgrad.nn.functional.message_passing(graph, x, "
                 "message_fn, edge_data=edge_attr)",
    "edge_index": "the graph takes its place: layer(graph, x) with graph = jgrad.Graph.from_edge_index(edge_index)",
}
"""jgrad's equivalents of PyG's keywords of a layer's ``forward``; a jgrad layer is called as
``layer(graph, x, *, key=None)``."""


def layer_call(where: str, graph: object, args: tuple, keywords: dict) -> TypeError:
    """The TypeError for a layer called with arguments beyond ``(graph, x, *, key=None)``, most often
    PyG's ``conv(x, edge_index, edge_weight)``: it names jgrad's equivalent of each argument."""
    if hasattr(graph, "shape") and not isinstance(graph, GraphBase):
        return TypeError(f"{where}: called with PyG's arguments (x, edge_index, ...); jgrad's call is layer(graph, x) "
                         "with the edge weights in the graph: graph = jgrad.Graph.from_edge_index(edge_index, "
                         "edge_weight=edge_weight).")
    problems = []
    if args:
        count = f"{len(args)} more positional argument{'s' if len(args) > 1 else ''}"
        if any(_is_key(arg) for arg in args):
            problems.append(f"takes (graph, x) and got {count}; the random key goes by keyword: "
                            "layer(graph, x, key=key)")
        else:
            problems.append(f"takes (graph, x) and got {count}; PyG's edge_weight belongs to the graph in jgrad: "
                            "layer(graph.with_edge_weight(edge_weight), x)")
    for name in keywords:
        hint = f" (PyG's); {LAYER_KEYWORDS[name]}" if name in LAYER_KEYWORDS else ""
        problems.append(f"unexpected keyword argument {name}{hint}")
    return TypeError(f"{where}: {'; '.join(problems)}.")


def _is_key(value: object) -> bool:
    """A typed JAX random key (``jax.random.key``); raw uint32 keys look like any other array."""
    dtype = getattr(value, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
