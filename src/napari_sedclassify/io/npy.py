"""NumPy ``.npy`` scans, memory-mapped read-only: 4D (sy, sx, ky, kx) or a 3D stack (N, ky, kx).

A sidecar ``<name>.json`` (as the simulator writes it) is read into the metadata; its
``geometry`` entry sets the calibration and its ``scan_shape`` entry the shape of a 3D stack.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import ScanFormatError
from ..geometry import Geometry
from ..scan import Scan
from ._lazy import Lazy4D, StackFrames, array_dask, check_pixel_dtype, file_token, grid_dask, resolve_scan_shape


def probe(path) -> bool:
    shape, _ = _header(path)
    return len(shape) in (3, 4)


def _header(path):
    fmt = np.lib.format
    with open(path, "rb") as f:
        major, _ = fmt.read_magic(f)
        shape, _, dtype = (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(f)
    return shape, dtype


def _memmap(path):
    return np.load(path, mmap_mode="r")


def read_sidecar(path) -> dict:
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.exists():
        return {}
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise ScanFormatError(f"{sidecar}: unreadable sidecar metadata ({exc})") from exc


def read_npy(path, scan_shape=None, *, missing_at="end", chunk_frames=None) -> Scan:
    """Memory-map a 4D (sy, sx, ky, kx) or 3D (N, ky, kx) ``.npy`` file as a lazy Scan."""
    path = Path(path)
    try:
        shape, dtype = _header(path)
    except (ValueError, OSError) as exc:
        raise ScanFormatError(f"{path}: corrupted header: not a readable .npy file ({exc})") from exc
    dtype = check_pixel_dtype(dtype, path)
    try:
        _memmap(path)
    except ValueError as exc:  # numpy refuses a file shorter than its header says
        raise ScanFormatError(f"{path}: header disagrees with the data size ({exc})") from exc
    meta = read_sidecar(path)
    token = f"npy-{file_token(path)}"
    if len(shape) == 4:
        if scan_shape is not None and tuple(scan_shape) != tuple(shape[:2]):
            raise ScanFormatError(f"{path}: wrong scan shape {tuple(scan_shape)}: the file is a {shape[0]}x{shape[1]} scan")
        data = array_dask(Lazy4D(partial(_memmap, str(path)), shape, dtype, path), chunk_frames=chunk_frames, name=token)
        missing, how = None, "array shape"
    elif len(shape) == 3:
        hint = (tuple(meta["scan_shape"]), "sidecar json") if "scan_shape" in meta else None
        source = StackFrames(partial(_memmap, str(path)), shape, dtype, path)
        grid, how, first = resolve_scan_shape(path, shape[0], scan_shape, hint, missing_at)
        data, missing = grid_dask(source, grid, first=first, chunk_frames=chunk_frames, name=token)
    else:
        raise ScanFormatError(f"{path}: expected a 3D (N, y, x) or 4D (sy, sx, y, x) array, got shape {shape}")
    geometry = Geometry(detector_shape=shape[-2:])
    if "geometry" in meta:
        geometry = Geometry.from_dict({**meta["geometry"], "detector_shape": shape[-2:]})
    metadata = {**meta, "format": "NumPy .npy", "dtype_on_disk": dtype.str, "scan_shape_from": how}
    return Scan(data, geometry, missing=missing, metadata=metadata, source=str(path))


read = read_npy
