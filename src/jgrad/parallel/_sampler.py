"""GraphSAGE-style neighbour sampling on the host, emitting fixed-shape blocks for a jit step.

For a graph too large for one device, train on mini-batches: for a batch of seed nodes, sample at most
``fanouts[0]`` in-neighbours of each seed, at most ``fanouts[1]`` in-neighbours of each of those, and
so on. Each hop is a small bipartite `Graph` (a *block*) whose nodes are the hop's source nodes, the
destination nodes first. Every block is padded to sizes fixed by ``batch_size``, ``fanouts`` and the
graph's largest in-degree alone, so a jitted train step sees the same shapes on every batch and compiles once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .._src import _checks
from ..graph import Graph


@dataclasses.dataclass(frozen=True)
class SampledBlocks:
    """One mini-batch of sampled blocks, ordered from the input layer to the seeds; a JAX pytree.

    With L = ``len(fanouts)`` hops and static sizes ``n_dst = (S_L, ..., S_1)`` (see
    `NeighborSampler.sizes`), block l (0 <= l < L) is a `Graph` with ``n_nodes = S_{L-l}`` source nodes
    whose first ``S_{L-l-1}`` nodes are its destination nodes; its edges ``u -> v`` go from a sampled
    neighbour u to the node v it was sampled for, so ``gspmm(block, "copy_u", "mean", h)[:n_dst]`` is
    the sampled neighbourhood mean. The destination nodes of block l are the source nodes of block l+1.

    Attributes:
      input_nodes: (S_L,) int32 ids, in the full graph, of block 0's source nodes (0 for padding);
        gather input features with ``x[input_nodes]``.
      input_mask: (S_L,) bool, False for padding nodes.
      blocks: L padded `Graph` s (``node_mask`` and ``edge_mask`` set), input layer first; if the graph
        is weighted, each sampled edge keeps its ``edge_weight`` (0 on padding edges).
      seeds: (S_0,) int32 ids of the seed nodes (0 for padding); the output rows of the last block.
      seed_mask: (S_0,) bool, False for padding seeds (a short last batch); mask the loss with it.
      n_dst: static tuple, the destination count of each block (``blocks[l + 1].n_nodes`` and
        ``len(seeds)`` for the last).
    """

    input_nodes: jax.Array
    input_mask: jax.Array
    blocks: tuple[Graph, ...]
    seeds: jax.Array
    seed_mask: jax.Array
    n_dst: tuple[int, ...]


jax.tree_util.register_dataclass(
    SampledBlocks,
    data_fields=["input_nodes", "input_mask", "blocks", "seeds", "seed_mask"],
    meta_fields=["n_dst"],
)


class NeighborSampler:
    """Samples fixed-fanout neighbourhoods of seed nodes (GraphSAGE), without replacement, on the host.

    The sampler keeps no state between calls: threads (a prefetcher) may sample at the same time.

    Static sizes: with ``S_0 = batch_size``, ``f_i = min(fanouts[i], largest in-degree)`` and
    ``S_{i+1} = min(S_i * (1 + f_i), max(N, S_i))``, hop i has at most ``S_i`` destination nodes,
    ``S_{i+1}`` source nodes and ``S_i * f_i`` edges; every block is padded to exactly those sizes.

    Args:
      graph: the full graph (host-side; messages flow sender -> receiver, so a node's sampled neighbours
        are senders of its incoming edges). Padding edges are ignored.
      fanouts: neighbours per node at each hop, from the seeds outwards, e.g. ``[10, 10]``; each >= 1.
      batch_size: S_0, seeds per batch.

    Raises:
      ValueError: an empty or non-positive fanout list, a non-positive batch size, or an edge index
        outside [0, N).
      TypeError: if ``graph`` is not a `jgrad.Graph`, or ``fanouts`` is a single int.

    Example:
      >>> import jgrad, numpy as np
      >>> from jgrad.parallel import NeighborSampler
      >>> g = jgrad.Graph.from_edges([1, 2, 3, 0], [0, 0, 0, 1], n_nodes=4)
      >>> sampler = NeighborSampler(g, fanouts=[2], batch_size=1)
      >>> sampler.sizes
      (1, 3)
      >>> blocks = sampler.sample([0], np.random.default_rng(0))
      >>> int(blocks.blocks[0].edge_mask.sum()), blocks.blocks[0].n_nodes
      (2, 3)
    """

    def __init__(self, graph: Graph, fanouts: Sequence[int], batch_size: int):
        where = "NeighborSampler"
        if isinstance(fanouts, (int, np.integer)):
            raise TypeError(f"{where}: fanouts must be a list of ints, one per hop; got the int {fanouts!r}. "
                            f"For one hop, use fanouts=[{fanouts!r}].")
        fanouts = tuple(fanouts)
        problems = []
        if not fanouts or any(not isinstance(f, (int, np.integer)) or isinstance(f, bool) or f < 1 for f in fanouts):
            problems.append(f"fanouts must be a non-empty list of positive ints; got {list(fanouts)}.")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            problems.append(f"batch_size must be a positive int; got {batch_size!r}.")
        if problems:
            raise ValueError(f"{where}: " + " ".join(problems))
        _checks.check_graph(where, graph)
        _checks.require_concrete(where, graph.senders, graph.receivers)
        _checks.check_graph_indices(where, graph)
        senders = np.asarray(graph.senders, np.int64)
        receivers = np.asarray(graph.receivers, np.int64)
        weight = None if graph.edge_weight is None else np.asarray(graph.edge_weight)
        if graph.edge_mask is not None:
            live = np.asarray(graph.edge_mask, bool)
            senders, receivers = senders[live], receivers[live]
            weight = None if weight is None else weight[live]
        order = np.argsort(receivers, kind="stable")
        self._indices = senders[order]
        self._weights = None if weight is None else weight[order]  # (E, ...) in the order of _indices
        self._indptr = np.concatenate([[0], np.cumsum(np.bincount(receivers, minlength=graph.n_nodes))])
        self.n_nodes = graph.n_nodes
        self.fanouts = tuple(int(f) for f in fanouts)
        self.batch_size = int(batch_size)
        # No node has more than the largest in-degree of neighbours to give: blocks need no room beyond it.
        largest_in_degree = int(np.diff(self._indptr).max(initial=0))
        self._widths = tuple(min(f, largest_in_degree) for f in self.fanouts)
        sizes = [self.batch_size]
        for f in self._widths:
            sizes.append(min(sizes[-1] * (1 + f), max(self.n_nodes, sizes[-1])))
        self.sizes: tuple[int, ...] = tuple(sizes)
        """(S_0, ..., S_L): seeds, then the padded node count of each hop's source side."""

    def sample(self, seeds, rng: np.random.Generator) -> SampledBlocks:
        """Samples the blocks for up to ``batch_size`` distinct seed node ids.

        Args:
          seeds: (b,) distinct node ids, b <= batch_size (a short batch is padded and masked).
          rng: a ``numpy.random.Generator``; the same generator state gives the same blocks.

        Returns:
          `SampledBlocks` with the static sizes of this sampler.

        Raises:
          ValueError: too many seeds, repeated seeds, or ids outside ``[0, N)``.
          TypeError: seeds that are not integers, or ``rng`` that is not a ``numpy.random.Generator``.
        """
        _check_rng("NeighborSampler.sample", rng)
        raw = np.asarray(seeds)
        if raw.size and not np.issubdtype(raw.dtype, np.integer):
            raise TypeError(f"NeighborSampler.sample: seeds must be integer node ids; got dtype {raw.dtype}.")
        seeds = raw.astype(np.int64).reshape(-1)
        problems = []
        if seeds.size > self.batch_size:
            problems.append(f"got {seeds.size} seeds, expected at most batch_size={self.batch_size}.")
        if seeds.size and (seeds.min() < 0 or seeds.max() >= self.n_nodes):
            problems.append(f"seed ids must lie in [0, {self.n_nodes}); got min {seeds.min()}, max {seeds.max()}.")
        elif np.unique(seeds).size != seeds.size:
            problems.append("seeds must be distinct; got repeated ids.")
        if problems:
            raise ValueError("NeighborSampler.sample: " + " ".join(problems))
        hops = []  # from the seeds outwards: (source node ids, local senders, local receivers, weights)
        frontier = seeds
        for fanout in self.fanouts:
            position, dst_local = self._sample_hop(frontier, fanout, rng)
            nbr = self._indices[position]
            fresh = np.setdiff1d(nbr, frontier, assume_unique=False)
            source = np.concatenate([frontier, fresh])
            # A fresh map of node id -> position per call (np.empty: only the entries of `source` are
            # written, and every id of `nbr` is among them), not one kept on the sampler: concurrent
            # samples from several threads corrupted each other's blocks through a shared map.
            position_of = np.empty(self.n_nodes, np.int64)
            position_of[source] = np.arange(source.size)
            src_local = position_of[nbr]
            hops.append((source, src_local, dst_local, None if self._weights is None else self._weights[position]))
            frontier = source
        blocks = []
        for i in reversed(range(len(self.fanouts))):
            source, src_local, dst_local, weight = hops[i]
            blocks.append(_padded_block(src_local, dst_local, weight, source.size, self.sizes[i + 1],
                                        self.sizes[i] * self._widths[i]))
        input_nodes = hops[-1][0]
        n_in = self.sizes[-1]
        return SampledBlocks(
            input_nodes=jnp.asarray(_pad_to(input_nodes, n_in), jnp.int32),
            input_mask=jnp.asarray(np.arange(n_in) < input_nodes.size),
            blocks=tuple(blocks),
            seeds=jnp.asarray(_pad_to(seeds, self.batch_size), jnp.int32),
            seed_mask=jnp.asarray(np.arange(self.batch_size) < seeds.size),
            n_dst=tuple(self.sizes[i] for i in reversed(range(len(self.fanouts)))),
        )

    def batches(self, nodes, rng: np.random.Generator, *, shuffle: bool = True) -> Iterator[SampledBlocks]:
        """Yields `SampledBlocks` covering ``nodes`` once, ``batch_size`` seeds at a time (the last padded)."""
        _check_rng("NeighborSampler.batches", rng)
        nodes = np.asarray(nodes, np.int64).reshape(-1)
        if shuffle:
            nodes = rng.permutation(nodes)
        for start in range(0, nodes.size, self.batch_size):
            yield self.sample(nodes[start:start + self.batch_size], rng)

    def _sample_hop(self, dst: np.ndarray, fanout: int, rng: np.random.Generator):
        """At most ``fanout`` distinct in-edges of every node of ``dst``, uniformly without replacement:
        their positions in ``_indices`` and the index in ``dst`` of the node each was sampled for."""
        begin = self._indptr[dst]
        degree = self._indptr[dst + 1] - begin
        total = int(degree.sum())
        owner = np.repeat(np.arange(dst.size), degree)
        offset = np.arange(total) - np.repeat(np.cumsum(degree) - degree, degree)
        # A random key per candidate edge; within each destination keep the `fanout` smallest keys.
        order = np.lexsort((rng.random(total), owner))
        rank = np.arange(total) - np.repeat(np.cumsum(degree) - degree, degree)
        keep = order[rank < np.repeat(np.minimum(degree, fanout), degree)]
        return begin[owner[keep]] + offset[keep], owner[keep]


def _check_rng(where: str, rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{where}: rng must be a numpy.random.Generator, e.g. np.random.default_rng(0); got "
                        f"{type(rng).__name__}.")


def _pad_to(values: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([values, np.zeros(size - values.size, values.dtype)])


def _padded_block(src_local, dst_local, weight, n_real_nodes: int, n_nodes: int, n_edges: int) -> Graph:
    n_real_edges = src_local.size
    if weight is not None:
        weight = np.concatenate([weight, np.zeros((n_edges - n_real_edges,) + weight.shape[1:], weight.dtype)])
    fill = n_nodes - 1  # padding edges are masked self loops on the last node
    senders = np.full(n_edges, fill, np.int32)
    receivers = np.full(n_edges, fill, np.int32)
    senders[:n_real_edges] = src_local
    receivers[:n_real_edges] = dst_local
    return Graph(
        senders=jnp.asarray(senders),
        receivers=jnp.asarray(receivers),
        n_nodes=n_nodes,
        edge_weight=None if weight is None else jnp.asarray(weight),
        node_mask=jnp.asarray(np.arange(n_nodes) < n_real_nodes),
        edge_mask=jnp.asarray(np.arange(n_edges) < n_real_edges),
    )
