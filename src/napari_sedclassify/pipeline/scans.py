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
    """Scans as Scan objects (paths are opened lazily with ``io.open_scan``)."""
    from ..io import open_scan

    return [open_scan(s) if is_path(s) else s for s in scans]


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
        return [_load_flatfield(flatfield[0])] * n
    if len(flatfield) != n:
        raise ValueError(f"{len(flatfield)} flat-fields for {n} scans: give one for all scans or one per scan")
    cache = {}
    return [cache.setdefault(str(f), _load_flatfield(f)) if is_path(f) else f for f in flatfield]


def _load_flatfield(f):
    if is_path(f):
        from ..processing import load_flatfield

        return load_flatfield(f)
    return f
