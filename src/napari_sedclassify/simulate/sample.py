"""The sample: holey carbon film, vitreous ice in the holes, crystalline ice contaminants.

The sample is rasterised on a grid aligned with the scan, ``sample_grid_per_step`` px per scan step
(2.5 nm by default), with a margin around the scan area for the beam and the overview. Scan point
(iy, ix) sits on raster px (margin + iy * k, margin + ix * k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

from ..classes import AMORPHOUS_ICE, CARBON, CRYSTALLINE_ICE, MIXED
from .params import SessionParams, SimParams


@dataclass
class Crystal:
    """One hexagonal-ice contaminant: its in-plane rotation and the Bragg reflections it excites."""

    centre_nm: tuple[float, float]
    size_nm: float
    rotation_deg: float
    spot_weights: np.ndarray  # (n_reflections, 6) relative intensity of each spot, sums to 1
    set_azimuth_deg: np.ndarray  # (n_reflections,) azimuth of each six-fold set relative to the rotation


@dataclass
class Sample:
    """Rasterised sample. Thickness maps in nm; ``material`` holds class ids 1-3; ``crystal_id`` -1 or index."""

    pixel_nm: float
    margin_px: int
    step_px: int
    carbon_nm: np.ndarray
    ice_nm: np.ndarray
    crystal_nm: np.ndarray
    material: np.ndarray
    crystal_id: np.ndarray
    crystals: list

    @property
    def shape(self) -> tuple[int, int]:
        return self.material.shape


def _texture(rng, shape, length_px: float) -> np.ndarray:
    """Smooth random field, mean 0, standard deviation 1, correlation length ``length_px`` (periodic)."""
    spec = ndimage.fourier_gaussian(sp_fft.rfft2(rng.standard_normal(shape)), length_px, n=shape[1])
    field = sp_fft.irfft2(spec, s=shape)
    field -= field.mean()
    return field / (field.std() + 1e-12)


def _rough_radius(rng, n_orders=5, amplitude=0.015):
    """Relative radius modulation 1 + sum a_k cos(k φ + φ_k), k = 2..6 (a_k ~ amplitude 2/k)."""
    k = np.arange(2, 2 + n_orders)
    a = rng.normal(0.0, amplitude, size=n_orders) * 2.0 / k
    ph = rng.uniform(0, 2 * np.pi, size=n_orders)

    def radius(phi):
        return 1.0 + np.sum(a[:, None] * np.cos(k[:, None] * phi.ravel()[None] + ph[:, None]), 0).reshape(phi.shape)

    return radius


def make_sample(scan_shape, session: SessionParams, params: SimParams, rng) -> Sample:
    """Draw a sample for a scan of ``scan_shape`` points (deterministic given ``rng``)."""
    sy, sx = scan_shape
    k = int(params.sample_grid_per_step)
    pixel_nm = session.scan_step_nm / k
    beam_nm = max(0.5 * session.beam_diameter_nm + 4 * session.beam_edge_nm, 3 * session.beam_halo_nm)
    margin = int(np.ceil(max(beam_nm / pixel_nm + 2, (params.overview_margin_steps + 1) * k * 1.5)))
    shape = ((sy - 1) * k + 2 * margin + 1, (sx - 1) * k + 2 * margin + 1)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64) * pixel_nm
    origin = margin * pixel_nm  # nm of scan point (0, 0) on both axes
    extent = ((sy - 1) * session.scan_step_nm, (sx - 1) * session.scan_step_nm)

    rho = _holes(yy, xx, origin, extent, scan_shape, params, rng)
    hole = rho < 1.0
    carbon_nm, ice_nm = _film_and_ice(rho, pixel_nm, params, rng)
    if session.ice_thickness_scale != 1.0:  # a session with thicker (or thinner) ice
        ice_nm = ice_nm * session.ice_thickness_scale
    area_um2 = (extent[0] + session.scan_step_nm) * (extent[1] + session.scan_step_nm) * 1e-6
    n_cryst = max(params.min_crystals, int(rng.poisson(params.crystals_per_um2 * area_um2)))
    crystal_nm = np.zeros(shape)
    crystal_id = np.full(shape, -1, dtype=np.int16)
    crystals = [_add_crystal(c, yy, xx, hole, origin, extent, crystal_nm, crystal_id, params, rng)
                for c in range(n_cryst)]
    crystal_nm[crystal_id < 0] = 0.0

    material = np.where(hole, AMORPHOUS_ICE, CARBON).astype(np.uint8)
    material[crystal_id >= 0] = CRYSTALLINE_ICE
    return Sample(pixel_nm, margin, k, *(t.astype(np.float32) for t in (carbon_nm, ice_nm, crystal_nm)),
                  material, crystal_id, crystals)


def _holes(yy, xx, origin, extent, scan_shape, params: SimParams, rng) -> np.ndarray:
    """Distance (relative to the hole radius) from the nearest hole centre of a square hole lattice.

    The lattice offset is drawn until the scan area shows a hole edge (``ice_area_fraction`` in holes).
    """
    diameter = rng.uniform(*params.hole_diameter_nm)
    period = diameter + rng.uniform(*params.hole_spacing_nm)
    radius_fn = _rough_radius(rng, amplitude=params.hole_edge_roughness)

    def rho_at(y, x, off):
        cy = np.round((y - off[0]) / period) * period + off[0]
        cx = np.round((x - off[1]) / period) * period + off[1]
        return np.hypot(y - cy, x - cx) / (0.5 * diameter * radius_fn(np.arctan2(y - cy, x - cx)))

    sy, sx = scan_shape
    ys, xs = np.meshgrid(np.linspace(origin, origin + extent[0], 2 * sy),
                         np.linspace(origin, origin + extent[1], 2 * sx), indexing="ij")
    lo, hi = params.ice_area_fraction
    best = None
    for _ in range(200):
        off = rng.uniform(0, period, size=2)
        frac = float((rho_at(ys, xs, off) < 1).mean())
        score = 0.0 if lo <= frac <= hi else min(abs(frac - lo), abs(frac - hi))
        if best is None or score < best[0]:
            best = (score, off)
        if score == 0.0:
            break
    return rho_at(yy, xx, best[1])


def _film_and_ice(rho, pixel_nm, params: SimParams, rng):
    """Carbon film and vitreous ice thickness (nm): meniscus in the holes, thin ice over carbon."""
    hole = rho < 1.0
    tex_px = params.texture_length_nm / pixel_nm
    tex = params.thickness_texture
    t_c, t_e = rng.uniform(*params.ice_centre_nm), rng.uniform(*params.ice_edge_nm)
    ice_hole = t_c + (t_e - t_c) * np.clip(rho, 0, 1) ** params.ice_profile_power
    ice_over = rng.uniform(*params.ice_over_carbon_nm)
    ice_nm = np.where(hole, ice_hole, ice_over) * (1 + tex * _texture(rng, rho.shape, tex_px))
    carbon_t = rng.uniform(*params.carbon_nm)
    carbon_nm = np.where(hole, 0.0, carbon_t * (1 + 0.5 * tex * _texture(rng, rho.shape, tex_px)))
    return carbon_nm, np.clip(ice_nm, 0.0, None)


def _add_crystal(c, yy, xx, hole, origin, extent, crystal_nm, crystal_id, params: SimParams, rng) -> Crystal:
    """Draw crystal ``c`` (mostly in a hole, near the scan area) into the thickness and id maps."""
    pixel_nm = yy[1, 0] - yy[0, 0]
    want_ice = rng.random() < params.crystal_in_ice
    for _ in range(100):
        cyn = origin + rng.uniform(-0.05, 1.05) * extent[0]
        cxn = origin + rng.uniform(-0.05, 1.05) * extent[1]
        iy, ix = int(round(cyn / pixel_nm)), int(round(cxn / pixel_nm))
        if hole[iy, ix] == want_ice:
            break
    size = rng.uniform(*params.crystal_size_nm)
    a = 0.5 * size
    b = a * rng.uniform(*params.crystal_aspect)
    theta = rng.uniform(0, np.pi)
    rough = _rough_radius(rng, amplitude=0.06)
    h = int(np.ceil(0.6 * size / pixel_nm)) + 1
    box = (slice(max(iy - h, 0), iy + h + 1), slice(max(ix - h, 0), ix + h + 1))
    dy, dx = yy[box] - cyn, xx[box] - cxn
    u = (dy * np.cos(theta) + dx * np.sin(theta)) / a
    v = (-dy * np.sin(theta) + dx * np.cos(theta)) / b
    r = np.hypot(u, v) / rough(np.arctan2(v, u))
    height = size * rng.uniform(*params.crystal_height_ratio)
    dome = np.where(r < 1.0, height * np.sqrt(np.clip(1 - r**2, 0, 1)), 0.0)
    on = dome > crystal_nm[box]
    crystal_nm[box] = np.where(on, dome, crystal_nm[box])
    crystal_id[box][on] = c
    # which reflection sets are excited, how strongly and at which azimuth (fixed per crystal)
    n_refl = len(params.bragg_d_A)
    excited = rng.random(n_refl) < params.bragg_excited
    excited[int(rng.integers(0, 3))] = True  # at least one of the strong low-angle sets
    w = np.asarray(params.bragg_intensity)[:, None] * rng.uniform(0.2, 1.0, size=(n_refl, 1))
    w = w * excited[:, None] * np.tile(rng.uniform(0.5, 1.0, size=(n_refl, 3)), 2)  # Friedel pairs k, k+3
    azimuth = rng.uniform(0.0, 60.0, size=n_refl)
    return Crystal((cyn, cxn), size, float(rng.uniform(0, 60.0)), w / w.sum(), azimuth)


def beam_kernel(session: SessionParams, pixel_nm: float, halo: bool = True) -> np.ndarray:
    """Beam on the sample raster, normalised to sum 1: a soft-edged disc plus (``halo``) its halo."""
    from scipy.special import ndtr

    radius = 0.5 * session.beam_diameter_nm / pixel_nm
    edge = max(session.beam_edge_nm / pixel_nm, 1e-3)
    halo_px = session.beam_halo_nm / pixel_nm
    h = int(np.ceil(max(radius + 4 * edge, 3 * halo_px if halo else 0)))
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    r = np.hypot(yy, xx)
    disc = ndtr((radius - r) / edge)
    disc /= disc.sum()
    if not halo or session.beam_halo_fraction <= 0:
        return disc
    gauss = np.exp(-0.5 * (r / halo_px) ** 2)
    return (1 - session.beam_halo_fraction) * disc + session.beam_halo_fraction * gauss / gauss.sum()


@dataclass
class BeamContent:
    """What the beam sees at each scan point (all (sy, sx, ...)).

    fractions: area fraction of carbon, amorphous ice, crystalline ice under the nominal beam disc
        (sums to 1; the class labels come from these).
    thickness: thickness (nm) of carbon, vitreous ice (incl. under crystals) and crystal, weighted by
        the real beam (disc plus halo; the diffraction comes from these).
    crystal_nm: (sy, sx, n_crystals) beam-weighted thickness of each crystal (nm).
    """

    fractions: np.ndarray
    thickness: np.ndarray
    crystal_nm: np.ndarray


def beam_content(sample: Sample, scan_shape, session: SessionParams) -> BeamContent:
    """Average the sample maps over the beam disc at every scan point."""
    sy, sx = scan_shape
    m, k = sample.margin_px, sample.step_px
    rows = m + np.arange(sy) * k
    cols = m + np.arange(sx) * k

    disc = beam_kernel(session, sample.pixel_nm, halo=False)
    fractions = np.stack([_convolve_at((sample.material == c).astype(np.float64), disc, rows, cols)
                          for c in (CARBON, AMORPHOUS_ICE, CRYSTALLINE_ICE)], axis=-1)
    fractions = np.clip(fractions, 0.0, 1.0)  # FFT round-off
    fractions /= fractions.sum(-1, keepdims=True)
    beam = beam_kernel(session, sample.pixel_nm)
    maps = (sample.carbon_nm, sample.ice_nm, sample.crystal_nm)
    thickness = np.stack([_convolve_at(t, beam, rows, cols) for t in maps], axis=-1).clip(0.0, None)
    crystal_nm = np.zeros((sy, sx, len(sample.crystals)))
    for c in range(len(sample.crystals)):
        crystal = np.where(sample.crystal_id == c, sample.crystal_nm, 0.0)
        crystal_nm[..., c] = _convolve_at(crystal, beam, rows, cols).clip(0.0)
    return BeamContent(fractions, thickness, crystal_nm)


def _convolve_at(img, kern, rows, cols):
    """(img * kern)[rows, cols] for a centred odd-sized kernel, through FFTs (zero padding)."""
    h = kern.shape[0] // 2
    shape = tuple(sp_fft.next_fast_len(n + 2 * h, real=True) for n in img.shape)
    out = sp_fft.irfft2(sp_fft.rfft2(img, shape) * sp_fft.rfft2(kern, shape), shape)
    return out[np.ix_(rows + h, cols + h)]


def class_map(fractions: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 class ids: the material covering >= ``threshold`` of the beam, else mixed (4)."""
    best = fractions.argmax(-1)
    ids = np.array([CARBON, AMORPHOUS_ICE, CRYSTALLINE_ICE], dtype=np.uint8)[best]
    ids[fractions.max(-1) < threshold] = MIXED
    return ids.astype(np.uint8)
