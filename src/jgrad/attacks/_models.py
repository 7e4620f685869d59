"""The models attacks train: a two-layer GCN (the victim) and its linearised form (the surrogate).

Both follow the reference GCN of the attack literature: ``logits = Â act(Â X W1 + b1) W2 + b2`` with
``Â = D^-1/2 (A + I) D^-1/2`` (computed by `jgrad.gradients.propagate`, so the factored adjacency
gradient applies), dropout between the layers, weights drawn from ``U(-1/sqrt(F_out), 1/sqrt(F_out))``,
Adam with L2 weight decay, and the parameters of the last epoch that improved the best validation loss
or the best validation accuracy kept (the reference rule; `GCNConfig.selection`). The surrogate has no
ReLU, no bias and no dropout, and keeps the epoch of the best validation accuracy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._src._checks import is_concrete
from .._src._types import check_choice
from ..gradients import propagate
from ..graph import Graph
from ._checks import check_labels, check_mask
from ._features import Features, features_matmul, n_features

Params = dict[str, jax.Array]
SELECTIONS = ("accuracy", "loss_or_accuracy", "last")


@dataclasses.dataclass(frozen=True)
class GCNConfig:
    """Hyper-parameters of a two-layer GCN and its training (all static).

    Attributes:
      hidden: hidden width H.
      relu: ReLU between the layers (False: the linearised surrogate).
      bias: bias terms in both layers.
      dropout: dropout rate on the hidden layer while training.
      learning_rate: Adam step size.
      weight_decay: L2 penalty coefficient, added to the gradient as in Adam with weight decay.
      epochs: full-batch training steps.
      selection: which epoch's parameters training returns: ``"accuracy"``, the first epoch with the
        best validation accuracy; ``"loss_or_accuracy"``, the last epoch that lowered the best
        validation loss or raised the best validation accuracy (the rule of the reference GCN that
        the published attack tables evaluate); ``"last"``, the final epoch (no validation needed).
    """

    hidden: int = 16
    relu: bool = True
    bias: bool = True
    dropout: float = 0.5
    learning_rate: float = 0.01
    weight_decay: float = 5e-4
    epochs: int = 200
    selection: Literal["accuracy", "loss_or_accuracy", "last"] = "accuracy"

    def __post_init__(self):
        check_choice("GCNConfig", "selection", self.selection, SELECTIONS)


VICTIM = GCNConfig(selection="loss_or_accuracy")
SURROGATE = GCNConfig(relu=False, bias=False, dropout=0.0)


def init_gcn(key: jax.Array, in_features: int, n_classes: int, config: GCNConfig = VICTIM,
             dtype: Any = jnp.float32) -> Params:
    """Weights ``w1`` (F, H), ``w2`` (H, C) and, with ``config.bias``, ``b1`` (H,), ``b2`` (C,)."""
    sizes = [(in_features, config.hidden), (config.hidden, n_classes)]
    keys = jax.random.split(key, 4)
    params = {}
    for i, (fan_in, fan_out) in enumerate(sizes):
        bound = 1.0 / jnp.sqrt(fan_out)
        params[f"w{i + 1}"] = jax.random.uniform(keys[2 * i], (fan_in, fan_out), dtype, -bound, bound)
        if config.bias:
            params[f"b{i + 1}"] = jax.random.uniform(keys[2 * i + 1], (fan_out,), dtype, -bound, bound)
    return params


def gcn_logits(params: Params, graph: Graph, x: Features, config: GCNConfig = VICTIM, *,
               key: jax.Array | None = None) -> jax.Array:
    """(N, C) logits ``Â act(Â X W1 + b1) W2 + b2``; dropout on the hidden layer only when ``key`` is given."""
    h = propagate(graph, features_matmul(x, params["w1"]))
    if config.bias:
        h = h + params["b1"][None, :]
    if config.relu:
        h = jax.nn.relu(h)
    if key is not None and config.dropout > 0:
        keep = jax.random.bernoulli(key, 1.0 - config.dropout, h.shape)
        h = jnp.where(keep, h / (1.0 - config.dropout), 0.0)
    out = propagate(graph, h @ params["w2"])
    return out + params["b2"][None, :] if config.bias else out


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the nodes where ``mask`` is True."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    mask = mask.astype(logits.dtype)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Fraction of the masked nodes whose arg-max logit is their label."""
    hits = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32) * mask
    return jnp.sum(hits) / jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)


def train_gcn(graph: Graph, x: Features, labels: jax.Array, train_mask: jax.Array, val_mask: jax.Array,
              *, key: jax.Array, n_classes: int, config: GCNConfig = VICTIM) -> Params:
    """Trains a GCN for ``config.epochs`` full-batch steps; returns the parameters `GCNConfig.selection` picks.

    Pure and jit-able (``config`` and ``n_classes`` static); ``jax.vmap`` over ``key`` trains several
    initialisations at once. ``labels``: (N,) ints in ``[0, n_classes)``; ``train_mask``, ``val_mask``:
    (N,) bool; shapes and dtypes are checked always, values (label range, an empty ``train_mask``) when
    concrete.
    """
    n = int(graph.n_nodes)
    check_labels("train_gcn", labels, n, n_classes)
    check_mask("train_gcn", "train_mask", train_mask, n)
    check_mask("train_gcn", "val_mask", val_mask, n, nonempty=False)
    if config.selection != "last" and is_concrete(val_mask) and not np.any(np.asarray(val_mask)):
        raise ValueError(f"train_gcn: val_mask selects no node, so selection={config.selection!r} has nothing to "
                         "select by; pass validation nodes or use GCNConfig(selection='last').")
    init_key, dropout_key = jax.random.split(key)
    params = init_gcn(init_key, n_features(x), n_classes, config)
    optimizer = optax.chain(optax.add_decayed_weights(config.weight_decay), optax.adam(config.learning_rate))

    def loss_fn(p, step_key):
        logits = gcn_logits(p, graph, x, config, key=step_key)
        return masked_cross_entropy(logits, labels, train_mask)

    def epoch(carry, step_key):
        p, state, best, best_acc, best_loss = carry
        grads = jax.grad(loss_fn)(p, step_key)
        updates, state = optimizer.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        if config.selection == "last":  # no validation pass needed
            return (p, state, p, best_acc, best_loss), None
        logits = gcn_logits(p, graph, x, config)
        acc = masked_accuracy(logits, labels, val_mask)
        better = acc > best_acc
        if config.selection == "loss_or_accuracy":
            loss = masked_cross_entropy(logits, labels, val_mask)
            better = better | (loss < best_loss)
            best_loss = jnp.minimum(loss, best_loss)
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), p, best)
        return (p, state, best, jnp.maximum(acc, best_acc), best_loss), None

    carry = (params, optimizer.init(params), params, jnp.asarray(-1.0), jnp.asarray(jnp.inf))
    (_, _, best, _, _), _ = jax.lax.scan(epoch, carry, jax.random.split(dropout_key, config.epochs))
    return best


def victim_accuracy(graph: Graph, x: Features, labels: jax.Array, masks: tuple[jax.Array, jax.Array, jax.Array],
                    keys: jax.Array, *, n_classes: int, config: GCNConfig = VICTIM) -> jax.Array:
    """Test accuracy of GCNs trained on ``graph`` (poisoning), one per key; shape (K,). Jit with static config.

    ``masks`` are the (N,) bool train, val and test masks; an empty ``test_mask`` is a ValueError when
    concrete (its accuracy would read 0).
    """
    train_mask, val_mask, test_mask = masks
    check_mask("victim_accuracy", "test_mask", test_mask, int(graph.n_nodes))

    def one(key):
        params = train_gcn(graph, x, labels, train_mask, val_mask, key=key, n_classes=n_classes, config=config)
        return masked_accuracy(gcn_logits(params, graph, x, config), labels, test_mask)

    return jax.vmap(one)(keys)
