"""The restricted unpickler: array files load, anything that could run code is refused before it runs."""

import collections
import io
import os
import pickle

import numpy as np
import pytest

from jgrad.data import ForbiddenGlobalError
from jgrad.data._safe_pickle import load_restricted


class _RunsCommand:
    """Unpickling this with plain pickle would run a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_is_refused_without_running_the_command(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ind.cora.graph"
    path.write_bytes(pickle.dumps(_RunsCommand(f"touch {marker}"), protocol=2))
    with path.open("rb") as file, pytest.raises(ForbiddenGlobalError) as error:
        load_restricted(file, source=path.name)
    message = str(error.value)
    assert f"refusing to load '{os.system.__module__}.system' from ind.cora.graph" in message
    assert "only numpy/scipy array types" in message
    assert isinstance(error.value, pickle.UnpicklingError)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload, forbidden",
    [
        (b"cbuiltins\neval\n(S'1 + 1'\ntR.", "builtins.eval"),
        (b"c__builtin__\ngetattr\n(S'x'\nS'y'\ntR.", "__builtin__.getattr"),
        (b"csubprocess\nPopen\n(S'true'\ntR.", "subprocess.Popen"),
        (b"cnumpy\nload\n(S'x.npy'\ntR.", "numpy.load"),
        (b"ccopyreg\n_reconstructor\n.", "copyreg._reconstructor"),
        (pickle.dumps(print, protocol=4), "builtins.print"),
    ],
    ids=["eval", "py2-getattr", "popen", "numpy-load", "copyreg", "stack-global"],
)
def test_every_global_outside_the_allowlist_is_refused(payload, forbidden):
    with pytest.raises(ForbiddenGlobalError, match=f"refusing to load '{forbidden}' from blob"):
        load_restricted(payload, source="blob")


def test_persistent_ids_are_refused():
    with pytest.raises(ForbiddenGlobalError, match="persistent id from blob"):
        load_restricted(b"Pfoo\n.", source="blob")


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy_arrays_and_adjacency_dicts_round_trip(protocol):
    value = {
        "one_hot": np.eye(3, dtype=np.int32),
        "graph": collections.defaultdict(list, {0: [1, 2], 2: [0]}),
        "ids": {1, 2},
    }
    loaded = load_restricted(pickle.dumps(value, protocol=protocol))
    assert loaded["graph"] == value["graph"] and isinstance(loaded["graph"], collections.defaultdict)
    assert loaded["ids"] == {1, 2}
    if "one_hot" in value:
        np.testing.assert_array_equal(loaded["one_hot"], value["one_hot"])


@pytest.mark.parametrize("kind", ["csr_matrix", "csc_matrix", "csr_array", "csc_array"])
def test_scipy_sparse_matrices_round_trip(kind):
    import scipy.sparse as sparse
    matrix = getattr(sparse, kind)(np.array([[0.0, 1.5], [2.0, 0.0]], dtype=np.float32))
    loaded = load_restricted(io.BytesIO(pickle.dumps(matrix, protocol=4)))
    assert type(loaded) is type(matrix)
    np.testing.assert_array_equal(loaded.toarray(), matrix.toarray())


def test_python2_module_paths_of_the_original_files_are_accepted(planetoid_dir):
    with (planetoid_dir / "ind.cora.x").open("rb") as file:  # numpy.core.multiarray, scipy.sparse.csr
        features = load_restricted(file, source="ind.cora.x")
    assert features.shape == (140, 1433)
    with (planetoid_dir / "ind.cora.graph").open("rb") as file:  # collections.defaultdict, __builtin__.list
        adjacency = load_restricted(file, source="ind.cora.graph")
    assert len(adjacency) == 2708


def test_codecs_encode_is_admitted_for_latin1_only():
    payload = b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(ForbiddenGlobalError, match="encoding 'rot13': only latin1"):
        load_restricted(payload, source="blob")
    assert load_restricted(pickle.dumps(b"\xff\x00", protocol=2)) == b"\xff\x00"


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"c__builtin__\nbytes\n(I1000000000\ntR.", r"refusing bytes\(1000000000,\) from blob: only bytes\(\)"),
        (b"cnumpy\nndarray\n((I100000\nI100000\nttR.", r"refusing to call numpy.ndarray from blob"),
        (b"\x80\x02cscipy.sparse._csr\ncsr_matrix\nK\x05K\x05\x86\x81.",
         r"refusing to create scipy.sparse.*csr_matrix with arguments \(5, 5\) from blob"),
        (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I100000000\ntS'b'\ntR.",
         r"refusing numpy _reconstruct.*numpy writes _reconstruct\(ndarray, \(0,\), b'b'\)"),
        (b"cnumpy\ndtype\n(S'O8'\nI0\nI1\ntR.", r"refusing numpy dtype 'O8' from blob: only bool, integer and float"),
    ],
    ids=["bytes-of-size", "ndarray-call", "sparse-newobj-args", "reconstruct-shape", "object-dtype"],
)
def test_admitted_globals_are_only_used_the_way_array_files_use_them(payload, message):
    with pytest.raises(ForbiddenGlobalError, match=message):
        load_restricted(payload, source="blob")


def test_shared_scalar_tuples_are_fine_but_shared_lists_are_refused():
    shape = (3, 4)
    assert load_restricted(pickle.dumps([shape, shape], protocol=2)) == [shape, shape]
    inner = [1, 2]
    with pytest.raises(pickle.UnpicklingError, match="blob: a list is referenced twice through the pickle memo"):
        load_restricted(pickle.dumps([inner, inner], protocol=2), source="blob")
    assert load_restricted(pickle.dumps(np.zeros((0, 3), np.float32), protocol=2)).shape == (0, 3)
