"""Diffraction on the detector: radial profiles per material, Bragg spots, the direct beam.

All positions here are physical detector px (see :mod:`.detector`); intensities are expected counts
per electron before the detector efficiency. q = 1/d (Å⁻¹) and radius r (px) relate by
r = q λL/p (``lambda_L_over_p`` in Å·px, from :class:`~napari_sedclassify.geometry.Geometry`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erfc, ndtr

from .detector import Detector

_Q_FINE = np.linspace(0.0, 6.0, 60001)  # Å⁻¹, grid for normalising ring profiles


def _ring(q, d_A, sigma_q):
    return np.exp(-0.5 * ((q - 1.0 / d_A) / sigma_q) ** 2)


def _falloff(q, q0):
    return (1.0 + (q / q0) ** 2) ** -1.5


def profile_density(q, peaks, background) -> np.ndarray:
    """Scattered-electron density (per Å⁻² of q-space) at q (Å⁻¹); integrates to the sum of weights.

    peaks: (d Å, sigma Å⁻¹, weight) Gaussian rings; background: (q0 Å⁻¹, weight) of
    (1 + (q/q0)²)^-1.5 (its plane integral is 2π q0²).
    """
    q = np.asarray(q, dtype=np.float64)
    q0, wb = background
    out = wb * _falloff(q, q0) / (2 * np.pi * q0**2)
    for d_A, sigma, w in peaks:
        norm = np.trapezoid(2 * np.pi * _Q_FINE * _ring(_Q_FINE, d_A, sigma), _Q_FINE)
        out = out + w * _ring(q, d_A, sigma) / norm
    return out


@dataclass
class RadialTables:
    """Expected counts per physical px² per electron on a fine radius grid (r = index * step px).

    carbon / ice: per electron scattered by that material; tail: per direct-beam electron (halo).
    plural: None, or per electron scattered more than once, the profiles of two scatterings
    (carbon-carbon, carbon-ice, ice-ice; see :func:`plural_profiles`).
    """

    step: float
    carbon: np.ndarray
    ice: np.ndarray
    tail: np.ndarray
    plural: tuple | None = None

    def index(self, r):
        return (r * (1.0 / self.step) + 0.5).astype(np.int32)


def radial_tables(lambda_L_over_p, params, tail_px, r_max, step=0.05, blur_px: float = 0.0,
                  plural: bool = False) -> RadialTables:
    """Tables of the material profiles and the beam halo up to ``r_max`` px.

    blur_px: radius (px) of the convergent beam's disc: every table is averaged over it (each
    scattered electron keeps the direction spread of the incident beam). plural: add the
    two-scattering profiles for :class:`RadialTables`.plural.
    """
    r = np.arange(int(np.ceil(r_max / step)) + 2) * step
    q = r / lambda_L_over_p
    per_px2 = 1.0 / lambda_L_over_p**2  # Å⁻² of q-space per px²
    carbon = profile_density(q, params.carbon_peaks, params.carbon_background) * per_px2
    ice = profile_density(q, params.ice_peaks, params.ice_background) * per_px2
    tail = _falloff(r, tail_px) / (2 * np.pi * tail_px**2)
    tables = [carbon, ice, tail]
    if plural:
        tables += [np.interp(q, *plural_profiles(params, k), right=0.0) * per_px2 for k in ("cc", "ci", "ii")]
    if blur_px > 0:
        tables = [disc_average(t, step, blur_px) for t in tables]
    tables = [t.astype(np.float32) for t in tables]
    return RadialTables(step, *tables[:3], plural=tuple(tables[3:]) if plural else None)


def disc_average(table: np.ndarray, step: float, radius_px: float, n_u: int = 12, n_phi: int = 48) -> np.ndarray:
    """A radial function (samples at r = index * step px) convolved with a uniform disc of
    ``radius_px``, normalised (a 2D average over the disc about every point).

    Quadrature over the disc: Gauss-Legendre in the area coordinate u = (ρ/a)² and equally spaced
    azimuths (periodic, so spectrally accurate); values beyond the table are 0.
    """
    table = np.asarray(table, dtype=np.float64)
    r = np.arange(table.size) * step
    x, w = np.polynomial.legendre.leggauss(n_u)
    u, w = 0.5 * (x + 1.0), 0.5 * w
    cos_phi = np.cos((np.arange(n_phi) + 0.5) * (2 * np.pi / n_phi))
    out = np.zeros_like(table)
    for uk, wk in zip(u, w):
        rho = radius_px * np.sqrt(uk)
        for c in cos_phi:
            d = np.sqrt(np.maximum(r * r + rho * rho + 2.0 * r * rho * c, 0.0))
            out += (wk / n_phi) * np.interp(d, r, table, right=0.0)
    return out


_PLURAL_CACHE: dict = {}


def plural_profiles(params, kind: str):
    """(q Å⁻¹, density per Å⁻² of q-space) of an electron scattered twice, normalised to 1 over the
    plane: the 2D self- or cross-convolution of the single-scattering profiles ("cc" carbon twice,
    "ci" carbon then ice, "ii" ice twice), through Hankel transforms (F(k) = 2π∫ f J0(2πkq) q dq).
    """
    from scipy.special import j0

    key = (kind, repr(params.carbon_peaks), repr(params.carbon_background), repr(params.ice_peaks),
           repr(params.ice_background))
    if key in _PLURAL_CACHE:
        return _PLURAL_CACHE[key]
    dq, q_max, dk, k_max = 0.004, 4.0, 0.04, 50.0
    q = (np.arange(int(round(q_max / dq))) + 0.5) * dq
    k = (np.arange(int(round(k_max / dk))) + 0.5) * dk
    kern = j0(2 * np.pi * np.outer(k, q))  # (nk, nq)
    f = {"c": profile_density(q, params.carbon_peaks, params.carbon_background),
         "i": profile_density(q, params.ice_peaks, params.ice_background)}
    ft = {m: 2 * np.pi * kern @ (v * q * dq) for m, v in f.items()}
    prof = 2 * np.pi * (kern.T @ (ft[kind[0]] * ft[kind[1]] * k * dk))
    prof = np.clip(prof, 0.0, None)
    prof /= np.sum(2 * np.pi * q * prof * dq)
    _PLURAL_CACHE[key] = (q, prof)
    return q, prof


class DirectBeam:
    """The direct-beam disc (radius px, blurred by the detector PSF) integrated over the pixels.

    The disc is sampled on a fine grid of offsets (``substep`` px) fixed relative to the beam centre,
    so its weights are computed once; per frame only the pixel each sample falls on changes.
    """

    def __init__(self, radius_px: float, psf_px: float, substep: float = 0.2):
        n = int(np.ceil((radius_px + 4 * psf_px + 1) / substep))
        self.offsets = (np.arange(-n, n) + 0.5) * substep
        w = erfc((np.hypot(self.offsets[:, None], self.offsets[None, :]) - radius_px) / (np.sqrt(2) * psf_px))
        self.weights = w / w.sum()

    def __call__(self, detector: Detector, centre):
        """(rows, cols, fractions): index slices of a box and the fraction of the beam's electrons
        each of its pixels receives (sums to <= 1; less when the beam is cut by the detector edge)."""
        ys, xs = centre[0] + self.offsets, centre[1] + self.offsets
        size = detector.physical_size
        oky = np.flatnonzero((ys >= 0) & (ys < size))
        okx = np.flatnonzero((xs >= 0) & (xs < size))
        if not oky.size or not okx.size:
            return slice(0, 0), slice(0, 0), np.zeros((0, 0))
        sy = slice(oky[0], oky[-1] + 1)
        sx = slice(okx[0], okx[-1] + 1)
        iy = np.floor(detector.to_index(ys[sy]) + 0.5).astype(np.int64)
        ix = np.floor(detector.to_index(xs[sx]) + 0.5).astype(np.int64)
        y0, x0 = iy[0], ix[0]
        h, w = iy[-1] - y0 + 1, ix[-1] - x0 + 1
        flat = ((iy - y0)[:, None] * w + (ix - x0)[None, :]).ravel()
        box = np.bincount(flat, weights=self.weights[sy, sx].ravel(), minlength=h * w)
        return slice(int(y0), int(y0 + h)), slice(int(x0), int(x0 + w)), box.reshape(h, w)


def bragg_spots(crystal, params, lambda_L_over_p):
    """Spot positions of a crystal relative to the beam centre.

    Returns (radius px, azimuth rad, relative weight) arrays, six spots per excited reflection at
    azimuths rotation + set azimuth + k·60° (a crystal in a random orientation excites a few sets,
    each seen at its own azimuth).
    """
    d = np.asarray(params.bragg_d_A, dtype=np.float64)
    radius = np.repeat(lambda_L_over_p / d, 6)
    az = np.deg2rad(crystal.rotation_deg + crystal.set_azimuth_deg[:, None] + 60.0 * np.arange(6)[None, :]).ravel()
    w = crystal.spot_weights.ravel()
    keep = w > 0
    return radius[keep], az[keep], w[keep]


def render_spots(detector: Detector, ys, xs, counts, sigma_px: float, half: int = 3):
    """Gaussian spots (physical px positions, expected counts) integrated exactly over each pixel.

    Returns (flat pixel indices, expected counts) to add to a frame; pixels off the detector dropped.
    """
    n = detector.detector_px
    edges = detector.edges
    k = np.arange(-half, half + 1)
    cy = np.floor(detector.to_index(ys) + 0.5).astype(np.int64)[:, None] + k
    cx = np.floor(detector.to_index(xs) + 0.5).astype(np.int64)[:, None] + k
    cyc, cxc = np.clip(cy, 0, n - 1), np.clip(cx, 0, n - 1)
    gy = ndtr((edges[cyc + 1] - ys[:, None]) / sigma_px) - ndtr((edges[cyc] - ys[:, None]) / sigma_px)
    gx = ndtr((edges[cxc + 1] - xs[:, None]) / sigma_px) - ndtr((edges[cxc] - xs[:, None]) / sigma_px)
    gy[(cy < 0) | (cy >= n)] = 0.0
    gx[(cx < 0) | (cx >= n)] = 0.0
    val = counts[:, None, None] * gy[:, :, None] * gx[:, None, :]
    flat = cyc[:, :, None] * n + cxc[:, None, :]
    return flat.ravel(), val.ravel()
