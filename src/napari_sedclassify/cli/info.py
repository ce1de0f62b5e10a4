"""``sedclassify info FILE``: what a scan file holds, without reading its frames."""

from __future__ import annotations

import numpy as np

from ..jsonutil import jsonable
from . import add_command, add_examples
from ._scan_options import add_scan_options, json_printed, open_scan_from_args


def register(subparsers):
    p = add_command(subparsers, "info", run,
                    "show format, shape, dtype, chunking, metadata, geometry and missing frames of a scan file",
                    "Open a scan lazily and describe it (reads one frame to check that it decodes).")
    p.add_argument("file", metavar="SCAN",
                   help="scan file or folder (.mib/.hdr, .blo, .h5/.emd/.nxs, .hspy/.zspy, .mat, .npy, .zarr, .tif; "
                        ".dm3/.dm4/.tvips with the formats extra)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_scan_options(p)
    add_examples(p, "sedclassify info scan.mib",
                 "sedclassify info scan.h5 --dataset /entry/data --json")
    return p


def describe(scan) -> dict:
    """A JSON-ready summary of a Scan."""
    frames = scan.frame_source
    sy, sx = scan.scan_shape
    chunk = tuple(frames.chunks) + tuple(scan.detector_shape)
    n_chunks = -(-sy // chunk[0]) * -(-sx // chunk[1])
    return {
        "file": scan.source,
        "format": scan.metadata.get("format"),
        "scan_shape": list(scan.scan_shape),
        "detector_shape": list(scan.detector_shape),
        "shape": list(frames.shape),
        "dtype": str(frames.dtype),
        "dtype_on_disk": scan.metadata.get("dtype_on_disk"),
        "chunks": list(chunk),
        "n_chunks": int(n_chunks),
        "chunk_mb": round(int(np.prod(chunk)) * frames.dtype.itemsize / 2**20, 2),
        "size_gb": round(int(np.prod(frames.shape)) * frames.dtype.itemsize / 1e9, 3),
        "missing_frames": int(scan.missing.sum()),
        "geometry": scan.geometry.to_dict(),
        "metadata": jsonable({k: v for k, v in scan.metadata.items() if k not in ("format", "dtype_on_disk")},
                             max_array=64),
    }


def run(args):
    scan = open_scan_from_args(args.file, args)
    info = describe(scan)
    if json_printed(args, info):
        return 0
    lines = [
        ("file", info["file"]),
        ("format", info["format"]),
        ("scan", f"{info['scan_shape'][0]} x {info['scan_shape'][1]} positions "
                 f"({scan.metadata.get('scan_shape_from', 'file')})"),
        ("detector", f"{info['detector_shape'][0]} x {info['detector_shape'][1]} px"),
        ("dtype", f"{info['dtype']} (on disk {info['dtype_on_disk']})"),
        ("size", f"{info['size_gb']} GB as {info['n_chunks']} chunks of {info['chunks']} ({info['chunk_mb']} MB)"),
        ("missing frames", info["missing_frames"]),
        ("geometry", scan.geometry.describe()),
    ]
    skip = {"scan_shape_from", "hdr", "blockfile_header", "attributes"}
    lines += [(key, value) for key, value in info["metadata"].items() if key not in skip]
    width = max(len(key) for key, _ in lines) + 2
    lines = [f"{key:<{width}}{value}" for key, value in lines]
    print("\n".join(lines))
    return 0
