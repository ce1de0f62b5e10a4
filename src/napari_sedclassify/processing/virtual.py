"""Virtual images: the integrated image of a scan through virtual detectors.

Total intensity (every valid pixel), bright field (a disc about the direct beam) and annular
dark field (an annulus outside it), each about the frame's own centre when per-frame centres
are known. Radii in px, or in Å (the lattice spacing d seen at that radius) via the Geometry.
Masked pixels are excluded (not counted as zeros).
"""

from __future__ import annotations

import math

import numpy as np

from .pixels import PixelGrid, grid_for, grid_of
from .runner import FrameProcessor, FrameRunner, Output


class VirtualDetectors(FrameProcessor):
    """Outputs per frame: ``total`` (sum of all valid pixels) and one sum per annulus.

    annuli: name -> (inner_px, outer_px) about each frame's centre (outer may be inf); float64
    sums, NaN for an annulus when the frame has no centre. grid: where the pixels are. The totals
    are the runner's correction's (``takes_totals``), or added up here when none are given.
    """

    takes_totals = True

    def __init__(self, annuli: dict | None = None, grid: PixelGrid | None = None):
        self.grid = grid
        self.annuli = {k: (float(a), float(b)) for k, (a, b) in (annuli or {}).items()}
        for k, (a, b) in self.annuli.items():
            if not (0 <= a < b):
                raise ValueError(f"virtual detector {k!r}: need 0 <= inner < outer, got {a}, {b}")

    @property
    def needs_centres(self) -> bool:
        return bool(self.annuli)

    def outputs(self):
        return {name: Output((), "float64", np.nan) for name in ["total", *self.annuli]}

    def process_chunk(self, frames, centres, mask=None, totals=None):
        from .kernels import annular_sums

        n = frames.shape[0]
        names = list(self.annuli)
        r_in = np.array([self.annuli[k][0] for k in names], np.float64)
        r_out = np.array([self.annuli[k][1] for k in names], np.float64)
        total = np.empty(n, np.float64) if totals is None else np.array(totals, np.float64)
        sums = np.empty((n, len(names)), np.float64)
        if centres is None:
            centres = np.full((n, 2), np.nan)
        g = grid_of(self.grid, frames.shape[1:])
        centres = np.ascontiguousarray(centres, dtype=np.float64)
        annular_sums(frames, g.to_physical(centres), centres, g.centres(0), g.centres(1), r_in, r_out, total, sums,
                     totals is not None)
        return {"total": total, **{k: sums[:, j] for j, k in enumerate(names)}}


def virtual_image(scan, inner_px: float = 0.0, outer_px: float | None = None, centre=None, *,
                  centres=None, inner_d_A: float | None = None, outer_d_A: float | None = None,
                  flatfield=None, progress=None, cancel=None, client=None, workers=None) -> np.ndarray:
    """Virtual image (scan_y, scan_x) float64: sum of counts in an annulus per frame, computed
    by the frame runner over the scan's frames (threads here, or a dask.distributed ``client``).

    inner_px=0, outer_px=None gives the total intensity (integrated image); a small outer
    radius gives bright field; inner radius beyond the direct beam gives annular dark field.
    centre: (cy, cx) px on the detector for every frame, default the detector centre;
    centres: (scan_y, scan_x, 2) per-frame centres instead (NaN: that frame is NaN).
    inner_d_A / outer_d_A: radii as the lattice spacing (Å) seen there (needs a calibrated
    geometry; replaces inner_px / outer_px). flatfield: a FlatField applied first (its masked
    pixels excluded). Missing frames are NaN. progress(done, total) frames; cancel() -> True
    stops with Cancelled.
    """
    g = scan.geometry
    if inner_d_A is not None or outer_d_A is not None:
        if not g.calibrated:
            raise ValueError(f"{scan.source or 'scan'}: radii in Å need a calibrated geometry")
        if inner_d_A is not None:
            inner_px = float(g.d_A_to_radius_px(inner_d_A))
        if outer_d_A is not None:
            outer_px = float(g.d_A_to_radius_px(outer_d_A))
    ky, kx = scan.detector_shape
    sy, sx = scan.scan_shape
    whole = inner_px <= 0 and outer_px is None
    annuli = {} if whole else {"annulus": (inner_px, math.inf if outer_px is None else outer_px)}
    if centres is not None:
        centres = np.asarray(centres, dtype=np.float64).reshape(sy, sx, 2)
    elif not whole:
        cy, cx = ((ky - 1) / 2, (kx - 1) / 2) if centre is None else centre
        centres = np.broadcast_to(np.array([cy, cx], np.float64), (sy, sx, 2))
    key = "total" if whole else "annulus"
    runner = FrameRunner([VirtualDetectors(annuli, grid_for(scan))], flatfield)
    given = None if centres is None else np.ascontiguousarray(centres).reshape(-1, 2)
    out = runner.run(scan, centres=given, progress=progress, cancel=cancel, client=client, workers=workers)
    img = out[key].reshape(sy, sx).astype(np.float64)
    img[scan.missing] = np.nan
    return img


def warm_up() -> None:
    """Load the compiled kernels an integrated image needs (numba reads them from its disk cache
    on first use: imports and LLVM work), by computing one on a tiny scan; e.g. in a background
    thread of an interactive application before the first scan is opened."""
    from ..scan import Scan

    for dtype in (np.uint16, np.uint8, np.uint32, np.float32):
        virtual_image(Scan(np.ones((2, 2, 16, 16), dtype=dtype)), workers=1)
