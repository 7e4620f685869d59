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
