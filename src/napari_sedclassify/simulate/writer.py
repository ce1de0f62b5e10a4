"""Atomic writes: every file goes to a temporary name in its folder, then ``os.replace``."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same suffix); on success it replaces ``path``."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_npy(path, array) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, np.asarray(array))


def save_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


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
        self._tmp = _tmp_name(self.path)
        self._written = 0

    def __enter__(self):
        self._f = open(self._tmp, "wb")
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        np.lib.format.write_array_header_1_0(self._f, header)
        return self

    def write(self, chunk) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        self._f.write(chunk.tobytes())
        self._written += chunk.size

    def __exit__(self, exc_type, exc, tb):
        self._f.close()
        total = int(np.prod(self.shape))
        if exc_type is None and self._written == total:
            os.replace(self._tmp, self.path)
            return False
        self._tmp.unlink(missing_ok=True)
        if exc_type is None:
            raise ValueError(f"{self.path}: wrote {self._written} of {total} values")
        return False
