"""``sedclassify evaluate``: metrics of a model on labeled scans (table, JSON, plots)."""

from __future__ import annotations

import json
from pathlib import Path

from . import CLIError


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
    p.add_argument("model", metavar="MODEL", help="model file (.sedmodel)")
    p.add_argument("--scans", nargs="+", required=True, metavar="SCAN", help="scan files")
    p.add_argument("--labels", nargs="+", required=True, metavar="LABELS",
                   help="one class map per scan (.npy or .tif), in the same order")
    p.add_argument("--flatfield", nargs="+", metavar="F", help="flat-field file(s): one for all scans or one per scan")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--plot", metavar="DIR", help="write confusion-matrix and map figures (PNG) into DIR")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..pipeline.evaluate import evaluate_model
    from ._bars import Bars

    if len(args.labels) != len(args.scans):
        raise CLIError(f"{len(args.scans)} scans but {len(args.labels)} label files: give one label file per scan")
    for f in [args.model] + list(args.scans) + list(args.labels) + list(args.flatfield or []):
        if not Path(f).exists():
            raise CLIError(f"{f}: no such file")
    with Bars(frames_desc="classify") as bars:
        ev = evaluate_model(args.model, args.scans, args.labels, flatfield=args.flatfield, scan_progress=bars.scan)
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
