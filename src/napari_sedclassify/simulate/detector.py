"""The Medipix3 quad: four chips, wide edge pixels, gain map, dead and hot pixels, 12-bit counters.

Two coordinate systems along each detector axis:

- index px: array coordinates, pixel centres at integers (what every reader and processor uses);
- physical px: position on the sensor in units of the pixel pitch. The pixels along the chip
  boundaries are ``edge_pixel_width`` pitches wide (they bridge the gap between chips), so across the
  chip cross the physical and index coordinates differ by 2 (width - 1) px.

Diffraction is drawn in physical px (rings are circles on the sensor); each pixel collects what falls
on its area, which is why summed frames show the bright cross of the chip boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .params import HARDWARE_SEED, SessionParams, detector_scale


@dataclass
class Detector:
    """One session's detector at one size.

    edges: (n+1,) physical px of the pixel boundaries along an axis (same for rows and columns).
    efficiency: (n, n) float32 expected counts per electron per unit density: gain x pixel area, 0 dead.
    hot_index / hot_rate: flat indices and counts/frame of hot pixels.
    """

    detector_px: int
    edges: np.ndarray
    gain: np.ndarray
    dead: np.ndarray
    hot_index: np.ndarray
    hot_rate: np.ndarray
    efficiency: np.ndarray
    counter_max: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.detector_px, self.detector_px)

    @property
    def centres(self) -> np.ndarray:
        """(n,) physical px of the pixel centres."""
        return 0.5 * (self.edges[:-1] + self.edges[1:])

    @property
    def physical_size(self) -> float:
        return float(self.edges[-1])

    def to_index(self, phys):
        """Physical px -> index px (pixel centres at integers); piecewise linear."""
        return np.interp(phys, self.edges, np.arange(self.detector_px + 1) - 0.5)

    def to_physical(self, index):
        """Index px -> physical px; inverse of :meth:`to_index`."""
        return np.interp(index, np.arange(self.detector_px + 1) - 0.5, self.edges)

    def read(self, expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Count a frame: ``expected`` (n*n,) float32 counts already through the efficiency.

        Adds hot pixels, Poisson counting noise and counter saturation; returns (n, n) uint16.
        """
        lam = expected
        if self.hot_index.size:
            lam[self.hot_index] += self.hot_rate
        counts = poisson_counts(lam, rng)
        np.minimum(counts, self.counter_max, out=counts)
        return counts.reshape(self.shape)


def make_detector(session: SessionParams, detector_px: int) -> Detector:
    """The detector of ``session`` at ``detector_px`` (deterministic).

    Dead and hot pixels are hardware (the same in every session); the gain map is recalibrated per
    session (seeded from the session name, or ``session.gain_seed``).
    """
    n = int(detector_px)
    b = detector_scale(n)
    # pixel widths (pitches): 1, except the two at the chip boundary; a pixel of a smaller detector
    # spans b reference pitches, and its edge pixel keeps the same extra width
    widths = np.ones(n)
    widths[n // 2 - 1: n // 2 + 1] = 1.0 + (session.edge_pixel_width - 1.0) / b
    edges = np.concatenate([[0.0], np.cumsum(widths)])
    area = np.outer(widths, widths)

    hw = np.random.default_rng([HARDWARE_SEED, n])
    n_px = n * n
    order = hw.permutation(n_px)
    n_dead = int(round(session.dead_fraction * n_px))
    n_hot = int(round(session.hot_fraction * n_px))
    dead = np.zeros(n_px, dtype=bool)
    dead[order[:n_dead]] = True
    hot_index = np.sort(order[n_dead : n_dead + n_hot])
    lo, hi = session.hot_rate_counts
    hot_rate = np.exp(hw.uniform(np.log(lo), np.log(hi), size=hot_index.size)).astype(np.float32)

    g = np.random.default_rng([session.resolved_gain_seed, n])
    chip = 1.0 + g.normal(0.0, session.chip_gain_sigma, size=(2, 2))
    gain = 1.0 + g.normal(0.0, session.gain_sigma, size=(n, n))
    gain *= np.kron(chip, np.ones((n // 2, n // 2)))
    gain = np.clip(gain, 0.3, 2.0).astype(np.float32)

    efficiency = (gain * area).astype(np.float32)
    efficiency.ravel()[dead] = 0.0
    return Detector(n, edges, gain, dead.reshape(n, n), hot_index, hot_rate, efficiency, int(session.counter_max))


def poisson_counts(lam: np.ndarray, rng: np.random.Generator, cut: float = 10.0) -> np.ndarray:
    """Poisson deviates (uint16) of a flat float array of means, fast for sparse frames.

    Pixels with mean <= ``cut`` count the arrivals of a unit-rate Poisson process within ``lam``
    (sums of exponential waiting times), which touches only pixels that have counts; brighter pixels
    use numpy's Poisson generator. Exact in distribution; values above 65535 are clipped.
    """
    lam = np.asarray(lam, dtype=np.float32).ravel()
    out = np.zeros(lam.size, dtype=np.uint16)
    wait = rng.standard_exponential(lam.size, dtype=np.float32)
    idx = np.flatnonzero(wait < lam)
    bright = lam[idx] > cut
    if bright.any():
        b = idx[bright]
        out[b] = np.minimum(rng.poisson(lam[b].astype(np.float64)), 65535)
        idx = idx[~bright]
    wait = wait[idx]
    mean = lam[idx]
    k = 0
    while idx.size:
        k += 1
        out[idx] = k
        wait += rng.standard_exponential(idx.size, dtype=np.float32)
        more = wait < mean
        idx, wait, mean = idx[more], wait[more], mean[more]
    return out


def flood_frames(detector: Detector, counts_per_px: float, n_frames: int, rng) -> np.ndarray:
    """(n_frames, n, n) uint16 frames of a uniform flood of ``counts_per_px`` per unit pitch area."""
    expected = (detector.efficiency * np.float32(counts_per_px)).ravel()
    return np.stack([detector.read(expected.copy(), rng) for _ in range(n_frames)])
