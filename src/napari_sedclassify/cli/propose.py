"""``sedclassify propose SCAN --out DIR``: a class map before any label, from clustering the
frames' radial profiles (see pipeline/propose.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from . import add_command, add_examples
from ._scan_options import (add_flatfield_options, add_scan_options, checked_flatfields, json_printed,
                            open_scan_from_args, out_folder, print_warnings, writable_folder)


def register(subparsers) -> None:
    p = add_command(subparsers, "propose", run,
                    "propose a class map without labels (clusters of the radial profiles, named by their physics)",
                    "Preprocess the scan, cluster its frames' radial profiles on the q axis and name each cluster "
                    "from its diffraction (amorphous-ice ring at 3.7 Å, Bragg spots). DIR receives "
                    "<scan>_proposal.npy (uint8 class map: 0 = no frame, 1 carbon, 2 amorphous_ice, 3 "
                    "crystalline_ice, 4 mixed; usable as --labels after checking), <scan>_proposal.json (the clusters "
                    "and their scores) and <scan>_proposal.png. The q axis needs the camera length: check "
                    "`sedclassify info` or fit it with `sedclassify calibrate`.")
    p.add_argument("scan", metavar="SCAN", help="scan file")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (created if missing)")
    add_flatfield_options(p, "flat-field acquisition of the session")
    p.add_argument("--seed", type=int, default=0, help="random seed of the clustering (default 0)")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.add_argument("--json", action="store_true", help="print the clusters as JSON")
    add_scan_options(p)
    add_examples(p, "sedclassify propose scan.mib --flatfield flat.mib -o proposal/")


def run(args) -> int:
    import numpy as np

    from ..classes import ClassTable
    from ..io.atomic import check_target, write_json, write_npy
    from ..models.metrics import plot_overlay
    from ..pipeline.preprocess import preprocess
    from ..pipeline.propose import check_ring_recorded, propose

    scan = open_scan_from_args(args.scan, args)
    check_ring_recorded(scan.geometry, args.scan)  # before the frames are read
    out = out_folder(args.out)
    stem = out / Path(args.scan).stem
    targets = [Path(f"{stem}_proposal{ext}") for ext in (".npy", ".json", ".png")]
    for t in targets:
        check_target(t, args.force)
    flatfield = checked_flatfields(args.flatfield, [scan], args.flatfield_dataset)[0] if args.flatfield else None
    writable_folder(out)
    result = preprocess(scan, flatfield=flatfield)
    prop = propose(result, scan.geometry, seed=args.seed, source=args.scan)
    table = ClassTable.default()
    write_npy(targets[0], prop.class_map.astype(np.uint8), force=True)
    counts = {table.names[i]: int((prop.class_map == i).sum()) for i in table.ids}
    doc = {"scan": str(args.scan), "counts": counts, **prop.to_dict()}
    write_json(targets[1], doc, force=True)
    plot_overlay(result.virtual["total"], prop.class_map, targets[2], table,
                 title=f"{stem.name} (proposal): " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()))
    if scan.geometry.assumed():
        print(f"note: {scan.geometry.values_text(scan.geometry.assumed())} assumed; the cluster names rely on the "
              "q axis: give the true values or run `sedclassify calibrate`", file=sys.stderr)
    print_warnings(prop.details.get("warnings"))
    if not json_printed(args, doc):
        for g in prop.groups:
            print(f"cluster {g['group']}: {g['frames']} frames, ice-ring height {g['ice_ring_height']:.2f} -> {g['class']}")
        print(", ".join(f"{k} {v}" for k, v in counts.items()))
        for t in targets:
            print(f"wrote {t}")
    return 0
