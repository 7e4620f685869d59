"""Checks that need several devices; run as a script with XLA_FLAGS setting 8 virtual CPU devices.

`test_multidevice.py` launches ``python multidevice_checks.py <check> ...`` in a subprocess, so the flag
never touches the main pytest process. Each check raises on a mismatch and prints ``OK <check>``; the
script runs every check it is given and prints ``FAILED <check>`` (with the traceback) for each that raised.
"""

from __future__ import annotations

import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrad
from jgrad.parallel import (
    data_parallel_value_and_grad,
    make_data_mesh,
    make_mesh,
    partition_edges,
    shard_batch,
    sharded_edge_softmax,
    sharded_gspmm,
    sharded_spmm,
    stack_graphs,
    stack_node_data,
)

TOL = dict(rtol=1e-5, atol=1e-5)


def _graph(rng, n=37, e=211, integer=False):
    senders, receivers = rng.integers(0, n, e), rng.integers(0, n, e)
    receivers[:5] = 3  # a receiver whose edges span several shards
    weight = rng.uniform(0.5, 1.5, e).astype(np.float32)  # away from 0, so u_div_e is tame
    return jgrad.Graph.from_edges(senders, receivers, n, edge_weight=weight)


def _close(a, b, what):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=what, **TOL)


def check_ops():
    """gspmm for every op x reducer, spmm and edge_softmax: values and gradients equal one device's."""
    rng = np.random.default_rng(0)
    graph = _graph(rng)
    n, e = graph.n_nodes, graph.n_edges
    all_ops = ("copy_u", "copy_e", "u_add_e", "u_sub_e", "u_mul_e", "u_div_e")
    plan = {  # mesh (D, K) -> (ops, reducers); every op and reducer on 8 devices, a sample elsewhere
        (8, 1): (all_ops, ("sum", "mean", "max", "min")),
        (4, 2): (("u_mul_e", "copy_e"), ("sum", "mean", "max")),
        (3, 1): (("u_mul_e",), ("sum", "min")),
    }
    cases_of = {}
    for (d, k), (ops, reducers) in plan.items():
        cases_of[d, k] = [(op, reduce, "split", False) for op in ops for reduce in reducers]
        if d == 8:  # integer-valued features: ties within and across shards, both tie rules
            cases_of[d, k] += [("copy_u", reduce, tie, True) for reduce in ("max", "min") for tie in ("split", "first")]
    # One input per case, shared by every mesh that runs it, so that one single-device program (every case
    # of the 8-device mesh, which includes the others') gives the reference for all meshes.
    inputs = {}
    for op, reduce, tie, integer in cases_of[8, 1]:
        x = rng.normal(size=(n, 4)).astype(np.float32)
        x = np.round(x) if integer else x
        w = rng.uniform(0.5, 1.5, (e, 4) if op == "copy_e" else (e,)).astype(np.float32)
        cot = rng.normal(size=(n, 4)).astype(np.float32)
        inputs[op, reduce, tie, integer] = (x, w, cot)
    assert all(set(cases) <= set(inputs) for cases in cases_of.values())

    def value_and_vjp_of_every_case(cases, mesh=None, sg=None):
        def run(inputs):
            results = []
            for (op, reduce, tie, _), (x, w, cot) in zip(cases, inputs):
                if mesh is not None:
                    f = lambda x, w: sharded_gspmm(mesh, sg, op, reduce, x, sg.shard_edge_data(w), tie=tie)
                else:
                    f = lambda x, w: jgrad.ops.gspmm(graph, op, reduce, x, w, tie=tie)
                out, pullback = jax.vjp(f, x, w)
                results.append((out, pullback(cot)))
            return results
        return jax.jit(run)

    every_case = cases_of[8, 1]
    reference = dict(zip(every_case, value_and_vjp_of_every_case(every_case)([inputs[c] for c in every_case])))
    for (d, k), cases in cases_of.items():
        mesh = make_mesh(d, k)
        sg = partition_edges(graph, d).put(mesh)
        # Every case of this mesh in one compiled program, compared case by case with the reference.
        many = value_and_vjp_of_every_case(cases, mesh, sg)([inputs[c] for c in cases])
        for case, got in zip(cases, many):
            op, reduce, tie, _ = case
            _close(got, reference[case], f"D={d} K={k} {op} {reduce} tie={tie}")
        if (d, k) == (8, 1):  # max/min in forward mode and to second order, ties across shards included
            for case in [("copy_u", "max", "split", True), ("copy_u", "min", "first", True),
                         ("u_mul_e", "max", "split", False)]:
                op, reduce, tie, _ = case
                x, w, cot = map(jnp.asarray, inputs[case])
                tangents = tuple(jnp.asarray(rng.normal(size=a.shape).astype(np.float32)) for a in (x, w))
                one = lambda x, w: jgrad.ops.gspmm(graph, op, reduce, x, w, tie=tie)  # noqa: B023
                many = lambda x, w: sharded_gspmm(mesh, sg, op, reduce, x, sg.shard_edge_data(w), tie=tie)  # noqa: B023
                squared_grad = lambda f: lambda x, w: jnp.sum(  # noqa: B023, E731
                    jax.grad(lambda x, w: jnp.sum(f(x, w) * cot), (0, 1))(x, w)[0] ** 2)  # noqa: B023
                got = jax.jit(lambda x, w: (jax.jvp(many, (x, w), tangents),  # noqa: B023
                                            jax.grad(squared_grad(many), (0, 1))(x, w)))(x, w)
                expected = (jax.jvp(one, (x, w), tangents), jax.grad(squared_grad(one), (0, 1))(x, w))
                _close(got, expected, f"D={d} {op} {reduce} tie={tie}: forward mode and second order")
        if (d, k) == (8, 1):  # NaN messages make max/min NaN at their receivers, as on one device
            x = np.asarray(inputs["copy_u", "max", "split", False][0]).copy()
            x[np.asarray(graph.senders)[:3], 1] = np.nan  # pmax(NaN, -inf) gave -inf across shards
            got = jax.jit(lambda x: [sharded_gspmm(mesh, sg, "copy_u", r, x) for r in ("max", "min")])(x)  # noqa: B023
            for reduce, out in zip(("max", "min"), got):
                expected = np.asarray(jgrad.ops.gspmm(graph, "copy_u", reduce, jnp.asarray(x)))
                assert np.isnan(expected).sum() >= 3
                np.testing.assert_array_equal(np.asarray(out), expected, err_msg=f"NaN messages, {reduce}")
        if k == 1:
            logits = jnp.asarray(rng.normal(size=(e, 3)).astype(np.float32) * 10)
            cot = jnp.asarray(rng.normal(size=(e, 3)).astype(np.float32))
            one = lambda l: jgrad.ops.edge_softmax(graph, l)
            many = lambda l: sg.unshard_edge_data(sharded_edge_softmax(mesh, sg, sg.shard_edge_data(l)))

            def value_and_grad(f, logits):  # the values and the gradient of sum(f(l) * cot), from one VJP
                out, pullback = jax.vjp(f, logits)
                return out, pullback(cot)[0]

            got = jax.jit(lambda l: value_and_grad(many, l))(logits)  # noqa: B023
            expected = value_and_grad(one, logits)
            _close(got[0], expected[0], f"edge_softmax D={d}")
            _close(got[1], expected[1], f"edge_softmax grad D={d}")
    print("OK ops")


def check_awkward_graphs():
    """Float64 values and VJPs of every reducer, spmm and edge softmax on 3 shards, for a padded graph
    with isolated nodes, duplicate edges and self loops (10 real edges: 4, 3, 3 per shard) and a graph
    with no edges: equal to one device's up to float64 rounding."""
    rng = np.random.default_rng(3)
    senders, receivers = np.array([0, 1, 1, 1, 2, 3, 3, 5, 5, 0]), np.array([1, 2, 2, 1, 2, 0, 0, 5, 1, 5])
    with jax.enable_x64(True):
        awkward = jgrad.pad(jgrad.Graph.from_edges(senders, receivers, 8, edge_weight=rng.uniform(0.5, 1.5, 10)), 9, 13)
        empty = jgrad.Graph.from_edges(np.zeros(0, int), np.zeros(0, int), 4, edge_weight=np.zeros(0))
        mesh = make_mesh(3)
        for name, graph in [("padded", awkward), ("no edges", empty)]:
            sg = partition_edges(graph, 3).put(mesh)
            real = np.flatnonzero(np.ones(graph.n_edges, bool) if graph.edge_mask is None else graph.edge_mask)
            x = jnp.asarray(np.round(rng.normal(size=(graph.n_nodes, 2))))  # integers: ties in max/min
            w = jnp.asarray(rng.uniform(0.5, 1.5, graph.n_edges))
            logits = jnp.asarray(rng.normal(size=(graph.n_edges,)))

            def outputs(x, w, logits, sharded, graph=graph, sg=sg, real=real):
                reducers = ("sum", "mean", "max", "min")
                if sharded:
                    ws, ls = sg.shard_edge_data(w[real]), sg.shard_edge_data(logits[real])
                    out = [sharded_gspmm(mesh, sg, "u_mul_e", r, x, ws) for r in reducers]
                    return out + [sharded_spmm(mesh, sg, x), sg.unshard_edge_data(sharded_edge_softmax(mesh, sg, ls))]
                out = [jgrad.ops.gspmm(graph, "u_mul_e", r, x, w) for r in reducers]
                return out + [jgrad.ops.spmm(graph, x), jgrad.ops.edge_softmax(graph, logits)[real]]

            def value_and_grads(sharded):
                def loss(x, w, logits):
                    return sum(jnp.sum(jnp.sin(out)) for out in outputs(x, w, logits, sharded))
                return outputs(x, w, logits, sharded), jax.grad(loss, (0, 1, 2))(x, w, logits)  # noqa: B023

            both = jax.jit(lambda: (value_and_grads(True), value_and_grads(False)))  # one compilation
            (got, got_grads), (expected, expected_grads) = both()
            for what, a, b in zip(["sum", "mean", "max", "min", "spmm", "edge_softmax"], got, expected):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"{name}: {what}")
            for what, a, b in zip(["dx", "dw", "dlogits"], got_grads, expected_grads):  # real edges only
                a, b = (a, b) if what == "dx" else (np.asarray(a)[real], np.asarray(b)[real])
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"{name}: {what}")
    print("OK awkward_graphs")


def check_gcn_params():
    """A 2-layer GCN with edge-sharded propagation: loss and grads w.r.t. params, features, weights."""
    rng = np.random.default_rng(1)
    graph = _graph(rng, n=50, e=300)
    norm = jgrad.ops.gcn_norm(graph)  # adds self loops and normalises
    x = jnp.asarray(rng.normal(size=(50, 8)).astype(np.float32))
    params = {"w1": jnp.asarray(rng.normal(size=(8, 16)).astype(np.float32)),
              "w2": jnp.asarray(rng.normal(size=(16, 4)).astype(np.float32))}

    def one(params, x, w):
        h = jax.nn.relu(jgrad.ops.spmm(norm, x @ params["w1"], w))
        return jnp.sum(jnp.tanh(jgrad.ops.spmm(norm, h, w) @ params["w2"]))

    w = norm.edge_weight
    expected = jax.value_and_grad(one, argnums=(0, 1, 2))(params, x, w)  # one device, for both meshes
    for d, k in [(8, 1), (2, 4)]:
        mesh = make_mesh(d, k)
        sg = partition_edges(norm, d).put(mesh)

        def many(params, x, w):
            ws = sg.shard_edge_data(w)
            h = jax.nn.relu(sharded_spmm(mesh, sg, x @ params["w1"], ws))
            return jnp.sum(jnp.tanh(sharded_spmm(mesh, sg, h, ws) @ params["w2"]))

        _close(jax.jit(jax.value_and_grad(many, argnums=(0, 1, 2)))(params, x, w), expected, f"gcn D={d} K={k}")
    print("OK gcn_params")


def check_data_parallel():
    """Training on a batch split over 4 devices ends at the same parameters as on one device."""
    rng = np.random.default_rng(2)
    graphs, feats, targets = [], [], []
    for _ in range(8):
        n = int(rng.integers(5, 12))
        e = int(rng.integers(5, 30))
        graphs.append(jgrad.Graph.from_edges(rng.integers(0, n, e), rng.integers(0, n, e), n))
        feats.append(rng.normal(size=(n, 3)).astype(np.float32))
        targets.append(rng.normal())
    stacked = stack_graphs(graphs)
    batch = {"graph": stacked, "x": stack_node_data(feats, stacked.node_mask.shape[1]),
             "y": jnp.asarray(targets, jnp.float32)}

    def predict(params, graph, x):
        h = jnp.tanh(jgrad.ops.gspmm(graph, "copy_u", "mean", x @ params["w1"]))
        h = jnp.where(graph.node_mask[:, None], h, 0.0)
        return jnp.sum(h @ params["w2"])

    def loss_fn(params, batch):
        pred = jax.vmap(predict, in_axes=(None, 0, 0))(params, batch["graph"], batch["x"])
        return jnp.mean((pred - batch["y"]) ** 2)

    key1, key2 = jax.random.split(jax.random.key(0))
    init = {"w1": jax.random.normal(key1, (3, 8)), "w2": jax.random.normal(key2, (8,)) / 8}
    opt = optax.adam(0.05)

    def train(value_and_grad, batch):
        params, state = init, opt.init(init)

        @jax.jit
        def step(params, state, batch):
            loss, grads = value_and_grad(params, batch)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state, loss

        for _ in range(30):
            params, state, loss = step(params, state, batch)
        return params, loss

    reference, ref_loss = train(jax.value_and_grad(loss_fn), batch)
    mesh = make_data_mesh(4)
    six = jax.tree.map(lambda leaf: leaf[:6], batch)  # B = 6 on 4 devices: one line, before shard_map's 7
    for run in (data_parallel_value_and_grad(loss_fn, mesh), jax.jit(data_parallel_value_and_grad(loss_fn, mesh))):
        try:
            run(init, six)
        except ValueError as error:
            assert str(error).startswith("data_parallel_value_and_grad: every leaf needs the same leading batch "
                                         "size B divisible by 4 devices; got leading sizes 6 (batch"), error
        else:
            raise AssertionError("a batch of 6 on 4 devices was accepted")
    sharded = shard_batch(batch, mesh)
    assert len(sharded["x"].sharding.device_set) == 4
    via_shard_map, loss_a = train(data_parallel_value_and_grad(loss_fn, mesh), sharded)
    via_named_sharding, loss_b = train(jax.value_and_grad(loss_fn), sharded)  # jit partitions it
    _close(via_shard_map, reference, "data parallel (shard_map + pmean)")
    _close(via_named_sharding, reference, "data parallel (NamedSharding + jit)")
    assert float(ref_loss) < 0.5 * float(loss_fn(init, batch)), "training did not progress"
    print("OK data_parallel")


CHECKS = {"ops": check_ops, "awkward_graphs": check_awkward_graphs, "gcn_params": check_gcn_params,
          "data_parallel": check_data_parallel}

if __name__ == "__main__":
    assert len(jax.devices()) == 8, jax.devices()
    failed = []
    for name in sys.argv[1:]:  # every check runs, whatever the others do; exit status 1 if one failed
        try:
            CHECKS[name]()
        except Exception:
            traceback.print_exc()
            print(f"FAILED {name}", flush=True)
            failed.append(name)
    sys.exit(1 if failed else 0)
