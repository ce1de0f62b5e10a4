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
        if self.centring not in CENTRINGS:
            raise ValueError(f"centring must be one of {CENTRINGS}, got {self.centring!r}")
        if not self.ria_bin_px > 0:
            raise ValueError(f"ria_bin_px must be > 0, got {self.ria_bin_px}")
        if int(self.crop_bin) != self.crop_bin or self.crop_bin < 1:
            raise ValueError(f"crop_bin must be a positive integer, got {self.crop_bin}")
        self.crop_bin = int(self.crop_bin)
        for px, a in (("crop_radius_px", "crop_d_A"), ("bf_radius_px", "bf_d_A"),
                      ("adf_inner_px", "adf_inner_d_A"), ("adf_outer_px", "adf_outer_d_A")):
            if getattr(self, px) is not None and getattr(self, a) is not None:
                raise ValueError(f"give {px} or {a}, not both")
            if getattr(self, px) is not None and not getattr(self, px) >= 0:
                raise ValueError(f"{px} must be >= 0, got {getattr(self, px)}")

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

        def px(value_px, value_d_A, what):
            if value_d_A is None:
                return value_px
            if not geometry.calibrated:
                raise ValueError(f"{what} given in Å but the scan's geometry is not calibrated "
                                 "(camera length or voltage unknown)")
            return float(geometry.d_A_to_radius_px(value_d_A))

        ky, kx = geometry.detector_shape
        bin_px = self.ria_bin_px
        r_max = self.ria_r_max_px
        if self.ria_q_bin_invA is not None or self.ria_q_max_invA is not None:
            if not geometry.calibrated:
                raise ValueError("RIA bins given in Å⁻¹ but the scan's geometry is not calibrated")
            if self.ria_q_bin_invA is not None:
                bin_px = float(geometry.q_invA_to_radius_px(self.ria_q_bin_invA))
            if self.ria_q_max_invA is not None:
                r_max = float(geometry.q_invA_to_radius_px(self.ria_q_max_invA))
        if r_max is None:
            r_max = default_ria_r_max_px((ky, kx))
        r_min = float(self.ria_r_min_px)
        if not r_max > r_min:
            raise ValueError(f"RIA radius range is empty: r_min {r_min} px >= r_max {r_max} px")
        nbins = int(math.ceil((r_max - r_min) / bin_px - 1e-9))
        rb = self.beam_radius_px if self.beam_radius_px is not None else beam_radius_px
        bf = px(self.bf_radius_px, self.bf_d_A, "bf radius")
        adf_in = px(self.adf_inner_px, self.adf_inner_d_A, "ADF inner radius")
        adf_out = px(self.adf_outer_px, self.adf_outer_d_A, "ADF outer radius")
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
        crop = px(self.crop_radius_px, self.crop_d_A, "crop radius")
        crop_half = None
        if crop is not None:
            crop_half = int(round(crop))
            if crop_half < 1:
                raise ValueError(f"crop radius must be at least 1 px, got {crop}")
            if (2 * crop_half) % self.crop_bin:
                raise ValueError(f"crop size {2 * crop_half} px does not divide by crop_bin {self.crop_bin}")
        return {"ria_r_min_px": r_min, "ria_bin_px": float(bin_px), "ria_r_max_px": float(r_min + nbins * bin_px),
                "ria_nbins": nbins, "crop_half_px": crop_half, "crop_bin": self.crop_bin, "bf_radius_px": float(bf),
                "adf_inner_px": float(adf_in), "adf_outer_px": float(adf_out),
                "beam_radius_px": None if rb is None else float(rb)}
