"""The implementations compared: jgrad (as users get it, and forced onto its plain XLA path) and its peers.

Each implementation turns a `Problem` and a workload name into ``(step, args)``: ``step(*args)``
returns numpy-convertible outputs (values, gradients or updated parameters) that are checked against
the reference before timing. Peers whose library is not installed are reported as unavailable.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable

import numpy as np

from ._workloads import GAT_NEGATIVE_SLOPE, N_CLASSES, Primitives, Problem, layer_functions

JAX_IMPLS = ("jgrad", "jgrad_xla", "jgrad_pallas", "plain_jax", "jraph", "bcoo")
IMPLS = JAX_IMPLS + ("pyg",)
OURS = ("jgrad", "jgrad_xla", "jgrad_pallas")
"""``jgrad``: a graph from ``Graph.from_edges``, no argument passed (the backend jgrad picks);
``jgrad_xla``: the same graph with ``jgrad.ops.with_backend(graph, "xla")`` (the plain path);
``jgrad_pallas``: the same graph with ``with_backend(graph, "pallas")`` (the Triton kernels; GPU only)."""
BACKEND_OF = {"jgrad_xla": "xla", "jgrad_pallas": "pallas"}
"""The implementations that force a backend onto the graph, and which."""
LEARNING_RATE = 0.1
LAYER_PARAMS = {"gcn": ("w_layer",), "sage": ("w_layer",), "gat": ("a_dst", "a_src", "w_layer"), "sddmm": ()}


def on_gpu() -> bool:
    """Whether JAX's default device is a GPU."""
    import jax

    return jax.default_backend() == "gpu"


def default_impls() -> tuple[str, ...]:
    """What ``jgrad bench`` runs without ``--impls``: every implementation, ``jgrad_pallas`` on a GPU only."""
    return tuple(impl for impl in IMPLS if impl != "jgrad_pallas" or on_gpu())


def available(impl: str) -> str | None:
    """None if ``impl`` can run here, else why not."""
    if impl == "jgrad_pallas" and not on_gpu():
        return "needs a GPU (elsewhere the Pallas kernels run only in Pallas's interpreter, a reference)"
    module = {"jraph": "jraph", "pyg": "torch_geometric", "bcoo": "jax.experimental.sparse"}.get(impl)
    if module is None:
        return None
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return f"{module} is not installed"
    return None


# --------------------------------------------------------------------------------------------------
# JAX implementations
# --------------------------------------------------------------------------------------------------
def _graph_arrays(impl: str, problem: Problem) -> dict:
    """The graph as jit arguments (closing over them would make XLA constant-fold the graph ops)."""
    import jax.numpy as jnp

    import jgrad

    degree = np.maximum(np.bincount(problem.receivers, minlength=problem.n_nodes), 1).astype(np.float32)
    arrays = {"s": jnp.asarray(problem.senders), "r": jnp.asarray(problem.receivers), "degree": jnp.asarray(degree)}
    if impl in OURS:
        graph = jgrad.Graph.from_edges(problem.senders, problem.receivers, problem.n_nodes)
        arrays["graph"] = jgrad.ops.with_backend(graph, BACKEND_OF[impl]) if impl in BACKEND_OF else graph
    return arrays


def engine_times(problem: Problem) -> dict:
    """What jgrad's engine costs before the first step: loading (or building) the native kernels and
    planning the problem's graph (``Graph.from_edges`` plans lazily; this forces it), in seconds."""
    import time

    import jgrad
    from jgrad._src import _plan

    start = time.perf_counter()
    native = jgrad.ops.native_available()
    load_s = time.perf_counter() - start
    graph = jgrad.Graph.from_edges(problem.senders, problem.receivers, problem.n_nodes)
    start = time.perf_counter()
    _plan.resolve(graph)
    return {"backend": jgrad.ops.backend_of(graph), "plan_s": round(time.perf_counter() - start, 4),
            "native_available": native, "native_load_or_build_s": round(load_s, 4)}


def _jax_primitives(impl: str, n: int, arrays: dict) -> Primitives:
    import jax
    import jax.numpy as jnp

    import jgrad

    s, r, degree = arrays["s"], arrays["r"], arrays["degree"]
    at_s, at_r = (lambda v: v[s]), (lambda v: v[r])

    def plain_softmax(logits, segment_sum=jax.ops.segment_sum, segment_max=jax.ops.segment_max):
        top = jax.lax.stop_gradient(segment_max(logits, r, num_segments=n))
        z = jnp.exp(logits - top[r])
        return z / segment_sum(z, r, num_segments=n)[r]

    def plain_dot(a, b):
        return (a[s] * b[r]).sum(-1)

    if impl in OURS:
        graph = arrays["graph"]
        return Primitives(
            aggregate=lambda h, w: jgrad.ops.spmm(graph, h, w),
            mean=lambda h: jgrad.ops.gspmm(graph, "copy_u", "mean", h),
            softmax=lambda logits: jgrad.ops.edge_softmax(graph, logits),
            edge_dot=lambda a, b: jgrad.ops.gsddmm(graph, "dot", a, b, "u", "v")[:, 0],
            at_senders=at_s, at_receivers=at_r,
            attention=lambda src, dst: jgrad.ops.gat_attention(graph, src, dst, GAT_NEGATIVE_SLOPE))
    if impl == "plain_jax":
        return Primitives(
            aggregate=lambda h, w: jax.ops.segment_sum(h[s] * w[..., None], r, n),
            mean=lambda h: jax.ops.segment_sum(h[s], r, n) / degree[:, None],
            softmax=plain_softmax, edge_dot=plain_dot, at_senders=at_s, at_receivers=at_r)
    if impl == "jraph":
        import jraph

        return Primitives(
            aggregate=lambda h, w: jraph.segment_sum(h[s] * w[..., None], r, n),
            mean=lambda h: jraph.segment_mean(h[s], r, n),
            softmax=lambda logits: jraph.segment_softmax(logits, r, n),
            edge_dot=plain_dot, at_senders=at_s, at_receivers=at_r)
    if impl == "bcoo":
        from jax.experimental import sparse

        indices = jnp.stack([r, s], axis=1)

        def matrix(w):
            return sparse.BCOO((w, indices), shape=(n, n), indices_sorted=True, unique_indices=True)

        def aggregate(h, w):  # BCOO has one value per stored entry: one sparse product per head
            if w.ndim == 1:
                return matrix(w) @ h
            return jnp.stack([matrix(w[:, k]) @ h[:, k] for k in range(w.shape[1])], axis=1)

        return Primitives(
            aggregate=aggregate,
            mean=lambda h: matrix(1.0 / degree[r]) @ h,
            softmax=plain_softmax,  # BCOO has no sparse softmax
            edge_dot=lambda a, b: sparse.bcoo_dot_general_sampled(
                b, a.T, indices, dimension_numbers=(([1], [0]), ([], []))),
            at_senders=at_s, at_receivers=at_r)
    raise ValueError(f"unknown JAX implementation {impl!r}")


def _jax_step(impl: str, workload: str, problem: Problem):
    import jax
    import jax.numpy as jnp

    arrays = _graph_arrays(impl, problem)
    n = problem.n_nodes
    fns = layer_functions(jnp, jax.nn.relu, lambda v: jax.nn.leaky_relu(v, GAT_NEGATIVE_SLOPE), jax.nn.log_softmax)
    p = {k: jnp.asarray(v) for k, v in problem.params.items()}
    x, w = jnp.asarray(problem.x), jnp.asarray(problem.weight)
    one_hot = jax.nn.one_hot(jnp.asarray(problem.labels), N_CLASSES)
    mask = jnp.asarray(problem.train_mask, jnp.float32)
    kind, mode = workload.rsplit("_", 1)
    c = p["cotangent"]
    if mode != "train":
        p = {k: p[k] for k in LAYER_PARAMS[kind]}

    if kind == "gcn" and mode != "train":
        def value(arrays, x, w, p):
            return fns["gcn"](p, _jax_primitives(impl, n, arrays), x, w)
        args, grad_of = (arrays, x, w, p), (1, 2, 3)
    elif kind == "sage":
        def value(arrays, x, p):
            return fns["sage"](p, _jax_primitives(impl, n, arrays), x)
        args, grad_of = (arrays, x, p), (1, 2)
    elif kind == "gat" and mode != "train":
        def value(arrays, x, p):
            return fns["gat"](p, _jax_primitives(impl, n, arrays), x)
        args, grad_of = (arrays, x, p), (1, 2)
    elif kind == "sddmm":
        def value(arrays, x):
            return _jax_primitives(impl, n, arrays).edge_dot(x, x)
        args, grad_of = (arrays, x), (1,)
    if mode == "fwd":
        return jax.jit(value), args
    if mode == "fwdbwd":  # the cotangent is an argument too, so XLA cannot fold the backward
        def loss(*a):
            out = value(*a[:-1])
            return jnp.sum(out * (a[-1] if out.ndim == 2 else 1.0))
        return jax.jit(jax.grad(loss, grad_of)), args + (c,)

    model = fns[f"{kind}_model"]
    trained = {k: p[k] for k in (("w1", "w2") if kind == "gcn" else ("w1", "w2", "a_src", "a_dst", "a2_src", "a2_dst"))}

    def train_step(arrays, params, x, w):
        prim = _jax_primitives(impl, n, arrays)

        def loss(params):
            logits = model(params, prim, x, w) if kind == "gcn" else model(params, prim, x)
            return fns["cross_entropy"](logits, one_hot, mask)
        value, grads = jax.value_and_grad(loss)(params)
        return jax.tree.map(lambda a, g: a - LEARNING_RATE * g, params, grads), value

    return jax.jit(train_step), (arrays, trained, x, w)


# --------------------------------------------------------------------------------------------------
# PyTorch Geometric
# --------------------------------------------------------------------------------------------------
def torch_device() -> str:
    """Where the PyG peer runs: on the GPU when JAX's default device is one (and torch sees it), else
    on the CPU, so that every implementation of a run uses the same processor."""
    import torch

    return "cuda" if on_gpu() and torch.cuda.is_available() else "cpu"


def _pyg_step(workload: str, problem: Problem):
    import torch
    from torch_geometric.utils import scatter, softmax

    torch.set_num_threads(os.cpu_count() or 1)
    device = torch_device()
    n = problem.n_nodes
    s = torch.as_tensor(problem.senders, dtype=torch.long, device=device)
    r = torch.as_tensor(problem.receivers, dtype=torch.long, device=device)
    prim = Primitives(
        aggregate=lambda h, w: scatter(h.index_select(0, s) * w.unsqueeze(-1), r, 0, n, reduce="sum"),
        mean=lambda h: scatter(h.index_select(0, s), r, 0, n, reduce="mean"),
        softmax=lambda logits: softmax(logits, r, num_nodes=n),
        edge_dot=lambda a, b: (a.index_select(0, s) * b.index_select(0, r)).sum(-1),
        at_senders=lambda v: v.index_select(0, s), at_receivers=lambda v: v.index_select(0, r))
    fns = layer_functions(torch, torch.relu, lambda v: torch.nn.functional.leaky_relu(v, GAT_NEGATIVE_SLOPE),
                          lambda v: torch.log_softmax(v, -1))
    t = lambda a: torch.as_tensor(np.asarray(a), device=device)
    x, w = t(problem.x), t(problem.weight)
    p = {k: t(v) for k, v in problem.params.items()}
    one_hot = torch.nn.functional.one_hot(t(problem.labels).long(), N_CLASSES).float()
    mask = t(problem.train_mask).float()
    kind, mode = workload.rsplit("_", 1)
    c = p["cotangent"]

    if mode in ("fwd", "fwdbwd"):
        names = ("x", "w")[: 2 if kind == "gcn" else 1] + LAYER_PARAMS[kind]  # the JAX gradient order

        def step():
            leaves = {"x": x.clone(), "w": w.clone(), **{k: p[k].clone() for k in p}}
            grad_leaves = [leaves[k].requires_grad_(mode == "fwdbwd") for k in names]
            with torch.set_grad_enabled(mode == "fwdbwd"):
                if kind == "gcn":
                    out = fns["gcn"](leaves, prim, leaves["x"], leaves["w"])
                elif kind == "sddmm":
                    out = prim.edge_dot(leaves["x"], leaves["x"])
                else:
                    out = fns[kind](leaves, prim, leaves["x"])
                if mode == "fwd":
                    return out.detach()
                loss = (out * (c if out.dim() == 2 else 1.0)).sum()
                return [g.detach() for g in torch.autograd.grad(loss, grad_leaves)]

        return step, ()

    trained = ("w1", "w2") if kind == "gcn" else ("w1", "w2", "a_src", "a_dst", "a2_src", "a2_dst")
    params = {k: p[k].clone().requires_grad_(True) for k in trained}
    optimizer = torch.optim.SGD(list(params.values()), lr=LEARNING_RATE)

    def train_step():
        for k in trained:  # every call starts from the same parameters, like the JAX steps
            params[k].data.copy_(p[k])
        optimizer.zero_grad()
        logits = fns[f"{kind}_model"](params, prim, x, w) if kind == "gcn" else fns[f"{kind}_model"](params, prim, x)
        loss = fns["cross_entropy"](logits, one_hot, mask)
        loss.backward()
        optimizer.step()
        return {k: v.detach().clone() for k, v in params.items()}, loss.detach()

    return train_step, ()


def build(impl: str, workload: str, problem: Problem) -> tuple[Callable, tuple]:
    """``(step, args)`` for one implementation of one workload on one problem."""
    if impl == "pyg":
        return _pyg_step(workload, problem)
    return _jax_step(impl, workload, problem)


def to_numpy(tree: Any) -> list[np.ndarray]:
    """Flattens a result (JAX pytree, tensors, dicts, lists) into a list of numpy arrays."""
    if isinstance(tree, dict):
        return [a for k in sorted(tree) for a in to_numpy(tree[k])]
    if isinstance(tree, (list, tuple)):
        return [a for item in tree for a in to_numpy(item)]
    if hasattr(tree, "detach"):
        return [tree.detach().cpu().numpy()]
    return [np.asarray(tree)]


def block(result: Any) -> Any:
    """Waits for asynchronous results: JAX's, and PyTorch's CUDA work when it has any."""
    import sys

    import jax

    result = jax.block_until_ready(result)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return result
