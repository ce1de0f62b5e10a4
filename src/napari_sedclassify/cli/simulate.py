"""``sedclassify simulate``: write simulated scans (with truth, centres, overview, flat-field)."""

from __future__ import annotations

import sys

from . import CLIError, add_command, add_examples
from ._scan_options import json_printed, out_folder, simulation_shape, writable_folder


def register(subparsers) -> None:
    p = add_command(subparsers, "simulate", run, "write simulated holey-carbon / vitreous-ice scans",
                    "Write simulated narrow-beam diffraction scans (4D uint16 .npy) with their true class map, true "
                    "beam centres, image-mode overview and the session's flat-field, plus dataset.json. Deterministic "
                    "per seed.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write into (created if missing)")
    p.add_argument("--scans", type=int, default=1, metavar="N", help="number of scans (default 1)")
    p.add_argument("--session", default="A", metavar="NAME",
                   help="session name: 'A' is the paper's alignment, other names differ slightly (default A)")
    p.add_argument("--scan-shape", type=int, nargs=2, default=(40, 40), metavar=("SY", "SX"),
                   help="scan points (default 40 40)")
    p.add_argument("--detector", type=int, default=512, metavar="PX", help="detector size in px (default 512)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--demo", action="store_true",
                   help="write the demo set instead: 16 scans of session A and 1 of session B")
    p.add_argument("--session-grid", nargs="+", metavar="AXIS=V1,V2",
                   help="write --scans scans of every session of a grid instead, e.g. convergence=0,0.5 "
                        "ice=1,2.5 dose=0.3,1,3 camera=0.94,1.08 descan=1,2 (convergence in mrad; the others "
                        "are factors on session --session's values; 'camera' scales the true camera length, "
                        "the files keep the nominal one); each session also gets its own gain map and "
                        "alignment. See docs/simulation.md")
    p.add_argument("--force", action="store_true",
                   help="write into a folder that already holds a simulated data set (its files are replaced)")
    p.add_argument("--json", action="store_true", help="print the data set description as JSON")
    add_examples(p, "sedclassify simulate sim/ --scans 4 --scan-shape 40 40 --detector 256",
                 "sedclassify simulate grid/ --scans 2 --detector 128 --session-grid ice=1,2.5 dose=0.3,1")


def run(args) -> int:
    from tqdm import tqdm

    from ..simulate import demo_dataset, simulate_dataset, simulate_session_grid
    from ..simulate.grid import parse_grid_spec, session_grid

    if args.scans < 1:
        raise CLIError(f"--scans must be at least 1, got {args.scans}")
    sy, sx = simulation_shape(args, 16, 1)
    out_dir = out_folder(args.out_dir)
    n_scans = 17 if args.demo else args.scans
    grid = None
    if args.session_grid:
        if args.demo:
            raise CLIError("give --demo or --session-grid, not both")
        try:
            grid = parse_grid_spec(args.session_grid)
            n_scans *= len(session_grid(args.session, **grid))
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    if (out_dir / "dataset.json").exists() and not args.force:  # its scans would be replaced in silence
        raise CLIError(f"{out_dir} already holds a simulated data set (dataset.json): choose another folder, or "
                       "--force to replace it")
    writable_folder(out_dir)  # before any work: created, and writable
    try:
        with tqdm(total=n_scans * sy * sx, unit="frame", desc="simulate", file=sys.stderr) as bar:
            kwargs = dict(scan_shape=(sy, sx), detector_px=args.detector, seed=args.seed, progress=bar.update)
            if args.demo:
                dataset = demo_dataset(out_dir, **kwargs)
            elif grid is not None:
                dataset = simulate_session_grid(out_dir, n_scans=args.scans, base=args.session, **grid, **kwargs)
            else:
                dataset = simulate_dataset(out_dir, n_scans=args.scans, session=args.session, **kwargs)
    except KeyboardInterrupt:
        _say_what_was_written(out_dir)
        raise
    from ..pipeline import tally

    for entry in dataset["scans"]:
        tally.report(str(out_dir / entry["scan"]), sy * sx)
    if not json_printed(args, dataset):
        for entry in dataset["scans"]:
            print(f"{out_dir / entry['scan']}  session {entry['session']}  seed {entry['seed']}")
        print(f"{out_dir / 'dataset.json'}")
    return 0


def _say_what_was_written(out_dir) -> None:
    """After Ctrl-C, one line on what the stopped run left: the dataset.json of the scans written
    whole (none when it stopped in the first scan)."""
    from ..simulate import load_dataset

    try:
        dataset = load_dataset(out_dir)
    except (OSError, ValueError, KeyError):
        return
    if dataset.get("complete", True) is False:
        print(f"sedclassify simulate: {out_dir / 'dataset.json'} describes the {len(dataset['scans'])} of "
              f"{dataset['planned_scans']} scans written whole; run again with --force for all of them",
              file=sys.stderr)
