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
yet classified), ``<name>_live_probabilities.npy`` and ``<name>_keep.json`` (kept positions,
progress, latency) atomically, every ``write_every_s`` and at the end.
"""

from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..geometry import Geometry
from ..io.atomic import check_target, write_json, write_npy

#: Statuses of a live run, in the order they happen.
STATUSES = ("waiting", "calibrating", "running", "complete", "stopped", "timeout", "error")


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
        p95, max), the mean of those that waited for it, and frames/s since the start."""
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
                       p95_ms=round(float(np.percentile(steady, 95)), 3), max_ms=round(float(steady.max()), 3))
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
        """Set the plan with ``preprocess`` on ``frames`` (the first frames of the scan), as a batch
        run sets it on its sample: saturation level, extra bad pixels, beam radius, radii."""
        from ..models.training import ScanFeatures  # noqa: F401  (fail early if models are unusable)
        from ..processing import CentralCrop, CentreFinder, FlatField, FrameRunner, RadialProfile, load_flatfield
        from ..processing.pixels import grid_for
        from ..scan import Scan
        from .predict import _base_params
        from .preprocess import preprocess
        from .train import preprocess_params_for

        frames = np.asarray(frames)
        model.check_geometry(geometry, "the live frames")
        params = preprocess_params_for([model.recipe], geometry, _base_params(model))
        params = replace(params, centring="per_frame", workers=1, chunk_frames=None)
        ff = None
        if flatfield is not None and params.use_flatfield:
            ff = flatfield if isinstance(flatfield, FlatField) else load_flatfield(flatfield)
        calib = Scan(frames[None], geometry, metadata=dict(metadata or {}), source="live calibration")
        result = preprocess(calib, params, flatfield=ff)
        r = result.resolved
        base = ff if ff is not None else FlatField.identity(tuple(geometry.detector_shape))
        ff_used = base.with_saturation(r["saturation_counts"]).with_mask(result.mask)
        grid = grid_for(tuple(geometry.detector_shape), r["edge_pixel_width"])
        prof = RadialProfile(r["ria_nbins"], r["ria_bin_px"], r["ria_r_min_px"], grid)
        procs = [prof]
        if r["crop_half_px"] is not None:
            procs.append(CentralCrop(r["crop_half_px"], r["crop_bin"]))
        runner = FrameRunner(procs, ff_used, CentreFinder(r["beam_radius_px"], grid=grid))
        plan = {"calibration_frames": int(len(frames)), "masked_pixels": int(result.mask.sum()),
                "model_centring": (model.preprocess or {}).get("centring", "per_frame"), **r}
        return cls(model, runner, geometry, prof.radii_px, r["crop_half_px"], plan)

    def classify(self, frames, index=None):
        from ..models.inference import predict_scan as predict_features
        from ..models.training import ScanFeatures

        frames = np.asarray(frames)
        if frames.ndim == 2:
            frames = frames[None]
        n = frames.shape[0]
        part = self.runner.run_chunk(frames, index)
        crops = part.values.get("crop")
        feats = ScanFeatures(name="live", geometry=self.geometry, missing=np.zeros((1, n), bool),
                             ria=part.values["ria"][None], radii_px=self.radii_px,
                             crops=None if crops is None else crops[None], crop_radius_px=self.crop_radius_px)
        pred = predict_features(self.model, feats)
        return pred.class_map[0], pred.probabilities[0]


# ---- sources of frames -------------------------------------------------------------------------------
@dataclass
class FrameBatch:
    """Frames that just became available: flat scan indices (n,), frames (n, ky, kx), and the
    ``time.perf_counter()`` at which they were seen complete."""

    index: np.ndarray
    frames: np.ndarray
    seen: float


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

        return Geometry(detector_shape=self.header.frame_shape, pixel_size_um=PIXEL_SIZE_UM)

    def ready(self) -> bool:
        return self.header is not None or self._read_header()

    def poll(self, max_frames: int = 64) -> FrameBatch | None:
        from ..io import ScanFormatError
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


def open_source(path, scan_shape=None):
    """A frame source for ``path``: a growing .mib file (``.mib``/``.hdr``), else a folder of frame
    files (which may not exist yet)."""
    path = Path(path)
    if path.suffix.lower() in (".mib", ".hdr"):
        return MibSource(path.with_suffix(".mib"), scan_shape)
    if path.is_dir() or not path.exists():  # a folder, possibly not created yet
        return FolderSource(path, scan_shape)
    raise ValueError(f"{path}: live input must be a folder of frame files or a Merlin .mib file")


# ---- the engine --------------------------------------------------------------------------------------
@dataclass
class LiveResult:
    """How a live run ended: status ("complete", "stopped", "timeout"), the state, files written,
    the plan used, and seconds from the first frame seen to the end."""

    status: str
    state: LiveClassMap
    files: dict
    plan: dict
    seconds: float

    def to_dict(self) -> dict:
        s = self.state
        return {"status": self.status, "frames": s.n_done, "positions": s.n_positions,
                "kept": int(s.keep().sum()), "kept_classes": [s.class_names.get(i, str(i)) for i in s.keep_ids],
                "latency": s.latency_stats(), "seconds": round(self.seconds, 3), "files": self.files,
                "plan": _plain(self.plan)}


def output_paths(out_dir, name: str) -> dict:
    out_dir = Path(out_dir)
    return {"class_map": out_dir / f"{name}_live_classes.npy",
            "probabilities": out_dir / f"{name}_live_probabilities.npy",
            "keep": out_dir / f"{name}_keep.json"}


def write_outputs(state: LiveClassMap, paths: dict, extra: dict | None = None) -> None:
    """Write the class map, probabilities and keep-list atomically (replacing earlier versions)."""
    snap = state.snapshot()
    write_npy(paths["class_map"], snap["class_map"])
    write_npy(paths["probabilities"], snap["probabilities"])
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
          state: LiveClassMap | None = None, cancel: Callable | None = None) -> LiveResult:
    """Classify the frames of ``source`` (a path for :func:`open_source`, or a source) as they arrive.

    model: SedModel or model file. keep: classes whose positions go into the keep-list.
    geometry: calibration of the live frames (default: what the source says, as the batch reader
    would). metadata: scan metadata for the plan (e.g. ``edge_pixel_width``). calibration_frames:
    frames that set the plan (default: the recipe's bad_pixel_sample, at most the scan).
    max_chunk: most frames classified together when several are waiting; threads: how many chunks
    are classified at once (default: one per core). timeout_s: stop when no
    new frame arrived for this long (None: wait forever). out_dir: where the class map and
    keep-list go (atomically, every write_every_s and at the end; existing ones only with
    ``force``). state: a LiveClassMap to fill (a widget may hold it); cancel() -> True ends the run
    (status "stopped"). Returns a LiveResult; Ctrl-C ends the run the same way (outputs written) and
    re-raises.
    """
    from .predict import as_model
    from .reduce import class_ids as ids_of

    model = as_model(model)
    src = open_source(source, scan_shape) if isinstance(source, (str, os.PathLike)) else source
    name = name or Path(getattr(src, "path", "live")).stem
    keep_ids = ids_of(keep, model.classes) if keep else []
    paths = output_paths(out_dir, name) if out_dir is not None else None
    if paths is not None:
        for p in paths.values():
            check_target(p, force)
    stopped = cancel if cancel is not None else (lambda: False)
    wait_start = time.perf_counter()
    while not src.ready():  # the acquisition has not started writing yet
        if stopped() or (timeout_s is not None and time.perf_counter() - wait_start > timeout_s):
            raise TimeoutError(f"{getattr(src, 'path', source)}: no frame arrived within {timeout_s} s")
        time.sleep(poll_s)
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
    pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def run_one(frames, index, seen):
        ids, proba = classifier.classify(frames, index)
        state.update(index, ids, proba, np.full(len(ids), time.perf_counter() - seen))

    def run_batches(batches):
        """Classify the waiting frames, split over the threads (the kernels release the GIL)."""
        pieces = []
        for b in batches:
            step = max(1, min(max_chunk, -(-len(b.index) // threads)))
            pieces += [(b.frames[s:s + step], b.index[s:s + step], b.seen) for s in range(0, len(b.index), step)]
        if pool is None or len(pieces) == 1:
            for piece in pieces:
                run_one(*piece)
        else:
            for f in [pool.submit(run_one, *piece) for piece in pieces]:
                f.result()

    try:
        while True:
            if stopped():
                status = "stopped"
                break
            batch = src.poll(max_chunk * threads)
            if batch is None:
                if state.n_done == n_total:
                    status = "complete"
                    break
                if timeout_s is not None and time.perf_counter() - last_frame > timeout_s:
                    status = "timeout"
                    break
                time.sleep(poll_s)
            else:
                last_frame = time.perf_counter()
                t_first = t_first or batch.seen
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
                if paths is not None and time.perf_counter() - last_write > write_every_s:
                    write_outputs(state, paths, {"plan": _plain(classifier.plan) if classifier else None})
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
            write_outputs(state, paths, {"plan": _plain(classifier.plan) if classifier else None})
        raise
    except BaseException as exc:
        state.set_status("error", str(exc))
        raise
    finally:
        if pool is not None:
            pool.shutdown()
    state.set_status(status, {"complete": "", "stopped": "stopped", "timeout": f"no new frame for {timeout_s} s"}[status])
    plan = classifier.plan if classifier is not None else {}
    files = {}
    if paths is not None:
        write_outputs(state, paths, {"plan": _plain(plan)})
        files = {k: str(v) for k, v in paths.items()}
    return LiveResult(status, state, files, plan, time.perf_counter() - (t_first or wait_start))


def _plain(d: dict) -> dict:
    """The JSON-safe entries of a plan: strings, None and finite numbers."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.integer, np.floating)):
            v = v.item()
        if v is None or isinstance(v, str) or (isinstance(v, (int, float)) and np.isfinite(v)):
            out[k] = v
    return out
