"""Pallas kernels of a ``"pallas"`` backend: CSR sum aggregation and per-edge dot products for GPUs.

The same three raw kernels as the native CPU backend (`jgrad.ops._native`), with the same signatures
and results, written with ``jax.experimental.pallas`` so that they lower through Triton on GPUs:

* ``csr_sum(csr, u, w)``: ``out[r] = sum_k w[edge_ids[k]] * u[cols[k]]`` over the slots k of row r;
* ``csr_edge_dot(csr, u, v, n_edges)``: ``out[edge_ids[k]] = <v[r], u[cols[k]]>``;
* ``csr_sum_dot(csr, g, u, w)``: both at once, sharing each gathered row of ``g`` (the backward of a
  weighted sum: ``(A^T g, dw)`` on the reversed side).

``csr`` is one side of a graph's `jgrad._src._plan.Plan` (``plan.forward.csr`` or
``plan.reverse.csr``): row r owns the slots ``row_ptr[r] .. row_ptr[r+1] - 1``. Each program of the grid
owns a block of ``block_rows`` output rows and walks each row's CSR range with a loop, accumulating
in registers: no atomics, no scatter, no (E, M) intermediate. The per-edge results are written at
``edge_ids[k]`` into a zero-initialised buffer (an input aliased to the output), so edges in no slot
get 0 as in the native kernels. Rows are padded to a multiple of ``block_rows`` and features to a power
of two (Triton's block sizes must be powers of two); `csr_sum` also cuts features into blocks of at
most ``block_features`` columns along a second grid axis. Accumulation is in float32 or wider.

These are forward kernels with the signatures of the native ones. `side_sum`, `edge_dot` and `sum_dot`
wrap them in the engine's kernel interface (on a plan side, and the fused backward on a plan), so a
``"pallas"`` backend needs only CSR tables (no buckets), and the engine's ops
(`jgrad.ops._kernels`: ``layout_sum``, ``layout_edge_dot``, ``layout_sum_backward``) differentiate them
as they do the native kernels, calling them on the reversed side.

Interpret mode: ``interpret=None`` (the default) picks per platform when the computation is lowered
(`jax.lax.platform_dependent`): compiled Pallas (Triton) on CUDA and ROCm, Pallas's interpreter
everywhere else. On CPU that is how the kernels are tested (slow: a reference, not a CPU backend).

What has run where: in interpret mode on CPU with jax 0.10, the values equal segment sums in float64
at 1e-12, and swapped in for the native kernels they give the engine's first and second-order gradients
(tests/ops/test_pallas.py). For GPUs the kernels follow the Triton lowering's rules (power-of-two loaded
blocks, scalar loads and stores through pointers, ``fori_loop`` with traced bounds) and ask for Triton
explicitly (``pallas_call`` lowers to Mosaic GPU by default in jax 0.10); a test lowers them for CUDA
on a CPU-only machine (Triton IR is made on the host). The same holds with jax 0.11 (tested on CPU),
which deprecates Pallas's Triton backend: lowering warns, and a later JAX will need the kernels written
for Mosaic GPU. They have NOT been compiled to PTX or run on a GPU (`experiments/gpu_check.sh` does
both), and ``block_rows``/``block_features``/``NUM_WARPS`` are not tuned.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from .._src._plan import Csr, Plan, Side


GPU_PLATFORMS = ("cuda", "rocm")
"""Platforms where the kernels are compiled; elsewhere `interpret=None` runs Pallas's interpreter."""

BLOCK_ROWS = 8
"""Output rows per program (a power of two; untuned)."""

BLOCK_FEATURES = 128
"""Widest feature block of one `csr_sum` program (a power of two; untuned)."""

NUM_WARPS = 4
"""Triton warps per program (untuned)."""


def csr_sum(csr: Csr, u: jax.Array, w: jax.Array | None, *, interpret: bool | None = None,
            block_rows: int = BLOCK_ROWS, block_features: int = BLOCK_FEATURES) -> jax.Array:
    """``out[r] = sum over slots k of row r of w[edge_ids[k]] * u[cols[k]]``; u (N, M), w (E,) or None.

    Args:
      csr: one side of a plan (row_ptr (R + 1,), cols (E,), edge_ids (E,), int32).
      u: (N, M) node data, gathered at ``cols``.
      w: (E,) edge weights indexed by edge id (cast to u's dtype), or None for weight 1.
      interpret: True for Pallas's interpreter, False for the compiled kernel, None to choose per platform.
      block_rows, block_features: rows per program and widest feature block (powers of two).

    Returns:
      (R, M) in u's dtype.
    """
    n_rows, width = csr.row_ptr.shape[0] - 1, u.shape[1]
    if min(n_rows, width, csr.cols.shape[0]) == 0:
        return jnp.zeros((n_rows, width), u.dtype)
    w = None if w is None else w.astype(u.dtype)
    run = functools.partial(_csr_sum_call, block_rows=block_rows, block_features=block_features)
    return _per_platform(run, interpret, csr, u, w)


def csr_edge_dot(csr: Csr, u: jax.Array, v: jax.Array, n_edges: int, *, interpret: bool | None = None,
                 block_rows: int = BLOCK_ROWS) -> jax.Array:
    """``out[edge_ids[k]] = <v[r], u[cols[k]]>`` for every slot k of row r; u (N, M), v (R, M).

    Args:
      csr: one side of a plan.
      u: (N, M) gathered at ``cols``; v: (R, M), one row per CSR row (cast to u's dtype).
      n_edges: E, the length of the result.
      interpret, block_rows: as in `csr_sum`.

    Returns:
      (n_edges,) in u's dtype; edges in no slot get 0.
    """
    n_rows, width = csr.row_ptr.shape[0] - 1, u.shape[1]
    if min(n_rows, width, csr.cols.shape[0], n_edges) == 0:
        return jnp.zeros((n_edges,), u.dtype)
    run = functools.partial(_csr_edge_dot_call, n_edges=n_edges, block_rows=block_rows)
    return _per_platform(run, interpret, csr, u, v.astype(u.dtype))


def csr_sum_dot(csr: Csr, g: jax.Array, u: jax.Array, w: jax.Array, *, interpret: bool | None = None,
                block_rows: int = BLOCK_ROWS) -> tuple[jax.Array, jax.Array]:
    """``(out, dots)``: ``out[r] = sum_k w[edge_ids[k]] g[cols[k]]``, ``dots[edge_ids[k]] = <u[r], g[cols[k]]>``.

    Args:
      csr: one side of a plan.
      g: (N, M) gathered at ``cols``; u: (R, M), one row per CSR row; w: (E,) (both cast to g's dtype).
      interpret, block_rows: as in `csr_sum`.

    Returns:
      (R, M) and (E,) in g's dtype; edges in no slot get a dot of 0. Each gathered row of g is read once.
    """
    n_rows, width, n_edges = csr.row_ptr.shape[0] - 1, g.shape[1], w.shape[0]
    if min(n_rows, width, csr.cols.shape[0], n_edges) == 0:
        return jnp.zeros((n_rows, width), g.dtype), jnp.zeros((n_edges,), g.dtype)
    run = functools.partial(_csr_sum_dot_call, block_rows=block_rows)
    return _per_platform(run, interpret, csr, g, u.astype(g.dtype), w.astype(g.dtype))


# --------------------------------------------------------------------------------------------------
# The engine's kernel interface: the same kernels on a plan side (`jgrad.ops._kernels`).
# --------------------------------------------------------------------------------------------------
def side_sum(side: Side, u: jax.Array, w: jax.Array | None) -> jax.Array:
    """`csr_sum` on a plan side: ``(side, u (N, M), w (E,) or None) -> (N, M)`` in u's dtype."""
    return csr_sum(side.csr, u, w)


def edge_dot(side: Side, u: jax.Array, v: jax.Array) -> jax.Array:
    """`csr_edge_dot` on a plan side: ``(side, u (N, M), v (N, M)) -> (E,)`` in their common dtype."""
    dtype = jnp.result_type(u, v)
    return csr_edge_dot(side.csr, u.astype(dtype), v.astype(dtype), side.csr.edge_ids.shape[0])


def sum_dot(plan: Plan, g: jax.Array, w: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The cotangents of a weighted sum on ``plan``, ``(A^T g, dw)`` with ``dw[e] = <g[receivers[e]],
    u[senders[e]]>``, as one `csr_sum_dot` pass over ``plan.reverse``; g, u (N, M), w (E,). Both results
    in the common dtype of g, w and u."""
    dtype = jnp.result_type(g, w, u)
    return csr_sum_dot(plan.reverse.csr, g.astype(dtype), u.astype(dtype), w.astype(dtype))


# --------------------------------------------------------------------------------------------------
# Platform choice and padding.
# --------------------------------------------------------------------------------------------------
def _per_platform(run, interpret, *args):
    """``run(*args, interpret=...)``: fixed by ``interpret``, or chosen when lowered (None)."""
    if interpret is not None:
        return run(*args, interpret=bool(interpret))
    compiled = functools.partial(run, interpret=False)
    branches = {platform: compiled for platform in GPU_PLATFORMS}
    return jax.lax.platform_dependent(*args, **branches, default=functools.partial(run, interpret=True))


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _pad_rows(x: jax.Array, rows: int) -> jax.Array:
    """``x`` with zero rows appended up to ``rows`` (and nothing else)."""
    extra = rows - x.shape[0]
    return x if extra == 0 else jnp.pad(x, ((0, extra),) + ((0, 0),) * (x.ndim - 1))


def _pad_features(x: jax.Array, width: int) -> jax.Array:
    extra = width - x.shape[1]
    return x if extra == 0 else jnp.pad(x, ((0, 0), (0, extra)))


def _padded_row_ptr(row_ptr: jax.Array, rows: int) -> jax.Array:
    """Row offsets for ``rows`` rows: the padding rows are empty (they repeat the last offset)."""
    extra = rows + 1 - row_ptr.shape[0]
    row_ptr = row_ptr.astype(jnp.int32)
    if extra == 0:
        return row_ptr
    return jnp.concatenate([row_ptr, jnp.broadcast_to(row_ptr[-1:], (extra,))])


@functools.cache
def triton_module():
    """``jax.experimental.pallas.triton``, imported on first compiled use (0.15 s); None without Triton."""
    try:
        from jax.experimental.pallas import triton
    except ImportError:  # pragma: no cover - a jaxlib without Triton: only interpret mode works
        return None
    return triton


def _compiler_params(interpret: bool):
    """Triton, named explicitly (JAX 0.10 lowers ``pallas_call`` to Mosaic GPU by default)."""
    triton = None if interpret else triton_module()
    return None if triton is None else triton.CompilerParams(num_warps=NUM_WARPS)


def _accumulator_dtype(dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def _whole() -> pl.BlockSpec:
    """The whole array as one block (gathered with scalar indices inside the kernel)."""
    return pl.BlockSpec()


def _shapes(n_rows: int, width: int, block_rows: int):
    """(padded rows, padded width, number of row blocks)."""
    if block_rows < 1 or block_rows & (block_rows - 1):
        raise ValueError(f"jgrad.ops._pallas: block_rows must be a power of two; got {block_rows}.")
    blocks = -(-n_rows // block_rows)
    return blocks * block_rows, _next_power_of_two(width), blocks


# --------------------------------------------------------------------------------------------------
# csr_sum
# --------------------------------------------------------------------------------------------------
def _csr_sum_call(csr, u, w, *, interpret, block_rows, block_features):
    n_rows, width = csr.row_ptr.shape[0] - 1, u.shape[1]
    rows, padded_width, blocks = _shapes(n_rows, width, block_rows)
    if block_features < 1 or block_features & (block_features - 1):
        raise ValueError(f"jgrad.ops._pallas: block_features must be a power of two; got {block_features}.")
    features = min(padded_width, block_features)
    weighted = w is not None
    operands = [_padded_row_ptr(csr.row_ptr, rows), csr.cols.astype(jnp.int32), csr.edge_ids.astype(jnp.int32),
                _pad_features(u, padded_width)] + ([w] if weighted else [])
    kernel = functools.partial(_sum_kernel, block_rows=block_rows, features=features, weighted=weighted,
                               acc_dtype=_accumulator_dtype(u.dtype))
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((rows, padded_width), u.dtype),
        grid=(blocks, padded_width // features),
        in_specs=[_whole() for _ in operands],
        out_specs=pl.BlockSpec(block_shape=(block_rows, features), index_map=lambda i, j: (i, j)),
        interpret=interpret,
        compiler_params=_compiler_params(interpret),
        name="jgrad_pallas_csr_sum",
    )(*operands)
    return out[:n_rows, :width]


def _sum_kernel(row_ptr_ref, cols_ref, edge_ids_ref, u_ref, *rest, block_rows, features, weighted, acc_dtype):
    w_ref, out_ref = rest if weighted else (None, rest[0])
    first_row = pl.program_id(0) * block_rows
    columns = pl.ds(pl.program_id(1) * features, features)

    def one_row(i, carry):
        r = first_row + i

        def one_slot(k, acc):
            row = u_ref[cols_ref[k], columns].astype(acc_dtype)
            if weighted:
                row = row * w_ref[edge_ids_ref[k]].astype(acc_dtype)
            return acc + row

        acc = jax.lax.fori_loop(row_ptr_ref[r], row_ptr_ref[r + 1], one_slot, jnp.zeros((features,), acc_dtype))
        out_ref[i, :] = acc.astype(out_ref.dtype)
        return carry

    jax.lax.fori_loop(0, block_rows, one_row, 0)


# --------------------------------------------------------------------------------------------------
# csr_edge_dot and csr_sum_dot
# --------------------------------------------------------------------------------------------------
def _csr_edge_dot_call(csr, u, v, *, interpret, n_edges, block_rows):
    n_rows, width = csr.row_ptr.shape[0] - 1, u.shape[1]
    rows, padded_width, blocks = _shapes(n_rows, width, block_rows)
    operands = [_padded_row_ptr(csr.row_ptr, rows), csr.cols.astype(jnp.int32), csr.edge_ids.astype(jnp.int32),
                _pad_features(u, padded_width), _pad_features(_pad_rows(v, rows), padded_width),
                jnp.zeros((n_edges,), u.dtype)]
    kernel = functools.partial(_edge_dot_kernel, block_rows=block_rows, acc_dtype=_accumulator_dtype(u.dtype))
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((n_edges,), u.dtype),
        grid=(blocks,),
        in_specs=[_whole() for _ in operands],
        out_specs=_whole(),
        input_output_aliases={len(operands) - 1: 0},  # edges in no slot keep their 0
        interpret=interpret,
        compiler_params=_compiler_params(interpret),
        name="jgrad_pallas_csr_edge_dot",
    )(*operands)


def _edge_dot_kernel(row_ptr_ref, cols_ref, edge_ids_ref, u_ref, v_ref, zeros_ref, out_ref, *, block_rows,
                     acc_dtype):
    del zeros_ref  # the same buffer as out_ref
    first_row = pl.program_id(0) * block_rows

    def one_row(i, carry):
        r = first_row + i
        own = v_ref[r, :].astype(acc_dtype)

        def one_slot(k, carry):
            dot = jnp.sum(own * u_ref[cols_ref[k], :].astype(acc_dtype))
            out_ref[edge_ids_ref[k]] = dot.astype(out_ref.dtype)
            return carry

        jax.lax.fori_loop(row_ptr_ref[r], row_ptr_ref[r + 1], one_slot, 0)
        return carry

    jax.lax.fori_loop(0, block_rows, one_row, 0)


def _csr_sum_dot_call(csr, g, u, w, *, interpret, block_rows):
    n_rows, width, n_edges = csr.row_ptr.shape[0] - 1, g.shape[1], w.shape[0]
    rows, padded_width, blocks = _shapes(n_rows, width, block_rows)
    operands = [_padded_row_ptr(csr.row_ptr, rows), csr.cols.astype(jnp.int32), csr.edge_ids.astype(jnp.int32),
                _pad_features(g, padded_width), _pad_features(_pad_rows(u, rows), padded_width), w,
                jnp.zeros((n_edges,), g.dtype)]
    kernel = functools.partial(_sum_dot_kernel, block_rows=block_rows, acc_dtype=_accumulator_dtype(g.dtype))
    out, dots = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((rows, padded_width), g.dtype), jax.ShapeDtypeStruct((n_edges,), g.dtype)),
        grid=(blocks,),
        in_specs=[_whole() for _ in operands],
        out_specs=(pl.BlockSpec(block_shape=(block_rows, padded_width), index_map=lambda i: (i, 0)), _whole()),
        input_output_aliases={len(operands) - 1: 1},  # edges in no slot keep their 0
        interpret=interpret,
        compiler_params=_compiler_params(interpret),
        name="jgrad_pallas_csr_sum_dot",
    )(*operands)
    return out[:n_rows, :width], dots


def _sum_dot_kernel(row_ptr_ref, cols_ref, edge_ids_ref, g_ref, u_ref, w_ref, zeros_ref, out_ref, dots_ref, *,
                    block_rows, acc_dtype):
    del zeros_ref  # the same buffer as dots_ref
    first_row = pl.program_id(0) * block_rows
    width = out_ref.shape[1]

    def one_row(i, carry):
        r = first_row + i
        own = u_ref[r, :].astype(acc_dtype)

        def one_slot(k, acc):
            edge = edge_ids_ref[k]
            row = g_ref[cols_ref[k], :].astype(acc_dtype)
            dots_ref[edge] = jnp.sum(own * row).astype(dots_ref.dtype)
            return acc + w_ref[edge].astype(acc_dtype) * row

        acc = jax.lax.fori_loop(row_ptr_ref[r], row_ptr_ref[r + 1], one_slot, jnp.zeros((width,), acc_dtype))
        out_ref[i, :] = acc.astype(out_ref.dtype)
        return carry

    jax.lax.fori_loop(0, block_rows, one_row, 0)
