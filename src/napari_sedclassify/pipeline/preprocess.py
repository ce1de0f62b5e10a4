"""Preprocess a scan: flat-field, bad pixels, centres, descan fit, RIAs, virtual images, crops.

``preprocess(scan, params, flatfield)`` streams the scan's frames through one fused pass (two
with fitted centring: centres first, then everything about the fitted centres) and returns a
:class:`PreprocessResult`, which saves to and loads from one HDF5 (.h5) or zarr (.zarr) file
with provenance. Memory holds the per-frame results, never the 4D scan.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..errors import Cancelled
from ..geometry import Geometry
from ..jsonutil import jsonable
from ..processing import (PCC, DescanFit, FrameRunner, NoBeamInSample, PreprocessParams, PreprocessPlan,
                          calibration_sample_index, calibration_windows, fit_descan, no_beam_message)
from ..processing.descan import DescanModel
from ..processing.pixels import PixelGrid
from . import tally

FORMAT = "napari-sedclassify/preprocess"
FORMAT_VERSION = 1

__all__ = ["PreprocessResult", "beam_radius_record", "preprocess", "preprocessing_record"]
#: The arrays of a PreprocessResult stored under their own names.
_ARRAYS = ("centres", "centres_fitted", "beam_found", "beam_radius_px", "ria", "ria_counts", "radii_px", "mask",
           "missing")


@dataclass
class PreprocessResult:
    """Everything preprocessing found for one scan (sy, sx = scan shape, ky, kx = detector).

    centres: (sy, sx, 2) float64 measured (cy, cx) px, NaN where no beam. centres_fitted: the
    descan fit at every position (NaN when it could not be fitted). beam_found: (sy, sx) bool.
    beam_radius_px: (sy, sx) float32. descan: DescanFit (plane + smooth models, residual RMS) or
    None. ria: (sy, sx, nbins) float32 mean per radial bin (NaN: empty bin or no centre);
    ria_counts: pixels per bin; radii_px: (nbins,) bin centres. crops: (sy, sx, h, w) float32 or
    None. virtual: {"total", "bf", "adf"} -> (sy, sx) float64 sums. mask: (ky, kx) bool, True =
    excluded. missing: (sy, sx) bool. params: PreprocessParams; resolved: the radii used (px);
    geometry; provenance: input, parameters, version, time.
    """

    centres: np.ndarray
    centres_fitted: np.ndarray
    beam_found: np.ndarray
    beam_radius_px: np.ndarray
    descan: DescanFit | None
    ria: np.ndarray
    ria_counts: np.ndarray
    radii_px: np.ndarray
    crops: np.ndarray | None
    virtual: dict
    mask: np.ndarray
    missing: np.ndarray
    params: PreprocessParams
    resolved: dict
    geometry: Geometry
    provenance: dict = field(default_factory=dict)

    @property
    def scan_shape(self) -> tuple[int, int]:
        return tuple(self.missing.shape)

    @property
    def plan(self) -> PreprocessPlan | None:
        """The plan every frame was processed with (None in files written before plans existed)."""
        d = (self.provenance or {}).get("plan")
        return None if d is None else PreprocessPlan.from_dict(d)

    @property
    def centres_used(self) -> np.ndarray:
        """The centres the RIAs, crops and BF/ADF were computed about."""
        return self.centres_fitted if self.params.centring == "fitted" else self.centres

    @property
    def q_invA(self) -> np.ndarray | None:
        """Bin centres in Å⁻¹ (q = 1/d) when the geometry is calibrated, else None."""
        return self.geometry.radius_px_to_q_invA(self.radii_px) if self.geometry.calibrated else None

    def pcc(self) -> PCC:
        """PCC features of the scan: the RIA bins from the annular dark-field inner radius outwards
        (the sample's diffraction without the direct beam, whose intensity would otherwise dominate
        every correlation); missing frames and frames without a beam are left out."""
        keep = np.asarray(self.radii_px) >= float(self.resolved["adf_inner_px"])
        return PCC(np.asarray(self.ria)[..., keep], self.missing | ~self.beam_found)

    # -- files ------------------------------------------------------------------------------
    def _arrays(self) -> dict:
        a = {k: getattr(self, k) for k in _ARRAYS}
        for k, v in self.virtual.items():
            a[f"virtual/{k}"] = v
        if self.crops is not None:
            a["crops"] = self.crops
        if self.descan is not None:
            a["descan/residuals"] = self.descan.residuals
            a["descan/plane_inliers"] = self.descan.plane.inliers
            a["descan/smooth_inliers"] = self.descan.smooth.inliers
        return a

    def _attrs(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "params": json.dumps(self.params.to_dict()), "resolved": json.dumps(jsonable(self.resolved)),
            "geometry": json.dumps(self.geometry.to_dict()),
            "descan": json.dumps(None if self.descan is None else jsonable(self.descan.to_dict())),
            "provenance": json.dumps(jsonable(self.provenance)),
        }

    def save(self, path) -> Path:
        """Write to ``path`` (.h5/.hdf5: HDF5, .zarr: zarr) atomically: a temporary file in the same
        folder, then renamed over the target (``io.atomic`` naming: what a killed run left there is
        removed by the next)."""
        from ..io.atomic import remove_stale, temporary_path

        path = Path(path)
        write = _write_h5 if _kind(path) == "h5" else _write_zarr
        remove_stale(path)
        tmp = temporary_path(path)
        try:
            write(tmp, self._arrays(), self._attrs())
            _replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        return path

    @classmethod
    def load(cls, path) -> "PreprocessResult":
        """Read a file written by ``save``."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        arrays, attrs = _read_h5(path) if _kind(path) == "h5" else _read_zarr(path)
        if attrs.get("format") != FORMAT:
            raise ValueError(f"{path}: not a preprocessing result (format {attrs.get('format')!r})")
        if int(attrs.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{path}: written by a newer version (format {attrs['format_version']})")
        d = json.loads(attrs["descan"])
        descan = None
        if d is not None:
            models = {}
            for name in ("plane", "smooth"):
                m = d[name]
                models[name] = DescanModel(int(m["degree"]), np.asarray(m["coef"]), [tuple(t) for t in m["terms"]],
                                           arrays[f"descan/{name}_inliers"], m["rms_px"], tuple(m["rms_yx_px"]),
                                           int(m["n_rejected"]))
            epw = d.get("edge_pixel_width")
            grid = None if epw is None else PixelGrid(tuple(arrays["mask"].shape), float(epw))
            descan = DescanFit(models["plane"], models["smooth"], arrays["descan/residuals"], d["model"], grid)
        return cls(
            **{k: arrays[k] for k in _ARRAYS}, descan=descan, crops=arrays.get("crops"),
            virtual={k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("virtual/")},
            params=PreprocessParams.from_dict(json.loads(attrs["params"])),
            resolved={k: (float(v) if v in ("inf", "-inf", "nan") else v)
                      for k, v in json.loads(attrs["resolved"]).items()},
            geometry=Geometry.from_dict(json.loads(attrs["geometry"])),
            provenance=json.loads(attrs["provenance"]),
        )


# -- the workflow ---------------------------------------------------------------------------------
def preprocess(scan, params: PreprocessParams | dict | None = None, flatfield=None,
               progress: Callable | None = None, cancel: Callable | None = None, client=None) -> PreprocessResult:
    """Preprocess ``scan`` (a Scan, a path ``open_scan`` reads, or a 4D array: see
    ``scans.open_scans``).

    flatfield: FlatField, a path for ``load_flatfield``, a flood stack array (N, ky, kx), or None. progress(done, total)
    frames (a fitted-centring run counts every frame twice); cancel() -> True stops with
    ``Cancelled``. client: a dask.distributed Client to run on (default: the one
    ``pipeline.batch.use_client`` set, else threads in this process).
    """
    from ..processing.kernels import numba_version
    from .batch import current_client
    from ..processing.flatfield import binning_note
    from .scans import as_flatfield, open_scans

    t0 = time.time()
    client = client if client is not None else current_client()
    (scan,) = open_scans([scan])
    params = params if isinstance(params, PreprocessParams) else PreprocessParams.from_dict(params)
    geometry = scan.geometry
    det = scan.detector_shape
    ff = None
    if flatfield is not None and params.use_flatfield:
        ff = as_flatfield(flatfield)
        if ff.shape != det:
            where = f" {ff.source}" if ff.source else ""
            raise ValueError(f"flat-field{where}: {ff.shape[0]} x {ff.shape[1]} px, does not match the detector {det} "
                             f"of {scan.source or 'the scan'}{binning_note(ff.shape, det)}")
    n = scan.n_frames
    sy, sx = scan.scan_shape
    missing = np.asarray(scan.missing, bool)

    # the plan, from the calibration sample (the first recorded frames; when none shows a beam,
    # the next window of as many frames, ...): saturation level, bad pixels the flat-field did not
    # catch, beam radius, every radius in px
    name = scan.source or "the scan"
    try:  # values this detector cannot hold (a crop larger than it...): before any frame is read
        params.check_detector(geometry)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    frame_bytes = det[0] * det[1] * np.dtype(scan.dtype).itemsize
    windows = calibration_windows(int((~missing).sum()), params.bad_pixel_sample, frame_bytes)
    counted = False  # whether any frame looked at holds a count (all zeros: an empty file, not a missing beam)
    for k, (start, stop) in enumerate(windows):
        sample_idx = calibration_sample_index(missing, params.bad_pixel_sample, k, frame_bytes)
        sample = scan.read(sample_idx) if len(sample_idx) else np.zeros((0,) + det)
        try:
            plan = PreprocessPlan.build(params, geometry, scan.metadata, sample, ff, calibration_start=start)
            break
        except NoBeamInSample:
            counted = counted or bool(sample.any())  # looked at only when no beam was found
            if k + 1 == len(windows):
                raise ValueError(f"{name}: {no_beam_message(stop, len(windows), empty=not counted)}") from None
        except ValueError as exc:  # say which scan: a batch of files, a widget with several scans open
            raise ValueError(str(exc) if str(exc).startswith(str(name)) else f"{name}: {exc}") from None
        if cancel is not None and cancel():
            raise Cancelled("preprocessing stopped")
    if cancel is not None and cancel():
        raise Cancelled("preprocessing stopped")
    ff_used, ff = ff, plan.corrections(ff)
    procs = plan.processors()
    resolved = dict(plan.resolved)
    run_kw = dict(cancel=cancel, client=client, workers=params.workers, chunk_frames=params.chunk_frames)
    data = scan.frame_source
    passes = 2 if params.centring == "fitted" else 1
    report = (lambda k: (lambda d, t: progress(k * n + d, passes * n))) if progress else (lambda k: None)
    # fitted centring: the first pass only finds the centres
    out = FrameRunner(procs if passes == 1 else [], ff, plan.centre_finder()).run(data, progress=report(0), **run_kw)
    centres = out["centre"].reshape(sy, sx, 2)
    found = out["beam_found"].reshape(sy, sx) & ~missing
    centres[~found] = np.nan
    descan = None
    fitted = np.full((sy, sx, 2), np.nan)
    try:
        descan = fit_descan(centres, found, params.descan_degree, params.descan_clip_sigma, grid=plan.grid)
        fitted = descan.fitted()
    except ValueError:
        if params.centring == "fitted":
            raise ValueError(f"{scan.source or 'scan'}: fitted centring needs a descan fit, but fewer than 3 "
                             "frames have a beam") from None
    if passes == 2:
        out.update(FrameRunner(procs, ff).run(data, centres=fitted.reshape(-1, 2), progress=report(1), **run_kw))
    gone = missing.ravel()
    for k, spec in FrameRunner(procs).outputs().items():
        out[k][gone] = spec.fill
    radius = out["beam_radius_px"].reshape(sy, sx)
    radius[~found] = np.nan
    nb = procs[0].nbins
    crops = out.get("crop")
    elapsed = time.time() - t0
    provenance = {
        "input": {"source": scan.source, "scan_shape": [sy, sx], "detector_shape": list(det),
                  "dtype": str(scan.dtype), "missing_frames": int(missing.sum()),
                  "geometry": geometry.to_dict()},
        "flatfield": None if ff_used is None else {"source": ff_used.source, "dead": ff_used.n_dead,
                                                   "hot": ff_used.n_hot, "dark": ff_used.dark is not None},
        "bad_pixels": {"masked": int(ff.mask.sum()), "found_in_scan": len(plan.bad_pixels),
                       "sample_frames": plan.calibration_frames},
        "plan": plan.to_dict(),
        "parameters": plan.params,  # as used: with the radius --beam-radius stated (params holds it as asked)
        "beam_radius": beam_radius_record(plan.to_dict()),
        "resolved": resolved,
        "beam_found": int(found.sum()),
        "version": __version__,
        "libraries": {"numpy": np.__version__, "numba": numba_version()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t0)),
        "duration_s": round(elapsed, 3),
        "frames_per_s": round(n / elapsed, 1) if elapsed > 0 else None,  # the scan's, whatever the passes
    }
    tally.report(scan.source or scan, n)
    return PreprocessResult(
        centres=centres, centres_fitted=fitted, beam_found=found, beam_radius_px=radius, descan=descan,
        ria=out["ria"].reshape(sy, sx, nb), ria_counts=out["ria_counts"].reshape(sy, sx, nb),
        radii_px=procs[0].radii_px, crops=None if crops is None else crops.reshape((sy, sx) + crops.shape[1:]),
        virtual={k: out[k].reshape(sy, sx) for k in ("total", "bf", "adf")},
        mask=ff.mask.copy(), missing=missing.copy(), params=params, resolved=resolved, geometry=geometry,
        provenance=provenance,
    )


def beam_radius_record(plan: dict) -> dict:
    """The direct-beam radius a plan (``PreprocessPlan.to_dict``) used and where it came from:
    {"beam_radius_px": r, "origin": "stated"} (the parameters or --beam-radius gave it),
    "measured" (the calibration sample's beam), or None with no radius (no beam found, the BF/ADF
    radii given)."""
    radius = plan.get("beam_radius_px")
    stated = plan["params"].get("beam_radius_px") is not None
    return {"beam_radius_px": radius, "origin": None if radius is None else "stated" if stated else "measured"}


def preprocessing_record(result: PreprocessResult, geometry: Geometry | None = None) -> dict:
    """How ``result``'s frames were preprocessed, for the outputs made from it: the plan (saturation
    level, bad pixels found in the scan, the calibration window, the chip-edge pixel width, every
    radius), the direct-beam radius and where it came from, the q axis the features were read on
    (``geometry``: default the result's, with where each value came from), the flat-field and the
    software version. An empty plan ({}) for results written before plans were recorded."""
    prov = result.provenance or {}
    plan = prov.get("plan") or {}
    return jsonable({"plan": plan, "beam_radius": beam_radius_record(plan) if plan else None,
                     "geometry": (geometry or result.geometry).to_dict(), "flatfield": prov.get("flatfield"),
                     "bad_pixels": prov.get("bad_pixels"), "version": prov.get("version")})


# -- storage ----------------------------------------------------------------------------------------
def _kind(path: Path) -> str:
    s = path.suffix.lower()
    if s in (".h5", ".hdf5"):
        return "h5"
    if s == ".zarr":
        return "zarr"
    raise ValueError(f"{path}: results are written as .h5 (HDF5) or .zarr, not '{s or path.name}'")


def _write_h5(path: Path, arrays: dict, attrs: dict):
    import h5py

    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=np.asarray(v))
        f.attrs.update(attrs)


def _read_h5(path: Path):
    import h5py

    arrays = {}
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda k, v: arrays.__setitem__(k, v[()]) if isinstance(v, h5py.Dataset) else None)
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from exc
    return arrays, attrs


def _write_zarr(path: Path, arrays: dict, attrs: dict):
    import zarr

    g = zarr.open_group(str(path), mode="w")
    for k, v in arrays.items():
        g.create_array(k, data=np.asarray(v))  # "virtual/total": the group virtual is made with it
    g.attrs.update(attrs)


def _read_zarr(path: Path):
    import zarr

    try:
        g = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise ValueError(f"{path}: not a readable zarr group ({exc})") from exc
    arrays = {name: a[...] for name, a in g.members(max_depth=None) if isinstance(a, zarr.Array)}
    return arrays, dict(g.attrs)


def _replace(tmp: Path, path: Path):
    """Put tmp at path: a file over a file atomically; otherwise (a zarr folder) an existing target
    is swapped out, then removed."""
    if not (path.exists() and (tmp.is_dir() or path.is_dir())):
        os.replace(tmp, path)
        return
    from ..io.atomic import temporary_path

    old = temporary_path(path)
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old) if old.is_dir() else old.unlink()
