"""NumPy ``.npy`` scans, memory-mapped read-only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..geometry import Geometry
from ..scan import Scan


def read_npy(path, scan_shape=None, chunk_frames: int = 64):
    """Memory-map a 4D (sy, sx, ky, kx) or 3D (N, ky, kx) ``.npy`` file as a lazy Scan.

    A sidecar ``<name>.json`` with a ``geometry`` entry (as written by the simulator) sets the
    calibration.
    """
    import dask.array as da

    from . import ScanFormatError

    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r")
    except ValueError as exc:
        raise ScanFormatError(f"{path}: not a readable .npy file ({exc})") from exc
    if arr.ndim == 3:
        if scan_shape is None:
            raise ScanFormatError(f"{path}: a 3D stack of {arr.shape[0]} frames needs a scan shape")
        sy, sx = scan_shape
        if sy * sx != arr.shape[0]:
            raise ScanFormatError(f"{path}: {arr.shape[0]} frames do not fill a {sy}x{sx} scan")
        arr = arr.reshape((sy, sx) + arr.shape[1:])
    if arr.ndim != 4:
        raise ScanFormatError(f"{path}: expected a 3D or 4D array, got shape {arr.shape}")
    rows = max(1, chunk_frames // arr.shape[1])
    data = da.from_array(arr, chunks=(rows, -1, -1, -1), name=f"npy-{path}", asarray=False)
    geometry = Geometry(detector_shape=arr.shape[2:])
    metadata = {}
    sidecar = path.with_suffix(".json")
    if sidecar.exists():
        meta = json.loads(sidecar.read_text())
        if "geometry" in meta:
            geometry = Geometry.from_dict({**meta["geometry"], "detector_shape": arr.shape[2:]})
        metadata = meta
    return Scan(data, geometry, metadata=metadata, source=str(path))
