"""The preprocessing plan: everything that decides how a frame is processed, fixed once.

``PreprocessPlan.build(params, detector_shape, metadata, sample, flatfield)`` resolves the
parameters against a calibration sample (the first recorded frames of a scan): the saturation
level, the hot/dead pixels the flat-field did not catch, the direct-beam radius, the pixel grid
(wide chip-edge pixels), the RIA bins, crop and virtual-detector radii. The plan is frozen and
serialisable (``to_dict``/``from_dict``: stored in every results file), and
``plan.corrections(flatfield)`` with ``plan.processors()`` give what runs on frames, so a batch
run, a live run and the frame view process every frame the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from .flatfield import FlatField, detect_bad_pixels
from .params import PreprocessParams
from .pixels import PixelGrid
from .stats import median


@dataclass(frozen=True)
class PreprocessPlan:
    """params: the parameters asked for (PreprocessParams as a dict). detector_shape: (ky, kx).
    edge_pixel_width: pitches of the wide chip-edge pixels. saturation_counts: raw counts of a
    full counter (None: none). bad_pixels: flat indices of the pixels the calibration sample showed
    hot or dead beyond the flat-field's own mask. beam_radius_px: direct-beam radius. resolved:
    every radius in px (``PreprocessParams.resolve``). calibration_frames: frames the sample held;
    calibration_start: how many recorded frames came before them (``calibration_windows``).
    pedestal_counts: the level an electron-free pixel reads in the sample's raw frames
    (``centre.pedestal_of``: 0 for counts, -100 for int32 counts with 100 subtracted, a float
    detector's offset). dark_level: what the correction subtracts before the gain: "flat-field" (the
    flat-field's own dark frame: given, it wins), "pedestal" (pedestal_counts, when the flat-field
    has no dark frame) or "none" (no dark frame and a pedestal of 0: counts, corrected to the bit as
    before). centre_floor_counts: what the centre search takes as no electron in the corrected
    frames (the pedestal left after the dark level: 0 for counts). beam_centre_px, beam_peak_counts:
    where the sample's beam sat (median (cy, cx) index px) and its height above that floor in the
    corrected frames (median of the centre finder's ``beam_peak_counts``), where each frame's
    centre search starts (``CentreFinder``); None without a beam radius."""

    params: dict
    detector_shape: tuple
    edge_pixel_width: float
    saturation_counts: float | None
    bad_pixels: tuple
    beam_radius_px: float | None
    resolved: dict
    calibration_frames: int = 0
    calibration_start: int = 0
    pedestal_counts: float = 0.0
    dark_level: str = "none"
    centre_floor_counts: float = 0.0
    beam_centre_px: tuple | None = None
    beam_peak_counts: float | None = None

    @property
    def grid(self) -> PixelGrid:
        return PixelGrid(tuple(self.detector_shape), float(self.edge_pixel_width))

    @classmethod
    def build(cls, params, geometry, metadata: dict | None, sample,
              flatfield: FlatField | None = None, calibration_start: int = 0) -> "PreprocessPlan":
        """Resolve ``params`` (PreprocessParams or dict) for a detector of ``geometry`` from the
        calibration ``sample`` (m, ky, kx) raw frames; ``metadata``: the scan's (counter depth,
        saturation, edge pixel width). Raises ``NoBeamInSample`` (a ValueError) when the radii need
        the beam's and no sampled frame shows it: try the next window (``calibration_windows``)."""
        from .centre import pedestal_of

        params = params if isinstance(params, PreprocessParams) else PreprocessParams.from_dict(params)
        det = tuple(int(s) for s in geometry.detector_shape)
        sample = np.asarray(sample)
        if sample.ndim != 3 or sample.shape[1:] != det:
            sample = np.zeros((0,) + det)
        metadata = metadata or {}
        ff = flatfield if flatfield is not None else FlatField.identity(det)
        pedestal = pedestal_of(sample)
        saturation = saturation_of(metadata, sample, params.saturation_counts, pedestal)
        ff = ff.with_saturation(saturation)
        dark_level = dark_level_of(ff, pedestal)
        ff = with_dark_level(ff, pedestal)
        floor = pedestal_of(sample, ff.dark) if ff.dark is not None else pedestal
        bad = np.zeros(det, bool)
        first = None  # the sample's centring with the flat-field alone (uniform grid), when it ran
        if params.detect_bad_pixels and len(sample) >= 3:
            first = _centred(sample, ff, None, saturation, floor)
            path = beam_path(first, sample.shape[1:])
            bad = detect_bad_pixels(sample, hot_ratio=params.hot_ratio, flatfield=ff, beam_path=path) & ~ff.mask
            ff = ff.with_mask(bad)
        epw, epw_origin, epw_seen = edge_pixel_width_of(params, metadata, sample, flatfield, ff.mask)
        grid = PixelGrid(det, epw)
        params = stated_params(params, metadata)
        beam_radius = params.beam_radius_px
        if beam_radius is None and len(sample):
            # the same centring again unless new bad pixels or wide chip-edge pixels change it
            part = first if first is not None and not bad.any() and grid.edge_pixel_width == 1.0 else \
                _centred(sample, ff, grid, saturation, floor)
            found = part["beam_found"]
            radii = part["beam_radius_px"][found]
            contrast = disc_contrast(sample, np.flatnonzero(found), part["centre"][found], radii, pedestal)
            compact = radii.size and float(median(contrast)) >= BEAM_CONTRAST_MIN
            beam_radius = float(median(radii)) if compact else None
        centred = part if params.beam_radius_px is None and len(sample) else first
        expected = (None, None) if beam_radius is None or centred is None else expected_beam(centred)
        resolved = params.resolve(geometry, beam_radius)
        resolved["edge_pixel_width"] = grid.edge_pixel_width
        resolved["edge_pixel_width_origin"] = epw_origin
        if epw_seen is not None:
            resolved["edge_pixel_width_measured"] = epw_seen
        resolved["saturation_counts"] = saturation
        resolved["pedestal_counts"] = pedestal
        resolved["dark_level"] = dark_level
        return cls(params=params.to_dict(), detector_shape=det, edge_pixel_width=grid.edge_pixel_width,
                   saturation_counts=saturation, bad_pixels=tuple(int(i) for i in np.flatnonzero(bad)),
                   beam_radius_px=beam_radius, resolved=resolved, calibration_frames=int(len(sample)),
                   calibration_start=int(calibration_start), pedestal_counts=pedestal, dark_level=dark_level,
                   centre_floor_counts=floor, beam_centre_px=expected[0], beam_peak_counts=expected[1])

    # ---- what runs on frames ---------------------------------------------------------------------

    def corrections(self, flatfield: FlatField | None = None) -> FlatField:
        """The flat-field (identity when None) with this plan's saturation level and bad pixels, and
        the pedestal as its dark level when it has no dark frame (``with_dark_level``)."""
        det = tuple(self.detector_shape)
        ff = flatfield if flatfield is not None else FlatField.identity(det)
        if ff.shape != det:
            raise ValueError(f"flat-field {ff.source or ''} {ff.shape} does not match the plan's detector {det}")
        bad = np.zeros(det[0] * det[1], bool)
        bad[list(self.bad_pixels)] = True
        ff = with_dark_level(ff, self.pedestal_counts)
        return ff.with_saturation(self.saturation_counts).with_mask(bad.reshape(det) & ~ff.mask)

    def centre_finder(self):
        from .centre import CentreFinder

        return CentreFinder(self.beam_radius_px, grid=self.grid, saturation_counts=self.saturation_counts,
                            pedestal_counts=self.centre_floor_counts, expected_centre_px=self.beam_centre_px,
                            expected_peak_counts=self.beam_peak_counts)

    def processors(self, virtual: bool = True) -> list:
        """The frame processors after centring: radial profile, virtual detectors (BF/ADF), crop."""
        from .crop import CentralCrop
        from .ria import RadialProfile
        from .virtual import VirtualDetectors

        r, grid = self.resolved, self.grid
        procs = [RadialProfile(r["ria_nbins"], r["ria_bin_px"], r["ria_r_min_px"], grid)]
        if virtual:
            procs.append(VirtualDetectors({"bf": (0.0, r["bf_radius_px"]),
                                           "adf": (r["adf_inner_px"], r["adf_outer_px"])}, grid))
        if r["crop_half_px"] is not None:
            procs.append(CentralCrop(r["crop_half_px"], r["crop_bin"]))
        return procs

    # ---- files -----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        from ..jsonutil import jsonable

        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessPlan":
        def num(v):
            return float(v) if isinstance(v, str) and v in ("inf", "-inf", "nan") else v

        return cls(params=dict(d["params"]), detector_shape=tuple(d["detector_shape"]),
                   edge_pixel_width=float(d["edge_pixel_width"]), saturation_counts=d.get("saturation_counts"),
                   bad_pixels=tuple(int(i) for i in d.get("bad_pixels", ())), beam_radius_px=d.get("beam_radius_px"),
                   resolved={k: num(v) for k, v in d["resolved"].items()},
                   calibration_frames=int(d.get("calibration_frames", 0)),
                   calibration_start=int(d.get("calibration_start", 0)),
                   pedestal_counts=float(d.get("pedestal_counts", 0.0)), dark_level=str(d.get("dark_level", "none")),
                   centre_floor_counts=float(d.get("centre_floor_counts", d.get("pedestal_counts", 0.0))),
                   beam_centre_px=None if d.get("beam_centre_px") is None else tuple(float(v) for v in d["beam_centre_px"]),
                   beam_peak_counts=None if d.get("beam_peak_counts") is None else float(d["beam_peak_counts"]))


#: The direct beam's path over the calibration sample: discs of this many beam radii (+ BEAM_PATH_PX)
#: about each sampled frame's centre, where no pixel is called hot (flatfield.detect_bad_pixels).
BEAM_PATH_RADII = 2.0
BEAM_PATH_PX = 3.0


def dark_level_of(flatfield: FlatField, pedestal: float) -> str:
    """What the correction subtracts before the gain (``PreprocessPlan.dark_level``)."""
    if flatfield.dark is not None:
        return "flat-field"
    return "pedestal" if pedestal != 0 else "none"


def with_dark_level(flatfield: FlatField, pedestal: float) -> FlatField:
    """``flatfield`` with the data's ``pedestal`` (raw counts an electron-free pixel reads) as its
    dark level when it has no dark frame of its own: a constant offset (an export with 100
    subtracted, a float detector's pedestal) then shifts no radial profile, virtual image or
    bad-pixel statistic. Unchanged with a dark frame (it wins) or a pedestal of 0."""
    if flatfield.dark is not None or pedestal == 0:
        return flatfield
    return replace(flatfield, dark=np.full(flatfield.shape, pedestal, np.float32))


def _centred(sample: np.ndarray, flatfield: FlatField, grid: PixelGrid | None, saturation: float | None,
             floor: float) -> dict:
    """The centre finder's outputs (centre, beam_found, beam_radius_px) on the raw ``sample`` with
    ``flatfield`` applied, no beam radius known yet (grid None: uniform pixels)."""
    from .centre import CentreFinder
    from .runner import FrameRunner

    finder = CentreFinder(None, grid=grid, saturation_counts=saturation, pedestal_counts=floor)
    return FrameRunner([], flatfield, finder).run_chunk(sample).values


def expected_beam(centred: dict) -> tuple:
    """((cy, cx), peak) where the centre search expects the beam (``PreprocessPlan.beam_centre_px``,
    ``beam_peak_counts``): the median centre (index px) and the median height (the finder's
    ``beam_peak_counts``) of the beams of the calibration sample (``centred``: the centre finder's
    outputs on its frames); (None, None) when no sampled frame shows a beam."""
    found = centred["beam_found"]
    if not found.any():
        return None, None
    centres = centred["centre"][found]
    return ((float(median(centres[:, 0])), float(median(centres[:, 1]))),
            float(median(centred["beam_peak_counts"][found].astype(np.float64))))


def beam_path(centred: dict, detector_shape) -> np.ndarray | None:
    """(ky, kx) bool: the pixels within BEAM_PATH_RADII beam radii + BEAM_PATH_PX of the direct beam in
    some frame of the calibration sample, from its centring (``_centred``: the flat-field applied,
    uniform pixels; the wide chip-edge pixels move a disc by at most 1.5 px, well inside the
    margin). None when no sampled frame shows a beam."""
    found = centred["beam_found"]
    if not found.any():
        return None
    centres = centred["centre"][found]
    reach = BEAM_PATH_RADII * float(median(centred["beam_radius_px"][found])) + BEAM_PATH_PX
    ky, kx = (int(s) for s in detector_shape)
    path = np.zeros((ky, kx), bool)
    for cy, cx in centres:  # each disc within its bounding box
        y0, y1 = max(0, int(cy - reach)), min(ky, int(cy + reach) + 2)
        x0, x1 = max(0, int(cx - reach)), min(kx, int(cx + reach) + 2)
        yy = np.arange(y0, y1)[:, None] - cy
        xx = np.arange(x0, x1)[None, :] - cx
        path[y0:y1, x0:x1] |= yy**2 + xx**2 <= reach**2
    return path


#: A direct beam is a compact disc: inside its radius the counts per pixel are at least this many
#: times those of the ring between one and two radii (the median over the calibration sample's
#: frames): 4-53 on simulated scans (thick ice with plural scattering, a 1 mrad convergent beam,
#: camera lengths of 200-3000 mm, a beam at the detector's edge or corner), 2.3 on the real 6-bit
#: Merlin frames, whose wide beam is saturated. With the beam off the detector the search settles on
#: an arc of the ice ring (0.8): such a sample gave a plan, and every class of the scan was wrong.
BEAM_CONTRAST_MIN = 1.5


def disc_contrast(sample: np.ndarray, frames: np.ndarray, centres: np.ndarray, radii: np.ndarray,
                  pedestal: float = 0.0) -> np.ndarray:
    """(m,) for the raw frames ``sample[frames]`` (m indices; less ``pedestal``, NaN pixels left
    out): each one's mean within ``radii`` (at least 1.5 px) of ``centres`` (m, 2) (index px) over
    its mean between one and two radii (inf where that ring is empty of counts). Reads only the
    boxes about the discs (a copy of the frames cost 28 ms at 512²)."""
    _, ky, kx = sample.shape
    m = len(frames)
    out = np.full(m, np.nan)
    # counts as integers hold no NaN: their plain mean is nanmean's to the bit, without its copy and
    # NaN tests (48 frames of 192² or 512²: 1.7-1.9 ms, 1.0-1.1 with it, docs/performance.md session 34)
    mean = np.mean if sample.dtype.kind in "uib" else np.nanmean
    for i, f in enumerate(frames):
        (cy, cx), r = centres[i], max(float(radii[i]), 1.5)
        y0, y1 = max(0, int(cy - 2 * r)), min(ky, int(cy + 2 * r) + 2)
        x0, x1 = max(0, int(cx - 2 * r)), min(kx, int(cx + 2 * r) + 2)
        d2 = (np.arange(y0, y1)[:, None] - cy) ** 2 + (np.arange(x0, x1)[None, :] - cx) ** 2
        box = sample[f, y0:y1, x0:x1].astype(np.float64) - pedestal
        inner = mean(box[d2 <= r * r])
        ring = mean(box[(d2 > r * r) & (d2 <= 4 * r * r)])
        out[i] = inner / ring if ring > 0 else np.inf
    return out


def edge_pixel_width_of(params: PreprocessParams, metadata: dict, sample: np.ndarray, flatfield: FlatField | None,
                        mask: np.ndarray) -> tuple[float, str, float | None]:
    """The wide chip-edge pixels' width (pitches), where it came from, and what the frames show:
    "given" (params), "file" (the scan's metadata), "measured" (:func:`pixels.measure_edge_pixel_width`:
    from the flat-field's flood when it shows the cross and the sample does not contradict it by
    over 20 %, as a flood measures it exactly; else from the raw sample), or 1 "assumed" (undecided:
    too few counts beside the middle rows, e.g. a test pattern or a handful of frames). The third
    value is the measured width when a given or file width contradicts it by over 20 % (else None):
    a wrong width moves every pixel beyond the cross, and the plan says so."""
    from .pixels import measure_edge_pixel_width

    width = measure_edge_pixel_width(sample, mask)[0] if len(sample) else None
    if flatfield is not None:
        flood = measure_edge_pixel_width(flatfield.gain, flatfield.mask, min_counts=0.0)[0]
        if flood is not None and (width is None or abs(flood / width - 1) <= 0.2):
            width = flood
    if params.edge_pixel_width is not None:
        stated = float(params.edge_pixel_width), "given"
    elif (metadata or {}).get("edge_pixel_width") is not None:  # "given" when the command line set it
        stated = float(metadata["edge_pixel_width"]), str(metadata.get("edge_pixel_width_origin", "file"))
    else:
        return (width, "measured", None) if width is not None else (1.0, "assumed", None)
    contradicted = width is not None and abs(width / stated[0] - 1) > 0.2
    return stated[0], stated[1], (width if contradicted else None)


def edge_width_warning(where, resolved: dict) -> str:
    """The warning for a plan whose chip-edge pixel width (given or from the file) the frames
    contradict (``resolved["edge_pixel_width_measured"]``, :func:`edge_pixel_width_of`)."""
    used, origin = resolved["edge_pixel_width"], resolved.get("edge_pixel_width_origin", "file")
    return (f"{where}: the chip-edge pixels were taken as {used:g} pitches wide ({origin}), but the frames show "
            f"{resolved['edge_pixel_width_measured']:g}: every pixel beyond the chip boundaries is then misplaced, "
            "and the radial profiles with it; check --edge-pixel-width (leave it out to use the measured width)")


def stated_params(params: PreprocessParams, metadata: dict | None) -> PreprocessParams:
    """``params`` with the direct-beam radius the scan's ``metadata`` states (``beam_radius_px``:
    the command line's --beam-radius), checked as a given one. It wins over the radius of
    ``params`` (a model's preprocessing may carry one): the user stated it for this scan, whose
    camera length and binning set it, and the model's features do not depend on it."""
    radius = (metadata or {}).get("beam_radius_px")
    return params if radius is None else replace(params, beam_radius_px=float(radius))


def saturation_of(metadata: dict, sample: np.ndarray, given: float | None, pedestal: float = 0.0) -> float | None:
    """Raw counts of a full counter: given, else the metadata's (counts, read as raw values
    ``pedestal`` higher: an export with 100 subtracted reads 3995 for a full 12-bit counter), else
    the sample's maximum when on average at least 4 pixels per frame sit at it (a flat-topped beam),
    else None."""
    if given is not None:
        return float(given)
    md = metadata or {}
    for meta in (md, md.get("session_params") or {}):
        for key in ("saturation_counts", "counter_max"):
            if meta.get(key) is not None:
                return float(meta[key]) + pedestal
    if md.get("counter_depth"):
        return float(2 ** int(md["counter_depth"]) - 1) + pedestal
    if sample.size and sample.dtype.kind in "ui":
        top = sample.max()
        if top >= 15:
            # counted a frame at a time into one buffer: a mask of the whole sample (12.6 MB for 48
            # frames of 512²) was fresh memory to fault in, 13-34 ms of a command's start
            frames = sample.reshape(len(sample), -1)
            at_top = np.empty(frames.shape[1], bool)
            if sum(np.count_nonzero(np.equal(f, top, out=at_top)) for f in frames) >= 4 * len(sample):
                return float(top)
    return None


#: When no frame of the calibration sample shows a direct beam (a scan that starts on a grid bar, or
#: before the beam was unblanked), the plan is built from the next window of as many recorded
#: frames, and so on, over at most this many recorded frames in all, and at most
#: CALIBRATION_SEARCH_BYTES of them (a live run holds them until then).
CALIBRATION_SEARCH_FRAMES = 480
CALIBRATION_SEARCH_BYTES = 256 * 2**20


def calibration_windows(n_recorded: int, m: int, frame_bytes: int = 0) -> list[tuple[int, int]]:
    """The calibration sample and the windows tried after it when it shows no beam: (start, stop)
    positions among the recorded frames, in acquisition order, m frames each, over at most
    CALIBRATION_SEARCH_FRAMES and CALIBRATION_SEARCH_BYTES of frames of ``frame_bytes`` (at least
    one window). A live run sees exactly these frames before it classifies anything, so batch and
    live build the same plan from the same frames."""
    m = max(1, int(m))
    most = CALIBRATION_SEARCH_FRAMES if frame_bytes <= 0 else \
        min(CALIBRATION_SEARCH_FRAMES, CALIBRATION_SEARCH_BYTES // int(frame_bytes))
    reach = min(int(n_recorded), max(m, most))
    return [(a, min(a + m, int(n_recorded))) for a in range(0, max(reach, 1), m)]


def calibration_sample_index(missing: np.ndarray, m: int, window: int = 0, frame_bytes: int = 0) -> np.ndarray:
    """Flat indices of calibration window ``window`` (0: the sample, the first m recorded frames)."""
    recorded = np.flatnonzero(~np.asarray(missing, bool).ravel())
    windows = calibration_windows(len(recorded), m, frame_bytes)
    if window >= len(windows):
        return recorded[:0]
    a, b = windows[window]
    return recorded[a:b]


def no_beam_message(n_frames: int, windows: int, empty: bool = False) -> str:
    """Why a plan cannot be built: no direct beam in any calibration window (``empty``: every
    frame of them holds only zeros)."""
    after = f"the {windows - 1} window{'s' if windows > 2 else ''} after it"
    where = "the first frames (the calibration sample)" if windows <= 1 else \
        f"the first {n_frames} recorded frames (the calibration sample and {after})"
    if empty:
        return (f"no direct beam found in {where}: every frame is empty (all pixels 0; {n_frames} frames looked at): "
                "was the beam on and the detector counting?")
    return (f"no direct beam found in {where}, so no beam radius to set the BF/ADF radii from: is this a "
            f"diffraction scan with the beam on the detector (a compact disc, at least {BEAM_CONTRAST_MIN:g} times as "
            "bright as the ring around it)? (In Python, give bf_radius_px and adf_inner_px, or beam_radius_px.) "
            "On the command line, give the beam's radius: --beam-radius PX.")


__all__ = ["PreprocessPlan", "calibration_sample_index", "calibration_windows", "no_beam_message", "saturation_of",
           "stated_params"]
