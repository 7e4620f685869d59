"""Converts the original dataset releases into the pickle-free files that ship with jgrad.

Usage::

    python -m jgrad.data.convert SOURCE [--out DIR] [--check]

``SOURCE`` holds ``planetoid/`` (the Planetoid files ``ind.{cora,citeseer}.*``) and ``npz/`` (``cora.npz``,
``citeseer.npz``, ``cora_ml.npz``, ``polblogs.npz`` and their ``LICENSE``). The Planetoid pickles are read
with the restricted unpickler of `load_planetoid`, the ``.npz`` files with ``allow_pickle=False`` (their
pickled name tables are never opened). ``--out`` defaults to the package's ``jgrad/data/datasets``. The
output depends only on the inputs, so a rerun gives byte-identical files; ``--check`` rebuilds them in
memory and reports any file that differs from the one in ``--out`` instead of writing.

Every converted dataset is read back through `jgrad.data.load` and compared with a load from the original
files before anything is written.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np

from ._planetoid import _planetoid_arrays
from ._preprocess import undirected_pairs
from ._store import smallest_uint, write_npz

PLANETOID = ("cora", "citeseer")
NPZ = {"cora": "cora_npz", "citeseer": "citeseer_npz", "cora_ml": "cora_ml", "polblogs": "polblogs"}

PLANETOID_LICENSE = """\
The files cora.npz and citeseer.npz are converted from the Planetoid release
(https://github.com/kimiyoung/planetoid; Z. Yang, W. Cohen, R. Salakhutdinov, "Revisiting
Semi-Supervised Learning with Graph Embeddings", ICML 2016), distributed under the MIT License:

MIT License

Copyright (c) 2016 Zhilin Yang

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

NPZ_LICENSE_HEADER = """\
The files cora_npz.npz, citeseer_npz.npz, cora_ml.npz and polblogs.npz are converted from the
cora.npz, citeseer.npz, cora_ml.npz and polblogs.npz files published with Nettack and Metattack
(D. Zuegner, S. Guennemann; https://github.com/danielzuegner/gnn-meta-attack), distributed under
the MIT License:

"""


def sparse_arrays(prefix: str, matrix) -> dict[str, np.ndarray]:
    """A scipy sparse matrix as canonical CSR arrays (sorted indices, no repeats, no stored zeros).

    Values that are small non-negative integers are stored as uint8, others as float32.
    """
    import scipy.sparse as sparse

    csr = sparse.csr_matrix(matrix)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.sort_indices()
    data = csr.data
    integral = data.size == 0 or (np.all(data == np.round(data)) and data.min() >= 0 and data.max() <= 255)
    return {
        f"{prefix}_indptr": smallest_uint(csr.indptr),
        f"{prefix}_indices": smallest_uint(csr.indices),
        f"{prefix}_data": data.astype(np.uint8 if integral else np.float32),
        f"{prefix}_shape": np.asarray(csr.shape, dtype=np.int64),
    }


def planetoid_file(folder: Path, name: str) -> dict[str, np.ndarray]:
    """The arrays of ``cora.npz`` / ``citeseer.npz`` from the Planetoid files in ``folder``."""
    arrays = _planetoid_arrays(folder, name)
    pairs = undirected_pairs(arrays.senders, arrays.receivers, arrays.n_nodes)
    return {
        **sparse_arrays("features", arrays.features),
        "labels": smallest_uint(arrays.labels),
        "n_classes": np.asarray(arrays.n_classes, dtype=np.int64),
        "pairs": smallest_uint(pairs),
        "train_index": smallest_uint(np.flatnonzero(arrays.train_mask)),
        "val_index": smallest_uint(np.flatnonzero(arrays.val_mask)),
        "test_index": smallest_uint(np.flatnonzero(arrays.test_mask)),
    }


def npz_file(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one converted Nettack/Metattack graph, read with ``allow_pickle=False``."""
    import scipy.sparse as sparse

    with np.load(path, allow_pickle=False) as archive:

        def csr(prefix: str):
            parts = (archive[f"{prefix}_data"], archive[f"{prefix}_indices"], archive[f"{prefix}_indptr"])
            return sparse.csr_matrix(parts, shape=tuple(int(s) for s in archive[f"{prefix}_shape"]))

        out = {**sparse_arrays("adjacency", csr("adj")), "labels": smallest_uint(archive["labels"])}
        if "attr_data" in archive.files:
            out.update(sparse_arrays("features", csr("attr")))
    return out


def build(source: Path) -> dict[str, bytes]:
    """Every output file, name -> bytes, built from ``source`` and verified against the originals."""
    from ._planetoid import load_planetoid
    from ._registry import load_from

    outputs: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in PLANETOID:
            path = Path(scratch) / f"{name}.npz"
            write_npz(path, planetoid_file(source / "planetoid", name))
            outputs[path.name] = path.read_bytes()
        for original, name in NPZ.items():
            path = Path(scratch) / f"{name}.npz"
            write_npz(path, npz_file(source / "npz" / f"{original}.npz"))
            outputs[path.name] = path.read_bytes()
    outputs["LICENSE-planetoid.txt"] = PLANETOID_LICENSE.encode()
    outputs["LICENSE-npz.txt"] = NPZ_LICENSE_HEADER.encode() + (source / "npz" / "LICENSE").read_bytes()

    # Read the new files back through `load` and compare with the originals.
    with tempfile.TemporaryDirectory() as scratch:
        for file, content in outputs.items():
            (Path(scratch) / file).write_bytes(content)
        for name in PLANETOID:  # raw features: both sides normalise them with the same formula
            _check_same(load_from(scratch, name, normalize_features=False),
                        load_planetoid(name, source / "planetoid", normalize_features=False), name)
    return outputs


def _check_same(converted, original, name: str) -> None:
    for field in ("features", "labels", "train_mask", "val_mask", "test_mask"):
        if not np.array_equal(getattr(converted, field), getattr(original, field)):
            raise RuntimeError(f"convert: {name}.{field} differs from the original files.")
    for field in ("senders", "receivers"):
        if not np.array_equal(getattr(converted.graph, field), getattr(original.graph, field)):
            raise RuntimeError(f"convert: {name}.graph.{field} differs from the original files.")
    if (converted.n_classes, converted.graph.n_nodes) != (original.n_classes, original.graph.n_nodes):
        raise RuntimeError(f"convert: {name} has a different number of classes or nodes than the original files.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jgrad.data.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="folder holding planetoid/ and npz/")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "datasets",
                        help="where to write the files (default: the package's datasets folder)")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = parser.parse_args(argv)
    outputs = build(args.source)
    differ = []
    for file, content in sorted(outputs.items()):
        target = args.out / file
        digest = hashlib.sha256(content).hexdigest()[:16]
        if args.check:
            same = target.is_file() and target.read_bytes() == content
            differ += [] if same else [file]
            print(f"{file:24s} {len(content):9d} bytes  sha256 {digest}  {'same' if same else 'DIFFERENT'}")
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            print(f"{file:24s} {len(content):9d} bytes  sha256 {digest}  written")
    if differ:
        print(f"convert: {len(differ)} file(s) differ from {args.out}: {', '.join(differ)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
