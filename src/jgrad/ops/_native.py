"""Native CPU kernels of the ``"native"`` backend: CSR sum aggregation and per-edge dot products.

XLA's CPU backend runs ``gather + segment_sum`` as a serial scatter-add. The kernels in
``_csrc/csr_kernels.cc`` walk a graph in CSR order instead (each output row owned by one thread, no
atomics, no (E, M) intermediate; the work is shared with XLA's intra-op thread pool) and are called
through the XLA FFI:

* ``csr_sum(csr, u, w)``: ``out[r] = sum_k w[edge_ids[k]] * u[cols[k]]`` over the slots of row r;
* ``csr_edge_dot(csr, u, v, n_edges)``: ``out[edge_ids[k]] = <v[r], u[cols[k]]>``;
* ``csr_sum_dot(csr, g, u, w)``: both of the above in one pass, sharing each gathered row of ``g``
  (the backward of a weighted sum computes its node and edge cotangents this way);
* ``csr_extremum(csr, reduce, u, w, live)``: the max or min of ``w[edge_ids[k]] * u[cols[k]]`` over
  each row's live slots, with the lowest edge id attaining it and the number of slots that do, and
  ``csr_routed``, its backward at ties (`jgrad.ops._extremum`);
* ``csr_attention(csr, src, dst, live, negative_slope, n_edges)``: GAT's attention, the softmax over
  each row of ``leaky_relu(src[cols[k]] + dst[r])``, and ``csr_attention_backward`` (`jgrad.ops._attention`).

Each kernel also takes a weight per head: node data (N, H, F) with edge data (E, H) (``out[r, h] =
sum_k w[edge_ids[k], h] * u[cols[k], h]``, per-head dots of shape (E, H)). All H heads are done in
one walk over the CSR, each gathered row read once; node data (N, M) with edge data (E,) is H = 1.
The sum, the edge dot, the fused backward and the attention also take ``self_loops``: every row r has
one more slot after its own, the loop ``r -> r`` (edge E + r for the sums and dots), which a graph's
plan keeps out of its CSR (`jgrad._src._plan.Side.self_loops`).

The source is compiled with the system C++ compiler on first use (``$CXX``, else ``c++``/``g++``), as
two translation units in parallel, against the XLA FFI headers that ship with jaxlib, for this
machine's processor, and cached in ``$JGRAD_CACHE_DIR`` (default ``~/.cache/jgrad``), keyed by the
source, the flags, jaxlib's version and the processor (``make install`` builds them once, so no user
call waits for the compiler).
Without a compiler `available` is False and a ``"native"`` plan runs its CSR order with XLA segment
sums; a failed build says why once, as a warning. To forbid the native kernels, plan graphs for
another backend (`jgrad.ops.use_backend`). The kernels
handle float32 and float64 on CPU; `jgrad.ops._kernels` chooses them per platform at lowering time,
so on GPU and TPU the XLA formulation runs. ``JGRAD_NUM_THREADS`` caps the threads a kernel uses
(default: the cores this process may run on).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from .._src._plan import Csr

SOURCE = Path(__file__).with_name("_csrc") / "csr_kernels.cc"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-pthread", "-fno-math-errno")
PARTS = (1, 2)
"""The source's translation units (``-DJGRAD_KERNELS_PART=n``), compiled in parallel, then linked."""
TARGETS = {"jgrad_csr_sum": "JgradCsrSum", "jgrad_csr_edge_dot": "JgradCsrEdgeDot",
           "jgrad_csr_sum_dot": "JgradCsrSumDot", "jgrad_csr_max": "JgradCsrMax", "jgrad_csr_min": "JgradCsrMin",
           "jgrad_csr_routed": "JgradCsrRouted", "jgrad_csr_attention": "JgradCsrAttention",
           "jgrad_csr_attention_backward": "JgradCsrAttentionBackward"}
NATIVE_DTYPES = (jnp.float32, jnp.float64)


def available() -> bool:
    """Whether the native CPU kernels are built and registered (builds them on the first call)."""
    return _load() is not None


def supports(dtype) -> bool:
    """Whether the kernels handle arrays of ``dtype`` (float32 and float64)."""
    return any(jnp.dtype(dtype) == jnp.dtype(d) for d in NATIVE_DTYPES)


def _require() -> None:
    if _load() is None:
        raise RuntimeError("jgrad: the native CPU kernels are not available (see the warning above); "
                           "check jgrad.ops.native_available() before calling them.")


def csr_sum(csr: Csr, u: jax.Array, w: jax.Array | None, self_loops: bool = False) -> jax.Array:
    """``out[r] = sum over slots k of row r of w[edge_ids[k]] * u[cols[k]]``, for every head at once.

    Args:
      csr: one side of a plan.
      u: (N, M), or (N, H, F) with per-head weights.
      w: (E,) with u (N, M); (E, H) with u (N, H, F) (``out[r, h] = sum_k w[edge_ids[k], h] *
        u[cols[k], h]``); or None (no weights, any u).
      self_loops: every row r also has a self loop, edge E + r (E = the CSR's slots), one more term
        ``w[E + r] * u[r]``; w then has E + N entries (static).

    Returns (R,) + u.shape[1:] in u's dtype. Forward only: differentiate through
    `jgrad.ops._kernels.layout_sum`.
    """
    _require()
    n_rows = csr.row_ptr.shape[0] - 1
    w = jnp.zeros((0,), u.dtype) if w is None else w.astype(u.dtype)
    call = jax.ffi.ffi_call("jgrad_csr_sum", jax.ShapeDtypeStruct((n_rows,) + u.shape[1:], u.dtype),
                            vmap_method="sequential")
    return call(csr.row_ptr, csr.cols, csr.edge_ids, u, w, loop_base=_loop_base(csr, self_loops))


def csr_edge_dot(csr: Csr, u: jax.Array, v: jax.Array, n_edges: int, self_loops: bool = False) -> jax.Array:
    """``out[edge_ids[k]] = <v[r], u[cols[k]]>`` for every slot k of row r, per head.

    Args:
      csr: one side of a plan.
      u: (N, M), or (N, H, F) for one dot per head.
      v: (R, M), or (R, H, F) like u.
      n_edges: E, the number of edges (the self loops included).
      self_loops: every row r also has a self loop, edge ``S + r`` after the CSR's S slots, whose dot
        is ``<v[r], u[r]>`` (static).

    Returns (E,) for (N, M) operands, (E, H) with ``out[edge_ids[k], h] = <v[r, h], u[cols[k], h]>``
    for (N, H, F) ones; edges in no slot (padding) get 0.
    """
    _require()
    shape = (n_edges,) + u.shape[1:-1]
    call = jax.ffi.ffi_call("jgrad_csr_edge_dot", jax.ShapeDtypeStruct(shape, u.dtype), vmap_method="sequential")
    return call(csr.row_ptr, csr.cols, csr.edge_ids, u, v.astype(u.dtype), loop_base=_loop_base(csr, self_loops))


def csr_sum_dot(csr: Csr, g: jax.Array, u: jax.Array, w: jax.Array,
                self_loops: bool = False) -> tuple[jax.Array, jax.Array]:
    """``(out, dots)`` with ``out[r] = sum_k w[edge_ids[k]] g[cols[k]]`` and ``dots[edge_ids[k]] = <u[r], g[cols[k]]>``.

    g (N, M) is gathered, u (R, M) has one row per CSR row, w (E,); or, per head, g (N, H, F), u (R, H,
    F), w (E, H) with ``out[r, h] = sum_k w[edge_ids[k], h] g[cols[k], h]`` and ``dots[edge_ids[k], h] =
    <u[r, h], g[cols[k], h]>``. Returns (R,) + g.shape[1:] and w's shape in g's dtype; edges in no slot
    get a dot of 0. Each gathered row of g is read once for both results and every head. With
    ``self_loops`` (static) row r also has the loop ``S + r`` (S = the CSR's slots): ``w[S + r] g[r]``
    and ``dots[S + r] = <u[r], g[r]>``.
    """
    _require()
    n_rows = csr.row_ptr.shape[0] - 1
    shapes = (jax.ShapeDtypeStruct((n_rows,) + g.shape[1:], g.dtype), jax.ShapeDtypeStruct(w.shape, g.dtype))
    call = jax.ffi.ffi_call("jgrad_csr_sum_dot", shapes, vmap_method="sequential")
    out, dots = call(csr.row_ptr, csr.cols, csr.edge_ids, g, u.astype(g.dtype), w.astype(g.dtype),
                     loop_base=_loop_base(csr, self_loops))
    return out, dots


def _loop_base(csr: Csr, self_loops: bool) -> np.int64:
    """The kernels' ``loop_base`` attribute: the edge id of row 0's self loop (the CSR's slot count), or -1."""
    return np.int64(csr.cols.shape[0] if self_loops else -1)


def csr_extremum(csr: Csr, reduce: str, u: jax.Array, w: jax.Array | None,
                 live: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(out, arg, count)``: the max or min over each row's live slots, its lowest edge id, its tie count.

    Args:
      csr: one side of a plan.
      reduce: ``"max"`` or ``"min"``.
      u: (N, M), or (N, H, F) with per-head weights.
      w: (E,) with u (N, M), (E, H) with u (N, H, F), or None (the messages are u's rows).
      live: (E,) bool, edges that take part, or None (all).

    Returns out (R,) + u.shape[1:] in u's dtype (0 where no slot is live), and arg and count of out's
    shape, int32: the lowest edge id whose message equals out and how many live slots attain out (-1
    and 0 where no slot is live and at NaN results). Not differentiable: `jgrad.ops._extremum` reads the
    winners again with gathers.
    """
    _require()
    n_rows = csr.row_ptr.shape[0] - 1
    shape = (n_rows,) + u.shape[1:]
    shapes = (jax.ShapeDtypeStruct(shape, u.dtype), jax.ShapeDtypeStruct(shape, jnp.int32),
              jax.ShapeDtypeStruct(shape, jnp.int32))
    call = jax.ffi.ffi_call(f"jgrad_csr_{reduce}", shapes, vmap_method="sequential")
    return call(csr.row_ptr, csr.cols, csr.edge_ids, u, *_optional_edge_data(u, w, live))


def csr_routed(csr: Csr, u: jax.Array, w: jax.Array | None, live: jax.Array | None, top: jax.Array,
               share: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """The backward of max/min with the ``"split"`` tie rule, walking the reversed graph ``csr``.

    Every live edge e = (s -> r) whose message ``w[e] * u[s]`` equals ``top[r]`` (per entry) gets
    ``share[r]`` (the output cotangent over the tie count): ``du[s] = sum of w[e] * share[r]`` over
    those edges and ``dw[e] = sum over the entries of u[s] * share[r]`` where the message ties.

    Args:
      csr: the reverse side of a plan (rows = senders).
      u, w, live: as `csr_extremum`.
      top: (N,) + u.shape[1:], the forward's extremum; share: the same shape, the routed cotangent.

    Returns du of u's shape and dw of w's shape (None without w).
    """
    _require()
    shapes = (jax.ShapeDtypeStruct(u.shape, u.dtype),
              jax.ShapeDtypeStruct((0,) if w is None else w.shape, u.dtype))
    call = jax.ffi.ffi_call("jgrad_csr_routed", shapes, vmap_method="sequential")
    du, dw = call(csr.row_ptr, csr.cols, csr.edge_ids, u, *_optional_edge_data(u, w, live),
                  top.astype(u.dtype), share.astype(u.dtype))
    return du, None if w is None else dw


def csr_attention(csr: Csr, src: jax.Array, dst: jax.Array, live: jax.Array | None, negative_slope: float,
                  n_edges: int, self_loops: bool = False) -> tuple[jax.Array, jax.Array | None]:
    """GAT's attention: ``alpha[e, h]``, the softmax over each row's live slots of
    ``leaky_relu(src[cols[k], h] + dst[r, h], negative_slope)``.

    Args:
      csr: the forward side of a plan (rows = receivers).
      src, dst: (N, H) scores of the senders and of the receivers, one dtype.
      live: (E,) bool, edges that take part, or None (all); with ``self_loops`` also (E + N,), the
        loops' after the edges' (a dead loop gets weight 0).
      negative_slope: the leaky ReLU's slope (static).
      n_edges: E.
      self_loops: give every row a self loop too, one more term ``leaky_relu(src[r] + dst[r])`` of its
        softmax (static).

    Returns ``(alpha, alpha_self)``: (E, H) in src's dtype, with the plain path's rules for dead edges
    (0), rows whose logits are all ``-inf`` (0) and NaN or ``+inf`` logits (NaN in their row); and the
    self loops' weights (N, H), or None without them. Forward only.
    """
    _require()
    heads = src.shape[1]
    shapes = (jax.ShapeDtypeStruct((n_edges, heads), src.dtype),
              jax.ShapeDtypeStruct((src.shape[0], heads) if self_loops else (0,), src.dtype))
    call = jax.ffi.ffi_call("jgrad_csr_attention", shapes, vmap_method="sequential")
    alpha, alpha_self = call(csr.row_ptr, csr.cols, csr.edge_ids, src, dst, _optional_edge_data(src, None, live)[1],
                             negative_slope=np.float64(negative_slope))
    return alpha, alpha_self if self_loops else None


def csr_attention_backward(csr: Csr, src: jax.Array, dst: jax.Array, live: jax.Array | None,
                           negative_slope: float, alpha: jax.Array, g: jax.Array, alpha_self: jax.Array | None = None,
                           g_self: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """The backward of `csr_attention` for the cotangents ``g`` (E, H) of ``alpha`` and, with self loops,
    ``g_self`` (N, H) of ``alpha_self``; ``live`` as in `csr_attention`.

    Returns ``(d_raw, d_dst, d_self)``: (E, H) cotangents of the raw scores ``src[sender] +
    dst[receiver]`` (0 at dead edges), their sums at the receivers (N, H) with the self loops' terms,
    and the self loops' own raw-score cotangents (N, H), or None without them; the senders' ``d_src``
    is the sum of ``d_raw`` at the senders plus ``d_self``. ``d_raw`` is written over ``g``'s buffer
    (each slot reads its ``g`` before writing), which XLA then need not allocate: a fresh (E, H) buffer
    is page-faulted in on every step, which cost the 4-head GAT layer's step 5-7 ms at 10^5 nodes.
    """
    _require()
    loops = alpha_self is not None
    self_shape = dst.shape if loops else (0,)
    shapes = (jax.ShapeDtypeStruct(alpha.shape, src.dtype), jax.ShapeDtypeStruct(dst.shape, src.dtype),
              jax.ShapeDtypeStruct(self_shape, src.dtype))
    call = jax.ffi.ffi_call("jgrad_csr_attention_backward", shapes, vmap_method="sequential",
                            input_output_aliases={7: 0})
    empty = jnp.zeros((0,), src.dtype)
    d_raw, d_dst, d_self = call(csr.row_ptr, csr.cols, csr.edge_ids, src, dst, _optional_edge_data(src, None, live)[1],
                                alpha.astype(src.dtype), g.astype(src.dtype),
                                alpha_self.astype(src.dtype) if loops else empty,
                                g_self.astype(src.dtype) if loops else empty, negative_slope=np.float64(negative_slope))
    return d_raw, d_dst, d_self if loops else None


def _optional_edge_data(u, w, live):
    """w in u's dtype and live as bool, each a (0,) array when absent."""
    return (jnp.zeros((0,), u.dtype) if w is None else w.astype(u.dtype),
            jnp.zeros((0,), bool) if live is None else live.astype(bool))


def _compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _processor_signature() -> str:
    """The processor's feature flags (``-march=native`` builds are only valid on a matching CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("JGRAD_CACHE_DIR") or Path.home() / ".cache" / "jgrad"
    return Path(root) / "native"


def _library_path(compiler: str) -> Path:
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), compiler.encode(), jaxlib.__version__.encode(),
                 platform.machine().encode(), _processor_signature().encode()):
        key.update(part)
        key.update(b"\0")
    return _cache_dir() / f"libjgrad_csr_{key.hexdigest()[:16]}.so"


def _build(compiler: str, target: Path) -> None:
    """Compiles the kernels into ``target``, atomically (concurrent builders each write their own file).

    The source's `PARTS` compile at the same time, one compiler process each, and are linked after.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        objects = [Path(scratch) / f"part{part}.o" for part in PARTS]
        compiles = [[compiler, *FLAGS, f"-DJGRAD_KERNELS_PART={part}", f"-I{jax.ffi.include_dir()}", "-c",
                     str(SOURCE), "-o", str(obj)] for part, obj in zip(PARTS, objects, strict=True)]
        running = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                   for command in compiles]
        finished = [(process.communicate()[1], process.returncode) for process in running]
        for command, (stderr, returncode) in zip(compiles, finished, strict=True):
            _check(command, returncode, stderr)
        output = Path(scratch) / target.name
        link = [compiler, "-shared", "-pthread", *map(str, objects), "-o", str(output)]
        result = subprocess.run(link, capture_output=True, text=True)
        _check(link, result.returncode, result.stderr)
        os.replace(output, target)


def _build_and_say(compiler: str, target: Path) -> None:
    """`_build`, with one line on stderr before and one after: the first call that lowers a native op
    waits for the compiler (20-60 s on two cores), which would otherwise look like a hang."""
    print(f"jgrad: compiling the native CPU kernels with {compiler} into {target.parent} (once per machine "
          "and jaxlib version; 20-60 s)...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    _build(compiler, target)
    print(f"jgrad: native CPU kernels built in {time.perf_counter() - start:.1f} s.", file=sys.stderr, flush=True)


def _check(command: list[str], returncode: int, stderr: str) -> None:
    if returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr.strip()[-2000:]}")


@functools.cache
def _load() -> ctypes.CDLL | None:
    compiler = _compiler()
    if compiler is None:
        warnings.warn("jgrad: no C++ compiler found (set CXX); native plans run with XLA segment sums.",
                      RuntimeWarning, stacklevel=3)
        return None
    try:
        path = _library_path(compiler)
        if not path.exists():
            _build_and_say(compiler, path)
        library = ctypes.cdll.LoadLibrary(str(path))
        for name, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    except (OSError, RuntimeError, AttributeError) as error:
        warnings.warn(f"jgrad: building the native CPU kernels failed; native plans run with XLA "
                      f"segment sums. {error}", RuntimeWarning, stacklevel=3)
        return None
    return library
