"""``sedclassify evaluate``: metrics of a model on labeled scans (table, JSON, plots)."""

from __future__ import annotations

from . import CLIError, add_command, add_examples
from ._executor import executor
from ._scan_options import (add_flatfield_options, add_model_argument, add_scan_options, check_files,
                            checked_flatfields, json_printed, open_scans_from_args, out_folder, print_warnings,
                            writable_folder)


def register(subparsers) -> None:
    p = add_command(subparsers, "evaluate", run, "evaluate a model on labeled scans",
                    "Classify labeled scans with a model file and report the confusion matrix (counts and "
                    "normalised), per-class and weighted precision, recall, F1, Jaccard (the paper's TP/(TP+FP+FN) "
                    "'accuracy') and accuracy, per scan and over all scans.")
    add_model_argument(p)
    p.add_argument("--scans", nargs="+", required=True, metavar="SCAN", help="scan files")
    p.add_argument("--labels", nargs="+", required=True, metavar="LABELS",
                   help="one class map per scan (.npy or .tif), in the same order")
    add_flatfield_options(p, "flat-field file(s): one for all scans or one per scan", nargs="+")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--plot", metavar="DIR", help="write confusion-matrix and map figures (PNG) into DIR")
    add_scan_options(p, executor=True)
    add_examples(p, "sedclassify evaluate fcnn.sedmodel --scans c.mib --labels c.tif --flatfield flat.mib --plot figures/")


def run(args) -> int:
    from ..pipeline.evaluate import evaluate_model
    from ._bars import Bars, scans_by_pass

    if len(args.labels) != len(args.scans):
        raise CLIError(f"{len(args.scans)} scans but {len(args.labels)} label files: give one label file per scan")
    check_files(args.scans, args.labels, args.flatfield, model=args.model)
    scans = open_scans_from_args(args.scans, args)
    # before any work
    flatfields = checked_flatfields(args.flatfield, scans, args.flatfield_dataset) if args.flatfield else None
    if args.plot:
        writable_folder(out_folder(args.plot))
    with Bars() as bars, executor(args, sum(s.n_frames for s in scans)):
        ev = evaluate_model(args.model, scans, args.labels, flatfield=flatfields,
                           scan_progress=scans_by_pass(bars, [s.n_frames for s in scans]),
                           classify_progress=bars.classify)
    figures = ev.plot(args.plot) if args.plot else []
    d = ev.to_dict()
    print_warnings(d.get("warnings", []))
    if not json_printed(args, {**d, **({"figures": figures} if figures else {})}):
        print(ev.table())
        for f in figures:
            print(f"figure: {f}")
    return 0
