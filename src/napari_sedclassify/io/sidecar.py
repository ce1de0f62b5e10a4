"""The calibration sidecar: ``<scan file name>.sedclassify.json`` beside a scan.

``sedclassify calibrate SCAN --write`` stores the values it fitted there (with uncertainty and
provenance); ``open_scan`` reads them back, marked "fitted" (:func:`with_calibration`). Values the
user gives win over both the sidecar and the file. A ring fixes the effective λL/p, not L: a
camera length fitted with one pixel size and voltage is rescaled when the scan is later opened
with others (the user gave the true pixel size after calibrating with the default, say).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ScanFormatError
from ..geometry import CALIBRATION_FIELDS, Geometry, electron_wavelength_A

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


def fitted_with(scan_path) -> dict:
    """The pixel size (µm) and voltage (kV) the stored camera length was fitted with ({} when the
    sidecar does not say: written before they were kept, or by hand)."""
    side = calibration_path(scan_path)
    try:
        details = json.loads(side.read_text()).get("details") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    out = {}
    for key in ("pixel_size_um", "voltage_kv"):
        try:
            v = float(details[key])
        except (KeyError, TypeError, ValueError):
            continue
        if v > 0:
            out[key] = v
    return out


def with_calibration(geometry: Geometry, scan_path, user: dict | None = None,
                     q_per_px_invA: float | None = None) -> Geometry:
    """``geometry`` (the file's) with the sidecar's fitted values, then the ``user``'s values
    ({name: value}). A fitted camera length holds for the pixel size and voltage it was fitted
    with: when the scan's are now others, it is rescaled so that λL/p, what the ring measured,
    stays the same. Likewise a file that states its frames' q per px (``q_per_px_invA``: signal
    axes in 1/Å) keeps it when the user gives a pixel size or voltage without a camera length: the
    camera length taken from it is computed again for them (a given --voltage rescaled a stated q
    axis by the ratio of the wavelengths)."""
    fitted = read_calibration(scan_path)
    g = geometry.with_values("fitted", **fitted).with_values("user", **(user or {}))
    if q_per_px_invA and g.origin("camera_length_mm") == "file" and {"pixel_size_um", "voltage_kv"} & set(user or {}):
        camera_mm = g.pixel_size_um * 1e-3 / (electron_wavelength_A(g.voltage_kv) * q_per_px_invA)
        g = g.with_values("file", camera_length_mm=camera_mm)
    if "camera_length_mm" not in fitted or g.origin("camera_length_mm") != "fitted":
        return g
    then = fitted_with(scan_path)
    factor = 1.0
    if then.get("pixel_size_um") and g.pixel_size_um:
        factor *= g.pixel_size_um / then["pixel_size_um"]
    if then.get("voltage_kv") and g.voltage_kv:
        factor *= electron_wavelength_A(then["voltage_kv"]) / electron_wavelength_A(g.voltage_kv)
    if abs(factor - 1.0) < 1e-9:
        return g
    return g.with_values("fitted", camera_length_mm=fitted["camera_length_mm"] * factor)


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
