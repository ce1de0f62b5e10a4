"""Scans, label images and flat-fields as the pipeline's functions take them: paths are opened
or read here (lazily for scans), objects pass through. Light: preprocessing a scan imports no
model code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np


def is_path(x) -> bool:
    """A path (str or os.PathLike), as opposed to an object already opened or loaded."""
    return isinstance(x, (str, os.PathLike))


def open_scans(scans) -> list:
    """Scans as Scan objects: paths are opened lazily with ``io.open_scan``, 4D arrays (numpy,
    memory map, dask: (scan_y, scan_x, det_y, det_x), no metadata) are wrapped in a Scan with the
    default geometry (all values "assumed"), Scans pass through. Each is checked before any work:
    a ValueError (TypeError for something that is no scan at all) names it and the problem."""
    from ..io import open_scan

    opened = []
    for i, s in enumerate(scans):
        scan = open_scan(s) if is_path(s) else _as_scan(s, i)
        _check_frames(scan, i)
        opened.append(scan)
    return opened


#: Frame dtypes a scan may have: counts (unsigned or signed integers) or floating point.
_FRAME_KINDS = {"u": "unsigned integer", "i": "integer", "f": "floating point"}


def _as_scan(obj, index: int):
    from ..scan import Scan

    if isinstance(obj, Scan):
        return obj
    shape = getattr(obj, "shape", None)
    if shape is None or not hasattr(obj, "dtype"):
        raise TypeError(f"scan {index + 1}: expected a Scan, a file path or a 4D array (scan_y, scan_x, det_y, "
                        f"det_x), got {type(obj).__name__}")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 4:
        hint = (f"; a stack of {shape[0]} frames needs its scan shape: "
                "Scan(frames.reshape(scan_y, scan_x, det_y, det_x))" if len(shape) == 3 else "")
        raise ValueError(f"scan {index + 1}: expected a 4D array (scan_y, scan_x, det_y, det_x), "
                         f"got shape {shape}{hint}")
    _check_not_empty(f"scan {index + 1}", shape)
    return Scan(obj)


def _check_not_empty(where: str, shape) -> None:
    sy, sx, ky, kx = shape
    if min(shape) < 1:
        raise ValueError(f"{where}: the scan is empty: {sy} x {sx} positions of {ky} x {kx} px frames")


def _check_frames(scan, index: int) -> None:
    """Shape and dtype checks that need no frame read: an empty scan or frame, or frames that are
    not numbers (bool, complex, strings), stop here rather than deep in the frame kernels."""
    where = scan_name(scan, index) if scan.source is None else str(scan.source)
    _check_not_empty(where, tuple(scan.scan_shape) + tuple(scan.detector_shape))
    dtype = np.dtype(scan.dtype)
    if dtype.kind not in _FRAME_KINDS:
        raise ValueError(f"{where}: frames of dtype {dtype} cannot be processed: expected counts "
                         f"({', '.join(_FRAME_KINDS.values())})")


def scan_name(scan, index: int = 0) -> str:
    return Path(scan.source).stem if getattr(scan, "source", None) else f"scan {index + 1}"


def scan_report(scan_progress: Callable | None, i: int, n: int) -> Callable | None:
    """``scan_progress(i, n, done, total)`` as the ``progress(done, total)`` of scan i of n."""
    return None if scan_progress is None else (lambda done, total: scan_progress(i, n, done, total))


def load_labels(labels, scans) -> list[np.ndarray]:
    """One class map per scan: paths (.npy/.tif) are read and checked against the scan grid."""
    from ..labels import load_class_map

    if len(labels) != len(scans):
        raise ValueError(f"{len(scans)} scans but {len(labels)} label images: give one label image per scan")
    return [load_class_map(lab, scan.scan_shape) if is_path(lab) else np.asarray(lab)
            for lab, scan in zip(labels, scans)]


def flatfields_for(flatfield, n: int) -> list:
    """One flat-field (FlatField, path or None) per scan from None, one value, or a list of n."""
    if not isinstance(flatfield, (list, tuple)):
        flatfield = [flatfield]
    if len(flatfield) == 1:
        return [as_flatfield(flatfield[0])] * n
    if len(flatfield) != n:
        raise ValueError(f"{len(flatfield)} flat-fields for {n} scans: give one for all scans or one per scan")
    cache = {}
    return [cache.setdefault(str(f), as_flatfield(f)) if is_path(f) else as_flatfield(f) for f in flatfield]


def as_flatfield(f):
    """A FlatField from a FlatField, a path (``processing.load_flatfield``) or an array: a flood
    stack (N, ky, kx) or one flood frame (ky, kx); None stays None."""
    from ..processing import FlatField, load_flatfield

    if f is None or isinstance(f, FlatField):
        return f
    if is_path(f):
        return load_flatfield(f)
    if not hasattr(f, "shape"):
        raise TypeError(f"flat-field: expected a FlatField, a file path or a flood stack array (N, ky, kx), "
                        f"got {type(f).__name__}")
    try:
        return FlatField.from_flood(f, source="from an array")
    except ValueError as exc:
        raise ValueError(str(exc) if str(exc).startswith("flat-field") else f"flat-field: {exc}") from None
