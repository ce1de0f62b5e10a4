"""Reduced scans written by ``sedclassify reduce`` (:mod:`napari_sedclassify.pipeline.reduce`).

A reduced file holds only the frames of the kept classes. It opens as a Scan on the ORIGINAL
scan grid: kept positions read their frame, every other position is marked in ``scan.missing``
(and reads as zeros), so the scan lines up with the class map, the overview and the full scan.
``scan.metadata`` carries the class map, the kept classes, the kept positions and the provenance.
``read_kept(path)`` gives the kept frames alone as a (K, ky, kx) stack with their positions.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from ..classes import ClassTable
from ..errors import ScanFormatError
from ..geometry import Geometry
from ..scan import Scan, ScanFrames
from ._lazy import FrameGrid, FrameSource, file_token, frame_chunks
from .hdf5 import _h5py

FORMAT = "napari-sedclassify/reduced"


def _open_file(path):
    """The reduced file open for reading. A live reduction (``watch --reduce``) builds its file in
    HDF5's SWMR mode; killed mid-run it stays marked as open for writing, and is then opened as an
    SWMR reader (consistent: it holds what its last commit wrote)."""
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if "already open for write" not in str(exc):
            raise
        return h5py.File(path, "r", swmr=True)


def is_reduced(path) -> bool:
    """True when ``path`` is an HDF5 file written by ``sedclassify reduce`` (or ``watch --reduce``)."""
    try:
        h5py = _h5py()
        if not h5py.is_hdf5(path):
            return False
        with _open_file(path) as f:
            fmt = f.attrs.get("format")
        return (fmt.decode() if isinstance(fmt, bytes) else fmt) == FORMAT
    except (OSError, ValueError):
        return False


probe = is_reduced


class ReducedFrames(FrameSource):
    """The kept frames of a reduced file, (K, ky, kx), stored plainly/Bitshuffle-LZ4 or as TERSE."""

    def __init__(self, path, n_frames, frame_shape, dtype, terse: bool):
        self.path = str(path)
        self.n_frames = int(n_frames)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.dtype = np.dtype(dtype)
        self.terse = bool(terse)

    def _open(self):
        return _open_file(self.path)["frames_terse" if self.terse else "frames"]

    def _read(self, ds, start, stop):
        if not self.terse:
            return np.asarray(ds[start:stop])
        out = np.empty((stop - start,) + self.frame_shape, self.dtype)
        for j, blob in enumerate(ds[start:stop]):
            out[j] = terse_decode(blob, self.frame_shape, self.dtype)
        return out


class SparseGrid(FrameGrid):
    """Kept frames laid out on the scan grid (scan_y, scan_x, ky, kx) for ``dask.array.from_array``:
    ``number`` (sy, sx) int64 gives each position's frame in the source, -1 where none (zeros)."""

    def __init__(self, source: FrameSource, number: np.ndarray):
        self.number = np.asarray(number, np.int64)
        super().__init__(source, self.number.shape)

    def _read_positions(self, ys, xs):
        num = self.number[np.ix_(ys, xs)]
        block = np.zeros(num.shape + self.source.frame_shape, self.dtype)
        have = num >= 0
        if have.any():
            lo, hi = int(num[have].min()), int(num[have].max()) + 1  # kept frames are in scan order
            block[have] = self.source.read(lo, hi)[num[have] - lo]
        return block


def terse_encode(frame: np.ndarray) -> bytes:
    """One frame as a TERSE/PROLIX stream, verified: decoding it must give ``frame`` exactly.

    pyterse's default ("small") mode loses pixels in the last partial block of a frame; it is
    switched off here, and the round trip is checked anyway: a mismatch raises ValueError.
    """
    import pyterse

    frame = np.ascontiguousarray(frame)
    t = pyterse.Terse()
    t.set_small(False)
    t.push_back(frame)
    buf = io.BytesIO()
    t.write(buf)
    blob = buf.getvalue()
    back = terse_decode(blob, frame.shape, frame.dtype)
    if not np.array_equal(back, frame):
        bad = int(np.count_nonzero(back != frame))
        raise ValueError(f"TERSE round trip failed: {bad} of {frame.size} pixels differ after decoding "
                         f"(pyterse {version_of('pyterse')}); use --compression bslz4")
    return blob


def terse_decode(blob, shape, dtype) -> np.ndarray:
    """Decode one TERSE/PROLIX stream to a frame of ``shape`` and ``dtype``."""
    import pyterse

    data = pyterse.Terse(io.BytesIO(bytes(blob))).prolix()
    return np.asarray(data).reshape(shape).astype(dtype, copy=False)


def version_of(name: str) -> str | None:
    """The installed version of distribution ``name``, None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def read(path, scan_shape=None, *, missing_at="end", chunk_frames=None) -> Scan:
    """Open a reduced file lazily as a Scan on its original grid (dropped positions missing)."""
    path = Path(path)
    try:
        with _open_file(path) as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            if attrs.get("format") != FORMAT:
                raise ScanFormatError(f"{path}: not a reduced scan (format {attrs.get('format')!r})")
            terse = "frames_terse" in f
            if not terse and "frames" not in f:
                raise ScanFormatError(f"{path}: reduced scan without a frames dataset")
            arrays = {k: f[k][()] for k in ("index", "class_map", "kept", "missing", "probabilities") if k in f}
            live = None
            if "live_status" in f:  # written on the fly: what the last commit made part of the file
                live = {"status": f["live_status"][()].decode(), "committed": int(f["live_committed"][()]),
                        "report": json.loads(f["live_report"][()].decode() or "{}")}
    except OSError as exc:
        raise ScanFormatError(f"{path}: not a readable reduced scan ({exc})") from exc
    sy, sx = (int(s) for s in attrs["scan_shape"])
    ky, kx = (int(s) for s in attrs["detector_shape"])
    if scan_shape is not None and tuple(int(s) for s in scan_shape) != (sy, sx):
        raise ScanFormatError(f"{path}: wrong scan shape {tuple(scan_shape)}: the reduced scan is {sy}x{sx}")
    dtype = np.dtype(attrs["dtype"])
    index = arrays["index"] if live is None else arrays["index"][:live["committed"]]
    number = np.full(sy * sx, -1, np.int64)
    number[index] = np.arange(index.size)
    # written on the fly: the kept positions are those whose frame is committed
    kept = arrays["kept"] if live is None else (number >= 0).reshape(sy, sx)
    grid = SparseGrid(ReducedFrames(path, index.size, (ky, kx), dtype, terse), number.reshape(sy, sx))
    data = ScanFrames(grid, frame_chunks((sy, sx), ky * kx * dtype.itemsize, chunk_frames),
                      name=f"reduced-{file_token(path)}")
    metadata = {
        "format": "napari-sedclassify reduced scan",
        "compression": attrs["compression"],
        "kept_classes": {int(k): v for k, v in json.loads(attrs["kept_classes"]).items()},
        "class_table": ClassTable.from_dict(json.loads(attrs["class_table"])).to_dict(),
        "class_map": arrays["class_map"],
        "kept": kept,
        "positions": np.stack(np.divmod(index, sx), axis=1),
        "n_kept": int(index.size),
        "source_missing": arrays["missing"],
        "provenance": json.loads(attrs["provenance"]),
        "dtype_on_disk": dtype.str,
        **json.loads(attrs.get("detector", "{}")),  # the input's wide pixels, counter depth (DETECTOR_KEYS)
    }
    if "probabilities" in arrays:
        metadata["probabilities"] = arrays["probabilities"]
    if live is not None:
        metadata["status"] = "complete" if live["status"] == "complete" else "partial"
        metadata["live"] = live
    geometry, given = _stored_geometry(json.loads(attrs["geometry"]), (ky, kx))
    if given:
        metadata["calibration_given_when_written"] = given  # to `sedclassify reduce` or `watch --reduce`
    return Scan(data, geometry, missing=~kept, metadata=metadata, source=str(path))


def _stored_geometry(stored: dict, detector_shape) -> tuple[Geometry, dict]:
    """The geometry a reduced file stores, as read back: values the command that wrote it was
    given (origin "user" then) are the file's now, as is every value it states; "fitted" and
    "assumed" stay what they were. Also {name: value} of those given values."""
    g = Geometry.from_dict({**stored, "detector_shape": tuple(detector_shape)})
    given = {n: getattr(g, n) for n, origin in g.origins if origin == "user"}
    return (g.marked("file", *given) if given else g), given


def read_kept(path):
    """(frames, positions): the kept frames as a lazy dask stack (K, ky, kx) and their scan
    positions (K, 2) int (iy, ix)."""
    import dask.array as da

    scan = read(path)
    source = scan.frame_source.array.source  # the kept frames behind the scan's grid
    frame_nbytes = int(np.prod(scan.detector_shape)) * np.dtype(scan.dtype).itemsize
    chunk = max(1, frame_chunks((1, max(source.n_frames, 1)), frame_nbytes)[1])
    frames = da.from_array(FrameGrid(source, (1, source.n_frames)), chunks=(1, chunk, -1, -1),
                           name=f"reduced-kept-{file_token(scan.source)}", meta=np.empty((0, 0, 0, 0), scan.dtype))
    return frames[0], scan.metadata["positions"]
