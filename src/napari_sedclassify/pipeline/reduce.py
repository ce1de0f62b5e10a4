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

``write_keep_list`` writes the kept positions alone as CSV (the napari keep-list export).

The file is written atomically (:mod:`napari_sedclassify.io.atomic`) and reads back with
``io.open_scan`` as a Scan on the original grid whose dropped positions are marked missing
(:mod:`napari_sedclassify.io.reduced`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..classes import ClassTable
from ..errors import Cancelled
from ..io.atomic import atomic_output, check_target, fsync_folder
from ..io.reduced import FORMAT, terse_encode, version_of
from ..jsonutil import jsonable
from ..scan import detector_metadata
from . import tally

FORMAT_VERSION = 1
COMPRESSIONS = ("bslz4", "terse", "none")


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
    for part in filter(None, (p.strip() for c in classes for p in str(c).split(","))):
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


def write_keep_list(path, class_map, confidence, keep_ids, table, scan_step_nm=None) -> int:
    """The keep-list (one format for ``sedclassify predict``, ``watch`` and the napari export):
    CSV (atomic) of the scan positions whose class is in ``keep_ids``: flat frame index, row,
    column, position (nm, when the step is known), class id and name, confidence (the class's
    probability). table: a ClassTable or {id: name}. Returns the number of positions written."""
    import csv

    names = table.names if hasattr(table, "names") else dict(table)
    rows, cols = np.nonzero(kept_positions(class_map, keep_ids))
    with atomic_output(path, force=True) as tmp, open(tmp, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["frame_index", "row", "col", "y_nm", "x_nm", "class_id", "class", "confidence"])
        for r, c in zip(rows, cols):
            cid = int(class_map[r, c])
            y_nm, x_nm = ("", "") if not scan_step_nm else (f"{r * scan_step_nm:g}", f"{c * scan_step_nm:g}")
            out.writerow([int(r * class_map.shape[1] + c), int(r), int(c), y_nm, x_nm, cid,
                          names.get(cid, str(cid)), f"{float(confidence[r, c]):.4f}"])
    return len(rows)


def reduce_scan(scan, class_map, out, *, classes=("amorphous_ice",), class_table: ClassTable | None = None,
                compression: str = "bslz4", probabilities=None, provenance: dict | None = None,
                force: bool = False, progress: Callable | None = None,
                cancel: Callable | None = None) -> ReduceReport:
    """Write the frames of ``scan`` whose class in ``class_map`` is one of ``classes`` to ``out``.

    scan: a Scan (read lazily, a chunk of frames at a time). class_map: (sy, sx) class ids.
    classes: names or ids to keep. compression: "bslz4", "terse" or "none". probabilities:
    optional (sy, sx, k) stored alongside. provenance: extra entries (e.g. how the class map was
    made). progress(done, total) counts the scan's recorded frames gone through, kept or not (total:
    all of them, what the reading takes time over); cancel() -> True stops (nothing written).
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
    (sy, sx), (ky, kx), k = scan.scan_shape, scan.detector_shape, int(index.size)
    frame_bytes = ky * kx * dtype.itemsize
    import h5py  # (imports outside the timing)
    import hdf5plugin
    if compression == "terse":
        import pyterse  # noqa: F401
    t0 = time.perf_counter()
    out = Path(out)
    with atomic_output(out, force=force) as tmp, h5py.File(tmp, "w") as f:
        if compression == "terse":
            frames = f.create_dataset("frames_terse", shape=(k,), dtype=h5py.vlen_dtype(np.uint8))
        else:
            filt = dict(hdf5plugin.Bitshuffle(cname="lz4")) if compression == "bslz4" else {}
            frames = f.create_dataset("frames", shape=(k, ky, kx), dtype=scan.dtype,
                                      chunks=(1, ky, kx) if k else None, **filt)
        stored = first = 0
        present = np.cumsum(~missing.ravel())  # frames the scan holds up to each position
        n_frames = int(present[-1]) if present.size else 0
        if progress is not None:
            progress(0, n_frames)
        step = scan.frame_source.chunks[0] * scan.frame_source.chunks[1]  # a block of the scan at a time
        for start in range(0, sy * sx, step):
            if cancel is not None and cancel():
                raise Cancelled(f"stopped after {first} of {k} frames")
            last = int(np.searchsorted(index, start + step))  # the kept frames of positions start..start+step
            block = scan.read(index[first:last]) if last > first else ()
            if compression == "terse":
                for j, frame in enumerate(block):
                    blob = terse_encode(frame)
                    frames[first + j] = np.frombuffer(blob, np.uint8)
                    stored += len(blob)
            elif last > first:
                frames[first:last] = block
            first = last
            if progress is not None:
                progress(int(present[min(start + step, sy * sx) - 1]), n_frames)
        if compression != "terse":
            stored = frames.id.get_storage_size()
        f.create_dataset("positions", data=np.stack(np.divmod(index, sx), axis=1).astype(np.int32))
        f.create_dataset("index", data=index.astype(np.int64))
        f.create_dataset("class_map", data=np.asarray(class_map, np.uint8))
        f.create_dataset("kept", data=keep)
        f.create_dataset("missing", data=missing)
        if probabilities is not None:
            f.create_dataset("probabilities", data=np.asarray(probabilities, np.float32))
        src = scan.source
        info = {"source": src, "scan_shape": [sy, sx], "detector_shape": [ky, kx], "dtype": str(scan.dtype),
                "missing_frames": int(missing.sum())}
        if src and os.path.exists(src):
            st = os.stat(src)
            info.update(size_bytes=st.st_size, mtime=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(st.st_mtime)))
        f.attrs.update(_file_attrs((sy, sx), (ky, kx), scan.dtype, compression, ids, table, scan.geometry, info,
                                   provenance or {}, detector_metadata(scan.metadata)))
    tally.report(scan.source or scan, n_frames)
    return ReduceReport(
        path=str(out), compression=compression, classes=[table.names[i] for i in ids], n_frames=n_frames,
        n_kept=k, bytes_scan=n_frames * frame_bytes, bytes_kept=k * frame_bytes, bytes_frames_stored=int(stored),
        bytes_file=os.path.getsize(out), seconds=time.perf_counter() - t0,
    )


def _file_attrs(scan_shape, detector_shape, dtype, compression, ids, table, geometry, info, extra,
                detector: dict) -> dict:
    """The attributes of a reduced file (the same for ``reduce_scan`` and a live reduction). Its
    provenance: the input (``info``), ``extra`` entries (how the class map was made), the
    compression and its settings, software versions, time. detector: what the input said of its
    detector (``scan.detector_metadata``: wide chip-edge pixels, counter depth), which the reader
    gives back as the reduced scan's metadata, so that it is processed as the input was."""
    settings = {"bslz4": "hdf5plugin Bitshuffle(cname='lz4'), chunks of one frame",
                "terse": "pyterse set_small(False), one TRPX stream per frame, round trip verified",
                "none": "no compression, chunks of one frame"}[compression]
    provenance = {"input": info, **extra, "compression": {"name": compression, "settings": settings},
                  "software": {"napari-sedclassify": __version__, "h5py": version_of("h5py"),
                               "hdf5plugin": version_of("hdf5plugin"),
                               **({"pyterse": version_of("pyterse")} if compression == "terse" else {})},
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "scan_shape": [int(s) for s in scan_shape],
        "detector_shape": [int(s) for s in detector_shape],
        "dtype": np.dtype(dtype).str,
        "compression": compression,
        "kept_classes": json.dumps({str(i): table.names[i] for i in ids}),
        "class_table": json.dumps(table.to_dict()),
        "geometry": json.dumps(geometry.to_dict()),
        "detector": json.dumps(jsonable(detector)),
        "provenance": json.dumps(jsonable(provenance)),
    }


# ---- reduction on the fly (live mode) ----------------------------------------------------------------
#: Bytes kept for the JSON report of a reduced file written on the fly (longer reports are cut).
LIVE_REPORT_BYTES = 1 << 16


def partial_path(out) -> Path:
    """Where a live reduction to ``out`` is built: ``<stem>.partial<suffix>`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}.partial{out.suffix}")


def check_live_target(out, compression: str = "bslz4", force: bool = False) -> Path:
    """Refuse a live reduction to ``out`` before any work: a compression other than bslz4 or none,
    an existing ``out`` or partial file (unless ``force``). Returns ``out`` as a Path."""
    if compression not in ("bslz4", "none"):
        raise ValueError(f"on-the-fly reduction writes bslz4 or none, not {compression!r} "
                         "(reduce the finished scan with sedclassify reduce --compression terse)")
    out = check_target(out, force)
    if partial_path(out).exists() and not force:
        raise FileExistsError(f"{partial_path(out)}: a partial file of an earlier live run is there; not "
                              "overwritten (use --force to replace it)")
    return out


class StreamingReducer:
    """Write the kept frames of a live run to a reduced file as they arrive, in bounded memory.

    The file has the layout of :func:`reduce_scan`'s (same datasets, attributes and compression:
    Bitshuffle-LZ4 or none, one frame per chunk; TERSE is not offered on the fly) and is built at
    :func:`partial_path` in HDF5's single-writer/multiple-reader (SWMR) mode, which keeps the file
    consistent on disk at every moment. :meth:`add` appends kept frames (in scan order);
    :meth:`commit` writes the kept positions, class map, probabilities and counters and flushes:
    a run killed at any point leaves the partial file, which ``io.open_scan`` opens with the frames
    of the last commit (``scan.metadata["status"]`` is "partial"). :meth:`finish` commits, closes
    and, when the run is complete, flushes the file to disk and renames it to ``out`` (atomically);
    a run that ends otherwise (stopped, timeout, frames lost, error) leaves the partial file with
    that status. Memory: the frames being written and the kept indices (8 bytes per kept frame).
    """

    def __init__(self, out, *, scan_shape, detector_shape, dtype, geometry, class_table: ClassTable, keep_ids,
                 class_ids, compression: str = "bslz4", provenance: dict | None = None, input_info: dict | None = None,
                 force: bool = False, detector: dict | None = None):
        import h5py
        import hdf5plugin

        self.out = check_live_target(out, compression, force)
        self.path = partial_path(self.out)
        self.path.unlink(missing_ok=True)  # an earlier run's, with force
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sy, sx = (int(s) for s in scan_shape)
        ky, kx = (int(s) for s in detector_shape)
        self.scan_shape = (sy, sx)
        self.ids = sorted(int(i) for i in keep_ids)
        self.force = force
        self._index: list[np.ndarray] = []
        self.n_committed = 0
        self.status = "partial"
        filt = dict(hdf5plugin.Bitshuffle(cname="lz4")) if compression == "bslz4" else {}
        f = self._f = h5py.File(self.path, "w", libver="latest")
        self._frames = f.create_dataset("frames", shape=(0, ky, kx), maxshape=(None, ky, kx), dtype=dtype,
                                        chunks=(1, ky, kx), **filt)
        self._positions = f.create_dataset("positions", shape=(0, 2), maxshape=(None, 2), dtype=np.int32,
                                           chunks=(4096, 2))
        self._idx = f.create_dataset("index", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        self._class_map = f.create_dataset("class_map", shape=(sy, sx), dtype=np.uint8)
        self._kept = f.create_dataset("kept", shape=(sy, sx), dtype=bool)
        self._missing = f.create_dataset("missing", data=np.ones((sy, sx), bool))
        self._proba = f.create_dataset("probabilities", data=np.full((sy, sx, len(class_ids)), np.nan, np.float32))
        self._status = f.create_dataset("live_status", data=np.bytes_("partial"), dtype="S16")
        self._committed = f.create_dataset("live_committed", data=np.int64(0))
        self._report = f.create_dataset("live_report", data=np.bytes_("{}"), dtype=f"S{LIVE_REPORT_BYTES}")
        info = {"scan_shape": [sy, sx], "detector_shape": [ky, kx], "dtype": str(np.dtype(dtype)),
                **(input_info or {})}
        f.attrs.update(_file_attrs((sy, sx), (ky, kx), dtype, compression, self.ids, class_table, geometry, info,
                                   {"reduced": "on the fly (sedclassify watch --reduce)", **(provenance or {})},
                                   detector or {}))
        f.attrs["class_ids_of_probabilities"] = json.dumps([int(c) for c in class_ids])
        f.swmr_mode = True

    def add(self, index, frames) -> None:
        """Append kept ``frames`` (n, ky, kx) at flat scan ``index`` (n,), in scan order."""
        index = np.asarray(index, np.int64).ravel()
        if index.size == 0:
            return
        k = self._frames.shape[0]
        self._frames.resize(k + index.size, axis=0)
        self._frames[k:k + index.size] = np.asarray(frames)
        self._index.append(index)

    def commit(self, class_map, done, probabilities, *, status: str = "partial", report: dict | None = None) -> None:
        """Make the frames added so far part of the file: kept positions, class map, probabilities,
        counters and status, then flush (the frames first, the index that points at them last)."""
        index = np.concatenate(self._index) if self._index else np.zeros(0, np.int64)
        self._index = [index]
        k = int(index.size)
        sx = self.scan_shape[1]
        self._frames.flush()
        new = slice(self.n_committed, k)
        self._positions.resize(k, axis=0)
        self._idx.resize(k, axis=0)
        if k > self.n_committed:
            self._positions[new] = np.stack(np.divmod(index[new], sx), axis=1).astype(np.int32)
            self._idx[new] = index[new]
        self._class_map[...] = np.asarray(class_map, np.uint8)
        kept = np.zeros(self.scan_shape[0] * sx, bool)
        kept[index] = True
        self._kept[...] = kept.reshape(self.scan_shape)
        self._missing[...] = ~np.asarray(done, bool)
        self._proba[...] = np.asarray(probabilities, np.float32)
        self._report[()] = np.bytes_(json.dumps(jsonable(report or {}))[:LIVE_REPORT_BYTES])
        self._committed[()] = k
        self._status[()] = np.bytes_(status)
        self.n_committed = k
        self.status = status
        self._f.flush()

    def finish(self, class_map, done, probabilities, *, status: str, report: dict | None = None) -> Path:
        """Commit with ``status`` and close; a complete run's file is flushed to disk and renamed to
        the target. Returns the path of the file left."""
        self.commit(class_map, done, probabilities, status=status, report=report)
        self.close()
        if status != "complete":
            return self.path
        with open(self.path, "rb") as fh:
            os.fsync(fh.fileno())
        if self.out.exists() and not self.force:
            raise FileExistsError(f"{self.out}: appeared while writing; the reduced scan stays at {self.path}")
        os.replace(self.path, self.out)
        fsync_folder(self.out.parent)
        return self.out

    def close(self) -> None:
        if self._f is not None and self._f.id.valid:
            self._f.close()
