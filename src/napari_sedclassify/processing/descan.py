"""Descan: how the direct beam moves over the detector as the beam scans the sample.

Fits the per-frame centres (cy, cx) as functions of the scan position (iy, ix) with a plane
and with a smooth 2D polynomial (default degree 3), each with iterative outlier rejection:
points whose residual exceeds ``clip_sigma`` robust sigmas (1.4826 x median absolute
deviation of the residual length) are dropped and the fit repeated until the set is stable.
Frames without a beam and missing frames take no part. The fitted model gives every scan
position a centre, frames without a beam included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stats import median


def _terms(degree):
    """The powers (a, b) of iy^a ix^b with a + b <= degree, by rising degree: those of a lower
    degree come first (a design's first columns are a lower degree's design)."""
    return [(a, d - a) for d in range(degree + 1) for a in range(d, -1, -1)]


def _design(shape, degree):
    """Polynomial terms iy^a ix^b (a + b <= degree) at every scan position (iy, ix), on coordinates
    scaled to [-1, 1]: ((sy, sx, n_terms), terms)."""
    sy, sx = shape
    iy, ix = np.mgrid[:sy, :sx].astype(float)
    u = 2.0 * iy / max(sy - 1, 1) - 1.0
    v = 2.0 * ix / max(sx - 1, 1) - 1.0
    terms = _terms(degree)
    # the powers by products: ``u ** 3`` of coordinates below zero took numpy's slow path of pow
    # (58 ns a value, 0.6 ms for 10,000 positions; 2.7 ms a design of degree 3, four designs a
    # command: docs/performance.md, session 31)
    pu, pv = [np.ones_like(u)], [np.ones_like(v)]
    for _ in range(degree):
        pu.append(pu[-1] * u)
        pv.append(pv[-1] * v)
    return np.stack([pu[a] * pv[b] for a, b in terms], axis=-1), terms


@dataclass
class DescanModel:
    """One fitted model. coef (n_terms, 2) for (cy, cx) over ``terms`` (powers of the scaled
    (iy, ix)); inliers (sy, sx) bool; rms_px: RMS residual length of the inliers (px);
    rms_yx_px: per-axis RMS; n_rejected: outliers dropped."""

    degree: int
    coef: np.ndarray
    terms: list
    inliers: np.ndarray
    rms_px: float
    rms_yx_px: tuple
    n_rejected: int

    def evaluate(self, scan_shape=None, design=None) -> np.ndarray:
        """Centres (sy, sx, 2) the model gives at every scan position. design: ``_design`` of this
        scan shape at this degree or a higher one (its first columns are this degree's terms)."""
        if design is None:
            design, _ = _design(self.inliers.shape if scan_shape is None else scan_shape, self.degree)
        return _apply(design[..., :len(self.terms)], self.coef)

    def slope_px_per_step(self) -> np.ndarray:
        """2x2 d(cy, cx)/d(iy, ix) (px per scan step) of the linear terms at the scan's middle."""
        sy, sx = self.inliers.shape
        j = {t: k for k, t in enumerate(self.terms)}
        return np.array([[self.coef[j[(1, 0)], a] * 2.0 / max(sy - 1, 1),
                          self.coef[j[(0, 1)], a] * 2.0 / max(sx - 1, 1)] for a in (0, 1)])

    def to_dict(self) -> dict:
        return {"degree": self.degree, "coef": self.coef.tolist(), "terms": [list(t) for t in self.terms],
                "rms_px": self.rms_px, "rms_yx_px": list(self.rms_yx_px), "n_rejected": self.n_rejected}


@dataclass
class DescanFit:
    """plane and smooth (polynomial) models; residuals (sy, sx, 2) of the measured centres to the
    smooth model (NaN where no centre); model: which one ``fitted`` uses; grid: the PixelGrid the
    fit was made on (physical px), None for index px."""

    plane: DescanModel
    smooth: DescanModel
    residuals: np.ndarray
    model: str = "smooth"
    grid: object = None

    @property
    def chosen(self) -> DescanModel:
        return self.smooth if self.model == "smooth" else self.plane

    def fitted(self) -> np.ndarray:
        """Centres (sy, sx, 2) index px of the chosen model at every scan position."""
        c = self.chosen.evaluate()
        return c if self.grid is None else self.grid.to_index(c)

    @property
    def residual_rms_px(self) -> float:
        return self.chosen.rms_px

    def to_dict(self) -> dict:
        return {"model": self.model, "plane": self.plane.to_dict(), "smooth": self.smooth.to_dict(),
                "edge_pixel_width": None if self.grid is None else self.grid.edge_pixel_width}


#: Rows of the design multiplied at a time (``_apply``): OpenBLAS runs a product of 65,536 x 10 by
#: 10 x 2 on its threads, which then spin 0.1 s on the other cores; one of 8,192 rows it runs alone.
APPLY_ROWS = 8192


def _apply(a, coef):
    """``a @ coef`` for a design a (..., t) (the centres it gives), ``APPLY_ROWS`` rows at a time."""
    out = np.empty(a.shape[:-1] + (coef.shape[1],))
    rows, into = a.reshape(-1, a.shape[-1]), out.reshape(-1, coef.shape[1])
    for s in range(0, len(rows), APPLY_ROWS):
        np.matmul(rows[s: s + APPLY_ROWS], coef, out=into[s: s + APPLY_ROWS])
    return out


def _least_squares(a, y):
    """coef minimising |a coef - y| for the design a (m, t) and centres y (m, 2), from the normal
    equations (a.T a) coef = a.T y, solved by ``lstsq`` on the t x t matrix: a design without full
    rank (a single scan row: its row coordinate is constant) gets the minimum-norm solution, as
    ``lstsq`` on a itself gives. ``lstsq`` on the whole design (10,000 x 10) took 0.9 ms against
    0.14 ms, and woke OpenBLAS's threads, which then spun 0.1 s on the other core of a 2-core
    machine (the command turns the spin off; the napari viewer and the Python API cannot, numpy
    being imported before them); the coefficients agree within 1e-11 px (the polynomial designs
    on coordinates in [-1, 1] are well conditioned: 8.4 for 40 x 40 positions, degree 3)."""
    coef, *_ = np.linalg.lstsq(a.T @ a, a.T @ y, rcond=None)
    return coef


def _fit(centres, valid, degree, clip_sigma, design, max_iter=20) -> DescanModel:
    """design: ``_design(valid.shape, d)`` for d >= degree: its first columns are this degree's
    terms (one design serves the plane, the smooth model and its evaluation: 1.7 ms each at 100 x
    100). Where every frame is valid (every one kept), the design is used as it is, not copied."""
    terms = _terms(degree)
    a_all = design[..., :len(terms)]
    every = bool(valid.all())
    a = a_all.reshape(-1, len(terms)) if every else a_all[valid]
    y = centres.reshape(-1, 2) if every else centres[valid]
    keep = np.ones(len(y), bool)
    kept_all = True
    coef = np.zeros((len(terms), 2))
    for _ in range(max_iter):
        coef = _least_squares(a, y) if kept_all else _least_squares(a[keep], y[keep])
        res = np.hypot(*(y - _apply(a, coef)).T)
        kept = res if kept_all else res[keep]
        mid = median(kept)
        sigma = max(1.4826 * median(np.abs(kept - mid)), 0.01)  # a perfect fit rejects nothing
        new = res <= mid + clip_sigma * sigma
        if new.sum() < len(terms) or np.array_equal(new, keep):
            break
        keep = new
        kept_all = bool(keep.all())
    inliers = np.zeros(valid.shape, bool)
    inliers[valid] = keep
    r = y - _apply(a, coef) if kept_all else y[keep] - _apply(a[keep], coef)
    rms_yx = tuple(float(v) for v in np.sqrt(np.mean(r**2, axis=0))) if len(r) else (np.nan, np.nan)
    rms = float(np.sqrt(np.mean(np.sum(r**2, axis=1)))) if len(r) else np.nan
    return DescanModel(degree, coef, terms, inliers, rms, rms_yx, int((~keep).sum()))


def fit_descan(centres, valid=None, degree: int = 3, clip_sigma: float = 3.5, model: str = "smooth",
               grid=None) -> DescanFit:
    """Fit the descan of per-frame centres (sy, sx, 2) index px (NaN = no beam).

    valid: (sy, sx) bool of the frames to use (default: finite centres). degree: of the smooth
    model, lowered when too few frames support it. grid: PixelGrid with wide chip-edge pixels;
    the beam moves smoothly in physical px, so the fit is made there (coefficients and residuals
    in physical px) and ``fitted()`` converts back to index px. Raises ValueError with fewer
    than 3 usable frames.
    """
    centres = np.asarray(centres, dtype=np.float64)
    if grid is not None:
        centres = grid.to_physical(centres)
    sy, sx, _ = centres.shape
    ok = np.isfinite(centres).all(axis=-1)
    valid = ok if valid is None else (np.asarray(valid, bool) & ok)
    n = int(valid.sum())
    if n < 3:
        raise ValueError(f"descan fit needs at least 3 frames with a beam, got {n}")
    deg = int(degree)
    while deg > 1 and (deg + 1) * (deg + 2) // 2 * 3 > n:
        deg -= 1
    deg = min(deg, max(1, min(sy, sx) - 1)) if min(sy, sx) > 1 else 1
    design, _ = _design((sy, sx), deg)
    plane = _fit(centres, valid, 1, clip_sigma, design)
    smooth = _fit(centres, valid, deg, clip_sigma, design) if deg > 1 else plane
    residuals = np.where(ok[..., None], centres - smooth.evaluate(design=design), np.nan)
    return DescanFit(plane, smooth, residuals, model, grid)
