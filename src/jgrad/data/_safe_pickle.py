"""A restricted, bounded unpickler for the array files of public datasets.

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

import collections
import dataclasses
import importlib
import io
import math
import pickle
from typing import Any, BinaryIO

import numpy as np

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
    # protocol 2 writes an empty bytes object as bytes(); only that call is admitted.
    ("__builtin__", "bytes"): (("builtins", "bytes"),),
    ("builtins", "bytes"): (("builtins", "bytes"),),
}


class ForbiddenGlobalError(pickle.UnpicklingError):
    """Raised when a pickle asks for a global outside the allowlist, or uses one in a way array files never do."""


class PickleLimitError(pickle.UnpicklingError):
    """Raised when a pickle would exceed `PickleLimits`: too large, too deep, too many objects, or shared containers."""


@dataclasses.dataclass(frozen=True)
class PickleLimits:
    """Bounds on what one pickle may cost.

    Attributes:
      max_file_bytes: the largest file read (the whole file is read before unpickling).
      max_array_bytes: the total size of all numpy arrays and copied container elements (8 bytes each).
      max_items: the number of objects in the result, counted on one walk (each array counts once).
      max_depth: the deepest nesting of containers in the result.
    """

    max_file_bytes: int = 2**30
    max_array_bytes: int = 2**31
    max_items: int = 20_000_000
    max_depth: int = 32


_NUMERIC_KINDS = "biuf"
_CONTAINERS = (list, dict, set, frozenset, tuple)


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler, so that each opcode can be checked
    """An unpickler whose `find_class` only admits the globals in `ALLOWED_GLOBALS`, with bounded cost.

    Args:
      file: a binary file object to read the pickle from.
      source: the name of the file, used in error messages.
      encoding: how to decode Python 2 ``str`` objects; ``"latin1"`` keeps numpy buffers intact.
      limits: the `PickleLimits` to enforce.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, *, source: str, encoding: str = "latin1",
                 limits: PickleLimits = PickleLimits()):
        super().__init__(file, encoding=encoding)
        self._source = source
        self._limits = limits
        self._allocated = 0
        self._callables = {
            _reconstruct_marker: self._reconstruct,
            _dtype_marker: self._dtype,
            _latin1_encode: _latin1_encode,
            collections.defaultdict: self._copying(collections.defaultdict),
            list: self._copying(list),
            dict: self._copying(dict),
            set: self._copying(set),
            int: int,
            bytes: self._empty_bytes,
        }

    # --- globals -----------------------------------------------------------------------------------------
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
        if candidates is _NUMPY_RECONSTRUCT:
            return _reconstruct_marker
        if candidates == (("numpy", "dtype"),):
            return _dtype_marker
        return _resolve(candidates, f"{module}.{name}", self._source)

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenGlobalError(
            f"refusing to load a persistent id from {self._source}: only numpy/scipy array types and builtin "
            "containers are allowed."
        )

    # --- calls -------------------------------------------------------------------------------------------
    def _call(self, func: Any, args: Any) -> Any:
        call = self._callables.get(func) if _hashable(func) else None
        if call is None:
            raise ForbiddenGlobalError(
                f"refusing to call {_name_of(func)} from {self._source}: array files only call numpy's array "
                "and dtype reconstructors and builtin containers."
            )
        if not isinstance(args, tuple):
            raise ForbiddenGlobalError(f"refusing a call with non-tuple arguments from {self._source}.")
        return call(*args)

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def _instantiate(self, klass: Any, args: Any) -> None:  # protocol 0/1 INST and OBJ
        if isinstance(klass, type) and klass in _sparse_classes() and not args:
            self.append(klass.__new__(klass))
        else:
            self.append(self._call(klass, tuple(args)))

    def _new_object(self, cls: Any, args: Any, kwargs: Any = None) -> Any:
        if not (isinstance(cls, type) and cls in _sparse_classes() and args == () and not kwargs):
            raise ForbiddenGlobalError(
                f"refusing to create {_name_of(cls)} with arguments {_short(args)} from {self._source}: only "
                "empty scipy sparse matrices are created this way."
            )
        return cls.__new__(cls)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new_object(cls, args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new_object(cls, args, kwargs))

    def _reconstruct(self, subtype: Any = None, shape: Any = None, dtype: Any = None) -> np.ndarray:
        if subtype is not np.ndarray or shape not in ((0,), [0]) or dtype not in (b"b", "b"):
            raise ForbiddenGlobalError(
                f"refusing numpy _reconstruct{_short((subtype, shape, dtype))} from {self._source}: numpy writes "
                "_reconstruct(ndarray, (0,), b'b') and sets the array from its state."
            )
        return np.ndarray.__new__(np.ndarray, (0,), np.dtype("b"))

    def _dtype(self, spec: Any = None, align: Any = False, copy: Any = True) -> np.dtype:
        if not isinstance(spec, str) or len(spec) > 4:
            raise ForbiddenGlobalError(f"refusing numpy dtype {_short(spec)} from {self._source}: only number types.")
        dtype = np.dtype(spec)
        if dtype.kind not in _NUMERIC_KINDS or dtype.itemsize == 0:
            raise ForbiddenGlobalError(
                f"refusing numpy dtype {spec!r} from {self._source}: only bool, integer and float types are allowed."
            )
        return dtype

    def _empty_bytes(self, *args: Any) -> bytes:
        if args:
            raise ForbiddenGlobalError(f"refusing bytes{_short(args)} from {self._source}: only bytes() is admitted.")
        return b""

    def _copying(self, container: type) -> Any:
        def build(*args: Any) -> Any:
            if len(args) > 1 or (container is collections.defaultdict and args and args[0] not in (list, dict, set, int)):
                raise ForbiddenGlobalError(
                    f"refusing {container.__name__}{_short(args)} from {self._source}: unexpected arguments."
                )
            if container is collections.defaultdict:
                return collections.defaultdict(*args)
            if args:
                self._allocate(8 * _length(args[0], self._source), f"a {container.__name__} copy")
            return container(*args)

        return build

    # --- state -------------------------------------------------------------------------------------------
    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.ndarray):
            self._check_array_state(state)
        elif isinstance(inst, np.dtype):
            if not (isinstance(state, tuple) and len(state) >= 5 and state[2:5] == (None, None, None)):
                raise ForbiddenGlobalError(
                    f"refusing a numpy dtype state {_short(state)} from {self._source}: only plain number types."
                )
        elif type(inst) in _sparse_classes():
            if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
                raise ForbiddenGlobalError(
                    f"refusing a sparse matrix state {_short(state)} from {self._source}: expected its attribute dict."
                )
        else:
            raise ForbiddenGlobalError(f"refusing to set the state of a {_name_of(type(inst))} from {self._source}.")
        super().load_build()
        if isinstance(inst, np.dtype) and (inst.kind not in _NUMERIC_KINDS or inst.itemsize == 0):
            raise ForbiddenGlobalError(f"refusing numpy dtype {inst} from {self._source}: only number types.")

    def _check_array_state(self, state: Any) -> None:
        shape = state[1] if isinstance(state, tuple) and len(state) == 5 else None
        dtype, data = (state[2], state[4]) if shape is not None else (None, None)
        if not (isinstance(shape, tuple) and all(type(size) is int and size >= 0 for size in shape)
                and isinstance(dtype, np.dtype) and isinstance(data, (bytes, str))):
            raise ForbiddenGlobalError(
                f"refusing a numpy array state {_short(state)} from {self._source}: expected (version, shape, "
                "dtype, fortran_order, data bytes)."
            )
        if dtype.kind not in _NUMERIC_KINDS or dtype.itemsize == 0 or dtype.shape or dtype.names:
            raise ForbiddenGlobalError(
                f"refusing a numpy array of dtype {dtype} from {self._source}: only bool, integer and float arrays."
            )
        n_bytes = math.prod(shape) * dtype.itemsize
        if n_bytes != len(data):
            raise pickle.UnpicklingError(
                f"{self._source}: a numpy array of shape {shape} and dtype {dtype} needs {n_bytes} bytes; "
                f"got {len(data)}."
            )
        self._allocate(n_bytes, f"an array of shape {shape}")

    def _allocate(self, n_bytes: int, what: str) -> None:
        self._allocated += n_bytes
        if self._allocated > self._limits.max_array_bytes:
            raise PickleLimitError(
                f"{self._source}: {what} takes the arrays past the limit; got {self._allocated} bytes in all, "
                f"expected at most max_array_bytes={self._limits.max_array_bytes}."
            )

    # --- memo --------------------------------------------------------------------------------------------
    def _check_shared(self) -> None:
        value = self.stack[-1]
        if isinstance(value, (list, dict, set)) or (
            isinstance(value, tuple) and any(isinstance(item, _CONTAINERS) for item in value)
        ):
            raise PickleLimitError(
                f"{self._source}: a {type(value).__name__} is referenced twice through the pickle memo; got a "
                "shared container, expected none (array files never share them, and sharing lets a small file "
                "expand into an enormous structure)."
            )

    def load_get(self) -> None:
        pickle._Unpickler.load_get(self)
        self._check_shared()

    def load_binget(self) -> None:
        pickle._Unpickler.load_binget(self)
        self._check_shared()

    def load_long_binget(self) -> None:
        pickle._Unpickler.load_long_binget(self)
        self._check_shared()

    def load(self) -> Any:
        value = super().load()
        _check_shape_of_result(value, self._source, self._limits)
        return value


for _opcode, _method in (
    (pickle.REDUCE, "load_reduce"), (pickle.BUILD, "load_build"), (pickle.NEWOBJ, "load_newobj"),
    (pickle.NEWOBJ_EX, "load_newobj_ex"), (pickle.GET, "load_get"), (pickle.BINGET, "load_binget"),
    (pickle.LONG_BINGET, "load_long_binget"),
):
    RestrictedUnpickler.dispatch[_opcode[0]] = getattr(RestrictedUnpickler, _method)


class _Marker:
    """Stands in for a numpy callable in the unpickler's stack; only `RestrictedUnpickler` can call it."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


_reconstruct_marker = _Marker("numpy._reconstruct")
_dtype_marker = _Marker("numpy.dtype")


def _sparse_classes() -> tuple[type, ...]:
    import sys

    sparse = sys.modules.get("scipy.sparse")  # only loaded if the pickle named a sparse class
    if sparse is None:
        return ()
    return tuple(getattr(sparse, name) for name in ("csr_matrix", "csc_matrix", "csr_array", "csc_array"))


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _name_of(value: Any) -> str:
    if isinstance(value, _Marker):
        return value.name
    module, name = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    return f"{module}.{name}" if module and name else type(value).__name__


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, (bytes, str)) or len(value) < limit else f"<{len(value)} characters>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _length(value: Any, source: str) -> int:
    try:
        return len(value)
    except TypeError:
        raise ForbiddenGlobalError(f"refusing a container built from a {type(value).__name__} in {source}.") from None


def _check_shape_of_result(value: Any, source: str, limits: PickleLimits) -> None:
    """Walks the unpickled object once, refusing nesting deeper than max_depth or more than max_items objects."""
    stack = [(value, 1)]
    count = 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > limits.max_items:
            raise PickleLimitError(
                f"{source}: the pickle holds too many objects; got more than max_items={limits.max_items}."
            )
        if isinstance(item, (list, tuple, set, frozenset)):
            children = item
        elif isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif type(item) in _sparse_classes():
            children = list(vars(item).values())
        else:
            continue
        if depth >= limits.max_depth and len(children):
            raise PickleLimitError(
                f"{source}: the pickle nests containers too deeply; got more than {limits.max_depth} levels, "
                f"expected at most max_depth={limits.max_depth}."
            )
        stack.extend((child, depth + 1) for child in children)


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


def load_restricted(file: BinaryIO | bytes, *, source: str = "<pickle>", limits: PickleLimits = PickleLimits()) -> Any:
    """Unpickles ``file`` admitting only the globals in `ALLOWED_GLOBALS`, within ``limits``.

    The whole file is read first (at most ``limits.max_file_bytes``), so that a length declared inside the
    pickle can never make the reader allocate more than the file holds.

    Args:
      file: a binary file object, or the pickle's bytes.
      source: the name of the file, used in error messages.
      limits: the `PickleLimits` to enforce.

    Returns:
      The unpickled object. A file object is left just after the end of the pickle.

    Raises:
      ForbiddenGlobalError: (a `pickle.UnpicklingError`) if the pickle names any other global, or calls an
        admitted one in a way array files do not; nothing from the pickle has been called at that point.
      PickleLimitError: (a `pickle.UnpicklingError`) if the file, its arrays, its nesting or its number of
        objects exceed ``limits``, or it shares a container through the memo.
      pickle.UnpicklingError, EOFError, ...: whatever `pickle` raises for a damaged stream.

    Example:
      >>> import pickle
      >>> load_restricted(pickle.dumps({0: [1, 2]}, protocol=2))
      {0: [1, 2]}
    """
    if isinstance(file, (bytes, bytearray, memoryview)):
        data, rewind = bytes(file), None
    else:
        data, rewind = _read_at_most(file, limits.max_file_bytes + 1), file
    if len(data) > limits.max_file_bytes:
        raise PickleLimitError(
            f"{source}: the file is too large; got more than {limits.max_file_bytes} bytes, expected at most "
            f"max_file_bytes={limits.max_file_bytes}."
        )
    stream = io.BytesIO(data)
    value = RestrictedUnpickler(stream, source=source, limits=limits).load()
    if rewind is not None and stream.tell() < len(data) and rewind.seekable():
        rewind.seek(stream.tell() - len(data), io.SEEK_CUR)
    return value


def _read_at_most(file: BinaryIO, n_bytes: int) -> bytes:
    """Up to ``n_bytes`` from ``file``, in 1 MiB reads (one large read would allocate all of it up front)."""
    chunks, total = [], 0
    while total < n_bytes:
        chunk = file.read(min(2**20, n_bytes - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)
