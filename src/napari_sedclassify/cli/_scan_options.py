"""Options every command that opens scans shares: the scan shape and the calibration values.

Values given here override what the file says (and a ``sedclassify calibrate --write``
sidecar); what nobody states stays marked "assumed" (see ``sedclassify info``).
"""

from __future__ import annotations

from pathlib import Path


def add_scan_options(p, *, scan_shape: bool = True) -> None:
    """Add --camera-length, --pixel-size, --voltage, --scan-step (and --scan-shape) to parser ``p``."""
    g = p.add_argument_group("calibration (overrides the file; unset values keep the file's or stay assumed)")
    g.add_argument("--camera-length", type=float, metavar="MM", dest="camera_length_mm",
                   help="effective camera length in mm (fit it from the data with `sedclassify calibrate`)")
    g.add_argument("--pixel-size", type=float, metavar="UM", dest="pixel_size_um",
                   help="detector pixel pitch in µm (55 for Medipix3/Timepix; 110 for 2x2-binned frames)")
    g.add_argument("--voltage", type=float, metavar="KV", dest="voltage_kv", help="accelerating voltage in kV")
    g.add_argument("--scan-step", type=float, metavar="NM", dest="scan_step_nm", help="distance between scan points in nm")
    if scan_shape:
        g.add_argument("--scan-shape", nargs=2, type=int, metavar=("SY", "SX"),
                       help="scan rows and columns when the file does not say them (or to override it)")


def geometry_values(args) -> dict:
    """The calibration values given on the command line, {name: value}."""
    names = ("camera_length_mm", "pixel_size_um", "voltage_kv", "scan_step_nm")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def open_scan_from_args(path, args, **options):
    """Open ``path`` with the shape and calibration the command line gives."""
    from ..io import open_scan

    shape = getattr(args, "scan_shape", None)
    return open_scan(Path(path), tuple(shape) if shape else None, geometry=geometry_values(args), **options)


def open_scans_from_args(paths, args, **options) -> list:
    return [open_scan_from_args(p, args, **options) for p in paths]
