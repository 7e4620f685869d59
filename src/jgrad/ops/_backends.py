"""Choosing the execution backend of a graph: `use_backend`, `with_backend`, `backend_of`.

A graph runs on the backend its plan was made for (``graph.plan``, see `jgrad.Graph`). By default
the plan is made the first time the graph is used with concrete indices, for the backend that
`jgrad._src._plan.choose_backend` picks (the one place where the rule lives: the plain XLA path below
``SMALL_GRAPH_EDGES`` edges, the native CSR kernels on CPU, bucketed gather tables elsewhere).

Backends:
  ``"xla"``     gather + segment reductions; no plan (any platform, any op).
  ``"bucket"``  degree-bucketed neighbour tables: gathers and dense reductions (XLA, any platform).
  ``"native"``  CSR kernels through the XLA FFI on CPU (`jgrad.ops._native`); on other platforms the
                same CSR order runs with segment sums.

Adding a backend is one module plus one registry line: the module writes the raw, forward-only
kernels on one side of a plan (a sum over each row's slots, one dot per edge, optionally the fused
backward; see `jgrad.ops._kernels.Kernels`), and ``register(name, Kernels(...), tables="csr")`` in
`jgrad.ops._kernels` makes ``name`` a backend whose plans hold CSR tables (or ``"buckets"``). The
differentiable ops (`jgrad._src._op.Op`), the plan's life cycle and `use_backend` / `with_backend`
then serve it; to make it the default somewhere, change the rule in `jgrad._src._plan.choose_backend`.
"""

from __future__ import annotations

import dataclasses

from .._src import _plan
from .._src._checks import check_graph
from .._src._plan import use_backend as _use_backend
from ..graph import Graph


def use_backend(name: str):
    """Context manager: graphs planned inside the block are planned for backend ``name``.

    Args:
      name: ``"auto"``, ``"xla"`` (no plan: the plain path), ``"bucket"`` or ``"native"``.

    A graph is planned once, the first time it is used with concrete indices (an eager op call, or
    when it is passed into ``jax.jit``/``jax.vmap``); enter the block before that, or use
    `with_backend` on an existing graph. The choice is made on the host, never read while tracing.

    Raises:
      ValueError: an unknown backend name.

    Example:
      >>> import jgrad
      >>> with jgrad.ops.use_backend("bucket"):
      ...     g = jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2)
      ...     jgrad.ops.backend_of(g)
      'bucket'
    """
    return _use_backend(name)


def with_backend(graph: Graph, name: str) -> Graph:
    """The same graph planned for backend ``name`` (``"xla"`` drops the plan: the plain path).

    Args:
      graph: a graph with concrete indices (eager only, unless ``name`` is ``"xla"``).
      name: ``"auto"``, ``"xla"``, ``"bucket"``, ``"native"`` or ``"pallas"`` (the GPU kernels; elsewhere
        Pallas's interpreter, a slow reference).

    Returns:
      A `Graph` sharing the arrays of ``graph`` with a new plan.

    Raises:
      ValueError: an unknown backend name.
      TypeError: planning a graph whose indices are traced.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> g = jgrad.ops.with_backend(jgrad.Graph.from_edges([0, 1], [1, 1], n_nodes=2), "native")
      >>> jgrad.ops.backend_of(g), jgrad.ops.spmm(g, jnp.array([[1.0], [2.0]])).tolist()
      ('native', [[0.0], [3.0]])
    """
    where = "with_backend"
    check_graph(where, graph)
    name = _plan.check_backend(where, name)
    if name != "xla":
        if not _plan._is_concrete(graph.senders, graph.receivers):
            raise TypeError(f"{where}: the graph's indices are traced; got a graph built inside a "
                            "transformation, expected concrete indices (plan it outside jax.jit).")
        name = _plan.choose_backend(graph.n_edges, name)
    plan = None
    if name != "xla":
        plan = _plan.bind(_plan.make_plan(graph.senders, graph.receivers, graph.n_nodes, name), graph)
    return dataclasses.replace(graph, plan=plan)


def backend_of(graph: Graph) -> str:
    """The backend ``graph`` runs on: ``"xla"``, ``"bucket"`` or ``"native"`` (plans it if still undecided).

    ``"native"`` means the native plan; whether the C++ kernels themselves run (CPU, float32/64, a
    compiler) is decided when the computation is lowered (`jgrad.ops.native_available`).
    """
    check_graph("backend_of", graph)
    plan = _plan.resolve(graph)
    return "xla" if plan is None else plan.backend
