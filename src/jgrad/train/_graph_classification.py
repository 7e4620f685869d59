"""Graph classification on mini-batches of padded graphs whose sizes come from a few buckets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ..graph import Graph, batch, pad_to_bucket
from ._model import ModelDef, Params, init_params
from ._state import TrainState
from ._step import Metrics, make_train_step, masked_cross_entropy


@dataclasses.dataclass(frozen=True)
class GraphBatch:
    """A padded disjoint-union batch of graphs with one label per graph; a JAX pytree.

    Attributes:
      graph: the padded batch (`jgrad.batch` then `jgrad.graph.pad_to_bucket`), G graphs: the real
        graphs, then padding graphs (``graph_mask`` False) up to G = ``batch_size + 1`` in every batch.
      features: node features, shape (N, F); zeros on padding nodes.
      labels: class of each graph, shape (G,), int32; 0 for the padding graphs.
      label_mask: shape (G,), bool; False for the padding graphs, which the loss and accuracy ignore.
    """

    graph: Graph
    features: jax.Array
    labels: jax.Array
    label_mask: jax.Array


jax.tree_util.register_dataclass(GraphBatch)


def make_graph_batches(
    graphs: Sequence[Graph],
    features: Sequence[Any],
    labels: Sequence[int],
    *,
    batch_size: int,
    growth: float = 2.0,
    minimum: int = 16,
) -> list[GraphBatch]:
    """Groups graphs into batches of ``batch_size`` and pads each to bucket sizes. Eager, host-side.

    Graphs are first sorted by node count so that a batch holds graphs of similar size and wastes little
    padding. Each batch's node and edge counts are rounded up by `jgrad.graph.bucket_size`, and every
    batch has ``batch_size + 1`` graphs (a last, smaller batch gets more empty padding graphs), so the
    number of distinct batch shapes, and of compilations of a jitted step, is at most (number of node
    buckets) x (number of edge buckets).

    Args:
      graphs: the graphs.
      features: node features of each graph, shapes (N_g, F).
      labels: the class of each graph.
      batch_size: graphs per batch.
      growth: bucket growth factor (see `jgrad.graph.bucket_size`).
      minimum: smallest bucket.

    Returns:
      A list of `GraphBatch`.
    """
    if len(graphs) != len(features) or len(graphs) != len(labels):
        raise ValueError(f"make_graph_batches: graphs, features and labels must have the same length; got "
                         f"{len(graphs)}, {len(features)} and {len(labels)}.")
    if batch_size < 1:
        raise ValueError(f"make_graph_batches: batch_size must be >= 1; got {batch_size}.")
    order = np.argsort([g.n_nodes for g in graphs], kind="stable")
    batches = []
    for begin in range(0, len(order), batch_size):
        members = order[begin:begin + batch_size]
        padded = pad_to_bucket(batch([graphs[i] for i in members]), growth=growth, minimum=minimum,
                               n_graphs=batch_size + 1)
        x = np.concatenate([np.asarray(features[i], np.float32) for i in members])
        x = np.concatenate([x, np.zeros((padded.n_nodes - x.shape[0], x.shape[1]), np.float32)])
        n_graphs = padded.n_graphs
        y = np.zeros(n_graphs, np.int32)
        y[:len(members)] = [int(labels[i]) for i in members]
        mask = np.arange(n_graphs) < len(members)
        batches.append(GraphBatch(padded, jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask)))
    return batches


def graph_classification_loss(
    model_def: ModelDef, params: Params, batch: GraphBatch, key: jax.Array | None
) -> tuple[jax.Array, Metrics]:
    """Cross-entropy of the per-graph logits ``model(batch.graph, batch.features, key=key)``, shape (G, C)."""
    logits = model_def.apply(params, batch.graph, batch.features, key=key)
    loss, acc = masked_cross_entropy(logits, batch.labels, batch.label_mask)
    return loss, {"loss": loss, "acc": acc}


def fit_graph_classification(
    make_model: Callable[[nnx.Rngs], nnx.Module],
    batches: Sequence[GraphBatch],
    optimizer: optax.GradientTransformation,
    *,
    epochs: int,
    seed: int = 0,
    eval_batches: Sequence[GraphBatch] = (),
) -> tuple[ModelDef, TrainState, list[dict[str, float]]]:
    """Trains a graph classifier on bucketed mini-batches (one seed).

    Each epoch visits ``batches`` in an order drawn from ``seed``; the jitted, donating train step
    compiles once per distinct batch shape (bounded by `make_graph_batches`' buckets).

    Args:
      make_model: builds the model from an `nnx.Rngs`; it must return per-graph logits of shape (G, C),
        e.g. ``GIN(..., readout="sum")``.
      batches: training batches from `make_graph_batches`.
      optimizer: an optax transformation.
      epochs: passes over ``batches``.
      seed: seeds the parameters, dropout and the batch order.
      eval_batches: batches scored (without dropout) after every epoch.

    Returns:
      ``(model_def, state, history)``: ``history`` has one dict per epoch with the mean training
      ``loss`` and ``acc`` and, with ``eval_batches``, ``eval_acc`` (weighted by graphs).
    """
    init_key, train_key = jax.random.split(jax.random.key(seed))
    model_def, params = init_params(make_model, init_key[None])
    params = jax.tree.map(lambda leaf: leaf[0], params)
    state = TrainState.create(params, optimizer, train_key)
    step = jax.jit(make_train_step(model_def, optimizer, loss_fn=_loss), donate_argnums=0)
    score = jax.jit(lambda p, b: graph_classification_loss(model_def, p, b, None)[1])
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(epochs):
        totals = {"loss": 0.0, "acc": 0.0}
        for index in rng.permutation(len(batches)):
            state, metrics = step(state, batches[index])
            for name in totals:
                totals[name] += float(metrics[name]) / len(batches)
        if eval_batches:
            hits = sum(float(score(state.params, b)["acc"]) * float(np.sum(b.label_mask)) for b in eval_batches)
            totals["eval_acc"] = hits / sum(float(np.sum(b.label_mask)) for b in eval_batches)
        history.append(totals)
    return model_def, state, history


_loss = graph_classification_loss
