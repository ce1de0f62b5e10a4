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
    """

    step: float
    carbon: np.ndarray
    ice: np.ndarray
    tail: np.ndarray

    def index(self, r):
        return (r * (1.0 / self.step) + 0.5).astype(np.int32)


def radial_tables(lambda_L_over_p, params, tail_px, r_max, step=0.05) -> RadialTables:
    """Tables of the material profiles and the beam halo up to ``r_max`` px."""
    r = np.arange(int(np.ceil(r_max / step)) + 2) * step
    q = r / lambda_L_over_p
    per_px2 = 1.0 / lambda_L_over_p**2  # Å⁻² of q-space per px²
    carbon = profile_density(q, params.carbon_peaks, params.carbon_background) * per_px2
    ice = profile_density(q, params.ice_peaks, params.ice_background) * per_px2
    tail = _falloff(r, tail_px) / (2 * np.pi * tail_px**2)
    return RadialTables(step, carbon.astype(np.float32), ice.astype(np.float32), tail.astype(np.float32))


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
