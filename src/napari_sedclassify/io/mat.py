"""MATLAB ``.mat`` files (the paper's data were MATLAB structure files).

v7.3 files are HDF5 and are read lazily; v5 (and v4) files are read into memory by
``scipy.io.loadmat`` (noted in the metadata, with a logged warning: save with ``-v7.3`` for
lazy reading). Arrays may sit inside structures (``dataset="data.frames"`` picks one).

Dimension order is MATLAB's, frames along the first two dimensions (so that each frame is
contiguous in the file): ``frames(det_y, det_x, n)`` or ``scan(det_y, det_x, scan_y, scan_x)``.
A 3D array whose last two sizes match and differ from the first, ``(n, det_y, det_x)``, is
read as a stack along its first dimension.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import ScanFormatError
from ..geometry import Geometry
from ..scan import Scan
from ._lazy import Lazy4D, StackFrames, array_frames, check_pixel_dtype, file_token, grid_frames, resolve_scan_shape
from .hdf5 import _h5py, choose_dataset

log = logging.getLogger(__name__)


def probe(path) -> bool:
    if _h5py().is_hdf5(path):
        with _h5py().File(path, "r") as f:
            return bool(_h5_candidates(f))
    from scipy.io import whosmat

    return any(len(shape) in (3, 4) or cls == "struct" for _, shape, cls in whosmat(str(path)))


def _frames_first(matlab_shape) -> bool:
    a, b, c = matlab_shape
    return b == c and a != b


def _h5_candidates(f):
    """Numeric 3D/4D variables of a v7.3 file: (name, MATLAB shape, dtype)."""
    from .hdf5 import candidates

    out = []
    for name, shape, dtype in candidates(f):
        if name.startswith("#refs#") or f[name].attrs.get("MATLAB_class", b"double") in (b"char", b"cell"):
            continue
        out.append((name, shape[::-1], dtype))
    return out


class _MatFrames:
    """Frames (k, det_y, det_x) of a v7.3 3D variable stored transposed in HDF5."""

    def __init__(self, dataset, frames_first: bool):
        self.dataset = dataset
        self.frames_first = frames_first

    def __getitem__(self, s):
        if self.frames_first:  # MATLAB (n, y, x) -> HDF5 (x, y, n)
            return np.asarray(self.dataset[:, :, s]).transpose(2, 1, 0)
        return np.asarray(self.dataset[s]).transpose(0, 2, 1)  # MATLAB (y, x, n) -> HDF5 (n, x, y)


class _Mat4D:
    """A v7.3 4D variable MATLAB (det_y, det_x, scan_y, scan_x) = HDF5 (scan_x, scan_y, det_x, det_y)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (4 - len(key))
        sx, sy, kx, ky = self.dataset.shape
        ints = tuple(i for i, k in enumerate(key) if isinstance(k, (int, np.integer)))
        key = tuple(slice(k % n, k % n + 1) if i in ints else k for i, (k, n) in enumerate(zip(key, (sy, sx, ky, kx))))
        block = np.asarray(self.dataset[key[1], key[0], key[3], key[2]]).transpose(1, 0, 3, 2)
        return block.squeeze(axis=ints) if ints else block


def _open_frames(path, name, frames_first):
    return _MatFrames(_h5py().File(path, "r")[name], frames_first)


def _open_4d(path, name):
    return _Mat4D(_h5py().File(path, "r")[name])


def _read_v73(path, scan_shape, dataset, missing_at, chunk_frames):
    with _h5py().File(path, "r") as f:
        found = _h5_candidates(f)
        name = choose_dataset(path, found, None if dataset is None else str(dataset).replace(".", "/"), kind="variable")
        mshape = next(shape for n, shape, _ in found if n == name)
        dtype = check_pixel_dtype(f[name].dtype, path)
    token = f"mat-{file_token(path)}-{name}"
    if len(mshape) == 4:
        ky, kx, sy, sx = mshape
        data = _fixed_grid(Lazy4D(partial(_open_4d, str(path), name), (sy, sx, ky, kx), dtype, path), scan_shape, path, chunk_frames, token)
        return data, None, name, "variable shape", dtype
    frames_first = _frames_first(mshape)
    n, frame = (mshape[0], mshape[1:]) if frames_first else (mshape[2], mshape[:2])
    source = StackFrames(partial(_open_frames, str(path), name, frames_first), (n,) + tuple(frame), dtype, path)
    shape, how, first = resolve_scan_shape(path, n, scan_shape, None, missing_at)
    data, missing = grid_frames(source, shape, first=first, chunk_frames=chunk_frames, name=token)
    return data, missing, name, how, dtype


def _fixed_grid(array, scan_shape, path, chunk_frames, token):
    if scan_shape is not None and tuple(scan_shape) != tuple(array.shape[:2]):
        raise ScanFormatError(f"{path}: wrong scan shape {tuple(scan_shape)}: the variable is a {array.shape[0]}x{array.shape[1]} scan")
    return array_frames(array, chunk_frames=chunk_frames, name=token)


def _walk(value, name, out):
    """Numeric 3D/4D arrays in a loadmat(simplify_cells=True) value, with dotted names."""
    if isinstance(value, dict):
        for key, v in value.items():
            if not key.startswith("__"):
                _walk(v, f"{name}.{key}" if name else key, out)
    elif isinstance(value, np.ndarray) and value.ndim in (3, 4) and value.dtype.kind in "uifb":
        out[name] = value


def _read_v5(path, scan_shape, dataset, missing_at, chunk_frames):
    from scipy.io import loadmat

    try:
        contents = loadmat(str(path), simplify_cells=True)
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError...
        raise ScanFormatError(f"{path}: corrupted header: not a readable MATLAB file ({exc})") from exc
    arrays = {}
    _walk(contents, "", arrays)
    found = [(k, a.shape, a.dtype) for k, a in sorted(arrays.items())]
    name = choose_dataset(path, found, None if dataset is None else str(dataset).replace("/", "."), kind="variable")
    array = arrays[name]
    dtype = check_pixel_dtype(array.dtype, path)
    log.warning("%s: MATLAB v5 file read into memory (%.1f MB); save with -v7.3 for lazy reading", path, array.nbytes / 1e6)
    token = f"mat-{file_token(path)}-{name}"
    if array.ndim == 4:
        data = _fixed_grid(array.transpose(2, 3, 0, 1), scan_shape, path, chunk_frames, token)
        return data, None, name, "variable shape", dtype
    frames = array if _frames_first(array.shape) else np.moveaxis(array, 2, 0)
    source = StackFrames(partial(_identity, frames), frames.shape, dtype, path)
    shape, how, first = resolve_scan_shape(path, frames.shape[0], scan_shape, None, missing_at)
    data, missing = grid_frames(source, shape, first=first, chunk_frames=chunk_frames, name=token)
    return data, missing, name, how, dtype


def _identity(value):
    return value


def read(path, scan_shape=None, *, dataset=None, missing_at="end", chunk_frames=None) -> Scan:
    """Open a MATLAB .mat scan (v7.3 lazily, v5 in memory)."""
    path = Path(path)
    lazy = _h5py().is_hdf5(path)
    reader = _read_v73 if lazy else _read_v5
    data, missing, name, how, dtype = reader(path, scan_shape, dataset, missing_at, chunk_frames)
    metadata = {
        "format": "MATLAB v7.3 (HDF5)" if lazy else "MATLAB v5",
        "dataset": name,
        "dtype_on_disk": np.dtype(dtype).str,
        "scan_shape_from": how,
    }
    if not lazy:
        metadata["in_memory"] = True
        metadata["note"] = "MATLAB v5 file: read into memory (save with -v7.3 for lazy reading)"
    return Scan(data, Geometry(detector_shape=data.shape[2:]), missing=missing, metadata=metadata, source=str(path))
