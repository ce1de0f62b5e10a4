"""``sedclassify demo``: the paper's experiment (FCNN, SVM, CNN; same and other session) on
simulated scans, with a report beside the paper's Table 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the paper's experiment on simulated scans and write a report",
        description=(
            "Simulate (or reuse from DIR/cache) scans of one session and 1 of another, preprocess them, "
            "train FCNN, SVM and CNN on the first session's scans but the last, test on that last one (same "
            "session) and on the other session's scan, and write DIR/report.md, DIR/report.json, "
            "DIR/figures/*.png and DIR/models/*.sedmodel. By default a quick version (5 + 1 scans of 40x40 "
            "points, 128 px detector, a short CNN training: a few minutes, 0.3 GB); --full runs the paper's "
            "16 + 1 scans at 256 px with the full CNN training (3.5 GB)."
        ),
    )
    p.add_argument("--full", action="store_true",
                   help="the full replication: 16 + 1 scans, 256 px detector, full CNN training")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
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
    p.set_defaults(func=run)


class _DemoBars:
    def __init__(self):
        self.bar = None
        self.kind = None

    def frames(self, i, n, done, total):
        from tqdm import tqdm

        if self.bar is None or self.kind != ("frames", n, total):
            self.close()
            self.kind = ("frames", n, total)
            self.bar = tqdm(total=n * total, unit="frame", desc="simulate" if n == 1 else "preprocess",
                            file=sys.stderr)
        self.bar.n = i * total + done
        self.bar.refresh()

    def epoch(self, model, epoch, logs):
        from tqdm import tqdm

        if self.bar is None or self.kind != ("epochs", model):
            self.close()
            self.kind = ("epochs", model)
            self.bar = tqdm(total=int(logs.get("max_epochs", 0)) or None, unit="epoch", desc=f"train {model}",
                            file=sys.stderr)
        self.bar.n = int(epoch)
        shown = {k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "val_loss", "val_accuracy")}
        if shown:
            self.bar.set_postfix(shown, refresh=False)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def log(self, msg):
        from tqdm import tqdm

        self.close()
        tqdm.write(msg, file=sys.stderr)


def run(args) -> int:
    from ..pipeline.demo import run_demo

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
    if args.detector is not None and (args.detector < 64 or args.detector % 2):
        raise CLIError(f"--detector must be an even number of px >= 64, got {args.detector}")
    sy, sx = args.scan_shape
    if sy < 4 or sx < 4:
        raise CLIError(f"--scan-shape must be at least 4 4, got {sy} {sx}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: exists and is not a folder")
    bars = _DemoBars()
    try:
        report = run_demo(out, scan_shape=(sy, sx), detector_px=args.detector, models=models, seed=args.seed,
                          full=args.full, cache_dir=args.cache, log=bars.log, frames_progress=bars.frames, epoch_progress=bars.epoch)
    finally:
        bars.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"\nTable 1, the paper beside this run ({out / 'report.md'}):\n")
    from ..pipeline.demo import table1_markdown

    print(table1_markdown(report))
    pics = [f for f in report["figures"] if f.startswith("figures/picture_")]
    for p in pics:
        print(f"picture: {out / p}")
    return 0
