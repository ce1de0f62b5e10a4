"""``sedclassify demo``: the paper's experiment (FCNN, SVM, CNN; same and other session) on
simulated scans, with a report beside the paper's Table 1."""

from __future__ import annotations

import sys

from . import CLIError, add_command, add_examples
from ._scan_options import json_printed, out_folder, simulation_shape, writable_folder


def register(subparsers) -> None:
    p = add_command(subparsers, "demo", run, "run the paper's experiment on simulated scans and write a report",
                    "Simulate (or reuse from DIR/cache) scans of one session and 1 of another, preprocess them, train "
                    "FCNN, SVM and CNN on the first session's scans but the last, test on that last one (same "
                    "session) and on the other session's scan, and write DIR/report.md, DIR/report.json, "
                    "DIR/figures/*.png and DIR/models/*.sedmodel. By default a quick version (5 + 1 scans of 40x40 "
                    "points, 128 px detector, a short CNN training: a few minutes, 0.3 GB); --full runs the paper's "
                    "16 + 1 scans at 256 px with the full CNN training (3.5 GB).")
    p.add_argument("--full", action="store_true",
                   help="the full replication: 16 + 1 scans, 256 px detector, full CNN training")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--scan-shape", type=int, nargs=2, default=(40, 40), metavar=("SY", "SX"),
                   help="scan points per scan (default 40 40)")
    p.add_argument("--detector", type=int, metavar="PX",
                   help="detector size in px (default 128, with --full 256; 512 is the paper's, slower to "
                        "simulate and ~14 GB of disk with --full)")
    p.add_argument("--models", default="fcnn,svm,cnn", metavar="LIST",
                   help="comma-separated models to run (default fcnn,svm,cnn)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the data set and the training (default 0)")
    p.add_argument("--cache", metavar="DIR", help="folder of the simulated data set (default DIR/cache/...)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_examples(p, "sedclassify demo -o demo_output/",
                 "sedclassify demo --full -o full_output/")


def run(args) -> int:
    from ..pipeline.demo import run_demo, table1_markdown
    from ._bars import Bars

    models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in ("fcnn", "svm", "cnn")]
    if bad or not models:
        raise CLIError(f"--models: unknown model(s) {', '.join(bad) or '(none)'}; choose from fcnn, svm, cnn")
    if "cnn" in models:
        from ..optional import cnn_available, cnn_message

        if not cnn_available():
            if args.models != "fcnn,svm,cnn":  # asked for by name
                raise CLIError(cnn_message("--models cnn"))
            models = [m for m in models if m != "cnn"]
            print(f"sedclassify demo: the CNN is skipped. {cnn_message()}", file=sys.stderr)
    sy, sx = simulation_shape(args, 64, 4)
    out = writable_folder(out_folder(args.out))
    with Bars() as bars:
        report = run_demo(out, scan_shape=(sy, sx), detector_px=args.detector, models=models, seed=args.seed,
                          full=args.full, cache_dir=args.cache, log=bars.log,
                          frames_progress=lambda i, n, done, total: bars.scan(
                              i, n, done, total, "simulate" if n == 1 else "preprocess"),
                          epoch_progress=lambda model, epoch, logs: bars.epoch(epoch, logs, f"train {model}"))
    if json_printed(args, report):
        return 0
    print(f"\nTable 1, the paper beside this run ({out / 'report.md'}):\n")
    print(table1_markdown(report))
    for p in [f for f in report["figures"] if f.startswith("figures/picture_")]:
        print(f"picture: {out / p}")
    return 0
