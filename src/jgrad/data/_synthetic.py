"""Synthetic graphs: a contextual stochastic block model and a power-law (Chung-Lu) graph.

Both samplers draw edges in O(E) time and memory (no N x N matrix), take an explicit ``seed`` for a
`numpy.random.Generator`, and return symmetric, unweighted graphs without self loops or duplicate edges.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from jgrad.graph import Graph

from .._src._search import sorted_unique
from ._dataset import NodeDataset, symmetric_edges

# A seed for numpy.random.default_rng: an int, a SeedSequence or a Generator.
Seed = Any


def csbm(
    n_nodes: int,
    n_classes: int = 2,
    *,
    avg_degree: float = 10.0,
    homophily: float = 0.8,
    feature_dim: int = 16,
    signal: float = 1.0,
    train_fraction: float = 0.6,
    val_fraction: float = 0.2,
    seed: Seed,
) -> NodeDataset:
    """Samples a contextual stochastic block model (CSBM) node-classification dataset.

    Each node gets a class uniformly at random in balanced proportions (class sizes differ by at most 1).
    An undirected edge joins two nodes of the same class with probability ``p_in`` and of different
    classes with probability ``p_out``, chosen so that the expected degree is ``avg_degree`` and the
    expected fraction of within-class edges is ``homophily``:
    ``p_in = homophily * avg_degree / (n_nodes / n_classes - 1)`` and
    ``p_out = (1 - homophily) * avg_degree / (n_nodes - n_nodes / n_classes)``.
    Features are Gaussian, ``x[v] = mean[labels[v]] + noise`` with standard normal noise and class means
    that are random directions of length ``signal``, so larger ``signal`` makes the features alone more
    informative, and ``homophily`` far from ``1 / n_classes`` makes the graph more informative.

    Edges are sampled in O(E): the number of within-class edges of each class and of between-class edges
    is drawn from its binomial distribution, then that many node pairs are drawn uniformly from the
    allowed pairs. Pairs drawn twice are merged, so a dense graph ends up with slightly fewer edges than
    ``avg_degree`` asks for; sparse graphs are unaffected in practice.

    Args:
      n_nodes: number of nodes ``N`` (at least ``n_classes``).
      n_classes: number of classes ``C`` (at least 1).
      avg_degree: expected number of neighbours of a node (``E ≈ N * avg_degree`` directed edges).
      homophily: expected fraction of edges joining nodes of the same class, in ``[0, 1]``.
      feature_dim: feature width ``F``.
      signal: length of each class mean; 0 gives features independent of the class.
      train_fraction: fraction of nodes, chosen at random, in the train mask.
      val_fraction: fraction of nodes in the validation mask; the remaining nodes are the test mask.
      seed: seed for `numpy.random.default_rng` (an int, `SeedSequence` or `Generator`); the same seed
        gives the same dataset.

    Returns:
      A `NodeDataset` named ``"csbm"`` of numpy arrays: features (N, F) float32, labels (N,) int32, and
      disjoint masks with ``floor(train_fraction * N)`` train and ``floor(val_fraction * N)`` validation
      nodes. The graph stores both directions of each edge, sorted by receiver, then sender.

    Raises:
      ValueError: if a count is too small, a probability is outside ``[0, 1]``, or the requested degree
        needs ``p_in`` or ``p_out`` above 1 (every problem is reported).

    Example:
      >>> from jgrad.data import csbm
      >>> data = csbm(1000, 3, avg_degree=8.0, homophily=0.9, seed=0)
      >>> data.features.shape, data.n_classes, int(data.train_mask.sum())
      ((1000, 16), 3, 600)

    References:
      Y. Deshpande, A. Montanari, E. Mossel, S. Sen, "Contextual stochastic block models", NeurIPS 2018.
    """
    arrays = _csbm_arrays(
        n_nodes,
        n_classes,
        avg_degree=avg_degree,
        homophily=homophily,
        feature_dim=feature_dim,
        signal=signal,
        train_fraction=train_fraction,
        val_fraction=val_fraction,
        seed=seed,
    )
    senders, receivers, features, labels, train_mask, val_mask, test_mask = arrays
    return NodeDataset(
        graph=Graph.from_edges(senders, receivers, n_nodes),
        features=features,
        labels=labels,
        train_mask=train_mask,
        val_mask=val_mask,
        test_mask=test_mask,
        n_classes=int(n_classes),
        name="csbm",
    )


def _csbm_arrays(
    n_nodes: int,
    n_classes: int,
    *,
    avg_degree: float,
    homophily: float,
    feature_dim: int,
    signal: float,
    train_fraction: float,
    val_fraction: float,
    seed: Seed,
) -> tuple[np.ndarray, ...]:
    """`csbm` without the `Graph`: (senders, receivers, features, labels, train, val, test masks)."""
    where = "csbm"
    problems = _check_count(where, "n_classes", n_classes, 1) + _check_count(where, "feature_dim", feature_dim, 1)
    problems += _check_count(where, "n_nodes", n_nodes, n_classes if isinstance(n_classes, int) else 1)
    problems += _check_real(where, "avg_degree", avg_degree, 0.0, None)
    problems += _check_real(where, "homophily", homophily, 0.0, 1.0)
    problems += _check_real(where, "signal", signal, 0.0, None)
    problems += _check_real(where, "train_fraction", train_fraction, 0.0, 1.0)
    problems += _check_real(where, "val_fraction", val_fraction, 0.0, 1.0)
    if not problems and train_fraction + val_fraction > 1.0:
        problems.append(
            f"{where}: train_fraction + val_fraction is too large; got {train_fraction + val_fraction}, expected <= 1."
        )
    if problems:
        raise ValueError("\n".join(problems))

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_nodes) % n_classes).astype(np.int32)
    class_size = np.bincount(labels, minlength=n_classes)
    members = np.argsort(labels, kind="stable")  # members of class c: members[start[c]:start[c] + size[c]]
    start = np.concatenate([[0], np.cumsum(class_size)[:-1]])

    mean_size = n_nodes / n_classes
    p_in = homophily * avg_degree / (mean_size - 1) if mean_size > 1 else 0.0
    p_out = (1.0 - homophily) * avg_degree / (n_nodes - mean_size) if n_classes > 1 else 0.0
    if p_in > 1.0 or p_out > 1.0:
        raise ValueError(
            f"{where}: avg_degree={avg_degree} with homophily={homophily} needs edge probabilities "
            f"p_in={p_in:.3g}, p_out={p_out:.3g}; expected both <= 1. Lower avg_degree or use more nodes."
        )

    # Within-class edges: a binomial count per class, then uniform pairs of distinct members.
    within_pairs = class_size * (class_size - 1) // 2
    n_within = rng.binomial(within_pairs, p_in)
    cls = np.repeat(np.arange(n_classes), n_within)
    first = rng.integers(0, class_size[cls])
    second = rng.integers(0, np.maximum(class_size[cls] - 1, 1))
    second = second + (second >= first)  # distinct from first
    within_u, within_v = members[start[cls] + first], members[start[cls] + second]

    # Between-class edges: a binomial count, then uniform node pairs of different classes by rejection
    # (at least half of all ordered pairs are between classes, so this takes a few rounds).
    between_pairs = (n_nodes * n_nodes - int(np.sum(class_size.astype(np.int64) ** 2))) // 2
    n_between = int(rng.binomial(between_pairs, p_out)) if between_pairs else 0
    between_u, between_v = _pairs_between_classes(rng, labels, n_between)

    senders, receivers = symmetric_edges(
        np.concatenate([within_u, between_u]), np.concatenate([within_v, between_v]), n_nodes
    )

    directions = rng.standard_normal((n_classes, feature_dim))
    directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    means = signal * directions
    features = (means[labels] + rng.standard_normal((n_nodes, feature_dim))).astype(np.float32)

    order = rng.permutation(n_nodes)
    n_train, n_val = int(np.floor(train_fraction * n_nodes)), int(np.floor(val_fraction * n_nodes))
    train_mask = np.zeros(n_nodes, dtype=bool)
    val_mask = np.zeros(n_nodes, dtype=bool)
    train_mask[order[:n_train]] = True
    val_mask[order[n_train : n_train + n_val]] = True
    test_mask = ~(train_mask | val_mask)
    return senders, receivers, features, labels, train_mask, val_mask, test_mask


def _pairs_between_classes(rng: np.random.Generator, labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    n_nodes = labels.shape[0]
    us, vs, found = [], [], 0
    while found < count:
        draw = int((count - found) * 1.2) + 16
        u = rng.integers(0, n_nodes, draw)
        v = rng.integers(0, n_nodes, draw)
        keep = labels[u] != labels[v]
        us.append(u[keep])
        vs.append(v[keep])
        found += int(keep.sum())
    u = np.concatenate(us)[:count] if us else np.zeros(0, np.int64)
    v = np.concatenate(vs)[:count] if vs else np.zeros(0, np.int64)
    return u, v


def power_law_graph(n_nodes: int, avg_degree: float = 16.0, exponent: float = 2.5, *, seed: Seed):
    """Samples an undirected graph with a power-law degree distribution (Chung-Lu model).

    Node ``i`` gets the weight ``w[i] = ∫ x ** -a dx`` over ``[i + 1, i + 2]`` with ``a = 1 / (exponent - 1)``,
    which is close to ``(i + 1.5) ** -a``; each of ``N * avg_degree / 2`` undirected edges picks both
    endpoints independently with probability proportional to ``w`` (by inverting the CDF of the
    continuous density ``x ** -a`` on ``[1, N + 1)`` and rounding down), so node
    degrees are roughly proportional to ``w`` and follow ``P(degree = k) ∝ k ** -exponent``: most nodes
    have few neighbours and a few hubs have thousands. Self loops are dropped and repeated pairs merged;
    extra pairs are then drawn (and any surplus dropped at random) until exactly
    ``2 * round(N * avg_degree / 2)`` directed edges remain. Node ids are shuffled so that hubs are
    spread over the id range. Sampling is O(E log E) time (one sort) and O(E) memory: 10^6 nodes with
    ``avg_degree=16`` (1.6 * 10^7 directed edges) take a few seconds and a few hundred MB.

    Args:
      n_nodes: number of nodes ``N`` (at least 2).
      avg_degree: mean degree, i.e. directed edges per node; at most ``N - 1``.
      exponent: the power-law exponent of the degree distribution, greater than 2; values near 2 give
        heavier hubs.
      seed: seed for `numpy.random.default_rng` (an int, `SeedSequence` or `Generator`).

    Returns:
      An unweighted `Graph` that stores both directions of each edge, sorted by receiver, then sender.

    Raises:
      ValueError: if ``n_nodes < 2``, ``exponent <= 2``, or ``avg_degree`` is negative or above ``N - 1``.

    Example:
      >>> from jgrad.data import power_law_graph
      >>> graph = power_law_graph(1000, avg_degree=8.0, seed=0)
      >>> graph.n_nodes, graph.n_edges
      (1000, 8000)

    References:
      F. Chung, L. Lu, "Connected components in random graphs with given expected degree sequences",
      Annals of Combinatorics 6, 125-145, 2002.
    """
    senders, receivers = _power_law_edges(n_nodes, avg_degree, exponent, seed=seed)
    return Graph.from_edges(senders, receivers, n_nodes)


def _power_law_edges(
    n_nodes: int, avg_degree: float = 16.0, exponent: float = 2.5, *, seed: Seed
) -> tuple[np.ndarray, np.ndarray]:
    """`power_law_graph` without the `Graph`: ``(senders, receivers)``, int32 arrays of shape (E,)."""
    where = "power_law_graph"
    problems = _check_count(where, "n_nodes", n_nodes, 2)
    problems += _check_real(where, "exponent", exponent, 2.0, None, open_low=True)
    problems += _check_real(where, "avg_degree", avg_degree, 0.0, None)
    if not problems and avg_degree > n_nodes - 1:
        problems.append(f"{where}: avg_degree is too large; got {avg_degree}, expected <= n_nodes - 1 = {n_nodes - 1}.")
    if problems:
        raise ValueError("\n".join(problems))

    rng = np.random.default_rng(seed)
    one_minus_a = 1.0 - 1.0 / (exponent - 1.0)  # in (0, 1) because exponent > 2
    span = (n_nodes + 1.0) ** one_minus_a - 1.0
    target = int(round(n_nodes * avg_degree / 2))

    def endpoints(count: int) -> np.ndarray:
        x = (1.0 + span * rng.random(count)) ** (1.0 / one_minus_a)
        return np.minimum(x.astype(np.int64) - 1, n_nodes - 1)

    def draw(count: int) -> np.ndarray:
        u, v = endpoints(count), endpoints(count)
        low, high = np.minimum(u, v), np.maximum(u, v)
        return (low * n_nodes + high)[low != high]

    # Pairs are keyed as low * N + high (low < high); merge repeats and top up until the count is reached.
    keys = sorted_unique(draw(target))
    for _ in range(100):
        if keys.size >= target:
            break
        keys = sorted_unique(np.concatenate([keys, draw(int((target - keys.size) * 1.1) + 16)]))
    if keys.size < target:
        raise ValueError(
            f"{where}: could not place {target} distinct edges; avg_degree={avg_degree} is too close to the "
            f"maximum for n_nodes={n_nodes} with exponent={exponent}."
        )
    if keys.size > target:
        keys = keys[rng.choice(keys.size, size=target, replace=False)]

    relabel = rng.permutation(n_nodes).astype(np.int64)
    u, v = relabel[keys // n_nodes], relabel[keys % n_nodes]
    return symmetric_edges(u, v, n_nodes)


def _check_count(where: str, name: str, value: Any, minimum: int) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return [f"{where}: {name} must be an int; got {value!r}."]
    if value < minimum:
        return [f"{where}: {name} is too small; got {value}, expected >= {minimum}."]
    return []


def _check_real(
    where: str, name: str, value: Any, low: float, high: float | None, *, open_low: bool = False
) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        return [f"{where}: {name} must be a finite number; got {value!r}."]
    too_low = value <= low if open_low else value < low
    if too_low or (high is not None and value > high):
        rule = f"{low} {'<' if open_low else '<='} {name}" + (f" <= {high}" if high is not None else "")
        return [f"{where}: {name} is out of range; got {value}, expected {rule}."]
    return []
