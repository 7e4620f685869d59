"""Data parallelism over batches of graphs: stack padded graphs, split the stack over devices, average grads.

A stacked batch is one `Graph` whose array leaves carry a leading batch axis B (every graph padded to
the same N and E), so the model runs under ``jax.vmap`` and the batch axis can be split over a mesh
axis ``"data"`` with a `jax.sharding.NamedSharding`. Each device holds B/D graphs and a full copy of
the parameters; gradients are averaged with ``jax.lax.pmean``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .._src import _plan
from .._src._checks import check_graph, check_same_weighting
from ..graph import Graph, pad
from ._mesh import DATA_AXIS, shard_map


def stack_graphs(graphs: Sequence[Graph], *, n_nodes: int | None = None, n_edges: int | None = None) -> Graph:
    """Pads every graph to ``(n_nodes, n_edges)`` with `jgrad.pad` and stacks them along a new leading axis.

    Args:
      graphs: B graphs, all weighted or all unweighted.
      n_nodes: N of every padded graph; defaults to the largest node count plus one (room for the
        padding node that padding edges attach to).
      n_edges: E of every padded graph; defaults to the largest edge count.

    Returns:
      A `Graph` whose ``senders``, ``receivers``, ``edge_mask`` (and ``edge_weight``) have shape (B, E)
      and ``node_mask`` (B, N); per-graph counts and ``graph_mask`` are dropped. Use it under
      ``jax.vmap(fn, in_axes=(0, ...))``, where each slice is an ordinary padded graph. The graphs'
      plans are stacked too, so a stack of large graphs runs on the native kernels; graphs planned
      for the ``"bucket"`` backend (the default on GPU) have tables of different shapes, and the
      stack runs the plain XLA path instead (`jgrad._src._plan.stackable`).

    Raises:
      TypeError: an element that is not a `jgrad.Graph`.
      ValueError: an empty sequence, weighted and unweighted graphs mixed, edge weights of different
        trailing shapes, or sizes too small for some graph (from `jgrad.pad`).

    Example:
      >>> import jgrad
      >>> from jgrad.parallel import stack_graphs
      >>> gs = [jgrad.Graph.from_edges([0], [1], n_nodes=2), jgrad.Graph.from_edges([0, 1], [1, 2], n_nodes=3)]
      >>> stack_graphs(gs).senders.shape, stack_graphs(gs).node_mask.shape
      ((2, 2), (2, 4))
    """
    graphs = list(graphs)
    if not graphs:
        raise ValueError("stack_graphs: needs at least one graph; got an empty sequence.")
    for i, graph in enumerate(graphs):
        check_graph(f"stack_graphs (graphs[{i}])", graph)
    check_same_weighting("stack_graphs", graphs)
    n_nodes = max(g.n_nodes for g in graphs) + 1 if n_nodes is None else n_nodes
    n_edges = max(g.n_edges for g in graphs) if n_edges is None else n_edges
    padded = [
        dataclasses.replace(pad(g, n_nodes, n_edges), graph_mask=None, n_node_per_graph=None,
                            n_edge_per_graph=None)
        for g in graphs
    ]
    plans = _plan.stackable([_plan.resolve(g) for g in padded])
    padded = [_plan.attach(g, plan) for g, plan in zip(padded, plans)]
    return jax.tree.map(lambda *leaves: jnp.asarray(np.stack([np.asarray(x) for x in leaves])), *padded)


def stack_node_data(arrays: Sequence[Any], n_nodes: int) -> jax.Array:
    """Zero-pads each (N_i, ...) array to (n_nodes, ...) and stacks them: shape (B, n_nodes, ...).

    Raises:
      ValueError: no arrays, an array with more than ``n_nodes`` rows, or arrays whose shapes differ
        after axis 0.

    Example:
      >>> import numpy as np
      >>> from jgrad.parallel import stack_node_data
      >>> stack_node_data([np.ones((2, 3)), np.ones((1, 3))], 4).shape
      (2, 4, 3)
    """
    arrays = [np.asarray(a) for a in arrays]
    if not arrays:
        raise ValueError("stack_node_data: needs at least one array; got an empty sequence.")
    problems = []
    for i, a in enumerate(arrays):
        if a.ndim == 0 or a.shape[0] > n_nodes:
            problems.append(f"arrays[{i}] does not fit; got shape {a.shape}, expected (N_i, ...) with "
                            f"N_i <= n_nodes={n_nodes}.")
        elif a.shape[1:] != arrays[0].shape[1:]:
            problems.append(f"arrays[{i}] has shape {a.shape}; expected {arrays[0].shape[1:]} after axis 0, "
                            "as arrays[0].")
    if problems:
        raise ValueError("stack_node_data: " + " ".join(problems))
    out = [np.concatenate([a, np.zeros((n_nodes - a.shape[0],) + a.shape[1:], a.dtype)]) for a in arrays]
    return jnp.asarray(np.stack(out))


def shard_batch(batch: Any, mesh: Mesh, *, axis: str = DATA_AXIS) -> Any:
    """Places every array leaf of ``batch`` with its leading (batch) axis split over the mesh axis ``axis``.

    Args:
      batch: a pytree whose leaves all have the same leading size B (a stacked `Graph`, features, labels).
      mesh: a mesh with an axis ``axis`` of size D; B must be divisible by D.

    Returns:
      The same pytree of ``jax.Array`` s with ``NamedSharding(mesh, P(axis))``: device d holds
      graphs ``[d * B/D, (d + 1) * B/D)``. ``jax.jit`` of a vmapped model then runs data-parallel.

    Raises:
      ValueError: if the mesh has no such axis, leaves disagree on B, or B is not divisible by D.
    """
    if axis not in mesh.shape:
        raise ValueError(f"shard_batch: the mesh has no {axis!r} axis; got axes {tuple(mesh.axis_names)}.")
    problem = _batch_problem(batch, mesh.shape[axis])
    if problem:
        raise ValueError(f"shard_batch: {problem}")
    sharding = NamedSharding(mesh, P(axis))
    return jax.tree.map(lambda leaf: jax.device_put(leaf, sharding), batch)


def data_parallel_value_and_grad(
    loss_fn: Callable[..., jax.Array],
    mesh: Mesh,
    *,
    axis: str = DATA_AXIS,
) -> Callable[[Any, Any], tuple[jax.Array, Any]]:
    """Wraps ``loss_fn(params, batch) -> scalar`` into a data-parallel ``(loss, grads)`` function.

    Semantics: with the batch split into D equal parts along its leading axis, device d computes
    ``loss_d, grads_d = value_and_grad(loss_fn)(params, batch_d)`` and the result is
    ``(pmean(loss_d), pmean(grads_d))``. If ``loss_fn`` is a mean over the batch axis, this equals
    ``value_and_grad(loss_fn)(params, batch)`` on one device (up to float summation order).

    Args:
      loss_fn: a pure function of ``(params, batch)`` returning a scalar; ``batch`` leaves have a
        leading axis of size B / D inside.
      mesh: a mesh with axis ``axis`` (`make_data_mesh`).
      axis: the mesh axis the batch is split over.

    Returns:
      ``fn(params, batch) -> (loss, grads)``, with params and results replicated; jit it (with donation
      if you like). Per device: one copy of params and grads, B/D graphs. ``fn`` raises a ValueError
      (also under ``jit``) if the batch's leaves disagree on B, B is not divisible by D, or a leaf is
      a scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from jgrad.parallel import make_data_mesh, data_parallel_value_and_grad
      >>> fn = data_parallel_value_and_grad(lambda w, b: jnp.mean((b * w) ** 2), make_data_mesh(1))
      >>> loss, grad = fn(jnp.float32(2.0), jnp.ones((4,)))
      >>> float(loss), float(grad)
      (4.0, 4.0)
    """
    if axis not in mesh.shape:
        raise ValueError(f"data_parallel_value_and_grad: the mesh has no {axis!r} axis; got axes "
                         f"{tuple(mesh.axis_names)}.")
    n_devices = mesh.shape[axis]

    def local(params, batch):
        # Per-device copies, so that the gradient is this device's own (not already summed over devices).
        params = jax.tree.map(lambda p: jax.lax.pcast(p, axis, to="varying"), params)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        return jax.lax.pmean(loss, axis), jax.tree.map(lambda g: jax.lax.pmean(g, axis), grads)

    sharded = shard_map(local, mesh=mesh, in_specs=(P(), P(axis)), out_specs=(P(), P()))

    def value_and_grad(params, batch):
        problem = _batch_problem(batch, n_devices)  # shapes are static: checked under jit too
        if problem:
            raise ValueError(f"data_parallel_value_and_grad: {problem}")
        return sharded(params, batch)

    return value_and_grad


def _batch_problem(batch: Any, n_devices: int) -> str | None:
    """What is wrong with the leading (batch) axes of ``batch``'s leaves for ``n_devices``, or None."""
    sizes, scalars = {}, []
    for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
        if np.ndim(leaf) == 0:
            scalars.append(f"batch{jax.tree_util.keystr(path)}")
        else:
            sizes.setdefault(int(np.shape(leaf)[0]), f"batch{jax.tree_util.keystr(path)}")
    if not scalars and len(sizes) == 1 and next(iter(sizes)) % n_devices == 0:
        return None
    got = [f"{size} ({path})" for size, path in sorted(sizes.items())]
    got += [f"a scalar ({path})" for path in scalars[:3]]
    return (f"every leaf needs the same leading batch size B divisible by {n_devices} devices; got leading "
            f"sizes {', '.join(got)}. Pad the batch with masked graphs to a multiple of {n_devices}.")
