"""Lazy building blocks shared by the readers: frame sources, the scan grid, chunking.

A *frame source* reads a flat run of frames (N, det_y, det_x) from a file, native byte order,
display orientation. :class:`FrameGrid` lays it out on the scan grid; positions without a frame
read as zeros and are marked missing. Files are opened on first read, in each process, and never
pickled with their handles.
"""

from __future__ import annotations

import logging
import math
import os
import re
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple

import numpy as np

from ..errors import ScanFormatError
from ..scan import ScanFrames, frame_chunks, parse_scan_shape

try:
    import mmap
except ImportError:  # platforms without memory maps (e.g. WebAssembly)
    mmap = None

log = logging.getLogger(__name__)

#: True while a reader opens the frames of a flat-field (:func:`reading_flatfield`).
_READING_FLATFIELD = ContextVar("reading_flatfield", default=False)


@contextmanager
def reading_flatfield():
    """Readers opened inside are reading a flat-field, not a scan: no note of an unknown scan
    shape (a flood stack has none), and a file of several arrays asks for ``--flatfield-dataset``."""
    token = _READING_FLATFIELD.set(True)
    try:
        yield
    finally:
        _READING_FLATFIELD.reset(token)


def what_is_read() -> tuple[str, str]:
    """(what the reader opens, the CLI option that picks its array): ("scan", "--dataset"), or
    ("flat-field", "--flatfield-dataset") inside :func:`reading_flatfield`."""
    return ("flat-field", "--flatfield-dataset") if _READING_FLATFIELD.get() else ("scan", "--dataset")


def dataset_choice(value=None) -> str:
    """The option that picks the array to read, in the command line's words with the Python form
    aside (which napari's wording drops): "--dataset NAME (Python: dataset=NAME)", or
    ``--flatfield-dataset`` inside :func:`reading_flatfield`; ``value``: the name given, if any."""
    option = what_is_read()[1]
    return f"{option} NAME (Python: dataset=NAME)" if value is None else f"{option} {value} (Python: dataset={value!r})"


class FlatFieldFile(NamedTuple):
    """What a flat-field file holds, as a reader's ``read_flatfield`` found it. frames: a 2D image
    (ky, kx) of the response (a flood image, a gain map) or a flood stack (the ScanFrames of its
    frames, read block by block); bad_pixels: (ky, kx) bool, the pixels the file marks bad (a
    DECTRIS pixel_mask), or None."""

    frames: object
    bad_pixels: np.ndarray | None = None


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

    Subclasses implement ``_open()`` (returns a handle) and ``_read(handle, start, stop)`` (returns
    frames ``start:stop`` as an array (k, det_y, det_x) of ``dtype``, native, as returned).
    """

    def __init__(self, path, n_frames: int, frame_shape, dtype):
        self.path = str(path)
        self.n_frames = int(n_frames)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.dtype = native(dtype)

    def _open(self):
        raise NotImplementedError

    def _read(self, handle, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._with_handle(self._open, lambda h: self._read(h, start, stop), f"frames {start}..{stop - 1}")


class PartsFrames(FrameSource):
    """Frames stored in consecutive parts (files, datasets): subclasses set ``starts``, each part's first
    frame and the total, and implement ``_read_part(handle, part, lo, hi)`` (its frames lo:hi)."""

    starts: np.ndarray

    def _read(self, handle, start, stop):
        first, last = np.searchsorted(self.starts, start, side="right") - 1, np.searchsorted(self.starts, stop)
        pieces = [self._read_part(handle, i, max(start, self.starts[i]) - self.starts[i],
                                  min(stop, self.starts[i + 1]) - self.starts[i]) for i in range(first, last)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


class StackFrames(FrameSource):
    """Frames of a 3D array-like (N, det_y, det_x) that ``opener()`` returns: a memmap, a zarr or
    HDF5 dataset, an adapter that transposes MATLAB frames, an array in memory."""

    def __init__(self, opener, shape, dtype, path):
        super().__init__(path, shape[0], shape[1:], dtype)
        self.opener = opener

    def _open(self):
        return self.opener()

    def _read(self, array, start, stop):
        return to_native(np.asarray(array[start:stop]))


def mapped_bytes(handle, pos: int, nbytes: int):
    """The bytes pos:pos + nbytes of an open file as (a read-only memory map, where they begin in
    it), the whole range asked to be read ahead; None where no mapping is to be had (no ``mmap``
    on this platform, none left to the process). A reader's frames over it are the page cache's
    own pages, with no copy, and the mapping goes when the last array over it does: memory holds
    the frames in use, never every page a pass over the file touched."""
    if mmap is None or nbytes <= 0:
        return None
    first = pos - pos % mmap.ALLOCATIONGRANULARITY
    try:
        m = mmap.mmap(handle.fileno(), pos + nbytes - first, access=mmap.ACCESS_READ, offset=first)
    except OSError:
        return None
    if hasattr(m, "madvise"):
        m.madvise(mmap.MADV_WILLNEED)
    return m, pos - first


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
    """A frame source seen as a 4D array (scan_y, scan_x, det_y, det_x). first: grid index (row-major)
    of the source's frame 0; positions before it and after its last frame read as zeros."""

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
        block = self._read_positions(ys, xs)[(slice(None), slice(None)) + tuple(key[2:])]
        drop = tuple(i for i in (0, 1) if isinstance(key[i], (int, np.integer)))
        return block.reshape([s for i, s in enumerate(block.shape) if i not in drop]) if drop else block

    def _read_positions(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        sx, n = self.scan_shape[1], self.source.n_frames
        shape = (len(ys), len(xs)) + self.source.frame_shape
        if len(ys) == 0 or len(xs) == 0:
            return np.zeros(shape, dtype=self.dtype)
        runs = np.split(np.arange(len(xs)), np.flatnonzero(np.diff(xs) != 1) + 1)  # of consecutive x
        start = ys[0] * sx + xs[0] - self.first
        whole_rows = len(xs) == sx and np.all(np.diff(ys) == 1)
        if len(runs) == 1 and (len(ys) == 1 or whole_rows) and start >= 0 and start + len(ys) * len(xs) <= n:
            return self.source.read(start, start + len(ys) * len(xs)).reshape(shape)  # one read, zero-copy if it can
        out = np.zeros(shape, dtype=self.dtype)  # a read per run and row; positions without a frame stay 0
        for j, y in enumerate(ys):
            for run in runs:
                a = y * sx + xs[run[0]] - self.first
                lo, hi = max(a, 0), min(a + len(run), n)
                if lo < hi:
                    out[j, run[0] + lo - a : run[0] + hi - a] = self.source.read(lo, hi)
        return out


class Lazy4D(_Handled):
    """A 4D array in a file (scan_y, scan_x, det_y, det_x), opened lazily, read in native byte order;
    opener: a picklable callable returning the array-like (an h5py dataset, a memmap...)."""

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


def natural_key(name: str):
    """Sort key of a file name in natural order (``scan_2`` before ``scan_10``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def grid_frames(source: FrameSource, path, scan_shape=None, *, hint=None, missing_at="end", chunk_frames=None,
                name: str):
    """(ScanFrames over the scan grid, missing mask, how the scan shape was found) for a flat frame
    source, laid out on the grid :func:`resolve_scan_shape` finds."""
    shape, how, first = resolve_scan_shape(path, source.n_frames, scan_shape, hint, missing_at)
    grid = FrameGrid(source, shape, first)
    frame_nbytes = int(np.prod(source.frame_shape)) * source.dtype.itemsize
    chunks = frame_chunks(shape, frame_nbytes, chunk_frames)
    return ScanFrames(grid, chunks, name=f"{name}-{first}-{shape[0]}x{shape[1]}"), grid.missing(), how


def array_frames(path, shape, dtype, opener=None, *, source=None, scan_shape=None, hint=None, missing_at="end",
                 chunk_frames=None, name: str, kind: str = "array"):
    """(ScanFrames, missing mask or None, how the scan shape was found) for a 4D scan (its own grid) or
    a 3D stack of frames (laid out by :func:`grid_frames`) in a file. opener: a picklable callable
    returning the array-like; source: a FrameSource of its frames to read instead; kind: the array's
    name in the metadata ("<kind> shape") and in the error for a wrong ``scan_shape``."""
    if len(shape) == 3:
        source = source or StackFrames(opener, shape, dtype, path)
        return grid_frames(source, path, scan_shape, hint=hint, missing_at=missing_at, chunk_frames=chunk_frames,
                           name=name)
    if len(shape) != 4:
        raise ScanFormatError(f"{path}: expected a 3D (N, y, x) or 4D (sy, sx, y, x) array, got shape {tuple(shape)}")
    shape = tuple(int(s) for s in shape)
    if scan_shape is not None and tuple(scan_shape) != shape[:2]:
        raise ScanFormatError(f"{path}: wrong scan shape {tuple(scan_shape)}: the {kind} is a "
                              f"{shape[0]}x{shape[1]} scan")
    if source is not None:
        return grid_frames(source, path, shape[:2], chunk_frames=chunk_frames, name=name)[0], None, f"{kind} shape"
    chunks = frame_chunks(shape[:2], int(np.prod(shape[2:])) * np.dtype(dtype).itemsize, chunk_frames)
    return ScanFrames(Lazy4D(opener, shape, dtype, path), chunks, name=name), None, f"{kind} shape"


def _shown(value, limit: int = 60) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def stated_scan_shape(path, value, where: str, n_frames: int):
    """The hint (scan shape, ``where``) for :func:`resolve_scan_shape` from a scan shape a file
    states (a sidecar entry, an attribute): two positive integers with a position for each of the
    ``n_frames`` frames, else a ScanFormatError naming ``path`` and ``where`` (the field)."""
    try:
        v = None if isinstance(value, (str, bytes, dict)) else np.asarray(value)
    except (TypeError, ValueError):  # a ragged list
        v = None
    if (v is None or v.shape != (2,) or v.dtype.kind not in "iuf"
            or not np.all(np.isfinite(v)) or not np.all(v == np.round(v))):
        raise ScanFormatError(f"{path}: {where} {_shown(value)} is not a scan shape "
                              "(expected two positive integers: scan rows, scan columns)")
    try:
        shape = parse_scan_shape(v.astype(np.int64))
    except ValueError as exc:
        raise ScanFormatError(f"{path}: {where}: {exc}") from None
    if shape[0] * shape[1] < n_frames:
        raise ScanFormatError(
            f"{path}: wrong scan shape {shape[0]}x{shape[1]} in {where}: {shape[0] * shape[1]} positions "
            f"for {n_frames} frames in the file (give --scan-shape SY SX; Python: scan_shape=(SY, SX))")
    return shape, where


def stated_geometry(path, stated, detector_shape, where: str = "geometry"):
    """The Geometry of calibration values a file states ({"pixel_size_um": 55, ...}; an ``origins``
    entry as ``Geometry.to_dict`` writes it), marked "file". Each value gets the check the command
    line's values get (``Geometry.with_values``: a finite positive number); anything else is a
    ScanFormatError naming ``path`` and the field (``where``.name)."""
    from ..geometry import CALIBRATION_FIELDS, Geometry

    if not isinstance(stated, dict):
        raise ScanFormatError(f"{path}: {where} must be an object of calibration values "
                              f"({{\"pixel_size_um\": 55, ...}}), got {_shown(stated)}")
    geometry = Geometry(detector_shape=detector_shape)
    for name in CALIBRATION_FIELDS:
        value = stated.get(name)
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ScanFormatError(f"{path}: {where}.{name} must be a number, got {_shown(value)}")
        try:
            geometry.with_values("file", **{name: value})
        except ValueError as exc:
            raise ScanFormatError(f"{path}: {where}.{name}: {exc}") from None
    try:
        return Geometry.from_dict({**stated, "detector_shape": tuple(detector_shape)})
    except (TypeError, ValueError, AttributeError) as exc:
        raise ScanFormatError(f"{path}: {where}: {_shown(exc, 200)}") from None


def resolve_scan_shape(path, n_frames: int, scan_shape=None, hint=None, missing_at: str = "end"):
    """Scan shape (scan_y, scan_x), how it was found, and the grid index of the first frame.

    scan_shape: given by the user (wins). hint: (shape, how) from the file's metadata. Otherwise a
    square grid when n_frames is a square number, else one scan row. Fewer frames than positions
    pads the grid at the "end" (an interrupted acquisition) or the "start" (``missing_at``).
    """
    if missing_at not in ("end", "start"):
        raise ValueError(f"missing_at must be 'end' or 'start', not {missing_at!r}")
    if n_frames <= 0:
        raise ScanFormatError(f"{path}: empty file (no frames)")
    how = "given"
    if scan_shape is not None:
        try:
            shape = parse_scan_shape(scan_shape)
        except ValueError as exc:
            raise ScanFormatError(f"{path}: {exc}") from None
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
            shape, how = (1, n_frames), "one row (scan shape unknown)"
            if not _READING_FLATFIELD.get():
                log.warning("%s: %d frames and no scan shape in the file: opened as one row", path, n_frames)
    first = shape[0] * shape[1] - n_frames if missing_at == "start" else 0
    return shape, how, first
