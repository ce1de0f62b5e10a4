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
from ._lazy import (FrameSource, array_frames, check_pixel_dtype, file_token, mapped_bytes, stated_geometry,
                    stated_scan_shape, to_native)


def probe(path) -> bool:
    return len(_layout(path)[0]) in (3, 4)


def _layout(path):
    """(shape, fortran_order, dtype, byte offset of the data) from the .npy header."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        major, _ = fmt.read_magic(f)
        shape, fortran, dtype = (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(f)
        return shape, fortran, dtype, f.tell()


class NpyFrames(FrameSource):
    """The frames of a C-ordered .npy file (a 3D stack or 4D scan as a flat run of frames).

    Each read maps just the frames asked for, read-only, and the mapping goes when the returned
    array does: the frames are read where the page cache holds them, with no copy into new memory
    (a copy into fresh pages cost more than the rest of reading: 512 x 512 frames, 190-200 against
    100-110 µs a frame to read and sum them), and memory holds only the frames in use, never every
    page the scan touched (8.6 GB for a 128 x 128 scan of 512 x 512 frames in one memory map).
    The file's size is checked before each mapping, so a short file is an error naming it, not a
    crash. Frames in a foreign byte order, platforms without ``mmap`` and a process out of
    mappings read a copy with ``preadv`` (threads read concurrently without sharing a file
    position).
    """

    def __init__(self, path, n_frames: int, frame_shape, dtype, offset: int):
        super().__init__(path, n_frames, frame_shape, dtype)
        self._stored = np.dtype(dtype)
        self.offset = int(offset)
        self.frame_nbytes = int(np.prod(self.frame_shape)) * self._stored.itemsize

    def _open(self):
        return open(self.path, "rb", buffering=0)

    def _read(self, handle, start, stop):
        pos, nbytes = self.offset + start * self.frame_nbytes, (stop - start) * self.frame_nbytes
        size = os.fstat(handle.fileno()).st_size
        if pos + nbytes > size:
            last = max(start, (size - self.offset) // self.frame_nbytes)
            raise ScanFormatError(f"{self.path}: file ends before frame {last}")
        got = mapped_bytes(handle, pos, nbytes) if self._stored.isnative else None
        if got is not None:
            m, at = got
            shape = (stop - start,) + self.frame_shape
            return np.frombuffer(m, self._stored, int(np.prod(shape)), at).reshape(shape)
        out = np.empty((stop - start,) + self.frame_shape, self._stored)
        view = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        while done < view.nbytes:
            n = os.preadv(handle.fileno(), [view[done:]], pos + done)
            if n == 0:
                raise ScanFormatError(f"{self.path}: file ends before frame {start + done // self.frame_nbytes}")
            done += n
        return to_native(out)


def sidecar_path(path) -> Path:
    return Path(path).with_suffix(".json")


def read_sidecar(path) -> dict:
    """The sidecar ``<stem>.json`` of ``path`` as a dict ({} when there is none); a ScanFormatError
    naming it when it is not a JSON object (a UTF-8 byte order mark is allowed)."""
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        return {}
    try:
        meta = json.loads(sidecar.read_bytes().decode("utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise ScanFormatError(f"{sidecar}: unreadable sidecar metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise ScanFormatError(f"{sidecar}: sidecar metadata must be a JSON object ({{...}}), "
                              f"not a {type(meta).__name__}")
    return meta


def _check_size(path: Path, shape, dtype, offset: int) -> None:
    """A ScanFormatError naming ``path`` when the file is shorter than its header states: how many
    whole frames it holds of how many the header states (an interrupted copy or acquisition)."""
    needed = offset + int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size >= needed:
        return
    frames = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    frame_bytes = max(1, int(np.prod(shape[-2:])) * dtype.itemsize)
    whole = max(0, size - offset) // frame_bytes
    raise ScanFormatError(f"{path}: truncated: it holds {whole} whole frames of the {frames} its header states "
                          f"(header disagrees with the data size: {size} of {needed} bytes)")


def read_npy(path, scan_shape=None, *, missing_at="end", chunk_frames=None) -> Scan:
    """Memory-map a 4D (sy, sx, ky, kx) or 3D (N, ky, kx) ``.npy`` file as a lazy Scan."""
    path = Path(path)
    try:
        shape, fortran, dtype, offset = _layout(path)
    except (ValueError, OSError) as exc:
        raise ScanFormatError(f"{path}: corrupted header: not a readable .npy file ({exc})") from exc
    dtype = check_pixel_dtype(dtype, path)
    _check_size(path, shape, dtype, offset)
    meta = read_sidecar(path)
    source = None
    if not fortran and hasattr(os, "preadv") and len(shape) in (3, 4):
        source = NpyFrames(path, np.prod(shape[:-2]), shape[-2:], dtype, offset)
    hint = None
    if "scan_shape" in meta and scan_shape is None and len(shape) == 3:
        hint = stated_scan_shape(sidecar_path(path), meta["scan_shape"], "field scan_shape", shape[0])
        hint = (hint[0], "sidecar json")
    data, missing, how = array_frames(path, shape, dtype, partial(np.load, str(path), mmap_mode="r"), source=source,
                                      scan_shape=scan_shape, hint=hint, missing_at=missing_at,
                                      chunk_frames=chunk_frames, name=f"npy-{file_token(path)}")
    geometry = Geometry(detector_shape=shape[-2:])
    if "geometry" in meta:
        geometry = stated_geometry(sidecar_path(path), meta["geometry"], shape[-2:], "field geometry")
    metadata = {**meta, "format": "NumPy .npy", "dtype_on_disk": dtype.str, "scan_shape_from": how}
    return Scan(data, geometry, missing=missing, metadata=metadata, source=str(path))


read = read_npy
