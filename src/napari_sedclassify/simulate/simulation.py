"""Simulate one scan (in memory or streamed to disk) and the flat-field acquisition of a session."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..classes import ClassTable
from ..geometry import Geometry
from ..io.atomic import write_npy
from ..scan import Scan, parse_scan_shape
from .detector import flood_frames, make_detector
from .frames import scan_model, true_geometry
from .overview import render_overview
from .params import MATERIALS, SessionParams, SimParams, detector_scale, session_params, session_seed
from .sample import beam_content, class_map, make_sample
from .writer import NpyStreamWriter, save_json, save_tif

_SAMPLE_TAG = 0x5A3
_OVERVIEW_TAG = 0x0E1
_FLAT_TAG = 0xF1A7
#: Frames generated per write (bounded memory: about this many MB for 512x512 frames / 2).
CHUNK_FRAMES = 64
FORMAT = "napari-sedclassify simulated scan"


@dataclass
class SimulatedScan:
    """A simulated scan and its ground truth.

    scan: lazy Scan (frames uint16 (sy, sx, ky, kx)); on disk it is opened with ``io.open_scan``.
    truth: uint8 (sy, sx) class ids (1 carbon, 2 amorphous ice, 3 crystalline ice, 4 mixed).
    centres: float64 (sy, sx, 2) true direct-beam centre (cy, cx) in px, pixel centres at integers.
    overview: float32 image-mode overview; overview_to_scan: 3x3 affine, [iy, ix, 1] = A @ [oy, ox, 1].
    fractions: float (sy, sx, 3) area fractions of carbon, amorphous ice, crystalline ice under the beam.
    thickness: float (sy, sx, 3) beam-averaged thickness (nm) of carbon, vitreous ice, crystals.
    flatfield: (N, ky, kx) uint16 flood frames (in memory) or None; flatfield_path when on disk.
    geometry: nominal calibration (what the microscope reports); metadata: the sidecar JSON content.
    """

    scan: Scan
    truth: np.ndarray
    centres: np.ndarray
    overview: np.ndarray
    overview_to_scan: np.ndarray
    fractions: np.ndarray
    thickness: np.ndarray | None
    geometry: Geometry
    session: str
    seed: int
    metadata: dict
    flatfield: np.ndarray | None = None
    flatfield_path: Path | None = None
    path: Path | None = None

    def load_flatfield(self) -> np.ndarray:
        """The flat-field stack (N, ky, kx) uint16, from memory or from its file."""
        if self.flatfield is not None:
            return self.flatfield
        if self.flatfield_path is None:
            raise ValueError("this simulated scan has no flat-field acquisition")
        return np.load(self.flatfield_path)


def _check_name(session: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", session):
        raise ValueError(f"session name {session!r}: use letters, digits, '_', '-' or '.' (it names files)")
    return session


def sidecar_paths(out_path) -> dict:
    """Paths of the files written beside a scan ``<stem>.npy``."""
    p = Path(out_path)
    stem = p.with_suffix("")
    return {"scan": p, "metadata": p.with_suffix(".json"), "truth": Path(f"{stem}_truth.npy"),
            "truth_tif": Path(f"{stem}_truth.tif"),
            **{k: Path(f"{stem}_{k}.npy") for k in ("centres", "overview", "fractions", "thickness")}}


def flatfield_name(session: str) -> str:
    return f"flatfield_{_check_name(session)}.npy"


def simulate_flatfield(out_path=None, *, detector_px: int = 512, session="A", n_frames: int = 20,
                       seed: int = 0) -> np.ndarray:
    """Flat-field acquisition of a session: (n_frames, ky, kx) uint16 uniform flood frames.

    The frames go through the session's detector (gain map, dead and hot pixels, wide edge pixels,
    saturation) with ``flat_counts_per_px`` counts per pixel. out_path: a folder (the file is then
    ``flatfield_<session>.npy`` in it) or a ``.npy`` path; a ``.json`` sidecar records provenance.
    """
    sess = session_params(session)
    _check_name(sess.name)
    if n_frames < 1:
        raise ValueError(f"a flat-field acquisition needs at least 1 frame, got {n_frames}")
    det = make_detector(sess, int(detector_px))
    rng = np.random.Generator(np.random.SFC64([seed, session_seed(sess.name), det.detector_px, _FLAT_TAG]))
    frames = flood_frames(det, sess.flat_counts_per_px, int(n_frames), rng)
    if out_path is not None:
        path = Path(out_path)
        if path.suffix.lower() != ".npy":
            path = path / flatfield_name(sess.name)
        write_npy(path, frames)
        save_json(path.with_suffix(".json"), _flat_meta(sess, det.detector_px, n_frames, seed))
    return frames


def _flat_path(folder: Path, session: str, flat_meta: dict) -> Path:
    """Where a scan's flat-field goes: ``flatfield_<session>.npy``, or the one of that session in
    ``folder`` made the same way (detector, seed, frames), or the next free ``flatfield_<session>_<k>.npy``:
    a scan of another detector size in the same folder once replaced the flat-field of the scans
    written before it, which then failed with a shape mismatch (or were corrected with the wrong
    gain)."""
    stem = Path(flatfield_name(session)).stem
    k = 1
    while True:
        path = folder / (f"{stem}.npy" if k == 1 else f"{stem}_{k}.npy")
        if not path.exists() or _same_json(path.with_suffix(".json"), flat_meta):
            return path
        k += 1


def _flat_meta(sess: SessionParams, detector_px, n_frames, seed) -> dict:
    geom = true_geometry(sess, detector_px, nominal=True).replace(scan_step_nm=None)
    return {
        "format": "napari-sedclassify simulated flat-field",
        "geometry": geom.to_dict(),
        "session": sess.name,
        "session_params": sess.to_dict(),
        "n_frames": int(n_frames),
        "seed": int(seed),
        "counts_per_px": sess.flat_counts_per_px,
    }


def simulate_scan(out_path=None, *, scan_shape=(40, 40), detector_px: int = 512, session="A", seed: int = 0,
                  params: SimParams | None = None, flatfield_seed: int | None = None, flatfield_frames: int = 20,
                  progress=None) -> SimulatedScan:
    """Simulate a holey-carbon / vitreous-ice scan.

    out_path: None keeps everything in memory (small scans); a ``.npy`` path streams the frames to
    a 4D uint16 .npy file, a few rows at a time, with sidecars ``<stem>.json`` (geometry, session,
    seed, classes, parameters, overview->scan affine), ``<stem>_truth.npy/.tif``,
    ``<stem>_centres.npy``, ``<stem>_overview.npy``, ``<stem>_fractions.npy``,
    ``<stem>_thickness.npy``, and the session's ``flatfield_<session>.npy`` in the same folder
    (kept when an identical one is there).
    session: a name ("A" = the paper's alignment; others differ deterministically) or SessionParams.
    seed: the sample and the counting noise; the same seed gives identical bytes.
    flatfield_seed: noise of the flat-field frames (default ``seed``).
    progress: optional callable, called with the number of frames just finished.
    """
    sess = session_params(session)
    _check_name(sess.name)
    params = params or SimParams()
    sy, sx = parse_scan_shape(scan_shape)
    n = int(detector_px)
    detector_scale(n)
    seed = int(seed)
    flatfield_seed = seed if flatfield_seed is None else int(flatfield_seed)

    sample = make_sample((sy, sx), sess, params, np.random.default_rng([seed, sy, sx, _SAMPLE_TAG]))
    content = beam_content(sample, (sy, sx), sess)
    truth = class_map(content.fractions, params.mixed_threshold)
    detector = make_detector(sess, n)
    model = scan_model(content, sample.crystals, sess, params, detector, seed)
    centres = model.index_centres()
    overview, affine = render_overview(sample, (sy, sx), sess, params,
                                       np.random.default_rng([seed, sy, sx, session_seed(sess.name), _OVERVIEW_TAG]))
    geometry = true_geometry(sess, n, nominal=True)  # what the microscope reports
    meta = _scan_meta(sess, params, geometry, model, sample, (sy, sx), n, seed, affine)

    if out_path is None:
        frames = np.empty((sy, sx, n, n), dtype=np.uint16)
        for y0, y1 in _row_chunks(sy, sx, n):
            frames[y0:y1] = model.rows(y0, y1)
            if progress:
                progress((y1 - y0) * sx)
        flat = simulate_flatfield(None, detector_px=n, session=sess, n_frames=flatfield_frames, seed=flatfield_seed)
        return SimulatedScan(Scan(frames, geometry, metadata=meta), truth, centres, overview, affine,
                             content.fractions, content.thickness, geometry, sess.name, seed, meta, flatfield=flat)

    out_path = Path(out_path)
    if out_path.suffix.lower() != ".npy":
        raise ValueError(f"{out_path}: a simulated scan is written as .npy; give a path ending in .npy")
    paths = sidecar_paths(out_path)
    flat_meta = _flat_meta(sess, n, flatfield_frames, flatfield_seed)
    flat_path = _flat_path(out_path.parent, sess.name, flat_meta)
    meta["files"] = {k: p.name for k, p in paths.items()}
    meta["files"]["flatfield"] = flat_path.name
    with NpyStreamWriter(out_path, (sy, sx, n, n), np.uint16) as w:
        for y0, y1 in _row_chunks(sy, sx, n):
            w.write(model.rows(y0, y1))
            if progress:
                progress((y1 - y0) * sx)
    write_npy(paths["truth"], truth)
    save_tif(paths["truth_tif"], truth)
    write_npy(paths["centres"], centres)
    write_npy(paths["overview"], overview)
    write_npy(paths["fractions"], content.fractions.astype(np.float32))
    write_npy(paths["thickness"], content.thickness.astype(np.float32))
    if not flat_path.exists():
        simulate_flatfield(flat_path, detector_px=n, session=sess, n_frames=flatfield_frames, seed=flatfield_seed)
    save_json(paths["metadata"], meta)
    return load_simulated(out_path)


def load_simulated(path) -> SimulatedScan:
    """Open a simulated scan written by :func:`simulate_scan` (frames lazily, sidecars in memory)."""
    from ..io import open_scan

    path = Path(path)
    paths = sidecar_paths(path)
    if not paths["metadata"].exists():
        raise FileNotFoundError(f"{paths['metadata']}: sidecar of simulated scan {path.name} not found")
    meta = json.loads(paths["metadata"].read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{paths['metadata']}: not the sidecar of a simulated scan")
    scan = open_scan(path)
    flat = path.parent / meta["files"]["flatfield"]
    thickness = np.load(paths["thickness"]) if paths["thickness"].exists() else None
    return SimulatedScan(scan, *(np.load(paths[k]) for k in ("truth", "centres", "overview")),
                         np.asarray(meta["overview_to_scan"], dtype=np.float64), np.load(paths["fractions"]),
                         thickness, scan.geometry, meta["session"], int(meta["seed"]), meta,
                         flatfield_path=flat if flat.exists() else None, path=path)


def _same_json(path: Path, obj: dict) -> bool:
    try:
        return json.loads(path.read_text()) == json.loads(json.dumps(obj))
    except (OSError, ValueError):
        return False


def _row_chunks(sy, sx, n):
    """(start, stop) scan-row ranges holding about CHUNK_FRAMES 512x512-equivalent frames each."""
    per_row = sx * (n / 512.0) ** 2
    rows = max(1, int(CHUNK_FRAMES // max(per_row, 1e-9)))
    return [(y, min(y + rows, sy)) for y in range(0, sy, rows)]


def _scan_meta(sess, params, geometry, model, sample, scan_shape, n, seed, affine) -> dict:
    sy, sx = scan_shape
    table = ClassTable.default()
    b = detector_scale(n)
    step = sess.scan_step_nm
    centre_idx = model.detector.to_index(model.centres[(sy - 1) // 2, (sx - 1) // 2])
    return {
        "format": FORMAT,
        "version": __version__,
        "geometry": geometry.to_dict(),
        "true_geometry": true_geometry(sess, n).to_dict(),
        "session": sess.name,
        "seed": seed,
        "scan_shape": [sy, sx],
        "detector_px": n,
        "dtype": "uint16",
        "class_names": {str(k): v for k, v in table.names.items()},
        "class_colours": {str(k): v for k, v in table.colours.items()},
        "materials": list(MATERIALS),
        "mixed_rule": f"a scan point is the material covering >= {params.mixed_threshold:g} of the beam disc "
                      f"({sess.beam_diameter_nm:g} nm), otherwise mixed",
        "electrons_per_frame": sess.electrons_per_frame,
        "descan": {
            "centre_px": [float(v) for v in centre_idx],
            "px_per_scan_step": (sess.descan_matrix * step / b).tolist(),
            "jitter_px": sess.jitter_px / b,
            "note": "physical px (index px away from the chip cross, which adds 2*(edge width - 1) px)",
        },
        "edge_pixel_width": 1.0 + (sess.edge_pixel_width - 1.0) / b,
        "overview_to_scan": affine.tolist(),
        "overview_px_per_step": params.overview_per_step,
        "crystals": [{"centre_nm": [float(v - sample.margin_px * sample.pixel_nm) for v in c.centre_nm],
                      "size_nm": float(c.size_nm), "rotation_deg": float(c.rotation_deg)} for c in sample.crystals],
        "session_params": sess.to_dict(),
        "sim_params": params.to_dict(),
        "files": {},
    }
