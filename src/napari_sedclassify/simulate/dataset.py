"""Sets of simulated scans (like the paper's 16 + 1) and the small sample scan."""

from __future__ import annotations

import json
from pathlib import Path

from ..classes import ClassTable
from .params import session_params
from .simulation import SimulatedScan, sidecar_paths, simulate_scan
from .writer import save_json

DATASET_FILE = "dataset.json"
DATASET_FORMAT = "napari-sedclassify simulated dataset"
#: The napari sample: small enough to simulate in well under 3 s, and showing all four classes.
SAMPLE_SCAN_SHAPE = (24, 24)
SAMPLE_DETECTOR_PX = 256
SAMPLE_SEED = 1
#: The files of each scan entry of dataset.json.
_ENTRY_FILES = ("scan", "metadata", "truth", "truth_tif", "centres", "overview", "fractions", "flatfield")


def sample_scan() -> SimulatedScan:
    """A small in-memory scan (24x24 points, 256x256 px detector, session "A") for napari and tests."""
    return simulate_scan(None, scan_shape=SAMPLE_SCAN_SHAPE, detector_px=SAMPLE_DETECTOR_PX, seed=SAMPLE_SEED)


def _scan_entry(out_dir: Path, name, session, seed, flat_seed, scan_shape, detector_px, progress) -> dict:
    path = out_dir / f"{name}.npy"
    sim = simulate_scan(path, scan_shape=scan_shape, detector_px=detector_px, session=session, seed=seed,
                        flatfield_seed=flat_seed, progress=progress)
    files = {**sidecar_paths(path), "flatfield": sim.flatfield_path}
    return {"name": name, "session": session_params(session).name, "seed": seed,
            **{k: files[k].name for k in _ENTRY_FILES}}


def _write_dataset(out_dir: Path, plan, scan_shape, detector_px, seed, progress, extra=None) -> dict:
    """plan: [(name, session name or SessionParams, scan seed)]; one flat-field per session (noise
    seeded by ``seed``). extra: more entries for dataset.json (e.g. a session grid). Stopped
    part-way (Ctrl-C, a cancel, an error), dataset.json describes the scans written whole so far,
    with ``"complete": false`` and ``"planned_scans"``, and the error goes on."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {}
    for _, s, _ in plan:
        sp = session_params(s)
        if params.setdefault(sp.name, sp) != sp:
            raise ValueError(f"two different sessions are both named {sp.name!r}")
    table = ClassTable.default()
    dataset = {
        "format": DATASET_FORMAT,
        "seed": int(seed),
        "scan_shape": [int(v) for v in scan_shape],
        "detector_px": int(detector_px),
        "class_names": {str(k): v for k, v in table.names.items()},
        "sessions": {s: params[s].to_dict() for s in sorted(params)},
        "scans": [],
        **(extra or {}),
    }
    try:
        for name, s, scan_seed in plan:
            dataset["scans"].append(_scan_entry(out_dir, name, s, scan_seed, seed, scan_shape, detector_px, progress))
    except BaseException:  # Ctrl-C, a cancel, a full disk: the scans written so far, described as such
        if dataset["scans"]:
            save_json(out_dir / DATASET_FILE, {**dataset, "complete": False, "planned_scans": len(plan)})
        raise
    save_json(out_dir / DATASET_FILE, dataset)
    return dataset


def simulate_dataset(out_dir, *, n_scans: int, session="A", scan_shape=(40, 40), detector_px: int = 512,
                     seed: int = 0, progress=None) -> dict:
    """Write ``n_scans`` scans of one session into ``out_dir`` plus ``dataset.json``; returns its content.

    Scan i is ``scan_<session>_<i>.npy`` with seed ``seed + i`` (the same seeds in another session
    give the same sample areas seen through that session's alignment and detector).
    """
    if n_scans < 1:
        raise ValueError(f"a data set needs at least 1 scan, got {n_scans}")
    name = session_params(session).name
    plan = [(f"scan_{name}_{i:02d}", name, seed + i) for i in range(n_scans)]
    return _write_dataset(Path(out_dir), plan, scan_shape, detector_px, seed, progress)


def demo_dataset(out_dir, *, scan_shape=(40, 40), detector_px: int = 512, seed: int = 0, progress=None,
                 n_session_a: int = 16) -> dict:
    """The paper's layout: 16 scans of session "A" (seeds seed..seed+15) and 1 of session "B"
    (seed + 16, a different area), like its data sets 1 (same session) and 2 (another session).
    n_session_a: fewer (or more) session-A scans, e.g. for the quick demo; the B scan keeps seed + 16."""
    if n_session_a < 2:
        raise ValueError(f"the demo set needs at least 2 scans of session A, got {n_session_a}")
    plan = [(f"scan_A_{i:02d}", "A", seed + i) for i in range(n_session_a)] + [("scan_B_00", "B", seed + 16)]
    return _write_dataset(Path(out_dir), plan, scan_shape, detector_px, seed, progress)


def load_dataset(path) -> dict:
    """Read ``dataset.json`` (a path to it or its folder); file entries become absolute Paths."""
    path = Path(path)
    if path.is_dir():
        path = path / DATASET_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no simulated data set here ({DATASET_FILE} missing)")
    data = json.loads(path.read_text())
    if data.get("format") != DATASET_FORMAT:
        raise ValueError(f"{path}: not a simulated data set description")
    for entry in data["scans"]:
        for k in _ENTRY_FILES:
            entry[k] = path.parent / entry[k]
    return data
