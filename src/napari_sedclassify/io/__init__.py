"""Readers for 4D scans. ``open_scan(path)`` picks the format from the path and returns a lazy Scan.

No napari or Qt here.
"""

from __future__ import annotations

from pathlib import Path


class ScanFormatError(ValueError):
    """A file that cannot be read as a scan; the message names the file and the problem."""


def open_scan(path, scan_shape=None, **kwargs):
    """Open ``path`` lazily as a :class:`~napari_sedclassify.scan.Scan`.

    scan_shape: (scan_y, scan_x) when the file does not say it (or to override it).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        from .npy import read_npy

        return read_npy(path, scan_shape=scan_shape, **kwargs)
    raise ScanFormatError(f"{path}: unknown scan format '{suffix or path.name}'")
