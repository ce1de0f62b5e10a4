"""Readers for 4D scans. ``open_scan(path)`` picks the format from the path and returns a lazy Scan.

One module per format (mib, blockfile, hdf5, mat, npy, zarr_store, tiff, hyperspy for what
rosettasciio reads, and reduced for the files ``sedclassify reduce`` writes); each defines
``probe(path) -> bool`` (cheap: does this look like a scan?) and ``read(path, scan_shape, *,
dataset, missing_at, chunk_frames) -> Scan``. No napari or Qt here.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import ScanFormatError


#: File name endings and the module that reads them.
SUFFIXES = {
    **dict.fromkeys((".mib", ".hdr"), "mib"),
    ".blo": "blockfile",
    # .hspy: HyperSpy / pyxem (HDF5): Experiments/<title>/data
    **dict.fromkeys((".h5", ".hdf5", ".hdf", ".emd", ".nxs", ".hspy"), "hdf5"),
    ".mat": "mat",
    ".npy": "npy",
    ".zarr": "zarr_store",
    **dict.fromkeys((".tif", ".tiff"), "tiff"),
    **dict.fromkeys((".dm3", ".dm4", ".tvips", ".mrc"), "hyperspy"),  # through rosettasciio (the ``formats`` extra)
}

#: Leading bytes of files whose name does not say their format.
_MAGIC = [
    (b"MQ1,", "mib"),
    (b"IMGBLO", "blockfile"),
    (b"\x89HDF\r\n\x1a\n", "hdf5"),
    (b"\x93NUMPY", "npy"),
    *((magic, "tiff") for magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")),  # classic and BigTIFF
    (b"MATLAB", "mat"),
]

#: Formats whose files hold several arrays (``dataset=`` picks one).
_WITH_DATASETS = {"hdf5", "mat", "zarr_store"}


def format_of(path) -> str | None:
    """Name of the reader module for ``path`` (a file or a folder), or None when none applies."""
    path = Path(path)
    if path.is_dir():
        from .mib import mib_files
        from .tiff import tiff_files
        from .zarr_store import is_zarr

        if path.suffix.lower() == ".zarr" or is_zarr(path):
            return "zarr_store"
        if tiff_files(path):
            return "tiff"
        if mib_files(path):  # Merlin's "one file per frame"
            return "mib"
        return None
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError:
            return None
        fmt = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if fmt != "hdf5":
        return fmt
    from .reduced import is_reduced  # an HDF5 file written by ``sedclassify reduce`` (imported for HDF5 only)

    return "reduced" if path.is_file() and is_reduced(path) else fmt


def warm_up() -> None:
    """Import every format's reader (and what opening a file imports besides), e.g. in a
    background thread of an interactive application, so the first open does not pay for it."""
    for name in sorted({*SUFFIXES.values(), "reduced", "sidecar"}):
        try:
            importlib.import_module(f".{name}", __name__)
        except ImportError:  # an optional format whose library is not installed
            pass


def reading_flatfield():
    """Context: readers opened inside read a flat-field, not a scan (no note of an unknown scan
    shape; a file of several arrays asks for ``--flatfield-dataset``)."""
    from ._lazy import reading_flatfield as reading

    return reading()


def can_open(path) -> bool:
    """True when ``path`` looks like a scan this package reads (cheap: headers only)."""
    try:
        path = Path(path)
        fmt = format_of(path) if path.exists() else None
        return fmt is not None and bool(importlib.import_module(f".{fmt}", __name__).probe(path))
    except Exception:  # a probe never raises: anything odd means "not for us"
        return False


def open_scan(path, scan_shape=None, *, dataset=None, missing_at="end", chunk_frames=None, geometry=None,
              **kwargs):
    """Open ``path`` lazily as a :class:`~napari_sedclassify.scan.Scan`.

    scan_shape: (scan_y, scan_x) when the file does not say it, or to override it. Positions
        without a frame (fewer frames than positions) are marked in ``scan.missing``.
    dataset: which array to read in files that hold several (HDF5, MATLAB, zarr).
    missing_at: where the positions without a frame are: "end" (an interrupted acquisition) or "start".
    chunk_frames: frames per dask chunk (default: about 32 MB of whole frames).
    geometry: calibration values the user gives ({"camera_length_mm": ..., "pixel_size_um": ...,
        "voltage_kv": ..., "scan_step_nm": ...}; None entries ignored). They win over a calibration
        sidecar (``sedclassify calibrate --write``), which wins over the file; the rest is "assumed".

    Raises FileNotFoundError, or ScanFormatError naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    fmt = format_of(path)
    if fmt is None:
        if path.is_dir():
            raise ScanFormatError(f"{path}: a directory that is not a scan (no zarr array, no TIFF or .mib frames)")
        raise ScanFormatError(f"{path}: unknown scan format '{path.suffix or path.name}'")
    if path.is_file() and path.stat().st_size == 0:
        raise ScanFormatError(f"{path}: empty file")
    if dataset is not None and fmt not in _WITH_DATASETS:
        from ._lazy import dataset_choice

        raise ValueError(f"{path}: {dataset_choice(dataset)} applies to HDF5, MATLAB and zarr files only, "
                         f"not to {fmt} files")
    reader = importlib.import_module(f".{fmt}", __name__)
    options = dict(missing_at=missing_at, chunk_frames=chunk_frames, **kwargs)
    if fmt in _WITH_DATASETS:
        options["dataset"] = dataset
    # the frame source keeps the absolute path: dask workers working in another folder read the
    # same file; the scan keeps the path as given, for what it says to the user
    scan = reader.read(path.absolute(), scan_shape, **options)
    scan.source = str(path)
    _check_readable(scan)
    from .sidecar import with_calibration

    scan.geometry = with_calibration(scan.geometry, path, geometry, scan.metadata.get("q_per_px_invA"))
    return scan


def _check_readable(scan):
    """Read a recorded frame now, so an undecodable or NaN-only file fails at open, not later
    (float data without a finite value in the first frame: the middle and last ones too)."""
    import numpy as np

    recorded = np.flatnonzero(~scan.missing.ravel())
    if recorded.size == 0:
        raise ScanFormatError(f"{scan.source}: no recorded frame in the scan")
    sx = scan.scan_shape[1]
    picks = sorted({int(recorded[0]), int(recorded[recorded.size // 2]), int(recorded[-1])})
    for flat in picks:
        # the synchronous scheduler as a function: no thread pool, no import of dask.distributed
        frame = scan.frame(flat // sx, flat % sx)
        if frame.dtype.kind != "f" or np.isfinite(frame).any():
            return
    raise ScanFormatError(
        f"{scan.source}: NaN-only data: frames {picks} (first, middle, last recorded) hold no finite value"
    )
