"""What the diffraction view shows for one scan point: the frame (gain-corrected when a
flat-field is loaded), its masked pixels, its centre and its RIA about that centre.

Reads only that one frame from the lazy scan. Centre and RIA are the stored preprocessing
results (``ria[iy, ix]``, what the classifiers read) when the scan has them; before that, the
frame alone goes through ``preprocess`` (default parameters, centre found in this frame), so the
same pixel grid, flat-field and saturation rules apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layers import find_scan
from .state import flatfield_of, preprocess_of


@dataclass
class FrameDetails:
    """frame: (ky, kx) float32 counts (NaN where masked); mask: (ky, kx) bool or None;
    centre: (cy, cx) px or None when no beam; centre_kind: where the centre comes from;
    radii: RIA bin centres (px); ria: mean counts per bin (None without a centre)."""

    frame: np.ndarray
    mask: np.ndarray | None
    centre: tuple | None
    centre_kind: str
    radii: np.ndarray | None
    ria: np.ndarray | None


def detector_mask(layer):
    """Pixels excluded on this scan's detector: the flat-field's dead/hot pixels plus those the
    preprocessing found; None when neither is known."""
    masks = [m for m in (getattr(flatfield_of(layer), "mask", None), getattr(preprocess_of(layer), "mask", None))
             if m is not None]
    if not masks:
        return None
    return np.logical_or.reduce([np.asarray(m, bool) for m in masks])


def frame_details(layer, iy: int, ix: int) -> FrameDetails:
    """FrameDetails of scan point (iy, ix) of the scan ``layer`` carries."""
    from ..processing import FlatField

    scan = find_scan(layer)
    raw = scan.frame(iy, ix)
    mask = detector_mask(layer)
    flatfield = flatfield_of(layer)
    if mask is not None:
        flatfield = (flatfield or FlatField.identity(scan.detector_shape)).with_mask(mask)
    frame = flatfield.apply(raw) if flatfield is not None else raw.astype(np.float32)
    result, at = preprocess_of(layer), (iy, ix)
    if result is not None and tuple(result.scan_shape) == tuple(scan.scan_shape):
        kind = "fitted descan" if result.params.centring == "fitted" else "per-frame"
    else:
        kind, at = "found in this frame", (0, 0)
        result = None if scan.missing[iy, ix] else _preprocess_alone(scan, raw, flatfield)
    centre = None if result is None else result.centres_used[at]
    if centre is None or not np.all(np.isfinite(centre)):
        return FrameDetails(frame, mask, None, kind, None, None)
    return FrameDetails(frame, mask, tuple(float(c) for c in centre), kind, np.asarray(result.radii_px),
                        np.asarray(result.ria[at]))


def _preprocess_alone(scan, raw, flatfield):
    """The PreprocessResult of the frame ``raw`` of ``scan`` preprocessed on its own (default
    parameters), or None when it has no beam to set the radii from."""
    from ..pipeline.preprocess import preprocess
    from ..processing import PreprocessParams
    from ..scan import Scan

    alone = Scan(raw[None, None], scan.geometry, metadata=scan.metadata, source=scan.source)
    try:
        return preprocess(alone, PreprocessParams(workers=1), flatfield)
    except ValueError:
        return None
