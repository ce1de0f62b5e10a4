"""``sedclassify calibrate SCAN``: fit the effective camera length from the amorphous-ice ring
(3.70 Å), gold rings or a d-spacing the user knows; ``--write`` stores it beside the scan."""

from __future__ import annotations

from pathlib import Path

from . import CLIError, add_command, add_examples
from ._scan_options import (add_scan_argument, add_scan_options, checked_flatfields, json_printed, open_scan_from_args,
                            print_warnings, writable_folder)


def register(subparsers):
    p = add_command(subparsers, "calibrate", run,
                    "fit the effective camera length from the amorphous-ice ring (or gold rings, or a known d-spacing)",
                    "Preprocess the scan (flat-field, centres, radial averages on the detector's pixel grid), pick "
                    "the frames whose radial average shows the ring, and fit background + ring to their mean profile. "
                    "Prints the camera length with its uncertainty; --write stores it in SCAN.sedclassify.json, where "
                    "every other command (and napari) picks it up, marked 'fitted'.")
    add_scan_argument(p)
    p.add_argument("--ring", default="ice", metavar="ice|gold|D_A",
                   help="what to fit: 'ice' (vitreous ice, 3.70 Å, default), 'gold' (Au 2.355, 2.039, 1.442, "
                        "1.230 Å) or d-spacings in Å (e.g. 3.7 or 2.355,2.039)")
    p.add_argument("--search", type=float, default=0.15, metavar="FRACTION",
                   help="search the ring within this fraction of where the scan's camera length puts it "
                        "(default 0.15 = ±15 %%)")
    p.add_argument("--max-frames", type=int, default=4096, metavar="N",
                   help="larger scans are calibrated on an evenly spaced subset of N positions (default 4096)")
    p.add_argument("--write", action="store_true",
                   help="store the fitted camera length beside the scan (SCAN.sedclassify.json) for other commands")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_scan_options(p)
    add_examples(p, "sedclassify calibrate scan.mib --flatfield flat.mib --write",
                 "sedclassify calibrate gold.mib --ring gold --pixel-size 55 --voltage 200")
    return p


def run(args) -> int:
    from ..io.sidecar import write_calibration
    from ..pipeline.calibrate import calibrate, parse_ring
    from ._bars import Bars

    try:
        parse_ring(args.ring)
    except ValueError as exc:
        raise CLIError(f"--ring: {exc}") from None
    if not 0 < args.search < 0.9:
        raise CLIError(f"--search must be between 0 and 0.9, got {args.search}")
    if args.max_frames < 16:
        raise CLIError(f"--max-frames must be at least 16, got {args.max_frames}")
    scan_path = Path(args.scan)
    scan = open_scan_from_args(scan_path, args)
    flatfield = checked_flatfields(args.flatfield, [scan], args.flatfield_dataset)[0] if args.flatfield else None
    if args.write:  # before any work: the sidecar's folder (the scan's) must take it
        from ..io.sidecar import calibration_path

        writable_folder(scan_path.parent, calibration_path(scan_path))
    with Bars(frames_desc="calibrate") as bars:
        cal = calibrate(scan, args.ring, flatfield, search=args.search, max_frames=args.max_frames,
                        progress=bars.frames)
    side = (write_calibration(scan_path, {"camera_length_mm": cal.camera_length_mm}, cal.sidecar_details())
            if args.write else None)
    out = {**cal.to_dict(), "scan": str(scan_path), "written": str(side) if side else None}
    print_warnings(cal.warnings)
    if json_printed(args, out):
        return 0
    g = scan.geometry
    ring = {"ice": "the amorphous-ice ring at 3.7 Å",
            "gold": "gold rings at " + ", ".join(f"{d:g}" for d in cal.d_A) + " Å"}.get(
        cal.ring, f"the ring{'s' if len(cal.d_A) > 1 else ''} at {cal.ring}")
    r = cal.rings[0]
    lines = [
        f"{scan_path}: camera length {cal.camera_length_mm:.1f} ± {cal.camera_length_sd_mm:.1f} mm, "
        f"fitted from {ring}",
        f"  nominal {cal.nominal_camera_length_mm:g} mm ({cal.nominal_origin}): {cal.relative_change:+.2%}",
        f"  ring radius {r.radius_px:.2f} ± {r.radius_sd_px:.2f} px (σ {r.sigma_px:.1f} px), "
        f"{cal.frames_used} frames used of {cal.frames_with_ring} showing it ({cal.frames_with_beam} with a beam)",
        f"  with pixel {g.pixel_size_um:g} µm ({g.origin('pixel_size_um')}), voltage {g.voltage_kv:g} kV "
        f"({g.origin('voltage_kv')}), edge pixels {cal.edge_pixel_width:g} pitches ({cal.edge_pixel_width_origin})",
    ]
    if out["written"]:
        lines.append(f"  written to {out['written']}: other commands now use it (marked fitted)")
        user = [f for f, name in (("--pixel-size", "pixel_size_um"), ("--voltage", "voltage_kv"))
                if g.origin(name) == "user"]
        if user:
            lines.append(f"  note: it holds with the {' and '.join(user)} given here; give the same to later commands")
    else:
        lines.append(f"  store it with --write, or give --camera-length {cal.camera_length_mm:.1f} to other commands")
    print("\n".join(lines))
    return 0
