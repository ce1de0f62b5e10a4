"""``sedclassify reduce SCAN --classes amorphous_ice (--model M | --labels L) --out FILE``:
keep only the frames of the chosen classes, losslessly compressed, with their positions, the
class map and provenance (see pipeline/reduce.py and docs/live-and-reduce.md)."""

from __future__ import annotations

from . import CLIError, add_command, add_examples
from ._executor import executor
from ._scan_options import (add_scan_argument, add_scan_options, check_files, checked_flatfields, json_printed,
                            open_scan_from_args, output_file, print_warnings)


def register(subparsers):
    p = add_command(subparsers, "reduce", run,
                    "write only the frames of chosen classes (e.g. amorphous ice), losslessly compressed",
                    "Classify a scan with a model (or take a class map) and write only the frames of the chosen "
                    "classes, with their scan positions, the class map and provenance, to one HDF5 file that "
                    "reads back with the project's reader (sedclassify info, napari).")
    add_scan_argument(p)
    p.add_argument("--classes", nargs="+", default=["amorphous_ice"], metavar="CLASS",
                   help="class names or ids to keep (default: amorphous_ice)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="MODEL", help="model file (.sedmodel) that classifies the scan")
    src.add_argument("--labels", metavar="L", help="class map of the scan (.npy or .tif, 0 = unlabeled)")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="output file (.h5)")
    p.add_argument("--compression", choices=("bslz4", "terse", "none"), default="bslz4",
                   help="bslz4: HDF5 Bitshuffle-LZ4 (default); terse: TERSE/PROLIX per frame (pyterse); none")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_scan_options(p, executor=True)
    add_examples(p, "sedclassify reduce scan.mib --flatfield flat.mib --model fcnn.sedmodel -o ice.h5",
                 "sedclassify reduce scan.mib --labels labels.tif --classes amorphous_ice mixed -o kept.h5")
    return p


def _checked_classes(classes, table) -> None:
    """A CLIError naming --classes when one of ``classes`` is not in the class table."""
    from ..pipeline.reduce import class_ids

    try:
        class_ids(classes, table)
    except ValueError as exc:
        raise CLIError(f"--classes {' '.join(classes)}: {exc}") from None


def run(args):
    from functools import partial

    from ..classes import ClassTable
    from ..pipeline.reduce import reduce_scan
    from ._bars import Bars, by_pass

    if not str(args.out).lower().endswith((".h5", ".hdf5")):
        raise CLIError(f"{args.out}: a reduced scan is written as HDF5: give a name ending in .h5")
    check_files([args.labels] if args.labels else None, model=args.model)
    if args.labels:  # the classes to keep, said before any work (with --model: once its classes are read)
        _checked_classes(args.classes, ClassTable.default())
    # fail before any work; its folder created, and writable
    output_file(args.out, args.force, inputs=[args.scan, args.labels, args.model, args.flatfield])
    scan = open_scan_from_args(args.scan, args)
    flatfield = checked_flatfields(args.flatfield, [scan], args.flatfield_dataset)[0] if args.flatfield else None
    probabilities = None
    if args.model:
        from ..pipeline.predict import as_model, predict_scan

        model = as_model(args.model)
        table = model.classes
        _checked_classes(args.classes, table)
        with Bars() as bars, executor(args, scan.n_frames):
            pred = predict_scan(model, scan, flatfield=flatfield, progress=by_pass(bars, scan.n_frames),
                                classify_progress=partial(bars.classify, 0, 1))
        class_map, probabilities = pred.class_map, pred.probabilities
        how = {"class_map_from": "model", "model": str(args.model), "model_kind": model.kind,
               "flatfield": args.flatfield, "class_ids_of_probabilities": pred.class_ids,
               "preprocessing": pred.preprocessing}  # the plan the frames were classified with
        if pred.warnings:  # the frames kept are the model's choice: what may make it wrong, said and stored
            how["warnings"] = list(pred.warnings)
        print_warnings(pred.warnings)
    else:
        from ..labels import load_class_map

        table = ClassTable.default()
        class_map = load_class_map(args.labels, scan.scan_shape)
        how = {"class_map_from": "labels", "labels": str(args.labels)}
    with Bars(frames_desc="reduce") as bars:
        report = reduce_scan(scan, class_map, args.out, classes=args.classes, class_table=table,
                             compression=args.compression, probabilities=probabilities, provenance=how,
                             force=args.force, progress=bars.frames)
    d = report.to_dict()
    if how.get("warnings"):
        d["warnings"] = how["warnings"]
    if json_printed(args, d):
        return 0
    print(f"kept {d['n_kept']} of {d['n_frames']} frames ({100 * d['kept_fraction']:.1f} %: "
          f"{', '.join(d['classes'])}) -> {d['path']}")
    compressed = (f"{d['compression']} compression {d['compression_ratio']:.2f}x" if d["n_kept"]
                  else "no frame to compress")
    print(f"size {d['bytes_file'] / 1e6:.2f} MB for a {d['bytes_scan'] / 1e6:.2f} MB scan: "
          f"{d['size_ratio']:.1f}x smaller ({compressed}), {d['seconds']:.2f} s ({d['mb_per_s']:.0f} MB/s)")
    return 0
