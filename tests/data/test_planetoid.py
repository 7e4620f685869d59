"""load_planetoid: Cora and Citeseer counts and splits, the processing rules, and clear file errors."""

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from jgrad.data import PLANETOID_NAMES, ForbiddenGlobalError, NodeDataset, load, load_planetoid
from jgrad.data._planetoid import _planetoid_arrays, _planetoid_edges
from jgrad.data._safe_pickle import load_restricted

_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")


@pytest.fixture(scope="module")
def cora(planetoid_dir) -> NodeDataset:
    return load_planetoid("cora", root=planetoid_dir)


@pytest.fixture(scope="module")
def citeseer(planetoid_dir) -> NodeDataset:
    return load_planetoid("Citeseer", root=planetoid_dir)


def _copy(planetoid_dir: Path, destination: Path, name: str = "cora") -> Path:
    for part in _PARTS:
        shutil.copy(planetoid_dir / f"ind.{name}.{part}", destination / f"ind.{name}.{part}")
    return destination


def _edge_set(data: NodeDataset) -> set[tuple[int, int]]:
    return set(zip(np.asarray(data.graph.senders).tolist(), np.asarray(data.graph.receivers).tolist()))


@pytest.mark.parametrize(
    "name, n_nodes, n_features, n_classes, n_edges, split",
    [("cora", 2708, 1433, 7, 10556, (140, 500, 1000)), ("citeseer", 3327, 3703, 6, 9104, (120, 500, 1000))],
)
def test_planetoid_counts_and_public_split(request, name, n_nodes, n_features, n_classes, n_edges, split):
    data = request.getfixturevalue(name)
    assert data.name == name
    assert data.graph.n_nodes == n_nodes
    assert data.features.shape == (n_nodes, n_features) and data.features.dtype == np.float32
    assert data.labels.shape == (n_nodes,) and data.labels.dtype == np.int32
    assert data.n_classes == n_classes
    assert data.graph.n_edges == n_edges
    assert data.graph.edge_weight is None
    masks = (data.train_mask, data.val_mask, data.test_mask)
    assert tuple(int(mask.sum()) for mask in masks) == split
    assert not (masks[0] & masks[1]).any() and not (masks[1] & masks[2]).any() and not (masks[0] & masks[2]).any()


def test_planetoid_train_split_has_20_nodes_per_class(cora, citeseer):
    for data in (cora, citeseer):
        assert np.bincount(data.labels[data.train_mask], minlength=data.n_classes).tolist() == [20] * data.n_classes
        assert np.flatnonzero(data.train_mask).tolist() == list(range(int(data.train_mask.sum())))


def test_cora_class_sizes_are_the_standard_ones(cora):
    assert np.bincount(cora.labels).tolist() == [351, 217, 418, 818, 426, 298, 180]


@pytest.mark.parametrize("name", ["cora", "citeseer"])
def test_planetoid_graph_is_symmetric_without_self_loops_or_duplicates(request, name):
    data = request.getfixturevalue(name)
    edges = _edge_set(data)
    assert len(edges) == data.graph.n_edges
    assert edges == {(v, u) for u, v in edges}
    assert all(u != v for u, v in edges)


@pytest.mark.parametrize("name", ["cora", "citeseer"])
def test_planetoid_features_are_row_normalised(request, name):
    features = request.getfixturevalue(name).features
    row_sum = features.sum(axis=1)
    nonzero = row_sum != 0
    np.testing.assert_allclose(row_sum[nonzero], 1.0, rtol=1e-5)
    assert (features >= 0).all()
    expected_zero_rows = 15 if name == "citeseer" else 0
    assert int((~nonzero).sum()) == expected_zero_rows


def test_planetoid_raw_features_are_the_binary_words_that_normalise_to_the_default(cora, planetoid_dir):
    raw = load_planetoid("cora", root=planetoid_dir, normalize_features=False).features
    assert raw.dtype == np.float32 and set(np.unique(raw)) == {0.0, 1.0}
    row_sum = raw.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(raw / row_sum, cora.features, rtol=1e-6)


def test_citeseer_isolated_test_range_nodes_get_zero_features_and_no_split(citeseer, planetoid_dir):
    test_index = np.loadtxt(planetoid_dir / "ind.citeseer.test.index", dtype=np.int64)
    gaps = np.setdiff1d(np.arange(test_index.min(), test_index.max() + 1), test_index)
    assert gaps.size == 15
    assert not citeseer.features[gaps].any()
    assert (citeseer.labels[gaps] == 0).all()
    in_split = citeseer.train_mask | citeseer.val_mask | citeseer.test_mask
    assert not in_split[gaps].any()
    np.testing.assert_array_equal(np.flatnonzero(citeseer.test_mask), np.sort(test_index))


def test_self_loops_in_the_adjacency_lists_are_dropped(citeseer, planetoid_dir):
    with (planetoid_dir / "ind.citeseer.graph").open("rb") as file:
        adjacency = load_restricted(file)
    assert sum(node in neighbours for node, neighbours in adjacency.items()) > 100
    senders, receivers = np.asarray(citeseer.graph.senders), np.asarray(citeseer.graph.receivers)
    assert not (senders == receivers).any()


@pytest.mark.parametrize("name", ["cora", "citeseer"])
@pytest.mark.parametrize("normalize", [True, False])
def test_planetoid_files_load_to_exactly_the_shipped_dataset(planetoid_dir, name, normalize):
    from_files = load_planetoid(name, root=planetoid_dir, normalize_features=normalize)
    shipped = load(name, normalize_features=normalize)
    for field in ("features", "labels", "train_mask", "val_mask", "test_mask"):
        np.testing.assert_array_equal(getattr(from_files, field), getattr(shipped, field), err_msg=field)
    np.testing.assert_array_equal(from_files.graph.senders, shipped.graph.senders)
    np.testing.assert_array_equal(from_files.graph.receivers, shipped.graph.receivers)
    assert (from_files.n_classes, from_files.name) == (shipped.n_classes, shipped.name)


def test_test_rows_follow_the_order_of_test_index(planetoid_dir, cora):
    with (planetoid_dir / "ind.cora.tx").open("rb") as file:
        tx = load_restricted(file).toarray()
    test_index = np.loadtxt(planetoid_dir / "ind.cora.test.index", dtype=np.int64)
    expected = tx / tx.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(cora.features[test_index], expected, rtol=1e-6)


def _write_toy_planetoid(folder: Path) -> dict:
    """A tiny Citeseer-like dataset: 502 allx rows, 3 test nodes 502, 503, 505 (504 is a gap), 3 classes."""
    import scipy.sparse as sparse
    rng = np.random.default_rng(0)
    n_labelled, n_features = 502, 4
    allx = rng.integers(0, 3, (n_labelled, n_features)).astype(np.float32)
    allx[7] = 0.0  # a featureless node stays zero after normalisation
    ally = np.eye(3, dtype=np.int32)[np.arange(n_labelled) % 3]
    tx = np.array([[1, 0, 0, 1], [0, 2, 0, 0], [0, 0, 3, 1]], dtype=np.float32)
    ty = np.eye(3, dtype=np.int32)[[2, 0, 1]]
    test_index = [505, 502, 503]
    graph = {0: [1, 1, 0, 505], 1: [0], 502: [503], 505: []}  # a duplicate, a self loop, one-sided entries
    values = {
        "x": sparse.csr_matrix(allx[:2]),
        "y": ally[:2],
        "tx": sparse.csr_matrix(tx),
        "ty": ty,
        "allx": sparse.csr_matrix(allx),
        "ally": ally,
        "graph": graph,
    }
    for part, value in values.items():
        (folder / f"ind.toy.{part}").write_bytes(pickle.dumps(value, protocol=4))
    (folder / "ind.toy.test.index").write_text("\n".join(map(str, test_index)) + "\n")
    return dict(allx=allx, ally=ally, tx=tx, ty=ty, test_index=test_index)


def test_processing_places_test_rows_and_fills_gaps(tmp_path):
    raw = _write_toy_planetoid(tmp_path)
    arrays = _planetoid_arrays(tmp_path, "toy")  # raw values; load_planetoid normalises the rows
    assert arrays.n_nodes == 506
    assert arrays.features.shape == (506, 4) and arrays.n_classes == 3
    np.testing.assert_allclose(arrays.features[505], raw["tx"][0])
    np.testing.assert_allclose(arrays.features[502], raw["tx"][1])
    np.testing.assert_allclose(arrays.features[503], raw["tx"][2])
    np.testing.assert_allclose(arrays.features[10], raw["allx"][10], rtol=1e-6)
    assert not arrays.features[504].any() and not arrays.features[7].any()
    assert arrays.labels[[505, 502, 503, 504]].tolist() == [2, 0, 1, 0]
    assert arrays.labels[:6].tolist() == [0, 1, 2, 0, 1, 2]
    assert np.flatnonzero(arrays.train_mask).tolist() == [0, 1]
    assert np.flatnonzero(arrays.val_mask).tolist() == list(range(2, 502))
    assert np.flatnonzero(arrays.test_mask).tolist() == [502, 503, 505]
    edges = list(zip(arrays.senders.tolist(), arrays.receivers.tolist()))
    assert edges == [(1, 0), (505, 0), (0, 1), (503, 502), (502, 503), (0, 505)]


def test_planetoid_edges_rejects_out_of_range_and_non_integer_ids():
    expected = r"ind.x.graph has a neighbour id out of range; got 9, expected 0 <= id < n_nodes=3"
    with pytest.raises(ValueError, match=expected):
        _planetoid_edges({0: [1, 9]}, 3, "ind.x.graph")
    with pytest.raises(ValueError, match="ind.x.graph has a node id that is not an integer"):
        _planetoid_edges({"a": [1]}, 3, "ind.x.graph")


def test_unknown_name_lists_the_valid_ones(planetoid_dir):
    expected = r"unknown dataset name; got 'coraa', expected one of \('cora', 'citeseer', 'pubmed'\)"
    with pytest.raises(ValueError, match=expected):
        load_planetoid("coraa", root=planetoid_dir)
    assert PLANETOID_NAMES == ("cora", "citeseer", "pubmed")


def test_root_defaults_to_jgrad_data(monkeypatch, planetoid_dir, cora):
    monkeypatch.setenv("JGRAD_DATA", str(planetoid_dir))
    data = load_planetoid("cora")
    assert data.graph.n_edges == cora.graph.n_edges


def test_a_planetoid_subfolder_of_root_is_found(tmp_path, planetoid_dir):
    (tmp_path / "planetoid").mkdir()
    _copy(planetoid_dir, tmp_path / "planetoid")
    assert load_planetoid("cora", root=tmp_path).graph.n_nodes == 2708


def test_missing_root_and_env_var_names_both(monkeypatch):
    monkeypatch.delenv("JGRAD_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=r"pass root=\.\.\. or set the JGRAD_DATA environment variable"):
        load_planetoid("cora")


def test_root_that_is_not_a_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="root is not a folder; got .*nowhere"):
        load_planetoid("cora", root=tmp_path / "nowhere")


def test_missing_file_is_named(tmp_path, planetoid_dir):
    _copy(planetoid_dir, tmp_path)
    (tmp_path / "ind.cora.ty").unlink()
    with pytest.raises(FileNotFoundError, match=r"ind.cora.ty not found in"):
        load_planetoid("cora", root=tmp_path)


@pytest.mark.parametrize("part", ["graph", "allx", "ty"])
def test_truncated_file_is_named_without_a_pickle_traceback(tmp_path, planetoid_dir, part):
    _copy(planetoid_dir, tmp_path)
    path = tmp_path / f"ind.cora.{part}"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"ind.cora.{part} is truncated or corrupted") as error:
        load_planetoid("cora", root=tmp_path)
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_garbage_and_trailing_bytes_are_reported(tmp_path, planetoid_dir):
    _copy(planetoid_dir, tmp_path)
    (tmp_path / "ind.cora.y").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="ind.cora.y is truncated or corrupted"):
        load_planetoid("cora", root=tmp_path)
    shutil.copy(planetoid_dir / "ind.cora.y", tmp_path / "ind.cora.y")
    with (tmp_path / "ind.cora.ally").open("ab") as file:
        file.write(b"extra")
    with pytest.raises(ValueError, match="ind.cora.ally is corrupted; it has data after the end of the pickle"):
        load_planetoid("cora", root=tmp_path)


def test_bad_test_index_line_is_named(tmp_path, planetoid_dir):
    _copy(planetoid_dir, tmp_path)
    (tmp_path / "ind.cora.test.index").write_text("1708\n17x9\n")
    with pytest.raises(ValueError, match=r"ind.cora.test.index line 2 is not an integer; got '17x9'"):
        load_planetoid("cora", root=tmp_path)


def test_inconsistent_files_are_named(tmp_path, planetoid_dir):
    _copy(planetoid_dir, tmp_path)
    shutil.copy(planetoid_dir / "ind.cora.y", tmp_path / "ind.cora.ty")
    with pytest.raises(ValueError, match=r"ind.cora.ty does not match the other files; got 140 rows, expected 1000"):
        load_planetoid("cora", root=tmp_path)


def test_malicious_graph_file_is_refused_through_the_loader(tmp_path, planetoid_dir):
    class RunsCommand:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    _copy(planetoid_dir, tmp_path)
    (tmp_path / "ind.cora.graph").write_bytes(pickle.dumps(RunsCommand(), protocol=2))
    with pytest.raises(ForbiddenGlobalError, match=r"refusing to load '.*system' from ind.cora.graph"):
        load_planetoid("cora", root=tmp_path)
    assert not (tmp_path / "pwned").exists()
