"""Options every command that opens scans shares: the scan shape and the calibration values
(and, with ``executor=True``, where the work runs); checks and output the commands share.

Values given here override what the file says (and a ``sedclassify calibrate --write``
sidecar); what nobody states stays marked "assumed" (see ``sedclassify info``).
"""

from __future__ import annotations

import json
from pathlib import Path

from . import CLIError


def add_scan_options(p, *, scan_shape: bool = True, dataset: bool = False, executor: bool = False) -> None:
    """Add --camera-length, --pixel-size, --voltage, --scan-step (and --scan-shape, --dataset, and
    --scheduler / --workers with ``executor``) to parser ``p``."""
    if dataset:
        p.add_argument("--dataset", help="array to read in files that hold several (HDF5, MATLAB, zarr)")
    g = p.add_argument_group("calibration (overrides the file; unset values keep the file's or stay assumed)")
    g.add_argument("--camera-length", type=float, metavar="MM", dest="camera_length_mm",
                   help="effective camera length in mm (fit it from the data with `sedclassify calibrate`)")
    g.add_argument("--pixel-size", type=float, metavar="UM", dest="pixel_size_um",
                   help="detector pixel pitch in µm (55 for Medipix3/Timepix; 110 for 2x2-binned frames)")
    g.add_argument("--voltage", type=float, metavar="KV", dest="voltage_kv", help="accelerating voltage in kV")
    g.add_argument("--scan-step", type=float, metavar="NM", dest="scan_step_nm", help="distance between scan points in nm")
    g.add_argument("--edge-pixel-width", type=float, metavar="PITCHES",
                   help="width of a Medipix3 quad's wide pixels along its chip boundaries, in pixel pitches, 1 = "
                        "all pixels equal (default: the file's, else measured from the frames: the wide pixels "
                        "collect that many times their neighbours' counts)")
    if scan_shape:
        g.add_argument("--scan-shape", nargs=2, type=int, metavar=("SY", "SX"),
                       help="scan rows and columns when the file does not say them (or to override it)")
    if executor:
        from ._executor import add_executor_options

        add_executor_options(p)


def add_scan_argument(p) -> None:
    """Add SCAN (one scan file) and --flatfield to parser ``p``."""
    p.add_argument("scan", metavar="SCAN", help="scan file (any format `sedclassify info` reads)")
    p.add_argument("--flatfield", metavar="F", help="flat-field: flood stack (N, ky, kx) or 2D gain map")


def add_model_argument(p) -> None:
    p.add_argument("model", metavar="MODEL", help="model file (.sedmodel), or 'builtin' for the model shipped with "
                   "the package (docs/models.md: its training domain)")


def check_files(*lists, model=None) -> None:
    """A CLIError for the first file that does not exist: ``model`` (unless the built-in one),
    then the paths of ``lists`` (lists of paths, or None). Then, before any work, the libraries
    ``model`` needs (a CNN without TensorFlow: the error gives the pip command)."""
    from ..models.persistence import is_builtin

    files = [] if model is None or is_builtin(model) else [model]
    for f in files + [f for paths in lists for f in paths or []]:
        if not Path(f).exists():
            raise CLIError(f"{f}: no such file")
    if model is not None:
        from ..pipeline.predict import check_model_libraries

        check_model_libraries(model)


def out_folder(path) -> Path:
    """``path`` as an output folder (created later): a CLIError when a file is there."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: exists and is not a folder")
    return out


def simulation_shape(args, min_px: int, min_points: int) -> tuple[int, int]:
    """--scan-shape, checked with --detector (None, or an even number of px >= ``min_px``)."""
    if args.detector is not None and (args.detector < min_px or args.detector % 2):
        raise CLIError(f"--detector must be an even number of px >= {min_px}, got {args.detector}")
    sy, sx = args.scan_shape
    if sy < min_points or sx < min_points:
        least = "positive" if min_points == 1 else f"at least {min_points} {min_points}"
        raise CLIError(f"--scan-shape must be {least}, got {sy} {sx}")
    return sy, sx


def json_printed(args, obj) -> bool:
    """With --json, print ``obj`` as JSON; says whether it did."""
    if args.json:
        print(json.dumps(obj, indent=2))
    return args.json


def detector_options(args) -> dict:
    """What the command line says of the detector's pixels, as scan metadata: {} or
    {"edge_pixel_width": w, "edge_pixel_width_origin": "given"} (a CLIError for w < 1)."""
    w = getattr(args, "edge_pixel_width", None)
    if w is None:
        return {}
    if not w >= 1:
        raise CLIError(f"--edge-pixel-width must be at least 1 pitch, got {w:g}")
    return {"edge_pixel_width": float(w), "edge_pixel_width_origin": "given"}


def geometry_values(args) -> dict:
    """The calibration values given on the command line, {name: value}."""
    names = ("camera_length_mm", "pixel_size_um", "voltage_kv", "scan_step_nm")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def open_scan_from_args(path, args, **options):
    """Open ``path`` with the shape and calibration the command line gives."""
    from ..io import open_scan

    shape = getattr(args, "scan_shape", None)
    scan = open_scan(Path(path), tuple(shape) if shape else None, geometry=geometry_values(args), **options)
    scan.metadata.update(detector_options(args))
    return scan


def open_scans_from_args(paths, args, **options) -> list:
    return [open_scan_from_args(p, args, **options) for p in paths]
