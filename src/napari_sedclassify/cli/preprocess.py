"""``sedclassify preprocess``: flat-field, centres, descan fit, RIAs, virtual images (and crops)
of a scan, written to one results file with provenance."""

from __future__ import annotations

from pathlib import Path

from . import CLIError, add_command, add_examples
from ._executor import cluster_path, executor
from ._scan_options import (add_scan_argument, add_scan_options, checked_flatfields, json_printed, open_scan_from_args,
                            os_reason, output_file, print_warnings)


def register(subparsers) -> None:
    p = add_command(subparsers, "preprocess", run, "centre, radially average and image a scan into one results file",
                    "Flat-field correct every frame, find its direct-beam centre, fit the descan, compute radial "
                    "intensity averages (RIAs), virtual images (total, bright field, annular dark field), the pixel "
                    "mask and optionally central crops; write them with provenance to one HDF5 (.h5) or zarr (.zarr) "
                    "file.")
    add_scan_argument(p)
    p.add_argument("-o", "--out", metavar="FILE", help="results file, .h5 or .zarr (default: SCAN_preprocessed.h5)")
    p.add_argument("--centring", choices=("per_frame", "fitted"), default="per_frame",
                   help="centre each frame on its own measured centre (default) or on the descan fit")
    p.add_argument("--crop-radius", type=float, metavar="PX", help="also keep central crops of this radius (px)")
    p.add_argument("--crop-bin", type=int, default=1, metavar="B", help="bin crops B x B (default 1)")
    p.add_argument("--bin-width", type=float, default=1.0, metavar="PX", help="RIA bin width in px (default 1)")
    p.add_argument("--force", action="store_true", help="overwrite an existing results file")
    p.add_argument("--json", action="store_true", help="print a summary as JSON")
    add_scan_options(p, executor=True)
    add_examples(p, "sedclassify preprocess scan.mib --flatfield flat.mib -o scan.h5",
                 "sedclassify preprocess scan.npy --crop-radius 32 --crop-bin 2 --workers 4 -o scan.zarr")


def run(args) -> int:
    from ._prefetch import importing_when_called

    scan_path = Path(args.scan)
    out = Path(args.out) if args.out else scan_path.with_name(f"{scan_path.stem}_preprocessed.h5")
    if out.suffix.lower() not in (".h5", ".hdf5", ".zarr"):
        raise CLIError(f"{out}: the results file must end in .h5 or .zarr")
    from ..pipeline.preprocess import preprocess
    from ..processing import PreprocessParams
    from ._bars import Bars, by_pass

    params = PreprocessParams(centring=args.centring, crop_radius_px=args.crop_radius, crop_bin=args.crop_bin,
                              ria_bin_px=args.bin_width)  # its values checked here (ValueError: one line)
    scan = open_scan_from_args(cluster_path(scan_path, args), args)
    try:  # what this detector cannot hold (a crop larger than it), before the flat-field is read
        params.check_detector(scan.geometry)
    except ValueError as exc:
        raise CLIError(f"{args.scan}: {exc}") from None
    flatfield = checked_flatfields(args.flatfield, [scan], args.flatfield_dataset)[0] if args.flatfield else None
    # before any work: its folder created, and writable
    output_file(out, args.force, folder_ok=out.suffix.lower() == ".zarr", inputs=[args.scan, args.flatfield])
    with Bars() as bars, executor(args, scan.n_frames, [scan.source]) as client:
        # the results writer's module is imported while the frames are processed (_prefetch.py)
        writer = "h5py" if out.suffix.lower() in (".h5", ".hdf5") else "zarr"
        progress = importing_when_called(by_pass(bars, scan.n_frames), writer)
        result = preprocess(scan, params, flatfield, progress=progress, client=client)
    try:
        result.save(out)
    except OSError as exc:  # named by the path given, not the hidden temporary file it was written to
        raise CLIError(f"{out}: could not be written ({os_reason(exc)})") from None
    summary = {
        "out": str(out),
        "scan_shape": list(result.scan_shape),
        "frames": int(result.missing.size),
        "beam_found": int(result.beam_found.sum()),
        "missing": int(result.missing.sum()),
        "masked_pixels": int(result.mask.sum()),
        "ria_bins": int(result.radii_px.size),
        "edge_pixel_width": result.resolved.get("edge_pixel_width"),
        "edge_pixel_width_origin": result.resolved.get("edge_pixel_width_origin"),
        "descan_residual_rms_px": None if result.descan is None else result.descan.residual_rms_px,
        "frames_per_s": result.provenance["frames_per_s"],
    }
    if result.resolved.get("edge_pixel_width_measured") is not None:
        from ..processing.plan import edge_width_warning

        summary["warnings"] = [edge_width_warning(args.scan, result.resolved)]
    print_warnings(summary.get("warnings"))
    if not json_printed(args, summary):
        print(f"{out}: {summary['frames']} frames, beam found in {summary['beam_found']}, "
              f"{summary['masked_pixels']} masked pixels, {summary['ria_bins']} RIA bins, "
              + (f"chip-edge pixels {summary['edge_pixel_width']:g} pitches wide ({summary['edge_pixel_width_origin']}), "
                 if summary["edge_pixel_width"] != 1 else "")
              + f"descan residual {summary['descan_residual_rms_px'] or float('nan'):.2f} px RMS, "
              f"{summary['frames_per_s']} frames/s")
    return 0
