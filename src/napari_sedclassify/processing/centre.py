"""Direct-beam centre of each frame, to sub-pixel precision.

Per frame: sums of b x b pixel blocks locate the beam coarsely (the direct beam carries far more
electrons than any Bragg spot or hot pixel); then a thresholded centre of mass (see the kernels)
refines it in a window of about 2.5 beam radii, iterated until it stops moving, and a circle
fitted to the beam's edge. Masked pixels (NaN) are ignored. A frame in which no disc stands out
of the background by ``min_snr`` Poisson sigmas (blanked beam, all zeros, all NaN) gets a NaN
centre and beam_found False. A beam whose top sits at the counter's full value (saturated) needs
half that: the counter shows a lower bound of its height. On a 6-bit Merlin (full at 63) a
saturated beam on a halo of 30 counts stands 6 sigmas out, never 10. A window that lies inside a
disc wider than itself (its border over half as bright as its peak) is doubled until it holds
the disc's edge: a convergent beam's disc can be 20-60 px across.
"""

from __future__ import annotations

import numpy as np

from .pixels import PixelGrid, grid_of
from .runner import FrameProcessor, Output


class CentreFinder(FrameProcessor):
    """Outputs per frame: centre (2,) float64 (cy, cx) px, NaN without beam; beam_found bool;
    beam_radius_px float32 (radius of the disc above half maximum, px); beam_peak_counts float32
    (the disc's k_peak-th brightest corrected value less the pedestal: its height; NaN without beam).

    beam_radius_px: expected radius (sets the first search window; None = start at 16 px and
    grow to fit). coarse_bin: block size of the coarse search (px). min_snr: beam detection
    threshold. k_peak: rank of the pixel taken as the beam's peak. grid: where the pixels are
    (wide chip-edge pixels); default all equal. warm_start: start each frame's search from the
    previous frame's centre instead of the coarse maximum of that frame (faster for the centring
    alone, not measurably for a whole preprocessing pass). The default, a cold start, makes a
    frame's centre a function of the frame alone: the same to the bit whatever chunk it travels in
    (batch, live, a stream, the frame view). A warm start agrees for all but rare frames whose beam
    has two distant fixed windows (17 of 17,280 frame/chunking combinations).
    saturation_counts: the counter's full value in raw counts (the plan's; saturated pixels keep
    their raw value through the flat-field), None when unknown. pedestal_counts: what an
    electron-free pixel reads in the frames it is given (after the flat-field: 0 for counts and
    for frames whose pedestal the plan subtracts as the dark level), what the search takes as no
    electron (the plan's ``centre_floor_counts``, from its calibration sample: one value for every
    frame, so that batch and live agree); None: measured on each chunk's first frame
    (:func:`pedestal_of`).
    expected_centre_px, expected_peak_counts: where the plan's calibration sample showed the beam
    (cy, cx index px) and its peak above the pedestal (None: unknown). With them and a beam radius
    each frame's search starts there and keeps what it finds when it is the beam (its area and
    peak as the sample's), which spares most frames the coarse search over the whole frame; the
    centre is the same fixed point of the centre of mass, and still a function of the frame and
    the plan alone (``find_centres``).
    """

    needs_centres = False

    def __init__(self, beam_radius_px: float | None = None, coarse_bin: int | None = None,
                 min_snr: float = 10.0, k_peak: int = 9, grid: PixelGrid | None = None, warm_start: bool = False,
                 saturation_counts: float | None = None, pedestal_counts: float | None = None,
                 expected_centre_px: tuple[float, float] | None = None, expected_peak_counts: float | None = None):
        self.beam_radius_px = beam_radius_px
        self.pedestal_counts = None if pedestal_counts is None else float(pedestal_counts)
        self.saturation_counts = None if saturation_counts is None else float(saturation_counts)
        self.grid = grid
        self.coarse_bin = coarse_bin
        self.min_snr = float(min_snr)
        self.k_peak = int(k_peak)
        self.warm_start = bool(warm_start)
        self.expected_centre_px = None if expected_centre_px is None else tuple(float(v) for v in expected_centre_px)
        self.expected_peak_counts = None if expected_peak_counts is None else float(expected_peak_counts)

    def outputs(self):
        return {"centre": Output((2,), "float64", np.nan), "beam_found": Output((), "bool", False),
                "beam_radius_px": Output((), "float32", np.nan), "beam_peak_counts": Output((), "float32", np.nan)}

    def process_chunk(self, frames, centres=None, mask=None):
        from .kernels import find_centres

        n, ky, kx = frames.shape
        b = self.coarse_bin or max(2, min(8, min(ky, kx) // 32))
        half0 = 16 if self.beam_radius_px is None else int(2.5 * self.beam_radius_px) + 3
        half_max = max(half0, min(ky, kx) // 2)
        c = np.empty((n, 2), np.float64)
        found = np.empty(n, np.bool_)
        radius = np.empty(n, np.float32)
        peak = np.empty(n, np.float32)
        g = grid_of(self.grid, (ky, kx))
        step = 2 if self.beam_radius_px is not None and self.beam_radius_px >= 2 else 1  # coarse search rows
        sat = np.inf if self.saturation_counts is None else self.saturation_counts
        floor = pedestal_of(frames[:1]) if self.pedestal_counts is None else self.pedestal_counts
        find_centres(frames, b, step, half0, half_max, self.k_peak, self.min_snr, sat, floor, g.centres(0), g.centres(1),
                     g.widths(0), g.widths(1), g.edges(0), g.edges(1), c, found, radius, peak, self.warm_start,
                     self._expected())
        return {"centre": c, "beam_found": found, "beam_radius_px": radius, "beam_peak_counts": peak}

    def _expected(self) -> np.ndarray:
        """``find_centres``'s expected beam: (cy, cx, area px^2, peak above the floor), NaN where unknown."""
        if self.expected_centre_px is None or self.beam_radius_px is None or self.expected_peak_counts is None:
            return np.full(4, np.nan)
        return np.array([*self.expected_centre_px, np.pi * self.beam_radius_px**2, self.expected_peak_counts],
                        np.float64)


#: A counting detector's electron-free pixels read exactly its pedestal: at least this share of the
#: sampled values at the lowest one says so (a sparse diffraction frame: most pixels count nothing).
PEDESTAL_SHARE = 0.02
#: About this many values of the frames are read for the pedestal (every other row, or fewer).
PEDESTAL_VALUES = 2**20


def pedestal_of(frames, dark=None) -> float:
    """The level an electron-free pixel reads in ``frames`` (raw or corrected; ``dark`` (ky, kx)
    subtracted first when given): a counting detector's lowest value when at least PEDESTAL_SHARE
    of the values sit at it (0 for counts; -100 for int32 counts with 100 subtracted; NaN values
    left out); else, for data with a read noise (float or signed frames that go below zero, or
    float frames above zero that are not counts), the mode of the values (:func:`half_sample_mode`:
    the electron-free pixels, most of a narrow-beam frame, spread about it); else 0 (counts
    without an empty pixel: no pedestal to see)."""
    frames = np.asarray(frames)
    if frames.size == 0 or frames.dtype.kind not in "uif":
        return 0.0
    step = max(2, -(-frames.size // PEDESTAL_VALUES))  # every step-th row
    v = frames[..., ::step, :]
    if dark is not None:
        v = v - np.asarray(dark, np.float32)[::step, :]
    v = v.ravel()
    v = v[np.isfinite(v)] if v.dtype.kind == "f" else v
    if v.size == 0:
        return 0.0
    low = v.min()
    if np.count_nonzero(v == low) >= PEDESTAL_SHARE * v.size:
        return float(low)
    if low >= 0 and (v.dtype.kind in "ui" or np.array_equal(v, np.round(v))):
        return 0.0
    return half_sample_mode(v)


def half_sample_mode(values) -> float:
    """The mode of ``values`` (Bickel and Fruehwirth's half-sample mode: the densest half of the
    sorted values, then of that half, ... down to 3 values, their mean)."""
    x = np.sort(np.asarray(values, np.float64).ravel())
    while x.size > 3:
        h = (x.size + 1) // 2
        i = int(np.argmin(x[h - 1:] - x[:x.size - h + 1]))
        x = x[i:i + h]
    return float(x.mean())


def find_centre(frame, flatfield=None, **kwargs) -> tuple[float, float] | None:
    """Centre (cy, cx) px of one raw frame (flat-field applied when given), None without beam."""
    from .runner import FrameRunner

    part = FrameRunner([], flatfield, CentreFinder(**kwargs)).run_chunk(np.asarray(frame)[None])
    if not part.values["beam_found"][0]:
        return None
    cy, cx = part.values["centre"][0]
    return float(cy), float(cx)
