"""Data reduction: keep only the frames of chosen classes (the paper: store only amorphous ice).

``reduce_scan(scan, class_map, out, classes=("amorphous_ice",))`` streams the scan chunk by
chunk and writes one HDF5 file holding

- ``frames`` (K, ky, kx): the kept frames, in scan order, in their original dtype, compressed
  losslessly one frame per chunk: Bitshuffle-LZ4 (hdf5plugin, default), no compression, or
  ``frames_terse``: one TERSE/PROLIX (``.trpx``) stream per frame (pyterse, with
  ``set_small(False)``; every frame is decoded again right after encoding and the run stops with
  an error if a single pixel differs, since pyterse's default mode is not lossless);
- ``positions`` (K, 2) int32 (iy, ix) and ``index`` (K,) flat scan index of each kept frame;
- ``class_map`` (sy, sx) uint8, ``kept`` and ``missing`` (sy, sx) bool, and, when a model
  classified the scan, ``probabilities`` (sy, sx, k) float32;
- attributes: format, geometry, class table, kept classes, compression and provenance (input
  file, how the class map was made, versions, time, sizes).

The file is written atomically (:mod:`napari_sedclassify.io.atomic`) and reads back with
``io.open_scan`` as a Scan on the original grid whose dropped positions are marked missing
(:mod:`napari_sedclassify.io.reduced`).
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..classes import ClassTable
from ..io.atomic import atomic_output

FORMAT = "napari-sedclassify/reduced"
FORMAT_VERSION = 1
COMPRESSIONS = ("bslz4", "terse", "none")


class Cancelled(Exception):
    """The reduction was stopped by its cancel callable; no output was written."""


@dataclass
class ReduceReport:
    """What a reduction wrote and how fast.

    n_frames: recorded frames of the scan; n_kept: frames written. bytes_scan: the recorded
    frames uncompressed; bytes_kept: the kept frames uncompressed; bytes_file: size of the file.
    size_ratio = bytes_scan / bytes_file (what selection and compression save together);
    compression_ratio = bytes_kept / bytes of the stored frames (compression alone).
    seconds: wall time of the write; mb_per_s: uncompressed kept MB written per second.
    """

    path: str
    compression: str
    classes: list
    n_frames: int
    n_kept: int
    bytes_scan: int
    bytes_kept: int
    bytes_frames_stored: int
    bytes_file: int
    seconds: float

    @property
    def size_ratio(self) -> float:
        return self.bytes_scan / self.bytes_file if self.bytes_file else float("inf")

    @property
    def compression_ratio(self) -> float:
        return self.bytes_kept / self.bytes_frames_stored if self.bytes_frames_stored else float("nan")

    @property
    def mb_per_s(self) -> float:
        return self.bytes_kept / 1e6 / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(size_ratio=round(self.size_ratio, 3), compression_ratio=round(self.compression_ratio, 3),
                 mb_per_s=round(self.mb_per_s, 1), kept_fraction=round(self.n_kept / max(self.n_frames, 1), 4))
        return d


def class_ids(classes, table: ClassTable) -> list[int]:
    """Class ids from names or ids (``"amorphous_ice"``, ``2``, ``"2"``); raises on unknown ones."""
    if isinstance(classes, (str, int, np.integer)):
        classes = [classes]
    ids = []
    for c in classes:
        for part in str(c).split(","):
            part = part.strip()
            if not part:
                continue
            if part.isdigit():
                if int(part) not in table.names:
                    raise ValueError(f"unknown class id {part} (known: {_known(table)})")
                ids.append(int(part))
            else:
                try:
                    ids.append(table.id_of(part))
                except KeyError:
                    raise ValueError(f"unknown class '{part}' (known: {_known(table)})") from None
    if not ids:
        raise ValueError("no class to keep: give at least one class name")
    return sorted(set(ids))


def _known(table: ClassTable) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(table.names.items()))


def kept_positions(class_map, ids, missing=None) -> np.ndarray:
    """bool (sy, sx): positions whose class is one of ``ids`` and that hold a recorded frame."""
    keep = np.isin(np.asarray(class_map), list(ids))
    if missing is not None:
        keep &= ~np.asarray(missing, bool)
    return keep


def reduce_scan(scan, class_map, out, *, classes=("amorphous_ice",), class_table: ClassTable | None = None,
                compression: str = "bslz4", probabilities=None, provenance: dict | None = None,
                force: bool = False, progress: Callable | None = None,
                cancel: Callable | None = None) -> ReduceReport:
    """Write the frames of ``scan`` whose class in ``class_map`` is one of ``classes`` to ``out``.

    scan: a Scan (read lazily, a chunk of frames at a time). class_map: (sy, sx) class ids.
    classes: names or ids to keep. compression: "bslz4", "terse" or "none". probabilities:
    optional (sy, sx, k) stored alongside. provenance: extra entries (e.g. how the class map was
    made). progress(done, total) counts kept frames; cancel() -> True stops (nothing written).
    Raises FileExistsError when ``out`` exists and ``force`` is False.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
    table = class_table or ClassTable.default()
    ids = class_ids(classes, table)
    class_map = np.asarray(class_map)
    if class_map.shape != scan.scan_shape:
        raise ValueError(f"class map shape {class_map.shape} does not match the scan shape {scan.scan_shape} "
                         f"of {scan.source or 'the scan'}")
    dtype = np.dtype(scan.dtype)
    if compression == "terse" and dtype.kind not in "ui":
        raise ValueError(f"TERSE stores integer frames only; {scan.source or 'the scan'} holds {dtype}")
    missing = np.asarray(scan.missing, bool)
    keep = kept_positions(class_map, ids, missing)
    index = np.flatnonzero(keep.ravel())
    sy, sx = scan.scan_shape
    frame_bytes = int(np.prod(scan.detector_shape)) * dtype.itemsize
    _h5()  # imports outside the timing
    if compression == "terse":
        import pyterse  # noqa: F401
    t0 = time.perf_counter()
    out = Path(out)
    with atomic_output(out, force=force) as tmp:
        stored = _write(tmp, scan, index, class_map, keep, missing, ids, table, compression, probabilities,
                        provenance or {}, progress, cancel)
        size = os.path.getsize(tmp)
    return ReduceReport(
        path=str(out), compression=compression, classes=[table.names[i] for i in ids],
        n_frames=int((~missing).sum()), n_kept=int(index.size), bytes_scan=int((~missing).sum()) * frame_bytes,
        bytes_kept=int(index.size) * frame_bytes, bytes_frames_stored=int(stored), bytes_file=int(size),
        seconds=time.perf_counter() - t0,
    )


def _h5():
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Bitshuffle filter)

    return h5py


def _write(path, scan, index, class_map, keep, missing, ids, table, compression, probabilities, provenance,
           progress, cancel) -> int:
    """Write the reduced file at ``path``; returns the bytes the stored frames take."""
    h5py = _h5()
    import hdf5plugin

    sy, sx = scan.scan_shape
    ky, kx = scan.detector_shape
    k = int(index.size)
    with h5py.File(path, "w") as f:
        if compression == "terse":
            frames = f.create_dataset("frames_terse", shape=(k,), dtype=h5py.vlen_dtype(np.uint8))
        else:
            filt = dict(hdf5plugin.Bitshuffle(cname="lz4")) if compression == "bslz4" else {}
            frames = f.create_dataset("frames", shape=(k, ky, kx), dtype=scan.dtype,
                                      chunks=(1, ky, kx) if k else None, **filt)
        stored = 0
        done = 0
        if progress is not None:
            progress(0, k)
        for first, block, pos in _kept_blocks(scan, index):
            if cancel is not None and cancel():
                raise Cancelled(f"stopped after {done} of {k} frames")
            if compression == "terse":
                for j, frame in enumerate(block):
                    blob = terse_encode(frame)
                    frames[first + j] = np.frombuffer(blob, np.uint8)
                    stored += len(blob)
            else:
                frames[first:first + len(block)] = block
            done += len(block)
            if progress is not None:
                progress(done, k)
        if compression != "terse":
            stored = frames.id.get_storage_size()
        iy, ix = np.divmod(index, sx)
        f.create_dataset("positions", data=np.stack([iy, ix], axis=1).astype(np.int32).reshape(k, 2))
        f.create_dataset("index", data=index.astype(np.int64))
        f.create_dataset("class_map", data=np.asarray(class_map, np.uint8))
        f.create_dataset("kept", data=keep)
        f.create_dataset("missing", data=missing)
        if probabilities is not None:
            f.create_dataset("probabilities", data=np.asarray(probabilities, np.float32))
        f.attrs.update({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "scan_shape": [sy, sx],
            "detector_shape": [ky, kx],
            "dtype": np.dtype(scan.dtype).str,
            "compression": compression,
            "kept_classes": json.dumps({str(i): table.names[i] for i in ids}),
            "class_table": json.dumps(table.to_dict()),
            "geometry": json.dumps(scan.geometry.to_dict()),
            "provenance": json.dumps(_provenance(scan, compression, provenance), default=str),
        })
    return stored


def _kept_blocks(scan, index):
    """(first kept number, frames (n, ky, kx), flat indices) for the kept frames, one dask chunk of
    the scan at a time (bounded memory), read with the synchronous scheduler."""
    if index.size == 0:
        return
    data = scan.data
    sx = scan.scan_shape[1]
    row_edges = np.cumsum((0,) + data.chunks[0])
    col_edges = np.cumsum((0,) + data.chunks[1])
    iy, ix = np.divmod(index, sx)
    first = 0
    for y0, y1 in zip(row_edges[:-1], row_edges[1:]):
        for x0, x1 in zip(col_edges[:-1], col_edges[1:]):
            sel = index[(iy >= y0) & (iy < y1) & (ix >= x0) & (ix < x1)]
            if sel.size == 0:
                continue
            block = np.asarray(data[y0:y1, x0:x1].compute(scheduler="synchronous"))
            ly, lx = np.divmod(sel, sx)
            frames = block[ly - y0, lx - x0]
            yield first, frames, sel
            first += sel.size


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
                         f"(pyterse {_version('pyterse')}); use --compression bslz4")
    return blob


def terse_decode(blob, shape, dtype) -> np.ndarray:
    """Decode one TERSE/PROLIX stream to a frame of ``shape`` and ``dtype``."""
    import pyterse

    data = pyterse.Terse(io.BytesIO(bytes(blob))).prolix()
    return np.asarray(data).reshape(shape).astype(dtype, copy=False)


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _provenance(scan, compression, extra: dict) -> dict:
    src = scan.source
    info = {"source": src, "scan_shape": list(scan.scan_shape), "detector_shape": list(scan.detector_shape),
            "dtype": str(scan.dtype), "missing_frames": int(np.asarray(scan.missing).sum())}
    if src and os.path.exists(src):
        st = os.stat(src)
        info.update(size_bytes=st.st_size, mtime=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(st.st_mtime)))
    settings = {"bslz4": "hdf5plugin Bitshuffle(cname='lz4'), chunks of one frame",
                "terse": "pyterse set_small(False), one TRPX stream per frame, round trip verified",
                "none": "no compression, chunks of one frame"}[compression]
    return {
        "input": info,
        **extra,
        "compression": {"name": compression, "settings": settings},
        "software": {"napari-sedclassify": __version__, "h5py": _version("h5py"),
                     "hdf5plugin": _version("hdf5plugin"),
                     **({"pyterse": _version("pyterse")} if compression == "terse" else {})},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
