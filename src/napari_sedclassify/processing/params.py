"""Preprocessing parameters: one dataclass, every value with a default, JSON round trip.

Radii are in detector px. Where a calibrated Geometry is known, a few radii can instead be given
in Å (the lattice spacing d seen at that radius; larger d = smaller radius) or the RIA bins in
Å⁻¹; ``resolve`` turns everything into px.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

CENTRINGS = ("per_frame", "fitted")


class NoBeamInSample(ValueError):
    """No frame of the calibration sample shows a direct beam, and the BF/ADF radii need its radius."""


def default_ria_r_max_px(detector_shape) -> float:
    """How far the radial profile reaches when ``ria_r_max_px`` is not given (px): the detector's
    corner seen from its centre, half its diagonal."""
    ky, kx = detector_shape
    return 0.5 * math.hypot(ky, kx)


@dataclass
class PreprocessParams:
    """How a scan is preprocessed.

    centring: "per_frame" (each frame about its own measured centre) or "fitted" (about the
        descan fit; frames without a beam then get a centre too).
    beam_radius_px: direct-beam radius (px) for the centre search window and the automatic
        BF/ADF radii; None = measured on the scan.
    edge_pixel_width: width (pitches) of the wide pixels along the chip boundaries in the middle
        of a Medipix3 quad; distances are measured in pitches. None = what the scan's metadata
        says (simulated scans), else 1 (all pixels equal).
    saturation_counts: raw counts of a full counter (e.g. 4095 for 12 bits); saturated pixels are
        not gain-corrected. None = from the scan's metadata, else the sample's maximum when many
        pixels sit at it (a flat-topped beam), else no saturation.
    descan_degree: degree of the smooth 2D polynomial descan fit (a plane is always fitted too).
    descan_clip_sigma: outlier rejection of the descan fit (robust sigmas).
    ria_bin_px / ria_r_min_px / ria_r_max_px: radial bins (px); r_max None = the detector
        corner seen from the detector centre (half its diagonal).
    ria_q_bin_invA / ria_q_max_invA: the same in Å⁻¹ (need a calibrated geometry; override px).
    crop_radius_px: central crop half-size (px), None = no crops; crop_d_A: the same given as
        the spacing (Å) at the crop edge (the paper: 150 px = 2.7 Å). crop_bin: crop binning.
    bf_radius_px: bright-field disc radius (px); None = 1.25 beam radii + 1 px.
    adf_inner_px / adf_outer_px: annular dark field (px); inner None = 2 beam radii + 2 px,
        outer None = whole frame. bf_d_A / adf_inner_d_A / adf_outer_d_A: the same in Å.
    use_flatfield: apply the flat-field when one is given.
    detect_bad_pixels: add hot/dead pixels found in a sample of the scan's frames to the mask.
    bad_pixel_sample: how many frames that sample holds: the first recorded frames of the scan,
        what a live run has seen when it starts classifying (so both build the same plan).
    hot_ratio: a pixel is hot when its median over the sample exceeds this many times the
        median of its neighbours (and is significant); dead when it never counts where its
        neighbours do.
    chunk_frames: frames per task; workers: threads (None = all cores).
    """

    centring: str = "per_frame"
    beam_radius_px: float | None = None
    edge_pixel_width: float | None = None
    saturation_counts: float | None = None
    descan_degree: int = 3
    descan_clip_sigma: float = 3.5
    ria_bin_px: float = 1.0
    ria_r_min_px: float = 0.0
    ria_r_max_px: float | None = None
    ria_q_bin_invA: float | None = None
    ria_q_max_invA: float | None = None
    crop_radius_px: float | None = None
    crop_d_A: float | None = None
    crop_bin: int = 1
    bf_radius_px: float | None = None
    bf_d_A: float | None = None
    adf_inner_px: float | None = None
    adf_inner_d_A: float | None = None
    adf_outer_px: float | None = None
    adf_outer_d_A: float | None = None
    use_flatfield: bool = True
    detect_bad_pixels: bool = True
    bad_pixel_sample: int = 48
    hot_ratio: float = 5.0
    chunk_frames: int | None = None
    workers: int | None = None

    def __post_init__(self):
        """Refuse, at once (before any frame is read), values no scan can use; what needs the
        detector's size is :meth:`check_detector`'s."""
        if self.centring not in CENTRINGS:
            raise ValueError(f"centring must be one of {CENTRINGS}, got {self.centring!r}")
        for name, allowed in _SCALAR_CHECKS:
            if getattr(self, name) is not None and not allowed(getattr(self, name)):
                raise ValueError(refused(name, getattr(self, name)))
        self.crop_bin = int(self.crop_bin)
        for px, a in (("crop_radius_px", "crop_d_A"), ("bf_radius_px", "bf_d_A"),
                      ("adf_inner_px", "adf_inner_d_A"), ("adf_outer_px", "adf_outer_d_A")):
            if getattr(self, px) is not None and getattr(self, a) is not None:
                raise ValueError(f"give {px} or {a}, not both")
        if None not in (self.adf_inner_px, self.adf_outer_px) and not self.adf_outer_px > self.adf_inner_px:
            raise ValueError(refused("adf_outer_px", self.adf_outer_px,
                                     f"more than adf_inner_px ({self.adf_inner_px:g} px)"))
        if self.ria_r_max_px is not None and not self.ria_r_max_px > self.ria_r_min_px:
            raise ValueError(refused("ria_r_max_px", self.ria_r_max_px,
                                     f"more than ria_r_min_px ({self.ria_r_min_px:g} px)"))

    def check_detector(self, geometry) -> None:
        """Refuse values the detector of ``geometry`` cannot hold, before any frame is read: a crop
        larger than the detector (a 2R x 2R crop of padding), a direct beam wider than it, a radial
        profile that starts beyond its corner. A ValueError, one line naming the parameter."""
        ky, kx = (int(s) for s in geometry.detector_shape)
        detector = f"{ky} x {kx} px detector"
        half = max(ky, kx) / 2
        crop = self._radius_px(geometry, "crop_radius_px", "crop_d_A")
        if crop is not None:
            named = self._named_px("crop_radius_px" if self.crop_d_A is None else "crop_d_A", crop)
            if crop > half:
                raise ValueError(f"{named} is larger than the detector holds: at most {half:g} px "
                                 f"(half the {detector})")
            if round(crop) < 1:
                raise ValueError(f"{named} must be at least 1 px")
            if (2 * int(round(crop))) % self.crop_bin:
                raise ValueError(f"crop size {2 * int(round(crop))} px does not divide by crop_bin {self.crop_bin}")
        if self.beam_radius_px is not None and self.beam_radius_px > half:
            raise ValueError(refused("beam_radius_px", self.beam_radius_px,
                                     f"at most {half:g} px (half the {detector})"))
        reach = default_ria_r_max_px((ky, kx))
        corner = f"less than {reach:.1f} px (the corner of the {detector} seen from its centre)"
        if self.ria_r_min_px >= reach:
            raise ValueError(refused("ria_r_min_px", self.ria_r_min_px, corner))
        adf_inner = self._radius_px(geometry, "adf_inner_px", "adf_inner_d_A")
        if adf_inner is not None and adf_inner >= reach:
            named = self._named_px("adf_inner_px" if self.adf_inner_d_A is None else "adf_inner_d_A", adf_inner)
            raise ValueError(f"{named} must be {corner}")
        r_min, _, r_max = self._ria_px(geometry)
        if not r_max > r_min:  # only a q end can fall below the start (__post_init__ checks a px end)
            start_q = float(geometry.radius_px_to_q_invA(r_min))
            raise ValueError(refused("ria_q_max_invA", self.ria_q_max_invA,
                                     f"more than {start_q:.4g} Å⁻¹ (the RIA start radius, {r_min:g} px)"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "PreprocessParams":
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown preprocessing parameters: {', '.join(unknown)}")
        return cls(**d)

    def resolve(self, geometry, beam_radius_px: float | None = None) -> dict:
        """All radii in px for this geometry: ria_r_min/ria_bin/ria_r_max/nbins, crop_half,
        bf, adf_inner, adf_outer (inf = whole frame). beam_radius_px: measured, when
        beam_radius_px is None in the parameters."""
        self.check_detector(geometry)
        r_min, bin_px, r_max = self._ria_px(geometry)
        nbins = int(math.ceil((r_max - r_min) / bin_px - 1e-9))
        rb = self.beam_radius_px if self.beam_radius_px is not None else beam_radius_px
        bf = self._radius_px(geometry, "bf_radius_px", "bf_d_A")
        adf_in = self._radius_px(geometry, "adf_inner_px", "adf_inner_d_A")
        adf_out = self._radius_px(geometry, "adf_outer_px", "adf_outer_d_A")
        if bf is None or adf_in is None:
            if rb is None or not math.isfinite(rb):
                raise NoBeamInSample("no direct beam found in the first frames (the calibration sample), so no beam "
                                 "radius to set the BF/ADF radii from: is this a diffraction scan with the "
                                 "beam on the detector? (In Python, give bf_radius_px and adf_inner_px, or "
                                 "beam_radius_px.)")
            bf = 1.25 * rb + 1.0 if bf is None else bf
            adf_in = 2.0 * rb + 2.0 if adf_in is None else adf_in
        adf_out = math.inf if adf_out is None else adf_out
        if not adf_out > adf_in:
            raise ValueError(f"ADF outer radius {adf_out} px must exceed its inner radius {adf_in} px")
        crop = self._radius_px(geometry, "crop_radius_px", "crop_d_A")
        crop_half = None if crop is None else int(round(crop))
        return {"ria_r_min_px": r_min, "ria_bin_px": float(bin_px), "ria_r_max_px": float(r_min + nbins * bin_px),
                "ria_nbins": nbins, "crop_half_px": crop_half, "crop_bin": self.crop_bin, "bf_radius_px": float(bf),
                "adf_inner_px": float(adf_in), "adf_outer_px": float(adf_out),
                "beam_radius_px": None if rb is None else float(rb)}

    def _named_px(self, name: str, radius_px: float) -> str:
        """Parameter ``name`` with its value (:func:`refused`), and ``radius_px``, what it is in px,
        when it is given in Å."""
        named = refused(name, getattr(self, name), None)
        return named if name.endswith("_px") else f"{named}, {radius_px:.1f} px on this detector,"

    def _ria_px(self, geometry) -> tuple[float, float, float]:
        """(start, bin width, end) of the radial profile in px on ``geometry``: the Å⁻¹ values
        when given (they override px), the end at the detector's corner when not given."""
        bin_px, r_max = self.ria_bin_px, self.ria_r_max_px
        if self.ria_q_bin_invA is not None or self.ria_q_max_invA is not None:
            if not geometry.calibrated:
                raise ValueError("RIA bins given in Å⁻¹ but the scan's geometry is not calibrated")
            if self.ria_q_bin_invA is not None:
                bin_px = float(geometry.q_invA_to_radius_px(self.ria_q_bin_invA))
            if self.ria_q_max_invA is not None:
                r_max = float(geometry.q_invA_to_radius_px(self.ria_q_max_invA))
        if r_max is None:
            r_max = default_ria_r_max_px(geometry.detector_shape)
        return float(self.ria_r_min_px), float(bin_px), float(r_max)

    def _radius_px(self, geometry, name_px: str, name_d_A: str) -> float | None:
        """A radius given in px (``name_px``) or as a spacing in Å (``name_d_A``), in px on
        ``geometry`` (None when neither is given)."""
        d_A = getattr(self, name_d_A)
        if d_A is None:
            return getattr(self, name_px)
        if not geometry.calibrated:
            raise ValueError(f"{name_d_A} ({_WORDS[name_d_A][0]} in Å) given but the scan's geometry is not "
                             "calibrated (camera length or voltage unknown)")
        return float(geometry.d_A_to_radius_px(d_A))


#: Each parameter's name in words, its unit and the command line's flag (None: none).
_WORDS = {
    "beam_radius_px": ("direct-beam radius", "px", "--beam-radius"),
    "edge_pixel_width": ("chip-edge pixel width", "pitches", "--edge-pixel-width"),
    "saturation_counts": ("saturation level", "counts", None),
    "descan_degree": ("descan fit degree", "", None),
    "descan_clip_sigma": ("descan outlier clip", "sigmas", None),
    "ria_bin_px": ("RIA bin width", "px", "--bin-width"),
    "ria_r_min_px": ("RIA start radius", "px", None),
    "ria_r_max_px": ("RIA end radius", "px", None),
    "ria_q_bin_invA": ("RIA bin width", "Å⁻¹", None),
    "ria_q_max_invA": ("RIA end", "Å⁻¹", None),
    "crop_radius_px": ("crop radius", "px", "--crop-radius"),
    "crop_d_A": ("crop radius", "Å", None),
    "crop_bin": ("crop binning", "", "--crop-bin"),
    "bf_radius_px": ("bright-field radius", "px", None),
    "bf_d_A": ("bright-field radius", "Å", None),
    "adf_inner_px": ("ADF inner radius", "px", None),
    "adf_inner_d_A": ("ADF inner radius", "Å", None),
    "adf_outer_px": ("ADF outer radius", "px", None),
    "adf_outer_d_A": ("ADF outer radius", "Å", None),
    "bad_pixel_sample": ("calibration sample", "frames", None),
    "hot_ratio": ("hot-pixel ratio", "", None),
    "chunk_frames": ("frames per task", "frames", None),
    "workers": ("worker threads", "", None),
}


def _whole(least: int):
    return lambda v: v >= least and float(v).is_integer()


def _above(least: float):
    return lambda v: v > least


def _at_least(least: float):
    return lambda v: v >= least


#: (parameter, test of a given value); what the value must be is in _ALLOWED.
_SCALAR_CHECKS = (
    ("beam_radius_px", _above(0)), ("edge_pixel_width", _at_least(1)), ("saturation_counts", _above(0)),
    ("descan_degree", _whole(1)), ("descan_clip_sigma", _above(0)), ("ria_bin_px", _above(0)),
    ("ria_r_min_px", _at_least(0)), ("ria_q_bin_invA", _above(0)), ("ria_q_max_invA", _above(0)),
    ("crop_radius_px", _at_least(1)), ("crop_d_A", _above(0)), ("crop_bin", _whole(1)),
    ("bf_radius_px", _at_least(0)), ("bf_d_A", _above(0)), ("adf_inner_px", _at_least(0)),
    ("adf_inner_d_A", _above(0)), ("adf_outer_px", _at_least(0)), ("adf_outer_d_A", _above(0)),
    ("bad_pixel_sample", _whole(1)), ("hot_ratio", _above(1)), ("chunk_frames", _whole(1)), ("workers", _whole(0)),
)
_ALLOWED = {
    "beam_radius_px": "more than 0 px (None: measured)", "edge_pixel_width": "at least 1 pitch (1: all pixels equal)",
    "saturation_counts": "more than 0 counts", "descan_degree": "a whole number, at least 1 (1: a plane)",
    "descan_clip_sigma": "more than 0 sigmas", "ria_bin_px": "more than 0 px", "ria_r_min_px": "at least 0 px",
    "ria_q_bin_invA": "more than 0 Å⁻¹", "ria_q_max_invA": "more than 0 Å⁻¹", "crop_radius_px": "at least 1 px",
    "crop_bin": "a whole number, at least 1", "bf_radius_px": "at least 0 px", "adf_inner_px": "at least 0 px",
    "adf_outer_px": "at least 0 px", "bad_pixel_sample": "a whole number of frames, at least 1",
    "hot_ratio": "more than 1 (times the neighbours' median)",
    "chunk_frames": "a whole number of frames, at least 1 (None: the run's own)",
    "workers": "a whole number, at least 0 (0 or None: all cores)",
    **{name: "more than 0 Å" for name in ("crop_d_A", "bf_d_A", "adf_inner_d_A", "adf_outer_d_A")},
}


def refused(name: str, value, allowed: str | None = "") -> str:
    """The one line refusing ``value`` of parameter ``name``: its name in words with its unit, the
    parameter's name (and the command line's flag), and ``allowed`` (what it must be; "" = the
    parameter's own range, None: leave it to the caller)."""
    words, unit, flag = _WORDS[name]
    shown = f"{value:g}" if isinstance(value, (int, float)) else repr(value)
    named = f"{words} {shown}{' ' + unit if unit else ''} ({name}={shown}{f', {flag} {shown}' if flag else ''})"
    if allowed is None:
        return named
    return f"{named} must be {allowed or _ALLOWED[name]}"
