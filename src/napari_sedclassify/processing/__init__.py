"""Preprocessing engine: flat-field, centring, descan, RIA, crops, virtual images, PCC.

One frame-processing contract (:class:`FrameProcessor`) and one runner (:class:`FrameRunner`)
that fuses processors into a single pass over frames from a numpy stack, a dask array, a
dask.distributed cluster or a live stream. Compiled kernels (numba) load on first use.
No napari or Qt here.
"""

from .centre import CentreFinder, find_centre
from .crop import CentralCrop, FrameBinning
from .descan import DescanFit, fit_descan
from .flatfield import FlatField, detect_bad_pixels, load_flatfield
from .params import NoBeamInSample, PreprocessParams, default_ria_r_max_px
from .plan import PreprocessPlan, calibration_sample_index, calibration_windows, no_beam_message
from .pcc import PCC, frame_features, pcc_matrix, pcc_row
from .ria import RadialProfile, radial_profile
from .runner import ChunkResult, FrameProcessor, FrameRunner, Output
from .virtual import VirtualDetectors, virtual_image, warm_up


__all__ = [
    "CentralCrop",
    "CentreFinder",
    "ChunkResult",
    "DescanFit",
    "FlatField",
    "FrameBinning",
    "FrameProcessor",
    "FrameRunner",
    "NoBeamInSample",
    "Output",
    "PCC",
    "PreprocessParams",
    "PreprocessPlan",
    "RadialProfile",
    "VirtualDetectors",
    "calibration_sample_index",
    "calibration_windows",
    "default_ria_r_max_px",
    "detect_bad_pixels",
    "find_centre",
    "fit_descan",
    "frame_features",
    "load_flatfield",
    "no_beam_message",
    "pcc_matrix",
    "pcc_row",
    "radial_profile",
    "virtual_image",
    "warm_up",
]
