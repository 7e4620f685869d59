"""Pickle-free array files: a byte-reproducible ``.npz`` writer and a reader that refuses object arrays.

The files are ordinary compressed ``.npz`` archives (what `numpy.savez_compressed` writes), so
``numpy.load(path, allow_pickle=False)`` reads them. The writer differs from numpy's only in fixing
what numpy leaves to the clock: every member has the timestamp 1980-01-01 and members are written in
sorted order, so converting the same inputs twice gives identical bytes.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes ``arrays`` as a compressed ``.npz`` file whose bytes depend only on the arrays.

    Args:
      path: the file to write (replaced if it exists).
      arrays: name -> numeric numpy array; object arrays are refused.

    Raises:
      TypeError: if an array has an object dtype.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for key in sorted(arrays):
            array = np.asarray(arrays[key])
            array = array if array.flags.c_contiguous else array.copy()
            if array.dtype.hasobject:
                raise TypeError(f"write_npz: {key} has an object dtype; got {array.dtype}, expected numbers.")
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def read_npz(path: Any) -> dict[str, np.ndarray]:
    """Reads every array of an ``.npz`` file with ``allow_pickle=False``.

    Args:
      path: a path, or an `importlib.resources` traversable (anything with ``open("rb")``).

    Returns:
      name -> numpy array.
    """
    with (path.open("rb") if hasattr(path, "open") else Path(path).open("rb")) as file:
        with np.load(file, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}


def smallest_uint(values: np.ndarray) -> np.ndarray:
    """``values`` (non-negative integers) in the smallest unsigned dtype that holds them."""
    values = np.asarray(values)
    top = int(values.max()) if values.size else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values.astype(np.uint64)
