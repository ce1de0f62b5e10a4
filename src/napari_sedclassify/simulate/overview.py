"""Image-mode overview of the scanned area and its affine transform to scan coordinates.

Bright-field image: transmission exp(-Σ t/mfp) with image-mode attenuation lengths (carbon darker
than vitreous ice, crystals dark from diffraction contrast), blurred, with an illumination gradient
and Poisson noise. ``overview_per_step`` px per scan step, rotated by the session's
``overview_rotation_deg`` relative to the scan axes, extending ``overview_margin_steps`` beyond them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .params import SessionParams, SimParams
from .sample import Sample


def overview_transform(scan_shape, session: SessionParams, params: SimParams):
    """(overview shape, 3x3 affine): [iy, ix, 1] = A @ [oy, ox, 1] (scan index units, row/col order)."""
    sy, sx = scan_shape
    k = params.overview_per_step
    m = params.overview_margin_steps
    shape = (int(np.ceil((sy - 1 + 2 * m) * k)) + 1, int(np.ceil((sx - 1 + 2 * m) * k)) + 1)
    a = np.deg2rad(session.overview_rotation_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / k
    o_centre = (np.asarray(shape) - 1) / 2
    s_centre = (np.asarray(scan_shape) - 1) / 2
    affine = np.eye(3)
    affine[:2, :2] = rot
    affine[:2, 2] = s_centre - rot @ o_centre
    return shape, affine


def render_overview(sample: Sample, scan_shape, session: SessionParams, params: SimParams, rng):
    """(overview float32 counts, 3x3 overview->scan affine)."""
    shape, affine = overview_transform(scan_shape, session, params)
    mfp = params.image_mfp_nm
    transmission = np.exp(-(sample.carbon_nm / mfp["carbon"] + sample.ice_nm / mfp["ice"]
                            + sample.crystal_nm / mfp["crystal"]))
    oy, ox = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    scan_y = affine[0, 0] * oy + affine[0, 1] * ox + affine[0, 2]
    scan_x = affine[1, 0] * oy + affine[1, 1] * ox + affine[1, 2]
    ry = sample.margin_px + scan_y * sample.step_px
    rx = sample.margin_px + scan_x * sample.step_px
    img = ndimage.map_coordinates(transmission, [ry, rx], order=1, mode="nearest")
    img = ndimage.gaussian_filter(img, params.overview_blur_px)
    gy, gx = rng.normal(0.0, params.overview_shading, size=2)
    shade = 1 + gy * (oy / shape[0] - 0.5) + gx * (ox / shape[1] - 0.5)
    counts = rng.poisson(img * shade * params.overview_counts)
    return counts.astype(np.float32), affine
