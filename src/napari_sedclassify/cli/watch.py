"""``sedclassify watch MODEL (--input PATH | --merlin HOST:PORT | --dectris HOST[:PORT])``: classify
frames as they arrive (a growing Merlin .mib file, a folder where frame files land, a Merlin
detector's TCP data stream or a DECTRIS detector's zmq stream), keep a running class map and
keep-list, and optionally write the kept frames to a reduced file as they arrive (``--reduce``)."""

from __future__ import annotations

import sys
from pathlib import Path

from . import CLIError
from ._scan_options import (add_flatfield_options, add_model_argument, add_scan_options, detector_options,
                            file_options, geometry_values, json_printed, out_folder, print_warnings, writable_folder)


def register(subparsers):
    p = subparsers.add_parser(
        "watch",
        help="classify frames live as the detector writes them; keep a running class map and keep-list",
        description="Follow a Merlin .mib file being written (or a folder where frame files land, or a Merlin "
                    "detector's TCP data stream with --merlin, or a DECTRIS detector's zmq stream with "
                    "--dectris), classify each frame as it arrives with MODEL, and write <name>_live_classes.npy, "
                    "<name>_live_probabilities.npy, the keep-list <name>_keep.csv and the run's status <name>_keep.json to --out (atomically, updated while "
                    "the scan runs); with --reduce, write the frames of the --keep classes to a reduced HDF5 "
                    "file as they arrive. Stops when the scan is complete, when a stream's acquisition ends, "
                    "after --timeout seconds without a new frame, or on Ctrl-C. Exit status: 0 when every "
                    "position was classified; 3 when the run ended with positions never classified (status "
                    "incomplete: a stream's acquisition ended without them; timeout: no new frame for --timeout "
                    "seconds), its outputs written; 2 on an error (nothing armed or no frame within --timeout "
                    "included); 130 on Ctrl-C.",
    )
    add_model_argument(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="PATH", help="growing .mib file, or folder of frame files")
    src.add_argument("--merlin", metavar="HOST:PORT",
                     help="a Merlin detector's TCP data stream (Merlin's data port, 6342 by default), received "
                          "passively: arm and trigger the acquisition in the Merlin software (needs the live extra: "
                          'pip install "napari-sedclassify[live]")')
    src.add_argument("--dectris", metavar="HOST[:PORT]",
                     help="a DECTRIS detector's zmq stream (ARINA, QUADRO; the DCU's stream port, 9999 by default), "
                          "received passively: arm the acquisition in the detector's software; needs --scan-shape "
                          '(and the live extra: pip install "napari-sedclassify[live]")')
    p.add_argument("--merlin-control", type=int, metavar="PORT",
                   help="the Merlin control port (6341): read the counter depth and frame size from it")
    p.add_argument("--name", metavar="NAME",
                   help="stem of the output files (default: the input file's name, or merlin / dectris for a stream)")
    p.add_argument("--reduce", metavar="OUT.h5",
                   help="write the frames of the --keep classes to this reduced HDF5 file as they arrive (built as "
                        "OUT.partial.h5, renamed when the scan is complete)")
    p.add_argument("--compression", choices=("bslz4", "none"), default="bslz4",
                   help="compression of the frames written by --reduce (default bslz4)")
    p.add_argument("-o", "--out", metavar="DIR", help="folder for the class map and keep-list (default: none written)")
    p.add_argument("--keep", nargs="+", default=["amorphous_ice"], metavar="CLASS",
                   help="classes whose positions go into the keep-list (default: amorphous_ice)")
    add_flatfield_options(p, "flat-field acquisition of the session")
    p.add_argument("--calibration", metavar="SCAN",
                   help="a scan file whose geometry (pixel size, camera length, voltage) applies to the live frames")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="stop after S seconds without a new frame, or without the detector armed (default 30)")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_scan_options(p)
    p.set_defaults(func=run)
    return p


#: Exit status of a run that ended with positions never classified ("incomplete", "timeout"):
#: not 0 (a script at the microscope must not take the scan for complete), not 2 (an error).
PARTIAL_EXIT = 3


def live_geometry(source, calibration, given: dict) -> None:
    """Make ``source.geometry()`` (asked once the first frames are here) the live frames' geometry:
    the source's own (its detector shape that of the frames that arrived), the --calibration scan's
    calibration values over it, then the values given on the command line. Before, the geometry
    was taken before any frame had arrived: a folder source then had no detector shape yet and
    gave the default 512 x 512, so no beam was found in frames of any other size."""
    if calibration is None and not given:
        return
    read, known = source.geometry, source.known_geometry

    def over(own):
        g = own if calibration is None else calibration.replace(detector_shape=own.detector_shape)
        return g.with_values("user", **given) if given else g

    source.geometry = lambda: over(read())
    source.known_geometry = lambda: over(known())  # what a model is checked against before the frames


def run(args):
    from tqdm import tqdm

    from ..geometry import Geometry

    from ..pipeline.live import open_source, watch
    from ..pipeline.predict import as_model, check_model_libraries
    from ..pipeline.reduce import check_live_target, class_ids
    from ..processing import load_flatfield

    try:  # before any work: the stream receiver's pip command, the scan shape a DECTRIS stream needs
        if args.merlin:
            source = open_source(f"merlin://{args.merlin}", args.scan_shape, control_port=args.merlin_control,
                                 name=args.name or "merlin")
        elif args.dectris:
            source = open_source(f"dectris://{args.dectris}", args.scan_shape, name=args.name or "dectris")
        else:
            source = open_source(args.input, args.scan_shape)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    check_model_libraries(args.model)  # a CNN without TensorFlow: the pip command, before any work
    model = as_model(args.model)
    keep = class_ids(args.keep, model.classes)
    # read now, not when the first frames arrive: a wrong file or --flatfield-dataset is said before the acquisition
    flatfield = load_flatfield(args.flatfield, dataset=args.flatfield_dataset) if args.flatfield else None
    geometry = metadata = None
    if args.calibration:
        from ..io import open_scan

        ref = open_scan(args.calibration, **file_options(args))
        geometry = ref.geometry
        metadata = {k: ref.metadata[k] for k in ("edge_pixel_width",) if k in ref.metadata}
    elif args.dataset is not None or args.missing_at != "end":
        raise CLIError("--dataset and --missing-at apply to the --calibration scan file: the live frames are "
                       "taken as they arrive")
    if detector_options(args):
        metadata = {**(metadata or {}), **detector_options(args)}
    if args.reduce:
        if not str(args.reduce).lower().endswith((".h5", ".hdf5")):
            raise CLIError(f"{args.reduce}: a reduced scan is written as HDF5: give a name ending in .h5")
        check_live_target(args.reduce, args.compression, args.force)  # fail before waiting for the acquisition
        writable_folder(Path(args.reduce).parent, args.reduce)
    if args.out:
        writable_folder(out_folder(args.out))
    bar = None  # made once frames are classified: a refusal (even once the acquisition's header is read) prints none

    said = []

    def on_update(state):
        nonlocal bar
        for w in state.warnings[len(said):]:  # said while the acquisition goes on: it can be stopped
            said.append(w)
            tqdm.write(f"warning: {w}", file=sys.stderr)
        if bar is None and not state.n_done:
            return
        if bar is None:
            bar = tqdm(unit="frame", desc="watch", file=sys.stderr, dynamic_ncols=True)
        bar.total = state.n_positions
        bar.update(state.n_done - bar.n)
        lat = state.latency_stats()
        if "median_ms" in lat:
            bar.set_postfix_str(f"latency {lat['median_ms']:.1f} ms", refresh=False)

    given = geometry_values(args)
    if given:
        try:  # a bad value is named now, not once frames arrive
            Geometry().with_values("user", **given)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    live_geometry(source, geometry, given)
    try:
        result = watch(model, source, out_dir=args.out, name=args.name, keep=keep, flatfield=flatfield,
                       geometry=None, metadata=metadata, timeout_s=args.timeout, force=args.force,
                       reduce_to=args.reduce, compression=args.compression, on_update=on_update)
    finally:
        if bar is not None:
            bar.close()
        if hasattr(source, "close"):
            source.close()
    d = result.to_dict()
    rc = PARTIAL_EXIT if d["status"] in ("incomplete", "timeout") else 0
    print_warnings([w for w in d.get("warnings", []) if w not in said])  # not twice: some were said already
    if json_printed(args, d):
        return rc
    lat = d["latency"]
    print(f"{d['status']}: {d['frames']} of {d['positions']} frames classified, {d['kept']} kept "
          f"({', '.join(d['kept_classes'])}) in {d['seconds']:.2f} s")
    if "median_ms" in lat:
        print(f"latency per frame: median {lat['median_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms, "
              f"max {lat['max_ms']:.1f} ms (the first {lat['calibration_frames']} frames waited "
              f"{lat['calibration_mean_ms']:.0f} ms for the calibration)")
    if "stream" in d:
        st = d["stream"]
        print(f"stream: {st['frames_received']} frames received of {st['frames_announced']} announced, "
              f"{st['frames_dropped']} dropped"
              + (f", {st['frames_outside_scan']} outside the scan" if st.get("frames_outside_scan") else "")
              + (f", {st['receive_rate_hz']:.0f} frames/s" if "receive_rate_hz" in st else "")
              + (f"; the receiver said: {st['stream_error']}" if st.get("stream_error") else ""))
    red = d.get("reduced")
    for key, f in d["files"].items():
        if key == "reduced" and red and red["status"] != "complete":
            print(f"left {f} ({red['kept_frames']} kept frames; status {red['status']}: the scan is not complete)")
        else:
            print(f"wrote {f}")
    return rc

