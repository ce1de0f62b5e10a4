"""Scan: a lazy 4D diffraction scan (scan_y, scan_x, det_y, det_x) with its geometry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .geometry import Geometry


def parse_scan_shape(scan_shape) -> tuple[int, int]:
    """(scan_y, scan_x) as two positive integers; ValueError saying what is wrong otherwise."""
    try:
        sy, sx = (int(v) for v in scan_shape)
    except (TypeError, ValueError):
        raise ValueError(f"wrong scan shape {scan_shape!r}: expected (scan_y, scan_x)") from None
    if sy < 1 or sx < 1:
        raise ValueError(f"wrong scan shape {sy}x{sx}: both sides must be at least 1")
    return sy, sx


@dataclass
class Scan:
    """A 4D scan held lazily as a dask array.

    data: dask array (scan_y, scan_x, det_y, det_x); never computed whole.
    geometry: detector and calibration.
    missing: bool (scan_y, scan_x), True where no frame was recorded (interrupted
        acquisition, dropped frames); those positions hold zeros in ``data``.
    metadata: anything else the file says (exposure, timestamps, dtype on disk...).
    source: path of the file it was read from, if any.
    """

    data: Any
    geometry: Geometry = field(default_factory=Geometry)
    missing: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self):
        if not hasattr(self.data, "chunks"):
            import dask.array as da

            self.data = da.from_array(self.data, chunks=(1, -1, -1, -1))
        if self.data.ndim != 4:
            raise ValueError(
                f"{self.source or 'scan'}: expected a 4D array (scan_y, scan_x, det_y, det_x), "
                f"got shape {tuple(self.data.shape)}"
            )
        if self.missing is None:
            self.missing = np.zeros(self.scan_shape, dtype=bool)
        self.missing = np.asarray(self.missing, dtype=bool)
        if self.missing.shape != self.scan_shape:
            raise ValueError(
                f"{self.source or 'scan'}: missing-frame mask shape {self.missing.shape} "
                f"does not match scan shape {self.scan_shape}"
            )
        if tuple(self.geometry.detector_shape) != self.detector_shape:
            self.geometry = self.geometry.replace(detector_shape=self.detector_shape)

    @property
    def scan_shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.data.shape[:2])

    @property
    def detector_shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.data.shape[2:])

    @property
    def n_frames(self) -> int:
        return self.scan_shape[0] * self.scan_shape[1]

    @property
    def dtype(self):
        return self.data.dtype

    def frames(self):
        """The scan as a flat dask stack of frames (N, det_y, det_x), row-major over the scan."""
        return self.data.reshape((self.n_frames,) + self.detector_shape)

    def frame(self, iy: int, ix: int) -> np.ndarray:
        """One frame as a numpy array (reads only that frame, in this thread: a scheduler function,
        since the default or a named scheduler makes dask import dask.distributed)."""
        from dask.local import get_sync

        return np.asarray(self.data[iy, ix].compute(scheduler=get_sync))

    def __repr__(self) -> str:
        return (
            f"Scan(scan_shape={self.scan_shape}, detector_shape={self.detector_shape}, "
            f"dtype={self.dtype}, missing={int(self.missing.sum())}, source={self.source!r})"
        )
