"""Benchmark problems (graphs with features) and the layer maths each workload times.

The layer maths is written once per framework over a small set of graph primitives (`Primitives`), so
every implementation runs the same computation and only the message-passing kernels differ.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import numpy as np

FEATURES = 64
N_CLASSES = 8
GAT_NEGATIVE_SLOPE = 0.2  # the leaky ReLU of the GAT scores, as in the paper
HEADS = 4
"""Attention heads of the GAT layer workloads and of the first GAT layer of the training step (its
FEATURES outputs are HEADS heads of FEATURES // HEADS features); the output layer has one head."""
WORKLOADS = (
    "gcn_fwd", "gcn_fwdbwd", "sage_fwd", "sage_fwdbwd", "gat_fwd", "gat_fwdbwd",
    "sddmm_fwd", "sddmm_fwdbwd", "gcn_train", "gat_train",
)
LAYER_WORKLOADS = tuple(w for w in WORKLOADS if not w.endswith("_train"))


@dataclasses.dataclass(frozen=True)
class Problem:
    """A graph with self loops and GCN-normalised weights, features, labels and parameters (numpy)."""

    name: str
    n_nodes: int
    senders: np.ndarray  # (E,) int32
    receivers: np.ndarray  # (E,) int32
    weight: np.ndarray  # (E,) float32, D^-1/2 (A + I) D^-1/2
    x: np.ndarray  # (N, F_in) float32
    labels: np.ndarray  # (N,) int32
    train_mask: np.ndarray  # (N,) bool
    params: dict  # name -> float32 array

    @property
    def n_edges(self) -> int:
        return int(self.senders.shape[0])


def _with_self_loops(senders, receivers, n_nodes):
    loops = np.arange(n_nodes, dtype=np.int64)
    keep = senders != receivers
    senders = np.concatenate([senders[keep], loops])
    receivers = np.concatenate([receivers[keep], loops])
    order = np.lexsort((senders, receivers))
    return senders[order].astype(np.int32), receivers[order].astype(np.int32)


def make_problem(name, senders, receivers, n_nodes, x, labels, train_mask, *, seed=0) -> Problem:
    senders, receivers = _with_self_loops(np.asarray(senders), np.asarray(receivers), n_nodes)
    degree = np.bincount(receivers, minlength=n_nodes).astype(np.float64)
    scale = 1.0 / np.sqrt(np.maximum(degree, 1.0))
    weight = (scale[senders] * scale[receivers]).astype(np.float32)
    rng = np.random.default_rng(seed)
    f_in = x.shape[1]

    def glorot(*shape):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / sum(shape[-2:]))).astype(np.float32)

    params = {
        "w_layer": glorot(f_in, FEATURES),  # the single-layer workloads: F_in -> F
        "w1": glorot(f_in, FEATURES), "w2": glorot(FEATURES, N_CLASSES),
        "a_src": glorot(HEADS, FEATURES // HEADS), "a_dst": glorot(HEADS, FEATURES // HEADS),
        "a2_src": glorot(N_CLASSES, 1)[:, 0], "a2_dst": glorot(N_CLASSES, 1)[:, 0],
        "cotangent": rng.standard_normal((n_nodes, FEATURES)).astype(np.float32),
    }
    return Problem(name, n_nodes, senders, receivers, weight, x.astype(np.float32), labels.astype(np.int32),
                   train_mask, params)


def synthetic_problem(n_nodes: int, *, seed: int = 0) -> Problem:
    """A power-law (Chung-Lu) graph with average degree 16, F = 64 random features, random labels."""
    from ..data import power_law_graph

    graph = power_law_graph(n_nodes, 16.0, 2.5, seed=seed)  # unplanned: the bench plans and times it
    senders, receivers = np.asarray(graph.senders), np.asarray(graph.receivers)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((n_nodes, FEATURES)).astype(np.float32)
    labels = rng.integers(0, N_CLASSES, n_nodes)
    train_mask = rng.random(n_nodes) < 0.1
    return make_problem(f"powerlaw-{n_nodes}", senders, receivers, n_nodes, x, labels, train_mask, seed=seed)


def cora_problem(root) -> Problem:
    """Cora with its public split: the shipped copy, or the Planetoid files in ``root`` when given."""
    from ..data import load, load_planetoid

    data = load("cora") if root is None else load_planetoid("cora", root)
    graph = data.graph
    return make_problem("cora", np.asarray(graph.senders), np.asarray(graph.receivers), graph.n_nodes,
                        np.asarray(data.features), np.asarray(data.labels) % N_CLASSES, np.asarray(data.train_mask))


class Primitives(NamedTuple):
    """Graph kernels one implementation provides; the layer maths below is built only from these."""

    aggregate: Callable  # (h (N, F), w (E,)) -> (N, F), or per head (h (N, H, F), w (E, H)) -> (N, H, F): out[r] += w * h[s]
    mean: Callable  # h (N, F) -> (N, F): mean over incoming edges
    softmax: Callable  # logits (E,) or (E, H) -> same: softmax over each receiver's incoming edges
    edge_dot: Callable  # (a (N, F), b (N, F)) -> (E,): <a[s], b[r]>
    at_senders: Callable  # v (N,) or (N, H) -> (E,) or (E, H)
    at_receivers: Callable  # v (N,) or (N, H) -> (E,) or (E, H)
    # (src, dst) (N,) or (N, H) -> (E,) or (E, H): softmax(leaky_relu(src[s] + dst[r])) as one op, where
    # the library has one (jgrad.ops.gat_attention); None composes at_senders, at_receivers and softmax.
    attention: Callable | None = None


def layer_functions(np_like: Any, relu: Callable, leaky_relu: Callable, log_softmax: Callable):
    """The layers and losses, written once for any array library with ``@``, ``sum`` and ``exp``."""

    def gcn(p, prim, x, w):
        return prim.aggregate(x @ p["w_layer"], w)

    def sage(p, prim, x):
        return prim.mean(x) @ p["w_layer"]

    def gat_attention(prim, h, a_src, a_dst):
        """Attention of every edge: (E,) for h (N, F) and a (F,); (E, H) per head for h (N, H, F), a (H, F)."""
        src, dst = (h * a_src[None]).sum(-1), (h * a_dst[None]).sum(-1)
        if prim.attention is not None:
            return prim.attention(src, dst)
        return prim.softmax(leaky_relu(prim.at_senders(src) + prim.at_receivers(dst)))

    def multi_head_gat(prim, h, a_src, a_dst):
        """A GAT layer of H = a_src.shape[0] heads on h (N, H * F): (N, H * F), the heads concatenated."""
        heads = h.reshape(h.shape[0], a_src.shape[0], -1)
        return prim.aggregate(heads, gat_attention(prim, heads, a_src, a_dst)).reshape(h.shape)

    def gat(p, prim, x):
        return multi_head_gat(prim, x @ p["w_layer"], p["a_src"], p["a_dst"])

    def sddmm(prim, x):
        return prim.edge_dot(x, x)

    def cross_entropy(logits, labels_one_hot, mask):
        per_node = -(log_softmax(logits) * labels_one_hot).sum(-1)
        return (per_node * mask).sum() / mask.sum()

    def gcn_model(p, prim, x, w):
        h = relu(prim.aggregate(x @ p["w1"], w))
        return prim.aggregate(h @ p["w2"], w)

    def gat_model(p, prim, x):
        h = relu(multi_head_gat(prim, x @ p["w1"], p["a_src"], p["a_dst"]))
        h = h @ p["w2"]
        return prim.aggregate(h, gat_attention(prim, h, p["a2_src"], p["a2_dst"]))

    return dict(gcn=gcn, sage=sage, gat=gat, sddmm=sddmm, cross_entropy=cross_entropy,
                gcn_model=gcn_model, gat_model=gat_model)


def bytes_moved(workload: str, problem: Problem, itemsize: int = 4) -> float | None:
    """A lower bound on memory traffic of the message passing in a layer workload, in bytes.

    One aggregation reads a feature row per edge plus its index and weight, ``E·(F·s + 8)``, and writes
    ``N·F·s``. A backward pass adds the reverse aggregation and the per-edge products (about two more
    aggregations' worth). Dense matmuls are left out. None for the training steps.
    """
    if workload not in LAYER_WORKLOADS:
        return None
    e, n, f = problem.n_edges, problem.n_nodes, FEATURES
    one = e * (f * itemsize + 8) + n * f * itemsize
    passes = {"gcn": 1, "sage": 1, "gat": 1, "sddmm": 1}[workload.split("_")[0]]
    return float(one * passes * (3 if workload.endswith("fwdbwd") else 1))
