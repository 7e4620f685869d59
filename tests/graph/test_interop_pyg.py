"""PyTorch Geometric interop: (2, E) edge_index, Data/Batch round trips, checked against torch_geometric."""

from __future__ import annotations

import subprocess
import sys
import types
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import Graph
from jgrad.graph import from_pyg, to_pyg


@pytest.fixture(scope="module")
def pyg():
    """torch and the torch_geometric names the tests use, imported on first use rather than at collection
    (about 4 s of CPU per pytest-xdist worker, most of which never runs these tests)."""
    import torch

    with warnings.catch_warnings():  # torch_geometric 2.8 calls torch.jit.script, deprecated in torch 2.13
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch_geometric.data import Batch, Data
        from torch_geometric.utils import degree, scatter, to_dense_adj
    return types.SimpleNamespace(torch=torch, Batch=Batch, Data=Data, degree=degree, scatter=scatter,
                                 to_dense_adj=to_dense_adj)


def _data(pyg, seed: int = 0, n: int = 6, e: int = 11, weighted: bool = True):
    torch = pyg.torch
    rng = np.random.default_rng(seed)
    edge_index = torch.from_numpy(rng.integers(0, n, (2, e)))
    attributes = {"edge_index": edge_index, "num_nodes": n, "x": torch.from_numpy(rng.normal(size=(n, 3)))}
    if weighted:
        attributes["edge_weight"] = torch.from_numpy(rng.uniform(0.5, 2.0, e).astype(np.float32))
    return pyg.Data(**attributes)


def test_from_edge_index_accepts_a_torch_tensor(pyg):
    torch = pyg.torch
    edge_index = torch.tensor([[0, 1, 1], [1, 0, 2]])
    g = Graph.from_edge_index(edge_index, edge_weight=torch.tensor([1.0, 2.0, 3.0]))
    assert (g.n_nodes, g.senders.tolist(), g.receivers.tolist()) == (3, [0, 1, 1], [1, 0, 2])
    assert g.senders.dtype == jnp.int32 and g.edge_weight.tolist() == [1.0, 2.0, 3.0]
    h = Graph.from_edges(*edge_index, n_nodes=3)  # unpacking a torch edge_index works too
    assert h.senders.tolist() == [0, 1, 1]


def test_torch_integer_weights_are_refused_like_numpy_ones(pyg):
    torch = pyg.torch
    with pytest.raises(TypeError, match=r"edge_weight must have a floating-point dtype; got int64"):
        Graph.from_edge_index(torch.tensor([[0], [1]]), edge_weight=torch.tensor([1]))


def test_from_pyg_matches_torch_geometric_dense_adjacency_degrees_and_aggregation(pyg):
    degree, scatter, to_dense_adj = pyg.degree, pyg.scatter, pyg.to_dense_adj
    data = _data(pyg)
    g = from_pyg(data)
    n = data.num_nodes
    # PyG's dense adjacency is adj[source, target]; jgrad's A[v, u] weighs u -> v: the transpose.
    pyg_dense = to_dense_adj(data.edge_index, edge_attr=data.edge_weight, max_num_nodes=n)[0].numpy()
    np.testing.assert_allclose(np.asarray(g.to_dense()), pyg_dense.T, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(g.in_degree(weighted=False)), degree(data.edge_index[1], n).numpy())
    np.testing.assert_array_equal(np.asarray(g.out_degree(weighted=False)), degree(data.edge_index[0], n).numpy())
    # Message passing in PyG's default flow: out[target] += w * x[source].
    x = data.x.float()
    source, target = data.edge_index
    expected = scatter(x[source] * data.edge_weight[:, None], target, dim=0, dim_size=n, reduce="sum").numpy()
    out = jgrad.ops.spmm(g, jnp.asarray(x.numpy()), g.edge_weight)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-6)


def test_pyg_round_trip_keeps_edge_index_weights_num_nodes_and_x(pyg):
    torch, Data = pyg.torch, pyg.Data
    data = _data(pyg, 1)
    back = to_pyg(from_pyg(data), data.x)
    assert isinstance(back, Data) and back.num_nodes == data.num_nodes
    assert back.edge_index.dtype == torch.int64
    assert torch.equal(back.edge_index, data.edge_index)
    assert torch.equal(back.edge_weight, data.edge_weight)
    assert torch.equal(back.x, data.x)


def test_pyg_edge_attr_as_weights_and_unweighted_graphs(pyg):
    torch = pyg.torch
    data = _data(pyg, 2, weighted=False)
    assert not from_pyg(data).is_weighted
    data.edge_attr = torch.rand(data.num_edges, 2)
    g = from_pyg(data, edge_weight="edge_attr")
    assert g.edge_weight.shape == (data.num_edges, 2)
    back = to_pyg(g, edge_weight="edge_attr")
    assert torch.equal(back.edge_attr, data.edge_attr) and "edge_weight" not in back
    assert not from_pyg(data, edge_weight=None).is_weighted


def test_from_pyg_refuses_categorical_integer_edge_attr(pyg):
    torch = pyg.torch
    data = _data(pyg, 3, weighted=False)
    data.edge_attr = torch.zeros(data.num_edges, dtype=torch.long)
    with pytest.raises(TypeError, match=r"edge_weight must have a floating-point dtype; got int64"):
        from_pyg(data, edge_weight="edge_attr")


def test_from_pyg_infers_num_nodes_when_pyg_has_none_set(pyg):
    torch, Data = pyg.torch, pyg.Data
    data = Data(edge_index=torch.tensor([[0, 4], [1, 0]]))
    assert from_pyg(data).n_nodes == 5


def test_pyg_batch_becomes_a_jgrad_batch_and_back(pyg):
    torch, Batch = pyg.torch, pyg.Batch
    parts = [_data(pyg, 4, n=3, e=4), _data(pyg, 5, n=5, e=6)]
    pyg_batch = Batch.from_data_list(parts)
    g = from_pyg(pyg_batch)
    expected = jgrad.batch([from_pyg(d) for d in parts])
    for name in ("senders", "receivers", "edge_weight", "n_node_per_graph", "n_edge_per_graph"):
        np.testing.assert_array_equal(getattr(g, name), getattr(expected, name))
    back = to_pyg(g, pyg_batch.x)
    assert isinstance(back, Batch) and back.num_graphs == 2
    for original, restored in zip(parts, back.to_data_list()):
        assert torch.equal(restored.edge_index, original.edge_index)
        assert torch.equal(restored.edge_weight, original.edge_weight)
        assert torch.equal(restored.x, original.x)


def test_to_pyg_of_a_padded_batch_drops_the_padding_graph_and_its_rows(pyg):
    torch = pyg.torch
    parts = [_data(pyg, 6, n=3, e=2), _data(pyg, 7, n=2, e=3)]
    padded = jgrad.pad(jgrad.batch([from_pyg(d) for d in parts]), n_nodes=8, n_edges=9)
    x = np.concatenate([parts[0].x.numpy(), parts[1].x.numpy(), np.zeros((3, 3))])
    back = to_pyg(padded, x)
    assert back.num_graphs == 2 and back.num_nodes == 5 and back.num_edges == 5
    assert torch.equal(back.to_data_list()[1].x, parts[1].x)


def test_to_pyg_checks_the_rows_of_x(pyg):
    with pytest.raises(ValueError, match=r"to_pyg: x must have one row per node; got shape \(2, 3\), "
                                         r"expected \(6, \.\.\.\)\."):
        to_pyg(from_pyg(_data(pyg)), np.zeros((2, 3)))


def test_importing_jgrad_graph_imports_neither_torch_nor_jraph():
    code = ("import sys, jgrad.graph; "
            "print(sorted(m for m in ('torch', 'torch_geometric', 'jraph') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_from_pyg_without_edge_index_says_so(pyg):
    torch, Data = pyg.torch, pyg.Data
    with pytest.raises(ValueError, match=r"^from_pyg: data has no edge_index; got None, expected a \(2, E\) integer "
                                         r"tensor\.$"):
        from_pyg(Data(x=torch.zeros(3, 1)))
