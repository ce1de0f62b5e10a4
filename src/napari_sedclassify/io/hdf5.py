"""HDF5 scans: py4DSTEM / emdfile EMD, Prismatic EMD, DECTRIS ARINA (NeXus master + data files),
and any file with a 3D (N, det_y, det_x) or 4D (scan_y, scan_x, det_y, det_x) dataset.

Files are opened read-only and read lazily chunk by chunk; hdf5plugin provides the
bitshuffle-LZ4 filter of DECTRIS files. Several candidate arrays: an EMD file's first datacube
is read (``dataset=`` picks another); in any other file ``dataset=`` must say which.
"""

from __future__ import annotations

import logging
import re
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import ScanFormatError
from ..geometry import Geometry, electron_wavelength_A
from ..scan import Scan
from ._lazy import (FlatFieldFile, PartsFrames, array_frames, check_pixel_dtype, dataset_choice, file_token,
                    grid_frames, reading_flatfield, stated_scan_shape, to_native, what_is_read)
from .hyperspy import hspy_calibration

log = logging.getLogger(__name__)

_ARINA_DATA = re.compile(r"data_\d{6}$")


def _h5py():
    import h5py
    import hdf5plugin  # noqa: F401  (registers bitshuffle-LZ4 and other filters)

    return h5py


def probe(path) -> bool:
    h5py = _h5py()
    if not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as f:
        return bool(_arina_links(f) or candidates(f))


def candidates(group) -> list[tuple[str, tuple, np.dtype]]:
    """Numeric 3D and 4D datasets under ``group``: (name, shape, dtype)."""
    h5py = _h5py()
    found = []

    def visit(name, obj):
        if (isinstance(obj, h5py.Dataset) and obj.ndim in (3, 4) and obj.dtype.kind in "uifb"
                and min(obj.shape[-2:]) >= 2 and obj.size > 0):
            found.append((name, tuple(obj.shape), obj.dtype))

    group.visititems(visit)
    return found


def describe(found) -> str:
    return "; ".join(f"{name} {'x'.join(map(str, shape))} {dtype}" for name, shape, dtype in found) or "none"


def choose_dataset(path, found, dataset, kind: str = "dataset") -> str:
    """The name to read: ``dataset`` when given and valid, else the only candidate."""
    names = [name for name, _, _ in found]
    what = what_is_read()[0]
    if dataset is not None:
        name = str(dataset).strip("/")
        if name not in names:
            raise ScanFormatError(f"{path}: no 3D or 4D {kind} '{dataset}'; candidates: {describe(found)}")
        return name
    if not found:
        raise ScanFormatError(f"{path}: no 3D or 4D numeric {kind} (not a {what})")
    if len(found) > 1:
        raise ScanFormatError(
            f"{path}: several {kind}s could be the {what}, choose one with {dataset_choice()}: {describe(found)}"
        )
    return names[0]


def _is_emd(f) -> bool:
    """An EMD file: emdfile marks its root, EMD 0.x (Prismatic, old py4DSTEM) its top groups."""
    if "emd_group_type" in f.attrs or "version_major" in f.attrs:
        return True
    for key in f.keys():
        try:
            if "emd_group_type" in f[key].attrs:
                return True
        except (KeyError, OSError):  # a dangling external link
            continue
    return False


def _emd_datacubes(f, found):
    """The 4D candidates of an EMD file that sit in an EMD data group (py4DSTEM, Prismatic)."""
    return sorted(c for c in found if len(c[1]) == 4 and "emd_group_type" in f[c[0]].parent.attrs)


class H5Frames(PartsFrames):
    """Frames of one or more 3D HDF5 datasets (N_i, det_y, det_x), one after the other."""

    def __init__(self, parts, frame_shape, dtype, path):
        self.parts = [(str(p), str(n), int(k)) for p, n, k in parts]
        self.starts = np.cumsum([0] + [k for _, _, k in self.parts])
        super().__init__(path, self.starts[-1], frame_shape, dtype)

    def _open(self):
        h5py = _h5py()
        return [h5py.File(p, "r")[n] for p, n, _ in self.parts]

    def _read_part(self, datasets, i, lo, hi):
        return to_native(np.asarray(datasets[i][lo:hi]))


#: Short names of HDF5 filters that h5py's ``Dataset.compression`` does not name (plugins).
_FILTER_NAMES = {1: "gzip", 4: "szip", 5: "nbit", 6: "scaleoffset", 307: "bzip2", 32000: "lzf", 32001: "blosc",
                 32004: "lz4", 32008: "bitshuffle", 32013: "zfp", 32015: "zstd", 32017: "sz", 32026: "blosc2"}
_NOT_COMPRESSION = {2, 3}  # shuffle, fletcher32


def compression(ds) -> str | None:
    """The compression of an HDF5 dataset: h5py's name ("gzip", "lzf", "szip") or, for a plugin
    filter, its name and id, e.g. "zstd (HDF5 filter 32015)", "bitshuffle-lz4 (HDF5 filter 32008)";
    None when uncompressed."""
    if ds.compression:
        return ds.compression
    names = []
    try:
        plist = ds.id.get_create_plist()
        filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    except Exception:  # a property list h5py cannot read: say nothing rather than fail to open
        return None
    for code, _, values, label in filters:
        if code in _NOT_COMPRESSION:
            continue
        name = _FILTER_NAMES.get(code) or label.decode("ascii", "replace").split(";")[0].strip() or "filter"
        if code == 32008 and len(values) > 4 and values[4] in (2, 3):  # bitshuffle then LZ4 / zstd
            name += "-lz4" if values[4] == 2 else "-zstd"
        names.append(f"{name} (HDF5 filter {code})")
    return " + ".join(names) or None


def _attribute_scan_shape(path, f, ds, name):
    """The hint a ``scan_shape`` attribute of a 3D dataset (or of the file's root) gives, checked
    against the number of frames; None when there is none."""
    for where, attrs in ((f"attribute scan_shape of dataset '{name}'", ds.attrs), ("root attribute scan_shape", f.attrs)):
        if "scan_shape" in attrs:
            try:
                value = attrs["scan_shape"]
            except (OSError, TypeError) as exc:  # a type h5py cannot read
                raise ScanFormatError(f"{path}: unreadable {where} ({exc})") from exc
            return stated_scan_shape(path, value, where, ds.shape[0])
    return None


def _open_dataset(path, name):
    return _h5py().File(path, "r")[name]


def _arina_links(f) -> list[str]:
    """Names of the data_NNNNNN entries of a DECTRIS NeXus master file, in order."""
    return sorted(k for k in f["entry/data"].keys() if _ARINA_DATA.match(k)) if "entry/data" in f else []


def _arina_parts(path, f, names):
    h5py = _h5py()
    parts, frame_shape, dtype = [], None, None
    for key in names:
        link = f["entry/data"].get(key, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            target = (Path(path).parent / link.filename, link.path)
            if not target[0].exists():
                raise ScanFormatError(f"{path}: data file {link.filename} of this master file is missing")
        else:
            target = (Path(path), f"entry/data/{key}")
        with h5py.File(target[0], "r") as g:
            ds = g[target[1]]
            if ds.ndim != 3:
                raise ScanFormatError(f"{target[0]}: {target[1]} is {ds.ndim}D, expected frames (N, y, x)")
            frame_shape = frame_shape or ds.shape[1:]
            dtype = dtype or ds.dtype
            if ds.shape[1:] != frame_shape:
                raise ScanFormatError(f"{target[0]}: frames {ds.shape[1:]} differ from {frame_shape} in the first file")
            parts.append((target[0], target[1], ds.shape[0]))
    return parts, frame_shape, dtype


def _value(f, name):
    if name not in f:
        return None
    v = f[name][()]
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v.item() if hasattr(v, "item") else v


def _arina_metadata(f):
    det = "entry/instrument/detector/"
    spec = det + "detectorSpecific/"
    meta = {
        "detector": _value(f, det + "description"),
        "exposure_s": _value(f, det + "count_time"),
        "frame_time_s": _value(f, det + "frame_time"),
        "timestamp_first": _value(f, spec + "data_collection_date"),
        "counter_depth": _value(f, det + "bit_depth_image"),
        # the counter's full value (the plan's saturation level: it reads this before counter_depth)
        "saturation_counts": _value(f, det + "saturation_value"),
        "n_images": _value(f, spec + "nimages"),
        "n_triggers": _value(f, spec + "ntrigger"),
    }
    pixel_m, energy_ev = _value(f, det + "x_pixel_size"), _value(f, spec + "photon_energy")
    distance_m = _value(f, det + "detector_distance")
    geometry = {"pixel_size_um": float(pixel_m) * 1e6 if pixel_m else None,  # None: not stated
                "voltage_kv": float(energy_ev) / 1000 if energy_ev else None,
                "camera_length_mm": float(distance_m) * 1000 if distance_m else None}
    hint = None
    if (meta["n_images"] or 0) > 1 and (meta["n_triggers"] or 0) > 1:
        hint = ((int(meta["n_triggers"]), int(meta["n_images"])), "one trigger per scan row (ntrigger x nimages)")
    return {k: v for k, v in meta.items() if v is not None}, geometry, hint


def _step(values, units: str, prismatic: bool):
    """(calibration per px, unit kind) from an EMD dim vector: ('nm', step) or ('invA', step)."""
    values = np.asarray(values, dtype=float).ravel()
    if values.size < 2:
        return None
    step = float(values[1] - values[0])
    u = units.strip("[]").replace("_", "").replace(" ", "").lower()
    if prismatic:  # Prismatic labels its axes '[n_m]' and '[n_m^-1]' but works in Å and 1/Å
        u = "a^-1" if "-1" in u else "a"
    if u in ("nm",):
        return "nm", step
    if u in ("a", "å", "angstrom"):
        return "nm", step / 10
    if u in ("a^-1", "1/a", "1/å", "å^-1", "a-1"):
        return "invA", step
    if u in ("nm^-1", "1/nm", "nm-1"):
        return "invA", step / 10
    return None


def _emd_steps(f, name) -> list:
    """(unit kind, step) per axis of EMD dataset ``name`` from its dim vectors (dim1 = axis 0), None
    where a dim gives no length or 1/length unit."""
    group = f[name].parent
    prismatic = "4DSTEM_simulation" in f
    dims = sorted(k for k in group.keys() if re.fullmatch(r"dim\d", k))
    steps = []
    for key in dims[:4]:
        units = group[key].attrs.get("units", b"")
        units = units.decode() if isinstance(units, bytes) else str(units)
        steps.append(_step(group[key][()], units, prismatic))
    return steps


def _check_frames_last(path, name, steps) -> None:
    """Refuse (naming ``path`` and how to resave it) a 4D EMD dataset whose dims say its detector axes
    come first (1/Å) and its scan axes last (nm), as HyperSpy's EMD writer stores a signal (axes
    reversed): its frames would be read from the scan axes, silently."""
    kinds = [s[0] if s else None for s in steps]
    if len(kinds) == 4 and kinds[:2] == ["invA", "invA"] and kinds[2:] == ["nm", "nm"]:
        raise ScanFormatError(
            f"{path}: dataset {name} holds its detector axes first (dim1, dim2 in 1/Å) and its scan axes last "
            "(dim3, dim4 in nm), as HyperSpy's EMD writer stores a signal; frames are read from the last two axes. "
            f"Resave it with the frames last, e.g. in HyperSpy: hs.load('{Path(path).name}', lazy=True)"
            f".as_signal2D((0, 1)).save('{Path(path).stem}.hspy')")


def _emd_calibration(f, steps):
    """Scan step (nm), q per px (1/Å) and voltage (kV) an EMD file gives for a dataset whose axes
    have ``steps`` (:func:`_emd_steps`)."""
    prismatic = "4DSTEM_simulation" in f
    out = {}
    for i, step in enumerate(steps):
        if step is None:
            continue
        kind, value = step
        if i == 0 and kind == "nm":
            out["scan_step_nm"] = abs(value)
        if i == 2 and kind == "invA":
            out["q_per_px_invA"] = abs(value)
    if prismatic:
        params = "4DSTEM_simulation/metadata/metadata_0/original/simulation_parameters"
        if params in f and "E" in f[params].attrs:
            out["voltage_kv"] = float(f[params].attrs["E"])
    return out


def geometry_from_q(detector_shape, q_per_px_invA=None, voltage_kv=None, scan_step_nm=None):
    """Geometry whose px -> 1/Å conversion reproduces a file's q per px (1/Å): with the 55 µm pixel and
    the voltage (the file's, else the default), the camera length L = p / (λ q)."""
    geometry = Geometry(detector_shape=detector_shape).with_values("file", voltage_kv=voltage_kv or None,
                                                                    scan_step_nm=scan_step_nm or None)
    if q_per_px_invA:
        camera_mm = geometry.pixel_size_um * 1e-3 / (electron_wavelength_A(geometry.voltage_kv) * q_per_px_invA)
        geometry = geometry.with_values("file", camera_length_mm=camera_mm).marked("file", "pixel_size_um")
    return geometry


def read(path, scan_shape=None, *, dataset=None, missing_at="end", chunk_frames=None) -> Scan:
    """Open an HDF5 scan lazily (read-only)."""
    path = Path(path)
    with _open_file(path) as f:
        arina = _arina_links(f) if dataset is None else []
        if arina:
            return _read_arina(path, f, arina, scan_shape, missing_at, chunk_frames)
        found = candidates(f)
        emd = _is_emd(f)
        metadata = {"format": "EMD (HDF5)" if emd else "HDF5"}
        cubes = _emd_datacubes(f, found) if emd and dataset is None else []
        if cubes:
            if len(cubes) > 1:
                metadata["other_datasets"] = [name for name, _, _ in cubes[1:]]
                log.warning("%s: %d datacubes, reading %s (%s picks another)", path, len(cubes), cubes[0][0],
                            dataset_choice())
            found = cubes[:1]
        name = choose_dataset(path, found, dataset)
        ds = f[name]
        dtype = check_pixel_dtype(ds.dtype, path)
        metadata.update(dataset=name, dtype_on_disk=dtype.str, hdf5_chunks=ds.chunks, compression=compression(ds))
        steps = _emd_steps(f, name) if emd else []
        if ds.ndim == 4:
            _check_frames_last(path, name, steps)
        calibration = _emd_calibration(f, steps) if emd else {}
        # HyperSpy / pyxem .hspy: Experiments/<title>/data beside its axis-N groups (nm, 1/Å or mrad)
        hspy = None if emd else hspy_calibration(ds.parent, ds.shape[-2:])
        if hspy is not None:
            metadata["format"] = "HyperSpy (HDF5)"
        hint = _attribute_scan_shape(path, f, ds, name) if scan_shape is None and ds.ndim == 3 else None
        data, missing, how = array_frames(path, ds.shape, dtype, partial(_open_dataset, str(path), name),
                                          scan_shape=scan_shape, hint=hint, missing_at=missing_at,
                                          chunk_frames=chunk_frames, name=f"h5-{file_token(path)}-{name}",
                                          kind="dataset")
        metadata.update(scan_shape_from=how, n_frames_in_file=int(np.prod(ds.shape[:-2])))
    if calibration.get("q_per_px_invA"):
        metadata["q_per_px_invA"] = calibration["q_per_px_invA"]
        metadata["calibration"] = "scan step and 1/Å per px from the file; camera length derived for a 55 µm pixel"
    geometry = geometry_from_q(tuple(data.shape[2:]), **calibration)
    if hspy is not None:
        geometry, notes = hspy
        metadata.update(notes)
    return Scan(data, geometry, missing=missing, metadata=metadata, source=str(path))


#: Where a DECTRIS NeXus master file keeps the detector's own corrections: the flat-field, float32
#: factors the detector multiplies counts by (about 1; 0 or huge at gap and dead pixels), and the
#: pixel mask, uint32, nonzero = bad (gap, dead, noisy...).
DECTRIS_FLATFIELD = "entry/instrument/detector/detectorSpecific/flatfield"
DECTRIS_PIXEL_MASK = "entry/instrument/detector/detectorSpecific/pixel_mask"
#: The name a flat-field reads a DECTRIS master file's frames (its data files) by.
DECTRIS_FRAMES = "entry/data"
#: A 2D dataset smaller than this (px, either side) is a table, not an image of the detector.
_MIN_IMAGE_PX = 8


def flatfield_candidates(path, f) -> list[tuple[str, tuple, np.dtype]]:
    """Arrays an HDF5 file could give a flat-field from: (name, shape, dtype) of its stacks of
    frames (as for a scan: 3D/4D datasets; a DECTRIS master file's data files as ``entry/data``)
    and of its 2D numeric images (flood images, gain maps; masks, named so, are left out)."""
    h5py = _h5py()
    arina = _arina_links(f)
    found = [c for c in candidates(f) if not (arina and c[0].startswith(DECTRIS_FRAMES + "/"))]
    if arina:
        try:
            parts, frame_shape, dtype = _arina_parts(path, f, arina)
            found.insert(0, (DECTRIS_FRAMES, (sum(k for _, _, k in parts),) + tuple(frame_shape), dtype))
        except ScanFormatError:  # a master file without its data files still holds its flat-field
            pass

    def visit(name, obj):
        if (isinstance(obj, h5py.Dataset) and obj.ndim == 2 and obj.dtype.kind in "uif"
                and min(obj.shape) >= _MIN_IMAGE_PX and "mask" not in name.rsplit("/", 1)[-1].lower()):
            found.append((name, tuple(obj.shape), obj.dtype))

    f.visititems(visit)
    return found


def _choose_flatfield(path, found, dataset) -> tuple[str, tuple]:
    """(name, shape) of the flat-field's array: ``dataset`` when given and there, else the only candidate."""
    shapes = {name: shape for name, shape, _ in found}
    if dataset is not None:
        name = str(dataset).strip("/")
        if name not in shapes:
            raise ScanFormatError(f"{path}: no flat-field dataset '{dataset}' (a 2D image or a 3D/4D stack of "
                                  f"frames); candidates: {describe(found)}")
        return name, shapes[name]
    if not found:
        raise ScanFormatError(f"{path}: no dataset that could be a flat-field (a 2D image of at least "
                              f"{_MIN_IMAGE_PX}x{_MIN_IMAGE_PX} px, or a 3D/4D stack of frames)")
    if len(found) > 1:
        raise ScanFormatError(f"{path}: the flat-field file holds several datasets that could be the flat-field; "
                              f"choose one with {dataset_choice()}: {describe(found)}")
    return found[0][0], found[0][1]


def _response_image(f, name) -> np.ndarray:
    """A 2D flat-field image as a response (float64; NaN = no response): a flood image or gain map
    as it is, a DECTRIS flat-field (correction factors) inverted."""
    image = np.asarray(f[name][()], dtype=np.float64)
    if name != DECTRIS_FLATFIELD:
        return image
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(image) & (image > 0), 1.0 / image, np.nan)


def _pixel_mask(path, f, shape) -> np.ndarray | None:
    """The bad pixels of a DECTRIS master file's pixel mask (nonzero), None without one."""
    if DECTRIS_PIXEL_MASK not in f:
        return None
    mask = np.asarray(f[DECTRIS_PIXEL_MASK][()])
    if mask.shape != tuple(shape):
        raise ScanFormatError(f"{path}: {DECTRIS_PIXEL_MASK} {mask.shape} does not match the flat-field's "
                              f"frames {tuple(shape)}")
    return mask != 0


def flatfield_datasets(path) -> list[tuple[str, tuple]]:
    """(name, shape) of each array of an HDF5 file a flat-field could be read from
    (:func:`flatfield_candidates`), as ``read_flatfield(path, dataset=name)`` takes them."""
    with _open_file(Path(path)) as f:
        return [(name, tuple(shape)) for name, shape, _ in flatfield_candidates(path, f)]


def _open_file(path: Path):
    """The HDF5 file at ``path``, open read-only; a ScanFormatError naming it when it is not one."""
    h5py = _h5py()
    if not h5py.is_hdf5(path):
        raise ScanFormatError(f"{path}: corrupted header: not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ScanFormatError(f"{path}: cannot open as HDF5 ({exc})") from exc


def read_flatfield(path, dataset=None) -> FlatFieldFile:
    """The flat-field in an HDF5 file: a flood stack (3D/4D dataset, a DECTRIS master file's frames
    as ``entry/data``) or a 2D image (a flood image or gain map: the response; a DECTRIS
    master file's ``detectorSpecific/flatfield``: correction factors, inverted), with the pixels
    a DECTRIS ``pixel_mask`` marks bad. dataset: the array to read when there are several (a
    ScanFormatError names them when none is chosen)."""
    path = Path(path)
    with reading_flatfield():
        with _open_file(path) as f:
            name, shape = _choose_flatfield(path, flatfield_candidates(path, f), dataset)
            bad = _pixel_mask(path, f, shape[-2:])
            if len(shape) == 2:
                return FlatFieldFile(_response_image(f, name), bad)
        frames = read(path, dataset=None if name == DECTRIS_FRAMES else name).frame_source
    return FlatFieldFile(frames, bad)


def _read_arina(path, f, names, scan_shape, missing_at, chunk_frames) -> Scan:
    parts, frame_shape, dtype = _arina_parts(path, f, names)
    dtype = check_pixel_dtype(dtype, path)
    source = H5Frames(parts, frame_shape, dtype, path)
    meta, calibration, hint = _arina_metadata(f)
    data, missing, how = grid_frames(source, path, scan_shape, hint=hint, missing_at=missing_at,
                                     chunk_frames=chunk_frames, name=f"arina-{file_token(path)}")
    metadata = {
        "format": "DECTRIS NeXus (master + data files)",
        "data_files": [str(p) for p, _, _ in parts],
        "dtype_on_disk": np.dtype(dtype).str,
        "n_frames_in_file": source.n_frames,
        "scan_shape_from": how,
        "calibration": "pixel size, beam energy (and detector distance when set) from the master file",
        **meta,
    }
    geometry = Geometry(detector_shape=frame_shape).with_values("file", **calibration)
    return Scan(data, geometry, missing=missing, metadata=metadata, source=str(path))
