"""Loading a tampered Planetoid folder never runs code from it.

Each malicious ``ind.cora.graph`` would create a marker file if any part of it were executed. Loading
must raise `ForbiddenGlobalError` and the marker must not exist afterwards.
"""

from __future__ import annotations

import builtins
import os
import pickle
import shutil
import subprocess

import pytest

from jgrad.data import ForbiddenGlobalError, load_planetoid


class _Reduce:
    """Pickles as ``callable_(*args)``: what an attacker writes into a file."""

    def __init__(self, callable_, *args):
        self.callable_, self.args = callable_, args

    def __reduce__(self):
        return self.callable_, self.args


def _payloads(marker: str) -> dict[str, object]:
    touch = f"open({marker!r}, 'w').write('owned')"
    return {
        "os.system": _Reduce(os.system, f"touch {marker}"),
        "subprocess.call": _Reduce(subprocess.call, ["touch", marker]),
        "eval": _Reduce(builtins.eval, touch),
        "builtins.exec": _Reduce(builtins.exec, touch),
        # The payload hides inside an otherwise valid adjacency dict, one level down.
        "nested reduce": {0: [1, 2], 1: [_Reduce(builtins.exec, touch)]},
        "reduce as argument of reduce": _Reduce(builtins.list, (_Reduce(os.system, f"touch {marker}"),)),
    }


@pytest.mark.parametrize("payload", list(_payloads("x")))
def test_a_malicious_graph_pickle_is_refused_without_running_anything(payload, tmp_path, planetoid_dir):
    folder = tmp_path / "cora"
    folder.mkdir()
    for path in planetoid_dir.glob("ind.cora.*"):
        shutil.copyfile(path, folder / path.name)
    marker = tmp_path / "owned"
    (folder / "ind.cora.graph").write_bytes(pickle.dumps(_payloads(str(marker))[payload], protocol=2))

    with pytest.raises(ForbiddenGlobalError, match=r"refusing to load '[\w.]+' from ind.cora.graph: only "
                                                   r"numpy/scipy array types and builtin containers"):
        load_planetoid("cora", folder)
    assert not marker.exists(), f"{payload}: code from the file ran"


# --- bounded cost: sizes declared by the files, pickle expansion, bad values ------------------------------
# Each case is a few kilobytes that a loader without bounds would expand into gigabytes or minutes; here it
# must fail with one clear error while Python's traced allocations stay under a few megabytes.

_PEAK_LIMIT = 64 * 2**20


def _toy_cora(folder, **replace):
    """A tiny valid Planetoid folder named cora: 502 allx rows (2 train, 500 val), 3 test nodes, 3 classes."""
    import numpy as np
    import scipy.sparse as sparse

    allx = np.ones((502, 4), dtype=np.float32)
    ally = np.eye(3, dtype=np.int32)[np.arange(502) % 3]
    parts = {
        "x": sparse.csr_matrix(allx[:2]), "y": ally[:2], "allx": sparse.csr_matrix(allx), "ally": ally,
        "tx": sparse.csr_matrix(np.ones((3, 4), np.float32)), "ty": np.eye(3, dtype=np.int32),
        "graph": {0: [1], 502: [503, 504]},
    }
    parts.update(replace)
    folder.mkdir(exist_ok=True)
    for part, value in parts.items():
        blob = value if isinstance(value, bytes) else pickle.dumps(value, protocol=2)
        (folder / f"ind.cora.{part}").write_bytes(blob)
    (folder / "ind.cora.test.index").write_text(replace.get("test.index", "502\n503\n504\n"))
    return folder


def _load_bounded(folder, error, match):
    """load_planetoid must raise ``error`` matching ``match`` with a small traced peak allocation."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(error, match=match):
            load_planetoid("cora", folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < _PEAK_LIMIT, f"peak traced allocation {peak / 2**20:.0f} MiB"


def test_the_toy_folder_itself_loads(tmp_path):
    data = load_planetoid("cora", _toy_cora(tmp_path / "cora"))
    assert data.n_nodes == 505 and data.labels[[502, 503, 504]].tolist() == [0, 1, 2]


def test_a_test_index_far_beyond_the_other_files_is_refused_before_allocating(tmp_path):
    folder = _toy_cora(tmp_path / "cora", **{"test.index": "502\n503\n200000\n"})
    _load_bounded(folder, ValueError, r"ind.cora.test.index declares more nodes than the other files; got index "
                                      r"200000, which leaves 199496 nodes in no file, expected at most 3")


def test_a_sparse_constructor_call_that_would_allocate_is_refused(tmp_path):
    payload = b"cscipy.sparse._csr\ncsr_matrix\n((I200000\nI1433\nttR."  # csr_matrix((200000, 1433)): 49 bytes
    folder = _toy_cora(tmp_path / "cora", x=payload)
    _load_bounded(folder, ForbiddenGlobalError, r"refusing to call scipy.sparse.*csr_matrix from ind.cora.x")


def test_a_zero_size_dtype_array_of_huge_shape_is_refused(tmp_path):
    import numpy as np

    class ZeroStride:  # an empty-itemsize array of shape (200000, 1433): no data bytes, huge once converted
        def __reduce__(self):
            return (np.ndarray.__reduce__(np.zeros(1))[0], (np.ndarray, (0,), b"b"),
                    (1, (200000, 1433), np.dtype("V0"), False, b""))

    folder = _toy_cora(tmp_path / "cora", ally=ZeroStride())
    _load_bounded(folder, ForbiddenGlobalError, r"refusing numpy dtype 'V0' from ind.cora.ally: only bool, integer "
                                                r"and float types")


def test_a_sparse_matrix_declaring_many_more_rows_than_its_labels_is_refused_before_densifying(tmp_path):
    import numpy as np
    import scipy.sparse as sparse

    empty = sparse.csr_matrix((200000, 4), dtype=np.float32)  # honest, 800 KB of indptr; dense it is 6.4 GB
    folder = _toy_cora(tmp_path / "cora", allx=empty)
    _load_bounded(folder, ValueError, r"ind.cora.ally does not match the other files; got 502 rows, "
                                      r"expected 200000 as in allx")


def test_memo_shared_nested_lists_fail_fast(tmp_path):
    nested = list(range(1000))
    for _ in range(4):
        nested = [nested] * 1000  # 10^15 integers once expanded
    payload = pickle.dumps({0: nested}, protocol=2)
    assert len(payload) < 25_000
    folder = _toy_cora(tmp_path / "cora", graph=payload)
    _load_bounded(folder, pickle.UnpicklingError, r"ind.cora.graph: a list is referenced twice through the pickle "
                                                  r"memo; got a shared container, expected none")


def test_deeply_nested_containers_are_refused(tmp_path):
    nested = [0]
    for _ in range(200):
        nested = [nested]
    folder = _toy_cora(tmp_path / "cora", graph={0: nested})
    _load_bounded(folder, pickle.UnpicklingError, r"ind.cora.graph: the pickle nests containers too deeply; got "
                                                  r"more than 32 levels")


def test_nan_and_infinite_features_are_refused_by_file_row_and_column(tmp_path):
    import numpy as np
    import scipy.sparse as sparse

    tx = np.ones((3, 4), np.float32)
    tx[1, 2], tx[2, 0] = np.nan, np.inf
    folder = _toy_cora(tmp_path / "cora", tx=sparse.csr_matrix(tx))
    _load_bounded(folder, ValueError, r"ind.cora.tx has non-finite features; got 2 NaN or infinite value\(s\), the "
                                      r"first at row 1, column 2, expected finite numbers")


def test_a_label_row_with_several_classes_is_refused(tmp_path):
    import numpy as np

    folder = _toy_cora(tmp_path / "cora", ty=np.array([[1, 0, 0], [0, 1, 1], [1, 1, 1]], np.int32))
    _load_bounded(folder, ValueError, r"ind.cora.ty row 1 sets several classes; got 2 classes set, expected exactly "
                                      r"one \(2 such row\(s\)\)")


def test_an_all_zero_label_row_is_refused_in_the_split_and_accepted_for_unlabelled_nodes(tmp_path):
    import numpy as np

    ally = np.eye(3, dtype=np.int32)[np.arange(510) % 3]
    ally[505] = 0  # past the 2 training and 500 validation rows: an unlabelled node, in no split
    import scipy.sparse as sparse
    allx = sparse.csr_matrix(np.ones((510, 4), np.float32))
    folder = _toy_cora(tmp_path / "ok", allx=allx, ally=ally, **{"test.index": "510\n511\n512\n"})
    data = load_planetoid("cora", folder)
    assert data.labels[505] == 0 and not (data.train_mask[505] or data.val_mask[505] or data.test_mask[505])
    ally[100] = 0  # a validation node
    folder = _toy_cora(tmp_path / "bad", allx=allx, ally=ally, **{"test.index": "510\n511\n512\n"})
    _load_bounded(folder, ValueError, r"ind.cora.ally row 100 sets no class but its node is in the split")


def test_a_declared_feature_matrix_beyond_the_dense_limit_is_refused(tmp_path, monkeypatch):
    from jgrad.data import _planetoid

    monkeypatch.setattr(_planetoid, "MAX_DENSE_BYTES", 505 * 4 * 8 - 1)
    _load_bounded(_toy_cora(tmp_path / "cora"), ValueError, r"the files declare a matrix too large to build; got "
                                                            r"505 nodes x 4 columns, expected at most MAX_DENSE_BYTES")


def test_pickle_limits_on_file_size_and_array_bytes_name_the_limit():
    import numpy as np

    from jgrad.data._safe_pickle import PickleLimitError, PickleLimits, load_restricted

    blob = pickle.dumps(np.zeros(1000), protocol=2)
    with pytest.raises(PickleLimitError, match=r"blob: the file is too large; got more than 100 bytes"):
        load_restricted(blob, source="blob", limits=PickleLimits(max_file_bytes=100))
    with pytest.raises(PickleLimitError, match=r"blob: an array of shape \(1000,\) takes the arrays past the limit; "
                                               r"got 8000 bytes in all, expected at most max_array_bytes=4000"):
        load_restricted(blob, source="blob", limits=PickleLimits(max_array_bytes=4000))
    np.testing.assert_array_equal(load_restricted(blob), np.zeros(1000))
