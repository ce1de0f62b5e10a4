"""Pearson cross-correlation (PCC) between the frames of a scan (the paper's section 2.3).

Features per frame: its RIA, or its (binned) pixels. Each frame's feature vector is
standardised once (mean 0, unit norm); the PCC of frames i and j is then the dot product of
their vectors, so one row (frame i against all others, shown as a scan-shaped map) is a single
matrix-vector product and the full matrix one matrix product.

NaN-safety: features (columns) that are not finite in every usable frame are dropped (e.g. the
outermost RIA bins that an off-centre beam leaves empty); frames that are missing, have no
finite features or are constant give NaN rows and columns.
"""

from __future__ import annotations

import numpy as np


class PCC:
    """Standardised features of a scan, ready for PCC rows and matrices.

    features: (sy, sx, F) or (N, F) (more trailing dimensions are flattened, e.g. binned frames
    (sy, sx, h, w)). missing: optional (sy, sx) / (N,) bool of frames to leave out (NaN).
    """

    def __init__(self, features, missing=None, scan_shape=None):
        f = np.asarray(features)
        if scan_shape is None:
            scan_shape = f.shape[:2] if f.ndim >= 3 else (f.shape[0],)
        self.scan_shape = tuple(int(s) for s in scan_shape)
        n = int(np.prod(self.scan_shape))
        f = f.reshape(n, -1).astype(np.float64)
        usable = np.isfinite(f).any(axis=1)
        if missing is not None:
            usable &= ~np.asarray(missing, bool).ravel()
        cols = np.isfinite(f[usable]).all(axis=0) if usable.any() else np.zeros(f.shape[1], bool)
        if cols.sum() < 2:
            raise ValueError(f"PCC needs at least 2 features finite in every frame, found {int(cols.sum())}")
        x = f[:, cols]
        x = x - x.mean(axis=1, keepdims=True)
        norm = np.sqrt(np.einsum("ij,ij->i", x, x))
        usable &= np.isfinite(norm) & (norm > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = x / norm[:, None]
        z[~usable] = 0.0
        self._z = z.astype(np.float32)
        self.usable = usable
        self.n_features = int(cols.sum())

    @property
    def n_frames(self) -> int:
        return self._z.shape[0]

    def row(self, index) -> np.ndarray:
        """PCC of one frame (flat index, or (iy, ix)) with every frame, shaped like the scan
        (float32, NaN for unusable frames; 1 at the frame itself)."""
        if isinstance(index, tuple) or (np.ndim(index) == 1 and len(index) == 2 and len(self.scan_shape) == 2):
            index = int(np.ravel_multi_index(tuple(int(i) for i in index), self.scan_shape))
        index = int(index)
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} is outside the scan of {self.n_frames} frames")
        out = self._z @ self._z[index]
        out[~self.usable] = np.nan
        if not self.usable[index]:
            out[:] = np.nan
        return out.reshape(self.scan_shape)

    def matrix(self, max_frames: int = 20000) -> np.ndarray:
        """Full N x N PCC matrix (float32; NaN rows/columns for unusable frames)."""
        if self.n_frames > max_frames:
            raise ValueError(f"a full PCC matrix of {self.n_frames} frames needs "
                             f"{self.n_frames**2 * 4 / 2**30:.1f} GiB; use rows (PCC.row) instead")
        m = self._z @ self._z.T
        m[~self.usable] = np.nan
        m[:, ~self.usable] = np.nan
        return m


def pcc_row(features, index, missing=None) -> np.ndarray:
    """PCC map (scan-shaped) of frame ``index`` against all frames. Build a :class:`PCC` once
    instead when asking for many rows."""
    return PCC(features, missing).row(index)


def pcc_matrix(features, missing=None) -> np.ndarray:
    """Full N x N PCC matrix of a small scan's features (sy, sx, F) or (N, F)."""
    return PCC(features, missing).matrix()


def frame_features(scan, bin: int = 8, flatfield=None, progress=None, cancel=None, client=None) -> np.ndarray:
    """Binned frames (sy, sx, ky // bin, kx // bin) float32 of a scan as PCC features
    (mean of valid pixels per block, flat-field applied when given)."""
    from .crop import FrameBinning
    from .runner import FrameRunner

    runner = FrameRunner([FrameBinning(scan.detector_shape, bin)], flatfield)
    out = runner.run(scan, progress=progress, cancel=cancel, client=client)["binned"]
    out[scan.missing.ravel()] = np.nan
    return out.reshape(scan.scan_shape + out.shape[1:])
