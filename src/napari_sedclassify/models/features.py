"""Feature recipes: from preprocessed RIAs and crops to model inputs that survive session changes.

A session change (another day at the microscope) alters the dose, the detector gain and the
camera length by a few per cent. The recipe removes what it can (RIAs resampled on a q axis from
the geometry; every profile or crop divided by its own median and log-transformed) and trains
through the rest (:class:`Augmentation`). Only numpy and scipy here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..processing.stats import median

#: px kept between a crop and the detector edge when the wanted radius does not fit.
_CROP_MARGIN_PX = 2
#: Background models of :class:`FeatureRecipe` (``background``).
BACKGROUNDS = ("none", "poly")
#: Scan references of :class:`FeatureRecipe` (``context_reference``).
CONTEXT_REFERENCES = ("median", "ends")
#: Scan context of crop recipes (``crop_context``).
CROP_CONTEXTS = ("none", "ends")
#: q bands (Å⁻¹) that rank a scan's frames from carbon-like to ice-like for ``context_reference="ends"``:
#: carbon's strong 2.13 Å ring (0.47 Å⁻¹) against vitreous ice's 3.7 Å ring (0.27 Å⁻¹); when the
#: feature range stops short of 0.5 Å⁻¹, the ice ring against the shoulder below it.
_CARBON_BAND_INVA = (0.44, 0.50)
_ICE_BAND_INVA = (0.25, 0.29)
_SHOULDER_BAND_INVA = (0.17, 0.21)


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation of raw RIAs / crops (applied before normalisation).

    copies: augmented copies of every training frame added to the training set (0 = off).
    centre_jitter_px: largest simulated centre error (detector px).
    intensity_range: (low, high) dose/gain factor, drawn log-uniformly.
    radial_scale: largest relative radial scaling (0.04 = ±4 %, a camera length change).
    blur_q_invA: largest radius (Å⁻¹) of the uniform disc a convergent beam blurs the rings by
        (semi-angle α: α/λ; 0.5 mrad at 200 kV is 0.02 Å⁻¹); 0 = off.
    dose_range: (low, high) dose factor, drawn log-uniformly: f < 1 adds the counting noise of a
        dose f times lower (Poisson thinning); (1, 1) = off.
    plural_fraction: crops only: largest fraction of the scattered signal (outside the direct beam)
        moved into a broad, ring-less copy of itself, a Gaussian blur of ``plural_q_invA`` (Å⁻¹): the
        plural scattering of thicker ice, which weakens the rings; 0 = off.
    plural_q_invA: width (Gaussian sigma, Å⁻¹) of that broad copy.
    thickness_range: crops only: (low, high) factor on the scattered signal (outside the direct
        beam), drawn log-uniformly, before the scan-context channels: a frame's ice thicker or
        thinner than the scan's ends; (1, 1) = off.
    flat_background: RIAs: largest flat background added to each profile after its scan context,
        as a fraction (drawn uniformly) of the profile's median: the counts that do not scale with
        the dose (stray and dark counts weigh more at a lower dose) and the broad plural scattering
        of thicker ice both fill the valleys between the rings; 0 = off.
    ice_layer: RIAs with a scan context against the scan's two ends: largest fraction (drawn
        uniformly, either sign) of the scan's ice end added to each profile before its scan context
        (kept above a tenth of the profile): more or less vitreous ice over the carbon film (0-25 nm
        in the simulator, drawn per scan) and in the holes than the training scans had; 0 = off.
    """

    copies: int = 1
    centre_jitter_px: float = 1.0
    intensity_range: tuple = (0.5, 2.0)
    radial_scale: float = 0.04
    blur_q_invA: float = 0.0
    dose_range: tuple = (1.0, 1.0)
    plural_fraction: float = 0.0
    plural_q_invA: float = 0.1
    thickness_range: tuple = (1.0, 1.0)
    flat_background: float = 0.0
    ice_layer: float = 0.0

    def draw(self, n: int, rng: np.random.Generator) -> dict:
        """Random parameters for ``n`` frames: radial scale, centre jitter (px) and direction (rad),
        intensity factor; blur radius (Å⁻¹) and dose only when set (older recipes draw the same numbers)."""
        lo, hi = self.intensity_range
        out = {
            "scale": 1.0 + rng.uniform(-self.radial_scale, self.radial_scale, n),
            "jitter": rng.uniform(0.0, self.centre_jitter_px, n),
            "angle": rng.uniform(0.0, 2 * np.pi, n),
            "intensity": np.exp(rng.uniform(np.log(lo), np.log(hi), n)),
        }
        if self.blur_q_invA > 0:
            out["blur_q"] = rng.uniform(0.0, self.blur_q_invA, n)
        lo, hi = self.dose_range
        if lo < 1.0:
            out["dose"] = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
            out["noise_seed"] = int(rng.integers(2**62))
        if self.plural_fraction > 0:
            out["plural"] = rng.uniform(0.0, self.plural_fraction, n)
        lo, hi = self.thickness_range
        if (lo, hi) != (1.0, 1.0):
            out["thickness"] = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
        if self.flat_background > 0:
            out["background"] = rng.uniform(0.0, self.flat_background, n)
        if self.ice_layer > 0:
            out["ice_layer"] = rng.uniform(-self.ice_layer, self.ice_layer, n)
        return out


@dataclass(frozen=True)
class FeatureRecipe:
    """How a model's inputs are made from a preprocessed scan (why each option: docs/models.md).

    kind: "ria" (FCNN, SVM: one vector per frame) or "crop" (CNN: one 2D image per frame).
    normalise: divide each profile/crop by its own median and take the log.
    axis: RIA axis, "q" (Å⁻¹, needs a calibrated geometry) or "px" (detector radius).
    q_min_invA, q_max_invA: RIA range on the q axis (Å⁻¹); 0.06-0.6 is d = 16.7-1.67 Å.
    r_min_px, r_max_px: RIA range on the px axis.
    n_bins: number of RIA features.
    crop_radius_A: CNN crop radius as a resolution (Å; 2.7 Å is the paper's 150 px at 90 cm),
        used when the geometry is calibrated; crop_radius_px otherwise (or when given).
    crop_size: side of the CNN input (px after binning/resampling).
    augmentation: training-time augmentation.
    background: "none", or "poly": after the log normalisation, subtract from every RIA its
        least-squares polynomial of degree ``background_degree`` in log q (log r on the px axis).
    standardise: then divide every RIA by its own standard deviation over the bins.
    scan_context: number of q bands (0 = none) whose level relative to the scan's reference is
        appended to every RIA's features: log(frame band mean / reference band mean). Needs
        whole scans, so not for live classification.
    context_reference: the reference: "median", the scan's median profile (``scan_context``
        columns), or "ends", the median profiles of its most carbon-like and most ice-like frames
        (``context_end_fraction`` each, by the 2.13 Å carbon ring against the 3.7 Å ice ring;
        ``2 scan_context`` columns).
    context_end_fraction: fraction of a scan's frames in each end for ``context_reference="ends"``.
    crop_rescale: resample every crop so that it spans ``crop_radius_A`` on the scan's geometry as
        the model sees it (e.g. a fitted camera length), not the px preprocessing cut.
    crop_mask_q_invA: crops: set every input pixel at q below this (Å⁻¹) to 0 after normalisation
        (0 = off): the direct beam there follows the optics and the detector, not the sample.
    crop_context: crops: "none", or "ends": two more input channels, log(crop / end) against the
        scan's two ends (:func:`crop_reference`). Needs whole scans.
    crop_cut_margin: crops: preprocessing cuts this many times the wanted radius (clipped to the
        frame), so that a camera length fitted after preprocessing (up to this factor longer than
        the one the cut was made on) is resampled from recorded pixels, not from the cut's edge.
    scan_neighbours: RIAs: three more columns, ``neighbour_copies`` times each: where the frame and
        the most carbon-like and most ice-like frames of its 3x3 scan neighbourhood lie between the
        scan's carbon and ice ends (:func:`neighbour_context`). Crops (with ``crop_context="ends"``):
        a fourth channel, the carbon-context channel of the most carbon-like frame of the 3x3
        neighbourhood (:func:`neighbour_extremes`). Both need whole scans.
    """

    kind: str = "ria"
    normalise: bool = True
    axis: str = "q"
    q_min_invA: float = 0.06
    q_max_invA: float = 0.6
    r_min_px: float = 12.0
    r_max_px: float = 120.0
    n_bins: int = 96
    crop_radius_A: float | None = 2.7
    crop_radius_px: float | None = None
    crop_size: int = 48
    augmentation: Augmentation = field(default_factory=Augmentation)
    background: str = "none"
    background_degree: int = 2
    standardise: bool = False
    scan_context: int = 0
    context_reference: str = "median"
    context_end_fraction: float = 0.2
    crop_rescale: bool = False
    crop_mask_q_invA: float = 0.0
    crop_context: str = "none"
    crop_cut_margin: float = 1.0
    scan_neighbours: bool = False
    neighbour_copies: int = 10

    def __post_init__(self):
        if self.kind not in ("ria", "crop"):
            raise ValueError(f"feature kind must be 'ria' or 'crop', not {self.kind!r}")
        if self.axis not in ("q", "px"):
            raise ValueError(f"RIA axis must be 'q' or 'px', not {self.axis!r}")
        if self.crop_radius_A is None and self.crop_radius_px is None and self.kind == "crop":
            raise ValueError("a crop recipe needs crop_radius_A or crop_radius_px")
        if not 1.0 <= self.crop_cut_margin <= 2.0:
            raise ValueError(f"crop_cut_margin must be between 1 and 2, not {self.crop_cut_margin!r}")
        for name, choices in (("background", BACKGROUNDS), ("context_reference", CONTEXT_REFERENCES),
                              ("crop_context", CROP_CONTEXTS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, not {getattr(self, name)!r}")
        if (self.background != "none" or self.standardise) and (self.kind != "ria" or not self.normalise):
            raise ValueError("background removal and standardisation work on normalised RIA features")
        if (self.crop_context != "none" or self.crop_mask_q_invA) and self.kind != "crop":
            raise ValueError("crop_context and crop_mask_q_invA apply to crop recipes (the CNN)")
        if self.crop_mask_q_invA < 0:
            raise ValueError(f"crop_mask_q_invA must be >= 0, got {self.crop_mask_q_invA}")
        if not 0.0 < self.context_end_fraction <= 0.5:
            raise ValueError(f"context_end_fraction must be in (0, 0.5], got {self.context_end_fraction}")
        if self.scan_neighbours and self.kind == "crop" and self.crop_context == "none":
            raise ValueError("scan_neighbours on crops adds a neighbour's scan-context channel: it needs "
                             "crop_context='ends'")
        if self.scan_neighbours and not 1 <= int(self.neighbour_copies) <= 50:
            raise ValueError(f"neighbour_copies must be 1..50, got {self.neighbour_copies}")
        if self.scan_context and (self.kind != "ria" or not 0 < self.scan_context <= self.n_bins):
            raise ValueError(f"scan_context needs RIA features and 1..n_bins bands, got {self.scan_context}")
        aug = self.augmentation
        if isinstance(aug, dict):
            aug = Augmentation(**aug)
        if not 0.0 <= aug.plural_fraction < 1.0 or not aug.plural_q_invA > 0:
            raise ValueError(f"plural_fraction must be in [0, 1) and plural_q_invA > 0, got {aug.plural_fraction}, "
                             f"{aug.plural_q_invA}")
        lo, hi = aug.thickness_range
        if not 0 < lo <= hi:
            raise ValueError(f"thickness_range must be (low, high) with 0 < low <= high, got {aug.thickness_range}")
        if (aug.plural_fraction or (lo, hi) != (1.0, 1.0)) and self.kind != "crop":
            raise ValueError("the ice-thickness augmentations (plural_fraction, thickness_range) apply to crop "
                             "recipes (the CNN)")
        if not 0.0 <= aug.flat_background < 1.0:
            raise ValueError(f"flat_background must be in [0, 1), got {aug.flat_background}")
        if aug.flat_background and self.kind != "ria":
            raise ValueError("flat_background applies to RIA recipes (the FCNN and the SVM)")
        if not 0.0 <= aug.ice_layer < 1.0:
            raise ValueError(f"ice_layer must be in [0, 1), got {aug.ice_layer}")
        if aug.ice_layer and not (self.scan_context and self.context_reference == "ends"):
            raise ValueError("ice_layer adds a fraction of the scan's ice end: it needs an RIA recipe with "
                             "scan_context and context_reference='ends'")
        object.__setattr__(self, "augmentation", replace(aug, intensity_range=tuple(aug.intensity_range),
                                                         dose_range=tuple(aug.dose_range),
                                                         thickness_range=(float(lo), float(hi))))

    def replace(self, **changes) -> "FeatureRecipe":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augmentation"].update(intensity_range=list(self.augmentation.intensity_range),
                                 dose_range=list(self.augmentation.dose_range))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureRecipe":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})  # __post_init__ reads augmentation

    # ---- geometry ---------------------------------------------------------------------------

    def axis_edges(self) -> np.ndarray:
        """Edges of the ``n_bins`` RIA feature bins on the recipe's axis (Å⁻¹ or px)."""
        lo, hi = (self.q_min_invA, self.q_max_invA) if self.axis == "q" else (self.r_min_px, self.r_max_px)
        return np.linspace(lo, hi, self.n_bins + 1)

    def ria_edges_px(self, geometry) -> np.ndarray:
        """Edges (px) of the ``n_bins`` RIA feature bins for a scan with this geometry."""
        if self.axis == "px":
            return self.axis_edges()
        if not geometry.calibrated:
            raise ValueError("this model uses a q axis (Å⁻¹) but the scan's geometry is not calibrated "
                             "(camera length or voltage unknown)")
        lo, hi = geometry.q_invA_to_radius_px(self.q_min_invA), geometry.q_invA_to_radius_px(self.q_max_invA)
        return np.linspace(lo, hi, self.n_bins + 1)

    def ria_reach_px(self, geometry, augmented: bool = False) -> float:
        """How far from the centre (px) the RIA features read the radial profile on this geometry:
        the outer edge of the last feature bin; with ``augmented`` (training with augmented
        copies) also as far as the augmentation's radial scale, centre jitter and blur move that
        edge out. ValueError when the geometry cannot say (a q axis, or a blur, uncalibrated)."""
        reach = float(self.ria_edges_px(geometry)[-1])
        aug = self.augmentation
        if not augmented or aug.copies <= 0:
            return reach
        reach = reach * (1.0 + aug.radial_scale) + aug.centre_jitter_px
        if aug.blur_q_invA > 0:
            reach += float(geometry.q_invA_to_radius_px(aug.blur_q_invA))
        return reach

    def for_geometries(self, geometries) -> "FeatureRecipe":
        """This recipe with its RIA range narrowed to what every detector of ``geometries`` reaches
        (the radius of the largest circle inside the frame about its centre), keeping the bin
        width: a model trained on them never asks for q (or px) its training frames did not hold."""
        geometries = list(geometries)
        if self.kind != "ria" or not geometries:
            return self
        if self.axis == "q":
            if not all(g.calibrated for g in geometries):
                raise ValueError("RIA features on a q axis need the camera length and voltage of every scan")
            reach = min(float(g.radius_px_to_q_invA(min(g.detector_shape) / 2.0)) for g in geometries)
            lo, hi, key = self.q_min_invA, self.q_max_invA, "q_max_invA"
            reach = math.floor(reach * 1000) / 1000
            unit = "Å⁻¹"
        else:
            reach = float(min(min(g.detector_shape) / 2.0 for g in geometries))
            lo, hi, key, unit = self.r_min_px, self.r_max_px, "r_max_px", "px"
        if reach >= hi:
            return self
        if reach < 2 * lo:
            raise ValueError(f"the detector reaches only {reach:g} {unit} from the centre, too little for RIA "
                             f"features from {lo:g} {unit}: check the pixel size and camera length")
        n_bins = max(8, int(round(self.n_bins * (reach - lo) / (hi - lo))))
        return replace(self, **{key: reach, "n_bins": n_bins})

    def wanted_crop_radius_px(self, geometry) -> float:
        """The crop radius (px) the recipe asks for on this geometry, before clipping."""
        if self.crop_radius_px is not None:
            return float(self.crop_radius_px)
        if not geometry.calibrated:
            raise ValueError(f"the crop radius is set as {self.crop_radius_A} Å but the scan's geometry is not "
                             "calibrated; give crop_radius_px instead")
        return float(geometry.d_A_to_radius_px(self.crop_radius_A))

    def widest_crop_d_A(self, geometry) -> float:
        """The spacing (Å) at the edge of the widest crop this detector holds about its centre (with
        ``crop_cut_margin``): the smallest ``crop_radius_A`` a model applied to it can have."""
        limit = min(geometry.detector_shape) // 2 - _CROP_MARGIN_PX
        return float(geometry.radius_px_to_d_A(limit / self.crop_cut_margin))

    def crop_layout(self, geometry) -> tuple[int, int]:
        """(half, bin) for preprocessing on this geometry: the crop spans 2 half detector px
        (the wanted radius times ``crop_cut_margin``, clipped to the frame, rounded so that 2 half
        divides by bin) and is binned by bin, which brings it near ``crop_size`` (resampled exactly
        afterwards)."""
        limit = min(geometry.detector_shape) // 2 - _CROP_MARGIN_PX
        half = int(max(4, min(round(self.wanted_crop_radius_px(geometry) * self.crop_cut_margin), limit)))
        b = max(1, (2 * half) // self.crop_size)
        half = max(b, (half // b) * b)
        return half, b


# ---- RIA features ---------------------------------------------------------------------------


def _fill_nan_rows(ria: np.ndarray) -> np.ndarray:
    """Fill NaN bins of each profile by linear interpolation (edge values beyond the ends)."""
    bad = np.isnan(ria)
    rows = np.flatnonzero(bad.any(axis=1))
    if rows.size == 0:
        return ria
    ria = ria.copy()
    x = np.arange(ria.shape[1])
    for i in rows:
        ok = ~bad[i]
        if ok.any():
            ria[i, ~ok] = np.interp(x[~ok], x[ok], ria[i, ok])
    return ria


def _interp_rows(cum: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Linear interpolation of each row of ``cum`` at fractional indices ``pos`` (n, m)."""
    pos = np.clip(pos, 0.0, cum.shape[1] - 1.0000001)
    i0 = np.floor(pos).astype(np.intp)
    frac = pos - i0
    a = np.take_along_axis(cum, i0, axis=1)
    b = np.take_along_axis(cum, i0 + 1, axis=1)
    return a + frac * (b - a)


def scan_reference(ria, radii_px, recipe: FeatureRecipe, geometry, valid=None) -> np.ndarray:
    """The scan's reference for ``recipe.scan_context``: the median of the raw bin means over its frames
    (``valid``, default all with a profile), (n_bins,); with ``context_reference="ends"`` the medians of
    its most carbon-like and most ice-like frames (:func:`carbon_ice_score`), (2, n_bins)."""
    ria = np.asarray(ria, dtype=np.float64).reshape(-1, np.shape(radii_px)[0])
    ok = ~np.isnan(ria).all(axis=1) if valid is None else np.asarray(valid, bool).ravel() & ~np.isnan(ria).all(axis=1)
    ends = recipe.context_reference == "ends"
    if not ok.any():
        return np.full((2, recipe.n_bins) if ends else recipe.n_bins, np.nan)
    raw = replace(recipe, normalise=False, background="none", standardise=False, scan_context=0,
                  augmentation=Augmentation(copies=0))
    with np.errstate(all="ignore"):
        feats = ria_features(ria[ok], radii_px, raw, geometry).astype(np.float64)
        if not ends:
            return np.nanmedian(feats, axis=0)
        return _ends(feats, carbon_ice_score(feats, recipe, geometry), recipe.context_end_fraction, np.nanmedian)


def end_rows(rows, score, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(the ``fraction`` of ``rows`` with the highest ``score``: the carbon end, those with the lowest:
    the ice end); ``score`` one value per row."""
    order = np.argsort(score, kind="stable")
    k = max(1, int(round(fraction * len(order))))
    rows = np.asarray(rows)
    return rows[order[-k:]], rows[order[:k]]


def _ends(values, score, fraction: float, median=np.median) -> np.ndarray:
    """(2, ...): the medians of the ``fraction`` of ``values`` with the highest ``score`` (the carbon
    end), then of those with the lowest (the ice end)."""
    return np.stack([median(values[r], axis=0) for r in end_rows(np.arange(len(score)), score, fraction)])


def _bin_q(recipe: FeatureRecipe, geometry) -> np.ndarray | None:
    """q (Å⁻¹) of the recipe's bin centres, or None when it cannot be known (px axis, no calibration)."""
    if recipe.axis == "q":
        edges = recipe.axis_edges()
        return 0.5 * (edges[1:] + edges[:-1])
    if not geometry.calibrated:
        return None
    edges = recipe.ria_edges_px(geometry)
    return np.asarray(geometry.radius_px_to_q_invA(0.5 * (edges[1:] + edges[:-1])), dtype=np.float64)


def carbon_ice_score(feats: np.ndarray, recipe: FeatureRecipe, geometry) -> np.ndarray:
    """How carbon-like each raw profile (n, n_bins) on the recipe's bins is: the log ratio of the mean
    level at carbon's 2.13 Å ring to vitreous ice's 3.7 Å ring (:func:`_carbon_minus_ice`); dose
    and gain cancel."""
    q = _bin_q(recipe, geometry)

    def columns(band):
        if q is None:  # px axis without calibration: fixed fractions of the range
            n = feats.shape[1]
            frac = {_CARBON_BAND_INVA: (0.75, 0.85), _ICE_BAND_INVA: (0.35, 0.45), _SHOULDER_BAND_INVA: (0.2, 0.3)}
            a, b = frac[band]
            return np.arange(int(a * n), max(int(b * n), int(a * n) + 1))
        sel = np.flatnonzero((q >= band[0]) & (q <= band[1]))
        return sel if sel.size else None

    return _carbon_minus_ice(feats, columns)


def _carbon_minus_ice(values: np.ndarray, columns) -> np.ndarray:
    """Per row of ``values`` (n, m): the log ratio of the mean level at carbon's ring to that at the
    ice ring, or of the shoulder below the ice ring to the ring when carbon's is out of reach;
    zeros when neither can be told. columns(band): the columns of a q band, None when out of reach."""
    def level(band):
        sel = columns(band)
        return None if sel is None else np.log(np.maximum(np.nanmean(values[:, sel], axis=1), 1e-12))

    ice, other = level(_ICE_BAND_INVA), level(_CARBON_BAND_INVA)
    if other is None:
        other = level(_SHOULDER_BAND_INVA)
    return np.zeros(len(values)) if ice is None or other is None else other - ice


def _context(feats: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """log(band mean / reference band mean) for k equal bands of bins: (n, k); a (2, n_bins)
    reference (the scan's two ends) gives (n, 2k), the bands against the first, then the second."""
    if reference.ndim == 2:
        return np.concatenate([_context(feats, r, k) for r in reference], axis=1)
    bands = np.array_split(np.arange(feats.shape[1]), k)
    cols = []
    for b in bands:
        ref = float(np.mean(reference[b]))
        ref = ref if ref > 0 else 1e-9
        cols.append(np.log(np.maximum(feats[:, b].mean(axis=1), 1e-3 * ref) / ref))
    return np.stack(cols, axis=1)


def end_positions(score: np.ndarray, valid: np.ndarray, fraction: float) -> np.ndarray:
    """Where each frame lies between its scan's carbon end (0) and ice end (1) by ``score`` (carbon
    high: :func:`carbon_ice_score`, :func:`crop_score`): the ends are the medians of the score over the
    ``fraction`` most carbon-like and most ice-like ``valid`` frames; clipped to [-1, 2]. Frames not
    valid (or without a score) get the median position. Ice thickness, dose and gain move the
    ends with the frames: the position stays."""
    score = np.asarray(score, dtype=np.float64)
    ok = np.asarray(valid, bool) & np.isfinite(score)
    if ok.sum() < 2:
        return np.full(score.shape, 0.5)
    carbon, ice = _ends(score[ok], score[ok], fraction)
    gap = ice - carbon
    if abs(gap) < 1e-3:  # a scan with one kind of frame: no scale to measure against
        gap = -1e-3
    p = np.clip((score - carbon) / gap, -1.0, 2.0)
    return np.where(ok, p, np.median(p[ok]))


def neighbour_context(position: np.ndarray) -> np.ndarray:
    """(n, 3) from a scan's map of :func:`end_positions` (sy, sx): each frame's own position, and
    the lowest (most carbon-like) and highest over its 3x3 neighbourhood (the scan's edge repeated
    outward)."""
    from scipy.ndimage import maximum_filter, minimum_filter

    position = np.asarray(position, dtype=np.float64)
    cols = [position, minimum_filter(position, size=3, mode="nearest"),
            maximum_filter(position, size=3, mode="nearest")]
    return np.stack([c.ravel() for c in cols], axis=1).astype(np.float32)


def neighbour_extremes(score: np.ndarray) -> np.ndarray:
    """(n, 2) flat indices into a scan's map of scores (sy, sx; carbon high, NaN where not recorded):
    the frame of each 3x3 neighbourhood (the frame itself included, clipped at the scan's edge) with
    the highest score, then the one with the lowest."""
    score = np.asarray(score, dtype=np.float64)
    sy, sx = score.shape
    idx = np.arange(sy * sx).reshape(sy, sx)
    hi = np.where(np.isfinite(score), score, -np.inf)
    lo = np.where(np.isfinite(score), score, np.inf)
    best_hi, best_lo = hi.copy(), lo.copy()
    arg_hi, arg_lo = idx.copy(), idx.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            yy = np.clip(np.arange(sy) + dy, 0, sy - 1)[:, None]
            xx = np.clip(np.arange(sx) + dx, 0, sx - 1)[None, :]
            h, l, j = hi[yy, xx], lo[yy, xx], idx[yy, xx]
            arg_hi = np.where(h > best_hi, j, arg_hi)
            best_hi = np.maximum(best_hi, h)
            arg_lo = np.where(l < best_lo, j, arg_lo)
            best_lo = np.minimum(best_lo, l)
    return np.stack([arg_hi.ravel(), arg_lo.ravel()], axis=1)


def ria_features(ria, radii_px, recipe: FeatureRecipe, geometry, aug: dict | None = None,
                 reference=None) -> np.ndarray:
    """RIA features (n, n_bins) float32 from raw RIAs (n, nb) on 1-px-like uniform bins.

    ria: mean intensity per radial bin (NaN where empty; all-NaN rows come back NaN); radii_px:
    the bins' centres (px, uniform). Each feature is the exact mean of the piecewise-constant
    profile over one recipe bin. ``aug`` (:meth:`Augmentation.draw`) scales the radius, blurs and
    adds noise, multiplies the intensity. reference: the scan's :func:`scan_reference`, needed when
    ``recipe.scan_context`` is set (the band levels are taken before the intensity factor).
    """
    ria = np.asarray(ria, dtype=np.float64)
    radii_px = np.asarray(radii_px, dtype=np.float64)
    if aug is not None and aug.get("dose") is not None:
        ria = _thinned(ria, aug["dose"], _pixels_per_bin(radii_px, geometry)[None], aug["noise_seed"])
    n, nb = ria.shape
    width = float(radii_px[1] - radii_px[0]) if nb > 1 else 1.0
    start = float(radii_px[0]) - width / 2
    empty = np.isnan(ria).all(axis=1)
    filled = _fill_nan_rows(ria)
    filled[empty] = 0.0
    cum = np.concatenate([np.zeros((n, 1)), np.cumsum(filled, axis=1) * width], axis=1)
    edges = recipe.ria_edges_px(geometry)[None, :]
    if aug is not None:
        edges = edges * np.asarray(aug["scale"])[:, None]
    edges = np.broadcast_to(edges, (n, edges.shape[1]))
    shifts = _radial_shifts(aug, geometry)
    if shifts:
        # Each frame's profile averaged over radial shifts u (weights w): a centre error of δ px
        # spreads radius r over r + δ cos φ, a convergent beam's disc of radius a over r + ρ cos φ
        # (ρ, φ uniform in the disc); averaging the cumulative profile at the shifted bin edges
        # gives the bin means of the blurred profile.
        if len({w for _, w in shifts}) == 1:  # equal weights (centre jitter alone): a plain mean
            vals = np.mean([_interp_rows(cum, (edges + u - start) / width) for u, _ in shifts], axis=0)
        else:
            vals = sum(w * _interp_rows(cum, (edges + u - start) / width) for u, w in shifts)
    else:
        vals = _interp_rows(cum, (edges - start) / width)
    feats = np.diff(vals, axis=1) / np.diff(edges, axis=1)
    context = None
    if recipe.scan_context:
        if reference is None:
            raise ValueError("this recipe compares every frame with its scan (scan_context): give the scan's "
                             "reference profile (scan_reference)")
        if aug is not None and aug.get("ice_layer") is not None:
            feats = _other_ice_layer(feats, np.asarray(reference, dtype=np.float64)[-1], aug["ice_layer"])
        context = _context(feats, np.asarray(reference, dtype=np.float64), int(recipe.scan_context))
    if aug is not None and aug.get("background") is not None:
        feats = feats + np.asarray(aug["background"])[:, None] * _row_scale(feats, np.abs(feats))[:, None]
    if aug is not None:
        feats = feats * np.asarray(aug["intensity"])[:, None]
    if recipe.normalise:
        feats = _normalise_rows(feats)
    if recipe.background != "none":
        feats = feats - feats @ _background_projector(recipe).T
    if recipe.standardise:
        feats = _standardise_rows(feats)
    if context is not None:
        feats = np.concatenate([feats, context], axis=1)
    feats[empty] = np.nan
    return feats.astype(np.float32)


def _other_ice_layer(feats: np.ndarray, ice_end: np.ndarray, fraction) -> np.ndarray:
    """Profiles (n, n_bins) with ``fraction`` (n,; either sign) of the scan's ice end (n_bins,) added:
    a thicker or thinner layer of vitreous ice, kept above a tenth of each profile."""
    return np.maximum(feats + np.asarray(fraction, dtype=np.float64)[:, None] * ice_end[None], 0.1 * feats)


def _pixels_per_bin(radii_px: np.ndarray, geometry) -> np.ndarray:
    """About how many detector pixels a 1-px-wide ring at each radius holds about the detector centre
    (the arc inside the frame)."""
    h = min(geometry.detector_shape) / 2.0
    r = np.maximum(np.asarray(radii_px, dtype=np.float64), 0.5)
    inside = np.clip(1.0 - (4.0 / np.pi) * np.arccos(np.clip(h / r, -1.0, 1.0)), 0.0, 1.0)
    return np.maximum(2 * np.pi * r * inside, 1.0)


def _thinned(x: np.ndarray, dose, pixels, seed) -> np.ndarray:
    """Rows of x (means of counts over ``pixels`` detector px, broadcast against x) with the extra
    counting noise of a dose ``dose`` (one factor < 1 per row) times lower: variance x (1/f - 1) / pixels.
    seed: the draw's seed (x holds all its rows), or a :class:`NoiseRows` (x holds a block of them)."""
    extra = np.clip(1.0 / np.asarray(dose, dtype=np.float64) - 1.0, 0.0, None).reshape((-1,) + (1,) * (x.ndim - 1))
    noise = seed if isinstance(seed, NoiseRows) else NoiseStream(seed).rows(0)
    sd = np.sqrt(np.clip(np.nan_to_num(x, nan=0.0), 0.0, None) * extra / pixels)
    return (x + sd * noise.normal(x.shape)).astype(x.dtype)


class NoiseStream:
    """The standard normal numbers of one augmentation draw's counting noise (``noise_seed``),
    handed out a block of rows at a time: the block of rows ``start`` to ``start + m`` gets the
    numbers one draw over all the rows gives them, however the rows are split into blocks, so that
    training makes its augmented inputs a block of frames at a time with the numbers it drew for
    all of a scan's frames at once before. numpy's Generator draws ``standard_normal``'s values one
    after another from its bit generator, so a draw continued from where the last block's stopped
    is the rest of one draw; the state at each block's start is kept, so a block drawn again (a crop
    model's neighbour channel, made from the same draw) gets its numbers again. Blocks come in order."""

    def __init__(self, seed):
        self._rng = np.random.default_rng(seed)
        self._states = {0: self._rng.bit_generator.state}

    def rows(self, start: int) -> "NoiseRows":
        """The numbers of the block of rows that begins at row ``start`` of the draw."""
        return NoiseRows(self, int(start))

    def normal(self, start: int, shape) -> np.ndarray:
        """Standard normal numbers: ``shape[0]`` rows from row ``start``, of ``shape[1:]`` each."""
        self._rng.bit_generator.state = self._states[start]
        out = self._rng.standard_normal(shape)
        self._states = {k: v for k, v in self._states.items() if k >= start}  # earlier blocks are done
        self._states[start + int(shape[0])] = self._rng.bit_generator.state
        return out


@dataclass(frozen=True)
class NoiseRows:
    """The block of a :class:`NoiseStream`'s rows from row ``start``."""

    stream: NoiseStream
    start: int

    def normal(self, shape) -> np.ndarray:
        """Standard normal numbers (shape[0] rows from ``start``, of shape[1:] each)."""
        return self.stream.normal(self.start, shape)


def _radial_shifts(aug: dict | None, geometry) -> list:
    """[(shift (n, 1) px, weight)] whose weighted average blurs each profile as ``aug`` says
    (centre jitter, convergent-beam disc); empty when nothing blurs."""
    if aug is None:
        return []
    jit = np.asarray(aug["jitter"], dtype=np.float64)[:, None]
    blur = aug.get("blur_q")
    parts = []
    if np.any(jit > 0):
        # δ cos φ, φ uniform: 7 equally spaced azimuths over half a turn
        parts.append([(jit * np.cos(p), 1.0 / 7) for p in np.linspace(0, np.pi, 7)])
    if blur is not None and np.any(np.asarray(blur) > 0):
        a = np.asarray(geometry.q_invA_to_radius_px(np.asarray(blur, dtype=np.float64)))[:, None]
        # ρ cos φ over a uniform disc of radius a has the semicircle density ∝ sqrt(a² - u²):
        # Gauss-Chebyshev nodes of the second kind
        m = 7
        k = np.arange(1, m + 1)
        x, w = np.cos(k * np.pi / (m + 1)), np.sin(k * np.pi / (m + 1)) ** 2
        parts.append([(a * xi, wi / w.sum()) for xi, wi in zip(x, w)])
    if len(parts) < 2:
        return parts[0] if parts else []
    return [(u1 + u2, w1 * w2) for u1, w1 in parts[0] for u2, w2 in parts[1]]


def _background_projector(recipe: FeatureRecipe) -> np.ndarray:
    """(n_bins, n_bins) projection onto polynomials of degree ``background_degree`` in log q (or
    log r) at the feature bins' centres: ``y @ P.T`` is each row's least-squares smooth trend."""
    edges = recipe.axis_edges()
    x = np.log(0.5 * (edges[1:] + edges[:-1]))
    x = (x - x.mean()) / (x.std() or 1.0)
    V = np.vander(x, int(recipe.background_degree) + 1, increasing=True)
    Q, _ = np.linalg.qr(V)
    return Q @ Q.T


def _standardise_rows(x: np.ndarray) -> np.ndarray:
    """Every row minus its mean, divided by its standard deviation (rows without spread: centred)."""
    x = x - x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return x / np.where(sd > 0, sd, 1.0)


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    """Divide every row by its own median (robust dose/gain scale) and take the log."""
    shape = (len(x),) + (1,) * (x.ndim - 1)
    return np.log(np.maximum(x / _row_scale(x, np.abs(x)).reshape(shape), 1e-3))


def _row_scale(x: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Every row's median, or the mean of ``fallback`` (the same shape) where that is not positive, else 1."""
    scale = median(x.reshape(len(x), -1), axis=1)
    fallback = np.mean(fallback.reshape(len(x), -1), axis=1)
    return np.where(scale > 0, scale, np.where(fallback > 0, fallback, 1.0))


# ---- crop features --------------------------------------------------------------------------


def crop_features(crops, crop_radius_px: float, recipe: FeatureRecipe, aug: dict | None = None,
                  wanted_radius_px: float | None = None, q_per_px: float | None = None,
                  reference=None) -> np.ndarray:
    """CNN inputs (n, S, S) float32, S = ``recipe.crop_size``, from centred crops (n, h, w);
    (n, S, S, 3) with ``recipe.crop_context="ends"``.

    crops: frames cut around their own centre (possibly binned means), reaching ``crop_radius_px``
    detector px from the centre to the edge, resampled (bilinear) onto S x S over the same radius,
    or over ``wanted_radius_px`` when given. ``aug`` adds per frame a radial scale, a centre shift,
    an intensity factor and, when drawn, lower-dose noise and a disc blur (``blur_q``, Å⁻¹).
    q_per_px: q (Å⁻¹) per output px, needed by the blur, the centre mask and the scan context.
    reference: the scan's :func:`crop_reference` (2, S, S), needed by ``crop_context="ends"``.
    """
    from scipy import ndimage

    crops = np.asarray(crops, dtype=np.float32)
    n, h, w = crops.shape
    size = recipe.crop_size
    px_per_in = (h / (2.0 * crop_radius_px), w / (2.0 * crop_radius_px))  # input px per detector px
    if aug is not None and aug.get("dose") is not None:
        # binned means: 1 / (px_per_in[0] px_per_in[1]) detector px per input px
        crops = _thinned(crops, aug["dose"], 1.0 / (px_per_in[0] * px_per_in[1]), aug["noise_seed"])
    step = (h / size, w / size)  # input px per output px
    c_in = ((h - 1) / 2.0, (w - 1) / 2.0)
    c_out = (size - 1) / 2.0
    base = 1.0 if wanted_radius_px is None else float(wanted_radius_px) / float(crop_radius_px)
    if aug is None and (h, w) == (size, size) and base == 1.0:
        out = crops.copy()
    else:
        out = np.empty((n, size, size), dtype=np.float32)
        for i in range(n):
            s = base if aug is None else base * float(aug["scale"][i])
            dy = dx = 0.0
            if aug is not None:
                dy = aug["jitter"][i] * np.sin(aug["angle"][i]) * px_per_in[0]
                dx = aug["jitter"][i] * np.cos(aug["angle"][i]) * px_per_in[1]
            matrix = np.diag([step[0] * s, step[1] * s])
            offset = (c_in[0] + dy - c_out * step[0] * s, c_in[1] + dx - c_out * step[1] * s)
            out[i] = ndimage.affine_transform(crops[i], matrix, offset=offset, output_shape=(size, size),
                                              order=1, mode="nearest")
    blur = None if aug is None else aug.get("blur_q")
    thicker = aug is not None and (aug.get("plural") is not None or aug.get("thickness") is not None)
    if (blur is not None or thicker or recipe.crop_mask_q_invA or recipe.crop_context != "none") and not q_per_px:
        raise ValueError("this crop recipe (convergence blur, ice thickness, centre mask or scan context) needs the q "
                         "scale of the crops: a calibrated geometry or crop_radius_A")
    if blur is not None:
        out = _disc_blurred(out, np.asarray(blur, dtype=np.float64) / float(q_per_px))
    if thicker:
        beam = _crop_q(size, q_per_px) < max(recipe.crop_mask_q_invA, _BEAM_Q_INVA)
        out = _thicker(out, aug, recipe.augmentation.plural_q_invA / float(q_per_px), beam)
    context = None
    if recipe.crop_context != "none":
        if reference is None:
            raise ValueError("this recipe compares every crop with its scan (crop_context): give the scan's "
                             "reference crops (crop_reference)")
        context = _crop_context(out, np.asarray(reference, dtype=np.float32))
    if aug is not None:
        out *= np.asarray(aug["intensity"], dtype=np.float32)[:, None, None]
    if recipe.normalise:
        out = np.log1p(np.maximum(out, 0) / _row_scale(out, out)[:, None, None])
    if context is not None:
        out = np.concatenate([out[..., None], context], axis=-1)
    if recipe.crop_mask_q_invA:
        out[:, _crop_q(size, q_per_px) < recipe.crop_mask_q_invA] = 0.0
    return out.astype(np.float32)


def _crop_q(size: int, q_per_px: float) -> np.ndarray:
    """q (Å⁻¹) of every pixel of an S x S crop about its centre."""
    c = (size - 1) / 2.0
    y, x = np.mgrid[:size, :size]
    return np.hypot(y - c, x - c) * float(q_per_px)


def _disc_kernel(radius_px: float) -> np.ndarray:
    """A uniform disc of radius ``radius_px`` (px; anti-aliased by 8x8 supersampling), sum 1."""
    half = int(np.ceil(radius_px))
    sub = (np.arange(8) + 0.5) / 8 - 0.5
    g = np.arange(-half, half + 1)
    yy = (g[:, None, None, None] + sub[None, None, :, None])
    xx = (g[None, :, None, None] + sub[None, None, None, :])
    k = (yy ** 2 + xx ** 2 <= radius_px ** 2).mean(axis=(2, 3))
    return (k / k.sum()).astype(np.float32)


def _disc_blurred(out: np.ndarray, radius_px: np.ndarray) -> np.ndarray:
    """Each crop convolved with a uniform disc of its own radius (px); radii under 0.5 px: a disc
    of 0.5 px or none (the kernel is a 1 px point below 0.5)."""
    from scipy import ndimage

    res = out.copy()
    for i, a in enumerate(radius_px):
        if a >= 0.5:
            res[i] = ndimage.convolve(out[i], _disc_kernel(float(a)), mode="nearest")
    return res


#: Below this q (Å⁻¹) a crop is the direct beam, left out of the plural-scattering augmentation.
_BEAM_Q_INVA = 0.06


def _thicker(out: np.ndarray, aug: dict, sigma_px: float, beam: np.ndarray) -> np.ndarray:
    """Each crop's scattered signal (outside the ``beam`` pixels) as through other ice: times the
    drawn ``thickness`` factor, then the drawn ``plural`` fraction of it moved into a Gaussian-blurred
    (``sigma_px``) copy of itself: weaker rings on a broader background, as the plural scattering of
    thicker ice. The beam pixels are unchanged."""
    from scipy import ndimage

    n = len(out)
    k = np.asarray(aug.get("thickness", np.ones(n)), dtype=np.float32)[:, None, None]
    f = np.asarray(aug.get("plural", np.zeros(n)), dtype=np.float32)[:, None, None]
    scattered = np.where(beam, np.float32(0), out) * k
    if np.any(f > 0):
        broad = ndimage.gaussian_filter(scattered, sigma=(0, sigma_px, sigma_px), mode="nearest")
        scattered = (1 - f) * scattered + f * broad
    return np.where(beam, out, scattered).astype(np.float32)


def _crop_context(out: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(n, S, S, 2): log(crop / end) against the scan's carbon end, then its ice end, both lightly
    smoothed (Gaussian, 1 px) so that counting noise does not dominate the ratio; clipped to ±4."""
    from scipy import ndimage

    sm = ndimage.gaussian_filter(out, sigma=(0, 1.0, 1.0), mode="nearest")
    cols = []
    for ref in reference:
        ref = ndimage.gaussian_filter(ref, sigma=1.0, mode="nearest")
        floor = max(1e-3 * float(np.median(np.abs(ref))), 1e-9)
        cols.append(np.clip(np.log(np.maximum(sm, floor) / np.maximum(ref, floor)), -4.0, 4.0))
    return np.stack(cols, axis=-1)


def crop_score(feats: np.ndarray, q_per_px: float) -> np.ndarray:
    """How carbon-like each raw crop (n, S, S) is, from its own radial profile (as
    :func:`carbon_ice_score`)."""
    q = _crop_q(feats.shape[1], q_per_px).ravel()

    def columns(band):
        sel = np.flatnonzero((q >= band[0]) & (q <= band[1]))
        return sel if sel.size >= 4 else None

    return _carbon_minus_ice(feats.reshape(len(feats), -1), columns)


def crop_reference(raw: np.ndarray, recipe: FeatureRecipe, q_per_px: float) -> np.ndarray:
    """The scan's two ends for ``recipe.crop_context="ends"``: pixel-wise medians (2, S, S) of the raw
    resampled crops ``raw`` (n, S, S: no augmentation, not normalised) of its most carbon-like and
    its most ice-like frames (:func:`crop_score`), ``context_end_fraction`` each."""
    raw = np.asarray(raw, dtype=np.float32)
    raw = raw[np.isfinite(raw.reshape(len(raw), -1)).all(axis=1)]
    if not len(raw):
        return np.full((2,) + raw.shape[1:], np.nan, dtype=np.float32)
    return _ends(raw, crop_score(raw, q_per_px), recipe.context_end_fraction).astype(np.float32)


#: Estimator settings that go with :func:`session_robust_recipe`: square-root balanced class
#: weights (full balancing pushes every doubtful frame of another session into the rare "mixed").
SESSION_ROBUST_PARAMS = {"class_weight": "sqrt"}
#: Members of the FCNN and SVM ensembles that go with it (``train(params={"ensemble": ...})``): one
#: model's worst held-out session moved by up to 0.05 between seeds; with five members each seed's
#: mean agreed within 0.003 and the worst session within 0.018 (docs/results.md).
SESSION_ROBUST_ENSEMBLE = 5


def session_robust_recipe(camera_length_fitted: bool = True, background_and_ice_layer: bool = True,
                          **changes) -> FeatureRecipe:
    """The RIA recipe measured to generalise across sessions (docs/models.md, docs/results.md):
    log-median normalisation, six band levels relative to each of the scan's two ends (12
    columns), where the frame and its 3x3 scan neighbourhood lie between those ends (3 columns,
    10 copies), augmentation with disc blur, lower-dose noise and radial scaling (±3 % when the camera
    length of every scan was fitted, ±12 % for nominal values), a flat background of up to 0.3x
    each profile's median (stray counts at a lower dose, plural scattering in thick ice) and ±0.3x
    the scan's ice end (more or less ice over the carbon film; only with the two-ends context,
    which gives the ice end). ``background_and_ice_layer=False``: without those two, session 23's
    recipe (a model trained on one session's scans then fails on 2.5x thicker ice or a third of
    the dose; trained on six sessions, the two change no held-out session by more than 0.002
    weighted F1: docs/results.md, session 24)."""
    aug = _session_robust_augmentation(camera_length_fitted)
    if background_and_ice_layer:
        ends = changes.get("scan_context", 6) and changes.get("context_reference", "ends") == "ends"
        aug = replace(aug, flat_background=0.3, ice_layer=0.3 if ends else 0.0)
    return FeatureRecipe(kind="ria", scan_context=6, context_reference="ends", scan_neighbours=True,
                         augmentation=aug).replace(**changes)


def _session_robust_augmentation(camera_length_fitted: bool) -> Augmentation:
    """A convergent-beam disc blur up to 0.035 Å⁻¹ (0.9 mrad at 200 kV), the counting noise of 0.2-1x
    the dose, centre jitter, an intensity factor, radial scaling of ±3 % (±12 %: nominal values)."""
    return Augmentation(copies=1, centre_jitter_px=1.0, intensity_range=(0.5, 2.0),
                        radial_scale=0.03 if camera_length_fitted else 0.12, blur_q_invA=0.035, dose_range=(0.2, 1.0))


#: The CNN's ice-thickness augmentation (docs/results.md, session 9): each training crop's
#: scattered signal 0.7-1.6x, up to half of it moved into the broad plural-scattering copy.
CROP_THICKNESS_AUGMENTATION = {"thickness_range": (0.7, 1.6), "plural_fraction": 0.5}


def session_robust_crop_recipe(camera_length_fitted: bool = True, **changes) -> FeatureRecipe:
    """The CNN's crop recipe for generalising across sessions (docs/results.md, the CNN ablation):
    2.7 Å crops resampled on the scan's own camera length (cut 15 % wider, so that a camera length
    fitted after preprocessing up to 15 % longer still finds recorded pixels at the crop's edge),
    the direct beam masked below 0.06 Å⁻¹ (where the RIA features start), two channels relative to
    the scan's two ends, a fourth with the most carbon-like scan neighbour's carbon-context channel
    (``scan_neighbours``), the augmentation of :func:`session_robust_recipe` and the ice-thickness
    augmentation (:data:`CROP_THICKNESS_AUGMENTATION`). Without the context channels
    (``crop_context="none"``) there is no neighbour channel either."""
    if changes.get("crop_context", "ends") == "none":
        changes.setdefault("scan_neighbours", False)
    aug = replace(_session_robust_augmentation(camera_length_fitted), **CROP_THICKNESS_AUGMENTATION)
    return FeatureRecipe(kind="crop", crop_rescale=True, crop_cut_margin=1.15, crop_mask_q_invA=0.06,
                         crop_context="ends", scan_neighbours=True, augmentation=aug).replace(**changes)
