"""The calibration sidecar: ``<scan file name>.sedclassify.json`` beside a scan.

``sedclassify calibrate SCAN --write`` stores the values it fitted there (with uncertainty and
provenance); ``open_scan`` reads them back, marked "fitted". Values the user gives win over both
the sidecar and the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ScanFormatError
from ..geometry import CALIBRATION_FIELDS

FORMAT = "napari-sedclassify/calibration"


def calibration_path(scan_path) -> Path:
    """Where the calibration sidecar of ``scan_path`` (a file or a folder) lives."""
    p = Path(scan_path)
    return p.with_name(p.name + ".sedclassify.json")


def read_calibration(scan_path) -> dict:
    """{name: value} of the fitted calibration values stored for ``scan_path`` ({} when none)."""
    side = calibration_path(scan_path)
    if not side.is_file():
        return {}
    try:
        d = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise ScanFormatError(f"{side}: unreadable calibration sidecar ({exc}); delete it or calibrate again") from exc
    if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("geometry"), dict):
        raise ScanFormatError(f"{side}: not a napari-sedclassify calibration file")
    return {k: float(v) for k, v in d["geometry"].items() if k in CALIBRATION_FIELDS and v is not None}


def write_calibration(scan_path, values: dict, details: dict | None = None) -> Path:
    """Store fitted ``values`` ({name: value}, names from CALIBRATION_FIELDS) for ``scan_path``,
    atomically, merged with what the sidecar already holds; ``details`` (fit, uncertainty,
    provenance) are kept beside them. Returns the sidecar's path."""
    from .atomic import write_json

    unknown = sorted(set(values) - set(CALIBRATION_FIELDS))
    if unknown:
        raise ValueError(f"unknown calibration values: {', '.join(unknown)}")
    side = calibration_path(scan_path)
    try:
        old = json.loads(side.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: replaced
        old = {}
    doc = {"format": FORMAT, "scan": Path(scan_path).name,
           "geometry": {**(old.get("geometry") or {}), **{k: float(v) for k, v in values.items()}},
           "details": {**(old.get("details") or {}), **(details or {})}}
    write_json(side, doc)
    return side
