"""The Planetoid citation datasets (Cora, Citeseer, Pubmed) from their original ``ind.<name>.*`` files."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jgrad.graph import Graph

from ._dataset import NodeDataset, symmetric_edges
from ._preprocess import normalize_rows
from ._safe_pickle import ForbiddenGlobalError, PickleLimitError, load_restricted

PLANETOID_NAMES = ("cora", "citeseer", "pubmed")
_PICKLED_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph")
_N_VAL = 500
_ENV_VAR = "JGRAD_DATA"
_MAX_TEST_INDEX_BYTES = 2**26
MAX_DENSE_BYTES = 2**30  # the largest float64 feature or label matrix the files may declare (Pubmed: 79 MB)


class PlanetoidArrays(NamedTuple):
    """Everything `load_planetoid` builds, as numpy arrays, before the `Graph` is made."""

    senders: np.ndarray  # (E,) int32
    receivers: np.ndarray  # (E,) int32
    n_nodes: int
    features: np.ndarray  # (N, F) float64, raw values as in the files
    labels: np.ndarray  # (N,) int32
    train_mask: np.ndarray  # (N,) bool
    val_mask: np.ndarray  # (N,) bool
    test_mask: np.ndarray  # (N,) bool
    n_classes: int


def load_planetoid(name: str, root: str | os.PathLike | None = None, *,
                   normalize_features: bool = True) -> NodeDataset:
    """Loads Cora, Citeseer or Pubmed with the public Planetoid split.

    Reads the eight files ``ind.<name>.{x,y,tx,ty,allx,ally,graph,test.index}`` of the Planetoid release
    and processes them as Kipf and Welling's GCN code does:

    - **Nodes**: the ``len(allx)`` labelled-or-unlabelled training nodes come first, then the test nodes,
      ``N = max(len(allx), max(test.index) + 1)``. Node ``v < len(allx)`` has features ``allx[v]`` and the
      label ``argmax(ally[v])``; node ``test.index[i]`` has ``tx[i]`` and ``argmax(ty[i])``. Nodes that
      are in neither (Citeseer's 15 isolated nodes inside the test range) get zero features and label 0;
      they are in no split. Label rows must be one-hot (0s and a single 1); an all-zero row is accepted
      only in ``ally`` past the training and validation rows (an unlabelled node, in no split; label 0).
    - **Features**: dense float32, each row divided by its sum so that it sums to 1; zero rows stay zero.
      With ``normalize_features=False`` they are the raw (binary bag-of-words for Cora and Citeseer) values,
      as the Metattack and Pro-GNN attack code uses them.
    - **Edges**: every ``u: [v, ...]`` entry of the adjacency dict gives ``u -> v``; the reverse of every
      edge is added, self loops are dropped and duplicates merged, as PyTorch Geometric does. The graph is
      symmetric and unweighted, with edges sorted by receiver, then sender. This gives 10556 directed
      edges (5278 pairs) for Cora and 9104 (4552 pairs) for Citeseer, whose lists also hold 124 self loops.
    - **Split** (the public one): train on nodes ``range(len(y))`` (20 per class: 140 for Cora, 120 for
      Citeseer, 60 for Pubmed), validate on the next 500, test on the 1000 nodes of ``test.index``.

    The pickles are read with a restricted unpickler that only admits numpy and scipy array types and
    builtin containers, so a tampered file cannot run code, and whose cost is bounded (see
    `PickleLimits`). Sizes declared by one file are checked against the others before anything of that
    size is built: ``test.index`` may leave at most one unlisted node per test node, and the dense
    feature and label matrices may take at most `MAX_DENSE_BYTES` (1 GiB) as float64. NaN or infinite
    features and malformed label rows are refused. Sparse feature files need scipy.

    Args:
      name: ``"cora"``, ``"citeseer"`` or ``"pubmed"`` (any case).
      root: the folder holding the files. Defaults to the ``JGRAD_DATA`` environment variable. If the
        files are not in the folder itself but in its ``planetoid`` subfolder, that is used.
      normalize_features: divide each feature row by its sum (the default) or keep the raw values.

    Returns:
      A `NodeDataset` of numpy arrays: Cora has N=2708, F=1433, 7 classes; Citeseer N=3327, F=3703,
      6 classes; Pubmed N=19717, F=500, 3 classes.

    Raises:
      ValueError: for an unknown ``name``, or a file that is truncated, corrupted, inconsistent with the
        others, declares sizes beyond the bounds above, or holds non-finite features or non-one-hot labels
        (the message names the file, row and what is wrong).
      FileNotFoundError: if neither ``root`` nor ``JGRAD_DATA`` is given, or a file is missing.
      pickle.UnpicklingError: (`ForbiddenGlobalError`) if a file asks to load anything beyond array types,
        or (`PickleLimitError`) if a pickle exceeds `PickleLimits` (size, arrays, nesting, shared containers).
    """
    key = _check_name(name)
    arrays = _planetoid_arrays(_planetoid_dir(key, root), key)
    features = arrays.features
    if normalize_features:
        features = normalize_rows(features)
    return NodeDataset(
        graph=Graph.from_edges(arrays.senders, arrays.receivers, arrays.n_nodes),
        features=features.astype(np.float32),
        labels=arrays.labels,
        train_mask=arrays.train_mask,
        val_mask=arrays.val_mask,
        test_mask=arrays.test_mask,
        n_classes=arrays.n_classes,
        name=key,
    )


def _check_name(name: Any) -> str:
    key = name.lower() if isinstance(name, str) else name
    if key not in PLANETOID_NAMES:
        raise ValueError(f"load_planetoid: unknown dataset name; got {name!r}, expected one of {PLANETOID_NAMES}.")
    return key


def _planetoid_dir(name: str, root: str | os.PathLike | None) -> Path:
    key = _check_name(name)
    if root is None:
        env = os.environ.get(_ENV_VAR)
        if not env:
            raise FileNotFoundError(
                f"load_planetoid: no data folder for {key!r}; pass root=... or set the {_ENV_VAR} environment "
                f"variable to the folder holding ind.{key}.x and the other Planetoid files."
            )
        origin, folder = _ENV_VAR, Path(env).expanduser()
    else:
        origin, folder = "root", Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"load_planetoid: {origin} is not a folder; got {str(folder)!r}.")
    if not (folder / f"ind.{key}.x").exists() and (folder / "planetoid" / f"ind.{key}.x").exists():
        folder = folder / "planetoid"
    return folder


def check_planetoid_folder(name: str, root: str | os.PathLike | None = None) -> Path:
    """The folder `load_planetoid` would read ``name`` from, once it is known to hold the eight files;
    raises the errors `load_planetoid` raises for a missing folder or file, without reading anything."""
    key = _check_name(name)
    folder = _planetoid_dir(key, root)
    for part in (*_PICKLED_PARTS, "test.index"):
        _require_file(folder / f"ind.{key}.{part}", key)
    return folder


def _planetoid_arrays(folder: Path, name: str) -> PlanetoidArrays:
    """Reads and processes the files of dataset ``name`` in ``folder`` (see `load_planetoid`)."""
    folder = Path(folder)
    raw = {part: _read_pickle(folder / f"ind.{name}.{part}", name) for part in _PICKLED_PARTS}
    test_index = _read_test_index(folder / f"ind.{name}.test.index", name)
    names = {part: f"ind.{name}.{part}" for part in (*_PICKLED_PARTS, "test.index")}

    x, tx, allx = (_feature_matrix(raw[part], names[part]) for part in ("x", "tx", "allx"))
    y, ty, ally = (_as_one_hot(raw[part], names[part]) for part in ("y", "ty", "ally"))
    adjacency = raw["graph"]
    if not isinstance(adjacency, Mapping):
        raise ValueError(f"load_planetoid: {names['graph']} is not an adjacency dict; got {type(adjacency).__name__}.")

    n_labelled, n_features, n_classes = allx.shape[0], allx.shape[1], ally.shape[1]
    problems = []

    def expect(ok: bool, file: str, what: str) -> None:
        if not ok:
            problems.append(f"load_planetoid: {file} does not match the other files; {what}.")

    expect(x.shape[1] == n_features, names["x"], f"got {x.shape[1]} features, expected {n_features} as in allx")
    expect(tx.shape[1] == n_features, names["tx"], f"got {tx.shape[1]} features, expected {n_features} as in allx")
    expect(x.shape[0] == y.shape[0], names["y"], f"got {y.shape[0]} rows, expected {x.shape[0]} as in x")
    expect(ally.shape[0] == n_labelled, names["ally"], f"got {ally.shape[0]} rows, expected {n_labelled} as in allx")
    expect(tx.shape[0] == ty.shape[0], names["ty"], f"got {ty.shape[0]} rows, expected {tx.shape[0]} as in tx")
    expect(
        tx.shape[0] == test_index.size,
        names["test.index"],
        f"got {test_index.size} indices, expected {tx.shape[0]}, one per row of tx",
    )
    expect(y.shape[1] == n_classes, names["y"], f"got {y.shape[1]} classes, expected {n_classes} as in ally")
    expect(ty.shape[1] == n_classes, names["ty"], f"got {ty.shape[1]} classes, expected {n_classes} as in ally")
    expect(
        y.shape[0] + _N_VAL <= n_labelled,
        names["allx"],
        f"got {n_labelled} rows, expected at least len(y) + {_N_VAL} = {y.shape[0] + _N_VAL} for the split",
    )
    if test_index.size:
        expect(
            test_index.min() >= n_labelled,
            names["test.index"],
            f"got index {int(test_index.min())}, expected test nodes to follow the {n_labelled} rows of allx",
        )
        expect(
            np.unique(test_index).size == test_index.size, names["test.index"], "got repeated indices, expected none"
        )
    if problems:
        raise ValueError("\n".join(problems))

    # Sizes are now known from the files' headers; bound them before allocating anything of that size.
    n_nodes = max(n_labelled, int(test_index.max()) + 1 if test_index.size else 0)
    n_unlisted = n_nodes - n_labelled - test_index.size  # nodes in neither allx nor test.index
    if n_unlisted > test_index.size:
        raise ValueError(
            f"load_planetoid: {names['test.index']} declares more nodes than the other files; got index "
            f"{int(test_index.max())}, which leaves {n_unlisted} nodes in no file, expected at most "
            f"{test_index.size} (one per test node; Citeseer has 15)."
        )
    if n_nodes * max(n_features, n_classes) * 8 > MAX_DENSE_BYTES:
        raise ValueError(
            f"load_planetoid: the files declare a matrix too large to build; got {n_nodes} nodes x "
            f"{max(n_features, n_classes)} columns, expected at most MAX_DENSE_BYTES={MAX_DENSE_BYTES} bytes "
            "as float64."
        )
    for part, matrix in (("x", x), ("tx", tx), ("allx", allx)):
        problems += _finite_problems(matrix, names[part])
    n_split = y.shape[0] + _N_VAL
    problems += _one_hot_problems(y, names["y"], y.shape[0])
    problems += _one_hot_problems(ty, names["ty"], ty.shape[0])
    problems += _one_hot_problems(ally, names["ally"], n_split)
    if problems:
        raise ValueError("\n".join(problems))

    features = np.zeros((n_nodes, n_features), dtype=np.float64)
    features[:n_labelled] = _dense(allx)
    features[test_index] = _dense(tx)
    one_hot = np.zeros((n_nodes, n_classes), dtype=ally.dtype)
    one_hot[:n_labelled] = ally
    one_hot[test_index] = ty
    labels = np.argmax(one_hot, axis=1).astype(np.int32) if n_classes else np.zeros(n_nodes, np.int32)

    train_mask = np.zeros(n_nodes, dtype=bool)
    train_mask[: y.shape[0]] = True
    val_mask = np.zeros(n_nodes, dtype=bool)
    val_mask[y.shape[0] : y.shape[0] + _N_VAL] = True
    test_mask = np.zeros(n_nodes, dtype=bool)
    test_mask[test_index] = True

    senders, receivers = _planetoid_edges(adjacency, n_nodes, names["graph"])
    return PlanetoidArrays(
        senders, receivers, n_nodes, features, labels, train_mask, val_mask, test_mask, int(n_classes)
    )


def _planetoid_edges(adjacency: Mapping[Any, Any], n_nodes: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Turns ``{u: [v, ...]}`` into a symmetric edge list without self loops or duplicates.

    Returns:
      ``(senders, receivers)``, int32 arrays of shape (E,), sorted by receiver, then sender.

    Raises:
      ValueError: if a node id is not an integer in ``[0, n_nodes)``; names ``source``.
    """
    try:
        counts = [len(neighbours) for neighbours in adjacency.values()]
        neighbours = list(itertools.chain.from_iterable(adjacency.values()))
    except TypeError:
        raise ValueError(
            f"load_planetoid: {source} is not an adjacency dict; expected {{node: [neighbour, ...]}} lists."
        ) from None
    for what, ids in (("node", adjacency.keys()), ("neighbour", neighbours)):
        for value in ids:  # checked before numpy sees them: nested lists could expand enormously
            if not isinstance(value, int):
                raise ValueError(
                    f"load_planetoid: {source} has a {what} id that is not an integer; got a {type(value).__name__}."
                )
    try:
        keys = np.asarray(list(adjacency.keys()), dtype=np.int64)
        targets = np.asarray(neighbours, dtype=np.int64)
    except OverflowError:
        raise ValueError(
            f"load_planetoid: {source} has an id out of range; got one beyond 64 bits, "
            f"expected 0 <= id < n_nodes={n_nodes}."
        ) from None
    problems = []
    for what, ids in (("node", keys), ("neighbour", targets)):
        if ids.size and (ids.min() < 0 or ids.max() >= n_nodes):
            bad = ids[(ids < 0) | (ids >= n_nodes)][0]
            problems.append(
                f"load_planetoid: {source} has a {what} id out of range; got {int(bad)}, "
                f"expected 0 <= id < n_nodes={n_nodes}."
            )
    if problems:
        raise ValueError("\n".join(problems))
    senders = np.repeat(keys.astype(np.int64), counts)
    receivers = targets.astype(np.int64)
    return symmetric_edges(senders, receivers, n_nodes)


def _require_file(path: Path, name: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"load_planetoid: {path.name} not found in {str(path.parent)!r}; the folder must hold the Planetoid "
            f"files ind.{name}.{{x,y,tx,ty,allx,ally,graph,test.index}}."
        )


def _read_pickle(path: Path, name: str) -> Any:
    _require_file(path, name)
    try:
        with path.open("rb") as file:
            value = load_restricted(file, source=path.name)
            trailing = file.read(1)
    except (ForbiddenGlobalError, PickleLimitError):
        raise
    except Exception as error:  # A damaged pickle can fail in many ways; all mean the same to the user.
        raise ValueError(
            f"load_planetoid: {path.name} is truncated or corrupted; unpickling it failed with "
            f"{type(error).__name__}: {error}. Replace {str(path)!r} with a fresh copy."
        ) from None
    if trailing:
        raise ValueError(
            f"load_planetoid: {path.name} is corrupted; it has data after the end of the pickle. "
            f"Replace {str(path)!r} with a fresh copy."
        )
    return value


def _read_test_index(path: Path, name: str) -> np.ndarray:
    _require_file(path, name)
    if path.stat().st_size > _MAX_TEST_INDEX_BYTES:
        raise ValueError(
            f"load_planetoid: {path.name} is too large for a list of test nodes; got {path.stat().st_size} bytes, "
            f"expected at most {_MAX_TEST_INDEX_BYTES}."
        )
    try:
        text = path.read_text(encoding="ascii")
    except (UnicodeDecodeError, OSError) as error:
        raise ValueError(f"load_planetoid: {path.name} is not a text file of integers ({error}).") from None
    values = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                values.append(int(line))
            except ValueError:
                raise ValueError(
                    f"load_planetoid: {path.name} line {line_number} is not an integer; got {line.strip()[:40]!r}."
                ) from None
    return np.asarray(values, dtype=np.int64)


def _feature_matrix(value: Any, source: str) -> Any:
    """A feature matrix (scipy CSR/CSC, checked, or a 2-D numeric numpy array), not yet densified."""
    if isinstance(value, np.ndarray):
        matrix, data = value, value
    elif hasattr(value, "check_format") and hasattr(value, "toarray"):  # only scipy sparse types can get here
        try:
            value.check_format(full_check=True)
        except Exception as error:
            raise ValueError(f"load_planetoid: {source} holds a damaged sparse matrix ({error}).") from None
        matrix, data = value, value.data
    else:
        raise ValueError(f"load_planetoid: {source} is not a feature matrix; got {type(value).__name__}.")
    if len(matrix.shape) != 2 or data.dtype.kind not in "biuf":
        raise ValueError(
            f"load_planetoid: {source} is not a 2-D numeric matrix; got shape {matrix.shape}, dtype {data.dtype}."
        )
    return matrix


def _dense(matrix: Any) -> np.ndarray:
    return (matrix if isinstance(matrix, np.ndarray) else matrix.toarray()).astype(np.float64, copy=False)


def _finite_problems(matrix: Any, source: str) -> list[str]:
    """NaN or infinite feature values, reported by row and column."""
    data = matrix if isinstance(matrix, np.ndarray) else matrix.data
    if data.dtype.kind != "f" or np.isfinite(data).all():
        return []
    if isinstance(matrix, np.ndarray):
        row, column = (int(i) for i in np.argwhere(~np.isfinite(matrix))[0])
    else:
        coo = matrix.tocoo()
        first = int(np.flatnonzero(~np.isfinite(coo.data))[0])
        row, column = int(coo.row[first]), int(coo.col[first])
        data = coo.data
    n_bad = int((~np.isfinite(data)).sum())
    return [
        f"load_planetoid: {source} has non-finite features; got {n_bad} NaN or infinite value(s), the first at "
        f"row {row}, column {column}, expected finite numbers."
    ]


def _one_hot_problems(one_hot: np.ndarray, source: str, n_labelled_rows: int) -> list[str]:
    """Rows that are not one-hot: values other than 0 and 1, several classes set, or (among the first
    ``n_labelled_rows`` rows, the ones a split uses) no class set."""
    problems = []
    not_binary = np.flatnonzero(((one_hot != 0) & (one_hot != 1)).any(axis=1))
    if not_binary.size:
        row = int(not_binary[0])
        problems.append(
            f"load_planetoid: {source} row {row} is not a one-hot label; got {one_hot[row].tolist()[:10]}, "
            f"expected 0s and one 1 ({not_binary.size} such row(s))."
        )
    counts = (one_hot != 0).sum(axis=1)
    several = np.flatnonzero(counts > 1)
    if several.size:
        row = int(several[0])
        problems.append(
            f"load_planetoid: {source} row {row} sets several classes; got {int(counts[row])} classes set, "
            f"expected exactly one ({several.size} such row(s))."
        )
    empty = np.flatnonzero(counts[:n_labelled_rows] == 0)
    if empty.size:
        row = int(empty[0])
        problems.append(
            f"load_planetoid: {source} row {row} sets no class but its node is in the split; got an all-zero "
            f"row, expected exactly one class ({empty.size} such row(s))."
        )
    return problems


def _as_one_hot(value: Any, source: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.dtype.kind not in "biuf":
        got = f"shape {value.shape}, dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
        raise ValueError(f"load_planetoid: {source} is not a 2-D one-hot label matrix; got {got}.")
    return value
