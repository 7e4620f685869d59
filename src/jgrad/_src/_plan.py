"""The execution plan of a graph: what a fast backend needs about its structure, built once on the host.

A `Plan` travels with a `jgrad.Graph` as an optional pytree part (``graph.plan``). It holds, for the
graph and for its reverse (the transpose, used by every backward pass), the edges in CSR order
(`Csr`: row offsets, neighbours, edge ids) and, for the ``"bucket"`` backend only, degree-bucketed
neighbour tables (`Bucket`). Arrays are int32 data leaves; the backend name, sizes and bucket shapes
are static (they are part of ``jax.jit``'s cache key).

Life cycle (see `resolve`):

* ``Graph(...)`` and every constructor or transform start with ``plan=AUTO``: nothing is computed.
* The first time the graph is used on the host, by an op called eagerly or by flattening the pytree
  (passing it to ``jax.jit``, ``jax.vmap``, ``jax.tree.map``), `resolve` replaces ``AUTO`` by the plan
  the chosen backend needs (`choose_backend`), or by ``None`` (the plain XLA path) when the graph is
  small or its indices are traced (a graph built inside ``jit`` runs the plain path). The result is
  cached on the graph object.
* A plan is bound to the index arrays it was planned from (by identity). A graph rebuilt with other
  ``senders`` or ``receivers`` (``dataclasses.replace``, a transform) loses it and goes back to
  ``AUTO``, so a plan can never describe another structure; ``reverse`` transposes it and
  ``add_self_loops`` extends it by a flag, with no new tables (jit-safe, `with_self_loops`,
  `Side.self_loops`).
* A plan covers every edge, padding edges included: the ops fold ``edge_mask`` into the edge weights
  when they run, so masking edges (padding, GAT's removal of existing loops) keeps the plan.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_TABLES: dict[str, str | None] = {"xla": None, "bucket": "buckets", "native": "csr"}
"""Backend name -> the tables its plan holds. ``"xla"``: gather + segment ops, no plan. ``"bucket"``:
degree-bucketed gather tables (any platform). ``"native"``: CSR kernels through the XLA FFI on CPU
(other platforms run the CSR with segment ops). Kernels register more with `register_backend`."""

BACKENDS = tuple(_TABLES)
"""The built-in backends (`backends` lists the registered ones)."""


def register_backend(name: str, tables: str) -> None:
    """Makes ``name`` a backend whose plans hold ``tables`` (``"csr"`` or ``"buckets"``)."""
    if tables not in ("csr", "buckets"):
        raise ValueError(f"register_backend: unknown tables; got {tables!r}, expected 'csr' or 'buckets'.")
    _TABLES[name] = tables


def backends() -> tuple[str, ...]:
    """Every registered backend name."""
    return tuple(_TABLES)

SMALL_GRAPH_EDGES = 32_768
"""Below this many edges the plain XLA path is at least as fast (Cora's GCN step: 2.3e4 edges with
self loops), so `choose_backend` plans nothing. The one place where the size rule lives."""


class _Auto:
    """Sentinel of a graph whose plan has not been decided yet (see the module docstring)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "AUTO"

    def __reduce__(self):
        return (_Auto, ())


AUTO = _Auto()


class Csr(NamedTuple):
    """One direction of a graph in CSR order: row r's slots are ``row_ptr[r] .. row_ptr[r+1] - 1``.

    Attributes:
      row_ptr: (R + 1,) int32 slot offsets; ``row_ptr[R] = E``.
      cols: (E,) int32 neighbour (sender of this direction) of each slot.
      edge_ids: (E,) int32 edge id of each slot.
    """

    row_ptr: jax.Array
    cols: jax.Array
    edge_ids: jax.Array


@dataclasses.dataclass(frozen=True)
class Bucket:
    """One degree bucket: receivers whose in-degree rounds up to the same power of two.

    Attributes:
      neighbours: (C, R, K) int32 sender of each slot; padded slots hold N (a zero row is appended to u).
      edge_ids: (C, R, K) int32 edge id of each slot; padded slots hold E (a zero is appended to e).
      row_nodes: (C, R) int32 receiver of each row; padding rows hold N.
      n_receivers: static number of receivers in the bucket.
      split: static number of rows per receiver (> 1 for hubs wider than the maximum width).
    """

    neighbours: jax.Array
    edge_ids: jax.Array
    row_nodes: jax.Array
    n_receivers: int
    split: int


@dataclasses.dataclass(frozen=True)
class Side:
    """The plan of one direction of a graph (rows = the receivers of this direction).

    Attributes:
      edge_csr: the graph's edges in CSR order (`Csr`), without the self loops of ``self_loops``.
      in_degree: (N,) int32 count of incoming edges (padding edges and self loops included).
      buckets: tuple of `Bucket` by increasing width; empty unless the backend is ``"bucket"``.
      output_position: (N,) int32 row of each node in the concatenated bucket outputs (bucket only).
      slot_of_edge: (E,) int32 position of each edge among the flattened bucket slots (bucket only).
      in_edge_order: static; True when the slots hold the edges in id order (the graph's edges were
        already sorted by this side's rows; self loops added later, as the last slot of each row, keep
        it): a walk over this side then reads and writes per-edge data in order, not at random. Being
        static, it is part of ``jax.jit``'s cache key, like the sizes: graphs padded to one size
        compile once per edge order (sorted by receiver, by sender, or neither).
      self_loops: static; True when the graph also has the loops ``v -> v`` as edges E..E+N-1
        (`with_self_loops`), kept out of ``edge_csr``: each is one more slot at the end of its row, and
        the sums and edge dots take them as a term of their own (`jgrad.ops._kernels`).
    """

    edge_csr: Csr
    in_degree: jax.Array
    buckets: tuple = ()
    output_position: jax.Array | None = None
    slot_of_edge: jax.Array | None = None
    in_edge_order: bool = False
    self_loops: bool = False

    @property
    def csr(self) -> Csr:
        """Every edge in CSR order, the self loops included: ``edge_csr`` itself, or with the loops
        inserted in closed form (jit-safe XLA ops, a pass over every slot), for the kernels that walk
        them as slots."""
        if not self.self_loops:
            return self.edge_csr
        return _csr_with_loops(self.edge_csr, self.in_degree.shape[0])

    def without_loops(self) -> Side:
        """This side without its self loops: the graph's own E edges."""
        if not self.self_loops:
            return self
        return dataclasses.replace(self, in_degree=self.in_degree - 1, self_loops=False)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The plan of a graph (`forward`) and of its reverse (`reverse`); a JAX pytree.

    Attributes:
      forward: `Side` aggregating at the receivers (``A @ x``).
      reverse: `Side` aggregating at the senders (``A^T @ x``, the backward).
      backend: static name of the backend it was planned for (a registered backend but ``"xla"``).
      n_nodes, n_edges: static sizes of the graph.
    """

    forward: Side
    reverse: Side
    backend: str
    n_nodes: int
    n_edges: int

    def transpose(self) -> Plan:
        """The plan of the reversed graph: forward and reverse swapped."""
        return dataclasses.replace(self, forward=self.reverse, reverse=self.forward)

    def without_loops(self) -> Plan:
        """The plan of the graph's own edges, without the self loops its sides are marked with
        (`Side.self_loops`: edges E - N .. E - 1, one per node)."""
        if not self.forward.self_loops:
            return self
        return dataclasses.replace(self, forward=self.forward.without_loops(), reverse=self.reverse.without_loops(),
                                   n_edges=self.n_edges - self.n_nodes)

    def __repr__(self) -> str:
        return f"Plan(backend={self.backend!r}, n_nodes={self.n_nodes}, n_edges={self.n_edges})"


jax.tree_util.register_dataclass(Bucket, data_fields=["neighbours", "edge_ids", "row_nodes"],
                                 meta_fields=["n_receivers", "split"])
jax.tree_util.register_dataclass(Side, data_fields=["edge_csr", "in_degree", "buckets", "output_position",
                                                    "slot_of_edge"], meta_fields=["in_edge_order", "self_loops"])
jax.tree_util.register_dataclass(Plan, data_fields=["forward", "reverse"],
                                 meta_fields=["backend", "n_nodes", "n_edges"])


# --------------------------------------------------------------------------------------------------
# Choosing a backend (host side, when a plan is made).
# --------------------------------------------------------------------------------------------------
_CHOICE: contextvars.ContextVar[str | None] = contextvars.ContextVar("jgrad_backend", default=None)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Plans every graph resolved inside the block for backend ``name`` (see `jgrad.ops.use_backend`)."""
    check_backend("use_backend", name)
    token = _CHOICE.set(name)
    try:
        yield
    finally:
        _CHOICE.reset(token)


def check_backend(where: str, name: Any) -> str:
    valid = backends() + ("auto",)
    if name not in valid:
        raise ValueError(f"{where}: unknown backend; got {name!r}, expected one of "
                         f"{', '.join(map(repr, valid))}.")
    return name


def choose_backend(n_edges: int, name: str | None = None) -> str:
    """The backend a graph of ``n_edges`` edges is planned for: the one place where the rule lives.

    An explicit ``name`` (or the innermost `use_backend`) wins; ``"auto"`` picks ``"xla"`` below
    `SMALL_GRAPH_EDGES` edges, else ``"native"`` when JAX's default platform is the CPU and
    ``"bucket"`` on other platforms.
    """
    name = name or _CHOICE.get() or "auto"
    if name != "auto":
        return name
    if n_edges < SMALL_GRAPH_EDGES:
        return "xla"
    return "native" if jax.default_backend() == "cpu" else "bucket"


# --------------------------------------------------------------------------------------------------
# Resolving and binding.
# --------------------------------------------------------------------------------------------------
def _is_concrete(*values: Any) -> bool:
    return not any(isinstance(v, jax.core.Tracer) for v in values)


def resolve(graph: Any) -> Plan | None:
    """The plan of ``graph``, made now (and cached on it) if it is still ``AUTO``; None for the XLA path."""
    plan = graph.plan
    if plan is AUTO:
        plan = None
        if _is_concrete(graph.senders, graph.receivers):
            backend = choose_backend(int(graph.senders.shape[0]))
            if backend != "xla":
                # The first op may run inside a trace (a graph closed over by a scan or jit body): the
                # tables must still be concrete arrays, since the plan is cached on the graph and
                # outlives that trace.
                with jax.ensure_compile_time_eval():
                    plan = make_plan(graph.senders, graph.receivers, graph.n_nodes, backend)
                bind(plan, graph)
        object.__setattr__(graph, "plan", plan)
    return plan


def bind(plan: Any, graph: Any) -> Any:
    """Records that ``plan`` describes the index arrays of ``graph`` (compared by identity)."""
    if isinstance(plan, Plan):
        object.__setattr__(plan, "_bound", (graph.senders, graph.receivers))
    return plan


def attach(graph: Any, plan: Any) -> Any:
    """``graph`` (just built by a transform) with ``plan`` bound to its index arrays."""
    object.__setattr__(graph, "plan", bind(plan, graph))
    return graph


def is_bound(plan: Any, graph: Any) -> bool:
    """Whether ``plan`` was made (or bound) for exactly the index arrays of ``graph``."""
    bound = getattr(plan, "_bound", None)
    if bound is None:
        return False
    return bound[0] is graph.senders and bound[1] is graph.receivers


def with_self_loops(graph: Any) -> Any:
    """The plan of ``graph`` with the loops ``v -> v`` appended as edges E..E+N-1 (`add_self_loops`).

    A CSR plan (``"native"``) is extended by a flag, `Side.self_loops`, with no new tables (jit-safe:
    it works on traced plans, so a graph that gets its loops inside ``jit`` keeps running on the
    engine, and a GCN normalisation inside a jitted step builds nothing per call); each loop is the
    last slot of its row in both directions. A graph not planned yet is planned first when its
    backend keeps CSR tables: one closed over by a jitted function meets its first op here, and the
    looped indices, traced there, could no longer be planned. A ``"bucket"`` plan goes back to
    ``AUTO`` (its static table shapes change), ``None`` stays ``None``.
    """
    plan = graph.plan
    if plan is AUTO and _TABLES.get(choose_backend(int(graph.senders.shape[0]))) == "csr":
        plan = resolve(graph)
    if not isinstance(plan, Plan):
        return plan
    if _TABLES.get(plan.backend) != "csr":
        return AUTO
    n, e = plan.n_nodes, plan.n_edges
    return Plan(forward=_side_with_loops(plan.forward), reverse=_side_with_loops(plan.reverse),
                backend=plan.backend, n_nodes=n, n_edges=e + n)


def stackable(plans: list) -> list:
    """The plans of graphs of one size (N, E), made to share one pytree structure, so that the graphs
    stack along a new leading axis (``jgrad.parallel.stack_graphs``, then ``jax.vmap``).

    Plans of one structure are returned as they are. CSR plans that differ only in `Side.in_edge_order`
    (one graph's edges were sorted by receiver, another's not) all get False, which every kernel
    handles (the edge data are then read and written through the edge ids). Bucket tables differ in
    shape from graph to graph, as do plans for different backends: those graphs get None, the plain
    XLA path, which runs any stack.
    """
    if len({jax.tree.structure(plan) for plan in plans}) <= 1:
        return plans
    same_csr = (all(isinstance(plan, Plan) for plan in plans) and len({plan.backend for plan in plans}) == 1
                and _TABLES.get(plans[0].backend) == "csr")
    if not same_csr:
        return [None] * len(plans)

    def unordered(side: Side) -> Side:
        return dataclasses.replace(side, in_edge_order=False)

    plans = [dataclasses.replace(plan, forward=unordered(plan.forward), reverse=unordered(plan.reverse))
             for plan in plans]
    return plans if len({jax.tree.structure(plan) for plan in plans}) == 1 else [None] * len(plans)


def slot_rows(row_ptr: jax.Array, n_slots: int) -> jax.Array:
    """(n_slots,) the row of every CSR slot, ``searchsorted(row_ptr, slot, "right") - 1``; slots at or
    after ``row_ptr[-1]`` get R, the number of rows (out of range).

    Counts the row ends at or before each slot: a scatter of R ones and a cumulative sum, O(S + R)
    (jit-safe; on CPU 4x faster than a binary search per slot: 16 against 66 ms for 1.8·10^6 slots).
    """
    # When the plan is a compile-time constant (a planned graph closed over by a jitted function), XLA
    # would evaluate this scan while compiling: 8 s per side at 3.4·10^5 slots. The barrier leaves it to run time.
    row_ptr = jax.lax.optimization_barrier(row_ptr)
    ends = jnp.zeros((n_slots,), row_ptr.dtype).at[row_ptr[1:]].add(1, mode="drop")
    return jnp.cumsum(ends, dtype=row_ptr.dtype)


def _side_with_loops(side: Side) -> Side:
    """``side`` with a self loop appended to every row, as edges E..E+N-1: a flag, no new tables."""
    base = side if not side.self_loops else dataclasses.replace(side, edge_csr=side.csr, self_loops=False)
    return dataclasses.replace(base, in_degree=base.in_degree + 1, self_loops=True)


def _csr_with_loops(csr: Csr, n: int) -> Csr:
    """``csr`` (E slots) with the loop of row r as the last slot of its row, edge id E + r."""
    e = csr.cols.shape[0]
    row_ptr = csr.row_ptr + jnp.arange(n + 1, dtype=csr.row_ptr.dtype)
    slots = jnp.arange(e + n, dtype=row_ptr.dtype)
    row = slot_rows(row_ptr, e + n)
    is_loop = slots == row_ptr[jnp.minimum(row + 1, n)] - 1
    old = jnp.clip(slots - row, 0, max(e - 1, 0))
    if e == 0:
        return Csr(row_ptr=row_ptr, cols=row, edge_ids=e + row)
    return Csr(row_ptr=row_ptr, cols=jnp.where(is_loop, row, csr.cols[old]),
               edge_ids=jnp.where(is_loop, e + row, csr.edge_ids[old]))


# --------------------------------------------------------------------------------------------------
# Planning (vectorised numpy on the host).
# --------------------------------------------------------------------------------------------------
def make_plan(senders: Any, receivers: Any, n_nodes: int, backend: str, *,
              max_width: int = 64, chunk_edges: int = 2048) -> Plan:
    """Plans concrete indices for ``backend`` (``"native"``: CSR only; ``"bucket"``: CSR and tables).

    Args:
      senders, receivers: (E,) concrete integer arrays; every edge is planned (masks apply at run time).
      n_nodes: N.
      backend: a registered backend other than ``"xla"``.
      max_width: widest bucket table, a power of two (bucket only).
      chunk_edges: about how many slots one step of a bucket reduction gathers (bucket only).
    """
    senders = np.asarray(senders)
    receivers = np.asarray(receivers)
    n_edges = int(senders.shape[0])
    with_buckets = _TABLES[backend] == "buckets"
    sides = ((receivers, senders), (senders, receivers))
    plan_side = lambda rows_cols: _plan_side(*rows_cols, n_nodes, n_edges, with_buckets, max_width, chunk_edges)
    if n_edges >= _PARALLEL_EDGES:  # numpy sorts and gathers without the GIL: plan both sides at once
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            forward, reverse = pool.map(plan_side, sides)
    else:
        forward, reverse = map(plan_side, sides)
    return Plan(forward=forward, reverse=reverse, backend=backend, n_nodes=n_nodes, n_edges=n_edges)


_PARALLEL_EDGES = 1 << 17


def _csr_order(rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Edge ids grouped by row (stable), the in-degree of every row, and whether the edges already
    were grouped (the ids then are in order)."""
    key = rows.astype(np.int32 if n < 2**31 - 1 else np.int64, copy=False)
    in_order = bool(np.all(key[1:] >= key[:-1]))
    # already grouped: from_dense, coalesce, sorted loaders
    order = np.arange(key.size) if in_order else _stable_argsort(key, n)
    degree = np.bincount(key, minlength=n)
    return order, degree, in_order


def _stable_argsort(key: np.ndarray, largest: int) -> np.ndarray:
    """Stable argsort of non-negative ints <= ``largest`` as 16-bit radix passes (numpy sorts uint16
    keys by counting, O(E) per pass: ~4x faster than a comparison sort at 10^6 edges)."""
    order = np.argsort((key & 0xFFFF).astype(np.uint16), kind="stable")
    shift = 16
    while largest >> shift:
        digit = ((key[order] >> shift) & 0xFFFF).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
        shift += 16
    return order


def _plan_side(rows, cols, n, n_edges, with_buckets, max_width, chunk_edges) -> Side:
    """The plan that gathers ``cols`` (the senders of this direction) for every node of ``rows``."""
    order, degree, in_order = _csr_order(rows, n)
    row_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(degree, out=row_ptr[1:])
    csr = Csr(row_ptr=_device(row_ptr), cols=_device(cols[order]), edge_ids=_device(order))
    side = Side(edge_csr=csr, in_degree=_device(degree), in_edge_order=in_order)
    if not with_buckets:
        return side
    return _add_buckets(side, order, degree, row_ptr, cols, n, n_edges, max_width, chunk_edges)


def _device(values: np.ndarray) -> jax.Array:
    """An int32 device array, converted on the host (no XLA conversion kernel is compiled)."""
    return jnp.asarray(np.asarray(values).astype(np.int32, copy=False))


def _add_buckets(side, order, degree, row_ptr, cols, n, n_edges, max_width, chunk_edges) -> Side:
    """Degree-bucketed, padded-neighbour (ELL-like) tables of one side.

    Receivers are grouped by in-degree rounded up to a power of two ``k``; a bucket is a table of
    shape (rows, k) listing each receiver's senders, padded with a dummy sender N. Hubs wider than
    ``max_width`` are cut into several rows that are summed afterwards; each table is cut into chunks
    of about ``chunk_edges`` slots so that a chunk's gathered messages stay in cache.
    """
    start = row_ptr[:-1]
    width = np.zeros(n, np.int64)
    has_edges = degree > 0
    width[has_edges] = 1 << np.ceil(np.log2(degree[has_edges])).astype(np.int64)
    buckets, placed = [], []
    slot_of_edge = np.empty(n_edges, np.int64)
    offset = 0
    for k in np.unique(width[has_edges]):
        nodes = np.nonzero(width == k)[0]
        lane = np.arange(k)
        filled = lane[None, :] < degree[nodes, None]
        position = np.where(filled, start[nodes, None] + lane[None, :], 0)
        edge_ids = np.where(filled, order[np.minimum(position, max(len(order) - 1, 0))], n_edges)
        row_width = min(int(k), max_width)
        split = int(k) // row_width
        edge_ids = edge_ids.reshape(-1, row_width)
        row_nodes = np.repeat(nodes, split)
        per_chunk = max(1, chunk_edges // row_width)
        n_chunks = -(-edge_ids.shape[0] // per_chunk)
        extra = n_chunks * per_chunk - edge_ids.shape[0]
        edge_ids = np.pad(edge_ids, ((0, extra), (0, 0)), constant_values=n_edges)
        row_nodes = np.pad(row_nodes, (0, extra), constant_values=n)
        neighbours = np.where(edge_ids < n_edges, cols[np.minimum(edge_ids, n_edges - 1)], n)
        flat = edge_ids.reshape(-1)
        is_real = flat < n_edges
        slot_of_edge[flat[is_real]] = offset + np.nonzero(is_real)[0]
        offset += flat.size
        shape = (n_chunks, per_chunk, row_width)
        buckets.append(Bucket(
            neighbours=jnp.asarray(neighbours.reshape(shape), jnp.int32),
            edge_ids=jnp.asarray(edge_ids.reshape(shape), jnp.int32),
            row_nodes=jnp.asarray(row_nodes.reshape(shape[:2]), jnp.int32),
            n_receivers=int(nodes.size),
            split=split,
        ))
        placed.append(nodes)
    placed = np.concatenate(placed) if placed else np.zeros(0, np.int64)
    output_position = np.full(n, placed.size, np.int64)
    output_position[placed] = np.arange(placed.size)
    return dataclasses.replace(side, buckets=tuple(buckets),
                               output_position=jnp.asarray(output_position, jnp.int32),
                               slot_of_edge=jnp.asarray(slot_of_edge, jnp.int32))
