"""``sedclassify train``: train an FCNN, SVM or CNN on labeled scans and save a model file."""

from __future__ import annotations

from pathlib import Path

from . import CLIError, add_command, add_examples
from ._executor import executor
from ._scan_options import (add_flatfield_options, add_scan_options, check_files, checked_flatfields, json_printed,
                            open_scans_from_args, output_file, print_warnings)


def register(subparsers) -> None:
    p = add_command(subparsers, "train", run, "train a classifier (fcnn, svm, cnn) on labeled scans",
                    "Preprocess the scans, train a classifier on their labels (2D class maps on the scan grid, .npy "
                    "or .tif; 0 = unlabeled, 1 carbon, 2 amorphous_ice, 3 crystalline_ice, 4 mixed) and save one "
                    "model file (.sedmodel). 10% of the labeled frames are held out for validation; --holdout N also "
                    "keeps the last N scans out of training and reports their metrics.")
    p.add_argument("--scans", nargs="+", required=True, metavar="SCAN", help="scan files")
    p.add_argument("--labels", nargs="+", required=True, metavar="LABELS",
                   help="one class map per scan (.npy or .tif), in the same order")
    p.add_argument("--model", choices=["fcnn", "svm", "cnn"], default="fcnn",
                   help='classifier (default fcnn); cnn needs TensorFlow: pip install "napari-sedclassify[cnn]"')
    p.add_argument("-o", "--out", required=True, metavar="MODEL", help="model file to write (e.g. model.sedmodel)")
    add_flatfield_options(p, "flat-field file(s): one for all scans or one per scan", nargs="+")
    p.add_argument("--seed", type=int, default=0, help="random seed: split, augmentation, weights (default 0)")
    p.add_argument("--epochs", type=int, metavar="N", help="most training epochs (fcnn, cnn)")
    p.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="keep the last N scans out of training and evaluate on them (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="fraction of labeled frames for validation (default 0.1)")
    p.add_argument("--no-augment", action="store_true", help="no training-time augmentation")
    p.add_argument("--session-robust", action="store_true",
                   help="the recipe measured to hold across sessions (scan context, scan neighbours, "
                        "convergence-blur and dose-noise augmentation, square-root class weights, fcnn/svm: "
                        "an ensemble of 5; cnn: crops resampled on the "
                        "scan's camera length, direct beam masked, ice-thickness augmentation; docs/models.md). Its "
                        "radial-scaling augmentation is ±3 %% when every scan's camera length was fitted "
                        "(sedclassify calibrate), else ±12 %%. Its models classify whole scans, not live frames. "
                        "Best trained on labeled scans of several sessions")
    p.add_argument("--one-session", action="store_true",
                   help="with --session-robust, fcnn/svm: accepted for scripts of session 23, when it added the "
                        "flat-background and ice-layer augmentations; --session-robust always has them now "
                        "(docs/models.md)")
    p.add_argument("--ensemble", type=int, metavar="N",
                   help="train N members on their own augmentation draws and seeds and average their probabilities "
                        "(default 1; fcnn and svm with --session-robust: 5)")
    p.add_argument("--no-normalise", action="store_true", help="no per-frame intensity normalisation")
    p.add_argument("--search", action="store_true", help="svm: tune C and gamma with RandomizedSearchCV")
    crop = p.add_mutually_exclusive_group()
    crop.add_argument("--crop-radius-A", type=float, metavar="D",
                      help="cnn: crop radius as the spacing at its edge in Å (default 2.7)")
    crop.add_argument("--crop-radius-px", type=float, metavar="PX", help="cnn: crop radius in detector px")
    p.add_argument("--force", action="store_true", help="replace an existing model file")
    p.add_argument("--json", action="store_true", help="print the training summary and metrics as JSON")
    add_scan_options(p, executor=True)
    add_examples(p, "sedclassify train --scans a.mib b.mib --labels a.tif b.tif --flatfield flat.mib -o fcnn.sedmodel",
                 "sedclassify train --scans s1.mib s2.mib s3.mib --labels l1.tif l2.tif l3.tif --model svm --session-robust -o svm.sedmodel")


def model_settings(args) -> tuple[dict, dict]:
    """(recipe changes, estimator params) from the common options."""
    from dataclasses import fields

    from ..models.features import Augmentation

    recipe = {}
    params = {}
    if getattr(args, "one_session", False) and not getattr(args, "session_robust", False):
        raise CLIError("--one-session goes with --session-robust (whose augmentation it named)")
    if getattr(args, "session_robust", False):
        if args.no_augment or args.no_normalise:
            raise CLIError("--session-robust sets its own normalisation and augmentation: leave out "
                           "--no-augment and --no-normalise")
        from ..models.features import (
            SESSION_ROBUST_ENSEMBLE,
            SESSION_ROBUST_PARAMS,
            session_robust_crop_recipe,
            session_robust_recipe,
        )

        fitted = getattr(args, "_all_fitted", False)
        if args.model == "cnn":
            if getattr(args, "one_session", False):
                raise CLIError("--one-session applies to fcnn and svm models (the cnn has its own ice-thickness "
                               "augmentation)")
            robust = session_robust_crop_recipe(camera_length_fitted=fitted)
        else:
            robust = session_robust_recipe(camera_length_fitted=fitted)
        # the whole recipe, not field by field (a field left out once kept the old scan context)
        recipe.update({f.name: getattr(robust, f.name) for f in fields(robust) if f.name != "kind"})
        if args.model != "cnn":
            params["ensemble"] = SESSION_ROBUST_ENSEMBLE
        params.update(SESSION_ROBUST_PARAMS)
    if args.ensemble is not None:
        if args.ensemble < 1:
            raise CLIError(f"--ensemble takes N >= 1, got {args.ensemble}")
        params["ensemble"] = args.ensemble
    if args.no_augment:
        recipe["augmentation"] = Augmentation(copies=0)
    if args.no_normalise:
        recipe["normalise"] = False
    if getattr(args, "crop_radius_px", None) is not None:
        recipe.update(crop_radius_px=args.crop_radius_px, crop_radius_A=None)
    elif getattr(args, "crop_radius_A", None) is not None:
        recipe["crop_radius_A"] = args.crop_radius_A
    if args.epochs is not None:
        if args.epochs < 1:
            raise CLIError(f"--epochs must be at least 1, got {args.epochs}")
        if args.model == "svm":
            raise CLIError("--epochs applies to fcnn and cnn; an svm has no epochs")
        params["max_epochs"] = args.epochs
    if args.search:
        if args.model != "svm":
            raise CLIError("--search applies to --model svm")
        params["search"] = True
    return recipe, params


def _preprocess_bar(bars, model: str):
    """``train_model``'s preprocess_progress(i, n, done, total) on ``bars``; for the CNN, its full
    bar then says what it waits for: the TensorFlow process the network trains in, which takes
    seconds to start before the first epoch's bar."""
    def show(i: int, n: int, done: int, total: int) -> None:
        bars.scan(i, n, done, total)
        if model == "cnn" and i == n - 1 and done >= total:
            bars.note("starting TensorFlow for the CNN")

    return show


def run(args) -> int:
    from ..models.metrics import format_table
    from ..pipeline.train import default_recipe, train_to_file
    from ._bars import Bars

    if len(args.labels) != len(args.scans):
        raise CLIError(f"{len(args.scans)} scans but {len(args.labels)} label files: give one label file per scan")
    if not 0 <= args.holdout < len(args.scans):
        raise CLIError(f"--holdout must leave at least one training scan (0..{len(args.scans) - 1}), "
                       f"got {args.holdout}")
    check_files(args.scans, args.labels, args.flatfield)
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise CLIError(f"{out}: is a folder; give a model file name such as model.sedmodel")
    # an existing model is kept unless --force; its folder created and writable
    if out.suffix.lower() != ".sedmodel":  # napari's reader and the docs know model files by it
        raise CLIError(f"{out}: a model file's name ends in .sedmodel (e.g. {out.with_suffix('.sedmodel').name})")
    output_file(out, args.force, inputs=[*args.scans, *args.labels, *(args.flatfield or [])])
    n = len(args.scans)
    scans = open_scans_from_args(args.scans, args)
    # every scan's, checked before any work, and loaded once
    flatfields = checked_flatfields(args.flatfield, scans, args.flatfield_dataset) if args.flatfield else None
    args._all_fitted = all(s.geometry.origin("camera_length_mm") == "fitted" for s in scans)
    changes, params = model_settings(args)
    with Bars() as bars, executor(args, sum(s.n_frames for s in scans)):
        summary = train_to_file(
            scans, args.labels, out, model=args.model, recipe=default_recipe(args.model, **changes),
            params=params, holdout=list(range(n - args.holdout, n)), val_fraction=args.val_fraction,
            seed=args.seed, flatfield=flatfields, progress=bars.epoch,
            preprocess_progress=_preprocess_bar(bars, args.model),
        )
    if json_printed(args, summary):
        print_warnings(summary["training"].get("warnings"))
        return 0
    t = summary["training"]
    print(f"{args.model} trained on {t['n_train_frames']} labeled frames ({t['n_train_inputs']} with augmentation), "
          f"{t['n_validation_frames']} for validation, {t['epochs']} epoch(s), {t['fit_time_s']:.1f} s")
    if "validation" in summary["metrics"]:
        print("\n" + format_table(summary["metrics"]["validation"], "== validation frames"))
    for name, m in summary["metrics"].get("holdout", {}).items():
        print("\n" + format_table(m, f"== held-out scan {name}"))
    print(f"\nmodel written to {summary['path']}")
    print_warnings(summary["training"].get("warnings"))
    return 0
