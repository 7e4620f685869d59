"""Tests for the segment reductions: jgrad.ops.segment_*."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jgrad.ops import (
    segment_logsumexp,
    segment_max,
    segment_mean,
    segment_min,
    segment_reduce,
    segment_softmax,
    segment_std,
    segment_sum,
)

REDUCTIONS = {
    "sum": segment_sum,
    "mean": segment_mean,
    "max": segment_max,
    "min": segment_min,
    "logsumexp": segment_logsumexp,
    "std": segment_std,
}
ALL_OPS = {**REDUCTIONS, "softmax": segment_softmax}
TRAILING_SHAPES = {"E": (), "E,F": (3,), "E,H,F": (2, 3)}

# Segment 1 and 4 are empty, segment 2 has a single entry; segment 0 and 3 have several.
IDS = np.array([0, 3, 0, 2, 3, 0, 3], dtype=np.int32)
NUM_SEGMENTS = 5
CASES = {
    "empty_and_single_entry_segments": IDS,
    "zero_entries": np.zeros((0,), np.int32),
}


# --- NumPy reference ------------------------------------------------------------------------------------


def _reference(name, data, ids, num_segments, mask=None):
    data = np.asarray(data, np.float64)
    mask = np.ones(ids.shape, bool) if mask is None else np.asarray(mask)
    if name == "softmax":
        out = np.zeros_like(data)
        for segment in range(num_segments):
            rows = (ids == segment) & mask
            if rows.any():
                exps = np.exp(data[rows] - data[rows].max(axis=0))
                out[rows] = exps / exps.sum(axis=0)
        return out
    out = np.zeros((num_segments, *data.shape[1:]))
    for segment in range(num_segments):
        values = data[(ids == segment) & mask]
        if len(values) == 0:
            continue
        if name == "sum":
            out[segment] = values.sum(axis=0)
        elif name == "mean":
            out[segment] = values.mean(axis=0)
        elif name == "max":
            out[segment] = values.max(axis=0)
        elif name == "min":
            out[segment] = values.min(axis=0)
        elif name == "logsumexp":
            top = values.max(axis=0)
            out[segment] = top + np.log(np.exp(values - top).sum(axis=0))
        elif name == "std":
            out[segment] = values.std(axis=0)
    return out


def _jit(fn, *args, **options):
    """``fn(*args, **options)`` as one compiled program, the trailing int arguments (``num_segments``)
    static: a handful of eager ops costs more to compile op by op than one program."""
    static = tuple(k for k, a in enumerate(args) if isinstance(a, int))
    return jax.jit(lambda *args: fn(*args, **options), static_argnums=static)(*args)


def _each_case(cases, check):
    """Runs ``check(case)`` for every case and fails once at the end, naming every failing case."""
    failing = []
    for case in cases:
        try:
            check(case)
        except AssertionError as error:
            failing.append(f"{case}: {str(error).strip()}")
    assert not failing, f"{len(failing)} failing cases:\n" + "\n".join(failing)


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _every_op(data, ids, num_segments, **options):
    """All seven ops on the same input, as a dict; one jit of this compiles once instead of seven times."""
    return {name: op(data, ids, num_segments, **options) for name, op in ALL_OPS.items()}


def _assert_every_op_matches_reference(outs, data, ids, num_segments, mask=None):
    for name, out in outs.items():
        expected = _reference(name, np.asarray(data), np.asarray(ids), num_segments, mask=mask)
        assert out.shape == expected.shape, name
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6, err_msg=f"segment_{name}")


# --- values ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("trailing", TRAILING_SHAPES.values(), ids=TRAILING_SHAPES.keys())
def test_every_segment_op_matches_numpy_reference(trailing, case):
    ids = CASES[case]
    data = _random((ids.shape[0], *trailing))
    outs = jax.jit(_every_op, static_argnums=2)(jnp.asarray(data), jnp.asarray(ids), NUM_SEGMENTS)
    _assert_every_op_matches_reference(outs, data, ids, NUM_SEGMENTS)


def test_segment_reduction_of_empty_segment_is_zero():
    data = jnp.array([-2.0, -5.0, 3.0])
    outs = _jit(lambda *args: {name: op(*args) for name, op in REDUCTIONS.items()}, data, jnp.array([0, 0, 2]), 4)

    def check(name):
        assert outs[name][1] == 0.0 and outs[name][3] == 0.0, outs[name]

    _each_case(REDUCTIONS, check)


def test_segment_max_of_empty_segment_is_zero():
    out = _jit(segment_max, jnp.array([-2.0, -5.0]), jnp.array([0, 0]), 2)
    np.testing.assert_array_equal(out, [-2.0, 0.0])


def test_every_segment_op_with_zero_segments_has_empty_output():
    outs = jax.jit(_every_op, static_argnums=2)(jnp.ones((3, 2)), jnp.array([0, 1, 0]), 0)
    for name, out in outs.items():
        assert out.shape == ((3, 2) if name == "softmax" else (0, 2)), name
    np.testing.assert_array_equal(outs["softmax"], 0.0)


def test_every_segment_op_drops_out_of_range_ids():
    data = _random((5, 2), seed=1)
    ids = np.array([0, -1, 1, 3, 1], np.int32)
    outs = jax.jit(_every_op, static_argnums=2)(jnp.asarray(data), jnp.asarray(ids), 3)
    _assert_every_op_matches_reference(outs, data, ids, 3, mask=(ids >= 0) & (ids < 3))


def test_segment_softmax_sums_to_one_per_segment_and_per_head():
    ids = jnp.asarray(IDS)
    out, totals = _jit(lambda x, ids, n: (segment_softmax(x, ids, n), segment_sum(segment_softmax(x, ids, n), ids, n)),
                       jnp.asarray(_random((7, 2, 3))), ids, NUM_SEGMENTS)
    np.testing.assert_allclose(totals, _reference("max", np.ones((7, 2, 3)), IDS, NUM_SEGMENTS), rtol=1e-6)


def test_segment_std_ddof_one_matches_sample_std_and_is_zero_for_single_entry():
    data = _random((7, 3))
    out = _jit(segment_std, jnp.asarray(data), jnp.asarray(IDS), NUM_SEGMENTS, ddof=1)
    np.testing.assert_allclose(out[0], data[IDS == 0].std(axis=0, ddof=1), rtol=1e-5)
    np.testing.assert_array_equal(out[2], 0.0)


def test_segment_std_eps_is_added_to_the_variance():
    data = jnp.array([1.0, 3.0])
    out = _jit(segment_std, data, jnp.array([0, 0]), 1, eps=0.25)
    np.testing.assert_allclose(out, [np.sqrt(1.25)], rtol=1e-6)


def test_segment_max_of_integer_data_keeps_dtype_and_gives_zero_for_empty_segment():
    out = _jit(segment_max, jnp.array([-3, -7, 2], jnp.int32), jnp.array([0, 0, 2]), 3)
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out, [-3, 0, 2])


def test_segment_mean_of_integer_data_is_float():
    out = _jit(segment_mean, jnp.array([1, 2, 4]), jnp.array([0, 0, 1]), 2)
    assert jnp.issubdtype(out.dtype, jnp.floating)
    np.testing.assert_allclose(out, [1.5, 4.0])


def test_segment_reduce_dispatches_to_the_named_reducer():
    data, ids = jnp.asarray(_random((7, 3))), jnp.asarray(IDS)
    mask = jnp.array([True, True, False, True, True, True, False])
    reducers = ("sum", "mean", "max", "min")
    outs = _jit(lambda *args: {reducer: (segment_reduce(*args, reducer, mask=mask), REDUCTIONS[reducer](*args, mask=mask))
                               for reducer in reducers}, data, ids, NUM_SEGMENTS)
    _each_case(reducers, lambda reducer: np.testing.assert_array_equal(*outs[reducer]))


def test_segment_max_propagates_nan():
    out = _jit(segment_max, jnp.array([1.0, jnp.nan, 2.0]), jnp.array([0, 0, 1]), 2)
    assert np.isnan(out[0]) and out[1] == 2.0


# --- eager / jit / vmap ---------------------------------------------------------------------------------


# vmap is covered by the next test, which batches data, segment ids and mask at once (a superset of a
# batch of one over the data), so this one runs eager and jit only.
@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_every_segment_op_agrees_under_eager_and_jit(mode):
    data = jnp.asarray(_random((7, 2, 3)))
    mask = jnp.array([True, True, False, True, True, True, True])

    def fn(data, ids, mask):
        return _every_op(data, ids, NUM_SEGMENTS, mask=mask)

    outs = (fn if mode == "eager" else jax.jit(fn))(data, jnp.asarray(IDS), mask)
    _assert_every_op_matches_reference(outs, data, IDS, NUM_SEGMENTS, mask=np.asarray(mask))


def test_every_segment_op_vmaps_over_data_segment_ids_and_mask():
    data = jnp.asarray(_random((2, 7, 3)))
    ids = jnp.stack([jnp.asarray(IDS), jnp.asarray(IDS[::-1])])
    mask = jnp.array([[True] * 7, [True, False, True, True, False, True, True]])
    batched = jax.jit(jax.vmap(lambda x, i, m: _every_op(x, i, NUM_SEGMENTS, mask=m)))(data, ids, mask)
    for batch in range(2):
        outs = {name: out[batch] for name, out in batched.items()}
        expected_mask = np.asarray(mask[batch])
        _assert_every_op_matches_reference(outs, data[batch], ids[batch], NUM_SEGMENTS, mask=expected_mask)


# --- gradients ------------------------------------------------------------------------------------------


def _grad_inputs():
    # Distinct values, so max and min have no ties; of 6 segments, 1 and 5 are empty and 4 is fully masked.
    data = jnp.asarray(np.random.default_rng(3).permutation(21).reshape(7, 3) / 7.0 - 1.0)
    ids = jnp.array([0, 3, 0, 2, 3, 4, 3])
    mask = jnp.array([True, True, True, True, True, False, True])
    return data, ids, mask


def _check_grads_of_every_op(**check_options):
    """``check_grads`` on all ops at once (one compile); if that fails, once per op to name the culprit."""
    data, ids, mask = _grad_inputs()
    try:
        check_grads(jax.jit(lambda x: _every_op(x, ids, 6, mask=mask)), (data,), **check_options)
    except AssertionError:
        for name, op in ALL_OPS.items():
            try:
                check_grads(jax.jit(lambda x: op(x, ids, 6, mask=mask)), (data,), **check_options)
            except AssertionError as error:
                pytest.fail(f"segment_{name}: {error}")
        raise


def test_every_segment_op_reverse_mode_gradients_match_finite_differences_to_order_two(x64):
    _check_grads_of_every_op(order=2, modes=("rev",))


def test_every_segment_op_forward_mode_gradients_match_finite_differences(x64):
    _check_grads_of_every_op(order=1, modes=("fwd",))


def _weighted_grads(data, ids, num_segments, mask):
    """Gradient of ``sum(op(data) * weights)`` for every op, with fixed random weights, as a dict."""

    def grads(data):
        result = {}
        for name, op in ALL_OPS.items():
            rows = data.shape[0] if name == "softmax" else num_segments
            weights = jnp.asarray(_random((rows, *data.shape[1:]), seed=4))
            result[name] = jax.grad(lambda x: jnp.sum(op(x, ids, num_segments, mask=mask) * weights))(data)
        return result

    return jax.jit(grads)(data)


def test_every_segment_op_ignores_masked_entries_even_if_they_are_nan_or_inf():
    data = jnp.array([[0.5, -1.0], [jnp.nan, jnp.inf], [2.0, 0.25], [-jnp.inf, 3.0]])
    ids = jnp.array([0, 0, 1, 1])
    mask = jnp.array([True, False, True, False])
    kept = jnp.array([0, 2])
    outs, expected = jax.jit(lambda data: (_every_op(data, ids, 3, mask=mask), _every_op(data[kept], ids[kept], 3)))(data)
    for name, out in outs.items():
        np.testing.assert_allclose(out[kept] if name == "softmax" else out, expected[name], rtol=1e-6)
    np.testing.assert_array_equal(outs["softmax"][jnp.array([1, 3])], 0.0)
    for name, grad in _weighted_grads(data, ids, 3, mask).items():
        assert np.isfinite(grad).all(), name
        np.testing.assert_array_equal(grad[jnp.array([1, 3])], 0.0, err_msg=f"segment_{name}")


def test_every_segment_op_gives_zero_gradient_to_a_fully_masked_segment():
    data = jnp.array([1.0, 2.0, 3.0])
    mask = jnp.array([True, False, False])
    for name, grad in _weighted_grads(data, jnp.array([0, 1, 1]), 2, mask).items():
        assert np.isfinite(grad).all(), name
        np.testing.assert_array_equal(grad[1:], 0.0, err_msg=f"segment_{name}")


def test_segment_std_of_equal_values_is_zero_with_zero_gradient():
    data = jnp.array([[2.0, 1.0], [2.0, 3.0], [-4.0, 5.0]])
    fn = lambda x: jnp.sum(segment_std(x, jnp.array([0, 0, 1]), 2))  # noqa: E731
    std, grad, hessian = jax.jit(lambda x: (segment_std(x, jnp.array([0, 0, 1]), 2), jax.grad(fn)(x),
                                            jax.hessian(fn)(x)))(data)
    np.testing.assert_array_equal(std[:, 0], 0.0)
    assert np.isfinite(hessian).all()
    np.testing.assert_array_equal(grad[:, 0], 0.0)
    np.testing.assert_allclose(grad[:2, 1], [-0.5, 0.5], rtol=1e-6)


# --- ties -----------------------------------------------------------------------------------------------


def test_segment_extremum_tie_rule_shares_the_gradient():
    expected = {"split": [0.5, 0.5, 0.0, 1.0], "first": [1.0, 0.0, 0.0, 1.0]}
    ops = {"max": (segment_max, 1.0), "min": (segment_min, -1.0)}  # the op, and the sign that makes 3 its winner
    ids = jnp.array([0, 0, 0, 1])
    grads = jax.jit(lambda data: {(name, tie): jax.grad(lambda x: jnp.sum(op(x, ids, 2, tie=tie)))(sign * data)  # noqa: B023
                                  for name, (op, sign) in ops.items() for tie in expected})(jnp.array([3.0, 3.0, 1.0, 7.0]))
    _each_case(grads, lambda case: np.testing.assert_array_equal(grads[case], expected[case[1]]))


def test_segment_max_tie_rule_applies_per_feature_element():
    data = jnp.array([[3.0, 1.0], [3.0, 2.0], [0.0, 2.0]])
    ids = jnp.array([0, 0, 0])
    split = jax.jit(jax.grad(lambda x: jnp.sum(segment_max(x, ids, 1))))(data)
    first = jax.jit(jax.grad(lambda x: jnp.sum(segment_max(x, ids, 1, tie="first"))))(data)
    np.testing.assert_array_equal(split, [[0.5, 0.0], [0.5, 0.5], [0.0, 0.5]])
    np.testing.assert_array_equal(first, [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])


def test_segment_max_first_tie_rule_ignores_masked_earlier_entry():
    data = jnp.array([3.0, 3.0, 3.0])
    mask = jnp.array([False, True, True])
    ids = jnp.zeros(3, jnp.int32)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(segment_max(x, ids, 1, mask=mask, tie="first"))))(data)
    np.testing.assert_array_equal(grad, [0.0, 1.0, 0.0])


def test_segment_reduce_passes_the_tie_rule_through():
    data, ids = jnp.array([2.0, 2.0]), jnp.array([0, 0])
    grad = jax.jit(jax.grad(lambda x: jnp.sum(segment_reduce(x, ids, 1, "max", tie="first"))))(data)
    np.testing.assert_array_equal(grad, [1.0, 0.0])


# --- stability ------------------------------------------------------------------------------------------


def test_segment_exp_ops_are_finite_for_huge_logits_and_isolated_segments():
    logits = jnp.array([[1e4, -1e4], [-1e4, 1e4], [1e4, 1e4], [-1e4, -1e4], [3.0, -1e4]])
    ids = jnp.array([0, 0, 1, 1, 2])  # segment 2 is isolated (one entry), segment 3 is empty
    names = ("softmax", "logsumexp")
    weights = {name: jnp.asarray(_random(logits.shape if name == "softmax" else (4, 2), seed=5)) for name in names}

    @jax.jit  # both ops, values and gradients, in one program
    def results(x):
        return {name: (ALL_OPS[name](x, ids, 4), jax.grad(lambda x: jnp.sum(ALL_OPS[name](x, ids, 4) * weights[name]))(x))  # noqa: B023
                for name in names}

    outs = results(logits)

    def check(name):
        out, grad = outs[name]
        assert np.isfinite(out).all() and np.isfinite(grad).all()
        np.testing.assert_allclose(out, _reference(name, np.asarray(logits), np.asarray(ids), 4), rtol=1e-6)

    _each_case(names, check)


# --- NaN propagation -----------------------------------------------------------------------------------

NAN_DATA = jnp.array([jnp.nan, 1.0, 2.0, 3.0])
NAN_IDS = jnp.array([0, 0, 1, 1])  # segment 0 holds the NaN, segment 1 is finite, segment 2 is empty


def test_a_nan_entry_makes_its_segment_nan_and_leaves_the_others_correct():
    outs = jax.jit(lambda x: {name: (op(x, NAN_IDS, 3), op(x[2:], NAN_IDS[2:], 3)) for name, op in ALL_OPS.items()})(
        NAN_DATA)

    def check(name):
        out, clean = map(np.asarray, outs[name])
        if name == "softmax":  # per entry: both entries of segment 0 are NaN
            assert np.isnan(out[:2]).all()
            np.testing.assert_allclose(out[2:], clean, rtol=1e-6)
        else:
            assert np.isnan(out[0])
            np.testing.assert_allclose(out[1:], clean[1:], rtol=1e-6)  # segment 2 is empty: 0
            assert out[2] == 0.0

    _each_case(["std", "logsumexp", "softmax", "mean", "sum", "max", "min"], check)


def test_a_nan_entry_makes_the_gradient_of_its_segment_nan_and_keeps_the_others_exact():
    weights = jnp.array([0.3, -0.7, 1.1, 0.5])
    names = ("std", "logsumexp", "softmax")

    def grads(name, x):
        """The gradients of a weighted sum of the NaN segment's outputs and of the finite segment's (with
        and without the NaN in the data)."""
        nan_rows = slice(0, 2) if name == "softmax" else slice(0, 1)
        finite_rows = slice(2, 4) if name == "softmax" else slice(1, 3)

        def loss(data, rows):
            out = ALL_OPS[name](data, NAN_IDS, 3)
            return jnp.sum(out[rows] * weights[: out[rows].shape[0]])

        return jax.grad(loss)(x, nan_rows), jax.grad(loss)(x, finite_rows), jax.grad(loss)(x.at[:2].set(0.0), finite_rows)

    outs = jax.jit(lambda x: {name: grads(name, x) for name in names})(NAN_DATA)

    def check(name):
        nan_grad, finite_grad, expected = map(np.asarray, outs[name])
        assert np.isnan(nan_grad[:2]).all()
        np.testing.assert_allclose(finite_grad[2:], expected[2:], rtol=1e-6)
        assert np.abs(expected[2:]).max() > 0  # the finite segment's gradient is not trivially 0

    _each_case(names, check)


def test_known_nan_values_of_std_softmax_and_logsumexp():
    # The cases that used to turn NaN into a number: [0, .5], [0, 0, .27, .73] and [-inf, 3.31].
    std, softmax, logsumexp = _jit(lambda *args: (segment_std(*args), segment_softmax(*args), segment_logsumexp(*args)),
                                   NAN_DATA, NAN_IDS, 2)
    np.testing.assert_allclose(std, [np.nan, 0.5])
    np.testing.assert_allclose(softmax, [np.nan, np.nan, 0.268941, 0.731059], rtol=1e-5)
    np.testing.assert_allclose(logsumexp, [np.nan, 3.313262], rtol=1e-6)


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_OPS)
def test_segment_op_rejects_complex_data_naming_the_dtype(name):
    with pytest.raises(TypeError, match=rf"segment_{name}: data must be real; got dtype complex64, expected a "
                                        r"real float, integer or bool dtype\."):
        ALL_OPS[name](jnp.ones(3, jnp.complex64), jnp.array([0, 1, 1]), 2)



@pytest.mark.parametrize("name", ALL_OPS)
def test_segment_op_rejects_non_integer_segment_ids(name):
    with pytest.raises(TypeError, match=rf"segment_{name}: segment_ids must have an integer dtype; got float32"):
        ALL_OPS[name](jnp.ones(3), jnp.array([0.0, 1.0, 1.0]), 2)


@pytest.mark.parametrize("name", ALL_OPS)
def test_segment_op_rejects_mismatched_entry_counts(name):
    with pytest.raises(ValueError, match=r"got data of shape \(4, 2\) and segment_ids of shape \(3,\)"):
        ALL_OPS[name](jnp.ones((4, 2)), jnp.array([0, 1, 1]), 2)


@pytest.mark.parametrize("name", ALL_OPS)
def test_segment_op_rejects_negative_num_segments(name):
    with pytest.raises(ValueError, match=rf"segment_{name}: num_segments is negative; got -1"):
        ALL_OPS[name](jnp.ones(3), jnp.array([0, 1, 1]), -1)


@pytest.mark.parametrize("num_segments", [2.0, True, "2"])
def test_segment_sum_rejects_non_int_num_segments(num_segments):
    with pytest.raises(TypeError, match=r"segment_sum: num_segments must be a Python int"):
        segment_sum(jnp.ones(3), jnp.array([0, 1, 1]), num_segments)


def test_segment_sum_under_jit_rejects_traced_num_segments_with_hint():
    with pytest.raises(TypeError, match=r"num_segments must be a Python int.*static_argnames"):
        jax.jit(segment_sum)(jnp.ones(3), jnp.array([0, 1, 1]), 2)


def test_segment_sum_rejects_non_bool_mask_and_wrong_mask_shape():
    with pytest.raises(TypeError, match=r"mask must have dtype bool; got int32"):
        segment_sum(jnp.ones(3), jnp.array([0, 1, 1]), 2, mask=jnp.array([1, 0, 1]))
    with pytest.raises(ValueError, match=r"mask must have one flag per entry; got shape \(2,\), expected \(3,\)"):
        segment_sum(jnp.ones(3), jnp.array([0, 1, 1]), 2, mask=jnp.array([True, False]))


def test_segment_sum_reports_every_shape_problem_at_once():
    with pytest.raises(ValueError, match=r"2 problems:\n.*data and segment_ids disagree.*\n.*mask must have"):
        segment_sum(jnp.ones(4), jnp.array([0, 1, 1]), 2, mask=jnp.array([True]))


def test_segment_sum_rejects_scalar_data_and_two_dimensional_ids():
    with pytest.raises(ValueError, match=r"data must have a leading entry axis; got a scalar"):
        segment_sum(jnp.float32(1.0), jnp.array([0]), 1)
    with pytest.raises(ValueError, match=r"segment_ids must be 1-D; got shape \(1, 2\)"):
        segment_sum(jnp.ones(2), jnp.array([[0, 1]]), 2)


def test_segment_reduce_rejects_unknown_reducer_listing_valid_ones():
    expected = r"segment_reduce: unknown reducer 'avg'; expected one of 'sum', 'mean', 'max', 'min'\."
    with pytest.raises(ValueError, match=expected):
        segment_reduce(jnp.ones(3), jnp.array([0, 1, 1]), 2, "avg")


@pytest.mark.parametrize("op", [segment_max, segment_min], ids=["max", "min"])
def test_segment_extremum_rejects_unknown_tie_rule(op):
    with pytest.raises(ValueError, match=r"unknown tie 'last'; expected one of 'split', 'first'\."):
        op(jnp.ones(3), jnp.array([0, 1, 1]), 2, tie="last")


def test_segment_std_rejects_bad_ddof_and_eps():
    args = (jnp.ones(3), jnp.array([0, 1, 1]), 2)
    with pytest.raises(ValueError, match=r"segment_std: ddof is negative; got -1"):
        segment_std(*args, ddof=-1)
    with pytest.raises(TypeError, match=r"segment_std: ddof must be a Python int; got 0.5"):
        segment_std(*args, ddof=0.5)
    with pytest.raises(ValueError, match=r"segment_std: eps is negative or NaN; got -0.1"):
        segment_std(*args, eps=-0.1)


def test_segment_max_with_three_ties_returns_the_exact_maximum_and_splits_the_gradient():
    value = np.float32(0.1) * np.float32(3.0)  # a value whose thirds do not sum back exactly
    data = jnp.full((3,), value, jnp.float32)
    ids = jnp.zeros((3,), jnp.int32)
    out, grad = jax.jit(lambda d: (segment_max(d, ids, 1), jax.grad(lambda d: segment_max(d, ids, 1)[0])(d)))(data)
    assert out[0] == value
    np.testing.assert_allclose(grad, np.full(3, 1 / 3), rtol=1e-6)


def test_segment_whose_logits_are_all_minus_inf_gives_zero_softmax_and_no_nan_gradient():
    logits = jnp.array([-jnp.inf, -jnp.inf, 1.0, 2.0])
    ids = jnp.array([0, 0, 1, 1])

    @jax.jit  # one program rather than op by op
    def results(logits):
        return (segment_softmax(logits, ids, 2), segment_logsumexp(logits, ids, 2),
                jax.grad(lambda d: segment_logsumexp(d, ids, 2)[1])(logits),
                jax.grad(lambda d: jnp.sum(segment_softmax(d, ids, 2) * jnp.arange(4.0)))(logits))

    out, lse, lse_grad, softmax_grad = results(logits)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.26894143, 0.73105857], rtol=1e-6)
    assert lse[0] == -jnp.inf
    np.testing.assert_allclose(lse_grad, [0.0, 0.0, 0.26894143, 0.73105857], rtol=1e-6)
    assert bool(jnp.all(jnp.isfinite(softmax_grad)))
