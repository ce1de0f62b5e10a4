"""Grids of sessions: every combination of beam convergence, ice thickness, dose, camera length and
descan, each session with its own gain map and alignment, for measuring how models and calibration
hold up across sessions (``sedclassify simulate OUT --session-grid ...``).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

from .params import SessionParams, session_params

#: Grid axes: name -> (what it sets, how, unit). "x" values multiply the base session's value.
GRID_AXES = {
    "convergence": ("convergence_mrad", "semi-angle", "mrad"),
    "ice": ("ice_thickness_scale", "factor on the ice thickness", "x"),
    "dose": ("dose_e_per_A2", "factor on the dose", "x"),
    "camera": ("camera_length_mm", "factor on the true camera length (the file keeps the nominal)", "x"),
    "descan": ("descan_px_per_nm", "factor on the descan strength", "x"),
}
_NAME_KEYS = {"convergence": "c", "ice": "i", "dose": "d", "camera": "L", "descan": "s"}


def grid_session_name(values: dict) -> str:
    """The name of the grid session with these axis values, e.g. ``g-c0.5-i2-d0.3-L0.94-s1``."""
    return "g-" + "-".join(f"{_NAME_KEYS[a]}{float(values[a]):g}" for a in GRID_AXES)


def session_grid(base="A", *, convergence=(0.0,), ice=(1.0,), dose=(1.0,), camera=(1.0,), descan=(1.0,),
                 vary_alignment: bool = True, plural_scattering: bool = True) -> list[SessionParams]:
    """Every combination of the axis values, as sessions derived from ``base``.

    convergence: beam convergence semi-angles (mrad); ice: factors on the ice thickness; dose,
    camera, descan: factors on the base session's dose, true camera length and descan strength
    (the nominal camera length the files state stays the base's). Each session is named after its
    values (:func:`grid_session_name`), which seeds its own gain map; with ``vary_alignment`` its
    beam position, descan direction (±20-45°) and overview rotation also differ, deterministically
    from the name, as between real sessions. plural_scattering: draw multiply scattered electrons
    into the broad plural profile (so thick ice weakens the rings).
    """
    base = session_params(base)
    axes = {"convergence": convergence, "ice": ice, "dose": dose, "camera": camera, "descan": descan}
    for name, values in axes.items():
        values = tuple(float(v) for v in values)
        if not values:
            raise ValueError(f"session grid axis {name!r} has no values")
        if any(not v >= 0 for v in values) or (name != "convergence" and name != "ice" and 0.0 in values):
            raise ValueError(f"session grid axis {name!r}: values must be positive, got {values}")
        axes[name] = values
    out = []
    for combo in itertools.product(*axes.values()):
        v = dict(zip(axes, combo))
        name = grid_session_name(v)
        s = replace(base, name=name, gain_seed=None,  # its own gain map, from the name
                    convergence_mrad=v["convergence"], ice_thickness_scale=v["ice"],
                    dose_e_per_A2=base.dose_e_per_A2 * v["dose"], camera_length_mm=base.camera_length_mm * v["camera"],
                    descan_px_per_nm=base.descan_px_per_nm * v["descan"], plural_scattering=bool(plural_scattering))
        if vary_alignment:
            other = session_params(name, base)
            s = replace(s, beam_offset_px=other.beam_offset_px, descan_angle_deg=other.descan_angle_deg,
                        overview_rotation_deg=other.overview_rotation_deg)
        out.append(s)
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError("session grid has repeated values on an axis")
    return out


def parse_grid_spec(items) -> dict:
    """``["convergence=0,0.5", "ice=1,2.5"]`` -> {"convergence": (0.0, 0.5), "ice": (1.0, 2.5)}."""
    out = {}
    for item in items:
        key, sep, values = str(item).partition("=")
        key = key.strip().lower()
        if not sep or key not in GRID_AXES:
            raise ValueError(f"session grid: {item!r}: expected AXIS=V1,V2,... with AXIS one of "
                             f"{', '.join(GRID_AXES)}")
        if key in out:
            raise ValueError(f"session grid: axis {key!r} given twice")
        try:
            out[key] = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"session grid: {item!r}: values must be numbers") from None
        if not out[key]:
            raise ValueError(f"session grid: {item!r}: no values")
    return out


def simulate_session_grid(out_dir, *, n_scans: int = 1, scan_shape=(40, 40), detector_px: int = 512,
                          seed: int = 0, base="A", vary_alignment: bool = True, plural_scattering: bool = True,
                          progress=None, **axes) -> dict:
    """Write ``n_scans`` scans of every session of :func:`session_grid` (``axes``: convergence, ice,
    dose, camera, descan value lists) into ``out_dir``, plus ``dataset.json`` (with a ``grid`` entry
    listing each session's axis values). Scan i of every session has seed ``seed + i``: the same
    sample areas seen in every session. Returns the data set description."""
    from .dataset import _write_dataset

    if n_scans < 1:
        raise ValueError(f"a data set needs at least 1 scan per session, got {n_scans}")
    unknown = sorted(set(axes) - set(GRID_AXES))
    if unknown:
        raise ValueError(f"unknown session grid axes: {', '.join(unknown)} (known: {', '.join(GRID_AXES)})")
    sessions = session_grid(base, vary_alignment=vary_alignment, plural_scattering=plural_scattering, **axes)
    plan = [(f"scan_{s.name}_{i:02d}", s, seed + i) for s in sessions for i in range(n_scans)]
    grid = {
        "axes": {a: {"sets": GRID_AXES[a][0], "meaning": GRID_AXES[a][1], "unit": GRID_AXES[a][2],
                     "values": list(axes.get(a, (1.0,) if a != "convergence" else (0.0,)))} for a in GRID_AXES},
        "base": session_params(base).name,
        "vary_alignment": bool(vary_alignment),
        "plural_scattering": bool(plural_scattering),
        "scans_per_session": int(n_scans),
    }
    return _write_dataset(Path(out_dir), plan, scan_shape, detector_px, seed, progress, extra={"grid": grid})
