"""A simulated acquisition: frames of a scan written to disk one by one at a steady rate, the way
a detector's software writes them, so live mode can be tested and shown without a microscope.

- ``kind="mib"``: one growing Merlin ``.mib`` file (ASCII frame header + big-endian U16 pixels per
  frame) with its ``.hdr`` (frames in acquisition, frames per trigger = one scan row), written
  before the first frame;
- ``kind="folder"``: one ``.npy`` file per frame (``frame_000000.npy``...) in a folder, each
  written under a temporary name and renamed, as acquisition software does.

Frames are written so that ``io.open_scan`` reads back exactly the scan's frames (the Merlin
reader shows rows flipped, so rows are stored flipped).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

#: Bytes of a single-chip Merlin frame header (a quad's is 768).
MIB_HEADER_BYTES = 384
#: Bytes of a quad (2x2 chips) Merlin frame header.
MIB_QUAD_HEADER_BYTES = 768
#: A Merlin acquisition header (.hdr) is padded with spaces after ``End\t`` to this size.
MIB_HDR_BYTES = 2048


def mib_header(number: int, shape, dtype="U16", timestamp_ns: int = 0, chips: int = 1) -> bytes:
    """The ASCII header of Merlin frame ``number`` (1-based), NUL-padded to 384 bytes (768 for a
    quad: ``chips=4``, assembled 2x2 frames)."""
    if chips not in (1, 4):
        raise ValueError(f"chips must be 1 (single chip) or 4 (quad), not {chips}")
    h, w = shape
    size = MIB_HEADER_BYTES if chips == 1 else MIB_QUAD_HEADER_BYTES
    t = time.gmtime(timestamp_ns // 10**9)
    coarse = time.strftime("%Y-%m-%d %H:%M:%S", t) + f".{(timestamp_ns // 1000) % 10**6:06d}"
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{timestamp_ns % 10**9:09d}Z"
    depth = {"U08": 6, "U16": 12, "U32": 24}[dtype]
    fields = ["MQ1", f"{number:06d}", f"{size:05d}", f"{chips:02d}", f"{w:04d}", f"{h:04d}", dtype,
              "   1x1" if chips == 1 else "   2x2", "01" if chips == 1 else "0F", coarse, "0.001000", "0", "0",
              "0", "2.000000E+0", "5.110000E+2"] + ["0.000000E+0"] * 6 + ["3RX", "MQ1A", iso, "1000000ns",
                                                                         str(depth), ""]
    text = ",".join(fields).encode("latin-1")
    if len(text) > size:
        raise ValueError("Merlin frame header too long")
    return text + b"\0" * (size - len(text))


def mib_hdr(n_frames: int, frames_per_row: int, chips: int = 1, counter_depth: int = 12) -> bytes:
    """A Merlin acquisition header (.hdr) giving the frame count and the scan row length, laid out
    as Merlin writes it: CRLF lines, ``End\t`` padded with spaces to 2048 bytes, no newline after
    it (LiberTEM-live's simulator reads it line by line and refuses a blank last line)."""
    lines = ["HDR,\t", "Time and Date Stamp (day, mnth, yr, hr, min, s):\t" + time.strftime("%d/%m/%Y %H:%M:%S"),
             "Chip ID:\t" + ",".join(["W0_A0"] * chips), "Chip Type (Medipix 3.0, Medipix 3.1, Medipix 3RX):\t3RX",
             "Assembly Size (NX1, 2X2):\t" + ("   1x1" if chips == 1 else "   2x2"),
             "Chip Mode  (SPM, CSM, CM, CSCM):\tSPM", f"Counter Depth (number):\t{counter_depth}",
             f"Frames in Acquisition (Number):\t{n_frames}", f"Frames per Trigger (Number):\t{frames_per_row}"]
    text = ("\r\n".join(lines) + "\r\nEnd\t").encode("latin-1")
    return text + b" " * max(0, MIB_HDR_BYTES - len(text))


#: Merlin's pixel type for each counter depth it stores unpacked (bits -> type): 6-bit counters
#: as U08, 12-bit as U16, 24-bit (two counters combined) as U32, all big-endian.
MIB_PIXEL_TYPES = {6: ("U08", ">u1"), 12: ("U16", ">u2"), 24: ("U32", ">u4")}


def mib_frame_bytes(frame: np.ndarray, number: int, timestamp_ns: int = 0, chips: int = 1,
                    counter_depth: int = 12) -> bytes:
    """One frame as stored in a .mib file: header, then big-endian pixels of the ``counter_depth``
    (6, 12 or 24 bit: U08, U16, U32), rows flipped. Counts the counter cannot hold are refused
    (a real counter saturates: clip them first)."""
    frame = np.asarray(frame)
    if counter_depth not in MIB_PIXEL_TYPES:
        raise ValueError(f"the Merlin writer stores 6, 12 or 24-bit counters, not {counter_depth}-bit")
    if frame.dtype.kind not in "ui" or frame.min(initial=0) < 0 or frame.max(initial=0) >= 2 ** counter_depth:
        raise ValueError(f"the Merlin writer stores {counter_depth}-bit unsigned counts "
                         f"(0 to {2 ** counter_depth - 1})")
    pixel_type, dtype = MIB_PIXEL_TYPES[counter_depth]
    return mib_header(number, frame.shape, pixel_type, timestamp_ns, chips) + frame[::-1].astype(dtype).tobytes()


def write_mib(path, frames, scan_shape, *, chips: int = 1, frame_period_ns: int = 1_000_000,
              counter_depth: int = 12) -> Path:
    """Write ``frames`` (an iterable of (ky, kx) integer frames in scan order, e.g. a Scan's rows
    flattened) as a Merlin ``.mib`` file with its ``.hdr``, of ``counter_depth`` 6, 12 (default)
    or 24 bit (U08, U16, U32), single chip or quad (``chips=4``, assembled 2x2 frames, 768-byte
    headers), the way ``io.open_scan`` reads them back (rows flipped on disk). Returns the .mib path."""
    path = Path(path).with_suffix(".mib")
    sy, sx = (int(s) for s in scan_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".hdr").write_bytes(mib_hdr(sy * sx, sx, chips, counter_depth))
    t0 = time.time_ns()
    n = 0
    with open(path, "wb") as out:
        for k, frame in enumerate(frames):
            out.write(mib_frame_bytes(frame, k + 1, t0 + k * frame_period_ns, chips, counter_depth))
            n = k + 1
    if n != sy * sx:
        raise ValueError(f"{path}: {n} frames written for a {sy}x{sx} scan")
    return path


class Acquisition(threading.Thread):
    """Writes the frames of ``scan`` (a Scan) to ``path`` at ``rate_hz`` frames per second.

    kind: "mib" (path is the .mib file) or "folder" (path is the folder). chunk_bytes: a frame is
    written in pieces of this size (a reader must never take a partial frame). start(), then
    join(); ``written`` counts the frames on disk, ``first_written_at`` / ``finished_at`` are
    ``time.perf_counter()`` stamps. stop() ends it early. hold(k) -> True keeps frame k back
    (the acquisition pauses, the rate resumes from there).
    """

    def __init__(self, scan, path, rate_hz: float = 200.0, kind: str = "mib", chunk_bytes: int = 1 << 14,
                 hold=None):
        super().__init__(daemon=True, name="simulated-acquisition")
        if kind not in ("mib", "folder"):
            raise ValueError(f"kind must be 'mib' or 'folder', not {kind!r}")
        self.scan = scan
        self.path = Path(path)
        self.rate_hz = float(rate_hz)
        self.kind = kind
        self.chunk_bytes = int(chunk_bytes)
        self.hold = hold
        self.written = 0
        self.first_written_at = None
        self.finished_at = None
        self.error = None
        self._halt = threading.Event()

    def stop(self):
        self._halt.set()

    def run(self):
        sy, sx = self.scan.scan_shape
        out = None
        try:
            if self.kind == "mib":
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.with_suffix(".hdr").write_bytes(mib_hdr(sy * sx, sx))
                out = open(self.path, "wb")
            else:
                self.path.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            frames = (frame for iy in range(sy) for frame in self.scan.frame_source[iy])
            for k, frame in enumerate(frames):
                if self.hold is not None and self.hold(k):
                    while self.hold(k) and not self._halt.is_set():
                        time.sleep(0.002)
                    t0 = time.perf_counter() - k / self.rate_hz
                due = t0 + k / self.rate_hz
                while not self._halt.is_set() and time.perf_counter() < due:
                    time.sleep(min(0.002, max(0.0, due - time.perf_counter())))
                if self._halt.is_set():
                    return
                if self.kind == "mib":
                    blob = mib_frame_bytes(frame, k + 1, time.time_ns())
                    for s in range(0, len(blob), self.chunk_bytes):
                        out.write(blob[s:s + self.chunk_bytes])
                        out.flush()
                else:  # written under a hidden name, then renamed
                    tmp = self.path / f".frame_{k:06d}.part.npy"
                    np.save(tmp, frame)
                    os.replace(tmp, self.path / f"frame_{k:06d}.npy")
                self.written = k + 1
                if k == 0:
                    self.first_written_at = time.perf_counter()
        except BaseException as exc:  # reported to whoever joins
            self.error = exc
        finally:
            if out is not None:
                out.close()
            self.finished_at = time.perf_counter()
