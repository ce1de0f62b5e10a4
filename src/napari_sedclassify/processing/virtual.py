"""Virtual images: the integrated image of a scan from a detector mask (px)."""

from __future__ import annotations

import numpy as np


def annular_mask(detector_shape, centre, inner_px: float = 0.0, outer_px: float | None = None):
    """Boolean detector mask of the annulus inner_px <= r < outer_px about centre (cy, cx) px."""
    ky, kx = detector_shape
    cy, cx = centre
    yy, xx = np.ogrid[:ky, :kx]
    r2 = (yy - cy) ** 2 + (xx - cx) ** 2
    m = r2 >= inner_px**2
    if outer_px is not None:
        m &= r2 < outer_px**2
    return m


def virtual_image(scan, inner_px: float = 0.0, outer_px: float | None = None, centre=None):
    """Lazy virtual image (scan_y, scan_x) float64: sum of counts in an annulus per frame.

    inner_px=0, outer_px=None gives the total intensity (integrated image); a small outer
    radius gives bright field; inner radius beyond the direct beam gives annular dark field.
    centre: (cy, cx) px on the detector, default the detector centre.
    Missing frames are NaN.
    """
    import dask.array as da

    ky, kx = scan.detector_shape
    if centre is None:
        centre = ((ky - 1) / 2, (kx - 1) / 2)
    mask = annular_mask((ky, kx), centre, inner_px, outer_px)
    data = scan.data

    def _block(block):
        b = np.asarray(block)
        return b.reshape(b.shape[:2] + (-1,))[..., mask.ravel()].sum(axis=-1, dtype=np.float64)

    img = data.map_blocks(_block, drop_axis=(2, 3), dtype=np.float64, chunks=data.chunks[:2])
    if scan.missing.any():
        img = da.where(da.from_array(scan.missing), np.nan, img)
    return img
