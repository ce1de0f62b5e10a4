"""The frame-processing contract and the one runner that applies it to any source of frames.

A :class:`FrameProcessor` declares what it returns per frame (``outputs``: a scalar for a virtual
image, a vector for an RIA, a 2D crop) and computes it for a chunk of frames in
``process_chunk(frames, centres, mask)``, where frames are float32 (n, ky, kx) gain-corrected
with NaN at excluded pixels, centres (n, 2) float64 (cy, cx) px (NaN: no beam) and mask the
static (ky, kx) bool mask (True = excluded).

:class:`FrameRunner` fuses a set of processors into ONE pass over the data. Its two explicit
steps are what every execution mode is built from:

- ``run_chunk(frames, index, centres=None) -> ChunkResult``: raw frames (n, ky, kx) of any dtype,
  their flat scan indices, optional given centres; flat-field, centring (unless centres are
  given) and every processor, in small cache-sized batches. Pure: no state changes.
- ``merge(store, part)``: writes a ChunkResult into arrays from ``allocate(n_frames)`` at its
  indices. Order-free and idempotent, so chunks may finish in any order, be retried, or arrive
  from a live stream.

``run(source, ...)`` drives these over a single frame, a numpy stack or memory map, a dask array
or Scan (per-block tasks in a thread pool, or on a dask.distributed ``client`` where each worker
reads its own frames), or an iterator of ``(index, frames)`` chunks (live acquisition).
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from ..errors import Cancelled
from ..scan import ScanFrames, frame_chunks
from .cores import usable_cores
from .flatfield import FlatField, native

#: Corrected frames held at a time inside run_chunk (float32 bytes): 8 frames of 512 x 512 stay
#: in the cache (32 of them ran 1.2x slower); smaller frames go more at a time, up to
#: BATCH_MAX, as each batch costs the same Python between the kernel calls (192 x 192 frames: 56
#: a batch ran 1.04-1.11x faster than 8). Results do not depend on it (tested).
BATCH_BYTES = 8 * 512 * 512 * 4
BATCH_MIN, BATCH_MAX = 8, 64


def batch_frames(frame_shape) -> int:
    """Frames per batch inside run_chunk for frames of ``frame_shape`` (ky, kx)."""
    per_frame = 4 * int(np.prod(frame_shape))
    return int(max(BATCH_MIN, min(BATCH_MAX, BATCH_BYTES // max(per_frame, 1))))


@dataclass(frozen=True)
class Output:
    """One per-frame output: shape per frame, dtype, and the value of frames not processed."""

    shape: tuple = ()
    dtype: str = "float32"
    fill: object = np.nan


class FrameProcessor:
    """Base class of per-frame computations. Subclasses set ``outputs()`` and ``process_chunk``;
    ``needs_centres = False`` lets a runner without centres (or centre finder) run them."""

    needs_centres = True
    #: True: ``process_chunk`` is also handed ``totals=`` (n,) float64, each frame's sum of its
    #: finite corrected pixels, which the correction adds up on its way (no pass of its own)
    takes_totals = False

    def outputs(self) -> dict[str, Output]:
        raise NotImplementedError

    def process_chunk(self, frames: np.ndarray, centres: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


@dataclass
class ChunkResult:
    """Per-frame outputs of one chunk: index (n,) flat scan indices, values name -> (n, ...)."""

    index: np.ndarray
    values: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.size)


class FrameRunner:
    """Applies processors (and the centre finder) to frames in one pass.

    processors: FrameProcessors; flatfield: FlatField (None = no correction, nothing masked
    unless ``mask`` says so); centring: a CentreFinder, or None when centres are always given
    to ``run``/``run_chunk``.
    """

    def __init__(self, processors: Iterable[FrameProcessor], flatfield: FlatField | None = None,
                 centring: FrameProcessor | None = None, mask: np.ndarray | None = None):
        self.processors = list(processors)
        self.flatfield = flatfield
        self.centring = centring
        self._extra_mask = None if mask is None else np.asarray(mask, bool)
        self._prepared = None

    # -- setup ----------------------------------------------------------------------------
    def _prepare(self, detector_shape):
        """(shape, mask, the arguments of ``correct_frames``, and the flat indices of the masked
        pixels when the correction is 1 wherever it is not masked and nothing is subtracted, else
        None) for this detector (cached)."""
        detector_shape = tuple(detector_shape)
        if self._prepared is not None and self._prepared[0] == detector_shape:
            return self._prepared
        ff = self.flatfield if self.flatfield is not None else FlatField.identity(detector_shape)
        if ff.shape != detector_shape:
            raise ValueError(f"flat-field {ff.shape} does not match the detector {detector_shape}")
        if self._extra_mask is not None:
            ff = ff.with_mask(self._extra_mask)
        corr, dark, use_dark, saturation = ff.kernel_args()
        masked = np.isnan(corr)
        plain = not use_dark and bool(np.all((corr == 1) | masked))
        self._prepared = (detector_shape, ff.mask, (corr, dark, use_dark, saturation),
                          np.flatnonzero(masked) if plain else None)
        return self._prepared

    def mask(self, detector_shape) -> np.ndarray:
        """(ky, kx) bool, True = excluded from every result."""
        return self._prepare(detector_shape)[1]

    def outputs(self, with_centring: bool = True) -> dict[str, Output]:
        out = {}
        for p in ([self.centring] if with_centring and self.centring is not None else []) + self.processors:
            for name, spec in p.outputs().items():
                if name in out:
                    raise ValueError(f"two processors both produce '{name}'")
                out[name] = spec
        return out

    def __getstate__(self):  # shipped to dask workers without the cached arrays
        state = dict(self.__dict__)
        state["_prepared"] = None
        return state

    # -- the two steps ----------------------------------------------------------------------
    def run_chunk(self, frames, index=None, centres=None) -> ChunkResult:
        """Process raw frames (n, ky, kx) (or one frame (ky, kx)): flat-field, centre, processors.

        index: their flat scan indices (default 0..n-1). centres: (n, 2) to use instead of the
        centre finder (then the finder's outputs are not produced).
        """
        from .kernels import convert_frames, correct_frames

        frames = native(frames)
        if frames.ndim == 2:
            frames = frames[None]
        if frames.ndim != 3:
            raise ValueError(f"expected frames (n, ky, kx), got shape {frames.shape}")
        n = frames.shape[0]
        index = np.arange(n) if index is None else np.asarray(index, dtype=np.int64).ravel()
        if index.size != n:
            raise ValueError(f"{n} frames but {index.size} indices")
        if centres is None and self.centring is None:
            if any(p.needs_centres for p in self.processors):
                raise ValueError("no centres given and no centre finder set")
            centres = np.full((n, 2), np.nan)  # none of the processors uses them
        _, mask, correction, masked = self._prepare(frames.shape[1:])
        if frames.dtype.kind not in "ui":  # float frames: non-finite values become NaN in correct_frames
            masked = None
        specs = self.outputs(with_centring=centres is None)
        values = {name: np.empty((n,) + tuple(s.shape), dtype=s.dtype) for name, s in specs.items()}
        given = None if centres is None else np.asarray(centres, dtype=np.float64).reshape(n, 2)
        batch = batch_frames(frames.shape[1:])
        buf = np.empty((min(batch, n),) + frames.shape[1:], np.float32)
        sums = np.empty(min(batch, n))
        for s in range(0, n, batch):
            e = min(n, s + batch)
            f = buf[: e - s]
            totals = sums[: e - s]
            # strided raw frames (a file's frames between their headers, e.g. 8-bit Merlin frames
            # mapped from the file) are copied batch by batch: the contiguous kernel on the copy
            # is several times faster than the strided one
            raw = frames[s:e]
            if not raw.flags.c_contiguous:
                raw = np.ascontiguousarray(raw)
            if masked is not None:  # no flat-field, no dark level: the frames as float32, NaN where masked
                convert_frames(raw, masked, f, totals)
            else:
                correct_frames(raw, *correction, f, totals)
            if given is None:
                got = self.centring.process_chunk(f, None, mask)
                for name, v in got.items():
                    values[name][s:e] = v
                c = got["centre"]
            else:
                c = given[s:e]
            for p in self.processors:
                got = p.process_chunk(f, c, mask, totals=totals) if p.takes_totals else p.process_chunk(f, c, mask)
                for name, v in got.items():
                    values[name][s:e] = v
        return ChunkResult(index, values)

    def allocate(self, n_frames: int, with_centring: bool = True) -> dict[str, np.ndarray]:
        """Arrays (n_frames, ...) for every output, filled with each output's fill value.
        Those over IN_MEMORY_STORE_BYTES (crops of a big scan) live in a temporary memory-mapped
        file, whose pages the system can write out and drop."""
        store = {}
        for name, s in self.outputs(with_centring).items():
            shape = (int(n_frames),) + tuple(s.shape)
            nbytes = int(np.prod(shape)) * np.dtype(s.dtype).itemsize
            store[name] = file_backed_empty(shape, s.dtype) if nbytes > IN_MEMORY_STORE_BYTES else np.empty(shape, s.dtype)
            store[name][...] = s.fill
        return store

    @staticmethod
    def merge(store: dict, part: ChunkResult) -> None:
        """Write a chunk's per-frame values into ``store`` at its indices."""
        for name, v in part.values.items():
            store[name][part.index] = v

    # -- execution modes ----------------------------------------------------------------------
    def run(self, source, *, centres=None, progress: Callable | None = None, cancel: Callable | None = None,
            client=None, workers: int | None = None, chunk_frames: int | None = None,
            store: dict | None = None) -> dict[str, np.ndarray]:
        """Process every frame of ``source``; returns name -> (N, ...) arrays (flat scan order).

        source: a frame (ky, kx); a numpy stack (N, ky, kx) or scan (sy, sx, ky, kx) (memory maps
        welcome); a dask array of either shape or a Scan (per-block tasks); or an iterable of
        (index, frames) chunks (live). centres: (N, 2) or (sy, sx, 2) given centres.
        progress(done_frames, total_frames); cancel() -> True stops with Cancelled.
        client: a dask.distributed Client (each worker reads its own blocks).
        """
        source = getattr(source, "frame_source", source)  # a Scan: its frames
        if centres is not None:
            centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
        if isinstance(source, ScanFrames):
            return self._run_frames(source, centres, progress, cancel, client, workers, chunk_frames, store)
        if hasattr(source, "dask") or (hasattr(source, "chunks") and hasattr(source, "to_delayed")):
            return self._run_dask(source, centres, progress, cancel, client, workers, store, chunk_frames)
        if isinstance(source, np.ndarray):
            if source.ndim == 2:
                source = source[None]
            stack = source.reshape((-1,) + source.shape[-2:])
            n = stack.shape[0]
            chunk = int(chunk_frames or 32)
            tasks = ((np.arange(s, min(n, s + chunk)), stack[s: s + chunk]) for s in range(0, n, chunk))
            return self._run_tasks(tasks, n, centres, progress, cancel, workers, store)
        return self.run_stream(source, centres=centres, progress=progress, cancel=cancel, store=store)

    def map_chunks(self, chunks, workers: int | None = None) -> list[ChunkResult]:
        """The threads executor on chunks at hand: ``run_chunk`` of each (index, frames), split over
        ``workers`` threads (the kernels release the GIL); results in the order given. Live runs
        use it for the frames that arrived since their last batch."""
        chunks = list(chunks)
        workers = int(workers or usable_cores())
        if workers == 1 or len(chunks) <= 1:
            return [self.run_chunk(frames, index) for index, frames in chunks]
        with ThreadPoolExecutor(min(workers, len(chunks))) as pool:
            return list(pool.map(lambda chunk: self.run_chunk(chunk[1], chunk[0]), chunks))

    def run_stream(self, chunks: Iterable, *, n_frames: int | None = None, centres=None, progress=None,
                   cancel=None, store: dict | None = None) -> dict[str, np.ndarray]:
        """Live mode: chunks is an iterable of (index, frames) processed as they arrive.

        n_frames: size of the result arrays (default: grown to the largest index seen)."""
        parts = []
        done = 0
        for index, frames in chunks:
            if cancel is not None and cancel():
                raise Cancelled("stopped")
            index = np.asarray(index, dtype=np.int64).ravel()
            c = None if centres is None else centres[index]
            part = self.run_chunk(frames, index, c)
            if store is not None:
                self.merge(store, part)
            else:
                parts.append(part)
            done += len(part)
            if progress is not None:
                progress(done, n_frames or done)
        if store is None:
            n = n_frames or (1 + max((int(p.index.max()) for p in parts if len(p)), default=-1))
            store = self.allocate(n, centres is None)
            for p in parts:
                self.merge(store, p)
        return store

    def _run_tasks(self, tasks, n, centres, progress, cancel, workers, store):
        """Run (index, frames-or-loader) tasks in a thread pool, at most 2 per worker in flight (one
        worker: in this thread)."""
        store = self.allocate(n, centres is None) if store is None else store
        workers = int(workers or usable_cores())
        done = 0
        reported = progress is None

        def one(index, frames):
            frames = frames() if callable(frames) else frames
            return _run_block(self, frames, index, None if centres is None else centres[index])

        if workers == 1:  # one core: the blocks in this thread, no pool (a pool refuses work while
            # the interpreter exits, which a warm-up in a daemon thread can meet)
            if progress is not None:
                progress(0, n)
            for index, frames in tasks:
                done = self._merge_done(store, [one(index, frames)], done, n, progress, cancel, ())
            return store
        with ThreadPoolExecutor(workers) as pool:
            pending = set()
            tasks = iter(tasks)
            exhausted = False
            while True:
                while not exhausted and len(pending) < 2 * workers:
                    try:
                        index, frames = next(tasks)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.add(pool.submit(one, index, frames))
                if not reported:  # once the workers have frames: a progress bar's first drawing
                    progress(0, n)  # (and its import) does not hold them back
                    reported = True
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                done = self._merge_done(store, [fut.result() for fut in finished], done, n, progress, cancel, pending)
        return store

    def _merge_done(self, store, parts, done, n, progress, cancel, pending) -> int:
        """Merge finished parts, report progress; on cancel, cancel the ``pending`` futures and
        raise Cancelled. Returns the frames done."""
        for part in parts:
            self.merge(store, part)
            done += len(part)
        if progress is not None:
            progress(done, n)
        if cancel is not None and cancel():
            for fut in pending:
                fut.cancel()
            raise Cancelled(f"stopped after {done} of {n} frames")
        return done

    def _run_frames(self, frames: ScanFrames, centres, progress, cancel, client, workers, chunk_frames, store):
        """A frame source: blocks read in the worker threads straight from the reader (no dask),
        or, with a client, dask tasks that each worker reads itself."""
        if client is not None or frames.array is frames.to_dask_if_made():
            return self._run_dask(frames.to_dask(), centres, progress, cancel, client, workers, store, chunk_frames)
        n = frames.shape[0] * frames.shape[1]
        threads = int(workers or usable_cores())
        # the last blocks in smaller pieces (threads only, the block size not asked for): the
        # threads finish together (100 x 100 x 192², in the process: 1-2 % faster)
        tail = threads if threads > 1 and chunk_frames is None else 0
        loaders = ((index, (lambda r=rows, c=cols: frames[r, c]))
                   for index, rows, cols in frames.blocks(chunk_frames, finer_tail=tail))
        return self._run_tasks(loaders, n, centres, progress, cancel, workers, store)

    def _run_dask(self, data, centres, progress, cancel, client, workers, store, chunk_frames=None):
        while data.ndim < 4:  # frames (ky, kx) or (N, ky, kx): a (1, N, ky, kx) scan
            data = data[None]
        if data.ndim != 4:
            raise ValueError(f"expected a dask array of frames, got {data.ndim} dimensions")
        if chunk_frames:
            rows, cols = frame_chunks(data.shape[:2], 1, chunk_frames)
            data = data.rechunk({0: rows, 1: cols, 2: -1, 3: -1})
        elif len(data.chunks[2]) > 1 or len(data.chunks[3]) > 1:
            data = data.rechunk({2: -1, 3: -1})
        sy, sx = data.shape[:2]
        n = sy * sx
        blocks = data.to_delayed()
        row_starts = np.cumsum((0,) + data.chunks[0])
        col_starts = np.cumsum((0,) + data.chunks[1])

        def tasks():
            for i in range(blocks.shape[0]):
                for j in range(blocks.shape[1]):
                    iy = np.arange(row_starts[i], row_starts[i + 1])
                    ix = np.arange(col_starts[j], col_starts[j + 1])
                    index = (iy[:, None] * sx + ix[None, :]).ravel()
                    yield index, blocks[i, j, 0, 0]

        if client is not None:
            return self._run_distributed(tasks(), n, centres, progress, cancel, client, store)
        from dask.local import get_sync  # a scheduler function: naming "sync" imports distributed

        loaders = ((index, (lambda b=blk: np.asarray(b.compute(scheduler=get_sync)))) for index, blk in tasks())
        return self._run_tasks(loaders, n, centres, progress, cancel, workers, store)

    def _run_distributed(self, tasks, n, centres, progress, cancel, client, store):
        import dask
        from distributed import KilledWorker
        from distributed import wait as wait_any

        store = self.allocate(n, centres is None) if store is None else store
        # part of the graph, not scattered: a worker that dies takes no irreplaceable data with it
        runner = dask.delayed(self, pure=True)
        window = 4 * max(1, sum(client.nthreads().values()))
        done = 0

        def submit(index, blk):
            c = None if centres is None else centres[index]
            return client.compute(dask.delayed(_run_block)(runner, blk, index, c), retries=3)

        tasks = iter(tasks)
        pending = {submit(*t) for _, t in zip(range(window), tasks)}
        workers_seen = time.monotonic()
        while pending:
            try:
                finished, pending = wait_any(pending, timeout=WORKER_CHECK_S, return_when="FIRST_COMPLETED")
            except TimeoutError:  # nothing finished meanwhile: are there workers at all?
                workers_seen = _check_workers(client, workers_seen, done, n, pending)
                self._merge_done(store, [], done, n, None, cancel, pending)  # a cancel meanwhile
                continue
            workers_seen = time.monotonic()
            for fut in finished:
                try:
                    part = fut.result()
                except KilledWorker:
                    _cancel(pending)
                    raise ChildProcessError(f"dask workers died each time they ran one block of frames (out of "
                                            f"memory? see the workers' logs); stopped after {done} of {n} "
                                            "frames") from None
                fut.release()
                done = self._merge_done(store, [part], done, n, progress, cancel, pending)
                nxt = next(tasks, None)
                if nxt is not None:
                    pending.add(submit(*nxt))
        return store


#: Seconds between checks that a dask cluster still has workers while none of its tasks finishes ...
WORKER_CHECK_S = 1.0
#: ... and how long, by default, it may have none before the run stops with an error (a scheduler
#: whose workers all stopped, or that never had any, kept a run waiting without end, its progress
#: bar frozen). An autoscaling cluster (dask-jobqueue, Kubernetes) that starts empty may need longer:
#: :func:`worker_wait` (the commands' ``--worker-wait``) sets it.
WORKERLESS_S = 60.0

#: The wait :func:`worker_wait` sets, for the call (thread, task) inside it only: a context
#: variable, not a process-wide value (one call's wait changed what another call running beside
#: it, or after it, waited). None: WORKERLESS_S.
_worker_wait_s: ContextVar[float | None] = ContextVar("sedclassify_worker_wait_s", default=None)


def check_worker_wait(seconds) -> float:
    """``seconds`` as a wait for workers: a positive number (inf: without end), else ValueError."""
    value = float(seconds)
    if not value > 0:  # NaN too
        raise ValueError(f"the wait for dask workers is a positive number of seconds, got {seconds}")
    return value


@contextmanager
def worker_wait(seconds: float | None):
    """Inside, a run on a dask cluster waits up to ``seconds`` for workers while the cluster has
    none (default :data:`WORKERLESS_S`; None: the wait set outside, unchanged) before it stops
    with an error: for an autoscaling cluster that starts its workers on demand. The wait holds
    in this thread's context only (threads started inside get it with ``contextvars.copy_context``)
    and is undone on exit, whatever the order in which calls in other threads exit theirs."""
    if seconds is None:
        yield
        return
    token = _worker_wait_s.set(check_worker_wait(seconds))
    try:
        yield
    finally:
        _worker_wait_s.reset(token)


def _check_workers(client, workers_seen: float, done: int, n: int, pending) -> float:
    """The time workers were last seen (now, when the cluster has some); ConnectionError when it
    has had none for the wait :func:`worker_wait` sets (default :data:`WORKERLESS_S`)."""
    if client.nthreads():
        return time.monotonic()
    wait_s = _worker_wait_s.get()
    wait_s = WORKERLESS_S if wait_s is None else wait_s
    if time.monotonic() - workers_seen < wait_s:
        return workers_seen
    _cancel(pending)
    raise ConnectionError(f"the dask cluster at {client.scheduler.address} has had no workers for "
                          f"{wait_s:g} s ({'none joined' if done == 0 else 'they stopped'}; "
                          f"{done} of {n} frames done): start workers (`dask worker ADDRESS`) and run again, "
                          "or, for a cluster that starts its workers on demand, wait longer for them "
                          "(seconds: --worker-wait 600 on the command line, worker_wait_s=600 in Python)")


def _cancel(futures) -> None:
    for fut in futures:
        fut.cancel()


def _run_block(runner: FrameRunner, block, index, centres):
    block = np.asarray(block)
    return runner.run_chunk(block.reshape((-1,) + block.shape[-2:]), index, centres)


#: The largest output kept in the process's own memory. Crops of 32 px about the beam over a 256 x
#: 256 scan fill 1.07 GB: held in memory (the limit was 1 GiB) the command peaked at 1.3 GB
#: (session 24). The RIAs of such a scan (365 bins) take 96 MB.
IN_MEMORY_STORE_BYTES = 256 * 2**20


def file_backed_empty(shape, dtype) -> np.memmap:
    """An uninitialised array backed by an unlinked temporary file (freed when dropped): its pages
    are the file's, which the system can write out and drop, not the process's memory."""
    import tempfile

    with tempfile.TemporaryFile() as f:
        return np.memmap(f, dtype=dtype, mode="w+", shape=shape)
