"""Quantum Detectors Merlin (Medipix3) ``.mib`` files, with their optional ``.hdr``.

A ``.mib`` file is a run of frames, each an ASCII header (``MQ1,<frame>,<header bytes>,<chips>,
<width>,<height>,<pixel type>,...``) followed by the pixels: U08, U16, U32 (big-endian), or R64
(RAW, as read out: see :func:`unpack_raw`). Frames are memory-mapped (8-bit ones read without a
copy) and shown rows flipped (detector row 0 at the bottom), as Merlin displays them. A folder of
``.mib`` files (Merlin's "one file per frame") is one scan, files in natural name order.

Scan shape, in this order: the user's; the ``.hdr`` (Frames per Trigger = one scan row); the frame
timestamps (a longer gap after each row: the line flyback); a square grid; one row. Fewer frames
than positions leaves the last positions missing.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from ..errors import ScanFormatError
from ..geometry import Geometry
from ..scan import Scan
from ._lazy import FrameSource, PartsFrames, file_token, grid_frames, mapped_bytes, native, natural_key, to_native

log = logging.getLogger(__name__)

#: Medipix3 pixel pitch (µm).
PIXEL_SIZE_UM = 55.0
#: Frame headers read to find the line flyback: rows up to half this long are found.
PROBE_FRAMES = 1024
#: A gap between frame timestamps this much longer than the shortest one is a line flyback (ns).
FLYBACK_NS = 5_000

_PIXEL_TYPES = {"U08": ">u1", "U16": ">u2", "U32": ">u4", "U64": ">u8", "R64": "R64"}
#: RAW (R64) counter depths read here, and the bits each pixel takes in the 64-bit words.
RAW_BITS = {1: 1, 6: 8, 12: 16}
_FIELDS = ("frame number", "header length", "chip count", "width", "height")


def probe(path) -> bool:
    path = Path(path)
    if path.is_dir():
        files = mib_files(path)
        if not files:
            return False
        path = files[0]
    if path.suffix.lower() == ".hdr":
        path = path.with_suffix(".mib")
    with open(path, "rb") as f:
        return f.read(4) == b"MQ1,"


def mib_files(folder) -> list[Path]:
    """The .mib files of a folder (not hidden ones) in natural order (``scan_2`` before ``scan_10``)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    files = [Path(e.path) for e in entries
             if e.name.lower().endswith(".mib") and not e.name.startswith(".") and e.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


class FrameHeader:
    """The first frame header of a .mib file: layout of every frame in it."""

    def __init__(self, raw: bytes, path):
        self.path = path
        text = raw.decode("latin-1").rstrip("\x00")
        fields = text.split(",")
        if not text.startswith("MQ1,") or len(fields) < 11:
            raise ScanFormatError(f"{path}: corrupted frame header: does not start with 'MQ1,' ({raw[:16]!r})")
        values = {}
        for name, value in zip(_FIELDS, fields[1:6]):
            try:
                values[name] = int(value)
            except ValueError:
                raise ScanFormatError(
                    f"{path}: corrupted frame header: {name} is {value.strip()!r}, not a number"
                ) from None
        self.header_bytes = values["header length"]
        self.chips = values["chip count"]
        self.width, self.height = values["width"], values["height"]
        if self.header_bytes < 64 or self.width < 1 or self.height < 1:
            raise ScanFormatError(
                f"{path}: corrupted frame header: header length {self.header_bytes}, "
                f"frame {self.width}x{self.height}"
            )
        self.pixel_type = fields[6].strip()
        if self.pixel_type not in _PIXEL_TYPES:
            raise ScanFormatError(
                f"{path}: unknown pixel dtype {self.pixel_type!r} in the frame header "
                f"(expected one of {', '.join(_PIXEL_TYPES)})"
            )
        self.assembly = fields[7].strip()
        self.raw = self.pixel_type == "R64"
        ext = fields.index("MQ1A") if "MQ1A" in fields else None
        self.iso_field = ext + 1 if ext is not None and len(fields) > ext + 3 else None
        self.timestamp = self._timestamp(fields)
        self.exposure_s = self._exposure(fields, ext)
        depth = fields[ext + 3].strip() if self.iso_field else ""
        self.counter_depth = int(depth) if depth.isdigit() else None
        #: whether the frame header states the counter depth (RAW files need it; else the .hdr's)
        self.depth_stated = self.counter_depth is not None
        if self.counter_depth is None:
            self.counter_depth = {"U16": 12, "U32": 24, "R64": 1}.get(self.pixel_type)
        self._check_raw_depth()

    def _check_raw_depth(self):
        if self.raw and self.counter_depth not in RAW_BITS:
            raise ScanFormatError(
                f"{self.path}: RAW (R64) frames with a {self.counter_depth}-bit counter are not supported; "
                "1-, 6- and 12-bit RAW files are (or save the acquisition in processed mode)"
            )

    def use_hdr_depth(self, hdr: dict) -> None:
        """A RAW frame header without the counter depth: take the .hdr's (``Counter Depth (number)``)."""
        depth = _hdr_int(hdr, "Counter Depth (number)")
        if self.raw and not self.depth_stated and depth:
            self.counter_depth = depth
            self._check_raw_depth()

    def _timestamp(self, fields) -> str | None:
        if self.iso_field is not None and fields[self.iso_field].endswith("Z"):
            return fields[self.iso_field]
        coarse = fields[9].strip()
        return coarse.replace(" ", "T") if len(coarse) >= 19 else None

    @staticmethod
    def _exposure(fields, ext) -> float | None:
        if ext is not None and len(fields) > ext + 2 and fields[ext + 2].endswith("ns"):
            try:
                return float(fields[ext + 2][:-2]) * 1e-9
            except ValueError:
                pass
        try:
            return float(fields[10])
        except ValueError:
            return None

    @property
    def disk_shape(self) -> tuple[int, int]:
        """Frame as stored: (height, width) px."""
        return (self.height, self.width)

    @property
    def quad_raw(self) -> bool:
        return self.raw and self.chips == 4 and self.width == 4 * self.height

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Frame as returned: (rows, cols) px; a quad RAW frame re-tiled to 2x2 chips."""
        return (2 * self.height, 2 * self.height) if self.quad_raw else self.disk_shape

    @property
    def pixel_bytes(self) -> int:
        n = self.width * self.height
        if self.raw:
            bits = n * RAW_BITS[self.counter_depth]
            if bits % 64:
                raise ScanFormatError(f"{self.path}: RAW frame {self.width}x{self.height} of {self.counter_depth}-bit "
                                      "pixels is not whole 64-bit words")
            return bits // 8
        return n * np.dtype(_PIXEL_TYPES[self.pixel_type]).itemsize

    @property
    def dtype(self) -> np.dtype:
        """The pixels' dtype as returned (native byte order)."""
        if self.raw:
            return np.dtype(np.uint16 if self.counter_depth == 12 else np.uint8)
        return native(_PIXEL_TYPES[self.pixel_type])

    @property
    def disk_description(self) -> str:
        """The pixel type on disk, for the metadata."""
        if not self.raw:
            return np.dtype(_PIXEL_TYPES[self.pixel_type]).str
        if self.counter_depth == 1:
            return "R64 (1 bit per pixel, packed)"
        return f"R64 ({self.counter_depth}-bit counters, {RAW_BITS[self.counter_depth] // 8} byte(s) per pixel in 64-bit words)"

    def pixels_dtype(self) -> np.dtype:
        """Structured dtype of one frame on disk: header, pixels."""
        if self.raw:
            return np.dtype([("hdr", f"V{self.header_bytes}"), ("px", ">u8", (self.pixel_bytes // 8,))])
        return np.dtype([("hdr", f"V{self.header_bytes}"), ("px", _PIXEL_TYPES[self.pixel_type], self.disk_shape)])

    def decode(self, block: np.ndarray) -> np.ndarray:
        """Pixels of frames as stored (k, ...) -> frames (k, rows, cols), native, display orientation."""
        if self.raw:
            block = unpack_raw(block, self.disk_shape, self.quad_raw, self.counter_depth)
        return to_native(block[:, ::-1])

    @property
    def frame_bytes(self) -> int:
        return self.header_bytes + self.pixel_bytes


class MibFrames(FrameSource):
    """The frames of a .mib file (each a header, then its pixels), each read mapping just the
    frames it asks for, read-only (``mapped_bytes``): 8-bit frames stay views of the file, others
    are converted from big-endian; memory holds the frames in use, not every page of the file a
    pass touched (a memory map of the whole file kept them all: 979 MB for an 839 MB scan)."""

    def __init__(self, path, header: FrameHeader, n_frames: int):
        super().__init__(path, n_frames, header.frame_shape, header.dtype)
        self.header = header

    def _open(self):
        return open(self.path, "rb", buffering=0)

    def _read(self, handle, start, stop):
        dtype = self.header.pixels_dtype()
        pos, nbytes = start * dtype.itemsize, (stop - start) * dtype.itemsize
        size = os.fstat(handle.fileno()).st_size
        if pos + nbytes > size:
            last = max(start, size // dtype.itemsize)
            raise ScanFormatError(f"{self.path}: truncated: the file ends before frame {last}")
        got = mapped_bytes(handle, pos, nbytes)
        if got is None:  # no mapping to be had: a copy
            block = np.frombuffer(os.pread(handle.fileno(), nbytes, pos), dtype)
        else:
            block = np.frombuffer(got[0], dtype, stop - start, got[1])
        return self.header.decode(block["px"])


class MibFolderFrames(PartsFrames):
    """The frames of a folder of .mib files (one file per frame, or several frames each), in order."""

    def __init__(self, folder, files, counts, header: FrameHeader):
        self.files = [str(f) for f in files]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        super().__init__(folder, self.starts[-1], header.frame_shape, header.dtype)
        self.header = header

    def _open(self):
        return self.header.pixels_dtype()

    def _read_part(self, dtype, i, lo, hi):
        with open(self.files[i], "rb") as f:
            block = np.fromfile(f, dtype=dtype, count=hi - lo, offset=lo * dtype.itemsize)
        if len(block) != hi - lo:
            raise ScanFormatError(f"{self.files[i]}: truncated last frame (expected {hi - lo} frames from frame {lo})")
        return self.header.decode(block["px"])


def unpack_raw(words: np.ndarray, disk_shape, quad: bool, depth: int = 1) -> np.ndarray:
    """RAW frames (k, n_words) of big-endian 64-bit words -> pixels (k, rows, cols): uint8 for 1-bit
    (0/1) and 6-bit counters, uint16 for 12-bit.

    Each word holds 64 1-bit, 8 6-bit (a byte each) or 4 12-bit (two bytes each) pixels, pixel j in
    bits j*b.. from the least significant end, as LiberTEM's decoders (MIT) read them. A quad frame
    (256x1024, chips side by side) is re-tiled as Merlin assembles it: the last two chips form the
    top half in reverse order, the first two the bottom half rotated by 180 degrees.
    """
    rows, cols = disk_shape
    k = words.shape[0]
    as_bytes = np.ascontiguousarray(words).astype("<u8").view(np.uint8)  # each word's bytes, least significant first
    if depth == 1:
        bits = np.unpackbits(as_bytes, axis=-1, bitorder="little").reshape(k, rows, cols)
    elif depth == 6:
        bits = as_bytes.reshape(k, rows, cols)
    elif depth == 12:
        bits = to_native(as_bytes.view("<u2")).reshape(k, rows, cols)
    else:
        raise ValueError(f"RAW counter depth {depth} is not decoded here (1, 6 or 12)")
    if not quad:
        return bits
    c = rows
    top = np.concatenate([bits[:, :, 3 * c : 4 * c], bits[:, :, 2 * c : 3 * c]], axis=2)
    bottom = bits[:, ::-1, 2 * c - 1 :: -1]
    return np.concatenate([top, bottom], axis=1)


def read_hdr(path) -> dict:
    """The acquisition header (.hdr) as {key: value} strings; {} when it cannot be parsed."""
    try:
        text = Path(path).read_bytes().decode("latin-1")
    except OSError:
        return {}
    if not text.startswith("HDR"):
        log.warning("%s: not a Merlin acquisition header (ignored)", path)
        return {}
    out = {}
    for line in text.splitlines()[1:]:
        if line.startswith("End"):
            break
        key, sep, value = line.partition("\t")
        if sep:
            out[key.rstrip(": ")] = value.strip()
    return out


def _hdr_int(hdr, key):
    try:
        return int(hdr[key])
    except (KeyError, ValueError):
        return None


def hdr_scan_shape(hdr: dict):
    """(scan shape, how) from the .hdr, or None when it does not give several scan rows."""
    sx, sy = _hdr_int(hdr, "ScanX"), _hdr_int(hdr, "ScanY")
    if sx and sy:
        return (sy, sx), "hdr (ScanX, ScanY)"
    per_trigger = _hdr_int(hdr, "Frames per Trigger (Number)")
    total = _hdr_int(hdr, "Frames in Acquisition (Number)")
    if per_trigger and total and 1 < per_trigger < total:
        return (-(-total // per_trigger), per_trigger), "hdr (Frames per Trigger = scan row)"
    return None


def frame_timestamps(path, header: FrameHeader, n_frames: int, count: int = PROBE_FRAMES) -> np.ndarray | None:
    """Timestamps (ns, int64) of the first ``count`` frames, from their headers alone (small random
    reads, no read-ahead of the pixels between them); None if absent."""
    if header.timestamp is None:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        heads = [os.pread(fd, header.header_bytes, i * header.frame_bytes) for i in range(min(n_frames, count))]
    finally:
        os.close(fd)
    return _parse_timestamps(heads, header)


def _folder_timestamps(files, header: FrameHeader) -> np.ndarray | None:
    """Timestamps (ns) of the first frame of each file, from their headers; None if unreadable."""
    heads = []
    try:
        for f in files:
            with open(f, "rb") as fh:
                heads.append(fh.read(header.header_bytes))
    except OSError:
        return None
    return _parse_timestamps(heads, header)


def _parse_timestamps(heads, header: FrameHeader) -> np.ndarray | None:
    """Timestamps (ns, int64) in frame headers laid out as ``header``; None when one is unreadable."""
    index = header.iso_field if header.timestamp.endswith("Z") else 9
    try:
        stamps = [h.split(b",")[index].decode("ascii").rstrip("Z").replace(" ", "T") for h in heads]
        return np.array(stamps, dtype="datetime64[ns]").astype(np.int64)
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


def row_length_from_timestamps(t_ns: np.ndarray) -> int | None:
    """Frames per scan row: the period of the longer gaps (line flyback) between frames."""
    if t_ns is None or len(t_ns) < 4:
        return None
    gaps = np.diff(t_ns)
    long = np.flatnonzero(gaps - gaps.min() > FLYBACK_NS)
    if long.size == 0:
        return None
    period = int(long[0]) + 1
    if period < 2 or not np.array_equal(long, np.arange(period - 1, len(gaps), period)):
        return None
    return period


def _whole_frames(path, header: FrameHeader, note: str = "") -> int:
    """Number of frames in a file of frames laid out as ``header``; raises when it ends mid-frame."""
    step = header.frame_bytes
    n, extra = divmod(os.path.getsize(path), step)
    if n == 0 or extra:
        what = "empty file" if n == extra == 0 else (
            f"truncated last frame: {n} whole frames of {step} bytes and {extra} bytes more" if n else
            f"truncated last frame: {extra} bytes, less than one frame of {step}")
        raise ScanFormatError(f"{path}: {what}{note}")
    return n


def _check_layout(path, header: FrameHeader) -> int:
    """Number of whole frames; raises when the header and the data size disagree."""
    step = header.frame_bytes
    with open(path, "rb") as f:
        f.seek(step)
        if f.read(4) not in (b"MQ1,", b""):  # b"": a single frame
            f.seek(0)
            found = f.read(64 * 2**20).find(b"MQ1,", 4)
            where = f"the next frame header is at byte {found}" if found > 0 else "no second frame header"
            raise ScanFormatError(
                f"{path}: header disagrees with the data size: it says {header.width}x{header.height} "
                f"{header.pixel_type} frames of {step} bytes with their header, but {where}"
            )
        n = _whole_frames(path, header)
        f.seek((n - 1) * step)
        if f.read(4) != b"MQ1,":
            raise ScanFormatError(f"{path}: corrupted frame header: frame {n - 1} (last) does not start with 'MQ1,'")
    return n


def _first_header(path, hdr: dict) -> FrameHeader:
    """The first frame header of a .mib file (the counter depth of RAW frames from ``hdr`` when the
    frame header does not state it)."""
    if os.path.getsize(path) == 0:
        raise ScanFormatError(f"{path}: empty file")
    with open(path, "rb") as f:
        first = f.read(2048)
    header = FrameHeader(first[:384], path)
    if header.header_bytes > 384:
        header = FrameHeader(first[: header.header_bytes], path)
    header.use_hdr_depth(hdr)
    return header


def read(path, scan_shape=None, *, missing_at="end", chunk_frames=None) -> Scan:
    """Open a Merlin .mib (or its .hdr, or a folder of .mib files) lazily as a Scan."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path, scan_shape, missing_at, chunk_frames)
    if path.suffix.lower() == ".hdr":
        hdr_path, path = path, path.with_suffix(".mib")
        if not path.exists():
            raise ScanFormatError(f"{hdr_path}: no frame file beside this header ({path.name} not found)")
    else:
        hdr_path = path.with_suffix(".hdr")
    hdr = read_hdr(hdr_path) if hdr_path.exists() else {}
    header = _first_header(path, hdr)
    n = _check_layout(path, header)
    return _scan(MibFrames(path, header, n), hdr, lambda: frame_timestamps(path, header, n),
                 (scan_shape, missing_at, chunk_frames), f"mib-{file_token(path)}", "Merlin .mib",
                 _last_timestamp(path, header, n))


def _scan(source, hdr, timestamps, options, name, fmt, last, **extra) -> Scan:
    """The Scan of a .mib file or folder. Scan shape: the user's, the .hdr's, or the line flyback in
    ``timestamps()``, else :func:`resolve_scan_shape`'s. The pitch is the Medipix3's own (file);
    camera length, voltage and scan step stay assumed."""
    scan_shape, missing_at, chunk_frames = options
    header, n = source.header, source.n_frames
    files = "files" if isinstance(source, MibFolderFrames) else "file"
    hint = hdr_scan_shape(hdr) if scan_shape is None else None
    stamps = timestamps() if scan_shape is None and hint is None else None
    period = row_length_from_timestamps(stamps)
    if period:
        hint = ((-(-n // period), period), "frame timestamps (line flyback)")
    data, missing, how = grid_frames(source, source.path, scan_shape, hint=hint, missing_at=missing_at,
                                     chunk_frames=chunk_frames, name=name)
    metadata = {
        "format": fmt,
        "dtype_on_disk": header.disk_description,
        "counter_depth": header.counter_depth,
        "chips": header.assembly,
        "exposure_s": header.exposure_s,
        "timestamp_first": header.timestamp,
        "timestamp_last": last,
        "n_frames_in_file": n,
        **extra,
        "scan_shape_from": how,
        "orientation": "rows flipped: detector row 0 at the bottom, as Merlin displays frames",
        "calibration": f"pixel size 55 µm (Medipix3); camera length, voltage and scan step not in the {files}",
    }
    if stamps is not None and len(stamps) > 1:
        metadata["frame_period_s"] = float(np.median(np.diff(stamps))) * 1e-9
    if hdr:
        metadata["hdr"] = hdr
    geometry = Geometry(detector_shape=header.frame_shape, pixel_size_um=PIXEL_SIZE_UM).marked("file", "pixel_size_um")
    return Scan(data, geometry, missing=missing, metadata=metadata, source=source.path)


def _last_timestamp(path, header: FrameHeader, n: int) -> str | None:
    with open(path, "rb") as f:
        f.seek((n - 1) * header.frame_bytes)
        raw = f.read(header.header_bytes)
    try:
        return FrameHeader(raw, path).timestamp
    except ScanFormatError:
        return None


def _folder_hdr(folder, files) -> dict:
    """The acquisition header of a folder of .mib files: its only .hdr, or the one named like its files."""
    hdrs = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".hdr" and not p.name.startswith("."))
    if len(hdrs) > 1:
        prefix = re.sub(r"[_-]?\d+$", "", files[0].stem)
        hdrs = [p for p in hdrs if p.stem == prefix]
    return read_hdr(hdrs[0]) if len(hdrs) == 1 else {}


def _read_folder(folder: Path, scan_shape, missing_at, chunk_frames) -> Scan:
    """A folder of .mib files (Merlin's "one file per frame"): one scan, files in natural name order."""
    files = mib_files(folder)
    if not files:
        raise ScanFormatError(f"{folder}: a directory that is not a scan (no .mib files in it)")
    hdr = _folder_hdr(folder, files)
    header = _first_header(files[0], hdr)
    note = f" (frames of {files[0].name}: {header.width}x{header.height} {header.pixel_type})"
    counts = [_whole_frames(f, header, note) for f in files]
    for f in (files[0], files[-1]):
        with open(f, "rb") as fh:
            if fh.read(4) != b"MQ1,":
                raise ScanFormatError(f"{f}: corrupted frame header: does not start with 'MQ1,'")
    one_each = max(counts) == 1

    def timestamps():
        return _folder_timestamps(files[:PROBE_FRAMES], header) if header.timestamp is not None and one_each else None

    token = file_token(files[-1]) + file_token(folder)
    return _scan(MibFolderFrames(folder, files, counts, header), hdr, timestamps,
                 (scan_shape, missing_at, chunk_frames), f"mibdir-{token}-{len(files)}",
                 "Merlin .mib (folder, one file per frame)" if one_each else "Merlin .mib (folder of files)",
                 _last_timestamp(files[-1], header, counts[-1]), n_files=len(files), first_file=files[0].name,
                 last_file=files[-1].name)
