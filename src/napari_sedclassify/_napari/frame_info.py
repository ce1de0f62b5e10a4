"""What the diffraction view shows for one scan point: the frame (gain-corrected when a
flat-field is loaded), its masked pixels, its centre and its RIA about that centre.

Reads only that one frame from the lazy scan. The centre comes from the centring results
(per-frame or fitted, as chosen) when they exist, else it is found in this frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layers import find_scan
from .state import centres_of, flatfield_of, preprocess_of


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
    from ..processing import FlatField, find_centre, radial_profile

    scan = find_scan(layer)
    raw = scan.frame(iy, ix)
    mask = detector_mask(layer)
    flatfield = flatfield_of(layer)
    if mask is not None:
        flatfield = (flatfield or FlatField.identity(scan.detector_shape)).with_mask(mask)
    frame = flatfield.apply(raw) if flatfield is not None else raw.astype(np.float32)
    centres = centres_of(layer)
    centre, kind = None, "found in this frame"
    if centres is not None and np.all(np.isfinite(centres[iy, ix])):
        centre = tuple(float(c) for c in centres[iy, ix])
        kind = "fitted descan" if preprocess_of(layer).params.centring == "fitted" else "per-frame"
    elif not scan.missing[iy, ix]:
        centre = find_centre(raw, flatfield)
    radii = ria = None
    if centre is not None:
        radii, ria, _ = radial_profile(raw, centre, flatfield=flatfield)
    return FrameDetails(frame, mask, centre, kind, radii, ria)
