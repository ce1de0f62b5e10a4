"""Options every command that opens scans shares: the scan shape and the calibration values
(and, with ``executor=True``, where the work runs); checks and output the commands share.

Values given here override what the file says (and a ``sedclassify calibrate --write``
sidecar); what nobody states stays marked "assumed" (see ``sedclassify info``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..jsonutil import jsonable
from . import CLIError

#: The folders :func:`writable_folder` created in this command, outermost first: the ones still
#: empty when the command ends are removed (:func:`remove_created_empty_folders`).
_CREATED: list[Path] = []


def add_scan_options(p, *, scan_shape: bool = True, executor: bool = False) -> None:
    """Add --dataset, --missing-at, --camera-length, --pixel-size, --voltage, --scan-step (and
    --scan-shape, and --scheduler / --workers with ``executor``) to parser ``p``: every command
    that opens scan files has them (:func:`open_scan_from_args` applies them)."""
    f = p.add_argument_group("reading the scan files")
    f.add_argument("--dataset", metavar="NAME",
                   help="array to read in files that hold several (HDF5, MATLAB, zarr); with several scans, "
                        "the same name in each")
    f.add_argument("--missing-at", choices=("end", "start"), default="end",
                   help="where the positions without a frame are when a file holds fewer frames than the scan "
                        "has positions: end (an interrupted acquisition, default) or start")
    g = p.add_argument_group("calibration (overrides the file; unset values keep the file's or stay assumed)")
    g.add_argument("--camera-length", type=float, metavar="MM", dest="camera_length_mm",
                   help="effective camera length in mm (fit it from the data with `sedclassify calibrate`)")
    g.add_argument("--pixel-size", type=float, metavar="UM", dest="pixel_size_um",
                   help="detector pixel pitch in µm (55 for Medipix3/Timepix; 110 for 2x2-binned frames)")
    g.add_argument("--voltage", type=float, metavar="KV", dest="voltage_kv", help="accelerating voltage in kV")
    g.add_argument("--scan-step", type=float, metavar="NM", dest="scan_step_nm", help="distance between scan points in nm")
    g.add_argument("--edge-pixel-width", type=float, metavar="PITCHES",
                   help="width of a Medipix3 quad's wide pixels along its chip boundaries, in pixel pitches, 1 = "
                        "all pixels equal (default: the file's, else measured from the frames: the wide pixels "
                        "collect that many times their neighbours' counts)")
    g.add_argument("--beam-radius", type=float, metavar="PX", dest="beam_radius_px",
                   help="direct-beam radius in px, for scans whose first frames show no beam to measure it on "
                        "(crystals, a grid bar; default: measured on those frames): sets the centre search and "
                        "the bright-field and ADF radii")
    if scan_shape:
        g.add_argument("--scan-shape", nargs=2, type=int, metavar=("SY", "SX"),
                       help="scan rows and columns when the file does not say them (or to override it)")
    if executor:
        from ._executor import add_executor_options

        add_executor_options(p)


def add_scan_argument(p) -> None:
    """Add SCAN (one scan file) and --flatfield (with --flatfield-dataset) to parser ``p``."""
    p.add_argument("scan", metavar="SCAN", help="scan file (any format `sedclassify info` reads)")
    add_flatfield_options(p, "flat-field: flood stack (N, ky, kx) or 2D gain map")


def add_flatfield_options(p, help: str, **kwargs) -> None:
    """Add --flatfield (``help``; ``kwargs``: its nargs or action) and --flatfield-dataset to
    parser ``p`` (:func:`checked_flatfields` loads them)."""
    p.add_argument("--flatfield", metavar="F", help=help, **kwargs)
    p.add_argument("--flatfield-dataset", metavar="NAME",
                   help="array to read in a flat-field file that holds several (HDF5, MATLAB, zarr), e.g. "
                        "/entry/flood; with several flat-field files, the same name in each (--dataset chooses "
                        "the scan's)")


def add_model_argument(p, **kwargs) -> None:
    p.add_argument("model", metavar="MODEL", help="model file (.sedmodel), or 'builtin' for the model shipped with "
                   "the package (docs/models.md: its training domain)", **kwargs)


def check_files(*lists, model=None) -> None:
    """A CLIError for the first file that does not exist: ``model`` (unless the built-in one; a
    folder is not a model file), then the paths of ``lists`` (lists of paths, or None). Then,
    before any work, the libraries ``model`` needs (a CNN without TensorFlow: the error gives the
    pip command)."""
    from ..models.persistence import is_builtin

    files = [] if model is None or is_builtin(model) else [model]
    if files and Path(model).is_dir():  # read as a file, it was a bare "[Errno 21] Is a directory"
        raise CLIError(f"{model}: a folder, not a model file (.sedmodel)")
    for f in files + [f for paths in lists for f in paths or []]:
        if not Path(f).exists():
            raise CLIError(f"{f}: no such file")
    if model is not None:
        from ..pipeline.predict import check_model_libraries

        check_model_libraries(model)


def out_folder(path) -> Path:
    """``path`` as an output folder (created by :func:`writable_folder` before the work): a
    CLIError when a file is there."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: exists and is not a folder")
    return out


def os_reason(exc: OSError) -> str:
    """Why an OSError happened, without the file name it carries (a hidden temporary file's)."""
    import os

    return os.strerror(exc.errno) if exc.errno else str(exc)


def _write_check(folder: Path) -> None:
    """Make a file in ``folder`` and drop it: an unnamed one where the system has them (Linux's
    O_TMPFILE: nothing is left behind, and no ``tempfile`` import, 2 ms of a command's start),
    else ``tempfile``'s named one, whose error then says why the folder takes no file."""
    import os

    unnamed = getattr(os, "O_TMPFILE", 0)
    if unnamed:
        try:
            os.close(os.open(folder, unnamed | os.O_WRONLY, 0o600))
            return
        except OSError:  # a file system without unnamed files, or a folder not writable: tempfile tells
            pass
    import tempfile

    with tempfile.TemporaryFile(dir=folder, prefix=".sedclassify-write-check-"):
        pass


def writable_folder(folder, given=None) -> Path:
    """Create ``folder`` (and its missing parents), as every command does for its outputs, and check
    that files can be written in it: before any work, a CLIError naming ``given`` (the path the
    user gave: the folder, or an output file in it) when it cannot be created or written in."""
    folder = Path(folder) if str(folder) else Path(".")
    given = folder if given is None else given
    if folder.exists() and not folder.is_dir():
        raise CLIError(f"{given}: {folder} exists and is not a folder")
    missing = [f for f in (folder, *folder.parents) if not f.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"{given}: cannot create the folder {folder} ({os_reason(exc)})") from None
    _CREATED.extend(reversed(missing))
    try:
        _write_check(folder)
    except OSError as exc:
        raise CLIError(f"{given}: cannot write in the folder {folder} ({os_reason(exc)})") from None
    return folder


def remove_created_empty_folders() -> None:
    """Remove the folders this command created (:func:`writable_folder`) that are still empty,
    innermost first (a command stopped before it wrote anything, by Ctrl-C or an error, leaves
    no empty folder behind); a folder that existed before the command is never touched."""
    while _CREATED:
        try:
            _CREATED.pop().rmdir()
        except OSError:  # not empty (the command's outputs), or gone
            pass


def output_file(path, force: bool = False, *, folder_ok: bool = False, inputs=()) -> Path:
    """``path`` as an output file, checked before any work: refused when it is one of ``inputs``
    (the command's input files: --force replaced the scan being read with the output), when it
    exists (unless ``force``) or is a folder (unless ``folder_ok``: a zarr result is one); its
    folder created (with missing parents) and writable."""
    path = Path(path)
    same = next((f for f in inputs if f is not None and _same_file(f, path)), None)
    if same is not None:
        raise CLIError(f"{path}: is the input {same}; write the output to another file")
    if path.is_dir() and not folder_ok:
        raise CLIError(f"{path}: is a folder, not an output file")
    if path.exists() and not force:
        raise CLIError(f"{path}: exists; not overwritten (use --force to replace it)")
    writable_folder(path.parent, path)
    return path


def _same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one existing file (or folder), by any name or link."""
    import os

    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def checked_flatfields(flatfields, scans, dataset: str | None = None) -> list:
    """One loaded flat-field (or None) per scan, each checked against its scan's detector before
    any work (a multi-scan run wrote the first scans' outputs before finding a wrong shape).
    flatfields: a path or a list of paths (one for all scans, or one per scan); dataset: the
    array to read in each (--flatfield-dataset)."""
    from ..pipeline.scans import flatfields_for
    from ..processing import load_flatfield
    from ..processing.flatfield import binning_note

    paths = flatfields if isinstance(flatfields, (list, tuple)) else [flatfields]
    loaded = {}  # a file given for several scans is read once
    for path in paths:
        if path not in loaded:
            loaded[path] = load_flatfield(path, dataset=dataset)
    ffs = flatfields_for([loaded[path] for path in paths], len(scans))
    for ff, scan in zip(ffs, scans):
        if ff is not None and tuple(ff.shape) != tuple(scan.detector_shape):
            raise CLIError(f"flat-field {getattr(ff, 'source', None) or ''} {tuple(ff.shape)} does not match the "
                           f"detector {tuple(scan.detector_shape)} of {scan.source or 'the scan'}"
                           f"{binning_note(ff.shape, scan.detector_shape)}")
    return ffs


def print_warnings(warnings) -> None:
    """The engine's warnings, one ``warning: <text>`` line each, on standard error (with --json
    too: standard output holds the JSON alone)."""
    import sys

    for w in warnings or []:
        print(f"warning: {w}", file=sys.stderr)


def simulation_shape(args, min_px: int, min_points: int) -> tuple[int, int]:
    """--scan-shape, checked with --detector (None, or an even number of px >= ``min_px``)."""
    if args.detector is not None and (args.detector < min_px or args.detector % 2):
        raise CLIError(f"--detector must be an even number of px >= {min_px}, got {args.detector}")
    sy, sx = args.scan_shape
    if sy < min_points or sx < min_points:
        least = "positive" if min_points == 1 else f"at least {min_points} {min_points}"
        raise CLIError(f"--scan-shape must be {least}, got {sy} {sx}")
    return sy, sx


def json_printed(args, obj) -> bool:
    """With --json, print ``obj`` as strict JSON (NaN and inf as the strings of ``jsonable``, never
    the bare NaN that JSON parsers refuse); says whether it did."""
    if args.json:
        print(json.dumps(jsonable(obj), indent=2))
    return args.json


def detector_options(args) -> dict:
    """What the command line says of the detector's pixels and the direct beam, as scan metadata
    (what the preprocessing plan reads): {}, {"edge_pixel_width": w, "edge_pixel_width_origin":
    "given"} and {"beam_radius_px": r} (a CLIError for w < 1, or r refused by PreprocessParams)."""
    out = {}
    w = getattr(args, "edge_pixel_width", None)
    if w is not None:
        if not w >= 1:
            raise CLIError(f"--edge-pixel-width must be at least 1 pitch, got {w:g}")
        out.update(edge_pixel_width=float(w), edge_pixel_width_origin="given")
    r = getattr(args, "beam_radius_px", None)
    if r is not None:
        beam_params(r)  # refused here, before any file is read
        out["beam_radius_px"] = float(r)
    return out


def beam_params(radius_px: float):
    """PreprocessParams with the direct-beam radius ``radius_px`` (--beam-radius): the one place
    its value is checked (a CLIError, one line)."""
    from ..processing import PreprocessParams

    try:
        return PreprocessParams(beam_radius_px=radius_px)
    except ValueError as exc:  # the Python default's aside, said as the flag's
        raise CLIError(str(exc).replace("(None: measured)", "(leave --beam-radius out to measure it)")) from None


def check_beam_radius(args, scan) -> None:
    """A CLIError naming the scan when --beam-radius is wider than its detector holds."""
    r = getattr(args, "beam_radius_px", None)
    if r is not None:
        try:
            beam_params(r).check_detector(scan.geometry)
        except ValueError as exc:
            raise CLIError(f"{scan.source or 'the scan'}: {exc}") from None


def geometry_values(args) -> dict:
    """The calibration values given on the command line, {name: value}."""
    names = ("camera_length_mm", "pixel_size_um", "voltage_kv", "scan_step_nm")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def file_options(args) -> dict:
    """How the command line says to read scan files: {"dataset": ..., "missing_at": ...}."""
    return {"dataset": getattr(args, "dataset", None), "missing_at": getattr(args, "missing_at", None) or "end"}


def open_scan_from_args(path, args, **options):
    """Open ``path`` with the dataset, missing positions, shape and calibration the command line
    gives (from the root with ``--scheduler``: ``_executor.cluster_path``)."""
    from ..io import open_scan
    from ._executor import cluster_path

    options = {**file_options(args), **options}
    shape = getattr(args, "scan_shape", None)
    scan = open_scan(cluster_path(path, args), tuple(shape) if shape else None, geometry=geometry_values(args),
                     **options)
    scan.metadata.update(detector_options(args))
    check_beam_radius(args, scan)
    return scan


def open_scans_from_args(paths, args, **options) -> list:
    return [open_scan_from_args(p, args, **options) for p in paths]
