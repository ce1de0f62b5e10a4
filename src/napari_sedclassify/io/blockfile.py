"""NanoMegas ASTAR / DigiSTAR blockfiles (``.blo``).

Little-endian header starting ``IMGBLO``: scan size (NX, NY), pattern size DP_SZ, scan step
(nm), beam energy (V), camera length (0.1 mm), pattern scale (100 x px per cm), then a note,
a virtual bright-field image (NX*NY bytes at Data_offset_1) and the patterns at Data_offset_2:
each a 6-byte prefix (``AA 55`` + uint32 frame index) and DP_SZ x DP_SZ uint8, memory-mapped. A
file that ends early (an interrupted scan) leaves the last positions missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ScanFormatError
from ..geometry import Geometry
from ..scan import Scan
from ._lazy import FrameSource, file_token, grid_frames

HEADER = np.dtype(
    [
        ("ID", "S6"),
        ("MAGIC", "<u2"),
        ("Data_offset_1", "<u4"),
        ("Data_offset_2", "<u4"),
        ("UNKNOWN1", "<u4"),
        ("DP_SZ", "<u2"),
        ("DP_rotation", "<u2"),
        ("NX", "<u2"),
        ("NY", "<u2"),
        ("Scan_rotation", "<u2"),
        ("SX", "<f8"),
        ("SY", "<f8"),
        ("Beam_energy", "<u4"),
        ("SDP", "<u2"),
        ("Camera_length", "<u4"),
        ("Acquisition_time", "<f8"),
    ]
)
PREFIX = b"\xaa\x55"


def probe(path) -> bool:
    with open(path, "rb") as f:
        return f.read(6) == b"IMGBLO"


class BlockFrames(FrameSource):
    """The patterns of a blockfile through a structured memmap (prefix, pixels)."""

    def __init__(self, path, offset: int, size: int, n_frames: int):
        super().__init__(path, n_frames, (size, size), np.uint8)
        self.offset = int(offset)

    def _open(self):
        dtype = np.dtype([("prefix", "V6"), ("px", "u1", self.frame_shape)])
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self.offset, shape=(self.n_frames,))["px"]

    def _read(self, pixels, start, stop):
        return pixels[start:stop]


def read_header(path) -> dict:
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER.itemsize:
        raise ScanFormatError(f"{path}: corrupted header: {size} bytes, shorter than a blockfile header")
    h = np.fromfile(path, dtype=HEADER, count=1)[0]
    if bytes(h["ID"]) != b"IMGBLO":
        raise ScanFormatError(f"{path}: corrupted header: does not start with 'IMGBLO'")
    header = {name: h[name].item() for name in HEADER.names if name != "ID"}
    if min(header["NX"], header["NY"], header["DP_SZ"]) < 1 or header["Data_offset_2"] < HEADER.itemsize:
        raise ScanFormatError(
            f"{path}: corrupted header: scan {header['NX']}x{header['NY']}, pattern size {header['DP_SZ']}, "
            f"data offset {header['Data_offset_2']}"
        )
    return header


def _frame_index(path, offset: int) -> int | None:
    with open(path, "rb") as f:
        f.seek(offset)
        prefix = f.read(6)
    return int.from_bytes(prefix[2:], "little") if prefix[:2] == PREFIX else None


def _serial_date(days: float) -> str | None:
    """ISO time of a serial date (days since 1899-12-30, as Delphi and Excel count)."""
    from datetime import datetime, timedelta

    return (datetime(1899, 12, 30) + timedelta(days=days)).isoformat(timespec="seconds") if 0 < days < 2e5 else None


def read(path, scan_shape=None, *, missing_at="end", chunk_frames=None) -> Scan:
    """Open a blockfile lazily as a Scan (scan shape from its header)."""
    path = Path(path)
    h = read_header(path)
    nx, ny, dp = h["NX"], h["NY"], h["DP_SZ"]
    record = 6 + dp * dp
    available = path.stat().st_size - h["Data_offset_2"]
    if available <= 0:
        raise ScanFormatError(f"{path}: empty file: no patterns after the header (data offset {h['Data_offset_2']})")
    n, extra = divmod(available, record)
    if n > nx * ny:
        raise ScanFormatError(
            f"{path}: header disagrees with the data size: {nx}x{ny} positions of {dp}x{dp} px "
            f"but room for {n} patterns"
        )
    if extra:
        raise ScanFormatError(f"{path}: truncated last frame: {n} whole patterns of {record} bytes and {extra} bytes more")
    for k in (0, n - 1):
        index = _frame_index(path, h["Data_offset_2"] + k * record)
        if index is None or index != k:
            raise ScanFormatError(
                f"{path}: corrupted data: pattern {k} does not start with AA 55 and its index "
                f"(found {index}); the header's sizes may be wrong"
            )
    source = BlockFrames(path, h["Data_offset_2"], dp, n)
    data, missing, how = grid_frames(source, path, (ny, nx) if scan_shape is None else scan_shape,
                                     missing_at=missing_at, chunk_frames=chunk_frames, name=f"blo-{file_token(path)}")
    geometry = Geometry(detector_shape=(dp, dp)).with_values(  # what the header states (zero: not stated)
        "file", pixel_size_um=1e6 / h["SDP"] if h["SDP"] else None,
        camera_length_mm=h["Camera_length"] / 10 if h["Camera_length"] else None,
        voltage_kv=h["Beam_energy"] / 1000 if h["Beam_energy"] else None, scan_step_nm=h["SX"] if h["SX"] > 0 else None)
    metadata = {
        "format": "NanoMegas blockfile",
        "dtype_on_disk": "|u1",
        "n_frames_in_file": n,
        "scan_shape_from": "header (NX, NY)" if scan_shape is None else how,
        "timestamp_first": _serial_date(h["Acquisition_time"]),
        "calibration": "from the header: scan step SX (nm), beam energy (V), camera length (0.1 mm), "
        "pattern scale SDP (px per cm on the camera)",
        "blockfile_header": h,
    }
    return Scan(data, geometry, missing=missing, metadata=metadata, source=str(path))
