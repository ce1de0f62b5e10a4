"""Batch runs over many scans on dask.distributed: preprocess or predict, with one progress bar.

Where the work runs: :func:`dask_client`. By default threads in this process: the compiled
kernels release the GIL, so on one machine this is as fast as a local cluster, without its
start-up (docs/performance.md). On a cluster, scan files must be reachable under the same path
from the workers and from this process (a shared file system).

:func:`use_client` makes a client the default of ``pipeline.preprocess.preprocess`` for the
pipeline functions that take no client argument (training, evaluation): the CLI's
``--scheduler`` / ``--workers`` reach every command that way.

How the work is split: each scan is preprocessed by ``FrameRunner.run(..., client=...)``: one
task per chunk of frames (about 32 MB), each task carrying only the file path and the frame
range (the lazy reader, never pixel data) so every worker reads its own frames; the per-frame
results (centres, RIAs, virtual images: a few kB per frame) come back and are merged here. A
worker that dies mid-run loses only its tasks in flight: the scheduler re-runs them elsewhere,
and since merging is by frame index and idempotent the result is complete and identical.
Memory per worker: one chunk of frames plus its float32 copy at a time. A few scans run
concurrently so the cluster stays busy between scans. Classification (FCNN, SVM: milliseconds
per scan) runs here on the gathered features.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import copy_context
from pathlib import Path
from typing import Callable, Sequence

from ..io.atomic import check_target, staged_files
from ..processing.runner import check_worker_wait, worker_wait

#: Files ``pipeline.predict.write_prediction`` writes for a scan named NAME.
PREDICTION_FILES = ("{}_classes.npy", "{}_classes.tif", "{}_probabilities.npy", "{}_probabilities.json",
                    "{}_overlay.png", "{}_keep.csv")
#: Files ``io.hyperspy.export_hyperspy`` writes for a scan named NAME (``batch_predict(hspy=True)``).
HSPY_FILES = ("{}_classes.hspy", "{}_probabilities.hspy", "{}_confidence.hspy", "{}_ria.hspy")


_default_client = None


def current_client():
    """The client set by :func:`use_client`, or None (threads in this process)."""
    return _default_client


@contextmanager
def use_client(client):
    """Inside, ``preprocess`` (and everything that calls it) runs on ``client`` unless given one."""
    global _default_client
    previous, _default_client = _default_client, client
    try:
        yield client
    finally:
        _default_client = previous


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, memory_limit="auto",
                worker_wait_s: float | None = None):
    """A dask.distributed Client for a batch run, or None for an in-process run (the default).

    scheduler: address of a running scheduler such as "tcp://host:8786" (wins over ``workers``).
    workers: worker processes of a local cluster, each single-threaded (None or 0: no cluster);
    memory_limit per worker ("auto": the machine's memory divided between them). The local
    cluster is closed on exit. worker_wait_s: how long a run inside waits for workers while the
    cluster has none, before it stops with an error (default 60 s,
    ``processing.runner.WORKERLESS_S``; an autoscaling cluster that starts empty may need minutes).
    """
    if worker_wait_s is not None:
        check_worker_wait(worker_wait_s)  # before any connection
    if scheduler is None and not workers:
        yield None
        return
    import logging

    from distributed import Client, LocalCluster

    if scheduler is not None:
        check_scheduler(scheduler)
        try:
            client = Client(scheduler, timeout=f"{4 * SCHEDULER_ANSWER_S}s")
        except OSError as exc:
            raise ConnectionError(f"cannot reach the dask scheduler at {scheduler} ({exc})") from exc
        with client, worker_wait(worker_wait_s):
            yield client
        return
    n = int(workers)
    if n < 1:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit=memory_limit, silence_logs=logging.ERROR) as cluster, Client(cluster) as client, \
            worker_wait(worker_wait_s):
        yield client


#: Seconds a dask scheduler has to accept a connection and answer as one, before the run stops
#: with an error saying so (a scheduler answers in milliseconds, across a continent in < 1 s).
SCHEDULER_ANSWER_S = 5.0


def check_scheduler(address: str) -> None:
    """Raise ConnectionError, within :data:`SCHEDULER_ANSWER_S`, when nothing listens at ``address``
    (refused at once: distributed's Client retried for its whole timeout) or what answers is not a
    dask scheduler (a dashboard's port, say: distributed's handshake waited for it without end).
    An address that cannot be parsed is a ValueError."""
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        host, port = parse_host_port(location) if scheme in ("tcp", "tls", "ws", "wss") else (None, None)
    except ValueError as exc:
        raise ValueError(f"{address}: not a dask scheduler address ({exc})") from None
    if host is None:  # inproc://, ucx://: distributed's own connection says
        return
    try:
        socket.create_connection((host, port), timeout=SCHEDULER_ANSWER_S).close()
    except ConnectionRefusedError:
        raise ConnectionError(f"cannot reach the dask scheduler at {address}: nothing listens there (connection "
                              "refused); start one (`dask scheduler`) or give the address it prints") from None
    except TimeoutError:
        raise ConnectionError(f"cannot reach the dask scheduler at {address}: no answer within "
                              f"{SCHEDULER_ANSWER_S:g} s") from None
    except OSError as exc:
        raise ConnectionError(f"cannot reach the dask scheduler at {address} ({exc.strerror or exc})") from None
    if scheme == "tcp":
        _check_handshake(address)


def _check_handshake(address: str) -> None:
    """ConnectionError unless a dask comm handshake with ``address`` completes in time."""
    import asyncio

    from distributed.comm import connect

    async def handshake():
        comm = await connect(address, timeout=SCHEDULER_ANSWER_S)
        await comm.close()

    def run():  # its own event loop, in a thread: the caller may be inside one (a notebook)
        asyncio.run(asyncio.wait_for(handshake(), SCHEDULER_ANSWER_S))

    with ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(run).result()
        except TimeoutError:
            raise ConnectionError(f"{address} is not a dask scheduler: it accepted the connection but did not "
                                  f"answer as one within {SCHEDULER_ANSWER_S:g} s (the dashboard's port? the "
                                  "scheduler's is the one `dask scheduler` prints as 'Scheduler at')") from None
        except Exception as exc:  # what a foreign server sends fails in many ways (a frame of exabytes...)
            raise ConnectionError(f"{address} is not a dask scheduler: it answered something else "
                                  f"({type(exc).__name__})") from None


class Progress:
    """Frames done over all scans of a batch, reported as ``callback(done, total)``, and each
    scan's as ``scan_callback(i, n, done, total)`` (scan i of n: which scan the frames are of, which
    the sum cannot tell at a scan's boundary).

    Thread-safe: each scan reports through :meth:`for_scan`; totals start at ``totals`` (the scans'
    frames, twice over with fitted centring) and follow what each scan reports.
    """

    def __init__(self, totals: Sequence[int], callback: Callable | None, scan_callback: Callable | None = None):
        self._lock = threading.Lock()
        self._done = [0] * len(totals)
        self._total = list(int(t) for t in totals)
        self._callback, self._scan_callback = callback, scan_callback

    def for_scan(self, i: int) -> Callable:
        def report(done, total):
            with self._lock:
                self._done[i], self._total[i] = int(done), int(total)
                d, t = sum(self._done), sum(self._total)
            if self._callback is not None:
                self._callback(d, t)
            if self._scan_callback is not None:
                self._scan_callback(i, len(self._total), int(done), int(total))

        return report

    def finish(self, i: int) -> None:
        """Scan i is done: its frames counted in full in the sum, when its reports fell short (said
        once: a scan that reported them all is not reported again, after its classify stage; its own
        bar, which its classify stage follows, is not drawn again)."""
        with self._lock:
            short = self._done[i] < self._total[i]
            self._done[i] = self._total[i]
            d, t = sum(self._done), sum(self._total)
        if short and self._callback is not None:
            self._callback(d, t)


def run_scans(job: Callable, n_scans: int, *, concurrent: int = 1, cancel: Callable | None = None) -> list:
    """Run ``job(i, cancel)`` for i in 0..n_scans-1, ``concurrent`` at a time; results in order.

    Ctrl-C (KeyboardInterrupt) stops the jobs through their cancel callable and is re-raised.
    """
    stop = threading.Event()

    def cancelled():
        return stop.is_set() or (cancel is not None and cancel())

    if concurrent <= 1 or n_scans <= 1:
        return [job(i, cancelled) for i in range(n_scans)]
    with ThreadPoolExecutor(min(concurrent, n_scans)) as pool:  # each job in a copy of this context:
        futures = [pool.submit(copy_context().run, job, i, cancelled)  # the call's wait for workers
                   for i in range(n_scans)]
        try:
            return [f.result() for f in futures]
        except BaseException:
            stop.set()
            for f in futures:
                f.cancel()
            raise


def _open(scans, client):
    """The scans opened; on a cluster, file paths made absolute (a worker's working folder is not
    this process's) and checked readable by every worker."""
    from .scans import is_path, open_scans

    if client is None:
        return open_scans(scans)
    opened = open_scans([Path(s).absolute() if is_path(s) else s for s in scans])
    if any(s.source is None for s in opened):
        raise ValueError("a scan held in memory cannot be sent to a dask cluster: give scan files")
    check_workers_read(client, [s.source for s in opened])
    return opened


def check_workers_read(client, paths) -> None:
    """FileNotFoundError naming the first of ``paths`` (scan files) that a worker of ``client``
    cannot read under that path: on a cluster each worker reads its own frames."""
    paths = [str(p) for p in paths if p is not None]
    if not paths:
        return
    readable = client.run(_readable, paths)  # {worker address: [bool per path]}
    for i, path in enumerate(paths):
        blind = sorted(w for w, ok in readable.items() if not ok[i])
        if blind:
            hint = ("; a relative path is read from each worker's own working folder: give the absolute path"
                    if not Path(path).is_absolute() else "")
            raise FileNotFoundError(
                f"{path}: the dask worker{'s' if len(blind) > 1 else ''} {', '.join(blind)} cannot read it "
                f"({len(blind)} of {len(readable)}): cluster workers read scan files themselves, under the same "
                f"path (a shared file system){hint}")


def _readable(paths) -> list[bool]:
    """Run on each worker: whether it can read each path."""
    import os

    return [os.access(p, os.R_OK) for p in paths]


def _check_names(names: list[str]) -> None:
    twice = [n for i, n in enumerate(names) if n in names[:i]]
    if twice:
        raise ValueError(f"two scans are both named '{twice[0]}': their outputs would overwrite each other")


def batch_predict(model, scans, out_dir, *, flatfield=None, scheduler: str | None = None,
                  workers: int | None = None, client=None, force: bool = False, chunk_frames: int | None = None,
                  concurrent: int = 2, progress: Callable | None = None, scan_progress: Callable | None = None,
                  classify_progress: Callable | None = None, cancel: Callable | None = None,
                  uncertain_below: float | None = None, hspy: bool = False, keep=("amorphous_ice",),
                  worker_wait_s: float | None = None) -> list[dict]:
    """Classify every scan (paths or file-backed Scans) with ``model`` (SedModel or model file) and
    write into ``out_dir`` what ``pipeline.predict.write_prediction`` writes per scan, with the
    keep-list of the classes in ``keep`` (a scan's files appear together, each atomically; existing
    ones are replaced only with ``force``).
    uncertain_below: see ``pipeline.predict.with_uncertain``. hspy: also the HyperSpy signals of
    ``io.hyperspy.export_hyperspy`` (needs the ``formats`` extra).

    client: an existing Client (else one from ``scheduler``/``workers``, see :func:`dask_client`).
    worker_wait_s: seconds to wait for workers while the cluster has none (:func:`dask_client`).
    flatfield: None, one for all scans or one per scan (FlatField or path). chunk_frames: frames
    per task (default: the reader's chunks, about 32 MB). progress(done, total) counts frames
    preprocessed over all scans, scan_progress(i, n, done, total) those of scan i of n (frames
    counted twice with fitted centring); classify_progress(i, n, done, total) the recorded frames of scan
    i of n the model has classified, after each block (on a cluster two scans may classify at
    once, from two threads). Returns one dict per scan: name, source, files, counts, unclassified, timings.
    """
    from .predict import (card_of, check_scans, loading, predict_scan, prediction_entry, preprocess_passes,
                          with_uncertain, write_prediction)
    from .scans import flatfields_for, scan_name, scan_report

    model = loading(model)  # a model file's estimator loads while the first scan is preprocessed
    classes = card_of(model).classes
    out_dir = Path(out_dir)
    if uncertain_below is not None and not 0.0 <= float(uncertain_below) <= 1.0:
        raise ValueError(f"the uncertainty threshold is a probability between 0 and 1, got {uncertain_below}")
    if hspy:
        from ..optional import require_formats

        require_formats("Writing HyperSpy files (--hspy)")
    with _maybe_client(client, scheduler, workers, worker_wait_s) as cl:
        opened = _open(scans, cl)
        names = [scan_name(s) for s in opened]
        _check_names(names)
        check_scans(card_of(model), opened, names)  # every scan before the first is preprocessed
        for name in names:
            for pattern in PREDICTION_FILES + (("{}_uncertain.npy",) if uncertain_below is not None else ()) + (
                    HSPY_FILES if hspy else ()):
                check_target(out_dir / pattern.format(name), force)
        ffs = flatfields_for(flatfield, len(opened))
        passes = preprocess_passes(card_of(model))  # a bar's total set once, not grown as scans start
        bar = Progress([passes * s.n_frames for s in opened], progress, scan_progress)

        def job(i, cancelled):
            pred = predict_scan(model, opened[i], flatfield=ffs[i], client=cl, chunk_frames=chunk_frames,
                                progress=bar.for_scan(i), cancel=cancelled,
                                classify_progress=scan_report(classify_progress, i, len(opened)))
            pred = with_uncertain(pred, uncertain_below)
            with staged_files(out_dir, force=force) as staging:  # a scan's files appear together
                files = write_prediction(pred, staging, classes, keep)
                if hspy:
                    from ..io.hyperspy import export_hyperspy

                    files.update(export_hyperspy(pred, staging, classes=classes, force=True))
            files = {kind: str(out_dir / Path(f).name) for kind, f in files.items()}
            bar.finish(i)
            return prediction_entry(pred, files, classes)

        return run_scans(job, len(opened), concurrent=concurrent if cl is not None else 1, cancel=cancel)


def batch_preprocess(scans, outputs, *, params=None, flatfield=None, scheduler: str | None = None,
                     workers: int | None = None, client=None, force: bool = False, concurrent: int = 2,
                     progress: Callable | None = None, cancel: Callable | None = None,
                     worker_wait_s: float | None = None) -> list[dict]:
    """Preprocess every scan (paths or file-backed Scans) and save each result to its entry of
    ``outputs`` (.h5 or .zarr paths, one per scan; atomically, existing ones only with ``force``).

    params: PreprocessParams or dict (the same for every scan). Other arguments as in
    :func:`batch_predict`. Returns one dict per scan: source, output, frames, duration_s.
    """
    from .preprocess import preprocess
    from .scans import flatfields_for

    outputs = [Path(o) for o in outputs]
    with _maybe_client(client, scheduler, workers, worker_wait_s) as cl:
        opened = _open(scans, cl)
        if len(outputs) != len(opened):
            raise ValueError(f"{len(opened)} scans but {len(outputs)} output paths")
        _check_names([str(o.resolve()) for o in outputs])
        for o in outputs:
            check_target(o, force)
        ffs = flatfields_for(flatfield, len(opened))
        bar = Progress([s.n_frames for s in opened], progress)

        def job(i, cancelled):
            result = preprocess(opened[i], params, flatfield=ffs[i], progress=bar.for_scan(i), cancel=cancelled,
                                client=cl)
            result.save(outputs[i])
            bar.finish(i)
            return {"source": opened[i].source, "output": str(outputs[i]), "frames": opened[i].n_frames,
                    "duration_s": result.provenance.get("duration_s")}

        return run_scans(job, len(opened), concurrent=concurrent if cl is not None else 1, cancel=cancel)


@contextmanager
def _maybe_client(client, scheduler, workers, worker_wait_s=None):
    if client is None and scheduler is None and not workers:
        client = current_client()
    if client is not None:
        with worker_wait(worker_wait_s):
            yield client
        return
    with dask_client(scheduler, workers, worker_wait_s=worker_wait_s) as cl:
        yield cl
