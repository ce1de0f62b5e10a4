"""MATLAB ``.mat`` files: v7.3 (HDF5) read lazily, v5 (and v4) into memory by ``scipy.io.loadmat``
(noted in the metadata and logged). Arrays may sit inside structures (``dataset="data.frames"``).

Dimensions in MATLAB's order, frames first (each frame contiguous in the file): ``frames(det_y,
det_x, n)`` or ``scan(det_y, det_x, scan_y, scan_x)``; a 3D array whose last two sizes match and
differ from the first is a stack ``(n, det_y, det_x)``.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import ScanFormatError
from ..geometry import Geometry
from ..scan import Scan
from ._lazy import FlatFieldFile, array_frames, check_pixel_dtype, file_token, reading_flatfield
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

    return [(name, shape[::-1], dtype) for name, shape, dtype in candidates(f)
            if not name.startswith("#refs#") and f[name].attrs.get("MATLAB_class", b"double") not in (b"char", b"cell")]


class _Permuted:
    """A v7.3 variable (stored in HDF5 with its dimensions reversed) seen with its axes in the order
    read here: view axis i is the HDF5 dataset's axis ``order[i]``."""

    def __init__(self, dataset, order):
        self.dataset = dataset
        self.order = tuple(order)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (len(self.order) - len(key))
        ints = tuple(i for i, k in enumerate(key) if isinstance(k, (int, np.integer)))
        stored = [slice(None)] * len(self.order)
        for i, (k, axis) in enumerate(zip(key, self.order)):
            n = self.dataset.shape[axis]
            stored[axis] = slice(k % n, k % n + 1) if i in ints else k
        block = np.asarray(self.dataset[tuple(stored)]).transpose(self.order)
        return block.squeeze(axis=ints) if ints else block


def _open_permuted(path, name, order):
    return _Permuted(_h5py().File(path, "r")[name], order)


def _read_v73(path, scan_shape, dataset, missing_at, chunk_frames):
    with _h5py().File(path, "r") as f:
        found = _h5_candidates(f)
        name = choose_dataset(path, found, None if dataset is None else str(dataset).replace(".", "/"), kind="variable")
        mshape = next(shape for n, shape, _ in found if n == name)
        dtype = check_pixel_dtype(f[name].dtype, path)
    # MATLAB (det_y, det_x, scan_y, scan_x) = HDF5 (scan_x, scan_y, det_x, det_y); stacks of frames
    # MATLAB (n, y, x) = HDF5 (x, y, n) or MATLAB (y, x, n) = HDF5 (n, x, y)
    order = (1, 0, 3, 2) if len(mshape) == 4 else (2, 1, 0) if _frames_first(mshape) else (0, 2, 1)
    shape = tuple(mshape[::-1][i] for i in order)
    data, missing, how = array_frames(path, shape, dtype, partial(_open_permuted, str(path), name, order),
                                      scan_shape=scan_shape, missing_at=missing_at, chunk_frames=chunk_frames,
                                      name=f"mat-{file_token(path)}-{name}", kind="variable")
    return data, missing, name, how, dtype


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
    if array.ndim == 4:
        array = array.transpose(2, 3, 0, 1)
    elif not _frames_first(array.shape):
        array = np.moveaxis(array, 2, 0)
    data, missing, how = array_frames(path, array.shape, dtype, partial(np.asarray, array), scan_shape=scan_shape,
                                      missing_at=missing_at, chunk_frames=chunk_frames,
                                      name=f"mat-{file_token(path)}-{name}", kind="variable")
    return data, missing, name, how, dtype


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


def flatfield_datasets(path) -> list[tuple[str, tuple]]:
    """(name, shape) of each numeric 3D/4D variable of a MATLAB file (structure fields dotted; the
    shape as numpy sees the array, a v7.3 variable's HDF5 dimensions reversed), as
    ``read_flatfield(path, dataset=name)`` takes them; a v5 file is read whole."""
    path = Path(path)
    h5py = _h5py()
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            return [(name, tuple(shape[::-1])) for name, shape, _ in _h5_candidates(f)]
    from scipy.io import loadmat

    arrays = {}
    _walk(loadmat(str(path), simplify_cells=True), "", arrays)
    return [(name, tuple(a.shape)) for name, a in sorted(arrays.items())]


def read_flatfield(path, dataset=None) -> FlatFieldFile:
    """The flood stack of a flat-field in a MATLAB file (dataset: the array to read when it holds several)."""
    with reading_flatfield():
        return FlatFieldFile(read(path, dataset=dataset).frame_source)
