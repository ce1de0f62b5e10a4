"""The simulator's files, each written atomically by :mod:`napari_sedclassify.io.atomic`."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path, write_text


def save_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tif(path, array) -> None:
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(array), photometric="minisblack")


class NpyStreamWriter:
    """Write a large .npy array in order, chunk by chunk (plain file writes, no memory map).

    The result is an ordinary .npy file that ``np.load(..., mmap_mode="r")`` maps; memory use is
    one chunk. Use as a context manager; the file appears atomically when all values were written.
    """

    def __init__(self, path, shape, dtype):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._written = 0

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        self._f = self._stack.enter_context(open(self._stack.enter_context(atomic_path(self.path)), "wb"))
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._f, header)
        return self

    def write(self, chunk) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        self._f.write(chunk.tobytes())
        self._written += chunk.size

    def __exit__(self, exc_type, exc, tb):
        total = int(np.prod(self.shape))
        if exc_type is None and self._written != total:
            exc = ValueError(f"{self.path}: wrote {self._written} of {total} values")
            self._stack.__exit__(ValueError, exc, None)  # the partial file is removed
            raise exc
        return self._stack.__exit__(exc_type, exc, tb)
