"""``sedclassify watch MODEL --input PATH``: classify frames as they arrive (a growing Merlin .mib
file, or a folder where frame files land), keep a running class map and keep-list."""

from __future__ import annotations

import json
import sys
import time

from . import CLIError


def register(subparsers):
    p = subparsers.add_parser(
        "watch",
        help="classify frames live as the detector writes them; keep a running class map and keep-list",
        description="Follow a Merlin .mib file being written (or a folder where frame files land), classify each "
                    "frame as it arrives with MODEL, and write <name>_live_classes.npy, "
                    "<name>_live_probabilities.npy and <name>_keep.json to --out (atomically, updated while "
                    "the scan runs). Stops when the scan is complete, after --timeout seconds without a new "
                    "frame, or on Ctrl-C.",
    )
    p.add_argument("model", metavar="MODEL", help="model file (.sedmodel)")
    p.add_argument("--input", required=True, metavar="PATH", help="growing .mib file, or folder of frame files")
    p.add_argument("--scan-shape", nargs=2, type=int, metavar=("SY", "SX"),
                   help="scan rows and columns (needed unless the .hdr says it)")
    p.add_argument("--out", metavar="DIR", help="folder for the class map and keep-list (default: none written)")
    p.add_argument("--keep", nargs="+", default=["amorphous_ice"], metavar="CLASS",
                   help="classes whose positions go into the keep-list (default: amorphous_ice)")
    p.add_argument("--flatfield", metavar="F", help="flat-field acquisition of the session")
    p.add_argument("--calibration", metavar="SCAN",
                   help="a scan file whose geometry (pixel size, camera length, voltage) applies to the live frames")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="stop after S seconds without a new frame (default 30)")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)
    return p


def run(args):
    from tqdm import tqdm

    from ..pipeline.live import LiveClassMap, open_source, watch
    from ..pipeline.predict import as_model
    from ..pipeline.reduce import class_ids

    model = as_model(args.model)
    keep = class_ids(args.keep, model.classes)
    geometry = metadata = None
    if args.calibration:
        from ..io import open_scan

        ref = open_scan(args.calibration)
        geometry = ref.geometry
        metadata = {k: ref.metadata[k] for k in ("edge_pixel_width",) if k in ref.metadata}
    try:
        source = open_source(args.input, args.scan_shape)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    bar = tqdm(unit="frame", desc="watch", file=sys.stderr, dynamic_ncols=True)

    def on_update(state):
        if bar.total != state.n_positions:
            bar.total = state.n_positions
        bar.update(state.n_done - bar.n)
        lat = state.latency_stats()
        if "median_ms" in lat:
            bar.set_postfix_str(f"latency {lat['median_ms']:.1f} ms", refresh=False)

    def make_state():
        sy, sx = source.scan_shape
        state = LiveClassMap((sy, sx), model.classes.ids, keep, model.classes.names)
        state.subscribe(on_update)
        return state

    try:
        watch_ready(source, args.timeout)  # the state needs the scan shape, which the .hdr may give
        result = watch(model, source, out_dir=args.out, keep=keep, flatfield=args.flatfield, geometry=geometry,
                       metadata=metadata, timeout_s=args.timeout, force=args.force, state=make_state())
    finally:
        bar.close()
    d = result.to_dict()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    lat = d["latency"]
    print(f"{d['status']}: {d['frames']} of {d['positions']} frames classified, {d['kept']} kept "
          f"({', '.join(d['kept_classes'])}) in {d['seconds']:.2f} s")
    if "median_ms" in lat:
        print(f"latency per frame: median {lat['median_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms, "
              f"max {lat['max_ms']:.1f} ms (the first {lat['calibration_frames']} frames waited "
              f"{lat['calibration_mean_ms']:.0f} ms for the calibration)")
    for f in d["files"].values():
        print(f"wrote {f}")
    return 0


def watch_ready(source, timeout_s):
    """Wait until the source has its first frame header (or folder), up to ``timeout_s``."""
    t0 = time.perf_counter()
    while not source.ready():
        if time.perf_counter() - t0 > timeout_s:
            raise CLIError(f"{source.path}: nothing arrived within {timeout_s:g} s")
        time.sleep(0.01)
