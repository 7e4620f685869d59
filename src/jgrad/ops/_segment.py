"""Segment reductions: sum, mean, max, min, softmax, logsumexp and std over the leading axis.

Every function here reduces ``data`` of shape ``(E, ...)`` into ``num_segments`` rows according to
``segment_ids`` of shape ``(E,)``: entry ``e`` belongs to segment ``segment_ids[e]``. In message passing
``E`` is the number of edges, the segments are the receiving nodes, and ``...`` is any feature shape such
as ``(F,)`` or ``(H, F)``.

Conventions shared by every function:

- **Empty segments give 0**, for every reducer, never ``-inf`` or NaN, and their gradients are 0.
- **mask** (shape ``(E,)``, bool) removes entries: an entry with ``mask[e] == False`` contributes nothing
  and receives a zero gradient, even when its value is ``inf`` or NaN. Padded entries are removed this way.
- **Out-of-range ids** (negative, or ``>= num_segments``) are dropped, as ``jax.ops`` drops them: they
  contribute nothing. They are not reported eagerly; under `jgrad.checked` an unmasked out-of-range id
  raises (a ``checkify.debug_check``, added only while `jgrad.checked` runs), and the eager validators in
  :mod:`jgrad.graph` check graph indices.
- **Checked even while tracing**: ``data`` is real (complex input is refused with a ``TypeError``: max,
  min, softmax and std have no complex meaning), ``num_segments`` is a non-negative static int,
  ``segment_ids`` has an integer dtype and shape ``(E,)``, ``mask`` has a bool dtype and shape ``(E,)``,
  names of reducers and tie rules.
- **NaN propagates**: a NaN entry makes its segment's output NaN (every entry of its segment for
  softmax), and so are the gradients through that segment. Other segments are unaffected in value; the
  gradients of the NaN segment's entries are NaN whenever the output is differentiated (``0 * NaN``, as
  for any JAX elementwise op).
- **Transforms**: all functions are pure and undecorated. Under ``jax.jit``, ``num_segments`` and the
  keyword options must be static; ``data``, ``segment_ids`` and ``mask`` may be traced. Any array
  argument may be ``jax.vmap``-ped. Gradients flow to ``data`` only, in reverse mode to any order and in
  forward mode (nothing here uses ``custom_vjp``).

The numerically delicate reductions (max, min, softmax, logsumexp, std) use the "double where": values
that would be undefined (the max of an empty segment, the square root of a zero variance) are replaced
by harmless ones before the undefined operation and masked again after it, so neither the value nor the
gradient can become NaN.
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jgrad._src._checks import index_range_check, is_concrete
from jgrad._src._limits import MAX_SIZE
from jgrad._src._types import REDUCERS, TIE_RULES, Array, ArrayLike, Reducer, TieRule, accumulation_dtype, check_choice

__all__ = [
    "segment_logsumexp",
    "segment_max",
    "segment_mean",
    "segment_min",
    "segment_reduce",
    "segment_softmax",
    "segment_std",
    "segment_sum",
]


def _accumulated(reduction):
    """``reduction`` run in float32 on bfloat16 / float16 data (`accumulation_dtype`: their running sums
    stall), its result cast back to the data's dtype; other data passes through."""

    @functools.wraps(reduction)
    def run(data, *args, **kwargs):
        dtype = getattr(data, "dtype", None)
        if dtype is None or accumulation_dtype(dtype) == dtype:
            return reduction(data, *args, **kwargs)
        return reduction(data.astype(accumulation_dtype(dtype)), *args, **kwargs).astype(dtype)

    return run


def segment_sum(
    data: ArrayLike,
    segment_ids: ArrayLike,
    num_segments: int,
    *,
    mask: ArrayLike | None = None,
    indices_are_sorted: bool = False,
) -> Array:
    """Sums the entries of each segment.

    Semantics: ``out[segment_ids[e]] += data[e]`` for every entry ``e`` with ``mask[e]``.

    Args:
      data: values to reduce, shape ``(E, ...)``, any numeric dtype.
      segment_ids: segment of each entry, shape ``(E,)``, integer dtype. Out-of-range ids are dropped.
      num_segments: number of output rows ``S``; a static, non-negative Python int.
      mask: optional, shape ``(E,)``, bool. Entries with ``mask[e] == False`` contribute nothing.
      indices_are_sorted: promise that ``segment_ids`` is sorted ascending; a speed hint only, and the
        result is undefined if the promise is false.

    Returns:
      Shape ``(S, ...)``, dtype of ``data``. An empty segment gives 0.

    Raises:
      TypeError: complex ``data``, ``segment_ids`` that is not integer, ``mask`` that is not bool, or a
        ``num_segments`` that is not an int.
      ValueError: mismatched leading dimensions, or a negative ``num_segments``.

    Example:
      >>> import jax.numpy as jnp
      >>> data = jnp.array([1.0, 2.0, 4.0])
      >>> print(segment_sum(data, jnp.array([0, 0, 2]), 3))
      [3. 0. 4.]
    """
    data, segment_ids, mask = _check_inputs("segment_sum", data, segment_ids, num_segments, mask)
    ids = _scatter_ids(segment_ids, num_segments, mask)
    return _sum(_zero_masked(data, mask), ids, num_segments, indices_are_sorted, mask is not None)


@_accumulated
def segment_mean(
    data: ArrayLike,
    segment_ids: ArrayLike,
    num_segments: int,
    *,
    mask: ArrayLike | None = None,
    indices_are_sorted: bool = False,
) -> Array:
    """Averages the entries of each segment.

    Semantics: ``out[s] = sum(data[e] for e in segment s if mask[e]) / max(count[s], 1)``.

    Args:
      data: values to reduce, shape ``(E, ...)``. Integer data is promoted to the default float dtype.
      segment_ids: segment of each entry, shape ``(E,)``, integer dtype. Out-of-range ids are dropped.
      num_segments: number of output rows ``S``; a static, non-negative Python int.
      mask: optional, shape ``(E,)``, bool. Masked entries neither contribute nor count.
      indices_are_sorted: promise that ``segment_ids`` is sorted ascending (speed hint only).

    Returns:
      Shape ``(S, ...)``, floating dtype. An empty segment gives 0 with zero gradient.

    Raises:
      TypeError: see :func:`segment_sum`.
      ValueError: see :func:`segment_sum`.

    Example:
      >>> import jax.numpy as jnp
      >>> data = jnp.array([1.0, 2.0, 4.0])
      >>> print(segment_mean(data, jnp.array([0, 0, 2]), 3))
      [1.5 0.  4. ]
    """
    data, segment_ids, mask = _check_inputs("segment_mean", data, segment_ids, num_segments, mask)
    data = _as_float(data)
    ids = _scatter_ids(segment_ids, num_segments, mask)
    total = _sum(_zero_masked(data, mask), ids, num_segments, indices_are_sorted, mask is not None)
    count = _count(data, segment_ids, num_segments, mask, indices_are_sorted)
    return total / jnp.maximum(count, 1)


def segment_max(
    data: ArrayLike,
    segment_ids: ArrayLike,
    num_segments: int,
    *,
    mask: ArrayLike | None = None,
    tie: TieRule = "split",
    indices_are_sorted: bool = False,
) -> Array:
    """Takes the elementwise maximum of the entries of each segment.

    Semantics: ``out[s] = max(data[e] for e in segment s if mask[e])``, or 0 if there is no such ``e``.

    The gradient of ``out[s]`` goes to the entries attaining the maximum, separately for each element of
    the trailing shape. At ties, ``tie`` decides how it is shared:

    - ``"split"``: divided equally among all tied entries (JAX's rule): two tied entries get 1/2 each.
    - ``"first"``: all of it to the tied entry with the lowest index ``e`` (PyTorch-scatter's rule).

    Internally ``out = segment_sum(data * weight)`` where ``weight`` (the selection above) is a constant,
    so the output is linear in ``data`` around any point: second and higher derivatives are 0 and forward
    mode works.

    Args:
      data: values to reduce, shape ``(E, ...)``. Integer data is reduced directly (no gradient).
      segment_ids: segment of each entry, shape ``(E,)``, integer dtype. Out-of-range ids are dropped.
      num_segments: number of output rows ``S``; a static, non-negative Python int.
      mask: optional, shape ``(E,)``, bool. Masked entries never attain the maximum.
      tie: ``"split"`` or ``"first"``; how the gradient is shared between tied entries.
      indices_are_sorted: promise that ``segment_ids`` is sorted ascending (speed hint only).

    Returns:
      Shape ``(S, ...)``, dtype of ``data``. An empty (or fully masked) segment gives 0, not ``-inf``,
      with zero gradient. A NaN in a segment makes its output NaN.

    Raises:
      TypeError: see :func:`segment_sum`.
      ValueError: see :func:`segment_sum`, or an unknown ``tie``.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> data, ids = jnp.array([1.0, 3.0, 3.0]), jnp.array([0, 0, 0])
      >>> print(segment_max(data, ids, 2))
      [3. 0.]
      >>> print(jax.grad(lambda x: segment_max(x, ids, 2).sum())(data))
      [0.  0.5 0.5]
      >>> print(jax.grad(lambda x: segment_max(x, ids, 2, tie="first").sum())(data))
      [0. 1. 0.]
    """
    return _extremum("segment_max", data, segment_ids, num_segments, mask, tie, indices_are_sorted)


def segment_min(
    data: ArrayLike,
    segment_ids: ArrayLike,
    num_segments: int,
    *,
    mask: ArrayLike | None = None,
    tie: TieRule = "split",
    indices_are_sorted: bool = False,
) -> Array:
    """Takes the elementwise minimum of the entries of each segment.

    Semantics: ``out[s] = min(data[e] for e in segment s if mask[e])``, or 0 if there is no such ``e``.

    Gradients, ties (``"split"`` or ``"first"``), masks and transforms behave exactly as in
    :func:`segment_max`.

    Args:
      data: values to reduce, shape ``(E, ...)``. Integer data is reduced directly (no gradient).
      segment_ids: segment of each entry, shape ``(E,)``, integer dtype. Out-of-range ids are dropped.
      num_segments: number of output rows ``S``; a static, non-negative Python int.
      mask: optional, shape ``(E,)``, bool. Masked entries never attain the minimum.
      tie: ``"split"`` or ``"first"``; how the gradient is shared between tied entries.
      indices_are_sorted: promise that ``segment_ids`` is sorted ascending (speed hint only).

    Returns:
      Shape ``(S, ...)``, dtype of ``data``. An empty (or fully masked) segment gives 0, not ``+inf``,
      with zero gradient. A NaN in a segment makes its output NaN.

    Raises:
      TypeError: see :func:`segment_sum`.
      ValueError: see :func:`segment_sum`, or an unknown ``tie``.

    Example:
      >>> import jax.numpy as jnp
      >>> data = jnp.array([[1.0, 5.0], [2.0, -1.0], [7.0, 7.0]])
      >>> print(segment_min(data, jnp.array([0, 0, 2]), 3))
      [[ 1. -1.]
       [ 0.  0.]
       [ 7.  7.]]
    """
    return _extremum("segment_min", data, segment_ids, num_segments, mask, tie, indices_are_sorted)


@_accumulated
def segment_logsumexp(
    data: ArrayLike,
    segment_ids: ArrayLike,
    num_segments: int,
    *,
    mask: ArrayLike | None = None,
    indices_are_sorted: bool = False,
) -> Array:
    """Computes ``log(sum(exp(data)))`` within each segment, stably.

    Semantics: ``out[s] = m[s] + log(sum(exp(data[e] - m[s]) for e in segment s if mask[e]))``, where
    ``m[s]`` is the segment maximum (held constant under differentiation, which is exact because the
    expression does not depend on it); 0 if the segment is empty.

    Subtracting ``m[s]`` keeps every exponent at or below 0, so logits of magnitude ``1e4`` and more give
    finite values and gradients in float32. The gradient with respect to ``data[e]`` is
    ``segment_softmax(data)[e]``.

    Args:
      data: logits, shape ``(E, ...)``. Integer data is promoted to the default float dtype.
      segment_ids: segment of each entry, shape ``(E,)``, integer dtype. Out-of-range ids are dropped.
      num_segments: number of output rows ``S``; a static, non-negative Python int.
      mask: optional, shape ``(E,)``, bool. Masked entries are left out of the sum.
      indices_are_sorted: promise that ``segment_ids`` is sorted ascending (speed hint only).

    Returns:
      Shape ``(S, ...)``, floating dtype. An empty (or fully masked) segment gives 0, not ``-inf``, with
      zero gradient; a segment whose entries are all ``-inf`` gives ``-inf`` with zero gradient. A NaN
      in a segment makes its output and gradient NaN.

    Raises:
      TypeError: see :func:`segment_sum`.
      ValueError: see :func:`segment_sum`.

    Example:
      >>> import jax.numpy as jnp
      >>> data = jnp.array([100.0, 100.0, -3.0])  # exp(100.0) overflows float32
      >>> print(segment_logsumexp(data, jnp.array([0, 0, 2]), 3).round(4))
      [100.6931   0.      -3.    ]
    """
    data, segment_ids, mask = _check_inputs("segment_logsumexp", data, segment_ids, num_segments, mask)
    data = _as_float(data)
    shifted, shift, nonempty, routed = _shift_by_max(data, segment_ids, num_segments, mask)
    valid = _entry_mask(data, routed, num_segments)
    exps = jnp.where(valid, jnp.exp(shifted), 0)
    total = _sum(exps, routed, num_segments, indices_are_sorted and mask is None, mask is not None)
    # total is 0 only when every logit of the segment is -inf; a NaN total is kept, so NaN propagates.
    positive = nonempty & (total != 0)
    safe_total = jnp.where(positive, total, 1)
    value = jnp.where(positive, jnp.log(safe_total) + shift, -jnp.inf)
    return jnp.where(nonempty, value, 0)


@_accumulated
def segment_softmax(
    logits: ArrayLike,
    segment_ids: ArrayLike,
    num_segments: int,
    *,
    mask: ArrayLike | None = None,
    indices_are_sorted: bool = False,
) -> Array:
    """Applies a softmax over the entries of each segment.

    Semantics: ``out[e] = exp(logits[e]) / sum(exp(logits[f]) for f in segment segment_ids[e] if mask[f])``
    for every entry ``e`` with ``mask[e]``; ``out[e] = 0`` otherwise.

    The segment maximum is subtracted first (held constant under differentiation, which is exact because
    the softmax does not depend on it), so logits of magnitude ``1e4`` and more give finite values and
    gradients in float32. An entry alone in its segment gets 1. In message passing this is attention
    normalised over each receiver's incoming edges.

    Args:
      logits: scores, shape ``(E, ...)``; each trailing element (e.g. each head) is normalised separately.
        Integer data is promoted to the default float dtype.
      segment_ids: segment of each entry, shape ``(E,)``, integer dtype.
      num_segments: number of segments ``S``; a static, non-negative Python int.
      mask: optional, shape ``(E,)``, bool. Masked entries get 0 and zero gradient, and do not enter
        the normalisation of their segment.
      indices_are_sorted: promise that ``segment_ids`` is sorted ascending (speed hint only).

    Returns:
      Shape ``(E, ...)`` like ``logits``, floating dtype. Entries with out-of-range ids get 0, like masked
      ones. Over each non-empty segment the outputs sum to 1, except that a segment whose logits are all
      ``-inf`` (a masking idiom) gets 0 with zero gradient; a ``+inf`` or NaN logit makes every output
      and gradient of its segment NaN.

    Raises:
      TypeError: see :func:`segment_sum`.
      ValueError: see :func:`segment_sum`.

    Example:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([0.0, 0.0, 5.0, 1e4])
      >>> print(segment_softmax(logits, jnp.array([0, 0, 1, 2]), 3))
      [0.5 0.5 1.  1. ]
    """
    logits, segment_ids, mask = _check_inputs("segment_softmax", logits, segment_ids, num_segments, mask)
    logits = _as_float(logits)
    shifted, _, _, routed = _shift_by_max(logits, segment_ids, num_segments, mask)
    valid = _entry_mask(logits, routed, num_segments)
    exps = jnp.where(valid, jnp.exp(shifted), 0)
    sorted_hint = indices_are_sorted and mask is None
    total = _gather(_sum(exps, routed, num_segments, sorted_hint, mask is not None), routed)
    # A finite segment maximum contributes exp(0) = 1, so total >= 1; total is 0 only when every logit
    # of the segment is -inf, and that segment gets 0 (double where: no NaN in value or gradient). A NaN
    # total (a NaN logit in the segment) is not 0, so the NaN reaches every entry of its segment.
    live = valid & (total != 0)
    return jnp.where(live, exps / jnp.where(live, total, 1), 0)


@_accumulated
def segment_std(
    data: ArrayLike,
    segment_ids: ArrayLike,
    num_segments: int,
    *,
    mask: ArrayLike | None = None,
    ddof: int = 0,
    eps: float = 0.0,
    indices_are_sorted: bool = False,
) -> Array:
    """Computes the standard deviation of the entries of each segment.

    Semantics: ``out[s] = sqrt(sum((data[e] - mean[s])**2 for e in segment s if mask[e]) / (count[s] - ddof)
    + eps)`` if ``count[s] > ddof``, else 0. With the default ``ddof=0`` this is the population standard
    deviation.

    The square root is made safe with the double where: where the variance plus ``eps`` is exactly 0 (all
    entries of a segment equal, ``eps=0``) the output is 0 and its gradient is 0 rather than ``inf`` or
    NaN. Elsewhere the gradient is the usual one, to any order.

    Args:
      data: values, shape ``(E, ...)``; each trailing element is reduced separately. Integer data is
        promoted to the default float dtype.
      segment_ids: segment of each entry, shape ``(E,)``, integer dtype. Out-of-range ids are dropped.
      num_segments: number of output rows ``S``; a static, non-negative Python int.
      mask: optional, shape ``(E,)``, bool. Masked entries neither contribute nor count.
      ddof: delta degrees of freedom, a static non-negative int; the divisor is ``count[s] - ddof``.
      eps: a static non-negative float added to the variance before the square root.
      indices_are_sorted: promise that ``segment_ids`` is sorted ascending (speed hint only).

    Returns:
      Shape ``(S, ...)``, floating dtype. A segment with at most ``ddof`` entries (in particular an
      empty one) gives 0 with zero gradient. A NaN or infinite entry makes its segment's output and
      gradient NaN.

    Raises:
      TypeError: see :func:`segment_sum`, or a non-int ``ddof``.
      ValueError: see :func:`segment_sum`, or a negative ``ddof`` or ``eps``.

    Example:
      >>> import jax.numpy as jnp
      >>> data = jnp.array([1.0, 3.0, 5.0, 5.0])
      >>> print(segment_std(data, jnp.array([0, 0, 2, 2]), 3))
      [1. 0. 0.]
    """
    where = "segment_std"
    data, segment_ids, mask = _check_inputs(where, data, segment_ids, num_segments, mask)
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)):
        raise TypeError(f"{where}: ddof must be a Python int; got {ddof!r}, expected a non-negative int.")
    if ddof < 0:
        raise ValueError(f"{where}: ddof is negative; got {ddof}, expected ddof >= 0.")
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: eps must be a Python float; got {eps!r}, expected a non-negative float.")
    if not eps >= 0:
        raise ValueError(f"{where}: eps is negative or NaN; got {eps!r}, expected eps >= 0.")
    data = _as_float(data)
    data = _zero_masked(data, mask)
    count = _count(data, segment_ids, num_segments, mask, indices_are_sorted)
    routed = _route(segment_ids, num_segments, mask)
    sorted_hint, bucket = indices_are_sorted and mask is None, mask is not None
    mean = _sum(data, routed, num_segments, sorted_hint, bucket) / jnp.maximum(count, 1)
    valid = _entry_mask(data, routed, num_segments)
    deviation = jnp.where(valid, data - _gather(mean, routed), 0)
    squares = _sum(deviation * deviation, routed, num_segments, sorted_hint, bucket)
    divisor = count - ddof
    defined = divisor > 0
    variance = squares / jnp.where(defined, divisor, 1) + eps
    positive = defined & (variance != 0)  # variance >= 0; NaN is kept so that it propagates
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, variance, 1)), 0)


def segment_reduce(
    data: ArrayLike,
    segment_ids: ArrayLike,
    num_segments: int,
    reducer: Reducer,
    *,
    mask: ArrayLike | None = None,
    tie: TieRule = "split",
    indices_are_sorted: bool = False,
) -> Array:
    """Reduces each segment with the reducer named by ``reducer``.

    Semantics: ``segment_<reducer>(data, segment_ids, num_segments, mask=mask, ...)``.

    Args:
      data: values to reduce, shape ``(E, ...)``.
      segment_ids: segment of each entry, shape ``(E,)``, integer dtype.
      num_segments: number of output rows ``S``; a static, non-negative Python int.
      reducer: one of ``"sum"``, ``"mean"``, ``"max"``, ``"min"``; static under ``jax.jit``.
      mask: optional, shape ``(E,)``, bool. Masked entries contribute nothing.
      tie: gradient rule at ties for ``"max"`` and ``"min"`` (see :func:`segment_max`); validated but
        unused for the other reducers.
      indices_are_sorted: promise that ``segment_ids`` is sorted ascending (speed hint only).

    Returns:
      Shape ``(S, ...)``. An empty segment gives 0 for every reducer.

    Raises:
      TypeError: see :func:`segment_sum`.
      ValueError: see :func:`segment_sum`, or an unknown ``reducer`` or ``tie``.

    Example:
      >>> import jax.numpy as jnp
      >>> data, ids = jnp.array([1.0, 2.0, 4.0]), jnp.array([0, 0, 2])
      >>> print(segment_reduce(data, ids, 3, "max"))
      [2. 0. 4.]
    """
    check_choice("segment_reduce", "reducer", reducer, REDUCERS)
    check_choice("segment_reduce", "tie", tie, TIE_RULES)
    options = dict(mask=mask, indices_are_sorted=indices_are_sorted)
    if reducer == "sum":
        return segment_sum(data, segment_ids, num_segments, **options)
    if reducer == "mean":
        return segment_mean(data, segment_ids, num_segments, **options)
    if reducer == "max":
        return segment_max(data, segment_ids, num_segments, tie=tie, **options)
    return segment_min(data, segment_ids, num_segments, tie=tie, **options)


# --- validation -----------------------------------------------------------------------------------------



def _check_inputs(
    where: str,
    data: ArrayLike,
    segment_ids: ArrayLike,
    num_segments: int,
    mask: ArrayLike | None,
) -> tuple[Array, Array, Array | None]:
    """Checks everything knowable at trace time and returns ``data``, ``segment_ids`` and ``mask`` as arrays.

    All type problems are reported together as one ``TypeError``; then all shape and value problems as
    one ``ValueError``.
    """
    _check_num_segments(where, num_segments)
    data = jnp.asarray(data)
    segment_ids = jnp.asarray(segment_ids)
    mask = None if mask is None else jnp.asarray(mask)

    type_problems = []
    if jnp.issubdtype(data.dtype, jnp.complexfloating):
        type_problems.append(
            f"data must be real; got dtype {data.dtype}, expected a real float, integer or bool dtype. "
            "Hint: reduce data.real and data.imag separately."
        )
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        type_problems.append(
            f"segment_ids must have an integer dtype; got {segment_ids.dtype}, expected int32 or int64."
        )
    if mask is not None and mask.dtype != jnp.bool_:
        type_problems.append(
            f"mask must have dtype bool; got {mask.dtype}, expected bool. Hint: use `mask.astype(bool)`."
        )
    if type_problems:
        raise TypeError(_join(where, type_problems))

    value_problems = []
    if data.ndim < 1:
        value_problems.append("data must have a leading entry axis; got a scalar, expected shape (E, ...).")
    if segment_ids.ndim != 1:
        value_problems.append(f"segment_ids must be 1-D; got shape {segment_ids.shape}, expected (E,).")
    elif data.ndim >= 1 and data.shape[0] != segment_ids.shape[0]:
        value_problems.append(
            f"data and segment_ids disagree on the number of entries E; got data of shape {data.shape} and "
            f"segment_ids of shape {segment_ids.shape}, expected data.shape[0] == segment_ids.shape[0]."
        )
    if mask is not None and segment_ids.ndim == 1 and mask.shape != segment_ids.shape:
        value_problems.append(
            f"mask must have one flag per entry; got shape {mask.shape}, expected {segment_ids.shape}."
        )
    if value_problems:
        raise ValueError(_join(where, value_problems))
    if not is_concrete(data, segment_ids, mask):  # reported under jgrad.checked only (a debug check)
        index_range_check(where, "segment_ids", segment_ids, num_segments, "num_segments", live=mask)
    return data, segment_ids, mask


def _check_num_segments(where: str, num_segments: int) -> None:
    if isinstance(num_segments, bool) or not isinstance(num_segments, (int, np.integer)):
        hint = ""
        if isinstance(num_segments, jax.Array):
            hint = (
                " Hint: num_segments fixes the output shape, so it cannot be a traced array; pass a Python"
                " int, e.g. via `static_argnames` under jax.jit."
            )
        raise TypeError(
            f"{where}: num_segments must be a Python int; got {num_segments!r} of type "
            f"{type(num_segments).__name__}, expected a non-negative int.{hint}"
        )
    if operator.index(num_segments) < 0:
        raise ValueError(f"{where}: num_segments is negative; got {num_segments}, expected num_segments >= 0.")
    if operator.index(num_segments) > MAX_SIZE:
        raise ValueError(f"{where}: num_segments is too large for int32 indexing; got {num_segments}, expected "
                         f"num_segments <= 2**31 - 1 = {MAX_SIZE}.")


def _join(where: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{where}: {problems[0]}"
    return f"{where}: {len(problems)} problems:\n" + "\n".join(f"  - {problem}" for problem in problems)


# --- shared kernels -------------------------------------------------------------------------------------


def _extremum(
    where: str,
    data: ArrayLike,
    segment_ids: ArrayLike,
    num_segments: int,
    mask: ArrayLike | None,
    tie: TieRule,
    indices_are_sorted: bool,
) -> Array:
    """The shared body of :func:`segment_max` (``where == "segment_max"``) and :func:`segment_min`."""
    check_choice(where, "tie", tie, TIE_RULES)
    data, segment_ids, mask = _check_inputs(where, data, segment_ids, num_segments, mask)
    reduce = jax.ops.segment_max if where == "segment_max" else jax.ops.segment_min
    routed = _route(segment_ids, num_segments, mask)
    sorted_hint, bucket = indices_are_sorted and mask is None, mask is not None
    nonempty = _count(data, segment_ids, num_segments, mask, indices_are_sorted) > 0
    if not jnp.issubdtype(data.dtype, jnp.inexact):
        extremum = _reduce(reduce, data, routed, num_segments, sorted_hint, bucket)
        return jnp.where(nonempty, extremum, jnp.zeros((), data.dtype))

    # The extremum itself is a constant; gradients reach data through the linear selection below.
    extremum = _reduce(reduce, lax.stop_gradient(data), routed, num_segments, sorted_hint, bucket)
    extremum = jnp.where(nonempty, extremum, 0)
    target = _gather(extremum, routed)
    valid = _entry_mask(data, routed, num_segments)
    is_nan = jnp.isnan(data) & jnp.isnan(target)
    hit = valid & ((lax.stop_gradient(data) == target) | is_nan)
    if tie == "split":
        ties = _sum(hit.astype(data.dtype), routed, num_segments, sorted_hint, bucket)
        weight = jnp.where(hit, 1 / jnp.maximum(_gather(ties, routed), 1), 0)
        selected = hit
    else:
        entries = data.shape[0]
        position = lax.broadcasted_iota(jnp.int32, data.shape, 0)
        first = _reduce(
            jax.ops.segment_min, jnp.where(hit, position, entries), routed, num_segments, sorted_hint, bucket
        )
        selected = hit & (position == _gather(first, routed))
        weight = selected.astype(data.dtype)
    contribution = jnp.where(selected, data, 0) * lax.stop_gradient(weight)
    linear = _sum(contribution, routed, num_segments, sorted_hint, bucket)
    # The value is the exact extremum (a tie-weighted sum can be one rounding off it); the linear term
    # contributes zero to the value and carries the gradient (double where keeps inf data finite).
    carrier = jnp.where(jnp.isfinite(linear), linear - lax.stop_gradient(linear), 0)
    return extremum.astype(linear.dtype) + carrier


def _shift_by_max(
    data: Array, segment_ids: Array, num_segments: int, mask: Array | None
) -> tuple[Array, Array, Array, Array]:
    """Subtracts each segment's (constant) maximum from its entries, for a stable exp.

    Returns ``(shifted, shift, nonempty, routed)``: ``shifted`` has shape ``(E, ...)`` with values <= 0 on
    valid entries and 0 elsewhere; ``shift`` has shape ``(S, ...)`` and is 0 for empty segments or infinite
    maxima; ``nonempty`` has shape ``(S, 1, ...)``; ``routed`` are the routed ids (see :func:`_route`).
    """
    routed = _route(segment_ids, num_segments, mask)
    maximum = _reduce(jax.ops.segment_max, lax.stop_gradient(data), routed, num_segments, False, mask is not None)
    shift = jnp.where(jnp.isfinite(maximum), maximum, 0)
    valid = _entry_mask(data, routed, num_segments)
    shifted = jnp.where(valid, data - _gather(shift, routed), 0)
    nonempty = _count(data, segment_ids, num_segments, mask, False) > 0
    return shifted, shift, nonempty, routed


def _route(segment_ids: Array, num_segments: int, mask: Array | None) -> Array:
    """Sends masked and out-of-range entries to the drop bucket ``num_segments``, so every id is in ``[0, S]``.

    The drop bucket is outside ``[0, S)``: :func:`_gather` reads 0 for it, and scatters of routed ids pass
    ``bucket=True`` when a mask is given (see :func:`_reduce`).
    """
    in_range = (segment_ids >= 0) & (segment_ids < num_segments)
    keep = in_range if mask is None else in_range & mask
    return jnp.where(keep, segment_ids, num_segments)


def _entry_mask(data: Array, routed: Array, num_segments: int) -> Array:
    """Which entries are kept, shape ``(E, 1, ...)`` so that it broadcasts against ``data`` of rank ``ndim``."""
    return _expand(routed < num_segments, data.ndim)


def _gather(per_segment: Array, routed: Array) -> Array:
    """``per_segment[routed[e]]`` for each entry, reading 0 for the drop bucket ``S``; shape ``(E, ...)``."""
    padding = jnp.zeros((1, *per_segment.shape[1:]), per_segment.dtype)
    return jnp.concatenate([per_segment, padding], axis=0)[routed]


def _scatter_ids(segment_ids: Array, num_segments: int, mask: Array | None) -> Array:
    """The ids to scatter with: ``segment_ids`` itself without a mask, else the routed ids."""
    return segment_ids if mask is None else _route(segment_ids, num_segments, mask)


def _reduce(reduce, data: Array, ids: Array, num_segments: int, indices_are_sorted: bool, bucket: bool) -> Array:
    """``reduce`` (a ``jax.ops.segment_*``) into S rows; ``bucket`` adds the drop bucket S and slices it off.

    Masked entries are routed into that extra row instead of being scattered out of bounds, so a masked
    call performs no out-of-bounds scatter and checkify's index checks (`jgrad.checked`) stay silent on
    it. Without a mask no bucket is needed (ids are in range unless the caller passed bad ones), which
    keeps the common path free of the extra row.
    """
    if not bucket:
        return reduce(data, ids, num_segments, indices_are_sorted=indices_are_sorted)
    return reduce(data, ids, num_segments + 1, indices_are_sorted=indices_are_sorted)[:num_segments]


def _sum(data: Array, ids: Array, num_segments: int, indices_are_sorted: bool, bucket: bool = False) -> Array:
    """The segment sum, accumulated in float32 for bfloat16 / float16 data (`accumulation_dtype`) and
    returned in data's dtype."""
    wide = accumulation_dtype(data.dtype)
    total = _reduce(jax.ops.segment_sum, data.astype(wide), ids, num_segments, indices_are_sorted, bucket)
    return total.astype(data.dtype)


def _count(
    data: Array, segment_ids: Array, num_segments: int, mask: Array | None, indices_are_sorted: bool
) -> Array:
    """Number of kept entries per segment, shape ``(S, 1, ...)`` (rank of ``data``), dtype of ``data``."""
    dtype = data.dtype if jnp.issubdtype(data.dtype, jnp.inexact) else jnp.int32
    if mask is None:
        count = _sum(jnp.ones(segment_ids.shape, dtype), segment_ids, num_segments, indices_are_sorted)
    else:
        routed = _route(segment_ids, num_segments, mask)
        count = _sum(mask.astype(dtype), routed, num_segments, False, True)
    return _expand(count, data.ndim)


def _zero_masked(data: Array, mask: Array | None) -> Array:
    if mask is None:
        return data
    return jnp.where(_expand(mask, data.ndim), data, jnp.zeros((), data.dtype))


def _expand(vector: Array, ndim: int) -> Array:
    """Appends singleton axes to a ``(K,)`` vector so that it has rank ``ndim`` (at least 1)."""
    return vector.reshape(vector.shape + (1,) * max(ndim - 1, 0))


def _as_float(data: Array) -> Array:
    if jnp.issubdtype(data.dtype, jnp.inexact):
        return data
    return data.astype(jnp.result_type(float))
