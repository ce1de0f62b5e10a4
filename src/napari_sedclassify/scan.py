"""Scan: a lazy 4D diffraction scan (scan_y, scan_x, det_y, det_x) with its geometry."""

from __future__ import annotations

import numpy as np

from .geometry import Geometry


def parse_scan_shape(scan_shape) -> tuple[int, int]:
    """(scan_y, scan_x) as two positive integers; ValueError saying what is wrong otherwise."""
    try:
        sy, sx = (int(v) for v in scan_shape)
    except (TypeError, ValueError):
        raise ValueError(f"wrong scan shape {scan_shape!r}: expected (scan_y, scan_x)") from None
    if sy < 1 or sx < 1:
        raise ValueError(f"wrong scan shape {sy}x{sx}: both sides must be at least 1")
    return sy, sx


#: Target size of one chunk of whole frames (bytes): the unit of work of every executor.
CHUNK_BYTES = 32 * 2**20


#: Pieces each of the last blocks is cut in by ``ScanFrames.blocks(finer_tail=...)``.
TAIL_PIECES = 4


def frame_chunks(scan_shape, frame_nbytes: int, chunk_frames: int | None = None) -> tuple[int, int]:
    """Chunk size (rows, cols) over the scan: whole frames, about CHUNK_BYTES per chunk.

    Whole scan rows per chunk when a row fits, else part of one row.
    """
    sy, sx = scan_shape
    if chunk_frames is None:
        chunk_frames = max(1, CHUNK_BYTES // max(1, frame_nbytes))
    chunk_frames = max(1, int(chunk_frames))
    if chunk_frames >= sx:
        return (max(1, min(sy, chunk_frames // sx)), sx)
    return (1, chunk_frames)


def _check_not_empty(shape, where: str) -> None:
    """Raise ValueError when a 4D scan ``shape`` has no frames or empty frames."""
    sy, sx, ky, kx = (int(v) for v in shape)
    if sy * sx == 0:
        raise ValueError(f"{where}: the scan is empty (scan shape {sy} x {sx}: no frames)")
    if ky * kx == 0:
        raise ValueError(f"{where}: the frames are empty (detector {ky} x {kx} px)")


class ScanFrames:
    """The frame source every executor reads: a 4D array-like (scan_y, scan_x, det_y, det_x) read
    by whole frames, in blocks of whole scan rows (or parts of one row).

    array: anything with ``shape``, ``dtype`` and numpy-style ``__getitem__`` over the scan grid: a
    file reader of ``io`` (opened on first read, picklable without its handle), a numpy array or
    memory map, or a dask array (read with the synchronous scheduler). chunks: (rows, cols) per
    block. name: a stable name (the file's path, size and time) for the dask array that
    ``to_dask()`` makes, only when something asks for one (a dask.distributed run, a napari
    layer): reading frames needs neither dask nor a scheduler.
    """

    def __init__(self, array, chunks: tuple[int, int] | None = None, name: str | None = None):
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        if len(self.shape) != 4:
            raise ValueError(f"expected a 4D array (scan_y, scan_x, det_y, det_x), got shape {self.shape}")
        _check_not_empty(self.shape, "scan")
        self.dtype = np.dtype(array.dtype)
        self.ndim = 4
        if chunks is None and _is_dask(array):
            chunks = (max(array.chunks[0]), max(array.chunks[1]))
        if chunks is None:
            chunks = frame_chunks(self.shape[:2], int(np.prod(self.shape[2:])) * self.dtype.itemsize)
        self.chunks = (int(chunks[0]), int(chunks[1]))
        self.name = name
        self._dask = array if _is_dask(array) else None

    def __getitem__(self, key) -> np.ndarray:
        if self._dask is not None:
            from dask.local import get_sync  # a scheduler function: naming one imports distributed

            return np.asarray(self._dask[key].compute(scheduler=get_sync))
        return np.asarray(self.array[key])

    def __array__(self, dtype=None, copy=None):
        whole = self[:, :]
        return whole if dtype is None else whole.astype(dtype)

    def read(self, flat_index) -> np.ndarray:
        """Frames at flat (row-major) scan indices, (m, det_y, det_x); positions in one scan row
        are read together."""
        flat = np.asarray(flat_index, dtype=np.int64).ravel()
        out = np.empty((flat.size,) + self.shape[2:], self.dtype)
        sx = self.shape[1]
        rows = flat // sx
        for row in sorted(set(rows.tolist())):  # (np.unique would import numpy.ma: 6-19 ms)
            at = np.flatnonzero(rows == row)
            cols = flat[at] % sx
            lo, hi = int(cols.min()), int(cols.max()) + 1
            if hi - lo == at.size and at[-1] - at[0] + 1 == at.size and np.all(np.diff(cols) == 1):
                out[at[0]: at[-1] + 1] = self[int(row), lo:hi]  # a run in order: one copy, not two
            elif hi - lo <= 4 * at.size:
                out[at] = self[int(row), lo:hi][cols - lo]
            else:
                for a, c in zip(at, cols):
                    out[a] = self[int(row), int(c)]
        return out

    def blocks(self, chunk_frames: int | None = None, finer_tail: int = 0):
        """(flat index (n,), row slice, col slice) of each block, row-major; chunk_frames
        overrides the block size. finer_tail: the last ``finer_tail`` blocks are cut in up to
        TAIL_PIECES pieces each (by rows; a part of one row by columns), so that threads sharing
        the blocks finish together: with whole blocks to the end, one thread's last block ran
        while the other's core idled, half a block on average (docs/performance.md, session 29)."""
        sy, sx = self.shape[:2]
        rows, cols = self.chunks if chunk_frames is None else frame_chunks((sy, sx), 1, chunk_frames)
        spans = [(r0, min(sy, r0 + rows), c0, min(sx, c0 + cols)) for r0 in range(0, sy, rows) for c0 in range(0, sx, cols)]
        cut = len(spans) - max(0, min(int(finer_tail), len(spans)))
        for k, (r0, r1, c0, c1) in enumerate(spans):
            pieces = [(r0, r1, c0, c1)]
            if k >= cut:
                if r1 - r0 > 1:
                    step = -(-(r1 - r0) // TAIL_PIECES)
                    pieces = [(a, min(r1, a + step), c0, c1) for a in range(r0, r1, step)]
                elif c1 - c0 > 1:
                    step = -(-(c1 - c0) // TAIL_PIECES)
                    pieces = [(r0, r1, a, min(c1, a + step)) for a in range(c0, c1, step)]
            for a0, a1, b0, b1 in pieces:
                index = (np.arange(a0, a1)[:, None] * sx + np.arange(b0, b1)[None, :]).ravel()
                yield index, slice(a0, a1), slice(b0, b1)

    def to_dask_if_made(self):
        """The dask array if one was made (or given), else None."""
        return self._dask

    def to_dask(self):
        """The frames as a dask array with this chunking (made once)."""
        if self._dask is None:
            import dask.array as da

            rows, cols = self.chunks
            name = None if self.name is None else f"{self.name}-{rows}x{cols}"
            self._dask = da.from_array(self.array, chunks=(rows, cols, -1, -1), name=name or False,
                                       meta=np.empty((0, 0, 0, 0), dtype=self.dtype))
        return self._dask

    def __getstate__(self):
        state = dict(self.__dict__)
        if state["_dask"] is not state["array"]:
            state["_dask"] = None
        return state


#: What a scan's metadata may say of its detector that processing needs (the wide chip-edge
#: pixels' width, the counter depth or full value): kept when frames are copied into a new file.
DETECTOR_KEYS = ("edge_pixel_width", "counter_depth", "saturation_counts", "counter_max")


def detector_metadata(metadata: dict | None) -> dict:
    """The DETECTOR_KEYS entries of scan ``metadata`` (a simulated scan keeps some under
    ``session_params``), {} when it says none."""
    md = metadata or {}
    sub = md.get("session_params") if isinstance(md.get("session_params"), dict) else {}
    out = {}
    for key in DETECTOR_KEYS:
        value = md.get(key, sub.get(key))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out


def _is_dask(array) -> bool:
    return hasattr(array, "dask") and hasattr(array, "to_delayed")


class Scan:
    """A 4D scan (scan_y, scan_x, det_y, det_x), read lazily frame by frame, with its geometry.

    frames: a ScanFrames (what the readers give), or any 4D array-like (numpy, memory map,
        dask array), wrapped in one.
    geometry: detector and calibration.
    missing: bool (scan_y, scan_x), True where no frame was recorded (interrupted
        acquisition, dropped frames); those positions read as zeros.
    metadata: anything else the file says (exposure, timestamps, dtype on disk...).
    source: path of the file it was read from, if any.

    ``scan.frame_source`` is what executors read; ``scan.data`` is the same frames as a dask
    array, made on first use.
    """

    def __init__(self, frames, geometry: Geometry | None = None, missing: np.ndarray | None = None,
                 metadata: dict | None = None, source: str | None = None):
        self.source = source
        if not hasattr(frames, "shape") or len(frames.shape) != 4:
            raise ValueError(f"{source or 'scan'}: expected a 4D array (scan_y, scan_x, det_y, det_x), "
                             f"got shape {tuple(getattr(frames, 'shape', ()))}")
        _check_not_empty(frames.shape, source or "scan")
        self.frame_source = frames if isinstance(frames, ScanFrames) else ScanFrames(frames)
        self.geometry = geometry if geometry is not None else Geometry()
        self.metadata = {} if metadata is None else metadata
        if missing is None:
            missing = np.zeros(self.scan_shape, dtype=bool)
        self.missing = np.asarray(missing, dtype=bool)
        if self.missing.shape != self.scan_shape:
            raise ValueError(f"{self.source or 'scan'}: missing-frame mask shape {self.missing.shape} "
                             f"does not match scan shape {self.scan_shape}")
        if tuple(self.geometry.detector_shape) != self.detector_shape:
            self.geometry = self.geometry.replace(detector_shape=self.detector_shape)

    @property
    def data(self):
        """The scan as a dask array (scan_y, scan_x, det_y, det_x); never computed whole."""
        return self.frame_source.to_dask()

    @property
    def scan_shape(self) -> tuple[int, int]:
        return self.frame_source.shape[:2]

    @property
    def detector_shape(self) -> tuple[int, int]:
        return self.frame_source.shape[2:]

    @property
    def n_frames(self) -> int:
        return self.scan_shape[0] * self.scan_shape[1]

    @property
    def dtype(self):
        return self.frame_source.dtype

    def frames(self):
        """The scan as a flat dask stack of frames (N, det_y, det_x), row-major over the scan."""
        return self.data.reshape((self.n_frames,) + self.detector_shape)

    def frame(self, iy: int, ix: int) -> np.ndarray:
        """One frame as a numpy array (reads only that frame, in this thread)."""
        return self.frame_source[int(iy), int(ix)]

    def read(self, flat_index) -> np.ndarray:
        """The frames at these flat scan indices (m, det_y, det_x), read in this thread."""
        return self.frame_source.read(flat_index)

    def __repr__(self) -> str:
        return (f"Scan(scan_shape={self.scan_shape}, detector_shape={self.detector_shape}, "
                f"dtype={self.dtype}, missing={int(self.missing.sum())}, source={self.source!r})")
