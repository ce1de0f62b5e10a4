"""Where detector pixels really are: Medipix3 quads have wide pixels along the chip boundaries.

A quad of 2 x 2 chips has, on each axis, the two pixels next to the boundary in the middle
about ``edge_pixel_width`` pitches wide (the bright cross of a summed image). Index px (pixel
centres at integers, what arrays and the reported centres use) are then not distances: a
pixel beyond the cross sits 2 (w - 1) pitches farther than its index says. Centring, RIA and
virtual detectors measure distances in physical px (pitches) on this grid and report centres in
index px. With ``edge_pixel_width`` 1 both coordinates are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np


@dataclass(frozen=True)
class PixelGrid:
    """Pixel positions along both detector axes. shape: (ky, kx); edge_pixel_width: pitches."""

    shape: tuple
    edge_pixel_width: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if not self.edge_pixel_width >= 1.0:
            raise ValueError(f"edge_pixel_width must be >= 1 pitch, got {self.edge_pixel_width}")

    @cached_property
    def _axes(self):
        """Per axis: (widths (n,), edges (n + 1,), centres (n,)), computed once."""
        out = []
        for n in self.shape:
            w = np.ones(n)
            if self.edge_pixel_width != 1.0 and n >= 4:
                w[n // 2 - 1: n // 2 + 1] = self.edge_pixel_width
            e = np.concatenate([[0.0], np.cumsum(w)]) - 0.5
            out.append((w, e, 0.5 * (e[:-1] + e[1:])))
        return tuple(out)

    def edges(self, axis: int) -> np.ndarray:
        """(n + 1,) physical px of the pixel boundaries (index -0.5 is physical -0.5)."""
        return self._axes[axis][1]

    def centres(self, axis: int) -> np.ndarray:
        """(n,) physical px of the pixel centres (= index for ordinary pixels before the cross)."""
        return self._axes[axis][2]

    def widths(self, axis: int) -> np.ndarray:
        """(n,) pixel widths (pitches)."""
        return self._axes[axis][0]

    @property
    def uniform(self) -> bool:
        return self.edge_pixel_width == 1.0

    def to_physical(self, centres) -> np.ndarray:
        """(..., 2) index px (cy, cx) -> physical px (NaN stays NaN)."""
        return self._convert(centres, to_physical=True)

    def to_index(self, centres) -> np.ndarray:
        """(..., 2) physical px -> index px (NaN stays NaN)."""
        return self._convert(centres, to_physical=False)

    def _convert(self, centres, to_physical: bool) -> np.ndarray:
        c = np.asarray(centres, dtype=np.float64)
        if self.uniform:
            return c.copy()
        out = np.empty_like(c)
        for axis in (0, 1):
            index = np.arange(self.shape[axis] + 1) - 0.5
            xp, fp = (index, self.edges(axis)) if to_physical else (self.edges(axis), index)
            out[..., axis] = np.interp(c[..., axis], xp, fp)
        out[np.isnan(c)] = np.nan
        return out


def grid_for(scan_or_shape, edge_pixel_width: float | None = None) -> PixelGrid:
    """PixelGrid of a scan: edge_pixel_width given, else the scan's metadata ``edge_pixel_width``
    (simulated scans say it), else 1."""
    if hasattr(scan_or_shape, "detector_shape"):
        shape = scan_or_shape.detector_shape
        if edge_pixel_width is None:
            edge_pixel_width = (getattr(scan_or_shape, "metadata", None) or {}).get("edge_pixel_width")
    else:
        shape = scan_or_shape
    return PixelGrid(shape, float(edge_pixel_width or 1.0))


@lru_cache(maxsize=16)
def _uniform(shape: tuple) -> PixelGrid:
    return PixelGrid(shape)


def grid_of(grid: PixelGrid | None, shape) -> PixelGrid:
    """grid, checked against the frame shape; a uniform grid when None."""
    if grid is None:
        return _uniform(tuple(int(s) for s in shape))
    if tuple(grid.shape) != tuple(shape):
        raise ValueError(f"pixel grid {grid.shape} does not match frames {tuple(shape)}")
    return grid
