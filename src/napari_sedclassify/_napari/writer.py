"""npe2 writer contribution: a class map (a Labels layer) -> ``.tif``/``.tiff``/``.npy`` (uint8, as
``labels.save_class_map`` writes it, the format ``sedclassify train --labels`` reads) with the class
table in a sidecar ``<stem>.classes.json``.

The sidecar holds the class ids, names and colours (the layer's ``metadata["sedclassify_classes"]``
when a widget put a class table there, else the package's default table), the ids present in the
map, and the layer's scale, translate and units (nm per scan step when the scan step is known), so
another program (or a later napari session) knows what each value means and how large the area is.
In napari: File > Save Selected Layers..., choose "SED classify class map".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Layer metadata key under which a class table (``ClassTable.to_dict()``) may travel with a Labels layer.
CLASSES_KEY = "sedclassify_classes"
#: Identifies the sidecar.
FORMAT = "napari-sedclassify/class-map"
SUFFIXES = (".tif", ".tiff", ".npy")


def class_table_path(path) -> Path:
    """The sidecar of a class map file: ``map.tif`` -> ``map.classes.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.classes.json")


def _class_table(meta: dict):
    from ..classes import ClassTable

    table = (meta.get("metadata") or {}).get(CLASSES_KEY)
    if isinstance(table, ClassTable):
        return table
    if isinstance(table, dict) and "names" in table:
        return ClassTable.from_dict(table)
    return ClassTable.default()


def _floats(values, n=2):
    if values is None:
        return None
    values = [float(v) for v in np.asarray(values, dtype=float).ravel()]
    return values[-n:]


def _unit(u) -> str:
    """A unit as written: napari's pint units abbreviated ("nanometer" -> "nm")."""
    try:
        return format(u, "~")
    except (TypeError, ValueError):
        return str(u)


def write_class_map(path: str, data, meta: dict) -> list[str]:
    """Write the Labels layer ``data`` (2D class ids 0..255; leading size-1 axes dropped) to ``path``
    (.tif/.tiff/.npy; no suffix: .tif) and its class table to ``<stem>.classes.json``, both
    atomically. Returns the paths written (napari's single-layer writer contract)."""
    from ..io.atomic import write_json
    from ..labels import save_class_map

    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        if path.suffix:
            raise ValueError(f"{path}: a class map is written as .tif, .tiff or .npy")
        path = path.with_suffix(".tif")
    arr = np.asarray(data)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{path}: a class map is 2D (scan_y, scan_x); this Labels layer has shape {np.shape(data)}")
    save_class_map(path, arr)
    meta = dict(meta or {})
    table = _class_table(meta)
    present = [int(v) for v in np.unique(arr)]
    units = meta.get("units")
    sidecar = {
        "format": FORMAT,
        "format_version": 1,
        "file": path.name,
        "shape": [int(s) for s in arr.shape],
        "dtype": "uint8",
        "unlabeled_id": 0,
        "classes": table.to_dict(),
        "present": {str(i): ("unlabeled" if i == 0 else table.names.get(i, f"class {i}")) for i in present},
        "layer": meta.get("name"),
        "scale": _floats(meta.get("scale")),
        "translate": _floats(meta.get("translate")),
        "units": None if units is None else [_unit(u) for u in list(units)[-2:]],
    }
    written = write_json(class_table_path(path), json.loads(json.dumps(sidecar, default=str)))
    return [str(path), str(written)]


def read_class_table(path) -> dict:
    """The sidecar of a class map written by :func:`write_class_map` (``{}`` when there is none)."""
    sidecar = class_table_path(path)
    if not sidecar.is_file():
        return {}
    return json.loads(sidecar.read_text())
