"""HyperSpy, pyxem and rosettasciio: axes calibration, signals as Scans, results as signals.

- :func:`axes_calibration`: a signal's axes (nm; 1/Å or mrad) and beam energy as Geometry values;
  the HDF5 and zarr readers use it for ``.hspy`` / ``.zspy`` files without HyperSpy installed.
- :func:`scan_from_signal`: a HyperSpy signal (lazy or not) as a Scan, without reading it.
- :func:`read`: the formats of :data:`SUFFIXES` (DM3/DM4, TVIPS, MRC), lazily, through rosettasciio.
- :func:`to_signals` / :func:`export_hyperspy`: class map, probabilities, confidence and RIAs.

HyperSpy and rosettasciio (GPL-3.0, the ``formats`` extra) are imported only where needed.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np

from ..errors import ScanFormatError
from ..geometry import Geometry, electron_wavelength_A
from ..scan import Scan

log = logging.getLogger(__name__)

#: File name endings read through rosettasciio (the ``formats`` extra), and its plugin for each.
SUFFIXES = {".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph", ".tvips": "tvips", ".mrc": "mrc"}

#: Length units -> nm.
_LENGTH_NM = {"nm": 1.0, "a": 0.1, "angstrom": 0.1, "aa": 0.1, "um": 1e3, "micron": 1e3, "pm": 1e-3, "mm": 1e6,
              "m": 1e9}
#: Reciprocal length units -> 1/Å (q = 1/d, HyperSpy's and pyxem's convention).
_RECIPROCAL_INVA = {"1/a": 1.0, "a^-1": 1.0, "a-1": 1.0, "1/angstrom": 1.0, "angstrom^-1": 1.0, "aa^-1": 1.0,
                    "1/nm": 0.1, "nm^-1": 0.1, "nm-1": 0.1, "1/pm": 100.0}
#: Angle units -> rad (scattering angle 2θ per px).
_ANGLE_RAD = {"mrad": 1e-3, "rad": 1.0, "urad": 1e-6}


def _unit(units) -> str:
    """A unit string made comparable: '$\\AA^{-1}$', 'Å⁻¹', '1 / Å' -> 'aa^-1', 'a^-1', '1/a'."""
    if isinstance(units, bytes):
        units = units.decode("utf-8", "replace")
    u = str(units or "").strip()
    for a, b in (("$", ""), ("{", ""), ("}", ""), ("\\", ""), (" ", ""), ("⁻¹", "^-1"), ("Å", "a"), ("å", "a"),
                 ("µ", "u"), ("μ", "u"), ("**", "^")):
        u = u.replace(a, b)
    return u.lower()


def _number(value, absolute: bool = False):
    """``value`` (``abs(value)``) as a positive finite float, else None (missing, zero, not a number)."""
    try:
        value = abs(float(value)) if absolute else float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _split_axes(axes):
    """(navigation, signal) axes, each in array order; ``navigate`` missing: the last two are signal."""
    if all("navigate" in a for a in axes):
        return [a for a in axes if a["navigate"]], [a for a in axes if not a["navigate"]]
    return list(axes[:-2]), list(axes[-2:])


def _navigation_first(axes) -> list[int]:
    """The array axes in the order navigation then signal, each in array order (HyperSpy keeps the
    data of a signal whose signal axes are not the last ones as it is, and marks each axis ``navigate``)."""
    if not all("navigate" in a for a in axes):
        return list(range(len(axes)))
    return [i for i, a in enumerate(axes) if a["navigate"]] + [i for i, a in enumerate(axes) if not a["navigate"]]


def _unit_kind(axis) -> str | None:
    u = _unit(axis.get("units"))
    if u in _LENGTH_NM:
        return "length"
    return "reciprocal" if u in _RECIPROCAL_INVA or u in _ANGLE_RAD else None


def _check_not_swapped(nav, sig, name) -> None:
    """Refuse a signal whose units say its scan is the signal and its frames the navigation
    (a HyperSpy ``s.T``): navigation axes all in 1/Å or mrad, signal axes all in nm."""
    if nav and sig and all(_unit_kind(a) == "reciprocal" for a in nav) and all(_unit_kind(a) == "length" for a in sig):
        units = lambda axes: ", ".join(str(a.get("units")) for a in axes)  # noqa: E731
        raise ScanFormatError(f"{name}: navigation axes in {units(nav)} and signal axes in {units(sig)}: the scan "
                              "and the frames look swapped (a transposed signal, s.T); the frames must be the signal axes")


def axes_calibration(axes, metadata=None) -> tuple[dict, dict]:
    """Geometry values a signal's axes and metadata give, and notes for the scan's metadata.

    axes: dicts (name, scale, offset, units, size, navigate) in array order, as HyperSpy stores
    them. metadata: HyperSpy's as a nested dict (``Acquisition_instrument.TEM.beam_energy`` in keV,
    ``camera_length`` in mm). Returns ({"scan_step_nm", "q_per_px_invA", "voltage_kv",
    "camera_length_mm"} for what is stated, {notes}): the scan step from the fast (x) navigation
    axis, q per px from the detector x axis (an angle converted with the beam energy, else 200 kV).
    """
    nav, sig = _split_axes(list(axes))
    tem = ((metadata or {}).get("Acquisition_instrument") or {}).get("TEM") or {}
    values, notes = {}, {}
    voltage = _number(tem.get("beam_energy"))
    if voltage:
        values["voltage_kv"] = voltage
    steps = []
    for axis in nav:
        factor = _LENGTH_NM.get(_unit(axis.get("units")))
        scale = _number(axis.get("scale"), absolute=True) if factor else None
        steps.append(scale * factor if scale else None)
    _x_value(steps, "scan_step_nm", values, notes,
             "navigation axes: %g nm along y, %g nm along x; the scan step is x's")
    q = []
    for axis in sig[-2:]:
        u = _unit(axis.get("units"))
        scale = _number(axis.get("scale"), absolute=True)
        if scale is not None and u in _ANGLE_RAD:
            lam = electron_wavelength_A(voltage or Geometry().voltage_kv)
            q.append(scale * _ANGLE_RAD[u] / lam)
            notes["angle_per_px_mrad"] = scale * _ANGLE_RAD[u] * 1e3
        else:
            q.append(scale * _RECIPROCAL_INVA[u] if scale is not None and u in _RECIPROCAL_INVA else None)
    stated_q = _x_value(q, "q_per_px_invA", values, notes,
                        "detector axes: %g 1/Å per px along y, %g along x; using x's")
    if not stated_q and _number(tem.get("camera_length")):
        values["camera_length_mm"] = _number(tem.get("camera_length"))
    names = [str(a.get("units") or "") for a in list(nav) + list(sig)]
    if any(names):
        notes["axes_units"] = names
    return values, notes


def _x_value(per_axis, key, values, notes, warning) -> bool:
    """values[key] = the x (last) axis' value when stated; the y one into notes[key + "_y"] (and
    ``warning`` logged) when they differ. Whether x's was stated."""
    if not (per_axis and per_axis[-1]):
        return False
    values[key] = per_axis[-1]
    if len(per_axis) == 2 and per_axis[0] and not math.isclose(per_axis[0], per_axis[-1], rel_tol=1e-3):
        notes[key + "_y"] = per_axis[0]
        log.warning(warning, per_axis[0], per_axis[-1])
    return True


def geometry_from_axes(detector_shape, axes, metadata=None) -> tuple[Geometry, dict]:
    """(Geometry with what the axes and metadata state marked "file", notes for the metadata)."""
    from .hdf5 import geometry_from_q

    values, notes = axes_calibration(axes, metadata)
    q = values.get("q_per_px_invA")
    geometry = geometry_from_q(tuple(detector_shape), q, values.get("voltage_kv"), values.get("scan_step_nm"))
    geometry = geometry.with_values("file", camera_length_mm=values.get("camera_length_mm"))
    if q:
        notes["q_per_px_invA"] = q
        notes["calibration"] = "scan step and q per px from the signal's axes; camera length derived for a 55 µm pixel"
    elif values:
        notes["calibration"] = "from the signal's axes and metadata: " + ", ".join(sorted(values))
    return geometry, notes


# ---- .hspy / .zspy files, read without HyperSpy --------------------------------------------------

_AXIS = re.compile(r"axis-(\d+)$")


def _plain(value):
    """A stored value as Python: bytes decoded, numpy scalars as Python scalars."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value.item() if isinstance(value, np.generic) else value


def _attrs(node) -> dict:
    return {k: _plain(v) for k, v in dict(node.attrs).items()}


def hspy_axes(group) -> list[dict] | None:
    """The axes (array order) of a HyperSpy signal stored in ``group`` (``Experiments/<title>``
    of an h5py file or a zarr store), or None when it has no ``axis-N`` entries."""
    found = {int(m.group(1)): _attrs(group[key]) for key in list(group.keys()) if (m := _AXIS.match(str(key)))}
    return [found[i] for i in sorted(found)] or None


def hspy_calibration(group, detector_shape) -> tuple[Geometry, dict] | None:
    """(Geometry, notes) from a stored HyperSpy signal's axes and ``metadata.Acquisition_instrument.TEM``,
    or None when ``group`` is not one."""
    axes = hspy_axes(group)
    if axes is None:
        return None
    where = _file_of(group)
    order = _navigation_first(axes)
    if order != list(range(len(axes))):
        signal_at = [i for i in order if not axes[i]["navigate"]]
        raise ScanFormatError(
            f"{where}: a HyperSpy signal stored with its signal axes at array positions {signal_at}, not the last "
            "two: save it with them last (in HyperSpy: s.transpose(signal_axes=s.axes_manager.signal_axes, "
            "optimize=True).save(...)), or open it with io.hyperspy.scan_from_signal(hs.load(path, lazy=True))")
    _check_not_swapped(*_split_axes(axes), where)
    try:
        metadata = {"Acquisition_instrument": {"TEM": _attrs(group["metadata/Acquisition_instrument/TEM"])}}
    except (KeyError, TypeError, ValueError):
        metadata = {}
    return geometry_from_axes(detector_shape, axes, metadata)


def _file_of(group) -> str:
    """The file (h5py) or store folder (zarr) a group is in, for messages."""
    filename = getattr(getattr(group, "file", None), "filename", None)
    root = getattr(getattr(group, "store", None), "root", None)
    return str(filename or root or group)


# ---- HyperSpy signals and rosettasciio's readers -------------------------------------------------

def scan_from_signal(signal, scan_shape=None, *, missing_at: str = "end", chunk_frames=None) -> Scan:
    """A Scan over a HyperSpy/pyxem signal, without reading its data (a lazy signal's dask array
    rechunked to whole frames; an in-memory one wrapped).

    2 signal dimensions (the detector); 2 navigation dimensions (the scan) or 1 (a stack of frames,
    shaped as other stacks are), in whatever array order the axes' ``navigate`` flags say. Its axes
    give the scan step and the reciprocal calibration ("file"); a signal whose navigation axes are in
    1/Å or mrad and signal axes in nm (a transposed ``s.T``) is refused.
    """
    am = signal.axes_manager
    metadata = signal.metadata.as_dictionary()
    name = str((metadata.get("General") or {}).get("title") or "") or type(signal).__name__
    if am.signal_dimension != 2:
        raise ScanFormatError(f"{name}: a signal with {am.signal_dimension} signal dimension(s); a scan's frames "
                              "are 2D (Signal2D, pyxem's Diffraction2D)")
    axes = list(am.as_dictionary().values())  # array order, as the readers give them
    return scan_from_parts(signal.data, axes, metadata, source=None, name=name,
                           fmt=f"HyperSpy signal ({type(signal).__name__})", scan_shape=scan_shape,
                           missing_at=missing_at, chunk_frames=chunk_frames)


def scan_from_parts(data, axes, metadata, *, source, name, fmt, scan_shape=None, missing_at="end",
                    chunk_frames=None) -> Scan:
    """A Scan from an array (numpy or dask; nav... + (det_y, det_x)), its HyperSpy axes (array order)
    and metadata: what :func:`scan_from_signal` and :func:`read` share."""
    import dask.array as da

    from ._lazy import check_pixel_dtype, frame_chunks, native, resolve_scan_shape

    nav, sig = _split_axes(axes)
    if len(sig) != 2 or len(nav) not in (1, 2) or data.ndim != len(nav) + 2:
        raise ScanFormatError(f"{name}: shape {tuple(data.shape)} with {len(nav)} navigation and {len(sig)} signal "
                              "axes is not a scan (2 signal axes, 1 or 2 navigation axes)")
    _check_not_swapped(nav, sig, name)
    dtype = check_pixel_dtype(data.dtype, name)
    order = _navigation_first(axes)
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=tuple(s if i in order[-2:] else 1 for i, s in enumerate(data.shape)))
    if order != list(range(len(axes))):
        data, axes = data.transpose(order), [axes[i] for i in order]
    if native(dtype) != dtype:
        data = data.astype(native(dtype))
    detector = tuple(int(s) for s in data.shape[-2:])
    notes = {"format": fmt, "dtype_on_disk": np.dtype(dtype).str}
    missing = None
    if len(nav) == 2:
        if scan_shape is not None and tuple(int(s) for s in scan_shape) != tuple(data.shape[:2]):
            raise ScanFormatError(f"{name}: wrong scan shape {tuple(scan_shape)}: the signal navigates a "
                                  f"{data.shape[0]}x{data.shape[1]} scan")
        notes["scan_shape_from"] = "navigation axes"
        notes["n_frames_in_file"] = int(data.shape[0] * data.shape[1])
    else:
        n = int(data.shape[0])
        shape, how, first = resolve_scan_shape(name, n, scan_shape, None, missing_at)
        pad = shape[0] * shape[1] - n
        if pad:
            zeros = da.zeros((pad,) + detector, dtype=data.dtype, chunks=(max(1, min(pad, data.chunks[0][0])),) + detector)
            data = da.concatenate([zeros, data] if first else [data, zeros])
        data = data.reshape(shape + detector)
        index = np.arange(shape[0] * shape[1]).reshape(shape)
        missing = (index < first) | (index >= first + n)
        notes.update(scan_shape_from=how, n_frames_in_file=n)
    frame_nbytes = int(np.prod(detector)) * data.dtype.itemsize
    rows, cols = frame_chunks(data.shape[:2], frame_nbytes, chunk_frames)
    data = data.rechunk((rows, cols, -1, -1))
    geometry, calibration = geometry_from_axes(detector, axes, metadata)
    notes.update(calibration)
    title = ((metadata or {}).get("General") or {}).get("title")
    if title:
        notes["title"] = str(title)
    return Scan(data, geometry, missing=missing, metadata=notes, source=source)


def probe(path) -> bool:
    """A file rosettasciio reads here (by its name: reading a header needs the library)."""
    from ..optional import formats_problem

    return Path(path).suffix.lower() in SUFFIXES and formats_problem("rsciio") is None


def read(path, scan_shape=None, *, missing_at="end", chunk_frames=None) -> Scan:
    """Open a file rosettasciio reads (DM3/DM4, TVIPS) lazily as a Scan: the first signal in it
    with 2D frames and 1 or 2 navigation axes."""
    import importlib

    from ..optional import require_formats

    path = Path(path)
    require_formats(f"Opening {path.suffix.lower()} files", module="rsciio")
    reader = importlib.import_module(f"rsciio.{SUFFIXES[path.suffix.lower()]}").file_reader
    try:
        signals = reader(str(path), lazy=True)
    except Exception as exc:  # rosettasciio raises many types for a file it cannot parse
        raise ScanFormatError(f"{path}: rosettasciio cannot read it ({type(exc).__name__}: {exc})") from exc
    shapes = []
    for d in signals:
        axes = d.get("axes") or []
        nav, sig = _split_axes(axes)
        shapes.append(f"{tuple(d['data'].shape)} ({len(nav)} navigation, {len(sig)} signal axes)")
        if len(sig) == 2 and len(nav) in (1, 2):
            scan = scan_from_parts(d["data"], axes, d.get("metadata") or {}, source=str(path), name=str(path),
                                   fmt=f"{SUFFIXES[path.suffix.lower()]} (rosettasciio)", scan_shape=scan_shape,
                                   missing_at=missing_at, chunk_frames=chunk_frames)
            if len(signals) > 1:
                scan.metadata["other_signals"] = len(signals) - 1
            return scan
    raise ScanFormatError(f"{path}: no 4D scan or stack of 2D frames in it; signals: {'; '.join(shapes) or 'none'}")


# ---- export ----------------------------------------------------------------------------------------

def to_signals(prediction, *, result=None, geometry=None, classes=None) -> dict:
    """HyperSpy signals of a prediction: {"classes", "probabilities", "confidence"[, "ria"]}.

    prediction: a ``pipeline.predict.ScanPrediction`` (``name``, ``class_map``, ``probabilities``
    (sy, sx, k), ``class_ids``; ``ria`` and ``ria_radii_px`` when ``result`` is not given). result:
    its PreprocessResult, for the RIAs. geometry: default the result's or the prediction's. Scan axes
    in nm (positions when the scan step is unknown), the RIA's in 1/Å (px when not calibrated); the
    class table goes into each signal's ``metadata.Sedclassify``.
    """
    from ..classes import ClassTable
    from ..jsonutil import jsonable
    from ..optional import require_formats

    require_formats("Exporting results as HyperSpy signals")
    import hyperspy.api as hs

    geometry = geometry or getattr(result, "geometry", None) or getattr(prediction, "geometry", None)
    classes = classes or ClassTable.default()
    class_map = np.asarray(prediction.class_map, dtype=np.uint8)
    step = getattr(geometry, "scan_step_nm", None)
    table = {"class_ids": [int(i) for i in prediction.class_ids],
             "class_names": [classes.names.get(int(i), str(i)) for i in prediction.class_ids],
             "class_table": classes.to_dict(), "unclassified_id": 0,
             "scan_step_origin": geometry.origin("scan_step_nm") if geometry is not None else "unknown",
             "geometry": jsonable(geometry.to_dict()) if geometry is not None else None}
    name = str(prediction.name)
    instrument = _instrument(geometry)
    # the scan grid (y, x): nm when the scan step is known, else positions
    units, scale = ("nm", float(step)) if step else ("", 1.0)
    grid = [{"name": n, "size": int(s), "scale": scale, "offset": 0.0, "units": units}
            for n, s in zip(("y", "x"), class_map.shape)]

    def signal(kind, data, title, quantity, axis=None):
        """A Signal2D over the scan grid, or with ``axis`` a Signal1D along it at each position."""
        if axis is None:
            s = hs.signals.Signal2D(data, axes=[dict(a) for a in grid])
        else:
            s = hs.signals.Signal1D(data, axes=[dict(a, navigate=True) for a in grid] + [axis])
        s.metadata.General.title = f"{name} {title}"
        s.metadata.set_item("Signal.quantity", quantity)
        s.metadata.set_item("Sedclassify", {**table, "kind": kind, "scan": name,
                                            "source": str(getattr(prediction, "source", "") or "")})
        for key, value in instrument.items():
            s.metadata.set_item(f"Acquisition_instrument.TEM.{key}", value)
        return s

    out = {"classes": signal("classes", class_map, "class map", "class id")}
    probs = np.asarray(prediction.probabilities, dtype=np.float32)
    class_axis = {"name": "class", "size": int(probs.shape[-1]), "scale": 1.0, "offset": 0.0, "units": ""}
    out["probabilities"] = signal("probabilities", probs, "class probabilities", "probability", class_axis)
    confidence = probs.max(axis=-1) if probs.shape[-1] else np.zeros(class_map.shape, np.float32)
    out["confidence"] = signal("confidence", confidence.astype(np.float32), "confidence (highest class probability)",
                               "probability")
    ria = getattr(result, "ria", None) if result is not None else getattr(prediction, "ria", None)
    radii = getattr(result, "radii_px", None) if result is not None else getattr(prediction, "ria_radii_px", None)
    if ria is not None and radii is not None and len(radii):
        radii = np.asarray(radii, dtype=float)
        dr = float(radii[1] - radii[0]) if len(radii) > 1 else 1.0
        if geometry is not None and geometry.calibrated:
            q0, q1 = geometry.radius_px_to_q_invA(radii[0]), geometry.radius_px_to_q_invA(radii[0] + dr)
            q_axis = {"name": "q", "size": len(radii), "offset": float(q0), "scale": float(q1 - q0), "units": "1/Å"}
        else:
            q_axis = {"name": "r", "size": len(radii), "offset": float(radii[0]), "scale": dr, "units": "px"}
        out["ria"] = signal("ria", np.asarray(ria, dtype=np.float32), "radial intensity average",
                            "mean counts per px", q_axis)
    return out


def _instrument(geometry) -> dict:
    """HyperSpy's ``Acquisition_instrument.TEM`` entries: the beam energy (keV) when not assumed. The
    camera length stays in ``metadata.Sedclassify.geometry`` beside the pixel size it goes with (one
    derived from a file's 1/Å axes holds for the 55 µm pixel it was derived for only)."""
    if geometry is None or geometry.origin("voltage_kv") in ("assumed", "unknown"):
        return {}
    return {"beam_energy": float(geometry.voltage_kv)}


def export_hyperspy(prediction, out_dir, *, result=None, geometry=None, classes=None, force: bool = True) -> dict:
    """Write :func:`to_signals` as ``<out_dir>/<name>_{classes,probabilities,confidence,ria}.hspy``
    (atomically; an existing file only with ``force``). Returns {"hspy_<kind>": path}."""
    from .atomic import atomic_output, check_target

    signals = to_signals(prediction, result=result, geometry=geometry, classes=classes)
    out_dir = Path(out_dir)
    paths = {kind: out_dir / f"{prediction.name}_{kind}.hspy" for kind in signals}
    for path in paths.values():
        check_target(path, force)
    for kind, s in signals.items():
        with atomic_output(paths[kind], force=force) as tmp:
            s.save(str(tmp), overwrite=True)
    return {f"hspy_{kind}": str(p) for kind, p in paths.items()}


def read_class_map(path) -> tuple[np.ndarray, dict]:
    """(class map uint8 (sy, sx), info) from a ``<name>_classes.hspy`` written by
    :func:`export_hyperspy`, through h5py (no HyperSpy needed). info: the ``metadata.Sedclassify``
    entries (class ids, names, class table...) and ``scan_step_nm`` (None when the axes are not in nm)."""
    import h5py

    with h5py.File(path, "r") as f:
        g = f["Experiments"][next(iter(f["Experiments"].keys()))]
        data = np.asarray(g["data"][()], dtype=np.uint8)
        axes = hspy_axes(g) or []
        info = _tree(g["metadata/Sedclassify"]) if "metadata/Sedclassify" in g else {}
    factor = _LENGTH_NM.get(_unit(axes[-1].get("units"))) if axes else None
    info["scan_step_nm"] = float(axes[-1]["scale"]) * factor if factor else None
    return data, info


def _tree(group) -> dict:
    """A stored metadata group as a dict (HyperSpy keeps lists as ``_list_<name>`` datasets)."""
    out = _attrs(group)
    for k in group.keys():
        node = group[k]
        if hasattr(node, "keys"):
            out[k] = _tree(node)
        else:
            out[k.removeprefix("_list_")] = [_plain(v) for v in np.asarray(node[()]).tolist()]
    return out
