"""Float32 against float64 on a graph with a hub of in-degree 10^5; large logits; bfloat16 with float32 sums.

Each op is run twice on the same float32 inputs, once in float32 and once in float64 (the reference), so
the difference is the float32 arithmetic alone. Errors are *normwise*: ``|y32 - y64| / (|A| |x|)`` per
output element, the quantity the classical summation bounds control. The derivations and the measured
values are in docs/numerics.md; the bounds asserted here are those of the document.

Unit roundoffs: float32 ``u32 = 2^-24``, bfloat16 ``u16 = 2^-8``. Summing n terms in any order has the
worst-case bound ``(n - 1) u Σ|t|``; for terms of similar size with independent rounding errors the
error grows like ``sqrt(n) u Σ|t|``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import Graph, ops

jax.config.update("jax_numpy_rank_promotion", "raise")

LEAVES = 10**5
N = LEAVES + 1  # node 0 is the hub
RANDOM_EDGES = 2 * 10**5
F = 4
U32 = 2.0**-24
U16 = 2.0**-8
MEASURED: dict[str, float] = {}  # filled by the tests, printed at the end (pytest -s)


@pytest.fixture(scope="module")
def star():
    """10^5 leaves -> hub 0, plus 2·10^5 uniform random edges; float32 inputs (arrays in numpy)."""
    rng = np.random.default_rng(0)
    senders = np.concatenate([np.arange(1, N), rng.integers(0, N, RANDOM_EDGES)])
    receivers = np.concatenate([np.zeros(LEAVES, np.int64), rng.integers(0, N, RANDOM_EDGES)])
    graph = Graph.from_edges(senders, receivers, N)
    return dict(
        graph=graph,
        xla=ops.with_backend(graph, "xla"),  # the plain path
        native=ops.with_backend(graph, "native"),  # on CPU: the native CSR kernels
        senders=senders,
        receivers=receivers,
        hub_degree=int(np.sum(receivers == 0)),
        weight=rng.uniform(0.5, 1.5, senders.size).astype(np.float32),
        positive=rng.uniform(0.0, 1.0, (N, F)).astype(np.float32),
        signed=rng.normal(size=(N, F)).astype(np.float32),
        logits=(3 * rng.normal(size=senders.size)).astype(np.float32),
    )


def _in_both(fn, *arrays):
    """``fn`` on float32 and on float64 copies of the same float32 ``arrays``; both returned as float64."""
    low = fn(*(jnp.asarray(a, jnp.float32) for a in arrays))
    with jax.enable_x64(True):
        high = fn(*(jnp.asarray(a, jnp.float64) for a in arrays))
        return np.asarray(low, np.float64), np.asarray(high)


def _normwise(approx, exact, scale):
    """Largest ``|approx - exact| / scale`` over elements with a non-zero scale."""
    live = scale > 0
    return float(np.max(np.abs(approx - exact)[live] / scale[live]))


def _abs_propagation(star, x, reduce="sum"):
    """``|A| |x|`` (or the mean of |w x|) in float64, the scale of the normwise error."""
    with jax.enable_x64(True):
        return np.asarray(ops.gspmm(star["graph"], "u_mul_e", reduce, jnp.abs(jnp.asarray(x, jnp.float64)),
                                    jnp.asarray(star["weight"], jnp.float64)))


@pytest.mark.parametrize("features", ["positive", "signed"])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("path", ["xla", "native"])
def test_sum_and_mean_at_a_hub_of_degree_1e5_stay_within_the_sqrt_degree_bound(star, features, reduce, path):
    x = star[features]
    low, high = _in_both(lambda x, w: ops.gspmm(star[path], "u_mul_e", reduce, x, w), x, star["weight"])
    error = _normwise(low, high, _abs_propagation(star, x, reduce))
    MEASURED[f"{reduce} ({features}{', native' if path == 'native' else ''})"] = error
    degree = star["hub_degree"]
    assert degree >= LEAVES
    # Each message w*x is one rounding (u32); the sum of `degree` of them grows like sqrt(degree).
    assert error <= U32 + np.sqrt(degree) * U32, error
    assert error <= (degree - 1) * U32  # the worst-case bound, never to be exceeded


@pytest.mark.parametrize("reduce", ["max", "min"])
def test_max_and_min_are_exact_up_to_the_rounding_of_one_message(star, reduce):
    x = star["signed"]
    low, high = _in_both(lambda x, w: ops.gspmm(star["graph"], "u_mul_e", reduce, x, w), x, star["weight"])
    error = _normwise(low, high, np.abs(high))
    MEASURED[reduce] = error
    assert error <= U32  # the extremum itself is selected, not computed: only w*x is rounded
    copy_low, copy_high = _in_both(lambda x: ops.gspmm(star["graph"], "copy_u", reduce, x), x)
    np.testing.assert_array_equal(copy_low, copy_high)  # no product: bit-exact


def test_gcn_normalised_propagation_at_the_hub(star):
    x = star["positive"]
    low, high = _in_both(lambda x, w: ops.spmm(ops.gcn_norm(star["graph"], w), x), x, star["weight"])
    with jax.enable_x64(True):
        normed = ops.gcn_norm(star["graph"], jnp.asarray(star["weight"], jnp.float64))
        scale = np.asarray(ops.spmm(normed, jnp.abs(jnp.asarray(x, jnp.float64))))
    error = _normwise(low, high, scale)
    MEASURED["gcn_norm + spmm"] = error
    # Two degree sums (sqrt(deg) u each, through deg^-1/2: half of it), the scalings, the final sum.
    assert error <= 4 * U32 + 2 * np.sqrt(star["hub_degree"]) * U32, error


def test_edge_softmax_over_1e5_incoming_edges(star):
    low, high = _in_both(lambda l: ops.edge_softmax(star["graph"], l), star["logits"])
    hub = star["receivers"] == 0
    error = float(np.max(np.abs(low[hub] - high[hub]) / high[hub]))
    MEASURED["edge_softmax (hub, per entry)"] = error
    # The denominator is a sum of 10^5 positive terms spanning many orders of magnitude: terms below
    # half an ulp of the running sum are swamped, a one-sided error that grows like degree * u32 rather
    # than sqrt(degree) * u32. Every entry shares the denominator, so every entry carries that error.
    assert error <= star["hub_degree"] * U32, error
    assert abs(low[hub].sum() - 1.0) <= star["hub_degree"] * U32


@pytest.mark.parametrize("path", ["xla", "native"])
def test_gsddmm_dot_is_within_the_length_F_dot_product_bound(star, path):
    x = star["signed"]
    low, high = _in_both(lambda x: ops.gsddmm(star[path], "dot", x, x), x)
    terms = np.abs(x.astype(np.float64))
    scale = np.sum(terms[star["senders"]] * terms[star["receivers"]], axis=1, keepdims=True)
    error = _normwise(low, high, scale)
    MEASURED[f"gsddmm dot{' (native)' if path == 'native' else ''}"] = error
    assert error <= F * U32, error


@pytest.mark.parametrize("magnitude", [1e2, 1e4])
def test_softmax_and_max_are_finite_and_correct_for_logits_up_to_1e4(star, magnitude):
    rng = np.random.default_rng(1)
    logits = (magnitude * rng.normal(size=star["senders"].size)).astype(np.float32)
    graph = star["graph"]
    low, high = _in_both(lambda l: ops.edge_softmax(graph, l), logits)
    assert np.isfinite(low).all()
    assert np.max(np.abs(low - high)) <= 1e-6  # absolute: entries are probabilities
    sums = np.bincount(star["receivers"], weights=low, minlength=N)
    has_incoming = np.bincount(star["receivers"], minlength=N) > 0
    np.testing.assert_allclose(sums[has_incoming], 1.0, atol=star["hub_degree"] * U32)
    top_low, top_high = _in_both(lambda l: ops.gspmm(graph, "copy_e", "max", None, l), logits)
    np.testing.assert_array_equal(top_low, top_high)
    lse_low, lse_high = _in_both(lambda l: ops.segment_logsumexp(l, star["receivers"], N), logits)
    assert np.isfinite(lse_low).all()
    # m + log(sum exp(l - m)): an absolute error of a few ulps of |m| + log(degree), not a relative one
    # (the result can cancel to near 0).
    lse_scale = np.abs(np.asarray(top_high)) + np.log(np.bincount(star["receivers"], minlength=N) + 1.0) + 1
    assert np.all(np.abs(lse_low - lse_high) <= 4 * U32 * lse_scale)
    cotangent = jnp.asarray(rng.normal(size=logits.shape), jnp.float32)
    grad = jax.grad(lambda l: jnp.sum(ops.edge_softmax(graph, l) * cotangent))(jnp.asarray(logits))
    assert np.isfinite(np.asarray(grad)).all()


# ------------------------------------------------------------------------------------------------------
# Mixed precision: bfloat16 features and weights, float32 accumulation.
# ------------------------------------------------------------------------------------------------------
def _bf16_reference(star, x, weight):
    """A x in float64 from the *unrounded* inputs, and |A| |x| for the normwise error."""
    with jax.enable_x64(True):
        graph = star["graph"]
        x64, w64 = jnp.asarray(x, jnp.float64), jnp.asarray(weight, jnp.float64)
        return np.asarray(ops.spmm(graph, x64, w64)), np.asarray(ops.spmm(graph, jnp.abs(x64), jnp.abs(w64)))


def test_bf16_features_with_float32_accumulation_meet_the_documented_bound(star):
    x, weight = star["positive"], star["weight"]
    exact, scale = _bf16_reference(star, x, weight)
    x16, w16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(weight, jnp.bfloat16)
    out = ops.spmm(star["graph"], x16, w16, accumulate_dtype=jnp.float32)
    assert out.dtype == jnp.float32
    error = _normwise(np.asarray(out, np.float64), exact, scale)
    MEASURED["bf16 inputs, f32 accumulation"] = error
    # Rounding x and w to bfloat16 costs u16 each; the float32 sum adds at most deg * u32 (worst case).
    bound = 2 * U16 + U16**2 + star["hub_degree"] * U32
    assert error <= bound, (error, bound)
    # Without the keyword the sum is accumulated in float32 too, and the output rounded to bfloat16
    # (one more u16). A bfloat16 running sum would stall at the hub: once it reaches 2^8 times a
    # term, adding the term rounds it away (the positive control below shows it).
    plain = ops.spmm(star["graph"], x16, w16)
    assert plain.dtype == jnp.bfloat16
    error = _normwise(np.asarray(plain, np.float64), exact, scale)
    MEASURED["bf16 inputs, default (f32 accumulation, bf16 output)"] = error
    assert error <= bound + U16, (error, bound + U16)
    stalled = np.asarray(jax.ops.segment_sum((x16[star["senders"]] * w16[:, None]), star["receivers"], N), np.float64)
    MEASURED["bf16 inputs, bf16 accumulation (hub)"] = float(np.max(np.abs(stalled[0] - exact[0]) / scale[0]))
    assert np.max(np.abs(stalled[0] - exact[0]) / scale[0]) > 0.5


def test_bf16_gradients_are_bf16_accumulated_in_float32_and_within_the_bound(star):
    graph, x, weight = star["graph"], star["signed"], star["weight"]
    x16, w16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(weight, jnp.bfloat16)
    cotangent = np.random.default_rng(2).normal(size=(N, F)).astype(np.float32)

    def loss(x, w):
        return jnp.sum(ops.spmm(graph, x, w, accumulate_dtype=jnp.float32) * cotangent)

    dx, dw = jax.grad(loss, argnums=(0, 1))(x16, w16)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    with jax.enable_x64(True):  # dx = A^T cot, dw[e] = <x[s_e], cot[r_e]>, from the unrounded inputs
        cot64, w64 = jnp.asarray(cotangent, jnp.float64), jnp.asarray(weight, jnp.float64)
        dx_exact = np.asarray(ops.spmm(graph.reverse(), cot64, w64))
        dx_scale = np.asarray(ops.spmm(graph.reverse(), jnp.abs(cot64), w64))
    x64 = x.astype(np.float64)
    per_edge = x64[star["senders"]] * cotangent[star["receivers"]]
    dx_error = _normwise(np.asarray(dx, np.float64), dx_exact, dx_scale)
    dw_error = _normwise(np.asarray(dw, np.float64), per_edge.sum(1), np.abs(per_edge).sum(1))
    MEASURED["bf16 gradient dx"], MEASURED["bf16 gradient dw"] = dx_error, dw_error
    # Inputs rounded to bf16 (u16 each), float32 sums, result rounded to bf16 (u16).
    bound = 3 * U16 + star["hub_degree"] * U32
    assert dx_error <= bound and dw_error <= bound, (dx_error, dw_error, bound)


# ------------------------------------------------------------------------------------------------------
# NaN reaches exactly the outputs that depend on it, through the normalising reductions too.
# ------------------------------------------------------------------------------------------------------
def test_a_nan_attention_score_reaches_only_its_receiver_and_checked_reports_it():
    import jgrad
    from jax.experimental import checkify

    graph = Graph.from_edges([1, 2, 0, 3, 0], [0, 0, 1, 1, 2], n_nodes=4)  # node 3 receives nothing
    x = jnp.arange(8.0).reshape(4, 2)

    def attend(scores, x):
        return ops.gspmm(graph, "u_mul_e", "sum", x, ops.edge_softmax(graph, scores))

    clean = jnp.array([0.3, -1.2, 0.5, 2.0, 1e4])
    poisoned = clean.at[2].set(jnp.nan)  # an edge into node 1
    out, reference = np.asarray(attend(poisoned, x)), np.asarray(attend(clean, x))
    assert np.isnan(out[1]).all()  # before, the NaN score silently zeroed node 1's neighbourhood
    np.testing.assert_array_equal(out[[0, 2, 3]], reference[[0, 2, 3]])
    others = jnp.array([0, 2])  # the receivers without the NaN
    grad = np.asarray(jax.grad(lambda s: attend(s, x)[others].sum())(poisoned))
    expected = np.asarray(jax.grad(lambda s: attend(s, x)[others].sum())(clean))
    np.testing.assert_allclose(grad[[0, 1, 4]], expected[[0, 1, 4]], rtol=1e-6)  # edges into nodes 0 and 2
    with pytest.raises(checkify.JaxRuntimeError, match=r"attend: an output is not finite; got nan"):
        jgrad.checked(attend, finite_inputs=False)(poisoned, x)


def test_report_measured_errors():
    """Prints the table that docs/numerics.md quotes (run with ``pytest -s``)."""
    for name, value in MEASURED.items():
        print(f"{name:40s} {value:.3e}")


def test_every_sum_of_bfloat16_values_accumulates_in_float32():
    """A hub of 2000 in-edges: a bfloat16 running sum stalls at 256 terms. Every jgrad reduction sums in
    float32 and returns bfloat16, values within bfloat16 rounding of the exact ones, gradients too."""
    n = 2001
    graph = jgrad.Graph.from_edges(np.arange(1, n), np.zeros(n - 1, int), n_nodes=n)
    ones = jnp.ones((n, 2), jnp.bfloat16)
    close = dict(rtol=2 * U16)
    cases = {
        "spmm": (ops.spmm(graph, ones)[0, 0], 2000.0),
        "gspmm mean": (ops.gspmm(graph, "copy_u", "mean", 3 * ones)[0, 0], 3.0),
        "segment_sum": (ops.segment_sum(ones[1:, 0], graph.receivers, n)[0], 2000.0),
        "segment_mean": (ops.segment_mean(3 * ones[1:, 0], graph.receivers, n)[0], 3.0),
        "segment_std": (ops.segment_std(jnp.arange(n - 1, dtype=jnp.bfloat16), graph.receivers, n)[0],
                        float(np.std(np.arange(n - 1)))),
        "in_degree": (graph.with_edge_weight(jnp.ones(n - 1, jnp.bfloat16)).in_degree()[0], 2000.0),
        "edge_softmax": (jnp.sum(ops.edge_softmax(graph, jnp.zeros(n - 1, jnp.bfloat16)).astype(jnp.float32)), 1.0),
        "gat_attention": (jnp.sum(ops.gat_attention(graph, ones[:, 0], ones[:, 0]).astype(jnp.float32)), 1.0),
        "gsddmm dot": (ops.gsddmm(graph, "dot", jnp.ones((n, 2000), jnp.bfloat16), ones[:, :1].repeat(2000, 1))[0, 0],
                       2000.0),
        "readout": (jgrad.nn.readout(jgrad.Graph.from_edges([], [], n_nodes=n), ones, "sum")[0, 0], float(n)),
        "spmm gradient": (jax.grad(lambda x: ops.spmm(graph.reverse(), x).astype(jnp.float32).sum())(ones)[0, 0],
                          2000.0),
    }
    for name, (value, expected) in cases.items():
        assert value.dtype == jnp.bfloat16 or name in ("edge_softmax", "gat_attention"), name
        np.testing.assert_allclose(float(value), expected, err_msg=name, **close)
    stalled = jax.ops.segment_sum(ones[1:, 0], graph.receivers, n)[0]  # the failure the rule prevents
    assert float(stalled) == 256.0
