"""The ``jgrad demo`` experiment: a GCN on the karate club, then which edges its prediction hinges on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import nn
from ..data import karate_club
from ..gradients import adjacency_grad, edge_grad
from ._fit import fit
from ._optim import make_optimizer
from ._step import EarlyStopping


def run_demo(*, node: int | None = None, k: int = 5, seed: int = 0, epochs: int = 200,
             out: Callable[[str], Any] = print) -> dict[str, Any]:
    """Trains a 2-layer GCN on Zachary's karate club and explains one node's prediction through the graph.

    The GCN (hidden 16, dropout 0.5, Adam 0.01, weight decay 5e-4 on the first layer) learns from the two
    leaders only. For ``node`` (default: the test member predicted with the smallest margin) the loss
    ``L = cross-entropy(model(A, X)[node], label[node])`` is differentiated w.r.t. the adjacency:
    `jgrad.edge_grad` gives dL/dw for the existing friendships, `jgrad.adjacency_grad` gives dL/dA for
    all 34 x 34 pairs, from which the missing friendships that would most raise (``sign=+1``) and most
    lower (``sign=-1``) the loss are listed. Gradients are w.r.t. undirected pairs (one friendship = both
    directions): ``edge_grad(..., symmetric=True)`` and ``adjacency_grad(..., symmetric=True)``.

    Args:
      node: the member to explain; None picks the least confident test member.
      k: how many edges to list in each table.
      seed: the training seed.
      epochs: training epochs (no early stopping: the karate split has no validation members).
      out: where lines are written.

    Returns:
      ``{"test_acc", "node", "label", "probability", "edges", "add_harmful", "add_helpful"}`` where each
      edge list holds ``(u, v, dL/dA)`` triples.
    """
    if int(k) < 1:
        raise ValueError(f"demo: --top must be at least 1; got {k}.")
    data = karate_club()
    if node is not None and not 0 <= node < data.graph.n_nodes:  # before training, not after it
        raise ValueError(f"demo: --node must be a member of the karate club, in [0, {data.graph.n_nodes}); "
                         f"got {node}.")
    make_model = lambda rngs: nn.GCN(data.n_features, 16, data.n_classes, dropout=0.5, rngs=rngs)
    result = fit(make_model, data, make_optimizer(0.01, 5e-4, "first_layer"), seeds=(seed,), epochs=epochs,
                 early_stopping=EarlyStopping("none"), progress=False)
    params = jax.tree.map(lambda leaf: leaf[0], result.state.best_params)
    model = result.model_def.merge(params)
    features, labels = jnp.asarray(data.features), np.asarray(data.labels)
    logits = np.asarray(model(data.graph, features))
    probability = np.asarray(jax.nn.softmax(logits))
    test_acc = float(result.scores["test_acc"][0])
    out(f"GCN on the karate club ({data.graph.n_nodes} members, {data.graph.n_edges // 2} friendships, "
        f"trained on members 0 and 33 for {epochs} epochs): test accuracy {test_acc:.3f}")

    if node is None:
        test = np.flatnonzero(data.test_mask)
        correct = probability[test, labels[test]]
        node = int(test[np.argmin(np.abs(correct - 0.5))])
    label = int(labels[node])

    def loss(graph, x):
        return optax.softmax_cross_entropy_with_integer_labels(model(graph, x)[node], label)

    out(f"\nExplaining member {node} (faction {label}; P(correct) = {probability[node, label]:.3f}), "
        f"L = cross-entropy of its prediction.")
    pairs = jax.device_get(edge_grad(loss, data.graph, features, symmetric=True))  # one value per friendship
    ranked = np.argsort(-np.abs(pairs.values), kind="stable")[:k]
    edges = [(int(pairs.rows[i]), int(pairs.cols[i]), float(pairs.values[i])) for i in ranked]
    out("\nMost influential existing friendships (jgrad.edge_grad; dL/dw < 0: the edge supports the "
        "prediction, removing it raises L):")
    _table(edges, out)

    grad = adjacency_grad(loss, data.graph, features, symmetric=True)
    harmful = _pairs(grad.topk(k, among="non_edges", sign=1))
    helpful = _pairs(grad.topk(k, among="non_edges", sign=-1))
    out("\nMissing friendships whose addition would most raise L (jgrad.adjacency_grad, sign=+1):")
    _table(harmful, out)
    out("\nMissing friendships whose addition would most lower L (sign=-1):")
    _table(helpful, out)
    return {"test_acc": test_acc, "node": node, "label": label, "probability": float(probability[node, label]),
            "edges": edges, "add_harmful": harmful, "add_helpful": helpful}


def _pairs(top) -> list[tuple[int, int, float]]:
    rows, cols, values = (np.asarray(a) for a in (top.rows, top.cols, top.values))
    return [(int(r), int(c), float(v)) for r, c, v in zip(rows, cols, values) if r >= 0]


def _table(pairs: list[tuple[int, int, float]], out: Callable[[str], Any]) -> None:
    out(f"  {'u':>3} {'v':>3}  {'dL/dA':>10}")
    for u, v, value in pairs:
        out(f"  {u:>3} {v:>3}  {value:>+10.5f}")
