"""Central crop of each frame around its own centre (the paper's CNN input: radius 150 px).

A crop is 2 half x 2 half detector px, placed so that the frame's centre falls within half a
pixel of the crop's geometric middle ((h - 1)/2, (w - 1)/2): crops keep whole detector pixels
(no interpolation, counting statistics intact), so the remaining offset is below 0.5 px (below
0.5/bin after binning). Optional b x b binning takes the mean of the valid pixels of each block.
Pixels that are masked or beyond the detector edge are 0 (a CNN needs finite inputs; they stay
out of binned means); frames without a centre give an all-NaN crop.
"""

from __future__ import annotations

import numpy as np

from .runner import FrameProcessor, Output


class CentralCrop(FrameProcessor):
    """Output per frame: crop (2 half / bin, 2 half / bin) float32."""

    def __init__(self, half: int, bin: int = 1):
        self.half = int(half)
        self.bin = int(bin)
        if self.half < 1 or self.bin < 1 or (2 * self.half) % self.bin:
            raise ValueError(f"crop: 2 x half ({2 * self.half}) must divide by bin ({self.bin})")

    @property
    def size(self) -> int:
        return 2 * self.half // self.bin

    def outputs(self):
        return {"crop": Output((self.size, self.size), "float32", np.nan)}

    def process_chunk(self, frames, centres, mask=None):
        from .kernels import central_crops

        out = np.empty((frames.shape[0], self.size, self.size), np.float32)
        central_crops(frames, np.ascontiguousarray(centres, dtype=np.float64), self.half, self.bin, out)
        return {"crop": out}


class FrameBinning(FrameProcessor):
    """Output per frame: binned (ky // b, kx // b) float32, mean of valid pixels (NaN if none).
    Frames as features for PCC; needs no centre."""

    needs_centres = False

    def __init__(self, detector_shape, bin: int = 8):
        self.bin = int(bin)
        self.shape = (int(detector_shape[0]) // self.bin, int(detector_shape[1]) // self.bin)
        if min(self.shape) < 1:
            raise ValueError(f"binning {bin} leaves nothing of a {tuple(detector_shape)} detector")

    def outputs(self):
        return {"binned": Output(self.shape, "float32", np.nan)}

    def process_chunk(self, frames, centres=None, mask=None):
        from .kernels import bin_means

        out = np.empty((frames.shape[0],) + self.shape, np.float32)
        bin_means(frames, self.bin, out)
        return {"binned": out}
