"""``sedclassify evaluate``: metrics of a model on labeled scans (table, JSON, plots)."""

from __future__ import annotations

import json
from pathlib import Path

from . import CLIError
from ._executor import add_executor_options, executor
from ._scan_options import add_scan_options, open_scans_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a model on labeled scans",
        description=(
            "Classify labeled scans with a model file and report the confusion matrix (counts and "
            "normalised), per-class and weighted precision, recall, F1, Jaccard (the paper's "
            "TP/(TP+FP+FN) 'accuracy') and accuracy, per scan and over all scans."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="model file (.sedmodel), or 'builtin' for the model shipped with "
                   "the package (docs/models.md: its training domain)")
    p.add_argument("--scans", nargs="+", required=True, metavar="SCAN", help="scan files")
    p.add_argument("--labels", nargs="+", required=True, metavar="LABELS",
                   help="one class map per scan (.npy or .tif), in the same order")
    p.add_argument("--flatfield", nargs="+", metavar="F", help="flat-field file(s): one for all scans or one per scan")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--plot", metavar="DIR", help="write confusion-matrix and map figures (PNG) into DIR")
    add_scan_options(p)
    add_executor_options(p)
    p.set_defaults(func=run)


def _model_files(model) -> list:
    """The model file to check for existence: none for the built-in model."""
    from ..models.persistence import is_builtin

    return [] if is_builtin(model) else [model]


def run(args) -> int:
    from ..pipeline.evaluate import evaluate_model
    from ._bars import Bars

    if len(args.labels) != len(args.scans):
        raise CLIError(f"{len(args.scans)} scans but {len(args.labels)} label files: give one label file per scan")
    for f in _model_files(args.model) + list(args.scans) + list(args.labels) + list(args.flatfield or []):
        if not Path(f).exists():
            raise CLIError(f"{f}: no such file")
    from ..pipeline.predict import check_model_libraries

    check_model_libraries(args.model)  # a CNN without TensorFlow: the pip command, before any work
    scans = open_scans_from_args(args.scans, args)
    with Bars(frames_desc="classify") as bars, executor(args, sum(s.n_frames for s in scans)):
        ev = evaluate_model(args.model, scans, args.labels, flatfield=args.flatfield, scan_progress=bars.scan)
    figures = ev.plot(args.plot) if args.plot else []
    if args.json:
        out = ev.to_dict()
        if figures:
            out["figures"] = figures
        print(json.dumps(out, indent=2))
    else:
        print(ev.table())
        for f in figures:
            print(f"figure: {f}")
    return 0
