"""NumPy ``.npy`` scans, memory-mapped read-only: 4D (sy, sx, ky, kx) or a 3D stack (N, ky, kx).

A sidecar ``<name>.json`` (as the simulator writes it) is read into the metadata; its
``geometry`` entry sets the calibration and its ``scan_shape`` entry the shape of a 3D stack.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import ScanFormatError
from ..geometry import Geometry
from ..scan import Scan
from ._lazy import (FrameSource, Lazy4D, StackFrames, array_frames, check_pixel_dtype, file_token, grid_frames,
                    native, resolve_scan_shape, to_native)


def probe(path) -> bool:
    shape, _ = _header(path)
    return len(shape) in (3, 4)


def _header(path):
    shape, _, dtype, _ = _layout(path)
    return shape, dtype


def _layout(path):
    """(shape, fortran_order, dtype, byte offset of the data) from the .npy header."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        major, _ = fmt.read_magic(f)
        shape, fortran, dtype = (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(f)
        return shape, fortran, dtype, f.tell()


class NpyFrames(FrameSource):
    """The frames of a C-ordered .npy file (3D stack or 4D scan, seen as a flat run of frames),
    read with ``preadv`` into fresh buffers: no memory map, so pages read stay in the page cache
    and out of the process's memory (a memory map keeps every page it touched resident, 8.6 GB for
    a 128x128 scan of 512x512 frames), and threads read concurrently without sharing a file
    position."""

    def __init__(self, path, n_frames: int, frame_shape, dtype, offset: int):
        self.path = str(path)
        self.n_frames = int(n_frames)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self._stored = np.dtype(dtype)
        self.dtype = native(dtype)
        self.offset = int(offset)
        self.frame_nbytes = int(np.prod(self.frame_shape)) * self._stored.itemsize

    def _open(self):
        return open(self.path, "rb", buffering=0)

    def _read(self, handle, start, stop):
        out = np.empty((stop - start,) + self.frame_shape, self._stored)
        view = memoryview(out.reshape(-1).view(np.uint8))
        pos, done = self.offset + start * self.frame_nbytes, 0
        while done < view.nbytes:
            n = os.preadv(handle.fileno(), [view[done:]], pos + done)
            if n == 0:
                raise ScanFormatError(f"{self.path}: file ends before frame {start + done // self.frame_nbytes}")
            done += n
        return to_native(out)


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
    _, fortran, _, offset = _layout(path)
    preadable = not fortran and hasattr(os, "preadv")
    if len(shape) == 4:
        if scan_shape is not None and tuple(scan_shape) != tuple(shape[:2]):
            raise ScanFormatError(f"{path}: wrong scan shape {tuple(scan_shape)}: the file is a {shape[0]}x{shape[1]} scan")
        if preadable:
            data, _ = grid_frames(NpyFrames(path, shape[0] * shape[1], shape[2:], dtype, offset), shape[:2],
                                  chunk_frames=chunk_frames, name=token)
        else:
            data = array_frames(Lazy4D(partial(_memmap, str(path)), shape, dtype, path), chunk_frames=chunk_frames,
                                name=token)
        missing, how = None, "array shape"
    elif len(shape) == 3:
        hint = (tuple(meta["scan_shape"]), "sidecar json") if "scan_shape" in meta else None
        source = (NpyFrames(path, shape[0], shape[1:], dtype, offset) if preadable
                  else StackFrames(partial(_memmap, str(path)), shape, dtype, path))
        grid, how, first = resolve_scan_shape(path, shape[0], scan_shape, hint, missing_at)
        data, missing = grid_frames(source, grid, first=first, chunk_frames=chunk_frames, name=token)
    else:
        raise ScanFormatError(f"{path}: expected a 3D (N, y, x) or 4D (sy, sx, y, x) array, got shape {shape}")
    geometry = Geometry(detector_shape=shape[-2:])
    if "geometry" in meta:
        geometry = Geometry.from_dict({**meta["geometry"], "detector_shape": shape[-2:]})
    metadata = {**meta, "format": "NumPy .npy", "dtype_on_disk": dtype.str, "scan_shape_from": how}
    return Scan(data, geometry, missing=missing, metadata=metadata, source=str(path))


read = read_npy
