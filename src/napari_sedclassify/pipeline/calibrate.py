"""Fit the effective camera length from a ring of known spacing: the amorphous-ice ring at 3.70 Å
(q = 0.27 Å⁻¹), the rings of a gold standard, or any d-spacing the user knows.

The scan is preprocessed by :func:`napari_sedclassify.pipeline.preprocess.preprocess` (flat-field,
bad pixels, per-frame centres, RIAs in physical px on the detector's pixel grid, so the wide
chip-edge pixels of a Medipix quad do not pull the ring inwards). Then, on the RIAs alone
(:func:`calibrate_ria`, which the napari widgets can call on a result they already hold):

1. **Search window.** With the scan's geometry (nominal camera length L0, voltage, pixel size) the
   ring d sits at r0 = λ L0 / (p d) px; the ring is searched for within ±``search`` (15 %) of that,
   and the background fitted over a margin either side. A ring near the end of the radial profile
   is searched outwards only as far as that margin allows (the scan's own value always included).
2. **Frames that show the ring.** Each frame's RIA, normalised to its mean over the window, is
   fitted at every trial radius by a quadratic background plus a Gaussian ring of the expected
   width (linear least squares, all frames at once). A frame shows the ring when the ring's
   amplitude is significant (t >= 5); its prominence is that amplitude over the background under
   it. The frames above the split between the two groups of prominence (Otsu's threshold on its
   logarithm) and within a factor 2 of the most prominent (the 90th percentile) are used: in a
   holey-carbon scan the vitreous-ice frames, not carbon (whose weak, broad feature near 3.8 Å
   would pull the ring inwards) or frames of thin ice. Frames dominated by Bragg spots (narrow
   in r, unlike the ring) are left out first.
3. **Fit.** Their trimmed mean profile (10 % each side: Bragg spots of crystalline ice drop out)
   is fitted by least squares, weighted by its standard error per bin, with background x ring:
   a smooth falling background, exp(polynomial in log r) (a power law with curvature), plus one
   Gaussian per ring at r_k = s r0_k (one common scale s, free amplitudes and widths). The
   background under the ring is modelled, so the ring's centre is unbiased although the maximum
   of background + ring sits slightly inside it. The window is then re-centred on the ring found
   (±3.5 ring widths, at least ±15 %, at most ±40 %) and the fit repeated.
4. **Result.** L = s L0, with an uncertainty combining the fit's statistical error, a bootstrap
   over the frames used, and the spread over background orders and window widths.

The fitted value holds for the pixel size and voltage it was fitted with (it is the effective
camera length λL/p needs). :class:`CalibrationResult` says which were assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import CalibrationError
from ..geometry import FLAGS, Geometry
from ..processing.params import PreprocessParams
from ..processing.stats import median

__all__ = ["CalibrationError", "CalibrationResult", "FURTHER_OFF_ADVICE", "GOLD_ADVICE", "Q_AXIS_TOLERANCE",
           "RING_SETS", "calibrate", "calibrate_ria", "parse_ring", "preprocessed_q_axis_warning", "q_axis_warning"]

#: Advice of the calibration's errors that only the command line (and Python) can follow, in the
#: command line's words; the plugin puts them as what its widgets do (``_napari/wording.py``).
#: A ring not found within the search, the camera length perhaps further off:
FURTHER_OFF_ADVICE = "then give --camera-length near the right value or a wider --search"
#: Another scan to calibrate on, beside one that shows vitreous ice:
GOLD_ADVICE = "or on a gold standard with --ring gold"

#: Named ring sets: d-spacings (Å) and the relative Gaussian width (σ/r) expected for frame selection.
RING_SETS = {
    "ice": ((3.70,), 0.08),  # first ring of vitreous ice, q = 0.27 Å⁻¹
    "gold": ((2.355, 2.039, 1.442, 1.230), 0.02),  # Au (111), (200), (220), (311)
}
#: Relative width (σ/r) of the template for a user's d-spacing.
USER_RING_WIDTH = 0.04
#: The radial profile must reach this factor beyond the outermost radius searched (the background
#: beyond the ring); where it does not, the search outwards stops that far inside the profile's end.
OUTER_MARGIN = 1.15
#: A frame shows the ring when its amplitude is this many standard errors above zero.
T_MIN = 5.0
#: Frames whose radial profile departs from its running median by more than this fraction of the
#: ring's amplitude (or twice the median departure, if more) are dominated by Bragg spots: left out.
SPOT_LIMIT = 0.35
#: Frames within this factor of the 90th percentile of ring prominence are used.
PROMINENCE_FRACTION = 0.5
#: Relative uncertainty always added: the largest bias seen on simulated scans with a near-parallel
#: beam (0.06 %; 0.4 % with a 1-mrad convergent beam, which the beam-blur term covers).
SYSTEMATIC_FLOOR = 0.0005
#: Amorphous ice's first ring is about 8 % of its radius wide (σ = 0.022 Å⁻¹ at 0.27 Å⁻¹), more
#: with a convergent beam; a "ring" found where ice should be that is more than ICE_WIDTH_RANGE
#: times narrower or broader than that is something else (carbon's broad feature, a Bragg spot).
ICE_RELATIVE_WIDTH = 0.022 * 3.70
ICE_WIDTH_RANGE = (0.5, 1.5)
#: Vitreous ice scatters more at its 3.7-Å ring than at 2.1 Å (its second ring); amorphous carbon,
#: whose rings are at 2.13 and 1.21 Å with only a weak feature near 3.8 Å, the other way round.
ICE_OVER_2P1_MIN = 1.0
#: Vitreous ice's second ring (Å), also where amorphous carbon's strongest ring lies (2.13 Å).
ICE_2P1_A = 2.115
#: A scan whose amorphous-ice ring lies this far (relative) from where its camera length puts it
#: gets a warning with its prediction: a model reads the radial profile on the q axis, and on
#: simulated scans an SVM put every frame in one class with the camera length 8 % off (5 % held).
Q_AXIS_TOLERANCE = 0.04
#: How far (relative) that check looks for the ring, the widest first that the detector holds.
Q_AXIS_SEARCH = (0.35, 0.15)
#: Frames of a scan that first look takes (evenly spaced): the median of the most prominent rings.
Q_AXIS_FRAMES = 400
#: How far (Å⁻¹) a prediction's radial profile must reach for that check: the wider search's
#: window beyond the 3.7-Å ring (``_window``: ring x 1.35 x 1.25; with the narrower one only, a
#: camera length 18 % off went unsaid).
Q_AXIS_CHECK_Q_INVA = (1 / 3.70) * (1 + Q_AXIS_SEARCH[0]) * 1.25


@dataclass
class RingFit:
    """One fitted ring: its spacing, radius (physical px), Gaussian width (px), amplitude and the
    background under it (both in units of the frames' mean over the window)."""

    d_A: float
    radius_px: float
    radius_sd_px: float
    sigma_px: float
    amplitude: float
    background: float

    @property
    def prominence(self) -> float:
        return self.amplitude / self.background if self.background > 0 else math.inf

    def to_dict(self) -> dict:
        return {"d_A": self.d_A, "radius_px": self.radius_px, "radius_sd_px": self.radius_sd_px,
                "sigma_px": self.sigma_px, "relative_width": self.sigma_px / self.radius_px,
                "amplitude": self.amplitude, "background": self.background, "prominence": self.prominence}


@dataclass
class CalibrationResult:
    """The fitted effective camera length and how it was found.

    camera_length_mm / camera_length_sd_mm: the fit and its standard uncertainty (statistical,
    frame bootstrap and model choice combined; each also in ``uncertainty_mm``).
    nominal_camera_length_mm / nominal_origin: the starting value and where it came from ("file",
    "user", "fitted", "assumed"). rings: the fitted rings. frames_used: how many frames' RIAs
    were averaged, of frames_with_ring (significant ring) and frames_with_beam. selected: (sy, sx)
    bool map of the frames used. window_px: the radial range fitted (physical px). profile: radii
    (px), mean normalised RIA, its standard error and the fitted model over the window (for plots).
    geometry: the scan's geometry with the fitted camera length marked "fitted". warnings: what a
    user must know before trusting the value (a chip-edge pixel width, given or from the file,
    that the frames contradict: the ring's radius is then measured on a misplaced pixel grid).
    """

    camera_length_mm: float
    camera_length_sd_mm: float
    nominal_camera_length_mm: float
    nominal_origin: str
    ring: str
    d_A: tuple
    rings: list
    frames_used: int
    frames_with_ring: int
    frames_with_beam: int
    selected: np.ndarray
    window_px: tuple
    search: float
    geometry: Geometry
    edge_pixel_width: float = 1.0
    edge_pixel_width_origin: str = "assumed"
    uncertainty_mm: dict = field(default_factory=dict)
    profile: dict = field(default_factory=dict)
    source: str | None = None
    warnings: list = field(default_factory=list)

    @property
    def relative_change(self) -> float:
        """Fitted / nominal - 1."""
        return self.camera_length_mm / self.nominal_camera_length_mm - 1.0

    @property
    def ring_radius_px(self) -> float:
        return self.rings[0].radius_px

    def to_dict(self) -> dict:
        g = self.geometry
        return {
            "scan": self.source,
            "camera_length_mm": self.camera_length_mm,
            "camera_length_sd_mm": self.camera_length_sd_mm,
            "relative_change": self.relative_change,
            "nominal_camera_length_mm": self.nominal_camera_length_mm,
            "nominal_origin": self.nominal_origin,
            "ring": self.ring,
            "d_A": list(self.d_A),
            "ring_radius_px": self.ring_radius_px,
            "ring_radius_sd_px": self.rings[0].radius_sd_px,
            "rings": [r.to_dict() for r in self.rings],
            "frames_used": self.frames_used,
            "frames_with_ring": self.frames_with_ring,
            "frames_with_beam": self.frames_with_beam,
            "window_px": list(self.window_px),
            "search": self.search,
            "pixel_size_um": g.pixel_size_um,
            "pixel_size_origin": g.origin("pixel_size_um"),
            "voltage_kv": g.voltage_kv,
            "voltage_origin": g.origin("voltage_kv"),
            "edge_pixel_width": self.edge_pixel_width,
            "edge_pixel_width_origin": self.edge_pixel_width_origin,
            "uncertainty_mm": dict(self.uncertainty_mm),
            **({"warnings": list(self.warnings)} if self.warnings else {}),
        }

    def sidecar_details(self) -> dict:
        """What ``io.sidecar.write_calibration`` keeps beside the value."""
        d = self.to_dict()
        keep = ("camera_length_sd_mm", "nominal_camera_length_mm", "nominal_origin", "ring", "d_A",
                "ring_radius_px", "ring_radius_sd_px", "frames_used", "pixel_size_um", "pixel_size_origin",
                "voltage_kv", "voltage_origin", "edge_pixel_width", "edge_pixel_width_origin", "uncertainty_mm")
        return {"method": "sedclassify calibrate", **{k: d[k] for k in keep}}


def parse_ring(ring) -> tuple[str, tuple, float]:
    """(name, d-spacings in Å, relative template width) from "ice", "gold", a number or numbers
    ("3.7", "2.355,2.039", 3.7, [2.355, 2.039])."""
    if isinstance(ring, str) and ring.strip().lower() in RING_SETS:
        name = ring.strip().lower()
        d, width = RING_SETS[name]
        return name, tuple(d), width
    try:
        if isinstance(ring, str):
            d = tuple(float(v) for v in ring.split(",") if v.strip())
        elif np.ndim(ring) == 0:
            d = (float(ring),)
        else:
            d = tuple(float(v) for v in ring)
    except (TypeError, ValueError):
        raise ValueError(f"ring {ring!r}: give 'ice', 'gold' or d-spacings in Å (e.g. 3.7 or 2.355,2.039)") from None
    if not d or any(not (math.isfinite(v) and v > 0) for v in d):
        raise ValueError(f"ring {ring!r}: d-spacings must be positive numbers (Å)")
    return ",".join(f"{v:g}" for v in d) + " Å", tuple(sorted(d, reverse=True)), USER_RING_WIDTH


# ---- the workflow -----------------------------------------------------------------------------


def calibrate(scan, ring="ice", flatfield=None, params=None, *, search: float = 0.15, max_frames: int = 4096,
              progress=None, cancel=None, client=None) -> CalibrationResult:
    """Fit the effective camera length of ``scan`` (a Scan or a path) from a ring of known spacing.

    ring: "ice" (3.70 Å), "gold" (2.355, 2.039, 1.442, 1.230 Å) or d-spacings in Å. flatfield,
    params (PreprocessParams or dict), progress, cancel, client: as for ``preprocess``.
    search: how far (relative) the camera length may be from the scan's value. max_frames: scans
    with more frames are preprocessed on an evenly spaced subset of scan positions.
    Raises CalibrationError when no such ring is found.
    """
    from ..processing.plan import edge_width_warning
    from .preprocess import preprocess
    from .scans import open_scans

    (scan,) = open_scans([scan])
    parse_ring(ring)  # fail early on a bad ring
    _check_geometry(scan.geometry, search)
    sub = _subsample(scan, max_frames)
    params = _bins_for_ring(params, scan.geometry, ring)
    try:
        result = preprocess(sub, params, flatfield, progress=progress, cancel=cancel, client=client)
    except ValueError as exc:
        if "no beam radius" in str(exc):  # no sampled frame showed a direct beam
            raise CalibrationError(_no_beam(scan)) from None
        raise
    valid = result.beam_found & ~result.missing
    if not valid.any():
        raise CalibrationError(_no_beam(scan))
    # a chip-edge width (given or the file's) that the frames contradict: the ring is measured on misplaced pixels
    wrong_width = ([edge_width_warning(scan.source or "the scan", result.resolved)]
                   if result.resolved.get("edge_pixel_width_measured") is not None else [])
    try:
        cal = calibrate_ria(result.ria, result.radii_px, valid, scan.geometry, ring, counts=result.ria_counts,
                            search=search, inner_px=float(result.resolved["adf_inner_px"]),
                            beam_radius_px=beam_radius_of(result.beam_radius_px, valid), source=scan.source)
    except CalibrationError as exc:  # the misplaced pixels may be why no ring was found
        if not wrong_width:
            raise
        raise CalibrationError(f"{exc}; and {wrong_width[0]}") from None
    cal.edge_pixel_width = float(result.resolved.get("edge_pixel_width", 1.0))
    cal.edge_pixel_width_origin = str(result.resolved.get("edge_pixel_width_origin", "file"))
    cal.warnings = wrong_width
    if sub is not scan:
        full = np.zeros(scan.scan_shape, bool)
        full[_steps(scan, max_frames)] = cal.selected
        cal.selected = full
    return cal


#: Radial bins across the innermost ring's nominal radius that calibrate asks for at least (finer
#: bins than 1 px when the ring lies near the beam): the fit's window spans 0.8 of that radius and
#: needs 12 bins. At 200 mm on a 256 px detector of 110 µm pixels the ice ring lies at 13 px: 10
#: bins of 1 px, refused ("check the pixel size"); 0.43-px bins fit 199.6 mm.
RING_BINS = 30


def _bins_for_ring(params, geometry: Geometry, ring):
    """``params`` (None, a dict or PreprocessParams) with RIA bins fine enough for the ring
    (RING_BINS across its radius) when they leave the bins unset (None or a dict without
    ria_bin_px or ria_q_bin_invA); otherwise as given."""
    if isinstance(params, PreprocessParams) or (params or {}).keys() & {"ria_bin_px", "ria_q_bin_invA"}:
        return params
    r0 = float(geometry.lambda_L_over_p) / max(parse_ring(ring)[1]) if geometry.calibrated else math.inf
    if r0 >= RING_BINS:
        return params
    return {**(params or {}), "ria_bin_px": max(r0, 1.0) / RING_BINS}


def _no_beam(scan) -> str:
    return (f"{scan.source or 'scan'}: no frame shows a direct beam to centre the rings on, so no ring can be "
            "measured (is this a diffraction scan, with the beam on the detector?)")


def _steps(scan, max_frames):
    sy, sx = scan.scan_shape
    k = 1
    while math.ceil(sy / k) * math.ceil(sx / k) > max_frames:
        k += 1
    return (slice(None, None, k), slice(None, None, k))


def _subsample(scan, max_frames):
    if max_frames is None or scan.n_frames <= max_frames:
        return scan
    from ..scan import Scan

    sl = _steps(scan, max_frames)
    return Scan(scan.data[sl], scan.geometry, scan.missing[sl], dict(scan.metadata), scan.source)


def _check_geometry(geometry: Geometry, search: float):
    if not 0 < search < 0.9:
        raise ValueError(f"search must be between 0 and 0.9 (relative), got {search}")
    if not geometry.calibrated:
        missing = [FLAGS[n][0] for n in ("camera_length_mm", "voltage_kv") if getattr(geometry, n) is None]
        raise CalibrationError(f"the scan's {' and '.join(m.lstrip('-').replace('-', ' ') for m in missing)} "
                               f"unknown: give {' and '.join(missing)} (a starting value within "
                               f"{search:.0%} of the truth)")


# ---- the q axis checked on a prediction's own RIAs ------------------------------------------------


def beam_radius_of(radii_px, valid) -> float | None:
    """The median direct-beam radius (px) of the ``valid`` frames with a finite one (None when
    none): what the rings are blurred by."""
    radius = np.asarray(radii_px, dtype=np.float64)[np.asarray(valid, bool)]
    radius = radius[np.isfinite(radius)]
    return float(median(radius)) if radius.size else None


def preprocessed_q_axis_warning(result, geometry: Geometry, source=None) -> str | None:
    """:func:`q_axis_warning` on a PreprocessResult: its RIAs, frames with a beam, beam radius."""
    valid = np.asarray(result.beam_found) & ~np.asarray(result.missing)
    return q_axis_warning(result.ria, result.radii_px, valid, geometry, counts=result.ria_counts,
                          inner_px=float(result.resolved.get("adf_inner_px", 0.0)),
                          beam_radius_px=beam_radius_of(result.beam_radius_px, valid), source=source)


def q_axis_warning(ria, radii_px, valid, geometry: Geometry, *, counts=None, inner_px: float = 0.0,
                   beam_radius_px: float | None = None, source=None) -> str | None:
    """A warning when the amorphous-ice ring of these RIAs lies Q_AXIS_TOLERANCE or more from
    where ``geometry`` puts it (the camera length, pixel size or voltage in use is off), with the
    camera length it shows; None when it lies where expected or no frame shows it (a scan without
    vitreous ice says nothing). A first look with numpy alone (the template scan of
    :func:`calibrate_ria`, milliseconds); only a scan that looks off is fitted in full."""
    if not geometry.calibrated:
        return None
    all_counts = counts
    radii = np.asarray(radii_px, dtype=np.float64)
    ok = np.asarray(valid, bool).reshape(-1)
    if not ok.any():
        return None
    # the first look takes at most Q_AXIS_FRAMES frames, evenly spaced over the valid ones
    pick = np.flatnonzero(ok)
    pick = pick[np.linspace(0, len(pick) - 1, min(len(pick), Q_AXIS_FRAMES)).astype(int)]
    ria2 = np.asarray(ria).reshape(-1, radii.size)[pick].astype(np.float64)
    ok = np.ones(len(pick), bool)
    if counts is not None:
        counts = np.asarray(counts).reshape(-1, radii.size)[pick]
    name, d_A, rel_width = parse_ring("ice")
    for search in Q_AXIS_SEARCH:  # as wide as the detector allows: a wrong voltage moves the ring by 27 %
        try:
            usable, _, r0, _, _, win, s_hi = _window(radii, ria2, ok, geometry, name, d_A, counts, search, inner_px,
                                                     "")
            _, _, Yn = _normalised(ria2, ok, win, (0, 0), "")
        except CalibrationError:
            continue
        if s_hi >= 1 + search or search == Q_AXIS_SEARCH[-1]:  # the narrower search whole, if the wider is cut
            break
    else:
        return None
    scales = np.linspace(1 - search, s_hi, int(round((s_hi - (1 - search)) * 50)) + 1)  # 1 % steps
    t, prom, best, _ = _template_scan(radii[win], Yn, r0, rel_width, scales)
    ringlike = (t >= T_MIN) & (prom > 0)
    if ringlike.sum() < 3:
        return None
    if abs(float(median(best[_most_prominent(prom, ringlike)])) - 1.0) < 0.75 * Q_AXIS_TOLERANCE:
        return None
    try:
        cal = calibrate_ria(ria, radii_px, valid, geometry, "ice", counts=all_counts, search=search, inner_px=inner_px,
                            beam_radius_px=beam_radius_px, source=source)
    except SecondRingError as exc:  # the q axis is off by more than any search: a binned detector at 55 µm, say
        return (f"{exc}. So its radial profiles were read on a wrong q axis (a model's features, the proposal's "
                "names) and the classes may be wrong")
    except CalibrationError:
        return None
    if abs(cal.relative_change) < Q_AXIS_TOLERANCE:
        return None
    L0, L = cal.nominal_camera_length_mm, cal.camera_length_mm
    return (f"{source or 'the scan'}: its amorphous-ice ring (3.7 Å, {cal.frames_used} frames) lies "
            f"{abs(cal.relative_change):.1%} {'further out' if cal.relative_change > 0 else 'further in'} than the "
            f"camera length {L0:g} mm ({cal.nominal_origin}) puts it with pixel {geometry.pixel_size_um:g} µm "
            f"({geometry.origin('pixel_size_um')}) and {geometry.voltage_kv:g} kV ({geometry.origin('voltage_kv')}): "
            f"the scan's effective camera length is {L:.1f} ± {cal.camera_length_sd_mm:.1f} mm, so its radial "
            f"profiles were read on a wrong q axis (a model's features, the proposal's names) and the classes may "
            f"be wrong. " + _how_to_fix(source, L))


def _how_to_fix(source, camera_length_mm: float) -> str:
    """What the q-axis warning advises: calibrate the file, or, for a detector stream (which
    ``sedclassify calibrate`` cannot read), give the camera length to the next run."""
    if source is not None and "://" in str(source):
        return (f"Give --camera-length {camera_length_mm:.0f} (or the true pixel size or voltage if one of those is "
                "wrong) to the next live run, or calibrate a recorded scan of this session with `sedclassify "
                "calibrate SCAN --write`")
    return (f"Fit it with `sedclassify calibrate {source or 'SCAN'} --write` (or give --camera-length "
            f"{camera_length_mm:.0f}, or the true pixel size or voltage if one of those is wrong) and run it again")


# ---- the fit on RIAs -----------------------------------------------------------------------------


def calibrate_ria(ria, radii_px, valid, geometry: Geometry, ring="ice", *, counts=None, search: float = 0.15,
                  inner_px: float = 0.0, beam_radius_px: float | None = None, max_frames: int = 2000,
                  source=None) -> CalibrationResult:
    """Fit the camera length from RIAs (..., nbins) on radii_px (physical px, bin centres).

    valid: (...) bool, the frames to consider (beam found, not missing). counts: pixels per bin
    (..., nbins) to leave out bins the detector barely covers. inner_px: no bin inside this
    radius (the direct beam). beam_radius_px: the direct beam's disc radius: the rings are blurred
    by the same angular spread (a disc of variance a²/4 per axis), which the ring model accounts
    for. See the module docstring for the method.
    """
    _check_geometry(geometry, search)
    name, d_A, rel_width = parse_ring(ring)
    radii = np.asarray(radii_px, dtype=np.float64)
    ria = np.asarray(ria, dtype=np.float64)
    shape = ria.shape[:-1]
    ria = ria.reshape(-1, radii.size)
    valid = np.asarray(valid, bool).reshape(-1)
    L0 = float(geometry.camera_length_mm)
    where = f"{source}: " if source else ""
    a = float(beam_radius_px) if beam_radius_px is not None and np.isfinite(beam_radius_px) else 0.0
    blur2 = a * a / 4.0

    usable, reach, r0, d_used, (lo, hi), win, s_hi = _window(radii, ria, valid, geometry, name, d_A, counts,
                                                              search, inner_px, where)
    s_range = (1 - search, s_hi)
    ria = _without_pedestal(ria, valid, usable)

    # 1) frames that show the ring
    rw = radii[win]
    idx, level, Yn = _normalised(ria, valid, win, (lo, hi), where)
    # Bragg spots (crystalline ice; a few large grains of a standard) are narrow in r: a running
    # median over about one ring width removes them for the scoring, and frames that they dominate
    # are left out (their spots would pass for a ring, and pull it)
    from scipy.ndimage import median_filter

    dr = float(np.median(np.diff(rw))) if len(rw) > 1 else 1.0
    k = max(3, 2 * int(round(0.5 * rel_width * r0.min() / dr)) + 1)
    Yf = median_filter(Yn, size=(1, k), mode="nearest")
    scales = np.linspace(1 - search, s_hi, int(round((s_hi - (1 - search)) * 200)) + 1)
    t, prom, best, amp = _template_scan(rw, Yf, r0, rel_width, scales)
    ringlike = (t >= T_MIN) & (prom > 0)
    spots = np.max(np.abs(Yn - Yf), axis=1) / np.maximum(amp, 1e-12)
    if ringlike.any():
        smooth = spots <= max(SPOT_LIMIT, 2.0 * float(np.median(spots[ringlike])))
        if (ringlike & smooth).sum() >= 3:
            ringlike &= smooth
    n_ring = int(ringlike.sum())
    if n_ring == 0:
        raise CalibrationError(
            f"{where}no frame shows {_ring_words(name, d_used)} between {r0.min() * (1 - search):.0f} and "
            f"{r0.max() * s_hi:.0f} px ({_searched(s_range, search, reach)} about where {geometry.describe()} puts "
            f"it): {_what_else(name)}; {_hint(geometry)}")
    sel = _most_prominent(prom, ringlike)
    order = np.argsort(-prom[sel])[:max_frames]
    chosen = np.flatnonzero(sel)[order]
    selected = np.zeros(ria.shape[0], bool)
    selected[idx[chosen]] = True

    # 2) fit the mean profile, re-centre the window on the ring found, fit again
    all_r, all_Y = radii, ria[idx[chosen]] / level[chosen][:, None]
    s_init = float(np.median(best[chosen]))
    fit = _fit_window(all_r, all_Y, usable, r0, rel_width, s_init, (lo, hi), s_range, degree=2, blur2=blur2)
    lo2, hi2 = _recentred(fit, r0, inner_px, reach)
    fits = {}
    for key, (deg, wfac) in {"main": (2, 1.0), "deg3": (3, 1.0), "deg1": (1, 1.0),
                             "narrow": (2, 0.75), "wide": (2, 1.3)}.items():
        lo_k, hi_k = _recentred(fit, r0, inner_px, reach, wfac)
        try:
            fits[key] = _fit_window(all_r, all_Y, usable, r0, rel_width, fit.scale, (lo_k, hi_k), s_range, deg,
                                    blur2=blur2)
        except CalibrationError:
            if key == "main":
                raise
    main = fits["main"]
    _check_fit(main, name, d_used, r0, s_range, search, reach, where, geometry)
    if name == "ice":
        _not_the_second_ring(all_r, all_Y, usable, main, inner_px, rel_width, geometry, where)
    ice_ratio = _ice_vs_2p1(all_r, all_Y, usable, main) if name == "ice" else None
    if ice_ratio is not None and ice_ratio < ICE_OVER_2P1_MIN:
        raise CalibrationError(
            f"{where}this is not the amorphous-ice ring: the frames that show a ring near 3.7 Å scatter "
            f"{1 / ice_ratio:.1f} times more at 2.1 Å, as amorphous carbon does (vitreous ice is brighter at 3.7 Å); "
            f"{_what_else(name)}")
    # frame bootstrap
    rng = np.random.default_rng(0)
    boot = []
    n_sel = len(chosen)
    if n_sel >= 4:
        for _ in range(16):
            pick = rng.integers(0, n_sel, n_sel)
            try:
                boot.append(_fit_window(all_r, all_Y[pick], usable, r0, rel_width, main.scale, (lo2, hi2), s_range,
                                        2, start=main.params, blur2=blur2).scale)
            except CalibrationError:
                pass
    sd_stat = main.scale_sd
    sd_boot = float(np.std(boot, ddof=1)) if len(boot) >= 4 else 0.0
    variants = [f.scale for k, f in fits.items() if k != "main" and abs(f.scale - main.scale) < 0.05]
    sd_model = float(np.sqrt(np.mean((np.array(variants) - main.scale) ** 2))) if variants else 0.0
    # the blur correction (maximum moved inwards by blur2 / 2R) is trusted to half its size
    sd_blur = 0.5 * blur2 / (2 * (main.scale * r0[0]) ** 2)
    sd = math.sqrt(max(sd_stat, sd_boot) ** 2 + sd_model**2 + sd_blur**2 + SYSTEMATIC_FLOOR**2)

    L = main.scale * L0
    rings = [RingFit(d, float(main.scale * r0[k]), float(sd * r0[k]), float(main.sigmas[k]),
                     float(main.amplitudes[k]), float(main.background_at(main.scale * r0[k])))
             for k, d in enumerate(d_used)]
    profile = {"radii_px": main.r, "mean": main.y, "sem": main.sem, "model": main.model(main.r),
               "background": main.background_at(main.r)}
    return CalibrationResult(
        camera_length_mm=float(L),
        camera_length_sd_mm=float(sd * L0),
        nominal_camera_length_mm=L0,
        nominal_origin=geometry.origin("camera_length_mm"),
        ring=name,
        d_A=d_used,
        rings=rings,
        frames_used=int(n_sel),
        frames_with_ring=n_ring,
        frames_with_beam=int(valid.sum()),
        selected=selected.reshape(shape),
        window_px=(float(main.r[0]), float(main.r[-1])),
        search=float(search),
        geometry=geometry.with_values("fitted", camera_length_mm=float(L)),
        uncertainty_mm={"statistical": float(sd_stat * L0), "frames_bootstrap": float(sd_boot * L0),
                        "model": float(sd_model * L0), "beam_blur": float(sd_blur * L0),
                        "floor": float(SYSTEMATIC_FLOOR * L0)},
        profile=profile,
        source=source,
    )


def _window(radii, ria, valid, geometry: Geometry, name, d_A, counts, search, inner_px, where):
    """The bins the detector covers well enough (a quarter of the circle or more in most valid
    frames) and the outermost of them, the rings' nominal radii r0 (px) and d-spacings on the
    detector, the radial window searched and the largest scale searched (1 + search, less when the
    profile ends too soon for that; then only the innermost ring):
    (usable, reach, r0, d_used, (lo, hi), win, s_hi)."""
    K0 = float(geometry.lambda_L_over_p)
    usable = np.isfinite(radii) & (radii > max(inner_px, 1.0))
    if counts is not None:
        c = np.asarray(counts).reshape(-1, radii.size)[valid]
        if len(c):
            usable &= median(c, axis=0) >= 0.25 * 2 * np.pi * radii
    reach = float(radii[usable].max()) if usable.any() else 0.0
    r0_all = np.array([K0 / d for d in d_A])
    on = r0_all * (1 + search) * OUTER_MARGIN <= reach
    s_hi = 1 + search
    if not on.any():  # the innermost ring, searched outwards as far as the profile allows
        on = r0_all == r0_all.min()
        s_hi = reach / (OUTER_MARGIN * r0_all.min())
        if s_hi <= 1:
            raise CalibrationError(
                f"{where}{_ring_words(name, d_A)} would lie at r ≈ {r0_all.min():.0f} px with {geometry.describe()}, "
                f"too near the end of the RIA ({reach:.0f} px) to be fitted: the fit needs the profile to reach "
                f"{OUTER_MARGIN:g} times the ring's radius ({OUTER_MARGIN * r0_all.min():.0f} px), for the background "
                f"beyond it; {_hint(geometry)}")
    d_used = tuple(d for d, o in zip(d_A, on) if o)
    r0 = r0_all[on]
    lo = max(r0.min() * (1 - search) * 0.75, inner_px, 1.0)
    hi = min(r0.max() * s_hi * 1.25, reach)
    win = usable & (radii >= lo) & (radii <= hi)
    if win.sum() < 12:
        raise CalibrationError(f"{where}only {int(win.sum())} RIA bins between {lo:.0f} and {hi:.0f} px, too few "
                               f"to fit {_ring_words(name, d_used)}; {_hint(geometry)}")
    return usable, reach, r0, d_used, (lo, hi), win, s_hi


def _searched(s_range, search, reach) -> str:
    """The search in words: "±15%", or "-15% to +7% (the RIA ends at 310 px)" when cut short."""
    s_lo, s_hi = s_range
    if s_hi >= 1 + search:
        return f"±{search:.0%}"
    return f"{s_lo - 1:+.0%} to {s_hi - 1:+.1%}, the RIA ending at {reach:.0f} px,"


def _without_pedestal(ria, valid, usable):
    """The RIAs raised by a constant when they go below zero: frames with a dark level or pedestal
    subtracted (int16 or float data, a detector's offset removed) average to negative values far
    from the beam, which the background model (a positive power law) cannot follow. A constant
    pedestal shifts every RIA by the same amount, so adding one back changes no ring."""
    with np.errstate(invalid="ignore"):
        low = np.nanmin(ria[np.ix_(valid, usable)]) if valid.any() and usable.any() else np.nan
    if not np.isfinite(low) or low >= 0:
        return ria
    spread = float(np.nanmedian(np.abs(ria[np.ix_(valid, usable)] - low)))
    return ria - low + max(0.05 * spread, 1e-6)


def _normalised(ria, valid, win, window, where):
    """The valid frames whose RIA is finite and positive over the window ``win``: their indices,
    mean level there and profiles over the window divided by it."""
    idx = np.flatnonzero(valid)
    Y = ria[np.ix_(idx, np.flatnonzero(win))]
    finite = np.isfinite(Y).all(axis=1)
    idx, Y = idx[finite], Y[finite]
    level = Y.mean(axis=1)
    ok = level > 0
    idx, Y, level = idx[ok], Y[ok], level[ok]
    if not len(idx):
        raise CalibrationError(f"{where}no frame has a usable radial profile between {window[0]:.0f} and "
                               f"{window[1]:.0f} px")
    return idx, level, Y / level[:, None]


def _most_prominent(prom, ringlike):
    """The frames with the most prominent ring: above the split between the two groups of
    prominence (e.g. carbon with a little ice vs vitreous ice) and within a factor 2 of the top."""
    n_ring = int(ringlike.sum())
    top = np.sort(prom[ringlike])  # its 90th percentile (np.percentile would import numpy.ma)
    p90 = float(np.interp(0.9 * (len(top) - 1), np.arange(len(top)), top))
    cut = max(PROMINENCE_FRACTION * p90, _otsu(np.log(prom[ringlike])) if n_ring >= 8 else 0.0)
    return ringlike & (prom >= cut)


def _otsu(values) -> float:
    """The split of ``values`` (here log prominences) that maximises the between-group variance
    (Otsu), returned as exp(split), the threshold on the prominence itself."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = len(v)
    k = np.arange(1, n)
    c = np.cumsum(v)
    m0 = c[:-1] / k
    m1 = (c[-1] - c[:-1]) / (n - k)
    between = k * (n - k) * (m0 - m1) ** 2
    i = int(np.argmax(between))
    return float(np.exp(0.5 * (v[i] + v[i + 1])))


def _template_scan(r, Yn, r0, rel_width, scales):
    """Per frame: the best t-value of a ring template over trial scales, the ring's prominence
    (amplitude over background) there, the scale and the amplitude. Linear least squares, all
    frames at once."""
    x = (r - r.mean()) / (0.5 * np.ptp(r))
    base = np.stack([np.ones_like(x), x, x * x], axis=1)
    n = len(Yn)
    best_t, best_p, best_s, best_a = np.full(n, -np.inf), np.zeros(n), np.full(n, np.nan), np.zeros(n)
    for s in scales:
        rk = s * r0
        sig = np.maximum(rel_width * rk, 1.0)
        tmpl = np.exp(-0.5 * ((r[:, None] - rk[None, :]) / sig[None, :]) ** 2).sum(axis=1)
        X = np.column_stack([base, tmpl])
        xtx_inv = np.linalg.pinv(X.T @ X)
        beta = xtx_inv @ (X.T @ Yn.T)  # (4, n)
        resid = Yn.T - X @ beta
        dof = max(len(r) - X.shape[1], 1)
        rms = np.sqrt((resid**2).sum(axis=0) / dof)
        se = rms * math.sqrt(max(xtx_inv[-1, -1], 1e-300))
        with np.errstate(divide="ignore", invalid="ignore"):
            tv = np.where(se > 0, beta[-1] / se, 0.0)
            xr = (rk[0] - r.mean()) / (0.5 * np.ptp(r))
            bgr = beta[0] + beta[1] * xr + beta[2] * xr * xr
            pv = np.where(bgr > 1e-3, beta[-1] / bgr, beta[-1] / 1e-3)
        better = tv > best_t
        best_t[better], best_p[better], best_s[better], best_a[better] = tv[better], pv[better], s, beta[-1][better]
    return best_t, best_p, best_s, best_a


@dataclass
class _Fit:
    r: np.ndarray
    y: np.ndarray
    sem: np.ndarray
    degree: int
    r0: np.ndarray
    r_ref: float
    params: np.ndarray
    scale: float
    scale_sd: float
    amplitudes: np.ndarray
    sigmas: np.ndarray
    t_values: np.ndarray
    chi2_red: float
    blur2: float = 0.0

    def background_at(self, r):
        return _background(self.params[: self.degree + 1], np.asarray(r, dtype=np.float64), self.r_ref)

    def model(self, r):
        return _model(self.params, np.asarray(r, dtype=np.float64), self.r0, self.degree, self.r_ref, self.blur2)


def _background(c, r, r_ref):
    u = np.log(r / r_ref)
    return np.exp(np.polynomial.polynomial.polyval(u, c))


def _model(p, r, r0, degree, r_ref, blur2=0.0):
    """Background x rings. A ring is a Gaussian of variance σ² in r; the part ``blur2`` of that
    variance that comes from the beam's angular spread (a 2D blur of the pattern) also carries the
    factor sqrt((R + (r - R) w) / r), w = 1 - blur2/σ², by which blurring a ring in 2D moves its
    maximum inwards (by blur2 / 2R), so that R stays the ring's true radius."""
    nb, nr = degree + 1, len(r0)
    s = p[nb]
    amp = p[nb + 1: nb + 1 + nr]
    sig = p[nb + 1 + nr:]
    out = _background(p[:nb], r, r_ref)
    for k in range(nr):
        R = s * r0[k]
        peak = amp[k] * np.exp(-0.5 * ((r - R) / sig[k]) ** 2)
        if blur2 > 0:
            w = min(max(1.0 - blur2 / sig[k] ** 2, 0.0), 1.0)
            peak = peak * np.sqrt(np.maximum(R + (r - R) * w, 1e-9) / r)
        out = out + peak
    return out


def _fit_window(radii, Y, usable, r0, rel_width, s_init, window, s_range, degree, start=None,
                blur2: float = 0.0) -> _Fit:
    """Least-squares fit of background x rings to the trimmed mean of the profiles ``Y`` (frames x
    bins on ``radii``) over ``window`` (px), the rings' scale within ``s_range`` (lowest, highest
    searched). blur2: variance (px²) of the beam's angular spread."""
    from scipy.optimize import least_squares

    lo, hi = window
    w = usable & (radii >= lo) & (radii <= hi) & np.isfinite(Y).all(axis=0)
    r = radii[w]
    Yw = Y[:, w]
    n = len(Yw)
    if len(r) < degree + 2 * len(r0) + 4:
        raise CalibrationError(f"too few RIA bins ({len(r)}) between {lo:.0f} and {hi:.0f} px to fit the ring")
    cut = int(0.1 * n) if n >= 10 else 0  # trimmed mean, 10 % each side
    y = np.sort(Yw, axis=0)[cut: n - cut].mean(axis=0) if cut else Yw.mean(axis=0)
    sem = Yw.std(axis=0, ddof=1) / math.sqrt(n) if n >= 3 else np.full_like(y, np.nan)
    floor = 1e-3 * np.nanmedian(np.abs(y)) + 1e-12
    if not np.isfinite(sem).all():
        # too few frames for a spread: the scatter of neighbouring bins about a smooth curve
        smooth = np.convolve(y, np.ones(5) / 5, mode="same")
        sem = np.full_like(y, np.std((y - smooth)[2:-2]) + floor)
    sem = np.maximum(sem, floor)
    r_ref = float(np.sqrt(r[0] * r[-1]))
    nr = len(r0)
    if start is None:
        sig0 = np.maximum(rel_width * s_init * r0, 1.0)
        away = (np.abs(r[:, None] - s_init * r0[None, :]) > 2.5 * sig0[None, :]).all(axis=1)
        if away.sum() < degree + 3:
            away = np.ones_like(r, bool)
        pos = away & (y > 0)
        u = np.log(r[pos] / r_ref)
        c = np.polynomial.polynomial.polyfit(u, np.log(y[pos]), degree)
        bg = _background(c, r, r_ref)
        amp0 = np.array([max(np.interp(s_init * r0[k], r, y - bg), 0.05 * np.interp(s_init * r0[k], r, bg))
                         for k in range(nr)])
        p0 = np.concatenate([c, [s_init], amp0, sig0])
    else:
        p0 = np.array(start, dtype=np.float64)
        if len(p0) != degree + 2 + 2 * nr:
            raise ValueError("start parameters do not match the model")
    n_bg = degree + 1
    lower = np.concatenate([np.full(n_bg, -np.inf), [s_range[0] - 0.02], np.zeros(nr),
                            np.maximum(0.3, 0.004 * r0)])
    upper = np.concatenate([np.full(n_bg, np.inf), [s_range[1] + 0.02], np.full(nr, np.inf), 0.35 * r0])
    span = np.where(np.isfinite(upper - lower), upper - lower, 1.0)
    p0 = np.clip(p0, lower + 1e-6 * span, upper - 1e-6 * span)

    def resid(p):
        return (_model(p, r, r0, degree, r_ref, blur2) - y) / sem

    try:
        sol = least_squares(resid, p0, bounds=(lower, upper), x_scale="jac", max_nfev=2000)
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise CalibrationError(f"the ring fit failed ({exc})") from None
    p = sol.x
    dof = max(len(r) - len(p), 1)
    chi2_red = float((sol.fun**2).sum() / dof)
    J = sol.jac
    try:
        cov = np.linalg.pinv(J.T @ J) * max(chi2_red, 1e-12)
        sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        sd = np.full(len(p), np.nan)
    amp = p[n_bg + 1: n_bg + 1 + nr]
    with np.errstate(divide="ignore", invalid="ignore"):
        tv = amp / sd[n_bg + 1: n_bg + 1 + nr]
    return _Fit(r=r, y=y, sem=sem, degree=degree, r0=np.asarray(r0, float), r_ref=r_ref, params=p,
                scale=float(p[n_bg]), scale_sd=float(sd[n_bg]), amplitudes=amp, sigmas=p[n_bg + 1 + nr:],
                t_values=np.nan_to_num(tv, nan=0.0), chi2_red=chi2_red, blur2=float(blur2))


def _recentred(fit: _Fit, r0, inner_px, reach, factor=1.0):
    """A window about the rings found: ±3.5 ring widths (at least ±15 %, at most ±40 %) of each,
    times ``factor``, but never less than ±3 ring widths (up to ±40 %)."""
    rk = fit.scale * np.asarray(r0)
    rel = fit.sigmas / rk
    half = np.maximum(np.clip(3.5 * rel, 0.15, 0.4) * factor, np.minimum(3.0 * rel, 0.4))
    lo = max(float(np.min(rk * (1 - half))), inner_px, 1.0)
    hi = min(float(np.max(rk * (1 + half))), reach)
    return lo, hi


def _ice_vs_2p1(radii, Y, usable, fit: _Fit):
    """Mean profile at the fitted 3.7-Å ring over its maximum near 2.1 Å (vitreous ice: several;
    amorphous carbon, whose strong ring is at 2.13 Å: well below 1); None when 2.1 Å is not on the
    detector."""
    R = fit.scale * fit.r0[0]
    r21 = R * 3.70 / ICE_2P1_A
    near = usable & (np.abs(radii - R) <= max(0.5 * fit.sigmas[0], 1.0))
    far = usable & (np.abs(radii - r21) <= 0.08 * r21)
    if near.sum() < 1 or far.sum() < 3:
        return None
    with np.errstate(invalid="ignore"):
        y = np.nanmedian(Y, axis=0)
    v37, v21 = np.nanmean(y[near]), np.nanmax(y[far])
    if not (np.isfinite(v37) and np.isfinite(v21)) or v21 <= 0:
        return None
    return float(v37 / v21)


class SecondRingError(CalibrationError):
    """The ring fitted as vitreous ice's 3.7-Å ring is its 2.1-Å ring: the q axis is off by 1.75x."""


def _not_the_second_ring(radii, Y, usable, fit: _Fit, inner_px, rel_width, geometry: Geometry, where):
    """Raise SecondRingError when the ring fitted as 3.7 Å is vitreous ice's 2.1-Å ring: the mean
    profile then shows a stronger ring (larger amplitude) 3.70/2.115 times further in (where a pixel size,
    voltage or camera length off by that much, a 2x2-binned detector taken for an unbinned one say,
    puts the true 3.7-Å ring)."""
    R = fit.scale * fit.r0[0]
    with np.errstate(invalid="ignore"):
        y = np.nanmedian(Y, axis=0)

    def ring_at(rc):
        w = usable & np.isfinite(y) & (radii >= max(0.7 * rc, inner_px, 1.0)) & (radii <= 1.3 * rc)
        if w.sum() < 12:
            return None
        t, _, best, amp = _template_scan(radii[w], y[w][None, :], np.array([rc]), rel_width,
                                         np.linspace(0.9, 1.1, 41))
        return float(t[0]), float(amp[0]), float(best[0] * rc)

    inner, here = ring_at(R * ICE_2P1_A / 3.70), ring_at(R)
    if inner is None or here is None or inner[0] < T_MIN or inner[1] <= here[1]:
        return
    L_inner = geometry.camera_length_mm * inner[2] / (fit.r0[0])
    raise SecondRingError(
        f"{where}the ring found at {R:.1f} px is not the amorphous-ice ring (3.7 Å) but its second ring (2.1 Å): "
        f"a stronger ring lies at {inner[2]:.1f} px, {R / inner[2]:.2f} times further in, as vitreous ice's "
        f"3.7- and 2.1-Å rings do. With {geometry.describe()} the 3.7-Å ring there means a camera length of "
        f"{L_inner:.0f} mm, outside the search: the pixel size (a binned detector's pixels are 2 or 4 times "
        f"larger), voltage or camera length is off; {_hint(geometry)}")


def _check_fit(fit: _Fit, name, d_used, r0, s_range, search, reach, where, geometry):
    s = fit.scale
    edge = min(s - s_range[0], s_range[1] - s)
    if edge < 0.004:
        raise CalibrationError(
            f"{where}did not find {_ring_words(name, d_used)} within {_searched(s_range, search, reach)} of where "
            f"{geometry.describe()} puts it (the best candidate lies at the edge of that search, {s - 1:+.1%}): the "
            f"scan does not show it, or the camera length is further off ({FURTHER_OFF_ADVICE}); {_what_else(name)}; "
            f"{_hint(geometry)}")
    if not np.isfinite(fit.scale_sd) or fit.t_values[0] < T_MIN:
        raise CalibrationError(f"{where}{_ring_words(name, d_used)} is not significant even in the frames that show "
                               f"it best (amplitude {fit.t_values[0]:.1f} standard errors); {_what_else(name)}")
    if name == "ice":
        R = s * r0[0]
        rel = float(fit.sigmas[0] / R)
        # vitreous ice: σ ≈ 8 % of the radius, widened by the beam's angular spread (the direct beam's disc)
        expected = math.hypot(ICE_RELATIVE_WIDTH, math.sqrt(fit.blur2) / R)
        lo, hi = ICE_WIDTH_RANGE[0] * expected, ICE_WIDTH_RANGE[1] * expected
        if not lo <= rel <= hi:
            raise CalibrationError(
                f"{where}the ring found near {_fmt_d(d_used)} is {rel:.1%} of its radius wide (σ), where vitreous ice "
                f"with this beam would give about {expected:.1%} ({lo:.1%}-{hi:.1%} accepted): this is not the "
                f"amorphous-ice ring (carbon's broad feature near 3.8 Å, or Bragg spots of crystalline ice); "
                f"{_what_else(name)}")


def _ring_words(name, d_A) -> str:
    if name == "ice":
        return "the amorphous-ice ring (3.7 Å)"
    if name == "gold":
        return f"the gold rings ({_fmt_d(d_A)})"
    return f"a ring at {_fmt_d(d_A)}"


def _fmt_d(d_A) -> str:
    return ", ".join(f"{d:g}" for d in d_A) + " Å"


def _what_else(name) -> str:
    if name == "ice":
        return f"calibrate on a scan that shows vitreous ice (holes of a holey-carbon grid), {GOLD_ADVICE}"
    return "check the ring's d-spacing, or calibrate on a scan that shows it"


def _hint(geometry: Geometry) -> str:
    assumed = geometry.assumed()
    if not assumed:
        return "check --pixel-size, --voltage and --camera-length"
    return ("assumed (nobody stated them): " + geometry.values_text(assumed)
            + "; set them with " + ", ".join(FLAGS[n][0] for n in assumed))
