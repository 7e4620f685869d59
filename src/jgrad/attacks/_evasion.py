"""Attacks driven by the gradient of a *fixed*, clean-trained model: greedy flips and PGD (Xu et al., 2019).

Both attack a GCN trained on the clean graph (its weights stay fixed while the structure changes) and
maximise the cross-entropy of its predictions on the unlabelled nodes against self-training labels
(the model's own clean predictions, true labels on the training nodes), so no test label is used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..gradients import AdjacencyGrad, adjacency_grad
from ..graph import Graph
from ._checks import check_node_inputs, check_undirected
from ._data import undirected_pairs
from ._features import Features
from ._flips import FlipSet, GreedyResult, _greedy_flips, check_budget, node_pairs, perturbed_graph
from ._models import VICTIM, GCNConfig, gcn_logits, masked_cross_entropy, train_gcn


class Target(NamedTuple):
    """A clean-trained model and the labels its attacker scores against.

    Attributes:
      params: the model's weights (`jgrad.attacks.train_gcn`).
      config: its `GCNConfig` (static).
      x: (N, F) features, dense or `SparseFeatures`.
      pseudo_labels: (N,) int; true labels on the training nodes, the model's predictions elsewhere.
      unlabeled_mask: (N,) bool, the nodes whose loss the attacker raises.
    """

    params: dict[str, jax.Array]
    config: GCNConfig
    x: Any
    pseudo_labels: jax.Array
    unlabeled_mask: jax.Array

    @classmethod
    def fit(cls, graph: Graph, x: Features, labels: Any, train_mask: Any, val_mask: Any, *, key: jax.Array,
            n_classes: int, config: GCNConfig = VICTIM) -> Target:
        """Trains the model on the clean graph and derives the self-training labels.

        ``graph`` must be undirected, ``labels`` (N,) ints in ``[0, n_classes)``, ``train_mask`` and
        ``val_mask`` (N,) bool, each selecting a node, and ``train_mask`` must leave unlabelled nodes
        (one-line TypeError or ValueError otherwise).
        """
        check_node_inputs("Target.fit", graph, labels, train_mask, val_mask, n_classes)
        labels, train_mask = jnp.asarray(labels), jnp.asarray(train_mask)
        # The graph is an argument of the jitted training, not a constant baked into the program.
        params = jax.jit(lambda g, k: train_gcn(g, x, labels, train_mask, jnp.asarray(val_mask), key=k,
                                                n_classes=n_classes, config=config))(graph, key)
        predicted = jnp.argmax(gcn_logits(params, graph, x, config), axis=-1)
        return cls(params, config, x, jnp.where(train_mask, labels, predicted).astype(jnp.int32), ~train_mask)

    def loss(self, graph: Graph) -> jax.Array:
        """Mean cross-entropy of the fixed model on ``graph`` over the unlabelled nodes (evaluation mode)."""
        logits = gcn_logits(self.params, graph, self.x, self.config)
        return masked_cross_entropy(logits, self.pseudo_labels, self.unlabeled_mask)

    def adjacency_grad(self, graph: Graph) -> AdjacencyGrad:
        """The factored symmetric ``dL/dA`` of `loss` (jit the call; a failed check gives NaN entries)."""
        return adjacency_grad(self.loss, graph, symmetric=True)


def gradient_attack(target: Target, graph: Graph, budget: int, *, flips_per_step: int = 1,
                    log: Callable[[str], None] | None = None) -> GreedyResult:
    """Greedy flips by the factored all-pairs gradient of a fixed model, re-evaluated after every step.

    ``budget`` is an int with ``0 <= budget <= N (N - 1) / 2``, checked before any work (TypeError or
    ValueError otherwise); 0 returns no flips without scoring. ``log`` (default None: silent) receives
    one progress line per step, see `greedy_flips`.
    """
    return _greedy_flips("gradient_attack", target.adjacency_grad, graph, budget, flips_per_step=flips_per_step,
                         dtype=jnp.float32, key=None, log=log)


class PGDResult(NamedTuple):
    """Flips chosen by `pgd_attack`.

    Attributes:
      flips: (P, 2) int64 pairs ``(i, j)``, ``i < j``, P <= budget.
      candidates: number of candidate pairs optimised over.
      loss: the attacker loss of the chosen binary perturbation.
      seconds: wall-clock time, compilation included.
    """

    flips: np.ndarray
    candidates: int
    loss: float
    seconds: float


def project_budget(s: jax.Array, budget: float, *, iterations: int = 60) -> jax.Array:
    """Euclidean projection onto ``{0 <= s <= 1, sum s <= budget}``.

    ``clip(s, 0, 1)`` if that is within budget, else ``clip(s - mu, 0, 1)`` with ``mu`` found by
    bisection so that the sum equals the budget. Jit-able.
    """
    clipped = jnp.clip(s, 0.0, 1.0)
    low, high = jnp.min(s) - 1.0, jnp.max(s)

    def bisect(_, bounds):
        low, high = bounds
        mid = 0.5 * (low + high)
        over = jnp.sum(jnp.clip(s - mid, 0.0, 1.0)) > budget
        return jnp.where(over, mid, low), jnp.where(over, high, mid)

    low, high = jax.lax.fori_loop(0, iterations, bisect, (low, high))
    projected = jnp.clip(s - high, 0.0, 1.0)
    return jnp.where(jnp.sum(clipped) > budget, projected, clipped)


def pgd_attack(target: Target, graph: Graph, budget: int, *, key: jax.Array, n_candidates: int,
               iterations: int = 100, learning_rate: float = 200.0, samples: int = 20,
               log: Callable[[str], None] | None = None) -> PGDResult:
    """Projected gradient ascent on a relaxed symmetric perturbation, then random sampling of binary flips.

    The perturbed adjacency is ``A' = A + (1 - 2A) ∘ S`` with ``S`` symmetric, non-zero only on a
    candidate set of pairs: every edge of the graph (a removal) and the ``n_candidates`` non-edges with
    the largest factored gradient ``dL/dA`` on the clean graph (additions). ``s`` in ``[0, 1]`` per pair
    ascends the loss with steps ``learning_rate / sqrt(t + 1)`` and is projected onto
    ``{sum s <= budget}`` by bisection (`project_budget`). Then ``samples`` Bernoulli(s) draws within
    budget are scored by the loss, and the best one is kept; removals that would leave a node without
    neighbours are dropped from it.

    ``budget`` is an int with ``0 <= budget <=`` the number of candidate pairs (the edges plus
    ``min(n_candidates, non-edges)``), checked before any work (TypeError or ValueError otherwise);
    0 returns no flips and the clean graph's loss without running the optimisation. ``n_candidates``
    is an int >= 0 (0: removals only). ``graph`` must be undirected (ValueError otherwise). ``log``
    (default None: silent) receives a line every tenth of the iterations (the relaxed loss) and one at
    the end.

    Returns:
      `PGDResult`.
    """
    start = time.perf_counter()
    where = "pgd_attack"
    if isinstance(n_candidates, (bool, np.bool_)) or not isinstance(n_candidates, (int, np.integer)):
        raise TypeError(f"{where}: n_candidates must be an int; got {type(n_candidates).__name__} "
                        f"{n_candidates!r:.60}, expected an int >= 0.")
    if n_candidates < 0:
        raise ValueError(f"{where}: n_candidates={n_candidates} is negative; expected n_candidates >= 0.")
    check_undirected(where, graph)
    edges = undirected_pairs(graph)
    n_additions = min(int(n_candidates), node_pairs(int(graph.n_nodes)) - len(edges))
    budget = check_budget(where, budget, len(edges) + n_additions,
                          f"candidate pairs of this graph ({len(edges)} edges to remove, {n_additions} non-edges "
                          f"to add with n_candidates={n_candidates})")
    if budget == 0:
        loss = float(jax.jit(target.loss)(perturbed_graph(graph, np.zeros((0, 2), np.int64))))
        if log is not None:
            log(f"pgd: budget 0, no flips, loss {loss:.4f}")
        return PGDResult(np.zeros((0, 2), np.int64), len(edges) + n_additions, loss, time.perf_counter() - start)
    flip_set = FlipSet(graph, budget)
    additions = np.zeros((0, 2), np.int64)
    if n_additions:
        grad = jax.jit(target.adjacency_grad)(graph)
        top = jax.device_get(grad.topk(n_additions, among="non_edges", sign=1))
        keep = top.rows >= 0
        additions = np.stack([top.rows[keep], top.cols[keep]], axis=1).astype(np.int64)
    pairs = np.concatenate([edges, additions])
    base = np.concatenate([np.ones(len(edges)), np.zeros(len(additions))]).astype(np.float32)
    relaxed = Graph(
        senders=jnp.asarray(np.concatenate([pairs[:, 0], pairs[:, 1]]), jnp.int32),
        receivers=jnp.asarray(np.concatenate([pairs[:, 1], pairs[:, 0]]), jnp.int32),
        n_nodes=graph.n_nodes,
    )
    base_j = jnp.asarray(base)

    def loss_of(s):
        w = base_j + (1.0 - 2.0 * base_j) * s
        return target.loss(relaxed.with_edge_weight(jnp.concatenate([w, w])))

    every = max(1, iterations // 10)

    def report(t, value):  # on the host, called by every step of the compiled loop
        if (int(t) + 1) % every == 0:
            log(f"pgd: step {int(t) + 1}/{iterations}, relaxed loss {float(value):.4f} "
                f"({time.perf_counter() - start:.1f} s)")

    @jax.jit
    def run(key):
        def step(s, t):
            value, g = jax.value_and_grad(loss_of)(s)
            if log is not None:
                jax.debug.callback(report, t, value, ordered=True)
            s = project_budget(s + learning_rate / jnp.sqrt(t + 1.0) * g, budget)
            return s, None

        s, _ = jax.lax.scan(step, jnp.zeros(len(pairs), jnp.float32), jnp.arange(iterations, dtype=jnp.float32))
        draws = jax.random.uniform(key, (samples, len(pairs))) < s[None, :]
        losses = jax.vmap(lambda d: loss_of(d.astype(jnp.float32)))(draws)
        within = jnp.sum(draws, axis=1) <= budget
        return s, draws, jnp.where(within, losses, -jnp.inf)

    s, draws, losses = jax.device_get(run(key))
    if np.isfinite(losses).any():
        chosen = draws[int(np.argmax(losses))]
    else:  # every draw exceeded the budget: take the budget largest entries of s
        chosen = np.zeros(len(pairs), bool)
        chosen[np.argsort(-s)[:budget]] = True
    for index in np.flatnonzero(chosen)[np.argsort(-s[chosen])]:
        i, j = pairs[index]
        if flip_set.can_flip(int(i), int(j)):
            flip_set.flip(int(i), int(j))
    flips = np.array(flip_set.flips, np.int64).reshape(-1, 2)
    final = float(jax.jit(target.loss)(perturbed_graph(graph, flips)))
    if log is not None:
        log(f"pgd: {len(pairs)} candidates, {len(flips)} flips, loss {final:.4f}")
    return PGDResult(flips, len(pairs), final, time.perf_counter() - start)

