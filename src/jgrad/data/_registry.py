"""`load`: the datasets that ship with jgrad, by name, from pickle-free compressed arrays.

Each dataset is one ``.npz`` file in ``jgrad/data/datasets/`` (written by ``python -m jgrad.data.convert``
from the original releases, read with ``allow_pickle=False``), with the license notice of its source
beside it. Two kinds of file:

- **planetoid** (``cora``, ``citeseer``): the graph exactly as `load_planetoid` builds it from the
  Planetoid release (features as a CSR matrix of the raw values, labels, the undirected pairs of the
  symmetrised edge list, and the node ids of the public split).
- **npz** (``cora_npz``, ``citeseer_npz``, ``cora_ml``, ``polblogs``): the graphs published with Nettack
  and Metattack, stored as released (the adjacency CSR with its directions, repeats, weights and self
  loops; attribute CSR; labels); `load` applies the literature's preprocessing.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import types
from pathlib import Path
from typing import Any

import numpy as np

from jgrad.graph import Graph

from ._dataset import NodeDataset, symmetric_edges
from ._karate import karate_club
from ._planetoid import PLANETOID_NAMES
from ._preprocess import largest_component as restrict_to_largest_component
from ._preprocess import normalize_rows, random_split_masks, undirected_pairs
from ._store import read_npz

FILES_DIR = "datasets"
_SPLITS = ("public", "random")


@dataclasses.dataclass(frozen=True)
class _Entry:
    kind: str  # "planetoid" | "npz" | "karate"
    summary: str
    file: str | None = None


_ENTRIES = {
    "cora": _Entry(
        "planetoid",
        "Cora citations (Planetoid release, MIT, Yang et al. 2016): N=2708, F=1433 words, 7 classes, "
        "10556 directed edges; public split 140/500/1000.",
        "cora.npz",
    ),
    "citeseer": _Entry(
        "planetoid",
        "Citeseer citations (Planetoid release, MIT, Yang et al. 2016): N=3327, F=3703 words, 6 classes, "
        "9104 directed edges; public split 120/500/1000.",
        "citeseer.npz",
    ),
    "cora_npz": _Entry(
        "npz",
        "Cora as published with Nettack/Metattack (MIT, Zuegner 2019): largest component N=2485, 5069 "
        "undirected edges, F=1433, 7 classes; seeded 10/10/80 stratified split.",
        "cora_npz.npz",
    ),
    "citeseer_npz": _Entry(
        "npz",
        "Citeseer as published with Nettack/Metattack (MIT, Zuegner 2019): largest component N=2110, "
        "3668 undirected edges, F=3703, 6 classes; seeded 10/10/80 stratified split.",
        "citeseer_npz.npz",
    ),
    "cora_ml": _Entry(
        "npz",
        "Cora-ML (Nettack/Metattack release, MIT, Zuegner 2019): largest component N=2810, 7981 "
        "undirected edges, F=2879, 7 classes; seeded 10/10/80 stratified split.",
        "cora_ml.npz",
    ),
    "polblogs": _Entry(
        "npz",
        "Political blogs (Nettack/Metattack release, MIT, Zuegner 2019): largest component N=1222, "
        "16714 undirected edges, no attributes (identity features), 2 classes; seeded 10/10/80 "
        "stratified split.",
        "polblogs.npz",
    ),
    "karate": _Entry("karate", "Zachary's karate club: N=34, 78 friendships, identity features, 2 factions."),
}

DATASETS: types.MappingProxyType[str, str] = types.MappingProxyType(
    {name: entry.summary for name, entry in _ENTRIES.items()}
)
"""Every name `load` accepts -> a one-line description (source, license, size, default split)."""


def load(
    name: str,
    *,
    normalize_features: bool = True,
    largest_component: bool | None = None,
    split: str | None = None,
    seed: int = 0,
    train: float = 0.1,
    val: float = 0.1,
) -> NodeDataset:
    """Loads a dataset that ships with jgrad (no files, settings or downloads needed).

    ``jgrad.data.DATASETS`` lists the names with a one-line description each:

    - ``"cora"``, ``"citeseer"``: the Planetoid citation graphs with the public split, identical to
      ``load_planetoid(name, root)`` on the original files (see `load_planetoid` for the processing).
    - ``"cora_npz"``, ``"citeseer_npz"``, ``"cora_ml"``, ``"polblogs"``: the graphs of the
      adversarial-robustness literature (Nettack, Metattack, Pro-GNN). As there, the adjacency is
      symmetrised, binarised (repeats and weights become one unweighted edge) and stripped of self loops,
      and by default only the largest connected component is kept: Cora 2485 nodes / 5069 undirected
      edges, Citeseer 2110 / 3668, Cora-ML 2810 / 7981, Polblogs 1222 / 16714. They have no standard
      split, so the default one is random and stratified: per class, 10% train, 10% validation, the
      rest test, drawn from ``numpy.random.default_rng(seed)`` (see `random_split_masks`). Polblogs has
      no attributes; its features are the identity matrix, shape (N, N).
    - ``"karate"``: `karate_club` (its own split; the options below other than ``split="random"``
      have no effect on it).

    Args:
      name: a key of `DATASETS` (any case).
      normalize_features: divide each feature row by its sum (the default; zero rows stay zero) or keep
        the raw values (binary words for Cora and Citeseer, the published values for Cora-ML).
      largest_component: keep only the largest connected component, with node order, features, labels
        and masks carried over. Default: True for the ``npz`` graphs, False otherwise.
      split: ``"public"`` (the standard split; only Planetoid and karate have one) or ``"random"`` (the
        seeded stratified split above). Default: ``"public"`` where one exists, else ``"random"``.
      seed: the seed of the random split.
      train: fraction of each class in the random training set.
      val: fraction of each class in the random validation set; the rest is the test set.

    Returns:
      A `NodeDataset` of numpy arrays: float32 features (N, F), int32 labels (N,), bool masks (N,), an
      unweighted symmetric graph without self loops, edges sorted by receiver, then sender.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones; for ``"pubmed"``, whose files do
        not ship, it says to call `load_planetoid` with the folder of its files), an unknown ``split``, a
        public split requested where none exists, or invalid fractions.

    Example:
      >>> from jgrad.data import load
      >>> cora = load("cora")
      >>> cora.graph.n_nodes, cora.n_features, cora.n_classes
      (2708, 1433, 7)
      >>> load("polblogs").graph.n_nodes
      1222
    """
    return load_from(None, name, normalize_features=normalize_features, largest_component=largest_component,
                     split=split, seed=seed, train=train, val=val)


def load_from(folder: Any, name: str, *, normalize_features: bool = True, largest_component: bool | None = None,
              split: str | None = None, seed: int = 0, train: float = 0.1, val: float = 0.1) -> NodeDataset:
    """`load` reading the ``.npz`` files from ``folder`` (a path; None: the package's own files)."""
    key = name.lower() if isinstance(name, str) else name
    if key in PLANETOID_NAMES and key not in _ENTRIES:
        raise ValueError(f"load: {key} does not ship with jgrad; read it from the Planetoid files with "
                         f"jgrad.data.load_planetoid({key!r}, root), root being a folder holding ind.{key}.x, .y, "
                         ".tx, .ty, .allx, .ally, .graph and .test.index (or set JGRAD_DATA and omit root).")
    if key not in _ENTRIES:
        raise ValueError(f"load: unknown dataset name; got {name!r}, expected one of {', '.join(_ENTRIES)}.")
    entry = _ENTRIES[key]
    if split is not None and split not in _SPLITS:
        raise ValueError(f"load: unknown split; got {split!r}, expected one of {', '.join(_SPLITS)} or None.")
    if split == "public" and entry.kind == "npz":
        raise ValueError(
            f"load: {key} has no public split; got split='public', expected 'random' or None "
            f"(a seeded stratified split of {train:g}/{val:g}/rest per class)."
        )
    if entry.kind == "karate":
        dataset = karate_club()
    else:
        files = importlib.resources.files(__package__).joinpath(FILES_DIR) if folder is None else Path(folder)
        arrays = read_npz(files.joinpath(entry.file))
        build = _planetoid_dataset if entry.kind == "planetoid" else _npz_dataset
        dataset = build(arrays, key, normalize_features)
    if largest_component if largest_component is not None else entry.kind == "npz":
        dataset = restrict_to_largest_component(dataset)
        if entry.kind == "npz" and "features_indptr" not in arrays:  # identity features of the kept nodes
            dataset = dataclasses.replace(dataset, features=np.eye(dataset.n_nodes, dtype=np.float32))
    if split == "random" or (split is None and entry.kind == "npz"):
        masks = random_split_masks(np.asarray(dataset.labels), train=train, val=val, seed=seed)
        dataset = dataclasses.replace(dataset, train_mask=masks[0], val_mask=masks[1], test_mask=masks[2])
    return dataset


def csr_to_dense(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, shape: Any) -> np.ndarray:
    """A canonical CSR matrix (no repeated entries) as a dense float64 array of ``shape``."""
    n_rows, n_columns = (int(size) for size in shape)
    dense = np.zeros((n_rows, n_columns), dtype=np.float64)
    rows = np.repeat(np.arange(n_rows), np.diff(np.asarray(indptr, np.int64)))
    dense[rows, np.asarray(indices, np.int64)] = data
    return dense


def _features(arrays: dict[str, np.ndarray], n_nodes: int, normalize: bool) -> np.ndarray:
    if "features_indptr" in arrays:
        features = csr_to_dense(
            arrays["features_indptr"], arrays["features_indices"], arrays["features_data"], arrays["features_shape"]
        )
    else:  # Polblogs has no attributes: one-hot node identities.
        features = np.eye(n_nodes, dtype=np.float64)
    return (normalize_rows(features) if normalize else features).astype(np.float32)


def _mask(ids: np.ndarray, n_nodes: int) -> np.ndarray:
    mask = np.zeros(n_nodes, dtype=bool)
    mask[np.asarray(ids, np.int64)] = True
    return mask


def _planetoid_dataset(arrays: dict[str, np.ndarray], name: str, normalize: bool) -> NodeDataset:
    labels = arrays["labels"].astype(np.int32)
    n_nodes = labels.shape[0]
    pairs = arrays["pairs"].astype(np.int64)
    senders, receivers = symmetric_edges(pairs[:, 0], pairs[:, 1], n_nodes)
    return NodeDataset(
        graph=Graph.from_edges(senders, receivers, n_nodes),
        features=_features(arrays, n_nodes, normalize),
        labels=labels,
        train_mask=_mask(arrays["train_index"], n_nodes),
        val_mask=_mask(arrays["val_index"], n_nodes),
        test_mask=_mask(arrays["test_index"], n_nodes),
        n_classes=int(arrays["n_classes"]),
        name=name,
    )


def _npz_dataset(arrays: dict[str, np.ndarray], name: str, normalize: bool) -> NodeDataset:
    labels = arrays["labels"].astype(np.int32)
    n_nodes = labels.shape[0]
    indptr = arrays["adjacency_indptr"].astype(np.int64)
    rows = np.repeat(np.arange(n_nodes), np.diff(indptr))
    pairs = undirected_pairs(rows, arrays["adjacency_indices"], n_nodes)
    senders, receivers = symmetric_edges(pairs[:, 0], pairs[:, 1], n_nodes)
    empty = np.zeros(n_nodes, dtype=bool)
    return NodeDataset(
        graph=Graph.from_edges(senders, receivers, n_nodes),
        features=_features(arrays, n_nodes, normalize),
        labels=labels,
        train_mask=empty,
        val_mask=empty.copy(),
        test_mask=empty.copy(),
        n_classes=int(labels.max()) + 1,
        name=name,
    )
