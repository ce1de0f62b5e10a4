"""Live mode: classify frames as they arrive, keep a running class map and keep-list.

Sources of frames (:func:`open_source`):

- a Merlin ``.mib`` file still being written (:class:`MibSource`): the file size is followed,
  only whole frames (header + pixels) are read, each frame header is checked; the scan shape
  comes from ``scan_shape`` or the ``.hdr`` written before the acquisition;
- a folder where frame files land (:class:`FolderSource`): ``.npy``, ``.tif``/``.tiff`` or
  ``.mib`` files with one or more frames each, taken in the natural order of their names (the
  order acquisition software numbers them); a file that cannot be read completely yet is
  retried at the next poll.

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

import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..geometry import Geometry
from ..io.atomic import check_target, write_json, write_npy

#: Statuses of a live run, in the order they happen ("incomplete": a detector stream ended with
#: positions never received).
STATUSES = ("waiting", "calibrating", "running", "complete", "incomplete", "stopped", "timeout", "error")


# ---- the running state ---------------------------------------------------------------------------
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

    @property
    def n_positions(self) -> int:
        return self.scan_shape[0] * self.scan_shape[1]

    @property
    def n_done(self) -> int:
        with self._lock:
            return int(self._done.sum())

    @property
    def complete(self) -> bool:
        return self.n_done == self.n_positions

    def update(self, index, class_ids, probabilities, latencies_s) -> None:
        """Record classes (n,) and probabilities (n, k) of the frames at flat ``index`` (n,)."""
        index = np.asarray(index, np.int64).ravel()
        with self._lock:
            flat = self._class_map.reshape(-1)
            flat[index] = class_ids
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

    def class_map(self) -> np.ndarray:
        with self._lock:
            return self._class_map.copy()

    def probabilities(self) -> np.ndarray:
        with self._lock:
            return self._proba.copy()

    def done(self) -> np.ndarray:
        with self._lock:
            return self._done.copy()

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
                    "status": self.status, "message": self.message, "latency": self.latency_stats()}


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

    @classmethod
    def calibrate(cls, model, frames, geometry: Geometry, *, flatfield=None, metadata: dict | None = None):
        """Build the model's PreprocessPlan from ``frames`` (the first frames of the scan), as a batch
        run builds it from the same calibration sample: saturation level, extra bad pixels, beam
        radius, radii."""
        from ..processing import FlatField, FrameRunner, PreprocessPlan, load_flatfield
        from .predict import params_for_model

        frames = np.asarray(frames)
        model.check_geometry(geometry, "the live frames")
        params = replace(params_for_model(model, geometry), centring="per_frame", workers=1, chunk_frames=None)
        ff = None
        if flatfield is not None and params.use_flatfield:
            ff = flatfield if isinstance(flatfield, FlatField) else load_flatfield(flatfield)
        # the same plan a batch run builds from the same first frames (its calibration sample)
        plan_ = PreprocessPlan.build(params, geometry, metadata, frames[:params.bad_pixel_sample], ff)
        procs = plan_.processors(virtual=False)
        runner = FrameRunner(procs, plan_.corrections(ff), plan_.centre_finder())
        r = plan_.resolved
        plan = {"calibration_frames": plan_.calibration_frames, "masked_pixels": int(plan_.corrections(ff).mask.sum()),
                "model_centring": (model.preprocess or {}).get("centring", "per_frame"), **r}
        return cls(model, runner, geometry, procs[0].radii_px, r["crop_half_px"], plan)

    def classify(self, frames, index=None):
        return self.predict(self.features(frames, index))

    def features(self, frames, index=None) -> dict:
        """The model's features of raw frames (n, ky, kx): {"ria": (n, nb), "crop": ... or None}.
        The frame kernels release the GIL: chunks of frames can be prepared in several threads."""
        frames = np.asarray(frames)
        if frames.ndim == 2:
            frames = frames[None]
        values = self.runner.run_chunk(frames, index).values
        return {"ria": values["ria"], "crop": values.get("crop")}

    def predict(self, features):
        """Class ids (n,) and probabilities (n, k) from :meth:`features` output, or from a list of
        them taken together (one call of the model for all: its fixed cost per call is paid once)."""
        from ..models.inference import predict_scan as predict_features
        from ..models.training import ScanFeatures

        if isinstance(features, (list, tuple)):
            features = {"ria": np.concatenate([f["ria"] for f in features]),
                        "crop": None if features[0]["crop"] is None else np.concatenate([f["crop"] for f in features])}
        ria, crops = features["ria"], features["crop"]
        n = ria.shape[0]
        feats = ScanFeatures(name="live", geometry=self.geometry, missing=np.zeros((1, n), bool),
                             ria=ria[None], radii_px=self.radii_px,
                             crops=None if crops is None else crops[None], crop_radius_px=self.crop_radius_px)
        pred = predict_features(self.model, feats)
        return pred.class_map[0], pred.probabilities[0]


# ---- sources of frames -------------------------------------------------------------------------------
@dataclass
class FrameBatch:
    """Frames that just became available: flat scan indices (n,), frames (n, ky, kx), and the
    ``time.perf_counter()`` at which they were seen complete (one value, or one per frame)."""

    index: np.ndarray
    frames: np.ndarray
    seen: float | np.ndarray


class MibSource:
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
                raise ValueError(f"{self.path}: scan shape unknown (no .hdr giving it yet): give --scan-shape SY SX")
            self._scan_shape = tuple(found[0])
        return self._scan_shape

    def _read_header(self) -> bool:
        from ..io.mib import FrameHeader

        try:
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            return False
        if size < 384:
            return False
        with open(self.path, "rb") as f:
            head = f.read(2048)
        header = FrameHeader(head[:384], self.path)
        if header.header_bytes > len(head):
            return False
        if header.header_bytes > 384:
            header = FrameHeader(head[:header.header_bytes], self.path)
        self.header = header
        self.metadata["counter_depth"] = header.counter_depth
        return True

    def geometry(self) -> Geometry:
        from ..io.mib import PIXEL_SIZE_UM

        return Geometry(detector_shape=self.header.frame_shape, pixel_size_um=PIXEL_SIZE_UM).marked("file", "pixel_size_um")

    def ready(self) -> bool:
        return self.header is not None or self._read_header()

    def poll(self, max_frames: int = 64) -> FrameBatch | None:
        from ..errors import ScanFormatError
        from ..io.mib import MibFrames

        if not self.ready():
            return None
        seen = time.perf_counter()
        step = self.header.frame_bytes
        n_total = self.scan_shape[0] * self.scan_shape[1]
        available = min(os.path.getsize(self.path) // step, n_total)
        if available <= self.done:
            return None
        stop = min(available, self.done + max_frames)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for k in range(self.done, stop):
                if os.pread(fd, 4, k * step) != b"MQ1,":
                    raise ScanFormatError(f"{self.path}: corrupted frame header: frame {k} does not start with 'MQ1,'")
        finally:
            os.close(fd)
        frames = np.array(MibFrames(self.path, self.header, stop).read(self.done, stop))
        batch = FrameBatch(np.arange(self.done, stop), frames, seen)
        self.done = stop
        return batch


_NUMBER = re.compile(r"(\d+)")
_FRAME_SUFFIXES = (".npy", ".tif", ".tiff", ".mib")


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in _NUMBER.split(name)]


class FolderSource:
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

    def poll(self, max_frames: int = 64) -> FrameBatch | None:
        if not self.ready():
            return None
        seen = time.perf_counter()
        names = sorted((e.name for e in os.scandir(self.path)
                        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(_FRAME_SUFFIXES)
                        and e.name not in self.taken), key=_natural_key)
        got = []
        n_total = self.scan_shape[0] * self.scan_shape[1]
        for name in names:
            if self.done + sum(len(g) for g in got) >= n_total or sum(len(g) for g in got) >= max_frames:
                break
            try:
                frames = self._read(self.path / name)
            except (ValueError, OSError, EOFError):  # still being written: retry at the next poll
                break
            self.taken.add(name)
            got.append(frames)
        if not got:
            return None
        frames = np.concatenate(got)[: n_total - self.done]
        self._detector = tuple(frames.shape[1:])
        batch = FrameBatch(np.arange(self.done, self.done + len(frames)), frames, seen)
        self.done += len(frames)
        return batch


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


def _qd_sequences(blob: bytes, n: int):
    """Frame numbers (1-based, from each frame's header) of a libertem_qd_mpx frame stack, read
    from its serialized handle (bincode: slot size and index, then each frame's metadata: MPX
    length, frame number, ...); None when the bytes are not laid out as expected (another version
    of the receiver), and frames are then numbered in order of arrival."""
    import struct

    try:
        off = 16
        (count,) = struct.unpack_from("<Q", blob, off)
        off += 8
        if count != n:
            return None
        seqs = np.empty(n, np.int64)
        for j in range(n):
            _, seqs[j] = struct.unpack_from("<QI", blob, off)
            off += 12 + 2 + 1 + 16 + 4 + 4 + 1  # data offset, chips, sizes, dtype, layout, chip select
            (length,) = struct.unpack_from("<Q", blob, off)
            off += 8 + length + 8 + 1 + 4 + 4  # timestamp, shutter time, counter, colour mode, gain
            tag = blob[off]
            off += 1
            if tag == 1:  # MQ1A: extended timestamp, shutter ns, counter depth
                (length,) = struct.unpack_from("<Q", blob, off)
                off += 8 + length + 8 + 1
            elif tag != 0:
                return None
        (offsets,) = struct.unpack_from("<Q", blob, off)
        if offsets != n or off + 8 + 8 * n + 8 != len(blob):
            return None
        return seqs
    except (struct.error, IndexError):
        return None


class StreamSource:
    """What the detector-stream sources share: a receiver thread (``_receive``, in the subclass)
    puts decoded frames in a queue bounded by ``max_buffered_frames``; ``ready()`` starts it on
    its first call and is True once the detector is armed; ``poll()`` hands over the frames
    waiting; ``finished`` is True when the acquisition ended and every frame was handed over;
    ``stats()`` gives the counters; ``close()`` stops the receiver."""

    kind = "stream"

    def _init_stream(self, max_buffered_frames: int) -> None:
        self.max_buffered_frames = int(max_buffered_frames)
        self.detector_shape = None
        self.dtype = None
        self.done = 0
        self.header = None
        self._cond = threading.Condition()
        self._queue: list[FrameBatch] = []
        self._buffered = 0
        self._stop = threading.Event()
        self._armed = threading.Event()
        self._ended = threading.Event()
        self._thread = None
        self.error: BaseException | None = None
        self._stats = {"frames_announced": None, "frames_received": 0, "frames_dropped": 0, "frames_outside_scan": 0,
                       "frame_stacks": 0, "max_buffered_frames": 0, "first_frame_at": None, "last_frame_at": None,
                       "frame_numbers_from": None}

    def _start(self):
        self._thread = threading.Thread(target=self._receive, daemon=True, name=f"{self.kind}-receiver")
        self._thread.start()

    def _wait_for_room(self) -> None:
        """Block the receiver while the classifier is behind (frames stay in the receiver's shared
        memory, then the detector's stream is held back)."""
        with self._cond:
            while self._buffered >= self.max_buffered_frames and not self._stop.is_set():
                self._cond.wait(0.05)

    def _deliver(self, index, frames, seen: float, received: int, gaps: int = 0) -> None:
        """Queue the frames of one stack at flat scan ``index`` (frames outside the scan are
        counted and left out) and update the counters."""
        inside = (index >= 0) & (index < self._n_positions())
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

    def _numbered(self, numbers, expected: int, n: int):
        """(frame numbers, gaps, next expected number) of a stack of n frames: numbers from the
        frames' headers, or in arrival order when they carry none (then noted in the stats)."""
        if self._stats["frame_numbers_from"] is None:
            self._stats["frame_numbers_from"] = "frame headers" if numbers is not None else "arrival order"
        if numbers is None:
            numbers = np.arange(expected, expected + n)
        gaps = int(numbers[0] - expected) + int(np.clip(np.diff(numbers) - 1, 0, None).sum())
        return numbers, gaps, int(numbers[-1]) + 1

    def _count_unsent(self, received_up_to: int) -> None:
        """At the end of a stream not stopped by us: frames announced but never received are lost."""
        if not self._stop.is_set():
            with self._cond:
                announced = self._stats["frames_announced"] or 0
                self._stats["frames_dropped"] += max(0, announced - received_up_to)

    def _end_receiving(self, *objects, handle_dir=None) -> None:
        """Close the receiver's objects, remove its shared-memory folder and say the stream ended."""
        import shutil

        for obj in objects:
            if obj is not None:
                try:
                    obj.close()
                except Exception:
                    pass
        if handle_dir is not None:
            shutil.rmtree(handle_dir, ignore_errors=True)
        self._ended.set()
        with self._cond:
            self._cond.notify_all()


    def ready(self) -> bool:
        if self._thread is None:
            self._start()
        if self.error is not None and not self._armed.is_set():
            raise self.error
        return self._armed.is_set()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop receiving and release the connection (waits up to ``timeout_s`` for the receiver:
        a stack read in progress ends when data or the end of the acquisition arrives)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def finished(self) -> bool:
        """True when no more frames will come (the acquisition ended or the receiver stopped) and
        every received frame was handed over."""
        with self._cond:
            return self._ended.is_set() and not self._queue

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

    def _n_positions(self) -> int:
        try:
            sy, sx = self.scan_shape
        except ValueError:
            return np.iinfo(np.int64).max
        return sy * sx

    def poll(self, max_frames: int = 64) -> FrameBatch | None:
        if not self.ready():
            return None
        with self._cond:
            if not self._queue:
                if self.error is not None:
                    raise self.error
                return None
            got, n = [], 0
            while self._queue and n < max_frames:
                b = self._queue[0]
                take = min(len(b.index), max_frames - n)
                if take == len(b.index):
                    got.append(self._queue.pop(0))
                else:
                    got.append(FrameBatch(b.index[:take], b.frames[:take], b.seen[:take]))
                    self._queue[0] = FrameBatch(b.index[take:], b.frames[take:], b.seen[take:])
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
    ``libertem_qd_mpx.QdConnection`` (the ``live`` extra) in passive mode.

    ``ready()`` connects on its first call and starts a receiver thread that waits for the
    detector to be armed (by the acquisition software; nothing is triggered from here), then
    takes frame stacks out of the receiver's shared memory, decodes them into frames (rows flipped,
    as the project's .mib reader shows them) and releases them; ``poll()`` hands over the frames
    waiting. Each frame is placed at scan position ``frame number - 1`` (the number in its Merlin
    header): a frame lost on the way leaves its position unclassified and is counted in
    ``stats()["frames_dropped"]``. At most ``max_buffered_frames`` decoded frames wait for the
    classifier; beyond that, stacks stay in shared memory (``num_slots`` stacks of up to
    ``frame_stack_size`` frames) and then the TCP stream itself is held back, as a slow reader of a
    real detector would be (Merlin then drops frames, which shows as ``frames_dropped``).

    scan_shape: (sy, sx); default the acquisition header's ScanX/ScanY, else its frames per trigger
    as the row length. control_port: the Merlin control port; when given, the counter depth and
    frame size are read from it (metadata). name: stem of the output files.
    """

    kind = "merlin"

    def __init__(self, host: str = "127.0.0.1", port: int = 6342, scan_shape=None, *, control_port=None,
                 name: str = "merlin", frame_stack_size: int = 16, num_slots: int = 256,
                 max_buffered_frames: int = 1024, bytes_per_frame: int = 256 * 256 * 2):
        from ..optional import require_live

        require_live("merlin")
        self.host, self.port = str(host), int(port)
        self.control_port = None if control_port is None else int(control_port)
        self.name = name
        self.path = f"merlin://{self.host}:{self.port}"
        self._scan_shape = None if scan_shape is None else tuple(int(s) for s in scan_shape)
        self.frame_stack_size = int(frame_stack_size)
        self.num_slots = int(num_slots)
        self.bytes_per_frame = int(bytes_per_frame)
        self.metadata = {"format": "Merlin TCP stream (live)", "stream": f"{self.host}:{self.port}"}
        self._init_stream(max_buffered_frames)

    # -- lifecycle
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

    # -- what the acquisition header says
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

    def geometry(self) -> Geometry:
        from ..io.mib import PIXEL_SIZE_UM

        return Geometry(detector_shape=self.detector_shape, pixel_size_um=PIXEL_SIZE_UM).marked("file", "pixel_size_um")

    def _receive(self):
        import tempfile

        import libertem_qd_mpx as qd

        handle_dir = tempfile.mkdtemp(prefix="sedclassify-qd-")
        conn = cam = None
        try:
            conn = qd.QdConnection(data_host=self.host, data_port=self.port, frame_stack_size=self.frame_stack_size,
                                   shm_handle_path=os.path.join(handle_dir, "qd-shm"), drain=False,
                                   num_slots=self.num_slots, bytes_per_frame=self.bytes_per_frame,
                                   recovery_strategy="immediate_reconnect")
            conn.start_passive()
            acq = None
            while acq is None and not self._stop.is_set():
                acq = conn.wait_for_arm(timeout=0.2)
            if acq is None:
                return
            total = int(acq.frames_in_acquisition())
            self.header = {"frames_in_acquisition": total, "frames_per_trigger": int(acq.frames_per_trigger()),
                           "nav_shape": acq.nav_shape(), "detector_shape": tuple(acq.detector_shape())}
            self.detector_shape = tuple(int(s) for s in acq.detector_shape())
            self._stats["frames_announced"] = total
            self.metadata["acquisition_header"] = {k: (list(v) if isinstance(v, tuple) else v)
                                                   for k, v in self.header.items()}
            cam = qd.CamClient(conn.get_socket_path())
            self._armed.set()
            expected = 1
            while not self._stop.is_set():
                self._wait_for_room()  # the classifier is behind: leave the stacks in shared memory
                if self._stop.is_set():
                    break
                stack = conn.get_next_stack(max_size=self.frame_stack_size)
                if stack is None:  # the acquisition is over
                    break
                seen = time.perf_counter()
                n = len(stack)
                if self.dtype is None:
                    self.dtype = np.dtype(stack.get_dtype_string())
                    self.detector_shape = tuple(int(s) for s in stack.get_shape())
                    self.metadata.setdefault("counter_depth", {1: 6, 2: 12, 4: 24}.get(self.dtype.itemsize))
                frames = np.empty((n,) + self.detector_shape, self.dtype)
                cam.decode_range_into_buffer(stack, frames, 0, n)
                seqs = _qd_sequences(stack.serialize(), n)
                cam.done(stack)
                seqs, gaps, expected = self._numbered(seqs, expected, n)
                self._deliver(seqs - 1, frames[:, ::-1], seen, n, gaps)
            self._count_unsent(expected - 1)  # Merlin numbers frames from 1
        except BaseException as exc:  # reported by ready() / poll()
            self.error = exc
        finally:
            self._end_receiving(cam, conn, handle_dir=handle_dir)


def _dectris_frame_numbers(blob: bytes, n: int):
    """Frame numbers (from 0, each frame's ``dimage-1.0`` part) of a libertem_dectris frame stack,
    read from its serialized handle (bincode: slot size and index, then each frame's metadata:
    dimage (htype, series, frame, hash), dimage_d (htype, shape, type, encoding), dconfig (htype,
    start, stop, real time), data length; then the offsets and the frame size); None when the bytes
    are not laid out as expected (another version of the receiver), and frames are then numbered
    in order of arrival."""
    import struct

    def string(off):
        (length,) = struct.unpack_from("<Q", blob, off)
        if length > 256:
            raise ValueError("not a header string")
        return off + 8 + length

    try:
        off = 16
        (count,) = struct.unpack_from("<Q", blob, off)
        off += 8
        if count != n:
            return None
        numbers = np.empty(n, np.int64)
        for j in range(n):
            off = string(off) + 8  # htype, series
            (numbers[j],) = struct.unpack_from("<Q", blob, off)
            off = string(off + 8)  # hash
            off = string(off) + 16 + 4  # dimage_d htype, shape, pixel type
            off = string(off)  # encoding
            off = string(off) + 24 + 8  # dconfig htype, start/stop/real time; data length
        (offsets,) = struct.unpack_from("<Q", blob, off)
        if offsets != n or off + 8 + 8 * n + 8 != len(blob):
            return None
        return numbers
    except (struct.error, ValueError):
        return None


def _dectris_config(config) -> dict:
    """The detector configuration libertem_dectris parsed from the series header (its repr:
    ``DetectorConfig { ntrigger: 256, nimages: 1, trigger_mode: EXTE, x_pixels_in_detector: ...}``)."""
    out = {}
    for key, value in re.findall(r"(\w+): (\w+)", repr(config)):
        out[key] = int(value) if value.isdigit() else value.lower()
    return out


class DectrisStreamSource(StreamSource):
    """Frames from a DECTRIS detector's zmq stream (ARINA, QUADRO, EIGER2: the DCU's stream port,
    9999 by default, or LiberTEM-live's simulator ``libertem-live-dectris-sim``), received by
    ``libertem_dectris.DectrisConnection`` (the ``live`` extra) in passive mode.

    ``ready()`` connects on its first call and starts a receiver thread that waits for a series
    header (``dheader-1.0``: the detector was armed by the acquisition software; nothing is armed or
    triggered from here), then takes frame stacks out of the receiver's shared memory, decodes them
    (Bitshuffle-LZ4 or LZ4, 8/16/32 bit, as the receiver does) and releases them. Each frame goes to
    scan position ``frame`` (the number in its ``dimage-1.0`` part, from 0). LiberTEM's receiver
    stops a series whose frame numbers skip (a frame lost on the way): the frames announced by the
    header (``ntrigger`` x ``nimages``) that never arrived are counted in
    ``stats()["frames_dropped"]`` and the receiver's message is kept in ``stats()["stream_error"]``;
    the run then ends ``incomplete``. Memory is bounded as for :class:`MerlinStreamSource`
    (``max_buffered_frames`` decoded frames, then ``num_slots`` stacks in shared memory, then the
    zmq stream is held back).

    scan_shape: (sy, sx); needed (a DECTRIS series header gives the number of frames, not the scan's
    rows and columns). name: stem of the output files.
    """

    kind = "dectris"

    def __init__(self, host: str = "127.0.0.1", port: int = 9999, scan_shape=None, *, name: str = "dectris",
                 frame_stack_size: int = 16, num_slots: int = 256, max_buffered_frames: int = 1024,
                 bytes_per_frame: int = 256 * 256 * 2):
        from ..optional import require_live

        require_live("dectris")
        self.host, self.port = str(host), int(port)
        self.name = name
        self.path = f"dectris://{self.host}:{self.port}"
        if scan_shape is None:
            raise ValueError(f"{self.path}: a DECTRIS series header does not give the scan shape: "
                             "give --scan-shape SY SX")
        self._scan_shape = tuple(int(s) for s in scan_shape)
        self.frame_stack_size = int(frame_stack_size)
        self.num_slots = int(num_slots)
        self.bytes_per_frame = int(bytes_per_frame)
        self.metadata = {"format": "DECTRIS zmq stream (live)", "stream": f"{self.host}:{self.port}"}
        self._init_stream(max_buffered_frames)

    @property
    def scan_shape(self):
        return self._scan_shape

    def geometry(self) -> Geometry:
        return Geometry(detector_shape=self.detector_shape)

    def _start(self):
        import socket

        try:  # zmq connects lazily and silently: say at once when nothing listens there
            socket.create_connection((self.host, self.port), timeout=5.0).close()
        except OSError as exc:
            raise ConnectionError(f"cannot connect to the DECTRIS stream at {self.host}:{self.port} ({exc}): check the "
                                  "DCU's address and its zmq stream port (9999 by default) and that its stream "
                                  "interface is enabled (stream/api/.../config/mode = enabled)") from exc
        super()._start()

    def _receive(self):
        import tempfile

        import libertem_dectris as ld

        handle_dir = tempfile.mkdtemp(prefix="sedclassify-dectris-")
        conn = cam = None
        try:
            conn = ld.DectrisConnection(uri=f"tcp://{self.host}:{self.port}", frame_stack_size=self.frame_stack_size,
                                        handle_path=os.path.join(handle_dir, "dectris-shm"),
                                        num_slots=self.num_slots, bytes_per_frame=self.bytes_per_frame)
            conn.start_passive()
            armed = None
            while armed is None and not self._stop.is_set():
                armed = conn.wait_for_arm(timeout=0.2)
            if armed is None:
                return
            config, series = armed
            total = int(config.get_num_frames())
            cfg = _dectris_config(config)
            self.header = {"frames_in_acquisition": total, "series": int(series), **cfg}
            if cfg.get("y_pixels_in_detector") and cfg.get("x_pixels_in_detector"):
                self.detector_shape = (cfg["y_pixels_in_detector"], cfg["x_pixels_in_detector"])
            if cfg.get("bit_depth_image"):
                self.metadata["counter_depth"] = cfg["bit_depth_image"]
            self._stats["frames_announced"] = total
            self.metadata["acquisition_header"] = dict(self.header)
            cam = ld.CamClient(conn.get_socket_path())
            self._armed.set()
            expected = 0
            while not self._stop.is_set():
                self._wait_for_room()
                if self._stop.is_set():
                    break
                try:
                    stack = conn.get_next_stack(max_size=self.frame_stack_size)
                except Exception as exc:  # the receiver gave up on this series (e.g. a frame number skipped)
                    with self._cond:
                        self._stats["stream_error"] = str(exc)
                    break
                if stack is None:  # the series is over
                    break
                seen = time.perf_counter()
                n = len(stack)
                if self.dtype is None:
                    self.dtype = np.dtype(stack.get_dtype_string())
                    self.detector_shape = tuple(int(s) for s in reversed(stack.get_shape()))  # DECTRIS: [x, y]
                    self.metadata.setdefault("counter_depth", 8 * self.dtype.itemsize)
                frames = np.empty((n,) + self.detector_shape, self.dtype)
                cam.decode_range_into_buffer(stack, frames, 0, n)
                numbers = _dectris_frame_numbers(stack.serialize(), n)
                cam.done(stack)
                numbers, gaps, expected = self._numbered(numbers, expected, n)
                if frames.dtype.byteorder == ">":
                    frames = frames.astype(frames.dtype.newbyteorder("="))
                self._deliver(numbers, frames, seen, n, gaps)
            self._count_unsent(expected)  # DECTRIS numbers frames from 0
        except BaseException as exc:  # reported by ready() / poll()
            self.error = exc
        finally:
            self._end_receiving(cam, conn, handle_dir=handle_dir)


def open_source(path, scan_shape=None):
    """A frame source for ``path``: ``merlin://HOST:PORT`` (a Merlin data stream, the ``live``
    extra), a growing .mib file (``.mib``/``.hdr``), else a folder of frame files (which may not
    exist yet)."""
    if str(path).startswith("merlin://"):
        host, port = parse_host_port(str(path)[len("merlin://"):], 6342)
        return MerlinStreamSource(host, port, scan_shape)
    if str(path).startswith("dectris://"):
        host, port = parse_host_port(str(path)[len("dectris://"):], 9999)
        return DectrisStreamSource(host, port, scan_shape)
    path = Path(path)
    if path.suffix.lower() in (".mib", ".hdr"):
        return MibSource(path.with_suffix(".mib"), scan_shape)
    if path.is_dir() or not path.exists():  # a folder, possibly not created yet
        return FolderSource(path, scan_shape)
    raise ValueError(f"{path}: live input must be a folder of frame files or a Merlin .mib file")


# ---- the engine --------------------------------------------------------------------------------------
@dataclass
class LiveResult:
    """How a live run ended: status ("complete", "incomplete", "stopped", "timeout"), the state,
    files written, the plan used, seconds from the first frame seen to the end, the counters of a
    detector stream (frames received, dropped...) and the reduced file written (or left partial)."""

    status: str
    state: LiveClassMap
    files: dict
    plan: dict
    seconds: float
    source_stats: dict = field(default_factory=dict)
    reduced: dict | None = None

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
        return d


def output_paths(out_dir, name: str) -> dict:
    out_dir = Path(out_dir)
    return {"class_map": out_dir / f"{name}_live_classes.npy",
            "probabilities": out_dir / f"{name}_live_probabilities.npy",
            "keep": out_dir / f"{name}_keep.json", "keep_list": out_dir / f"{name}_keep.csv"}


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


def watch(model, source, *, out_dir=None, name: str | None = None, scan_shape=None, keep=("amorphous_ice",),
          flatfield=None, geometry: Geometry | None = None, metadata: dict | None = None,
          calibration_frames: int | None = None, max_chunk: int = 32, threads: int | None = None,
          poll_s: float = 0.002,
          timeout_s: float | None = 10.0, write_every_s: float = 1.0, force: bool = False,
          state: LiveClassMap | None = None, cancel: Callable | None = None, reduce_to=None,
          compression: str = "bslz4") -> LiveResult:
    """Classify the frames of ``source`` (a path for :func:`open_source`, or a source) as they arrive.

    model: SedModel or model file. keep: classes whose positions go into the keep-list.
    geometry: calibration of the live frames (default: what the source says, as the batch reader
    would). metadata: scan metadata for the plan (e.g. ``edge_pixel_width``). calibration_frames:
    frames that set the plan (default: the recipe's bad_pixel_sample, at most the scan).
    max_chunk: most frames in one chunk of feature extraction; threads: how many chunks are
    prepared at once (default: one per core); the frames waiting (up to 4 chunks per thread) then
    go through the model in one call. timeout_s: stop when no
    new frame arrived for this long (None: wait forever). out_dir: where the class map and
    keep-list go (atomically, every write_every_s and at the end; existing ones only with
    ``force``). state: a LiveClassMap to fill (a widget may hold it); cancel() -> True ends the run
    (status "stopped"). reduce_to: an HDF5 file that receives the frames of the ``keep`` classes as
    they are classified (:class:`~napari_sedclassify.pipeline.reduce.StreamingReducer`: built at
    ``<stem>.partial.h5``, committed with the outputs, renamed to ``reduce_to`` when the run is
    complete; compression "bslz4" or "none"). A source with ``finished`` (a detector stream) ends
    the run when its acquisition is over ("incomplete" when positions were never received); a
    source with ``close()`` is closed at the end. Returns a LiveResult; Ctrl-C ends the run the
    same way (outputs written) and re-raises.
    """
    from .predict import as_model
    from .reduce import class_ids as ids_of
    from .train import _is_path

    model_arg = model
    model = as_model(model)
    src = open_source(source, scan_shape) if isinstance(source, (str, os.PathLike)) else source
    name = name or getattr(src, "name", None) or Path(getattr(src, "path", "live")).stem
    keep_ids = ids_of(keep, model.classes) if keep else []
    paths = output_paths(out_dir, name) if out_dir is not None else None
    if paths is not None:
        for p in paths.values():
            check_target(p, force)
    if reduce_to is not None:
        from .reduce import partial_path

        if not keep_ids:
            raise ValueError("reduction on the fly keeps the frames of the --keep classes: give at least one")
        if compression not in ("bslz4", "none"):
            raise ValueError(f"on-the-fly reduction writes bslz4 or none, not {compression!r}")
        check_target(reduce_to, force)
        if partial_path(reduce_to).exists() and not force:
            raise FileExistsError(f"{partial_path(reduce_to)}: a partial file of an earlier live run is there; "
                                  "not overwritten (use --force to replace it)")
    stopped = cancel if cancel is not None else (lambda: False)
    wait_start = time.perf_counter()
    try:
        while not src.ready():  # the acquisition has not started writing yet (or the detector is not armed)
            if stopped() or (timeout_s is not None and time.perf_counter() - wait_start > timeout_s):
                raise TimeoutError(f"{getattr(src, 'path', source)}: no frame arrived within {timeout_s} s")
            time.sleep(poll_s)
    except BaseException:
        if hasattr(src, "close"):
            src.close()
        raise
    sy, sx = src.scan_shape
    if state is None:
        state = LiveClassMap((sy, sx), model.classes.ids, keep_ids, model.classes.names)
    elif state.scan_shape != (sy, sx):
        raise ValueError(f"live state is {state.scan_shape}, the scan is {(sy, sx)}")
    n_total = sy * sx
    want = calibration_frames or (model.preprocess or {}).get("bad_pixel_sample", 48)
    want = max(1, min(int(want), n_total))
    pending: list[FrameBatch] = []
    classifier = None
    t_first = None
    last_frame = time.perf_counter()
    last_write = 0.0
    status = "running"
    state.set_status("calibrating")

    threads = max(1, int(threads or os.cpu_count() or 1))
    # frames taken at once: when classification is behind, larger batches pay the model's fixed
    # cost per call less often; when it keeps up, batches hold what arrived since the last one
    max_poll = max_chunk * threads * 4

    def run_batches(batches):
        """Classify the waiting frames: their features in chunks split over the threads (the
        kernels release the GIL), then the model once for all of them; then hand the kept ones to
        the reduction."""
        pieces = []
        for b in batches:
            step = max(1, min(max_chunk, -(-len(b.index) // threads)))
            pieces += [(b.frames[s:s + step], b.index[s:s + step], b.seen if np.ndim(b.seen) == 0 else b.seen[s:s + step])
                       for s in range(0, len(b.index), step)]
        parts = classifier.runner.map_chunks([(index, frames) for frames, index, _ in pieces], threads)
        feats = [{"ria": part.values["ria"], "crop": part.values.get("crop")} for part in parts]
        ids, proba = classifier.predict(feats)
        index = np.concatenate([p[1] for p in pieces])
        seen = np.concatenate([np.broadcast_to(p[2], (len(p[1]),)) for p in pieces])
        state.update(index, ids, proba, time.perf_counter() - seen)
        if reduce_to is not None:
            reduce_batches(batches)

    reducer = None

    def reduce_batches(batches):
        nonlocal reducer
        classes = state.class_map().reshape(-1)
        for b in batches:
            if reducer is None:
                from .reduce import StreamingReducer

                reducer = StreamingReducer(
                    reduce_to, scan_shape=(sy, sx), detector_shape=b.frames.shape[1:], dtype=b.frames.dtype,
                    geometry=classifier.geometry, class_table=model.classes, keep_ids=keep_ids,
                    class_ids=state.class_ids, compression=compression, force=force,
                    input_info={"source": str(getattr(src, "path", source)), "format": src.metadata.get("format")},
                    provenance={"class_map_from": "model", "model": str(model_arg) if _is_path(model_arg) else model.name,
                                "model_kind": model.kind, "flatfield": None if flatfield is None else str(flatfield),
                                "class_ids_of_probabilities": state.class_ids})
            kept = np.isin(classes[b.index], keep_ids)
            if kept.any():
                reducer.add(b.index[kept], b.frames[kept])

    def commit(final_status=None):
        snap = state.snapshot()
        report = {"status": final_status or "partial", "frames_done": int(snap["done"].sum()),
                  "latency": snap["latency"], "plan": _plain(classifier.plan) if classifier else None,
                  **({"stream": src.stats()} if hasattr(src, "stats") else {})}
        if final_status is None:
            reducer.commit(snap["class_map"], snap["done"], snap["probabilities"], report=report)
            return None
        return reducer.finish(snap["class_map"], snap["done"], snap["probabilities"], status=final_status, report=report)

    def step_nm():
        return None if classifier is None else classifier.geometry.scan_step_nm

    def extra():
        out = {"plan": _plain(classifier.plan) if classifier else None}
        if hasattr(src, "stats"):
            out["stream"] = src.stats()
        return out

    try:
        while True:
            if stopped():
                status = "stopped"
                break
            batch = src.poll(max_poll)
            if batch is None:
                if state.n_done == n_total:
                    status = "complete"
                    break
                if getattr(src, "finished", False) and classifier is not None:
                    status = "incomplete"  # a stream's acquisition ended with positions never received
                    break
                if timeout_s is not None and time.perf_counter() - last_frame > timeout_s:
                    status = "timeout"
                    break
                time.sleep(poll_s)
            else:
                last_frame = time.perf_counter()
                t_first = t_first or float(np.min(batch.seen))
                if classifier is None:
                    pending.append(batch)
                    if sum(len(b.index) for b in pending) < want:
                        continue
                    calib = np.concatenate([b.frames for b in pending])[:want]
                    classifier = FrameClassifier.calibrate(
                        model, calib, geometry or src.geometry(),
                        flatfield=flatfield, metadata={**src.metadata, **(metadata or {})})
                    state.set_status("running")
                    run_batches(pending)
                    state.mark_calibrated()
                    pending = []
                else:
                    run_batches([batch])
                if (paths is not None or reducer is not None) and time.perf_counter() - last_write > write_every_s:
                    if paths is not None:
                        write_outputs(state, paths, extra(), step_nm())
                    if reducer is not None:
                        commit()
                    last_write = time.perf_counter()
        if classifier is None and pending:  # ended before enough frames: calibrate on what came
            calib = np.concatenate([b.frames for b in pending])
            classifier = FrameClassifier.calibrate(model, calib, geometry or src.geometry(), flatfield=flatfield,
                                                   metadata={**src.metadata, **(metadata or {})})
            run_batches(pending)
            if state.n_done == n_total:
                status = "complete"
    except KeyboardInterrupt:
        status = "stopped"
        state.set_status(status, "interrupted (Ctrl-C)")
        if paths is not None:
            write_outputs(state, paths, extra(), step_nm())
        if reducer is not None:
            commit("stopped")
        raise
    except BaseException as exc:
        state.set_status("error", str(exc))
        if reducer is not None:
            try:
                commit("error")
            except Exception:  # the partial file keeps what its last commit wrote
                reducer.close()
        raise
    finally:
        if hasattr(src, "close"):
            src.close()
    stats = src.stats() if hasattr(src, "stats") else {}
    messages = {"complete": "", "stopped": "stopped", "timeout": f"no new frame for {timeout_s} s",
                "incomplete": f"the acquisition ended with {state.n_done} of {n_total} positions received"
                              + (f" ({stats['frames_dropped']} frames dropped)" if stats.get("frames_dropped") else "")}
    state.set_status(status, messages[status])
    plan = classifier.plan if classifier is not None else {}
    files = {}
    if paths is not None:
        write_outputs(state, paths, extra(), step_nm())
        files = {k: str(v) for k, v in paths.items()}
    reduced = None
    if reducer is not None:
        left = commit(status)
        reduced = {"path": str(left), "status": status, "kept_frames": reducer.n_committed}
        files["reduced"] = str(left)
    elif reduce_to is not None:  # no frame arrived: nothing to reduce
        reduced = {"path": None, "status": status, "kept_frames": 0}
    return LiveResult(status, state, files, plan, time.perf_counter() - (t_first or wait_start), stats, reduced)


def _plain(d: dict) -> dict:
    """The JSON-safe entries of a plan: strings, None and finite numbers."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.integer, np.floating)):
            v = v.item()
        if v is None or isinstance(v, str) or (isinstance(v, (int, float)) and np.isfinite(v)):
            out[k] = v
    return out
