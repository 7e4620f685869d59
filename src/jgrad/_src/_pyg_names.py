"""PyTorch Geometric's names for what jgrad names otherwise, in one table per kind of object.

An attribute or keyword looked up by its PyG name fails with an error that gives jgrad's name
(``graph.num_nodes``: ``n_nodes``; ``dataset.x``: ``features``), so that code ported from PyG finds
its way without a search through the docs.
"""

from __future__ import annotations

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
