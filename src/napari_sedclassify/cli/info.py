"""``sedclassify info FILE``: what a scan file holds, without reading its frames."""

from __future__ import annotations

import json

import numpy as np


def register(subparsers):
    p = subparsers.add_parser(
        "info",
        help="show format, shape, dtype, chunking, metadata, geometry and missing frames of a scan file",
        description="Open a scan lazily and describe it (reads one frame to check that it decodes).",
    )
    p.add_argument("file", help="scan file or folder (.mib/.hdr, .blo, .h5/.emd/.nxs, .mat, .npy, .zarr, .tif)")
    p.add_argument("--scan-shape", nargs=2, type=int, metavar=("SY", "SX"), help="scan rows and columns")
    p.add_argument("--dataset", help="array to read in files that hold several (HDF5, MATLAB, zarr)")
    p.add_argument("--missing-at", choices=("end", "start"), default="end", help="where positions without a frame are")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)
    return p


def describe(scan) -> dict:
    """A JSON-ready summary of a Scan."""
    data = scan.data
    chunk = tuple(int(c[0]) for c in data.chunks)
    return {
        "file": scan.source,
        "format": scan.metadata.get("format"),
        "scan_shape": list(scan.scan_shape),
        "detector_shape": list(scan.detector_shape),
        "shape": [int(s) for s in data.shape],
        "dtype": str(data.dtype),
        "dtype_on_disk": scan.metadata.get("dtype_on_disk"),
        "chunks": list(chunk),
        "n_chunks": int(np.prod(data.numblocks)),
        "chunk_mb": round(int(np.prod(chunk)) * data.dtype.itemsize / 2**20, 2),
        "size_gb": round(data.nbytes / 1e9, 3),
        "missing_frames": int(scan.missing.sum()),
        "geometry": scan.geometry.to_dict(),
        "metadata": _jsonable({k: v for k, v in scan.metadata.items() if k not in ("format", "dtype_on_disk")}),
    }


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"array {value.shape} {value.dtype}"
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def run(args):
    from ..io import open_scan

    scan = open_scan(args.file, args.scan_shape, dataset=args.dataset, missing_at=args.missing_at)
    info = describe(scan)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    g = info["geometry"]
    lines = [
        ("file", info["file"]),
        ("format", info["format"]),
        ("scan", f"{info['scan_shape'][0]} x {info['scan_shape'][1]} positions "
                 f"({scan.metadata.get('scan_shape_from', 'file')})"),
        ("detector", f"{info['detector_shape'][0]} x {info['detector_shape'][1]} px"),
        ("dtype", f"{info['dtype']} (on disk {info['dtype_on_disk']})"),
        ("size", f"{info['size_gb']} GB as {info['n_chunks']} chunks of {info['chunks']} ({info['chunk_mb']} MB)"),
        ("missing frames", info["missing_frames"]),
        ("geometry", f"pixel {g['pixel_size_um']} µm, camera length {g['camera_length_mm']} mm, "
                     f"{g['voltage_kv']} kV, scan step {g['scan_step_nm']} nm"),
    ]
    skip = {"scan_shape_from", "hdr", "blockfile_header", "attributes"}
    lines += [(key, value) for key, value in info["metadata"].items() if key not in skip]
    width = max(len(key) for key, _ in lines) + 2
    lines = [f"{key:<{width}}{value}" for key, value in lines]
    print("\n".join(lines))
    return 0
