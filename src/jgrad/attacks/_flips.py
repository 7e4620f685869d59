"""Discrete structure perturbations of an undirected graph: the flip set and greedy flip selection.

A flip toggles one unordered pair ``{i, j}``: an edge is removed or a non-edge is added, in both
directions. `FlipSet` holds the perturbed graph on the host with a *fixed edge capacity* (removed
edges stay as weight-0 edges, added edges fill padding slots), so the jitted scoring function never
recompiles while an attack runs, and the removed pairs remain "edges" to
`jgrad.AdjacencyGrad.topk`, which therefore never proposes to add them back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..gradients import AdjacencyGrad
from ..graph import Graph
from ._checks import check_undirected
from ._data import graph_from_pairs, undirected_pairs


class FlipScores(NamedTuple):
    """The best candidate flips of one scoring step, each list best first.

    Attributes:
      add_scores: (k,) ``dL/da`` of the best non-edges to add; NaN where there are fewer candidates.
      add_rows, add_cols: (k,) the pairs (``rows <= cols``); -1 where there are fewer candidates.
      remove_scores: (k,) ``-dL/da`` of the best existing edges to remove; -inf for invalid slots.
      remove_index: (k,) index into `FlipSet.pairs` of each of those edges.
    """

    add_scores: jax.Array
    add_rows: jax.Array
    add_cols: jax.Array
    remove_scores: jax.Array
    remove_index: jax.Array


def node_pairs(n_nodes: int) -> int:
    """The number of unordered pairs ``{i, j}``, ``i < j`` (no self loops) of an ``n_nodes``-node graph."""
    return n_nodes * (n_nodes - 1) // 2


def check_budget(where: str, budget: Any, limit: int, pairs: str) -> int:
    """``budget`` as a Python int, checked before an attack does any work; raises one-line errors.

    Args:
      where: the public function, named in the message.
      budget: the caller's budget: an int (Python or NumPy), not a bool or a float.
      limit: the most pairs the attack may flip.
      pairs: what ``limit`` counts, e.g. ``"node pairs that can be flipped on this graph (N=40)"``.

    Raises:
      TypeError: ``budget`` is not an int (bools and floats included).
      ValueError: ``budget`` is negative or above ``limit``.
    """
    expected = f"expected 0 <= budget <= {limit}"
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, (int, np.integer)):
        hint = ""
        if isinstance(budget, (float, np.floating)) and 0 < budget < 1:
            hint = " A fraction of the edges? Pass int(fraction * len(jgrad.attacks.undirected_pairs(graph)))."
        raise TypeError(f"{where}: budget must be an int; got {type(budget).__name__} {budget!r:.60}, "
                        f"{expected}.{hint}")
    if budget < 0:
        raise ValueError(f"{where}: budget={budget} is negative; {expected}.")
    if budget > limit:
        raise ValueError(f"{where}: budget={budget} exceeds the {limit} {pairs}; {expected}.")
    return int(budget)


def check_graph_budget(where: str, graph: Graph, budget: Any) -> int:
    """`check_budget` against every unordered pair of ``graph`` without self loops, ``N (N - 1) / 2``."""
    n = int(graph.n_nodes)
    return check_budget(where, budget, node_pairs(n), f"node pairs that can be flipped on this graph (N={n})")


class FlipSet:
    """An undirected graph under attack: the original pairs, the flips made so far, and degree bookkeeping.

    Args:
      graph: the clean graph; its distinct unordered pairs (no self loops) are the original edges.
      capacity: the most pairs that can be added (the attack budget).
      dtype: dtype of the edge weights of `graph`.

    Rules enforced by `can_flip`: no self loops, no pair flipped twice, and no removal that leaves a
    node without neighbours (a singleton).
    """

    def __init__(self, graph: Graph, capacity: int, dtype: Any = jnp.float32):
        if isinstance(capacity, (bool, np.bool_)) or not isinstance(capacity, (int, np.integer)):
            raise TypeError(f"FlipSet: capacity must be an int; got {type(capacity).__name__} {capacity!r:.60}, "
                            "expected an int >= 0.")
        if capacity < 0:
            raise ValueError(f"FlipSet: capacity={capacity} is negative; expected capacity >= 0.")
        self.n_nodes = int(graph.n_nodes)
        self.pairs = undirected_pairs(graph)
        self.capacity = int(capacity)
        self.dtype = dtype
        self.present = np.ones(len(self.pairs), bool)
        self.added = np.zeros((self.capacity, 2), np.int64)
        self.n_added = 0
        self.degree = np.bincount(self.pairs.ravel(), minlength=self.n_nodes)
        self.flips: list[tuple[int, int]] = []
        self._index = {int(i) * self.n_nodes + int(j): e for e, (i, j) in enumerate(self.pairs)}
        self._flipped: set[int] = set()

    def _code(self, i: int, j: int) -> int:
        i, j = min(i, j), max(i, j)
        return i * self.n_nodes + j

    def is_edge(self, i: int, j: int) -> bool:
        """Whether the pair is an edge of the perturbed graph."""
        code = self._code(i, j)
        if code in self._index:
            return bool(self.present[self._index[code]])
        return code in self._flipped

    def can_flip(self, i: int, j: int) -> bool:
        """Whether flipping ``{i, j}`` is allowed (see the class rules) and within capacity."""
        if i == j or not (0 <= i < self.n_nodes and 0 <= j < self.n_nodes) or self._code(i, j) in self._flipped:
            return False
        if self.is_edge(i, j):
            return self.degree[i] > 1 and self.degree[j] > 1
        return self.n_added < self.capacity

    def flip(self, i: int, j: int) -> None:
        """Toggles ``{i, j}``; raises ValueError if `can_flip` is False."""
        i, j = int(i), int(j)
        if not self.can_flip(i, j):
            raise ValueError(f"FlipSet.flip: pair ({i}, {j}) cannot be flipped (self loop, flipped already, "
                             "a removal that would leave a node without neighbours, or capacity reached).")
        code = self._code(i, j)
        if code in self._index:
            self.present[self._index[code]] = False
            self.degree[[i, j]] -= 1
        else:
            self.added[self.n_added] = (min(i, j), max(i, j))
            self.n_added += 1
            self.degree[[i, j]] += 1
        self._flipped.add(code)
        self.flips.append((min(i, j), max(i, j)))

    def removable(self) -> np.ndarray:
        """(P,) bool: original edges still present whose removal leaves no singleton."""
        i, j = self.pairs[:, 0], self.pairs[:, 1]
        return self.present & (self.degree[i] > 1) & (self.degree[j] > 1)

    def graph(self) -> Graph:
        """The perturbed graph with a fixed edge count ``2 (P + capacity)``, for jitted scoring.

        Original pairs come first (weight 1, or 0 once removed), then the added pairs (weight 1), then
        padding slots (``edge_mask`` False). Both directions of every pair are stored.
        """
        senders = np.concatenate([self.pairs[:, 0], self.added[:, 0]])
        receivers = np.concatenate([self.pairs[:, 1], self.added[:, 1]])
        weight = np.concatenate([self.present, np.ones(self.capacity, bool)]).astype(np.float64)
        mask = np.concatenate([np.ones(len(self.pairs), bool), np.arange(self.capacity) < self.n_added])
        return Graph(
            senders=jnp.asarray(np.concatenate([senders, receivers]), jnp.int32),
            receivers=jnp.asarray(np.concatenate([receivers, senders]), jnp.int32),
            n_nodes=self.n_nodes,
            edge_weight=jnp.asarray(np.concatenate([weight, weight]), self.dtype),
            edge_mask=jnp.asarray(np.concatenate([mask, mask])),
        )


def perturbed_graph(graph: Graph, flips: np.ndarray, *, n_edges: int | None = None) -> Graph:
    """The unweighted undirected graph after flipping each pair of ``flips`` (shape (P, 2)) once.

    ``flips``: (P, 2) int node pairs ``(i, j)`` in either order, ``i != j``, each unordered pair at most
    once (a one-line ValueError or TypeError otherwise). The result holds both directions of every
    pair; the edge weights and self loops of ``graph`` are dropped (`undirected_pairs`).

    With ``n_edges`` the edge arrays are padded to that length with masked edges (``edge_mask`` False),
    so graphs perturbed by different flips share one shape and one compilation.
    """
    n = graph.n_nodes
    flips = _checked_flips("perturbed_graph", flips, n)
    codes = set((undirected_pairs(graph) @ np.array([n, 1])).tolist())
    for i, j in flips:
        codes ^= {int(i) * n + int(j)}
    codes = np.array(sorted(codes), np.int64)
    result = graph_from_pairs(np.stack([codes // n, codes % n], axis=1), n)
    if n_edges is None:
        return result
    pad = n_edges - result.n_edges
    if pad < 0:
        raise ValueError(f"perturbed_graph: n_edges is too small; got {n_edges}, expected at least {result.n_edges}.")
    zeros = jnp.zeros((pad,), jnp.int32)
    return Graph(senders=jnp.concatenate([result.senders, zeros]),
                 receivers=jnp.concatenate([result.receivers, zeros]), n_nodes=n,
                 edge_mask=jnp.arange(n_edges) < result.n_edges)


def _checked_flips(where: str, flips: Any, n_nodes: int) -> np.ndarray:
    """``flips`` as (P, 2) int64 pairs ``(min, max)``; raises unless they are distinct node pairs without self loops."""
    array = np.asarray(flips)
    if array.size == 0:
        return np.zeros((0, 2), np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{where}: flips must be int node pairs; got dtype {array.dtype}, expected an integer dtype.")
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{where}: flips must have shape (P, 2); got {array.shape}.")
    pairs = np.sort(array.astype(np.int64), axis=1)
    shown = lambda k: tuple(int(v) for v in array[k])
    for bad, what, rule in [((pairs[:, 0] < 0) | (pairs[:, 1] >= n_nodes), "is out of range",
                             f"0 <= node < n_nodes={n_nodes}"),
                            (pairs[:, 0] == pairs[:, 1], "is a self loop", "i != j")]:
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where}: flips[{k}]={shown(k)} {what} ({int(bad.sum())} of {len(pairs)} flips); "
                             f"expected {rule}.")
    codes = pairs[:, 0] * n_nodes + pairs[:, 1]
    order = np.argsort(codes, kind="stable")
    repeated = order[1:][codes[order][1:] == codes[order][:-1]]
    if repeated.size:
        k = int(repeated.min())
        raise ValueError(f"{where}: flips[{k}]={shown(k)} repeats an earlier pair; "
                         "expected each unordered pair at most once (a second flip would undo the first).")
    return pairs


def flip_scores(grad: AdjacencyGrad, pairs: jax.Array, removable: jax.Array, k: int) -> FlipScores:
    """The k best additions and the k best removals by ``score = dL/da * (1 - 2 a)``; jit-able.

    Args:
      grad: the symmetric gradient w.r.t. the undirected adjacency (`AdjacencyGrad.symmetric`),
        computed on a `FlipSet.graph`.
      pairs: (P, 2) the original pairs (`FlipSet.pairs`).
      removable: (P,) bool, `FlipSet.removable`.
      k: candidates of each kind (static).

    Adding a non-edge (``a = 0``) scores ``+dL/da`` and removing an edge (``a = 1``) scores ``-dL/da``;
    non-edges are ranked blockwise by `AdjacencyGrad.topk`, never as an N x N array.
    """
    add = grad.topk(k, among="non_edges", sign=1)
    remove = -grad.at(pairs[:, 0], pairs[:, 1])
    remove = jnp.where(removable, remove, -jnp.inf)
    remove_scores, remove_index = jax.lax.top_k(remove, min(k, int(remove.shape[0])))
    return FlipScores(add.values, add.rows, add.cols, remove_scores, remove_index)


def choose_flips(scores: FlipScores, flip_set: FlipSet, k: int) -> list[tuple[int, int]]:
    """Applies up to k of the scored flips to ``flip_set``, best first, skipping those `can_flip` rejects."""
    scores = jax.device_get(scores)
    candidates = []
    for value, i, j in zip(scores.add_scores, scores.add_rows, scores.add_cols):
        if np.isfinite(value) and i >= 0:
            candidates.append((float(value), int(i), int(j)))
    for value, e in zip(scores.remove_scores, scores.remove_index):
        if np.isfinite(value):
            i, j = flip_set.pairs[int(e)]
            candidates.append((float(value), int(i), int(j)))
    candidates.sort(key=lambda c: -c[0])
    chosen = []
    for _, i, j in candidates:
        if len(chosen) == k:
            break
        if flip_set.can_flip(i, j):
            flip_set.flip(i, j)
            chosen.append((i, j))
    return chosen


def step_key(key: jax.Array, step: int) -> jax.Array:
    """The PRNG key `greedy_flips` hands to scoring step ``step`` (counted from 0): ``fold_in(key, step)``."""
    return jax.random.fold_in(key, step)


class GreedyResult(NamedTuple):
    """The flips of a greedy attack in the order they were made, and its cost.

    Attributes:
      flips: (budget, 2) int64 pairs ``(i, j)``, ``i < j``; any prefix is the attack at a smaller budget.
      steps: number of scoring steps (gradient evaluations).
      seconds: wall-clock time of the whole attack, compilation included.
      seconds_per_step: median time of one scoring step after the first (compilation excluded).
    """

    flips: np.ndarray
    steps: int
    seconds: float
    seconds_per_step: float


def greedy_flips(
    score_fn: Callable[[Graph], AdjacencyGrad],
    graph: Graph,
    budget: int,
    *,
    flips_per_step: int = 1,
    dtype: Any = jnp.float32,
    key: jax.Array | None = None,
    log: Callable[[str], None] | None = None,
) -> GreedyResult:
    """Flips ``budget`` pairs greedily: score all pairs, flip the best ``flips_per_step``, repeat.

    Args:
      score_fn: ``score_fn(graph) -> AdjacencyGrad``, the gradient of the attacker's loss w.r.t. the
        adjacency of the perturbed graph (made symmetric here); traced once under ``jax.jit``. With
        ``key``, ``score_fn(graph, step_key)`` instead.
      graph: the clean undirected graph (ValueError if an edge has no reverse edge; checked when concrete);
        its edge weights and self loops are ignored (every edge counts as 1).
      budget: number of pairs to flip, an int with ``0 <= budget <= N (N - 1) / 2`` (checked before any
        work; TypeError or ValueError otherwise). 0 returns no flips without scoring.
      flips_per_step: flips taken from each scoring step (keyword-only).
      dtype: edge-weight dtype of the scored graphs.
      key: optional PRNG key; scoring step ``s`` (from 0) receives `step_key` ``(key, s)``, an argument
        of the jitted step, so the step still compiles once and the attack is deterministic given ``key``.
      log: optional callback receiving one progress line per step.

    Returns:
      `GreedyResult`.

    Raises:
      RuntimeError: no allowed flip is left before ``budget`` flips are made (every remaining pair was
        flipped already or is a removal that would leave a node without neighbours).
    """
    return _greedy_flips("greedy_flips", score_fn, graph, budget, flips_per_step=flips_per_step, dtype=dtype,
                         key=key, log=log)


def _greedy_flips(where, score_fn, graph, budget, *, flips_per_step, dtype, key, log) -> GreedyResult:
    """`greedy_flips`, with errors naming the public function ``where``."""
    budget = check_graph_budget(where, graph, budget)
    check_undirected(where, graph)
    if isinstance(flips_per_step, (bool, np.bool_)) or not isinstance(flips_per_step, (int, np.integer)) \
            or flips_per_step < 1:
        raise ValueError(f"{where}: flips_per_step must be a positive int; got {flips_per_step!r:.60}, "
                         "expected 1 or more flips taken from each scoring step.")
    # No more addition slots than non-edges: the scored graph carries one edge slot per possible addition.
    non_edges = node_pairs(int(graph.n_nodes)) - len(undirected_pairs(graph))
    flip_set = FlipSet(graph, min(budget, non_edges), dtype)
    pairs = jnp.asarray(flip_set.pairs, jnp.int32)
    k = max(2 * flips_per_step, 8)

    @jax.jit
    def step(g, removable, step_key):
        grad = score_fn(g) if step_key is None else score_fn(g, step_key)
        return flip_scores(grad.symmetric(), pairs, removable, k)

    start, times, steps = time.perf_counter(), [], 0
    while len(flip_set.flips) < budget:
        t0 = time.perf_counter()
        scores = step(flip_set.graph(), jnp.asarray(flip_set.removable()),
                      None if key is None else step_key(key, steps))
        chosen = choose_flips(scores, flip_set, min(flips_per_step, budget - len(flip_set.flips)))
        times.append(time.perf_counter() - t0)
        steps += 1
        if not chosen:
            raise RuntimeError(f"{where}: no allowed flip left after {len(flip_set.flips)} of budget={budget} "
                               "flips (the other pairs were flipped already or would leave a node without "
                               "neighbours).")
        if log is not None:
            log(f"step {steps}: {len(flip_set.flips)}/{budget} flips, {times[-1]:.2f} s")
    per_step = float(np.median(times[1:])) if len(times) > 1 else float(times[0]) if times else 0.0
    flips = np.array(flip_set.flips, np.int64).reshape(-1, 2)
    return GreedyResult(flips, steps, time.perf_counter() - start, per_step)
