"""Feature recipes: from preprocessed RIAs and crops to model inputs that survive session changes.

A session change (another day at the microscope) alters the dose, the detector gain and the
camera length by a few per cent. The recipe removes what it can and trains through the rest:

- RIA features are resampled on a q axis (Å⁻¹) from the geometry, so a known camera length
  change moves nothing; each profile is averaged into ``n_bins`` bins between ``q_min_invA`` and
  ``q_max_invA`` (``axis="px"`` keeps detector pixels instead).
- ``normalise``: each profile (or crop) is divided by its own robust scale (median) and log-
  transformed, which removes dose and global gain.
- Training-time augmentation (:class:`Augmentation`) simulates what cannot be removed: a
  centre error (jitter), an intensity factor, and a small radial scaling (an uncalibrated camera
  length change).

Only numpy and scipy here; the estimators never see anything but the arrays made here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

#: px kept between a crop and the detector edge when the wanted radius does not fit.
_CROP_MARGIN_PX = 2


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation of raw RIAs / crops (applied before normalisation).

    copies: augmented copies of every training frame added to the training set (0 = off).
    centre_jitter_px: largest simulated centre error (detector px).
    intensity_range: (low, high) dose/gain factor, drawn log-uniformly.
    radial_scale: largest relative radial scaling (0.04 = ±4 %, a camera length change).
    """

    copies: int = 1
    centre_jitter_px: float = 1.0
    intensity_range: tuple = (0.5, 2.0)
    radial_scale: float = 0.04

    def draw(self, n: int, rng: np.random.Generator) -> dict:
        """Random parameters for ``n`` frames: radial scale, centre jitter (px) and its direction
        (rad), intensity factor."""
        lo, hi = self.intensity_range
        return {
            "scale": 1.0 + rng.uniform(-self.radial_scale, self.radial_scale, n),
            "jitter": rng.uniform(0.0, self.centre_jitter_px, n),
            "angle": rng.uniform(0.0, 2 * np.pi, n),
            "intensity": np.exp(rng.uniform(np.log(lo), np.log(hi), n)),
        }


@dataclass(frozen=True)
class FeatureRecipe:
    """How a model's inputs are made from a preprocessed scan.

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

    def __post_init__(self):
        if self.kind not in ("ria", "crop"):
            raise ValueError(f"feature kind must be 'ria' or 'crop', not {self.kind!r}")
        if self.axis not in ("q", "px"):
            raise ValueError(f"RIA axis must be 'q' or 'px', not {self.axis!r}")
        if self.crop_radius_A is None and self.crop_radius_px is None and self.kind == "crop":
            raise ValueError("a crop recipe needs crop_radius_A or crop_radius_px")
        aug = self.augmentation
        if isinstance(aug, dict):
            aug = Augmentation(**aug)
        object.__setattr__(self, "augmentation", replace(aug, intensity_range=tuple(aug.intensity_range)))

    def replace(self, **changes) -> "FeatureRecipe":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augmentation"]["intensity_range"] = list(self.augmentation.intensity_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureRecipe":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "augmentation" in known:
            known["augmentation"] = Augmentation(**known["augmentation"])
        return cls(**known)

    # ---- geometry ---------------------------------------------------------------------------

    def ria_edges_px(self, geometry) -> np.ndarray:
        """Edges (px) of the ``n_bins`` RIA feature bins for a scan with this geometry."""
        if self.axis == "q":
            if not geometry.calibrated:
                raise ValueError(
                    "this model uses a q axis (Å⁻¹) but the scan's geometry is not calibrated "
                    "(camera length or voltage unknown)"
                )
            lo, hi = geometry.q_invA_to_radius_px(self.q_min_invA), geometry.q_invA_to_radius_px(self.q_max_invA)
        else:
            lo, hi = self.r_min_px, self.r_max_px
        return np.linspace(lo, hi, self.n_bins + 1)

    def wanted_crop_radius_px(self, geometry) -> float:
        """The crop radius (px) the recipe asks for on this geometry, before clipping."""
        if self.crop_radius_px is not None:
            return float(self.crop_radius_px)
        if not geometry.calibrated:
            raise ValueError(
                f"the crop radius is set as {self.crop_radius_A} Å but the scan's geometry is not "
                "calibrated; give crop_radius_px instead"
            )
        return float(geometry.d_A_to_radius_px(self.crop_radius_A))

    def crop_layout(self, geometry) -> tuple[int, int]:
        """(half, bin) for preprocessing on this geometry: the crop spans 2 half detector px
        (the wanted radius clipped to the frame, rounded so that 2 half divides by bin) and is
        binned by bin, which brings it near ``crop_size`` (resampled exactly afterwards)."""
        limit = min(geometry.detector_shape) // 2 - _CROP_MARGIN_PX
        half = int(max(4, min(round(self.wanted_crop_radius_px(geometry)), limit)))
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


def ria_features(ria, radii_px, recipe: FeatureRecipe, geometry, aug: dict | None = None) -> np.ndarray:
    """RIA features (n, n_bins) float32 from raw RIAs (n, nb) on 1-px-like uniform bins.

    ria: mean intensity per radial bin (NaN where a bin is empty); radii_px: the bins' centres
    (px, uniform spacing). Each feature is the mean of the profile over one recipe bin (an exact
    average of the piecewise-constant profile, so no noise is lost by resampling). ``aug`` (from
    :meth:`Augmentation.draw`, one entry per frame) scales the radius, blurs by a centre error and
    multiplies the intensity. Rows whose profile is all NaN come back as NaN.
    """
    ria = np.asarray(ria, dtype=np.float64)
    radii_px = np.asarray(radii_px, dtype=np.float64)
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
    if aug is not None and np.any(aug["jitter"] > 0):
        # A centre error of δ px spreads radius r over r + δ cos φ: average over φ.
        phis = np.linspace(0, np.pi, 7)
        jit = np.asarray(aug["jitter"])[:, None]
        vals = np.mean([_interp_rows(cum, (edges + jit * np.cos(p) - start) / width) for p in phis], axis=0)
    else:
        vals = _interp_rows(cum, (edges - start) / width)
    feats = np.diff(vals, axis=1) / np.diff(edges, axis=1)
    if aug is not None:
        feats = feats * np.asarray(aug["intensity"])[:, None]
    if recipe.normalise:
        feats = _normalise_rows(feats)
    feats[empty] = np.nan
    return feats.astype(np.float32)


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    """Divide every row by its own median (robust dose/gain scale) and take the log."""
    flat = x.reshape(len(x), -1)
    scale = np.median(flat, axis=1)
    fallback = np.mean(np.abs(flat), axis=1)
    scale = np.where(scale > 0, scale, np.where(fallback > 0, fallback, 1.0))
    shape = (len(x),) + (1,) * (x.ndim - 1)
    return np.log(np.maximum(x / scale.reshape(shape), 1e-3))


# ---- crop features --------------------------------------------------------------------------


def crop_features(crops, crop_radius_px: float, recipe: FeatureRecipe, aug: dict | None = None) -> np.ndarray:
    """CNN inputs (n, S, S) float32, S = ``recipe.crop_size``, from centred crops (n, h, w).

    crops: frames cut around their own centre (possibly binned), covering ``crop_radius_px``
    detector px from the centre to the crop's edge. Every crop is resampled (bilinear) onto an
    S x S grid spanning the same radius; ``aug`` adds a radial scale, a centre shift (detector px)
    and an intensity factor per frame.
    """
    from scipy import ndimage

    crops = np.asarray(crops, dtype=np.float32)
    n, h, w = crops.shape
    size = recipe.crop_size
    px_per_in = (h / (2.0 * crop_radius_px), w / (2.0 * crop_radius_px))  # input px per detector px
    step = (h / size, w / size)  # input px per output px
    c_in = ((h - 1) / 2.0, (w - 1) / 2.0)
    c_out = (size - 1) / 2.0
    if aug is None and (h, w) == (size, size):
        out = crops.copy()
    else:
        out = np.empty((n, size, size), dtype=np.float32)
        for i in range(n):
            s = 1.0 if aug is None else float(aug["scale"][i])
            dy = dx = 0.0
            if aug is not None:
                dy = aug["jitter"][i] * np.sin(aug["angle"][i]) * px_per_in[0]
                dx = aug["jitter"][i] * np.cos(aug["angle"][i]) * px_per_in[1]
            matrix = np.diag([step[0] * s, step[1] * s])
            offset = (c_in[0] + dy - c_out * step[0] * s, c_in[1] + dx - c_out * step[1] * s)
            out[i] = ndimage.affine_transform(crops[i], matrix, offset=offset, output_shape=(size, size),
                                              order=1, mode="nearest")
    if aug is not None:
        out *= np.asarray(aug["intensity"], dtype=np.float32)[:, None, None]
    if recipe.normalise:
        flat = out.reshape(n, -1)
        scale = np.median(flat, axis=1)
        fallback = flat.mean(axis=1)
        scale = np.where(scale > 0, scale, np.where(fallback > 0, fallback, 1.0))
        out = np.log1p(np.maximum(out, 0) / scale[:, None, None])
    return out.astype(np.float32)
