"""The kernels behind gspmm max/min on a plan: the native CSR kernels against the XLA ones.

The arg-extremum kernel returns (out, arg, count): the extremum over each row's live slots, the lowest
edge id attaining it (-1 for rows without live slots and NaN results) and how many live slots attain it.
The routed kernel is the "split" backward at ties. Values and gradients of gspmm max/min on every
backend against the plain path are in test_backends.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad.ops import _extremum, _native, gspmm, with_backend

N_NODES = 9


def _graph():
    """Duplicate edges, a self loop, an empty row (node 8) and a row whose edges are all masked (node 7)."""
    senders = np.array([0, 1, 2, 2, 3, 4, 5, 6, 0, 1, 1, 5, 3, 6])
    receivers = np.array([1, 1, 1, 0, 0, 2, 2, 3, 3, 4, 4, 5, 7, 7])
    live = np.ones(senders.shape, bool)
    live[[2, 12, 13]] = False
    graph = jgrad.Graph.from_edges(senders, receivers, N_NODES)
    return with_backend(graph, "native"), jnp.asarray(live)


def _node_data(dtype, heads):
    rng = np.random.default_rng(0)
    u = rng.integers(-2, 3, (N_NODES, heads, 4)).astype(dtype)  # small integers: many ties
    u[[0, 1], 0, :2] = [2, -2]  # node 1's live in-edges (from 0 and 1) tie for max and for min
    u[6, 0, 1] = np.nan
    u[4, 0, 2] = np.inf
    u[0, -1, 3] = -np.inf
    return jnp.asarray(u)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduce", ["max", "min"])
def test_the_native_kernels_equal_the_segment_kernels(x64, dtype, reduce):
    assert _native.available(), "the native CPU kernels did not build on this machine"
    graph, live = _graph()
    rng = np.random.default_rng(1)
    for heads, weighted in ((1, False), (1, True), (2, True)):
        u = _node_data(dtype, heads)
        w = jnp.asarray(rng.choice([-1.0, 1.0, 2.0], (graph.n_edges, heads)).astype(dtype))
        node, weight = (u.reshape(N_NODES, -1), w[:, 0]) if heads == 1 else (u, w)
        weight = weight if weighted else None
        for mask in (None, live):
            case = f"heads={heads} weighted={weighted} masked={mask is not None}"
            got = _native.csr_extremum(graph.plan.forward.csr, reduce, node, weight, mask)
            want = _extremum.segment_extremum(graph.plan.forward, reduce, node, weight, mask)
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b, err_msg=case)  # NaN in the same places
            assert got[1].dtype == got[2].dtype == jnp.int32
            share = jnp.asarray(rng.standard_normal(node.shape).astype(dtype))
            routed = _native.csr_routed(graph.plan.reverse.csr, node, weight, mask, got[0], share)
            reference = _extremum.segment_routed(graph.plan.reverse, node, weight, mask, got[0], share)
            tolerance = 1e-6 if dtype == np.float32 else 1e-12
            for a, b in zip(routed, reference):
                if b is None:
                    assert a is None
                else:
                    np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance, err_msg=case)
    out, arg, count = _native.csr_extremum(graph.plan.forward.csr, reduce, u.reshape(N_NODES, -1), None, live)
    assert np.all(np.asarray(arg)[[7, 8]] == -1) and np.all(np.asarray(out)[[7, 8]] == 0)  # masked, empty
    assert np.all(np.asarray(count)[[7, 8]] == 0)
    assert np.all(np.asarray(arg)[1] != 2)  # edge 2 is masked
    assert np.isnan(out[3, 1]) and arg[3, 1] == -1  # node 6's NaN reaches node 3
    assert count[1, 0 if reduce == "max" else 1] == 2 and arg[1, 0] == 0  # the tie at node 1: edges 0, 1


def test_gspmm_max_on_a_native_plan_runs_the_kernel_and_saves_no_messages(x64):
    graph, _ = _graph()
    x = jnp.asarray(np.random.default_rng(2).standard_normal((N_NODES, 3)))
    step = jax.jit(jax.grad(lambda x: jnp.sum(gspmm(graph, "copy_u", "max", x, tie="first") ** 2)))
    hlo = step.lower(x).as_text()
    assert "jgrad_csr_max" in hlo and "segment" not in hlo.lower()
    plain = jax.grad(lambda x: jnp.sum(gspmm(with_backend(graph, "xla"), "copy_u", "max", x, tie="first") ** 2))
    np.testing.assert_allclose(step(x), plain(x), rtol=1e-12, atol=1e-12)
