"""jgrad.data.load: every shipped dataset by name, the literature's preprocessing, splits and the files."""

import importlib.resources
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jgrad.data import DATASETS, NodeDataset, largest_component, load, random_split_masks
from jgrad.data._store import read_npz, write_npz

ROOT = Path(__file__).resolve().parents[2]
FILES = importlib.resources.files("jgrad.data").joinpath("datasets")

# name: (nodes, undirected edges, features, classes, split sizes)
EXPECTED = {
    "cora": (2708, 5278, 1433, 7, (140, 500, 1000)),
    "citeseer": (3327, 4552, 3703, 6, (120, 500, 1000)),
    "cora_npz": (2485, 5069, 1433, 7, (248, 248, 1989)),
    "citeseer_npz": (2110, 3668, 3703, 6, (211, 211, 1688)),
    "cora_ml": (2810, 7981, 2879, 7, (281, 281, 2248)),
    "polblogs": (1222, 16714, 1222, 2, (123, 123, 976)),
    "karate": (34, 78, 34, 2, (2, 0, 32)),
}


@pytest.fixture(scope="module")
def datasets() -> dict[str, NodeDataset]:
    return {name: load(name) for name in EXPECTED}


def test_every_listed_name_is_tested_and_described():
    assert list(DATASETS) == list(EXPECTED)
    assert all(isinstance(text, str) and text for text in DATASETS.values())


@pytest.mark.parametrize("name", list(EXPECTED))
def test_counts_and_default_split(datasets, name):
    n_nodes, n_pairs, n_features, n_classes, split = EXPECTED[name]
    data = datasets[name]
    assert data.name == name and data.n_nodes == n_nodes and data.n_classes == n_classes
    assert data.features.shape == (n_nodes, n_features) and data.features.dtype == np.float32
    assert data.labels.dtype == np.int32 and set(np.unique(data.labels)) == set(range(n_classes))
    assert data.graph.n_edges == 2 * n_pairs and data.graph.edge_weight is None
    masks = np.stack([data.train_mask, data.val_mask, data.test_mask])
    assert tuple(masks.sum(axis=1).tolist()) == split
    assert masks.sum(axis=0).max() == 1  # disjoint


@pytest.mark.parametrize("name", list(EXPECTED))
def test_graph_is_symmetric_without_self_loops_or_repeats(datasets, name):
    graph = datasets[name].graph
    senders, receivers = np.asarray(graph.senders), np.asarray(graph.receivers)
    edges = set(zip(senders.tolist(), receivers.tolist()))
    assert len(edges) == graph.n_edges and not (senders == receivers).any()
    assert edges == {(v, u) for u, v in edges}
    assert (np.diff(receivers.astype(np.int64) * graph.n_nodes + senders) > 0).all()  # sorted by receiver


@pytest.mark.parametrize("name", ["cora_npz", "citeseer_npz", "cora_ml", "polblogs"])
def test_npz_graphs_are_one_connected_component(datasets, name):
    data = datasets[name]
    assert largest_component(data).n_nodes == data.n_nodes


@pytest.mark.parametrize("name, n_nodes", [("cora_npz", 2708), ("citeseer_npz", 3312), ("cora_ml", 2995),
                                           ("polblogs", 1490)])
def test_npz_graphs_without_the_component_step_keep_every_published_node(name, n_nodes):
    data = load(name, largest_component=False, normalize_features=False)
    assert data.n_nodes == n_nodes and data.features.shape[0] == n_nodes
    senders, receivers = np.asarray(data.graph.senders), np.asarray(data.graph.receivers)
    assert not (senders == receivers).any()


def test_polblogs_features_are_the_identity(datasets):
    np.testing.assert_array_equal(datasets["polblogs"].features, np.eye(1222, dtype=np.float32))
    assert load("polblogs", largest_component=False).features.shape == (1490, 1490)


@pytest.mark.parametrize("name", ["cora", "cora_npz", "citeseer_npz"])
def test_raw_features_are_binary_words_that_normalise_to_the_default(datasets, name):
    raw = load(name, normalize_features=False).features
    assert set(np.unique(raw).tolist()) == {0.0, 1.0}
    row_sum = raw.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.divide(raw, row_sum, where=row_sum > 0, out=np.zeros_like(raw)),
                               datasets[name].features, rtol=1e-6)


def test_random_split_is_stratified_seeded_and_covers_every_node(datasets):
    data = datasets["cora_ml"]
    labels = np.asarray(data.labels)
    for label in range(data.n_classes):
        members = labels == label
        assert int((data.train_mask & members).sum()) == round(0.1 * members.sum())
        assert int((data.val_mask & members).sum()) == round(0.1 * members.sum())
    assert (data.train_mask | data.val_mask | data.test_mask).all()
    again, other = load("cora_ml", seed=0), load("cora_ml", seed=1)
    np.testing.assert_array_equal(again.train_mask, data.train_mask)
    assert (other.train_mask != data.train_mask).any()
    wider = load("cora_ml", train=0.2, val=0.3)
    assert int(wider.train_mask.sum()) in range(555, 570) and int(wider.val_mask.sum()) in range(835, 850)


def test_planetoid_can_be_split_at_random_or_cut_to_its_largest_component():
    data = load("cora", split="random", seed=3)
    assert int(data.train_mask.sum()) == sum(round(0.1 * c) for c in np.bincount(data.labels))
    lcc = load("cora", largest_component=True)
    assert (lcc.n_nodes, lcc.graph.n_edges // 2) == (2485, 5069)
    assert int(lcc.train_mask.sum()) < 140  # the public split, restricted to the kept nodes


def test_random_split_masks_refuses_bad_fractions():
    with pytest.raises(ValueError, match=r"random_split: the fractions are invalid; got train=0.6, val=0.5"):
        random_split_masks(np.zeros(10, np.int64), train=0.6, val=0.5, seed=0)


def test_bad_names_and_options_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"load: unknown dataset name; got 'reddit', expected one of cora, citeseer, "
                                         r"cora_npz, citeseer_npz, cora_ml, polblogs, karate\."):
        load("reddit")
    with pytest.raises(ValueError, match=r"load: unknown split; got 'full', expected one of public, random or None"):
        load("cora", split="full")
    with pytest.raises(ValueError, match=r"load: polblogs has no public split; got split='public'"):
        load("polblogs", split="public")
    assert load("CORA").name == "cora"


def test_shipped_files_are_numeric_arrays_with_their_licenses_beside_them():
    for name in EXPECTED:
        if name == "karate":
            continue
        arrays = read_npz(FILES.joinpath(f"{name}.npz"))
        assert all(array.dtype.kind in "biuf" for array in arrays.values()), name
    planetoid = FILES.joinpath("LICENSE-planetoid.txt").read_text()
    npz = FILES.joinpath("LICENSE-npz.txt").read_text(encoding="utf-8")
    assert "Copyright (c) 2016 Zhilin Yang" in planetoid and "MIT License" in planetoid
    assert "Copyright (c) 2019 Daniel Zügner, Technical University of Munich" in npz and "MIT License" in npz
    total = sum(FILES.joinpath(f"{name}.npz").stat().st_size for name in EXPECTED if name != "karate")
    assert total < 4 * 2**20


def test_npz_writer_is_byte_reproducible_and_pickle_free(tmp_path):
    arrays = {"b": np.arange(5, dtype=np.uint16), "a": np.eye(3), "n": np.asarray(7)}
    write_npz(tmp_path / "one.npz", arrays)
    write_npz(tmp_path / "two.npz", dict(reversed(arrays.items())))
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    loaded = read_npz(tmp_path / "one.npz")
    assert loaded["n"].shape == () and int(loaded["n"]) == 7
    np.testing.assert_array_equal(loaded["a"], np.eye(3))
    with pytest.raises(TypeError, match="write_npz: bad has an object dtype"):
        write_npz(tmp_path / "three.npz", {"bad": np.array([None])})


def test_importing_jgrad_data_does_not_import_scipy():
    code = "import sys, jgrad.data; print('scipy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr


def _structure_attack_module(monkeypatch):
    spec = importlib.util.spec_from_file_location("structure_attack", ROOT / "experiments" / "structure_attack.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_config_resolves_its_dataset_without_settings(path, monkeypatch):
    monkeypatch.delenv("JGRAD_DATA", raising=False)
    if "attack" in path.read_text():
        module = _structure_attack_module(monkeypatch)
        dataset = module.load_dataset(module.load_config(str(path), []))
    else:
        from jgrad.config import load_config
        from jgrad.train import load_dataset

        dataset = load_dataset(load_config(path).data)
    assert isinstance(dataset, NodeDataset) and dataset.n_nodes > 0 and dataset.train_mask.any()


def test_the_converter_rebuilds_the_shipped_files_byte_for_byte(planetoid_dir, tmp_path, capsys):
    from jgrad.data import convert

    source = tmp_path / "source"
    (source / "npz").mkdir(parents=True)
    (source / "planetoid").symlink_to(planetoid_dir)  # Planetoid-format files written from the shipped data
    license_text = FILES.joinpath("LICENSE-npz.txt").read_bytes()[len(convert.NPZ_LICENSE_HEADER.encode()):]
    (source / "npz" / "LICENSE").write_bytes(license_text)
    for original, name in convert.NPZ.items():  # the published layout: adj_* and attr_* CSR arrays, labels
        arrays = read_npz(FILES.joinpath(f"{name}.npz"))
        published = {key.replace("adjacency_", "adj_").replace("features_", "attr_"): value.astype(np.int64)
                     if key.endswith(("indices", "indptr")) else value for key, value in arrays.items()}
        np.savez(source / "npz" / f"{original}.npz", **published)

    assert convert.main([str(source), "--out", str(FILES), "--check"]) == 0
    assert capsys.readouterr().out.count(" same") == 8
    assert convert.main([str(source), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "cora.npz").read_bytes() == FILES.joinpath("cora.npz").read_bytes()


@pytest.mark.parametrize("name", ["cora_npz", "polblogs"])
def test_a_config_selects_a_shipped_robustness_graph_and_its_split_seed(name):
    from jgrad.config import load_config
    from jgrad.train import load_dataset

    first = load_dataset(load_config(ROOT / "configs" / "gcn_karate_tiny.yaml", [f"data.name={name}"]).data)
    other = load_dataset(load_config(ROOT / "configs" / "gcn_karate_tiny.yaml",
                                     [f"data.name={name}", "data.seed=1"]).data)
    expected = load(name)
    assert first.n_nodes == expected.n_nodes and (first.train_mask == expected.train_mask).all()
    assert (other.train_mask != first.train_mask).any()


def test_pubmed_which_does_not_ship_names_load_planetoid_and_its_files():
    from jgrad.data import PLANETOID_NAMES

    assert "pubmed" in PLANETOID_NAMES and "pubmed" not in DATASETS
    with pytest.raises(ValueError) as error:
        load("PubMed")
    assert str(error.value) == (
        "load: pubmed does not ship with jgrad; read it from the Planetoid files with "
        "jgrad.data.load_planetoid('pubmed', root), root being a folder holding ind.pubmed.x, .y, .tx, .ty, "
        ".allx, .ally, .graph and .test.index (or set JGRAD_DATA and omit root).")
