"""Lazy building blocks shared by the readers: frame sources, the scan grid, chunking.

A *frame source* reads a flat run of detector frames (N, det_y, det_x) from a file, in native
byte order and display orientation. :class:`FrameGrid` lays such a source out on the scan grid
(scan_y, scan_x, det_y, det_x), with positions that have no frame (an interrupted acquisition,
the paper's data set whose first entries are missing) reading as zeros and marked missing.
Files are opened on first read, in each process, and never pickled with their handles, so a
scan can travel to dask workers.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from ..errors import ScanFormatError
from ..scan import ScanFrames, frame_chunks, parse_scan_shape

log = logging.getLogger(__name__)

class _Handled:
    """Holds a file handle opened on first use and dropped when pickled (each dask worker opens its own)."""

    path: str

    def _with_handle(self, opener, read, what: str):
        """read(handle), opening the handle with opener() first; read errors become a
        ScanFormatError naming the file and ``what``."""
        handle = self.__dict__.get("_handle")
        if handle is None:
            handle = self._handle = opener()
        try:
            return read(handle)
        except ScanFormatError:
            raise
        except (OSError, ValueError) as exc:
            raise ScanFormatError(f"{self.path}: cannot read {what} ({exc})") from exc

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_handle", None)
        return state


class FrameSource(_Handled):
    """A flat stack of frames in a file, opened lazily and read-only.

    Subclasses set ``path``, ``n_frames``, ``frame_shape``, ``dtype`` (native, as returned) and
    implement ``_open()`` (returns a handle) and ``_read(handle, start, stop)`` (returns
    frames ``start:stop`` as an array (k, det_y, det_x) of ``dtype``).
    """

    path: str
    n_frames: int
    frame_shape: tuple[int, int]
    dtype: np.dtype

    def _open(self):
        raise NotImplementedError

    def _read(self, handle, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._with_handle(self._open, lambda h: self._read(h, start, stop), f"frames {start}..{stop - 1}")


class StackFrames(FrameSource):
    """Frames of a 3D array-like (N, det_y, det_x) that ``opener()`` returns: a memmap, a zarr or
    HDF5 dataset, an adapter that transposes MATLAB frames, an array in memory."""

    def __init__(self, opener, shape, dtype, path):
        self.opener = opener
        self.path = str(path)
        self.n_frames = int(shape[0])
        self.frame_shape = tuple(int(s) for s in shape[1:])
        self.dtype = native(dtype)

    def _open(self):
        return self.opener()

    def _read(self, array, start, stop):
        return to_native(np.asarray(array[start:stop]))


def native(dtype) -> np.dtype:
    """``dtype`` in the machine's byte order (big-endian detector words become native)."""
    dtype = np.dtype(dtype)
    return dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype


def to_native(block: np.ndarray) -> np.ndarray:
    """``block`` in native byte order; a no-op (no copy) when it already is."""
    dtype = native(block.dtype)
    return block if block.dtype == dtype else block.astype(dtype)


def check_pixel_dtype(dtype, path) -> np.dtype:
    """Accept integer, unsigned, float and bool pixels; anything else is an unknown dtype."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "uifb" or dtype.fields is not None or dtype.subdtype is not None:
        raise ScanFormatError(f"{path}: unknown pixel dtype {dtype} (expected integer or float counts)")
    return dtype


class FrameGrid:
    """A frame source seen as a 4D array (scan_y, scan_x, det_y, det_x), for ``dask.array.from_array``.

    first: grid index (row-major) of the source's frame 0; positions before it and after its
    last frame have no frame and read as zeros.
    """

    def __init__(self, source: FrameSource, scan_shape, first: int = 0):
        self.source = source
        self.scan_shape = tuple(int(s) for s in scan_shape)
        self.first = int(first)
        self.shape = self.scan_shape + tuple(source.frame_shape)
        self.dtype = source.dtype
        self.ndim = 4

    def missing(self) -> np.ndarray:
        """bool (scan_y, scan_x): True where no frame was recorded."""
        flat = np.ones(self.scan_shape[0] * self.scan_shape[1], dtype=bool)
        flat[self.first : self.first + self.source.n_frames] = False
        return flat.reshape(self.scan_shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (4 - len(key))
        ys, xs = (_indices(k, n) for k, n in zip(key[:2], self.scan_shape))
        det_key = tuple(key[2:])
        block = self._read_positions(ys, xs)
        block = block[(slice(None), slice(None)) + det_key]
        drop = tuple(i for i in (0, 1) if isinstance(key[i], (int, np.integer)))
        return block.reshape([s for i, s in enumerate(block.shape) if i not in drop]) if drop else block

    def _read_positions(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        sx, n = self.scan_shape[1], self.source.n_frames
        frame = self.source.frame_shape
        if len(ys) == 0 or len(xs) == 0:
            return np.zeros((len(ys), len(xs)) + frame, dtype=self.dtype)
        contiguous_x = len(xs) == xs[-1] - xs[0] + 1 and np.all(np.diff(xs) == 1)
        contiguous_y = len(ys) == ys[-1] - ys[0] + 1 and np.all(np.diff(ys) == 1)
        start = ys[0] * sx + xs[0] - self.first
        if contiguous_y and contiguous_x and (len(xs) == sx or len(ys) == 1):
            stop = start + len(ys) * len(xs)
            if start >= 0 and stop <= n:  # all recorded: one read, zero-copy where the source allows
                return self.source.read(start, stop).reshape((len(ys), len(xs)) + frame)
        out = np.zeros((len(ys), len(xs)) + frame, dtype=self.dtype)
        if contiguous_x:
            for j, y in enumerate(ys):
                a = y * sx + xs[0] - self.first
                lo, hi = max(a, 0), min(a + len(xs), n)
                if lo < hi:
                    out[j, lo - a : hi - a] = self.source.read(lo, hi)
        else:
            for j, y in enumerate(ys):
                for i, x in enumerate(xs):
                    f = y * sx + x - self.first
                    if 0 <= f < n:
                        out[j, i] = self.source.read(f, f + 1)[0]
        return out


class Lazy4D(_Handled):
    """A 4D array in a file (scan_y, scan_x, det_y, det_x), opened lazily, read in native byte order.

    opener: a picklable callable returning the array-like (an h5py dataset, a memmap...).
    """

    def __init__(self, opener, shape, dtype, path):
        self.opener = opener
        self.shape = tuple(int(s) for s in shape)
        self.dtype = native(dtype)
        self.ndim = len(self.shape)
        self.path = str(path)

    def __getitem__(self, key):
        return self._with_handle(self.opener, lambda h: to_native(np.asarray(h[key])), str(key))


def _indices(k, n: int) -> np.ndarray:
    if isinstance(k, (int, np.integer)):
        return np.array([int(k) % n])
    if isinstance(k, slice):
        return np.arange(n)[k]
    return np.arange(n)[np.asarray(k)]


def file_token(path) -> str:
    """A name that changes when the file does (path, size, modification time)."""
    import hashlib

    st = os.stat(path)
    key = f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def grid_frames(source: FrameSource, scan_shape, *, first: int = 0, chunk_frames=None, name: str):
    """(ScanFrames over the scan grid, missing mask) for a flat frame source."""
    grid = FrameGrid(source, scan_shape, first)
    frame_nbytes = int(np.prod(source.frame_shape)) * source.dtype.itemsize
    chunks = frame_chunks(scan_shape, frame_nbytes, chunk_frames)
    return ScanFrames(grid, chunks, name=f"{name}-{first}-{scan_shape[0]}x{scan_shape[1]}"), grid.missing()


def array_frames(array, *, chunk_frames=None, name: str):
    """ScanFrames over a 4D array-like (scan_y, scan_x, det_y, det_x), whole-frame blocks."""
    shape = tuple(int(s) for s in array.shape)
    frame_nbytes = int(np.prod(shape[2:])) * np.dtype(array.dtype).itemsize
    return ScanFrames(array, frame_chunks(shape[:2], frame_nbytes, chunk_frames), name=name)


def resolve_scan_shape(path, n_frames: int, scan_shape=None, hint=None, missing_at: str = "end"):
    """Scan shape (scan_y, scan_x), how it was found, and the grid index of the first frame.

    scan_shape: given by the user (wins). hint: (shape, how) read from the file's metadata.
    Otherwise a square grid when n_frames is a square number, else one scan row.
    Fewer frames than positions pads the grid; ``missing_at`` says whether the missing
    positions are at the "end" (interrupted acquisition) or the "start".
    """
    if missing_at not in ("end", "start"):
        raise ValueError(f"missing_at must be 'end' or 'start', not {missing_at!r}")
    if n_frames <= 0:
        raise ScanFormatError(f"{path}: empty file (no frames)")
    how = "given"
    if scan_shape is not None:
        shape = _check_shape(scan_shape, path)
        if shape[0] * shape[1] < n_frames:
            raise ScanFormatError(
                f"{path}: wrong scan shape {shape[0]}x{shape[1]}: {shape[0] * shape[1]} positions "
                f"for {n_frames} frames in the file"
            )
    elif hint is not None and hint[0][0] * hint[0][1] >= n_frames and hint[0][0] * hint[0][1] > 0:
        shape, how = (int(hint[0][0]), int(hint[0][1])), hint[1]
    else:
        root = math.isqrt(n_frames)
        if root * root == n_frames:
            shape, how = (root, root), "square"
        else:
            shape, how = (1, n_frames), "one row (scan shape unknown: give scan_shape)"
            log.warning("%s: %d frames and no scan shape in the file: opened as one row", path, n_frames)
    first = shape[0] * shape[1] - n_frames if missing_at == "start" else 0
    return shape, how, first


def _check_shape(scan_shape, path) -> tuple[int, int]:
    try:
        return parse_scan_shape(scan_shape)
    except ValueError as exc:
        raise ScanFormatError(f"{path}: {exc}") from None
