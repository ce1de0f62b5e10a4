"""Zarr stores (a ``.zarr`` folder): a 4D array, a 3D stack of frames, or a group holding them.

Opened read-only; ``dataset=`` picks an array in a group that holds several. The store's
attributes go to the metadata; a ``scan_shape`` attribute shapes a 3D stack.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..errors import ScanFormatError
from ..geometry import Geometry
from ..scan import Scan
from ._lazy import (FlatFieldFile, array_frames, dataset_choice, check_pixel_dtype, file_token, reading_flatfield,
                    stated_geometry, stated_scan_shape)
from .hdf5 import choose_dataset
from .hyperspy import hspy_calibration

_MARKERS = ("zarr.json", ".zarray", ".zgroup")


def is_zarr(path) -> bool:
    return _marker(path) is not None


def probe(path) -> bool:
    import zarr

    node = zarr.open(str(path), mode="r")
    return bool(node.ndim in (3, 4) if hasattr(node, "ndim") else _candidates(node))


def _candidates(group):
    return sorted((name, tuple(node.shape), node.dtype) for name, node in group.members(max_depth=None)
                  if hasattr(node, "ndim") and node.ndim in (3, 4) and node.dtype.kind in "uifb"
                  and min(node.shape[-2:]) >= 2)


def _open(path, name=None):
    import zarr

    node = zarr.open(path, mode="r")
    return node[name] if name else node


def read(path, scan_shape=None, *, dataset=None, missing_at="end", chunk_frames=None) -> Scan:
    """Open a zarr array or group lazily as a Scan."""
    import zarr

    path = Path(path)
    if not is_zarr(path):
        raise ScanFormatError(f"{path}: a directory that is not a scan (no zarr metadata in it)")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises many types for a damaged store
        raise ScanFormatError(f"{path}: corrupted header: cannot open as zarr ({exc})") from exc
    name = None
    if not hasattr(node, "ndim"):
        name = choose_dataset(path, _candidates(node), dataset, kind="array")
        node = node[name]
    elif dataset is not None:
        raise ScanFormatError(f"{path}: holds a single array; {dataset_choice(dataset)} does not apply")
    dtype = check_pixel_dtype(node.dtype, path)
    token = f"zarr-{file_token(path / _marker(path))}-{name}"
    attrs = dict(node.attrs)
    metadata = {"format": "zarr", "dataset": name, "dtype_on_disk": dtype.str, "zarr_chunks": tuple(node.chunks)}
    hint = None
    if "scan_shape" in attrs and scan_shape is None and node.ndim == 3:
        hint = stated_scan_shape(path, attrs["scan_shape"], "zarr attribute scan_shape", node.shape[0])
    data, missing, how = array_frames(path, node.shape, dtype, partial(_open, str(path), name), scan_shape=scan_shape,
                                      hint=hint, missing_at=missing_at, chunk_frames=chunk_frames, name=token)
    geometry = Geometry(detector_shape=node.shape[-2:])
    if isinstance(attrs.get("geometry"), dict):
        geometry = stated_geometry(path, attrs["geometry"], node.shape[-2:], "zarr attribute geometry")
    if name and "/" in name:  # HyperSpy / pyxem .zspy: Experiments/<title>/data beside its axis-N groups
        hspy = hspy_calibration(zarr.open(str(path), mode="r")[name.rsplit("/", 1)[0]], node.shape[-2:])
        if hspy is not None:
            geometry = hspy[0]
            metadata.update(hspy[1], format="HyperSpy (zarr)")
    metadata.update(scan_shape_from=how, attributes=attrs)
    return Scan(data, geometry, missing=missing, metadata=metadata, source=str(path))


def _marker(path) -> str | None:
    return next((m for m in _MARKERS if (Path(path) / m).exists()), None)


def flatfield_datasets(path) -> list[tuple[str, tuple]]:
    """(name, shape) of each numeric 3D/4D array of a zarr group ([] for a single array), as
    ``read_flatfield(path, dataset=name)`` takes them."""
    node = _open(str(path))
    return [] if hasattr(node, "ndim") else [(name, shape) for name, shape, _ in _candidates(node)]


def read_flatfield(path, dataset=None) -> FlatFieldFile:
    """The flood stack of a flat-field in a zarr store (dataset: the array to read when it holds several)."""
    with reading_flatfield():
        return FlatFieldFile(read(path, dataset=dataset).frame_source)
