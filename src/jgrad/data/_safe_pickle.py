"""A restricted unpickler for the array files of public datasets.

Unpickling can call any importable function, so loading a pickle from the internet with `pickle.load` runs
whatever code its author chose. `load_restricted` instead resolves globals through a fixed allowlist: numpy
array reconstruction, scipy's CSR/CSC matrix classes, a few builtin containers, and ``_codecs.encode``
restricted to latin-1 (how Python 3 writes numpy buffers at pickle protocol 2). Any other global (a
function such as ``os.system``, a class from an unrelated module) raises `ForbiddenGlobalError` before
anything is called.

Old and new module paths of the same object are both accepted (Python 2's ``__builtin__`` and Python 3's
``builtins``; ``numpy.core`` before numpy 2 and ``numpy._core`` after; ``scipy.sparse.csr`` before scipy 1.8
and ``scipy.sparse._csr`` after). Each resolves to the object at its current, non-deprecated location.
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import Any, BinaryIO

# (module, name) as written in the pickle -> candidate (module, name) locations to import it from, newest
# first. Only these globals can be loaded.
_NUMPY_RECONSTRUCT = (("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"))
_CSR_MATRIX = (("scipy.sparse", "csr_matrix"),)
_CSC_MATRIX = (("scipy.sparse", "csc_matrix"),)
_CSR_ARRAY = (("scipy.sparse", "csr_array"),)
_CSC_ARRAY = (("scipy.sparse", "csc_array"),)

ALLOWED_GLOBALS: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    # numpy arrays: ndarray.__reduce__ gives (_reconstruct, (ndarray, shape, dtype)) plus a state tuple.
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy", "ndarray"): (("numpy", "ndarray"),),
    ("numpy", "dtype"): (("numpy", "dtype"),),
    # scipy sparse matrices, pickled as the class plus its __dict__ of numpy arrays.
    ("scipy.sparse.csr", "csr_matrix"): _CSR_MATRIX,
    ("scipy.sparse._csr", "csr_matrix"): _CSR_MATRIX,
    ("scipy.sparse.csc", "csc_matrix"): _CSC_MATRIX,
    ("scipy.sparse._csc", "csc_matrix"): _CSC_MATRIX,
    ("scipy.sparse._csr", "csr_array"): _CSR_ARRAY,
    ("scipy.sparse._csc", "csc_array"): _CSC_ARRAY,
    # builtin containers: the adjacency dict is a defaultdict(list).
    ("collections", "defaultdict"): (("collections", "defaultdict"),),
    ("__builtin__", "list"): (("builtins", "list"),),
    ("builtins", "list"): (("builtins", "list"),),
    ("__builtin__", "dict"): (("builtins", "dict"),),
    ("builtins", "dict"): (("builtins", "dict"),),
    ("__builtin__", "set"): (("builtins", "set"),),
    ("builtins", "set"): (("builtins", "set"),),
    ("__builtin__", "int"): (("builtins", "int"),),
    ("builtins", "int"): (("builtins", "int"),),
}


class ForbiddenGlobalError(pickle.UnpicklingError):
    """Raised when a pickle asks for a global outside the allowlist of `RestrictedUnpickler`."""


class RestrictedUnpickler(pickle.Unpickler):
    """A `pickle.Unpickler` whose `find_class` only admits the globals in `ALLOWED_GLOBALS`.

    Args:
      file: a binary file object to read the pickle from.
      source: the name of the file, used in error messages.
      encoding: how to decode Python 2 ``str`` objects; ``"latin1"`` keeps numpy buffers intact.
    """

    def __init__(self, file: BinaryIO, *, source: str, encoding: str = "latin1"):
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        candidates = ALLOWED_GLOBALS.get((module, name))
        if candidates is None:
            raise ForbiddenGlobalError(
                f"refusing to load {module + '.' + name!r} from {self._source}: only numpy/scipy array types "
                "and builtin containers are allowed. The file is not a plain array file; if it came from an "
                "untrusted source, do not load it with pickle."
            )
        return _resolve(candidates, f"{module}.{name}", self._source)

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenGlobalError(
            f"refusing to load a persistent id from {self._source}: only numpy/scipy array types and builtin "
            "containers are allowed."
        )


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles of numpy buffers written by Python 3 call ``_codecs.encode(text, "latin1")``.

    Only that one codec is admitted: any other encoding (some codecs decompress or transform data)
    is refused.
    """
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise ForbiddenGlobalError(f"refusing _codecs.encode with encoding {encoding!r}: only latin1 is allowed.")
    if not isinstance(text, str):
        raise ForbiddenGlobalError("refusing _codecs.encode of a non-string argument.")
    return text.encode("latin1")


def _resolve(candidates: tuple[tuple[str, str], ...], requested: str, source: str) -> Any:
    for module_name, attribute in candidates:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, attribute):
            return getattr(module, attribute)
    raise pickle.UnpicklingError(
        f"cannot load {requested!r} from {source}: none of {[m + '.' + a for m, a in candidates]} can be "
        "imported. Reading sparse feature files needs scipy (`pip install scipy`)."
    )


def load_restricted(file: BinaryIO | bytes, *, source: str = "<pickle>") -> Any:
    """Unpickles ``file`` admitting only the globals in `ALLOWED_GLOBALS`.

    Args:
      file: a binary file object, or the pickle's bytes.
      source: the name of the file, used in error messages.

    Returns:
      The unpickled object.

    Raises:
      ForbiddenGlobalError: (a `pickle.UnpicklingError`) if the pickle names any other global; nothing
        from the pickle has been called at that point.
      pickle.UnpicklingError, EOFError, ...: whatever `pickle` raises for a damaged stream.

    Example:
      >>> import pickle
      >>> load_restricted(pickle.dumps({0: [1, 2]}, protocol=2))
      {0: [1, 2]}
    """
    if isinstance(file, (bytes, bytearray, memoryview)):
        file = io.BytesIO(bytes(file))
    return RestrictedUnpickler(file, source=source).load()
