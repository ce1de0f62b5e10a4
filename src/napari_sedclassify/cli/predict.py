"""``sedclassify predict``: classify scans with a model file and write class maps."""

from __future__ import annotations

import threading
from pathlib import Path

from . import CLIError, add_command, add_examples
from ._executor import cluster_path, executor
from ._scan_options import (add_flatfield_options, add_model_argument, add_scan_options, check_files,
                            checked_flatfields, json_printed, open_scans_from_args, out_folder, print_warnings,
                            writable_folder)


def register(subparsers) -> None:
    p = add_command(subparsers, "predict", run, "classify scans with a trained model",
                    "Classify every frame of each scan with a model file. Per scan, DIR receives <scan>_classes.npy "
                    "and <scan>_classes.tif (class map, uint8: 0 = not classified, 1 carbon, 2 amorphous_ice, 3 "
                    "crystalline_ice, 4 mixed), <scan>_probabilities.npy (scan_y, scan_x, classes) with "
                    "<scan>_probabilities.json naming its classes, and <scan>_overlay.png (integrated image with the "
                    "class map).")
    p.usage = "sedclassify predict MODEL SCAN [SCAN ...] -o DIR [--flatfield F [F ...]] [options]"
    # MODEL and SCAN may be taken by a --flatfield list given before them: _inputs() gives them back
    add_model_argument(p, nargs="?")
    p.add_argument("scans", nargs="*", metavar="SCAN", help="scan files")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (created if missing)")
    add_flatfield_options(p, "flat-field file(s): one for all scans or one per scan, in the scans' order (as "
                          "train and evaluate take them; --flatfield given once per scan works too)",
                          nargs="+", action="append")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.add_argument("--keep", default="amorphous_ice", metavar="CLASSES",
                   help="classes listed in <name>_keep.csv, the keep-list (names or ids, comma-separated; "
                        "default amorphous_ice; the same CSV as watch and the napari export)")
    p.add_argument("--uncertain-below", type=float, metavar="P",
                   help="mark frames whose most probable class has a probability below P (0-1) as uncertain: "
                        "class 0 (not classified) in the class map, so keep-lists and reductions made from it "
                        "leave them out, and listed in <scan>_uncertain.npy (bool); trades recall for precision")
    p.add_argument("--hspy", action="store_true",
                   help="also write <scan>_classes.hspy, _probabilities.hspy, _confidence.hspy and _ria.hspy: "
                        "HyperSpy signals with the scan axes in nm and q in 1/Å (needs the formats extra: "
                        'pip install "napari-sedclassify[formats]")')
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    add_scan_options(p, executor=True)
    add_examples(p, "sedclassify predict builtin scan.mib --flatfield flat.mib --camera-length 870 -o out/",
                 "sedclassify predict fcnn.sedmodel a.mib b.mib --flatfield flat.mib -o out/ --scheduler tcp://host:8786 --worker-wait 600")


def run(args) -> int:
    from ._prefetch import import_in_background

    import_in_background("tqdm")  # the progress bar, while the model and the scans are opened
    from ..pipeline.batch import batch_predict
    from ._bars import Bars

    args.model, args.scans, args.flatfield = _inputs(args.model, args.scans, args.flatfield)
    check_files(args.scans, args.flatfield, model=args.model)
    if args.uncertain_below is not None and not 0.0 <= args.uncertain_below <= 1.0:
        raise CLIError(f"--uncertain-below is a probability between 0 and 1, got {args.uncertain_below}")
    out = out_folder(args.out)
    stems = [Path(s).stem for s in args.scans]
    if len(set(stems)) != len(stems):
        raise CLIError("two scans share a file name; their outputs would overwrite each other: "
                       + ", ".join(sorted({s for s in stems if stems.count(s) > 1})))
    from ..models.persistence import model_from_metadata, read_metadata, resolve_model_path
    from ..models.training import model_file_warnings
    from ..pipeline.predict import preprocess_passes
    from ..pipeline.reduce import class_ids

    path = resolve_model_path(args.model)
    card = model_from_metadata(read_metadata(path), path)
    try:  # the keep-list's classes must be the model's: said before any work
        class_ids(args.keep, card.classes)
    except ValueError as exc:
        raise CLIError(f"--keep {args.keep}: {exc}") from None
    scans = open_scans_from_args([cluster_path(s, args) for s in args.scans], args)
    # before any work: every scan's flat-field, and a folder to write in (batch_predict then checks
    # every scan's output files before it classifies the first)
    flatfields = checked_flatfields(args.flatfield, scans, args.flatfield_dataset) if args.flatfield else None
    writable_folder(out)
    frames, files = sum(s.n_frames for s in scans), [s.source for s in scans]
    passes = preprocess_passes(card)  # fitted centring: 2 passes
    with Bars() as bars, executor(args, frames, files) as client:
        results = batch_predict(args.model, scans, out, flatfield=flatfields, client=client, force=args.force,
                                **_progress(bars, scans, passes, client),
                                classify_progress=_classify_progress(bars, scans, client),
                                uncertain_below=args.uncertain_below, hspy=args.hspy,
                                keep=[k for k in args.keep.split(",") if k.strip()])
    print_warnings(model_file_warnings(card) + [w for r in results for w in r.get("warnings", [])])
    if not json_printed(args, results):
        for r in results:
            counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items())
            print(f"{r['name']}: {counts}" + (f", not classified {r['unclassified']}" if r["unclassified"] else "")
                  + (f" (uncertain {r['uncertain']})" if "uncertain" in r else ""))
            for f in r["files"].values():
                print(f"  {f}")
    return 0


def _in_turn(scans, client) -> bool:
    """Whether ``batch_predict`` takes the scans one after another (threads here, or one scan): each
    scan's bars, "preprocess" then "classify", follow each other. On a cluster two scans run at
    once: one preprocessing bar over all of them, the frames classified said after it
    (:func:`_classify_progress`)."""
    return client is None or len(scans) == 1


def _classify_progress(bars, scans, client):
    """``batch_predict``'s classify_progress(i, n, done, total) on ``bars``: a "classify" bar per
    scan after its "preprocess" bar (:func:`_in_turn`); on a cluster, the frames classified over all
    scans said after the one preprocessing bar ("classified 512/1152 frames"), which stays full while
    the model works, instead of a bar that would take turns with it."""
    if _in_turn(scans, client):
        return bars.classify
    lock, done, totals = threading.Lock(), [0] * len(scans), [s.n_frames for s in scans]

    def show(i: int, n: int, d: int, total: int) -> None:
        with lock:
            done[i], totals[i] = d, total
            text = f"classified {sum(done)}/{sum(totals)} frames"
        bars.note(text)

    return show


def _progress(bars, scans, passes: int, client) -> dict:
    """``batch_predict``'s preprocessing progress on ``bars``: scan_progress(i, n, done, total),
    per scan and pass, when the scans are preprocessed one after another (:func:`_in_turn`); on a
    cluster, two scans at once, progress(done, total): one bar over all of them naming the passes."""
    from ._bars import scans_by_pass

    if _in_turn(scans, client):
        return {"scan_progress": scans_by_pass(bars, [s.n_frames for s in scans])}
    desc = bars.frames_desc + (f" ({passes} passes over each frame)" if passes > 1 else "")
    return {"progress": lambda done, total: bars.scan(0, 1, done, total, desc=desc)}


def _inputs(model, scans, flatfield_lists) -> tuple[str, list, list | None]:
    """MODEL, the SCANs and the flat-field files of the command line. ``flatfield_lists``: the
    values of each --flatfield (one list per time given). A --flatfield given before MODEL or the
    SCANs took them into its list: they are that list's last values, told apart by the counts (one
    flat-field for all scans or one per scan) and, when the counts allow several splits, by the
    model's name ('builtin' or a .sedmodel file); a CLIError when they cannot be told apart."""
    lists = flatfield_lists or []
    if model is not None and scans:
        return model, scans, [f for values in lists for f in values] or None
    splits = [split for i in range(len(lists)) for split in _splits(lists, i, model)]
    if len(splits) > 1:
        splits = [s for s in splits if _model_name(s[0])] or splits
    if not splits:
        raise CLIError("give MODEL and at least one SCAN" + (" (the --flatfield list took what followed it: put "
                                                             "MODEL and SCAN first)" if lists else ""))
    if len(splits) > 1:
        given = " ".join(f for values in lists for f in values)
        raise CLIError(f"--flatfield {given}: cannot tell the flat-fields from MODEL and SCAN: put MODEL and SCAN "
                       "before --flatfield")
    return splits[0]


def _splits(lists, i: int, model):
    """The ways list ``i`` of --flatfield ends with what the command line gave after it (MODEL, when
    ``model`` is None, and the SCANs) with a count of flat-fields that fits the scans."""
    values = lists[i]
    before, after = [f for v in lists[:i] for f in v], [f for v in lists[i + 1:] for f in v]
    for j in range(1, len(values)):
        flats = before + values[:j] + after
        rest = values[j:] if model is not None else values[j + 1:]
        if rest and len(flats) in (1, len(rest)):
            yield (model if model is not None else values[j]), rest, flats


def _model_name(name) -> bool:
    from ..models.persistence import is_builtin

    return is_builtin(name) or str(name).lower().endswith(".sedmodel")
