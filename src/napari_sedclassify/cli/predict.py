"""``sedclassify predict``: classify scans with a model file and write class maps."""

from __future__ import annotations

import json
from pathlib import Path

from . import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="classify scans with a trained model",
        description=(
            "Classify every frame of each scan with a model file. Per scan, DIR receives "
            "<scan>_classes.npy and <scan>_classes.tif (class map, uint8: 0 = not classified, "
            "1 carbon, 2 amorphous_ice, 3 crystalline_ice, 4 mixed), <scan>_probabilities.npy "
            "(scan_y, scan_x, classes) with <scan>_probabilities.json naming its classes, and "
            "<scan>_overlay.png (integrated image with the class map)."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="model file (.sedmodel)")
    p.add_argument("scans", nargs="+", metavar="SCAN", help="scan files")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--flatfield", nargs="+", metavar="F", help="flat-field file(s): one for all scans or one per scan")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on this dask.distributed scheduler (e.g. tcp://host:8786) instead of a local cluster")
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes of the local dask cluster (default: one per core; 0 = no cluster)")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..pipeline.batch import batch_predict, tqdm_progress

    for f in [args.model] + list(args.scans) + list(args.flatfield or []):
        if not Path(f).exists():
            raise CLIError(f"{f}: no such file")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: exists and is not a folder")
    stems = [Path(s).stem for s in args.scans]
    if len(set(stems)) != len(stems):
        raise CLIError("two scans share a file name; their outputs would overwrite each other: "
                       + ", ".join(sorted({s for s in stems if stems.count(s) > 1})))
    progress, bar = tqdm_progress("classify")
    with bar:
        results = batch_predict(args.model, args.scans, out, flatfield=args.flatfield, scheduler=args.scheduler,
                                workers=args.workers, force=args.force, progress=progress)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items())
            print(f"{r['name']}: {counts}" + (f", not classified {r['unclassified']}" if r["unclassified"] else ""))
            for f in r["files"].values():
                print(f"  {f}")
    return 0
