"""Live mode: classify frames as they arrive, keep a running class map and keep-list.

Sources of frames (:func:`open_source`): a Merlin ``.mib`` file still being written
(:class:`MibSource`: only whole frames are read, each frame header is checked; the scan shape
comes from ``scan_shape`` or the ``.hdr`` written before the acquisition); a folder where frame
files land (:class:`FolderSource`: ``.npy``, ``.tif``/``.tiff`` or ``.mib`` files of one or more
frames, taken in the natural order of their names, the order acquisition software numbers them;
a file not readable completely yet is retried at the next poll); a Merlin or DECTRIS detector
stream (:class:`MerlinStreamSource`, :class:`DectrisStreamSource`).

Classification (:class:`FrameClassifier`) runs the model's own preprocessing recipe per frame:
flat-field, centre, RIA (and central crop for a CNN), then the model. Its plan (bad pixels the
flat-field did not catch, beam radius, saturation level) is set once, by ``preprocess`` itself on
the first frames of the scan (``calibration_frames``, default the recipe's ``bad_pixel_sample``),
then frozen; a batch run sets the same plan from frames spread over the whole scan, so on the
same file the two agree wherever those samples agree (tested on simulated scans). Live mode
always centres each frame on its own centre (a fitted descan needs the whole scan).

The running state is a :class:`LiveClassMap`: thread-safe, polled or subscribed to by the napari
live layer. :func:`watch` drives it and writes ``<name>_live_classes.npy`` (class map, 0 = not
yet classified), ``<name>_live_probabilities.npy``, the keep-list ``<name>_keep.csv`` (the CSV
of ``pipeline.reduce.write_keep_list``) and ``<name>_keep.json`` (kept positions, progress,
latency) atomically, every ``write_every_s`` and at the end.
"""

from __future__ import annotations

import atexit
import os
import re
import struct
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from ..geometry import Geometry
from ..io.atomic import check_target, write_json, write_npy
from ..scan import detector_metadata

#: Statuses of a live run, in the order they happen ("incomplete": a detector stream ended with
#: positions never received).
STATUSES = ("waiting", "calibrating", "running", "complete", "incomplete", "stopped", "timeout", "error")


# ---- the running state ---------------------------------------------------------------------------
#: A live run checks the ice ring of the frames seen once this share of the scan is classified
#: (``FrameClassifier.ring_warning``; again at the end): a camera length that is off is said while
#: the acquisition can still be stopped.
RING_CHECK_AFTER = 0.25


class LiveClassMap:
    """Thread-safe running results of a live run, for a widget to poll or subscribe to.

    class_map: uint8 (sy, sx), 0 = not classified yet. probabilities: float32 (sy, sx, k) for
    ``class_ids``. done: bool (sy, sx). keep_ids: classes whose frames are kept. latencies: s per
    frame from the moment its last byte was seen on disk to its class being known. version:
    increases with every update. status: one of STATUSES.
    """

    def __init__(self, scan_shape, class_ids, keep_ids=(), class_names=None):
        sy, sx = (int(s) for s in scan_shape)
        self.scan_shape = (sy, sx)
        self.class_ids = [int(c) for c in class_ids]
        self.class_names = dict(class_names or {})
        self.keep_ids = sorted(int(c) for c in keep_ids)
        self._lock = threading.RLock()
        self._class_map = np.zeros((sy, sx), np.uint8)
        self._proba = np.full((sy, sx, len(self.class_ids)), np.nan, np.float32)
        self._done = np.zeros((sy, sx), bool)
        self._latencies: list[float] = []
        self._steady_from = 0  # latencies before this index waited for the calibration
        self._subscribers: list[Callable] = []
        self._t0 = time.perf_counter()
        self._t_last = None
        self.version = 0
        self.status = "waiting"
        self.message = ""
        self.warnings: list[str] = []

    @property
    def n_positions(self) -> int:
        return self.scan_shape[0] * self.scan_shape[1]

    @property
    def n_done(self) -> int:
        with self._lock:
            return int(self._done.sum())

    def update(self, index, class_ids, probabilities, latencies_s) -> None:
        """Record classes (n,) and probabilities (n, k) of the frames at flat ``index`` (n,)."""
        index = np.asarray(index, np.int64).ravel()
        with self._lock:
            self._class_map.reshape(-1)[index] = class_ids
            self._proba.reshape(-1, len(self.class_ids))[index] = probabilities
            self._done.reshape(-1)[index] = True
            self._latencies.extend(float(v) for v in np.ravel(latencies_s))
            self._t_last = time.perf_counter()
            self.version += 1
        self._notify()

    def set_status(self, status: str, message: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._lock:
            self.status, self.message = status, message
            self.version += 1
        self._notify()

    def warn(self, text: str) -> None:
        """Add a warning for the user (shown while the run goes on), once."""
        with self._lock:
            if text in self.warnings:
                return
            self.warnings.append(text)
            self.version += 1
        self._notify()

    def subscribe(self, callback: Callable) -> Callable:
        """Call ``callback(state)`` after every update (from the live thread); returns an
        unsubscribe function. Callbacks must be quick (a GUI should only schedule a redraw)."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe():
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _notify(self):
        with self._lock:
            subs = list(self._subscribers)
        for cb in subs:
            cb(self)

    def _copy(self, array: np.ndarray) -> np.ndarray:
        with self._lock:
            return array.copy()

    def class_map(self) -> np.ndarray:
        return self._copy(self._class_map)

    def probabilities(self) -> np.ndarray:
        return self._copy(self._proba)

    def done(self) -> np.ndarray:
        return self._copy(self._done)

    def keep(self) -> np.ndarray:
        """bool (sy, sx): classified positions whose class is kept."""
        with self._lock:
            return np.isin(self._class_map, self.keep_ids) & self._done

    def keep_positions(self) -> np.ndarray:
        """(K, 2) int (iy, ix) of the kept positions so far, in scan order."""
        return np.argwhere(self.keep())

    def mark_calibrated(self) -> None:
        """Frames classified from now on did not wait for the calibration."""
        with self._lock:
            self._steady_from = len(self._latencies)

    def latency_stats(self) -> dict:
        """Per-frame latency (ms) of the frames classified after the calibration (mean, median,
        p95, p99, max), the mean of those that waited for it, and frames/s since the start."""
        with self._lock:
            lat = np.asarray(self._latencies) * 1e3
            k = self._steady_from
            n = int(self._done.sum())
            span = (self._t_last or time.perf_counter()) - self._t0
        out = {"frames": n, "frames_per_s": round(n / span, 1) if span > 0 else None,
               "calibration_frames": int(k), "calibration_mean_ms": round(float(lat[:k].mean()), 3) if k else None}
        steady = lat[k:]
        if steady.size:
            out.update(mean_ms=round(float(steady.mean()), 3), median_ms=round(float(np.median(steady)), 3),
                       p95_ms=round(float(np.percentile(steady, 95)), 3),
                       p99_ms=round(float(np.percentile(steady, 99)), 3), max_ms=round(float(steady.max()), 3))
        return out

    def snapshot(self) -> dict:
        """A consistent copy of everything, for writing or drawing."""
        with self._lock:
            return {"class_map": self._class_map.copy(), "probabilities": self._proba.copy(),
                    "done": self._done.copy(), "keep": self.keep(), "version": self.version,
                    "status": self.status, "message": self.message, "latency": self.latency_stats(),
                    "warnings": list(self.warnings)}


# ---- per-frame classification ----------------------------------------------------------------------
class FrameClassifier:
    """Classifies raw frames (n, ky, kx) with a model, one chunk at a time, with a frozen plan.

    Build it with :meth:`calibrate`. ``classify(frames, index)`` returns class ids (n,) uint8
    (0 = no beam found, not classified) and probabilities (n, k) float32 for ``class_ids``.
    """

    def __init__(self, model, runner, geometry: Geometry, radii_px, crop_radius_px, plan: dict):
        self.model = model
        self.runner = runner
        self.geometry = geometry
        self.radii_px = np.asarray(radii_px)
        self.crop_radius_px = crop_radius_px
        self.plan = plan
        self.class_ids = list(model.classes.ids)
        #: every ``ring_stride``-th frame's radial profile is kept for :meth:`ring_warning`
        self.ring_stride = 1
        self._ring = []
        self._scores = []  # (flat index, ring height, Bragg spike) of every frame classified

    @classmethod
    def calibrate(cls, model, frames, geometry: Geometry, *, flatfield=None, metadata: dict | None = None,
                  calibration_start: int = 0):
        """Build the model's PreprocessPlan from ``frames`` (the first frames of the scan, or the
        calibration window that starts ``calibration_start`` frames later), as a batch run builds it
        from the same calibration sample: saturation level, extra bad pixels, beam radius, radii.
        Raises ``NoBeamInSample`` when no frame of them shows the beam."""
        from ..processing import FlatField, FrameRunner, PreprocessPlan, load_flatfield
        from .predict import params_for_model

        frames = np.asarray(frames)
        model.check_geometry(geometry, "the live frames")
        params = replace(params_for_model(model, geometry), centring="per_frame", workers=1, chunk_frames=None)
        ff = None
        if flatfield is not None and params.use_flatfield:
            ff = flatfield if isinstance(flatfield, FlatField) else load_flatfield(flatfield)
        # the same plan a batch run builds from the same first frames (its calibration sample)
        plan_ = PreprocessPlan.build(params, geometry, metadata, frames[:params.bad_pixel_sample], ff,
                                     calibration_start=calibration_start)
        procs = plan_.processors(virtual=False)
        runner = FrameRunner(procs, plan_.corrections(ff), plan_.centre_finder())
        r = plan_.resolved
        plan = {"calibration_frames": plan_.calibration_frames, "calibration_start": plan_.calibration_start,
                "masked_pixels": int(plan_.corrections(ff).mask.sum()),
                "model_centring": (model.preprocess or {}).get("centring", "per_frame"), **r}
        return cls(model, runner, geometry, procs[0].radii_px, r["crop_half_px"], plan)

    def classify(self, frames, index=None):
        """Class ids (n,) and probabilities (n, k) of raw frames (n, ky, kx) at flat ``index``."""
        return self.classify_chunks([(index, frames)])

    def classify_chunks(self, chunks, threads: int = 1):
        """:meth:`classify` of several chunks [(index, frames)]: their features in ``threads`` threads
        (the frame kernels release the GIL), then one call of the model for all (its fixed cost per
        call is paid once)."""
        from ..models.inference import predict_scan
        from ..models.training import ScanFeatures

        values = [part.values for part in self.runner.map_chunks(chunks, threads)]
        self._keep_for_ring_check(chunks, values)
        ria = np.concatenate([v["ria"] for v in values])
        self._keep_scores(chunks, ria)
        crops = None if values[0].get("crop") is None else np.concatenate([v["crop"] for v in values])[None]
        feats = ScanFeatures(name="live", geometry=self.geometry, missing=np.zeros((1, len(ria)), bool),
                             ria=ria[None], radii_px=self.radii_px, crops=crops, crop_radius_px=self.crop_radius_px)
        pred = predict_scan(self.model, feats)
        return pred.class_map[0], pred.probabilities[0]

    def _keep_for_ring_check(self, chunks, values):
        for (index, _), v in zip(chunks, values):
            if index is None or "beam_found" not in v:
                continue
            pick = np.flatnonzero(np.asarray(index) % self.ring_stride == 0)
            if pick.size:
                self._ring.append({k: np.asarray(v[k])[pick] for k in ("ria", "ria_counts", "beam_found",
                                                                        "beam_radius_px") if k in v})

    def _keep_scores(self, chunks, ria):
        from .ice_agreement import frame_scores

        if any(index is None for index, _ in chunks):
            return
        scores = frame_scores(ria, self.radii_px, self.geometry)
        if scores is not None:
            self._scores.append((np.concatenate([np.asarray(index).ravel() for index, _ in chunks]), *scores))

    def agreement_warning(self, class_map, source=None) -> str | None:
        """``ice_agreement``'s warning for the live ``class_map`` (sy, sx) from the ring heights of
        every frame classified: the warning a batch prediction of the same scan gives when the
        frames the model calls amorphous ice are not the frames showing the ice ring."""
        from .ice_agreement import agreement_of_scores, agreement_warning

        if not self._scores:
            return None
        class_map = np.asarray(class_map)
        ring, spike = np.full(class_map.size, np.nan), np.full(class_map.size, np.nan)
        for index, r, s in self._scores:
            ring[index], spike[index] = r, s
        agreement = agreement_of_scores(class_map, self.model.classes, ring.reshape(class_map.shape),
                                        spike.reshape(class_map.shape))
        return agreement_warning(source or "the live scan", self.model.name, agreement)

    def ring_warning(self, source=None) -> str | None:
        """``calibrate.q_axis_warning`` on the radial profiles kept from the frames classified so
        far (every ``ring_stride``-th position): the warning a batch prediction of the same scan
        gives when the ice ring says the camera length is off; None when it is not, or no frame
        showed the ring."""
        from .calibrate import beam_radius_of, q_axis_warning

        if not self._ring:
            return None
        kept = {k: np.concatenate([r[k] for r in self._ring]) for k in self._ring[0]}
        found = kept["beam_found"].astype(bool)
        radius = beam_radius_of(kept["beam_radius_px"], found) if "beam_radius_px" in kept else None
        return q_axis_warning(kept["ria"], self.radii_px, found, self.geometry, counts=kept.get("ria_counts"),
                              inner_px=float(self.plan.get("adf_inner_px", 0.0)), beam_radius_px=radius,
                              source=source)


# ---- sources of frames -------------------------------------------------------------------------------
@dataclass
class FrameBatch:
    """Frames that just became available: flat scan indices (n,), frames (n, ky, kx), and the
    ``time.perf_counter()`` at which they were seen complete (one value, or one per frame)."""

    index: np.ndarray
    frames: np.ndarray
    seen: float | np.ndarray


class _FileSource:
    """What the file sources share: ``poll()`` hands over the frames ``_next(max_frames, left)``
    read (at most ``max_frames`` of the ``left`` positions, or None) at the next scan positions."""

    def poll(self, max_frames: int = 64) -> FrameBatch | None:
        if not self.ready():
            return None
        seen = time.perf_counter()
        frames = self._next(max_frames, self.scan_shape[0] * self.scan_shape[1] - self.done)
        if frames is None:
            return None
        batch = FrameBatch(np.arange(self.done, self.done + len(frames)), frames, seen)
        self.done += len(frames)
        return batch


class MibSource(_FileSource):
    """Whole frames of a Merlin .mib file that is still being written."""

    def __init__(self, path, scan_shape=None):
        self.path = Path(path)
        self._scan_shape = None if scan_shape is None else tuple(int(s) for s in scan_shape)
        self.header = None
        self.done = 0
        self.metadata = {"format": "Merlin .mib (live)"}

    @property
    def scan_shape(self):
        if self._scan_shape is None:
            from ..io.mib import hdr_scan_shape, read_hdr

            hdr_path = self.path.with_suffix(".hdr")
            found = hdr_scan_shape(read_hdr(hdr_path)) if hdr_path.exists() else None
            if found is None:
                why = ("its .hdr does not give it (no ScanX/ScanY)" if hdr_path.exists()
                       else "no .hdr giving it yet")
                raise ValueError(f"{self.path}: scan shape unknown ({why}); a live run needs it before the scan "
                                 "ends: give --scan-shape SY SX")
            self._scan_shape = tuple(found[0])
        return self._scan_shape

    def _read_header(self) -> bool:
        from ..io.mib import FrameHeader

        try:
            with open(self.path, "rb") as f:
                head = f.read(2048)
        except FileNotFoundError:
            return False
        if len(head) < 384:
            return False
        header = FrameHeader(head[:384], self.path)
        if header.header_bytes > len(head):
            return False
        if header.header_bytes > 384:
            header = FrameHeader(head[:header.header_bytes], self.path)
        self.header = header
        self.metadata["counter_depth"] = header.counter_depth
        return True

    def known_geometry(self) -> Geometry:
        """The calibration known before the first frame (a .mib frame's pixel pitch); its detector
        shape is a placeholder (:func:`check_model_before_frames`)."""
        from ..io.mib import PIXEL_SIZE_UM

        return Geometry(pixel_size_um=PIXEL_SIZE_UM).marked("file", "pixel_size_um")

    def geometry(self) -> Geometry:
        return self.known_geometry().replace(detector_shape=self.header.frame_shape)

    def ready(self) -> bool:
        return self.header is not None or self._read_header()

    def _next(self, max_frames: int, left: int):
        from ..errors import ScanFormatError
        from ..io.mib import MibFrames

        step = self.header.frame_bytes
        stop = min(os.path.getsize(self.path) // step, self.done + min(max_frames, left))
        if stop <= self.done:
            return None
        with open(self.path, "rb") as fh:
            for k in range(self.done, stop):
                if os.pread(fh.fileno(), 4, k * step) != b"MQ1,":
                    raise ScanFormatError(f"{self.path}: corrupted frame header: frame {k} does not start with 'MQ1,'")
        return np.array(MibFrames(self.path, self.header, stop).read(self.done, stop))


_NUMBER = re.compile(r"(\d+)")
_FRAME_SUFFIXES = (".npy", ".tif", ".tiff", ".mib")


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in _NUMBER.split(name)]


class FolderSource(_FileSource):
    """Frame files landing in a folder (one or more frames each), taken in natural name order."""

    def __init__(self, folder, scan_shape):
        self.path = Path(folder)
        if scan_shape is None:
            raise ValueError(f"{self.path}: frames arrive as files in a folder: give the scan shape (--scan-shape SY SX)")
        self.scan_shape = tuple(int(s) for s in scan_shape)
        self.taken: set[str] = set()
        self.done = 0
        self.metadata = {"format": "frame files (live)"}
        self._detector = None

    def ready(self) -> bool:
        return self.path.is_dir()

    def known_geometry(self) -> Geometry:
        return Geometry()

    def geometry(self) -> Geometry:
        return Geometry(detector_shape=self._detector) if self._detector else Geometry()

    def _read(self, path: Path):
        suffix = path.suffix.lower()
        if suffix == ".npy":
            arr = np.load(path, mmap_mode="r")
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from ..io import open_scan

            scan = open_scan(path)
            self.metadata.update({k: scan.metadata[k] for k in ("counter_depth",) if k in scan.metadata})
            arr = scan.frames()
        arr = np.array(arr)
        return arr[None] if arr.ndim == 2 else arr.reshape((-1,) + arr.shape[-2:])

    def _next(self, max_frames: int, left: int):
        names = sorted((e.name for e in os.scandir(self.path)
                        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(_FRAME_SUFFIXES)
                        and e.name not in self.taken), key=_natural_key)
        got, n = [], 0
        for name in names:
            if n >= min(max_frames, left):
                break
            try:
                frames = self._read(self.path / name)
            except (ValueError, OSError, EOFError):  # still being written: retry at the next poll
                break
            self.taken.add(name)
            got.append(frames)
            n += len(frames)
        if not got:
            return None
        frames = np.concatenate(got)[:left]
        self._detector = tuple(frames.shape[1:])
        return frames


# ---- detector network streams ----------------------------------------------------------------------
def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``"host:port"``, ``"host"`` or ``":port"`` -> (host, port)."""
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, ""
    host = host.strip("[]") or "127.0.0.1"
    try:
        return host, int(port) if port else int(default_port)
    except ValueError:
        raise ValueError(f"{text!r}: expected HOST:PORT") from None


def merlin_control_get(host: str, port: int, names=("COUNTERDEPTH", "IMAGEX", "IMAGEY"),
                       timeout_s: float = 2.0) -> dict:
    """Read settings from a Merlin control server (``MPX,<length>,GET,<NAME>,0`` commands on the
    control port, 6341 by default): {name: value string}. Raises OSError when it does not answer."""
    import socket

    out = {}
    with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
        for name in names:
            body = f"GET,{name},0"
            s.sendall(f"MPX,{len(body) + 1:010d},{body}".encode("ascii"))
            resp = s.recv(4096).decode("ascii", "replace")
            parts = resp.split(",")  # MPX, length, GET, NAME, value, status
            if len(parts) >= 6 and parts[2] == "GET" and parts[5].strip() == "0":
                out[name] = parts[4]
    return out


def _stack_numbers(blob: bytes, n: int, frame_number):
    """Frame numbers of a stack of n frames of a LiberTEM-live receiver, read from its serialized
    handle (bincode: slot size and index, the frame count, each frame's metadata, then the offsets
    and the frame size); ``frame_number(blob, offset)`` reads one frame's metadata -> (number, next
    offset). None when the bytes are not laid out as expected (another version of the receiver),
    and frames are then numbered in order of arrival."""
    try:
        (count,) = struct.unpack_from("<Q", blob, 16)
        if count != n:
            return None
        numbers = np.empty(n, np.int64)
        off = 24
        for j in range(n):
            numbers[j], off = frame_number(blob, off)
        (offsets,) = struct.unpack_from("<Q", blob, off)
        if offsets != n or off + 8 + 8 * n + 8 != len(blob):
            return None
        return numbers
    except (struct.error, IndexError, ValueError):
        return None


def _string_end(blob: bytes, off: int) -> int:
    """Where the (u64 length, bytes) header string at ``off`` ends; at most 256 bytes."""
    (length,) = struct.unpack_from("<Q", blob, off)
    if length > 256:
        raise ValueError("not a header string")
    return off + 8 + length


def _qd_frame_header(blob: bytes, off: int):
    """A frame of a libertem_qd_mpx stack: MPX length, frame number (from 1, its Merlin header), ...,
    and the counter depth when the header has Merlin's extended part (MQ1A) -> (number, counter
    depth or None, next offset)."""
    _, number = struct.unpack_from("<QI", blob, off)
    off += 12 + 2 + 1 + 16 + 4 + 4 + 1  # data offset, chips, sizes, dtype, layout, chip select
    off = _string_end(blob, off) + 8 + 1 + 4 + 4  # timestamp, shutter time, counter, colour mode, gain
    tag = blob[off]
    if tag == 1:  # MQ1A: extended timestamp, shutter ns, counter depth
        off = _string_end(blob, off + 1) + 8
        return number, blob[off], off + 1
    if tag != 0:
        raise ValueError("unknown frame header tag")
    return number, None, off + 1


def _qd_frame_number(blob: bytes, off: int):
    number, _, off = _qd_frame_header(blob, off)
    return number, off


def _qd_counter_depth(blob: bytes) -> int | None:
    """The counter depth (bits) the first frame header of a libertem_qd_mpx stack states (Merlin's
    MQ1A part), None when it states none or the bytes are not laid out as expected. A 1-bit RAW
    frame arrives as bytes like a 6-bit one: only its header tells them apart."""
    try:
        depth = _qd_frame_header(blob, 24)[1]
    except (struct.error, IndexError, ValueError):
        return None
    return int(depth) if depth in (1, 6, 12, 24) else None


def _dectris_frame_number(blob: bytes, off: int):
    """A frame of a libertem_dectris stack: dimage (htype, series, frame from 0, hash), dimage_d
    (htype, shape, type, encoding), dconfig (htype, start, stop, real time), data length."""
    off = _string_end(blob, off) + 8  # htype, series
    (number,) = struct.unpack_from("<Q", blob, off)
    off = _string_end(blob, off + 8)  # hash
    off = _string_end(blob, off) + 16 + 4  # dimage_d htype, shape, pixel type
    off = _string_end(blob, off)  # encoding
    return number, _string_end(blob, off) + 24 + 8  # dconfig htype, start/stop/real time; data length


#: Frame numbers of a libertem_qd_mpx stack (Merlin numbers frames from 1), or None.
_qd_sequences = partial(_stack_numbers, frame_number=_qd_frame_number)
#: Frame numbers of a libertem_dectris stack (DECTRIS numbers frames from 0), or None.
_dectris_frame_numbers = partial(_stack_numbers, frame_number=_dectris_frame_number)


# ---- the receivers' shared-memory handles: made here, removed whatever way the process ends ----------
_RECEIVING: set = set()  # stream sources of this process whose receiver thread runs
_HANDLE_FOLDERS: set = set()  # handle folders of this process not removed yet
_HANDLES_LOCK = threading.Lock()


def _handle_folder(kind: str) -> str:
    """A new folder for a receiver's shared-memory handle (a Unix socket) in the temporary folder,
    ``sedclassify-<kind>-<pid>-<random>``. Its receiver removes it when it ends; the end of this
    process, a receiver still running then; the next stream of any process, those of processes that
    no longer exist (killed outright)."""
    import tempfile

    _remove_stale_handle_folders(Path(tempfile.gettempdir()))
    folder = tempfile.mkdtemp(prefix=f"sedclassify-{kind}-{os.getpid()}-")
    with _HANDLES_LOCK:
        _HANDLE_FOLDERS.add(folder)
    return folder


def _remove_handle_folder(folder: str) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    with _HANDLES_LOCK:
        _HANDLE_FOLDERS.discard(folder)


def _remove_stale_handle_folders(tmp: Path) -> None:
    """Remove the handle folders of processes that no longer exist."""
    import shutil

    import psutil  # asks without signalling the process

    for folder in tmp.glob("sedclassify-*-*-*"):
        kind, pid = folder.name.split("-")[1:3]
        if kind in ("merlin", "dectris") and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _close_receivers() -> None:
    """At exit: stop the receivers still running (a receiver thread left inside the receiver's
    native code when Python shuts down aborts the process) and remove their handle folders."""
    with _HANDLES_LOCK:
        sources = list(_RECEIVING)
    for src in sources:
        src.close()
    with _HANDLES_LOCK:
        folders = list(_HANDLE_FOLDERS)
    for folder in folders:
        _remove_handle_folder(folder)


atexit.register(_close_receivers)


class StreamSource:
    """A detector stream received by LiberTEM-live's receiver (the ``live`` extra) in passive mode.

    ``ready()`` connects on its first call, starts a receiver thread and is True once the
    acquisition software armed the detector (nothing is armed or triggered from here); the thread
    takes frame stacks out of the receiver's shared memory, decodes and releases them. ``poll()``
    hands over the frames waiting; ``finished`` is True when the acquisition ended and every frame
    was handed over; ``stats()`` gives the counters; ``close()`` stops the receiver. A frame goes
    to the scan position its number (in its own header) gives: one lost on the way leaves its
    position unclassified and counts in ``stats()["frames_dropped"]``. Memory is bounded: at most
    ``max_buffered_frames`` decoded frames wait for the classifier, then ``num_slots`` stacks of up
    to ``frame_stack_size`` frames stay in shared memory, then the stream itself is held back, as a
    slow reader of a real detector would be. name: stem of the output files.

    A subclass sets ``kind``, ``stream_format``, ``first_number`` (the scan's first frame number)
    and ``_frame_numbers(blob, n)``, and implements ``_connect(handle_dir)`` -> (receiver module,
    connection), ``_armed_by(armed)`` -> frames announced, and ``_first_stack(stack)``.
    """

    kind = "stream"
    first_number = 0
    #: what a detector not armed, or messages out of order, may mean besides ("": nothing more)
    shared_stream_hint = ""

    def __init__(self, host: str, port: int, scan_shape=None, *, name: str, frame_stack_size: int = 16,
                 num_slots: int = 256, max_buffered_frames: int = 1024, bytes_per_frame: int = 256 * 256 * 2):
        from ..optional import require_live

        require_live(self.kind)
        self.host, self.port = str(host), int(port)
        self.name = name
        self.path = f"{self.kind}://{self.host}:{self.port}"
        self._scan_shape = None if scan_shape is None else tuple(int(s) for s in scan_shape)
        self.frame_stack_size = int(frame_stack_size)
        self.num_slots = int(num_slots)
        self.bytes_per_frame = int(bytes_per_frame)
        self.max_buffered_frames = int(max_buffered_frames)
        self.metadata = {"format": self.stream_format, "stream": f"{self.host}:{self.port}"}
        self.detector_shape = None
        self.dtype = None
        self.done = 0
        self.header = None
        self._cond = threading.Condition()
        self._queue: list[FrameBatch] = []
        self._buffered = 0
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._armed = threading.Event()
        self._ended = threading.Event()
        self._thread = None
        self.error: BaseException | None = None
        self._stats = {"frames_announced": None, "frames_received": 0, "frames_dropped": 0, "frames_outside_scan": 0,
                       "frame_stacks": 0, "max_buffered_frames": 0, "first_frame_at": None, "last_frame_at": None,
                       "frame_numbers_from": None}

    @property
    def scan_shape(self):
        return self._scan_shape

    def known_geometry(self) -> Geometry:
        return Geometry()

    def geometry(self) -> Geometry:
        return self.known_geometry().replace(detector_shape=self.detector_shape)

    def _start(self):
        self._thread = threading.Thread(target=self._receive, daemon=True, name=f"{self.kind}-receiver")
        with _HANDLES_LOCK:
            _RECEIVING.add(self)
        self._thread.start()

    def _next_stack(self, conn):
        """The next frame stack; None when the acquisition is over, or when the receiver gave it up
        (the connection lost, the detector or its server stopped, a DECTRIS frame number skipped:
        its message is kept in ``stats()["stream_error"]`` and the frames never received count
        as dropped)."""
        try:
            return conn.get_next_stack(max_size=self.frame_stack_size)
        except Exception as exc:  # the receiver's errors, which its module does not export
            with self._cond:
                self._stats["stream_error"] = self._stream_error(str(exc), self._stats["frames_received"])
            return None

    def _stream_error(self, message: str, received: int) -> str:
        """The receiver's ``message`` as the user reads it (``received``: frames that came before)."""
        return message

    def _scan_frames(self, frames):
        """Decoded frames as the project's readers show them."""
        return frames

    def _receive(self):
        conn = cam = handle_dir = None
        try:
            handle_dir = _handle_folder(self.kind)
            receiver, conn = self._connect(handle_dir)
            self._start_passive(conn)
            armed = None
            while armed is None and not self._stop.is_set():
                armed = conn.wait_for_arm(timeout=0.2)
            if armed is None:
                conn = None  # dropped, not closed: close() would wait until something listens at HOST:PORT
                return
            self._stats["frames_announced"] = self._armed_by(armed)
            cam = receiver.CamClient(conn.get_socket_path())
            self._armed.set()
            expected = self.first_number
            while not self._stop.is_set():
                with self._cond:  # the classifier is behind: stacks stay in shared memory, then the stream waits
                    while self._buffered >= self.max_buffered_frames and not self._stop.is_set():
                        self._cond.wait(0.05)
                if self._stop.is_set():
                    break
                stack = self._next_stack(conn)
                if stack is None:  # the acquisition is over
                    break
                seen = time.perf_counter()
                n = len(stack)
                if self.dtype is None:
                    self._first_stack(stack)
                frames = np.empty((n,) + self.detector_shape, self.dtype)
                cam.decode_range_into_buffer(stack, frames, 0, n)
                numbers = self._frame_numbers(stack.serialize(), n)
                cam.done(stack)
                expected = self._deliver(numbers, expected, self._scan_frames(frames), seen)
            if not self._stop.is_set():  # the stream ended by itself: frames announced, never received, are lost
                with self._cond:
                    announced = self._stats["frames_announced"] or 0
                    self._stats["frames_dropped"] += max(0, announced - (expected - self.first_number))
        except BaseException as exc:  # reported by ready() / poll()
            self.error = exc
        finally:
            for obj in (cam, conn):
                if obj is not None:
                    with suppress(Exception):
                        obj.close()
            if handle_dir is not None:
                _remove_handle_folder(handle_dir)
            with _HANDLES_LOCK:
                _RECEIVING.discard(self)
            self._ended.set()
            with self._cond:
                self._cond.notify_all()

    def _start_passive(self, conn) -> None:
        """Start the receiver; it connects to HOST:PORT in its own thread, retrying until something
        listens there. Connected at once or not is noted for ``wait_ready``'s message."""
        try:
            conn.start_passive(timeout=0.2)  # once: a second start fails the acquisition once it runs
        except Exception as exc:  # the receiver's ConnectionError, which its module does not export
            if "timed out" not in str(exc):
                raise
        else:
            self._connected.set()

    def _deliver(self, numbers, expected: int, frames, seen: float) -> int:
        """Queue one stack of frames at the scan positions their ``numbers`` give (from the frames'
        headers; None: in order of arrival, then noted in the stats) and update the counters: gaps
        in the numbers are dropped frames, frames outside the scan are counted and left out.
        Returns the next number expected."""
        received = len(frames)
        if self._stats["frame_numbers_from"] is None:
            self._stats["frame_numbers_from"] = "frame headers" if numbers is not None else "arrival order"
        if numbers is None:
            numbers = np.arange(expected, expected + received)
        gaps = int(numbers[0] - expected) + int(np.clip(np.diff(numbers) - 1, 0, None).sum())
        index = numbers - self.first_number
        try:
            n_positions = self.scan_shape[0] * self.scan_shape[1]
        except ValueError:  # the scan shape is not known: no frame is outside it
            n_positions = np.iinfo(np.int64).max
        inside = (index >= 0) & (index < n_positions)
        if not inside.all():
            index, frames = index[inside], frames[inside]
        batch = FrameBatch(index, frames, np.full(len(index), seen))
        with self._cond:
            st = self._stats
            st["frames_received"] += received
            st["frames_dropped"] += max(gaps, 0)
            st["frames_outside_scan"] += int(received - inside.sum())
            st["frame_stacks"] += 1
            st["first_frame_at"] = st["first_frame_at"] or seen
            st["last_frame_at"] = seen
            if len(batch.index):
                self._queue.append(batch)
                self._buffered += len(batch.index)
            st["max_buffered_frames"] = max(st["max_buffered_frames"], self._buffered)
            self._cond.notify_all()
        return int(numbers[-1]) + 1

    def ready(self) -> bool:
        if self._thread is None:
            self._start()
        if self.error is not None and not self._armed.is_set():
            self._raise_error()
        return self._armed.is_set()

    def _raise_error(self):
        """The receiver's error, named with the stream (an OSError: one line in the CLI and napari)."""
        if isinstance(self.error, (OSError, ValueError, KeyboardInterrupt)):
            raise self.error
        said = self._stream_error(str(self.error), self._stats["frames_received"])
        raise ConnectionError(f"{self.path}: the receiver stopped: {said}") from self.error

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop receiving and release the connection (waits up to ``timeout_s`` for the receiver:
        a stack read in progress ends when data or the end of the acquisition arrives)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    @property
    def finished(self) -> bool:
        """True when no more frames will come (the acquisition ended or the receiver stopped) and
        every received frame was handed over."""
        with self._cond:
            return self._ended.is_set() and not self._queue

    def scan_shape_warning(self) -> str | None:
        """What the acquisition header says against the scan shape given (frames announced, and a
        Merlin scan row: frames per trigger), once armed; None when they agree or it says nothing."""
        if self.header is None or self._scan_shape is None:
            return None
        (sy, sx), total = self._scan_shape, self.header.get("frames_in_acquisition") or 0
        per_row = self.header.get("frames_per_trigger") or 0
        said = []
        if total and total != sy * sx:
            said.append(f"{total} frames")
        if 1 < per_row < total and per_row != sx:
            said.append(f"rows of {per_row} frames (frames per trigger)")
        if not said:
            return None
        return (f"{self.path}: the scan shape given, {sy} x {sx} = {sy * sx} positions, does not match the acquisition "
                f"header's {' in '.join(said)}: " + ("frames beyond the scan are left out, " if total > sy * sx else "")
                + "check --scan-shape")

    def stats(self) -> dict:
        """Counters of the stream: frames the acquisition header announced, received, dropped (gaps
        in the frame numbers), outside the scan, frame stacks, most frames waiting for the
        classifier, receive rate (frames/s between the first and the last frame)."""
        with self._cond:
            s = dict(self._stats)
            s["frames_waiting"] = self._buffered
        t0, t1 = s.pop("first_frame_at"), s.pop("last_frame_at")
        if t0 is not None and t1 is not None and t1 > t0 and s["frames_received"] > 1:
            s["receive_rate_hz"] = round((s["frames_received"] - 1) / (t1 - t0), 1)
        return s

    def poll(self, max_frames: int = 64) -> FrameBatch | None:
        if not self.ready():
            return None
        with self._cond:
            if not self._queue:
                if self.error is not None:
                    self._raise_error()
                return None
            got, n = [], 0
            while self._queue and n < max_frames:
                b = self._queue.pop(0)
                take = min(len(b.index), max_frames - n)
                if take < len(b.index):  # the rest stays first in the queue
                    self._queue.insert(0, FrameBatch(b.index[take:], b.frames[take:], b.seen[take:]))
                got.append(FrameBatch(b.index[:take], b.frames[:take], b.seen[:take]))
                n += take
            self._buffered -= n
            self._cond.notify_all()
        self.done += n
        if len(got) == 1:
            return got[0]
        return FrameBatch(np.concatenate([b.index for b in got]), np.concatenate([b.frames for b in got]),
                          np.concatenate([b.seen for b in got]))


class MerlinStreamSource(StreamSource):
    """Frames from a Quantum Detectors Merlin data stream (TCP; the Merlin software's data port,
    6342 by default, or LiberTEM-live's simulator ``libertem-live-mib-sim``), received by
    ``libertem_qd_mpx.QdConnection`` as :class:`StreamSource` says. Frames are decoded with their
    rows flipped, as the project's .mib reader shows them, and each goes to scan position ``frame
    number - 1`` (the number in its Merlin header); a slow reader makes Merlin drop frames, which
    shows as ``frames_dropped``.

    scan_shape: (sy, sx); default the acquisition header's ScanX/ScanY, else its frames per trigger
    as the row length. control_port: the Merlin control port; when given, the counter depth and
    frame size are read from it (metadata). options: frame_stack_size, num_slots,
    max_buffered_frames, bytes_per_frame (:class:`StreamSource`).
    """

    kind = "merlin"
    stream_format = "Merlin TCP stream (live)"
    first_number = 1
    _frame_numbers = _qd_sequences

    def __init__(self, host: str = "127.0.0.1", port: int = 6342, scan_shape=None, *, control_port=None,
                 name: str = "merlin", **options):
        super().__init__(host, port, scan_shape, name=name, **options)
        self.control_port = None if control_port is None else int(control_port)

    def _start(self):
        if self.control_port is not None:
            try:
                settings = merlin_control_get(self.host, self.control_port)
            except OSError as exc:
                raise ConnectionError(f"Merlin control port {self.host}:{self.control_port} does not answer: {exc}") from exc
            self.metadata["merlin_settings"] = settings
            if str(settings.get("COUNTERDEPTH", "")).isdigit():
                self.metadata["counter_depth"] = int(settings["COUNTERDEPTH"])
        super()._start()

    @property
    def scan_shape(self):
        if self._scan_shape is None:
            if self.header is None:
                raise ValueError(f"{self.path}: scan shape unknown until the detector is armed: give --scan-shape SY SX")
            shape = self.header.get("nav_shape")
            total, per_row = self.header["frames_in_acquisition"], self.header["frames_per_trigger"]
            if shape is None and per_row and total and 1 < per_row < total:
                shape = (-(-total // per_row), per_row)
            if shape is None:
                raise ValueError(f"{self.path}: the acquisition header does not give the scan shape "
                                 f"({total} frames, {per_row} per trigger): give --scan-shape SY SX")
            self._scan_shape = tuple(int(s) for s in shape)
        return self._scan_shape

    def known_geometry(self) -> Geometry:
        from ..io.mib import PIXEL_SIZE_UM

        return Geometry(pixel_size_um=PIXEL_SIZE_UM).marked("file", "pixel_size_um")

    def _connect(self, handle_dir):
        import libertem_qd_mpx as qd

        return qd, qd.QdConnection(data_host=self.host, data_port=self.port, frame_stack_size=self.frame_stack_size,
                                   shm_handle_path=os.path.join(handle_dir, "qd-shm"), drain=False,
                                   num_slots=self.num_slots, bytes_per_frame=self.bytes_per_frame,
                                   recovery_strategy="immediate_reconnect")

    def _armed_by(self, acq) -> int:
        self.header = {"frames_in_acquisition": int(acq.frames_in_acquisition()),
                       "frames_per_trigger": int(acq.frames_per_trigger()), "nav_shape": acq.nav_shape(),
                       "detector_shape": tuple(acq.detector_shape())}
        self.detector_shape = tuple(int(s) for s in acq.detector_shape())
        self.metadata["acquisition_header"] = {k: (list(v) if isinstance(v, tuple) else v)
                                               for k, v in self.header.items()}
        return self.header["frames_in_acquisition"]

    def _first_stack(self, stack):
        """Frame type and size, and the counter depth: as the frame header states it (as the .mib
        reader takes it: a 1-bit RAW stream was taken for 6-bit, saturation 63 instead of 1), else
        the control port's, else from the pixel type."""
        self.dtype = np.dtype(stack.get_dtype_string())
        self.detector_shape = tuple(int(s) for s in stack.get_shape())
        stated = _qd_counter_depth(stack.serialize())
        if stated is not None:
            self.metadata["counter_depth"] = stated
        self.metadata.setdefault("counter_depth", {1: 6, 2: 12, 4: 24}.get(self.dtype.itemsize))

    def _scan_frames(self, frames):
        return frames[:, ::-1]

    def _stream_error(self, message: str, received: int) -> str:
        """A parse error: the data port sent bytes that are not Merlin frames. Said as such, with the
        known cause (the receiver's text alone named no cause: "expected 'MPX,', got [0, 0, 0, 0]")."""
        if "parse error" not in message:
            return message
        one_bit = ("; 1-bit frames stored as bytes (U08, not RAW) are not read by LiberTEM's receiver"
                   if self.metadata.get("counter_depth") == 1 else "")
        return (f"{message} -- after {received} frames the data port sent bytes that are not Merlin frames: a "
                "broken stream (LiberTEM-live's simulator with --cached MEM sends one after a client disconnected "
                f"mid-acquisition: restart it){one_bit}")


class DectrisStreamSource(StreamSource):
    """Frames from a DECTRIS detector's zmq stream (ARINA, QUADRO, EIGER2: the DCU's stream port,
    9999 by default, or LiberTEM-live's simulator ``libertem-live-dectris-sim``), received by
    ``libertem_dectris.DectrisConnection`` as :class:`StreamSource` says: armed means a series
    header (``dheader-1.0``) arrived; frames (Bitshuffle-LZ4 or LZ4, 8/16/32 bit) are decoded as
    the receiver does and each goes to scan position ``frame`` (the number in its ``dimage-1.0``
    part, from 0). LiberTEM's receiver stops a series whose frame numbers skip (a frame lost on the
    way): the frames announced by the header (``ntrigger`` x ``nimages``) that never arrived are
    counted in ``stats()["frames_dropped"]``, the receiver's message is kept in
    ``stats()["stream_error"]`` and the run then ends ``incomplete``.

    scan_shape: (sy, sx); needed (a DECTRIS series header gives the number of frames, not the scan's
    rows and columns). options: as for :class:`MerlinStreamSource`.
    """

    kind = "dectris"
    stream_format = "DECTRIS zmq stream (live)"
    _frame_numbers = _dectris_frame_numbers
    shared_stream_hint = ("a DECTRIS zmq stream deals its messages out among all the receivers connected to it: is "
                          "another one (a second watch, LiberTEM) connected to this stream? Stop it")

    def _stream_error(self, message: str, received: int) -> str:
        """Messages out of order (a frame where the detector configuration belongs) or frame numbers
        that skip: said with what they mean; a second receiver on the stream gives both (each
        got part of the messages: the receiver's text alone named no cause)."""
        if "deserialization failed" in message:
            return f"{message} -- the series' messages arrived out of order: {self.shared_stream_hint}"
        if "mismatch" in message:
            return f"{message} -- a frame lost on the way, or: {self.shared_stream_hint}"
        return message

    def __init__(self, host: str = "127.0.0.1", port: int = 9999, scan_shape=None, *, name: str = "dectris",
                 **options):
        super().__init__(host, port, scan_shape, name=name, **options)
        if scan_shape is None:
            raise ValueError(f"{self.path}: a DECTRIS series header does not give the scan shape: "
                             "give --scan-shape SY SX")

    def _start(self):
        import socket

        try:  # zmq connects lazily and silently: say at once when nothing listens there
            socket.create_connection((self.host, self.port), timeout=5.0).close()
        except OSError as exc:
            raise ConnectionError(f"cannot connect to the DECTRIS stream at {self.host}:{self.port} ({exc}): check the "
                                  "DCU's address and its zmq stream port (9999 by default) and that its stream "
                                  "interface is enabled (stream/api/.../config/mode = enabled)") from exc
        super()._start()

    def _connect(self, handle_dir):
        import libertem_dectris as ld

        return ld, ld.DectrisConnection(uri=f"tcp://{self.host}:{self.port}", frame_stack_size=self.frame_stack_size,
                                        handle_path=os.path.join(handle_dir, "dectris-shm"),
                                        num_slots=self.num_slots, bytes_per_frame=self.bytes_per_frame)

    def _armed_by(self, armed) -> int:
        config, series = armed
        total = int(config.get_num_frames())
        # the detector configuration the receiver parsed from the series header, from its repr:
        # DetectorConfig { ntrigger: 256, nimages: 1, trigger_mode: EXTE, x_pixels_in_detector: ...}
        cfg = {k: int(v) if v.isdigit() else v.lower() for k, v in re.findall(r"(\w+): (\w+)", repr(config))}
        self.header = {"frames_in_acquisition": total, "series": int(series), **cfg}
        if cfg.get("y_pixels_in_detector") and cfg.get("x_pixels_in_detector"):
            self.detector_shape = (cfg["y_pixels_in_detector"], cfg["x_pixels_in_detector"])
        if cfg.get("bit_depth_image"):
            self.metadata["counter_depth"] = cfg["bit_depth_image"]
        self.metadata["acquisition_header"] = dict(self.header)
        return total

    def _first_stack(self, stack):
        self.dtype = np.dtype(stack.get_dtype_string())
        self.detector_shape = tuple(int(s) for s in reversed(stack.get_shape()))  # DECTRIS: [x, y]
        self.metadata.setdefault("counter_depth", 8 * self.dtype.itemsize)

    def _scan_frames(self, frames):
        return frames.astype(frames.dtype.newbyteorder("=")) if frames.dtype.byteorder == ">" else frames


def open_source(path, scan_shape=None, **stream_options):
    """A frame source for ``path``: ``merlin://HOST[:PORT]`` or ``dectris://HOST[:PORT]`` (a detector
    stream, the ``live`` extra; ``stream_options`` go to its source), a growing .mib file
    (``.mib``/``.hdr``), else a folder of frame files (which may not exist yet)."""
    for cls, default_port in ((MerlinStreamSource, 6342), (DectrisStreamSource, 9999)):
        if str(path).startswith(f"{cls.kind}://"):
            host, port = parse_host_port(str(path)[len(cls.kind) + 3:], default_port)
            return cls(host, port, scan_shape, **stream_options)
    path = Path(path)
    if not path.parent.is_dir():  # what the acquisition writes may not be there yet, but its folder is
        raise ValueError(f"{path}: there is no folder {path.parent}: check the path (live input is a .mib file "
                         "being written, or a folder where frame files land, in an existing folder)")
    if path.suffix.lower() in (".mib", ".hdr"):
        return MibSource(path.with_suffix(".mib"), scan_shape)
    # a folder, possibly not created yet: asked in this order, a folder the acquisition creates
    # meanwhile is never taken for a file (is_dir() False, then exists() True, was refused)
    if not path.exists() or path.is_dir():
        return FolderSource(path, scan_shape)
    raise ValueError(f"{path}: live input must be a folder of frame files or a Merlin .mib file")


def check_model_before_frames(model, src, geometry: Geometry | None = None) -> None:
    """Refuse at once, before waiting for the acquisition, a model that cannot be applied to the live
    frames whatever their detector size (``models.persistence.check_calibration`` on ``geometry``,
    the calibration the run is given, else ``src.known_geometry()``: e.g. a model that needs the
    camera length, not given): else it was refused once the first frames arrived, the detector
    armed. Raises IncompatibleModelError."""
    from ..models.persistence import check_calibration

    check_calibration(model, geometry if geometry is not None else src.known_geometry(),
                      str(getattr(src, "path", None) or "the live frames"))


def lock_outputs(out_dir, name: str) -> Path:
    """Hold ``<out_dir>/<name>_watch.lock`` (it holds this process's id) while a run writes
    ``<name>_*`` there: a second run for the same folder and name is refused (ValueError, one line)
    while the first one's process lives; a lock left by a process that no longer exists is
    removed. Returns the lock's path, for :func:`unlock_outputs`."""
    import psutil  # asks without signalling the process

    lock = Path(out_dir) / f"{name}_watch.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)  # as the outputs' writer makes it
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):  # being written, or removed, right now: look again
                time.sleep(0.05)
                continue
            if pid and psutil.pid_exists(pid):
                raise ValueError(f"{lock}: another live run (process {pid}) is writing {name}_* in {lock.parent}: "
                                 "give another --out folder or --name, or stop that run") from None
            lock.unlink(missing_ok=True)  # its process ended without removing it
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return lock
    raise ValueError(f"{lock}: cannot take this lock (another live run is starting with the same --out and --name?)")


def unlock_outputs(lock) -> None:
    """Remove a lock :func:`lock_outputs` took."""
    if lock is not None:
        Path(lock).unlink(missing_ok=True)


@contextmanager
def _checked_and_locked(model, src, geometry: Geometry | None, out_dir, name: str, metadata: dict | None = None):
    """What a live run checks before it waits for ``src``: the model against the geometry
    (:func:`check_model_before_frames`), then the outputs' lock (:func:`lock_outputs` on
    ``out_dir`` for ``name``, held inside; ``out_dir`` None: no outputs, no lock). ``src`` is
    closed when either refuses. With ``geometry`` given (its detector known before the frames), the
    model's preprocessing parameters are checked against that detector too
    (:meth:`PreprocessParams.check_detector`: a crop or beam radius it cannot hold)."""
    try:
        check_model_before_frames(model, src, geometry)
        if geometry is not None:
            _check_model_params(model, geometry, str(getattr(src, "path", None) or "the live frames"), metadata)
        lock = lock_outputs(out_dir, name) if out_dir is not None else None
    except BaseException:
        if hasattr(src, "close"):
            src.close()
        raise
    try:
        yield
    finally:
        unlock_outputs(lock)


def _check_model_params(model, geometry: Geometry, where: str, metadata: dict | None = None) -> None:
    """Refuse (ValueError, one line naming ``where``) a model whose preprocessing this detector
    cannot hold (with the beam radius ``metadata`` states: --beam-radius), as
    :meth:`FrameClassifier.calibrate` would once the first frames arrived."""
    from ..processing.plan import stated_params
    from .predict import params_for_model

    model.check_geometry(geometry, where)
    try:
        stated_params(params_for_model(model, geometry), metadata).check_detector(geometry)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _states_detector(src) -> bool:
    """Whether ready ``src`` states its frames' detector before they arrive: a .mib file's first
    frame header, a stream's acquisition header (a folder's first frame file tells it)."""
    return isinstance(src, MibSource) or (isinstance(src, StreamSource) and src.detector_shape is not None)


def wait_ready(src, timeout_s: float | None = None, cancel: Callable | None = None, poll_s: float = 0.01) -> None:
    """Wait until ``src`` is ready (a .mib file's first frame header, the folder, a stream's detector
    armed); after ``timeout_s`` s (None: no limit), or once ``cancel()`` is True, close it and raise
    TimeoutError."""
    t0 = time.perf_counter()
    try:
        while not src.ready():
            if (cancel is not None and cancel()) or (timeout_s is not None and time.perf_counter() - t0 > timeout_s):
                within = "" if timeout_s is None else f" within {timeout_s:g} s"
                if isinstance(src, StreamSource) and not src._connected.is_set():
                    raise TimeoutError(f"{src.path}: nothing listened at {src.host}:{src.port} when watch started, "
                                       f"and no acquisition header arrived{within}: check HOST:PORT (the "
                                       "detector's data port) and that the detector's software is running")
                if isinstance(src, StreamSource):
                    shared = f"; {src.shared_stream_hint}" if src.shared_stream_hint else ""
                    raise TimeoutError(f"{src.path}: the detector was not armed{within} (no acquisition header "
                                       "arrived): arm the acquisition in the detector's software after starting "
                                       f"watch, check HOST:PORT, or give a longer --timeout{shared}")
                raise TimeoutError(f"{getattr(src, 'path', src)}: no frame arrived{within}")
            time.sleep(poll_s)
    except BaseException:
        if hasattr(src, "close"):
            src.close()
        raise


# ---- the engine --------------------------------------------------------------------------------------
@dataclass
class LiveResult:
    """How a live run ended: status ("complete", "incomplete", "stopped", "timeout"), the state,
    files written, the plan used, seconds from the first frame seen to the end, the counters of a
    detector stream (frames received, dropped...), the reduced file written (or left partial) and
    warnings (the ice ring of the frames seen says the camera length is off: as a batch
    prediction's)."""

    status: str
    state: LiveClassMap
    files: dict
    plan: dict
    seconds: float
    source_stats: dict = field(default_factory=dict)
    reduced: dict | None = None
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        s = self.state
        d = {"status": self.status, "frames": s.n_done, "positions": s.n_positions,
             "kept": int(s.keep().sum()), "kept_classes": [s.class_names.get(i, str(i)) for i in s.keep_ids],
             "latency": s.latency_stats(), "seconds": round(self.seconds, 3), "files": self.files,
             "plan": _plain(self.plan)}
        if self.source_stats:
            d["stream"] = dict(self.source_stats)
        if self.reduced is not None:
            d["reduced"] = dict(self.reduced)
        if self.warnings:
            d["warnings"] = list(self.warnings)
        return d


def output_name(src, name: str | None = None) -> str:
    """The stem of a run's output files: ``name``, else the source's (a stream's ``merlin`` /
    ``dectris``, a file's or folder's name)."""
    return name or getattr(src, "name", None) or Path(getattr(src, "path", "live")).stem


def output_paths(out_dir, name: str) -> dict:
    out_dir = Path(out_dir)
    return {"class_map": out_dir / f"{name}_live_classes.npy",
            "probabilities": out_dir / f"{name}_live_probabilities.npy",
            "keep": out_dir / f"{name}_keep.json", "keep_list": out_dir / f"{name}_keep.csv"}


def _classified_nothing(paths: dict) -> bool:
    """Whether the outputs at ``paths`` are only the status file of a run that classified no frame
    (it failed, or was stopped, before the first one): nothing a retry with the same outputs would
    lose, so it needs no --force."""
    import json

    if any(p.exists() for key, p in paths.items() if key != "keep"):
        return False
    try:
        status = json.loads(paths["keep"].read_text())
    except (OSError, ValueError):
        return False
    return isinstance(status, dict) and status.get("frames_done") == 0 and status.get("status") != "complete"


def write_outputs(state: LiveClassMap, paths: dict, extra: dict | None = None, scan_step_nm=None) -> None:
    """Write the class map, probabilities, the keep-list (the CSV of ``sedclassify predict`` and
    the napari export) and the run's status with its kept positions (JSON) atomically, replacing
    earlier versions."""
    from .reduce import write_keep_list

    snap = state.snapshot()
    write_npy(paths["class_map"], snap["class_map"])
    write_npy(paths["probabilities"], snap["probabilities"])
    with np.errstate(invalid="ignore"):
        confidence = np.nan_to_num(np.nanmax(snap["probabilities"], axis=-1, initial=0.0), nan=0.0)
    write_keep_list(paths["keep_list"], snap["class_map"], confidence, state.keep_ids, state.class_names,
                    scan_step_nm)
    keep = {"scan_shape": list(state.scan_shape), "status": snap["status"], "message": snap["message"],
            "frames_done": int(snap["done"].sum()), "positions": state.n_positions,
            "kept_classes": {str(i): state.class_names.get(i, str(i)) for i in state.keep_ids},
            "kept_positions": np.argwhere(snap["keep"]).tolist(),
            "class_ids_of_probabilities": state.class_ids, "latency": snap["latency"], **(extra or {})}
    write_json(paths["keep"], keep)


def _wait_ready_said(src, timeout_s, stopped, poll_s, paths, class_names, keep_ids) -> None:
    """:func:`wait_ready`, with ``<name>_keep.json`` (``paths``; None: nothing written) saying
    ``waiting`` meanwhile, and how the wait ended when the source never became ready."""
    def status(value, message):
        write_json(paths["keep"], {"scan_shape": None, "status": value, "message": message, "frames_done": 0,
                                   "positions": None, "kept_classes": {str(i): class_names.get(i, str(i))
                                                                       for i in keep_ids},
                                   "kept_positions": []})

    if paths is None:
        return wait_ready(src, timeout_s, stopped, poll_s)
    where = getattr(src, "path", "the live source")
    status("waiting", f"waiting for the detector to be armed at {where}" if isinstance(src, StreamSource)
           else f"waiting for the first frames of {where}")
    try:
        wait_ready(src, timeout_s, stopped, poll_s)
    except KeyboardInterrupt:
        status("stopped", "interrupted (Ctrl-C) before the first frames")
        raise
    except Exception as exc:
        if stopped():
            status("stopped", "stopped before the first frames")
        else:
            status("error", str(exc))
        raise


def _frames_between(batches, a: int, b: int) -> np.ndarray:
    """Frames a..b (positions in arrival order) of the waiting ``batches``, copied once."""
    parts, start = [], 0
    for batch in batches:
        n = len(batch.index)
        lo, hi = max(a - start, 0), min(b - start, n)
        if lo < hi:
            parts.append(batch.frames[lo:hi])
        start += n
    return np.concatenate(parts) if parts else batches[0].frames[:0]


def watch(model, source, *, out_dir=None, name: str | None = None, scan_shape=None, keep=("amorphous_ice",),
          flatfield=None, geometry: Geometry | None = None, metadata: dict | None = None,
          calibration_frames: int | None = None, max_chunk: int = 32, threads: int | None = None,
          poll_s: float = 0.002, timeout_s: float | None = 10.0, write_every_s: float = 1.0, force: bool = False,
          state: LiveClassMap | None = None, cancel: Callable | None = None, reduce_to=None,
          compression: str = "bslz4", on_update: Callable | None = None,
          ready_timeout_s: float | None = None) -> LiveResult:
    """Classify the frames of ``source`` (a path for :func:`open_source`, or a source) as they arrive.

    model: SedModel or model file. keep: classes whose positions go into the keep-list.
    geometry: calibration of the live frames (default: what the source says, as the batch reader
    would). metadata: scan metadata for the plan (e.g. ``edge_pixel_width``). calibration_frames:
    frames that set the plan (default: the recipe's bad_pixel_sample, at most the scan).
    max_chunk: most frames in one chunk of feature extraction; threads: how many chunks are
    prepared at once (default: one per core); the frames waiting (up to 4 chunks per thread) then
    go through the model in one call. timeout_s: stop when no new frame arrived for this long
    (None: wait forever). ready_timeout_s: how long to wait for the source to be ready (a file's
    first frame, a stream's detector armed; default: timeout_s; math.inf: until ready or
    cancelled). out_dir: where the class map and keep-list go (atomically, every write_every_s
    and at the end; existing ones only with ``force``). state: a LiveClassMap to fill (a widget
    may hold it); cancel() -> True ends the run (status "stopped"). reduce_to: an HDF5 file that
    receives the frames of the ``keep`` classes as they are classified (:class:`~napari_sedclassify.pipeline.reduce.StreamingReducer`: built at
    ``<stem>.partial.h5``, committed with the outputs, renamed to ``reduce_to`` when the run is
    complete; compression "bslz4" or "none"). A source with ``finished`` (a detector stream) ends
    the run when its acquisition is over ("incomplete" when positions were never received); a
    source with ``close()`` is closed at the end. Returns a LiveResult; Ctrl-C ends the run the
    same way (outputs written) and re-raises. on_update(state): subscribed to the state (see
    :meth:`LiveClassMap.subscribe`) once the source is ready. Before waiting for the source, the
    model is checked against ``geometry`` (:func:`check_model_before_frames`) and ``out_dir`` is
    locked for ``name`` (:func:`lock_outputs`: a second run writing the same files is refused)
    until the run ends. ``<name>_keep.json`` says ``waiting``
    from the start until the source is ready (``error``, or ``stopped``, with the message when the
    wait ends without it).
    """
    from .predict import as_model
    from .reduce import check_live_target, class_ids as ids_of
    from .scans import is_path

    model_arg = model
    model = as_model(model)
    src = open_source(source, scan_shape) if isinstance(source, (str, os.PathLike)) else source
    name = output_name(src, name)
    keep_ids = ids_of(keep, model.classes) if keep else []
    paths = output_paths(out_dir, name) if out_dir is not None else None
    with _checked_and_locked(model, src, geometry, out_dir, name, metadata):  # before the wait, not once the detector is armed
        for p in (paths or {}).values():
            check_target(p, force or _classified_nothing(paths))
        if reduce_to is not None:
            if not keep_ids:
                raise ValueError("reduction on the fly keeps the frames of the --keep classes: give at least one")
            check_live_target(reduce_to, compression, force)
        stopped = cancel if cancel is not None else (lambda: False)
        wait_start = time.perf_counter()
        _wait_ready_said(src, timeout_s if ready_timeout_s is None else ready_timeout_s, stopped, poll_s, paths,
                         model.classes.names, keep_ids)
        sy, sx = src.scan_shape
        if state is None:
            state = LiveClassMap((sy, sx), model.classes.ids, keep_ids, model.classes.names)
        elif state.scan_shape != (sy, sx):
            raise ValueError(f"live state is {state.scan_shape}, the scan is {(sy, sx)}")
        if on_update is not None:
            state.subscribe(on_update)
        n_total = sy * sx
        want = calibration_frames or (model.preprocess or {}).get("bad_pixel_sample", 48)
        want = max(1, min(int(want), n_total))
        pending: list[FrameBatch] = []
        classifier = reducer = t_first = None
        warnings: list[str] = []
        ring_checked = False
        where = str(getattr(src, "path", None) or name or "the live scan")
        last_frame = time.perf_counter()
        last_write = 0.0
        status = "running"
        state.set_status("calibrating")
        shape_warning = src.scan_shape_warning() if hasattr(src, "scan_shape_warning") else None
        if shape_warning:  # said at once: the acquisition can still be stopped
            state.warn(shape_warning)
            warnings.append(shape_warning)

        from ..processing.cores import usable_cores

        threads = max(1, int(threads or usable_cores()))
        # frames taken at once: when classification is behind, larger batches pay the model's fixed
        # cost per call less often; when it keeps up, batches hold what arrived since the last one
        max_poll = max_chunk * threads * 4

        from ..models.persistence import camera_length_warning
        from ..processing import NoBeamInSample, calibration_windows, no_beam_message

        windows = None  # the sample, and the windows after it a batch run tries (once a frame's size is known)
        tried = 0  # windows that showed no beam
        counted = False  # whether any frame of those windows held a count (all zeros: nothing recorded)

        def calibrate(final: bool = False):
            """The classifier, its plan set by the first calibration window whose frames show the beam
            (the first ``want`` frames, else the next ``want``, ...: as a batch run chooses), once its
            frames are here (``final``: the frames that came, the acquisition having ended); None while
            waiting for more frames."""
            nonlocal tried, windows, counted
            have = sum(len(b.index) for b in pending)
            if windows is None:
                windows = calibration_windows(n_total, want, pending[0].frames[0].nbytes)
            while tried < len(windows) and (have >= windows[tried][1] or final):
                a, b = windows[tried]
                frames = _frames_between(pending, a, min(b, have))
                if len(frames) == 0 and tried:
                    break
                try:
                    made = FrameClassifier.calibrate(model, frames, geometry or src.geometry(), flatfield=flatfield,
                                                     metadata={**src.metadata, **(metadata or {})}, calibration_start=a)
                except NoBeamInSample:
                    counted = counted or bool(frames.any())
                    tried += 1
                    continue
                camera = camera_length_warning(model, made.geometry, where)
                if camera:  # said at once, as a batch prediction says it: the acquisition can still be stopped
                    state.warn(camera)
                    warnings.append(camera)
                return made
            if tried >= len(windows) or final:
                raise ValueError(no_beam_message(min(windows[-1][1], have), max(tried, 1), empty=not counted))
            return None

        def run_batches(batches):
            """Classify the waiting frames, in chunks split over the threads; then hand the kept ones to
            the reduction."""
            nonlocal reducer, ring_checked
            from .calibrate import Q_AXIS_FRAMES

            classifier.ring_stride = max(1, -(-n_total // Q_AXIS_FRAMES))  # evenly over the scan, as a batch run
            chunks = []
            for b in batches:
                step = max(1, min(max_chunk, -(-len(b.index) // threads)))
                chunks += [(b.index[s:s + step], b.frames[s:s + step]) for s in range(0, len(b.index), step)]
            ids, proba = classifier.classify_chunks(chunks, threads)
            seen = np.concatenate([np.broadcast_to(b.seen, (len(b.index),)) for b in batches])
            state.update(np.concatenate([b.index for b in batches]), ids, proba, time.perf_counter() - seen)
            if not ring_checked and state.n_done >= RING_CHECK_AFTER * n_total:
                # once, early: a wrong camera length is worth stopping for (the end checks all frames again)
                ring_checked = True
                ring = classifier.ring_warning(where)
                if ring:
                    state.warn(f"after {state.n_done} of {n_total} frames: {ring}")
            if reduce_to is None:
                return
            classes = state.class_map().reshape(-1)
            for b in batches:
                if reducer is None:
                    from .reduce import StreamingReducer

                    reducer = StreamingReducer(
                        reduce_to, scan_shape=(sy, sx), detector_shape=b.frames.shape[1:], dtype=b.frames.dtype,
                        geometry=classifier.geometry, class_table=model.classes, keep_ids=keep_ids,
                        class_ids=state.class_ids, compression=compression, force=force,
                        input_info={"source": str(getattr(src, "path", source)), "format": src.metadata.get("format")},
                        detector=detector_metadata({**src.metadata, **(metadata or {})}),
                        provenance={"class_map_from": "model", "model": str(model_arg) if is_path(model_arg) else model.name,
                                    "model_kind": model.kind, "flatfield": None if flatfield is None else str(flatfield),
                                    "class_ids_of_probabilities": state.class_ids})
                kept = np.isin(classes[b.index], keep_ids)
                if kept.any():
                    reducer.add(b.index[kept], b.frames[kept])

        def commit(final_status=None):
            """Write the outputs and commit the reduced file (``final_status``: finish it); returns the
            path of the reduced file a finished run left."""
            extra = {"plan": _plain(classifier.plan) if classifier else None,
                     **({"stream": src.stats()} if hasattr(src, "stats") else {}),
                     **({"warnings": warnings} if warnings else {})}
            if paths is not None:
                write_outputs(state, paths, extra, None if classifier is None else classifier.geometry.scan_step_nm)
            if reducer is None:
                return None
            snap = state.snapshot()
            report = {"status": final_status or "partial", "frames_done": int(snap["done"].sum()),
                      "latency": snap["latency"], **extra}
            arrays = (snap["class_map"], snap["done"], snap["probabilities"])
            if final_status is None:
                return reducer.commit(*arrays, report=report)
            return reducer.finish(*arrays, status=final_status, report=report)

        detector_checked = geometry is not None  # checked before the wait (_checked_and_locked)

        def check_detector(arrived: bool = False) -> None:
            """Refuse the model's preprocessing that the live frames' detector cannot hold (a crop or
            beam radius wider than it), as `sedclassify preprocess` does before any frame: once that
            detector is known (the source's header, else the first frames that ``arrived``), not
            when the calibration sample is complete."""
            nonlocal detector_checked
            if detector_checked or not (arrived or _states_detector(src)):
                return
            detector_checked = True
            _check_model_params(model, src.geometry(), where, {**src.metadata, **(metadata or {})})

        try:
            check_detector()
            while True:
                if stopped():
                    status = "stopped"
                    break
                batch = src.poll(max_poll)
                if batch is None:
                    if state.n_done == n_total:
                        status = "complete"
                        break
                    if getattr(src, "finished", False):
                        # a stream's acquisition ended with positions never received; before the
                        # calibration sample was complete too (the frames that came are classified
                        # below): the run waited for --timeout and said "no new frame"
                        status = "incomplete"
                        break
                    if timeout_s is not None and time.perf_counter() - last_frame > timeout_s:
                        status = "timeout"
                        break
                    time.sleep(poll_s)
                    continue
                last_frame = time.perf_counter()
                t_first = t_first or float(np.min(batch.seen))
                check_detector(arrived=True)
                if classifier is not None:
                    run_batches([batch])
                else:
                    pending.append(batch)
                    classifier = calibrate()
                    if classifier is None:
                        continue
                    state.set_status("running")
                    run_batches(pending)
                    state.mark_calibrated()
                    pending = []
                if (paths is not None or reducer is not None) and time.perf_counter() - last_write > write_every_s:
                    commit()
                    last_write = time.perf_counter()
            if classifier is None and pending:  # ended before enough frames: calibrate on what came
                classifier = calibrate(final=True)
                run_batches(pending)
                state.mark_calibrated()  # every frame waited for the calibration (no steady latency to report)
                if state.n_done == n_total:
                    status = "complete"
        except KeyboardInterrupt:
            status = "stopped"
            state.set_status(status, "interrupted (Ctrl-C)")
            commit("stopped")
            raise
        except BaseException as exc:
            state.set_status("error", str(exc))
            try:  # the outputs say how the run ended, with the frames classified until then
                commit("error")
            except Exception:  # the partial file keeps what its last commit wrote
                if reducer is not None:
                    reducer.close()
            raise
        finally:
            if hasattr(src, "close"):
                src.close()
        stats = src.stats() if hasattr(src, "stats") else {}
        messages = {"complete": "", "stopped": "stopped", "timeout": f"no new frame for {timeout_s} s",
                    "incomplete": f"the acquisition ended with {state.n_done} of {n_total} positions received"
                                  + (f" ({stats['frames_dropped']} frames dropped)" if stats.get("frames_dropped") else "")
                                  + (f"; the receiver said: {stats['stream_error']}" if stats.get("stream_error") else "")}
        state.set_status(status, messages[status])
        if classifier is not None:  # the ice ring of the frames seen: is the q axis the model read right?
            ring = classifier.ring_warning(where)  # if it is: are the amorphous-ice frames those with the ring?
            ring = ring or classifier.agreement_warning(state.class_map(), where)
            warnings += [ring] if ring else []
        left = commit(status)
        files = {k: str(v) for k, v in (paths or {}).items()}
        reduced = None
        if reducer is not None:
            reduced = {"path": str(left), "status": status, "kept_frames": reducer.n_committed}
            files["reduced"] = str(left)
        elif reduce_to is not None:  # no frame arrived: nothing to reduce
            reduced = {"path": None, "status": status, "kept_frames": 0}
        return LiveResult(status, state, files, classifier.plan if classifier is not None else {},
                          time.perf_counter() - (t_first or wait_start), stats, reduced, warnings)


def _plain(d: dict) -> dict:
    """The JSON-safe entries of a plan: strings, None and finite numbers."""
    d = {k: v.item() if isinstance(v, (np.integer, np.floating)) else v for k, v in d.items()}
    return {k: v for k, v in d.items()
            if v is None or isinstance(v, str) or (isinstance(v, (int, float)) and np.isfinite(v))}
