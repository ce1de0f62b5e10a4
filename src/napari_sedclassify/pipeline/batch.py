"""Batch runs over many scans on dask.distributed: preprocess or predict, with one progress bar.

Where the work runs (:func:`dask_client`):

- default (``workers`` None or 0): no cluster, threads in this process. The compiled kernels
  release the GIL, so the threads use every core; on one machine this is as fast as a local
  cluster and has no start-up (docs/performance.md);
- ``workers=N``: a ``LocalCluster`` of N single-threaded worker processes, the machine's memory
  shared between them;
- ``scheduler="tcp://host:8786"``: any running dask.distributed cluster (users who outgrow one
  machine add workers, nothing else changes). Scan files must be reachable under the same path
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
from pathlib import Path
from typing import Callable, Sequence

from ..io.atomic import check_target

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
def dask_client(scheduler: str | None = None, workers: int | None = None, memory_limit="auto"):
    """A dask.distributed Client for a batch run, or None for an in-process run (the default).

    scheduler: address of a running scheduler (wins over ``workers``). workers: worker processes
    of a local cluster, each single-threaded (None or 0: no cluster, threads in this process);
    memory_limit per worker ("auto": the machine's memory divided between them). The local
    cluster is closed on exit.
    """
    if scheduler is None and not workers:
        yield None
        return
    import logging

    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise OSError(f"cannot reach the dask scheduler at {scheduler} ({exc})") from exc
        try:
            yield client
        finally:
            client.close()
        return
    n = int(workers)
    if n < 1:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                           memory_limit=memory_limit, silence_logs=logging.ERROR)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


class Progress:
    """Frames done over all scans of a batch, reported as ``callback(done, total)``.

    Thread-safe: each scan reports through :meth:`for_scan`; totals start at the scans' frame
    counts and follow what each scan reports (a fitted-centring run counts frames twice).
    """

    def __init__(self, totals: Sequence[int], callback: Callable | None):
        self._lock = threading.Lock()
        self._done = [0] * len(totals)
        self._total = list(int(t) for t in totals)
        self._callback = callback

    def for_scan(self, i: int) -> Callable:
        def report(done, total):
            with self._lock:
                self._done[i], self._total[i] = int(done), int(total)
                d, t = sum(self._done), sum(self._total)
            if self._callback is not None:
                self._callback(d, t)

        return report

    def finish(self, i: int) -> None:
        with self._lock:
            self._done[i] = self._total[i]
        self.for_scan(i)(self._total[i], self._total[i])


def run_scans(job: Callable, n_scans: int, *, concurrent: int = 1, cancel: Callable | None = None) -> list:
    """Run ``job(i, cancel)`` for i in 0..n_scans-1, ``concurrent`` at a time; results in order.

    Ctrl-C (KeyboardInterrupt) stops the jobs through their cancel callable and is re-raised.
    """
    stop = threading.Event()

    def cancelled():
        return stop.is_set() or (cancel is not None and cancel())

    if concurrent <= 1 or n_scans <= 1:
        return [job(i, cancelled) for i in range(n_scans)]
    with ThreadPoolExecutor(min(concurrent, n_scans)) as pool:
        futures = [pool.submit(job, i, cancelled) for i in range(n_scans)]
        try:
            return [f.result() for f in futures]
        except BaseException:
            stop.set()
            for f in futures:
                f.cancel()
            raise


def _open(scans, client):
    from .train import open_scans

    opened = open_scans(scans)
    if client is not None:
        for s in opened:
            if s.source is None:
                raise ValueError("a scan held in memory cannot be sent to a dask cluster: give scan files")
    return opened


def _check_names(names: list[str]) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ValueError(f"two scans are both named '{n}': their outputs would overwrite each other")
        seen.add(n)


def predict_one(model, scan, *, flatfield=None, client=None, chunk_frames: int | None = None,
                progress: Callable | None = None, cancel: Callable | None = None):
    """Classify one scan with ``model`` (a SedModel) on ``client`` (None: threads here): exactly
    ``pipeline.predict.predict_scan``. Returns a ``pipeline.predict.ScanPrediction``."""
    from .predict import predict_scan

    return predict_scan(model, scan, flatfield=flatfield, client=client, chunk_frames=chunk_frames,
                        progress=progress, cancel=cancel)


def batch_predict(model, scans, out_dir, *, flatfield=None, scheduler: str | None = None,
                  workers: int | None = None, client=None, force: bool = False, chunk_frames: int | None = None,
                  concurrent: int = 2, progress: Callable | None = None, cancel: Callable | None = None,
                  uncertain_below: float | None = None, hspy: bool = False,
                  keep=("amorphous_ice",)) -> list[dict]:
    """Classify every scan (paths or file-backed Scans) with ``model`` (SedModel or model file) and
    write ``<name>_classes.npy/.tif``, ``_probabilities.npy/.json``, ``_overlay.png`` and the
    keep-list ``_keep.csv`` of the classes in ``keep`` per scan into
    ``out_dir`` (atomically; existing ones only with ``force``). uncertain_below: frames whose most
    probable class is below this probability become 0 in the class map and are listed in
    ``<name>_uncertain.npy`` (``pipeline.predict.with_uncertain``). hspy: also write the class map,
    probabilities, confidence and RIAs as HyperSpy signals, ``<name>_{classes,probabilities,
    confidence,ria}.hspy`` (``io.hyperspy.export_hyperspy``; needs the ``formats`` extra).

    client: an existing Client (else one from ``scheduler``/``workers``, see :func:`dask_client`).
    flatfield: None, one for all scans or one per scan (FlatField or path). chunk_frames: frames
    per task (default: the reader's chunks, about 32 MB). progress(done, total) counts frames over
    all scans. Returns one dict per scan: name, source, files, counts, unclassified, timings.
    """
    from .predict import as_model, prediction_entry, with_uncertain, write_prediction
    from .train import flatfields_for, scan_name

    model = as_model(model)
    out_dir = Path(out_dir)
    if uncertain_below is not None and not 0.0 <= float(uncertain_below) <= 1.0:
        raise ValueError(f"the uncertainty threshold is a probability between 0 and 1, got {uncertain_below}")
    if hspy:
        from ..optional import require_formats

        require_formats("Writing HyperSpy files (--hspy)")
    with _maybe_client(client, scheduler, workers) as cl:
        opened = _open(scans, cl)
        names = [scan_name(s) for s in opened]
        _check_names(names)
        for name in names:
            for pattern in PREDICTION_FILES + (("{}_uncertain.npy",) if uncertain_below is not None else ()) + (
                    HSPY_FILES if hspy else ()):
                check_target(out_dir / pattern.format(name), force)
        ffs = flatfields_for(flatfield, len(opened))
        bar = Progress([s.n_frames for s in opened], progress)

        def job(i, cancelled):
            pred = predict_one(model, opened[i], flatfield=ffs[i], client=cl, chunk_frames=chunk_frames,
                               progress=bar.for_scan(i), cancel=cancelled)
            pred = with_uncertain(pred, uncertain_below)
            files = write_prediction(pred, out_dir, model.classes, keep)
            if hspy:
                from ..io.hyperspy import export_hyperspy

                files.update(export_hyperspy(pred, out_dir, classes=model.classes, force=True))
            bar.finish(i)
            return prediction_entry(pred, files, model.classes)

        return run_scans(job, len(opened), concurrent=concurrent if cl is not None else 1, cancel=cancel)


def batch_preprocess(scans, outputs, *, params=None, flatfield=None, scheduler: str | None = None,
                     workers: int | None = None, client=None, force: bool = False, concurrent: int = 2,
                     progress: Callable | None = None, cancel: Callable | None = None) -> list[dict]:
    """Preprocess every scan (paths or file-backed Scans) and save each result to its entry of
    ``outputs`` (.h5 or .zarr paths, one per scan; atomically, existing ones only with ``force``).

    params: PreprocessParams or dict (the same for every scan). Other arguments as in
    :func:`batch_predict`. Returns one dict per scan: source, output, frames, duration_s.
    """
    from .preprocess import preprocess
    from .train import flatfields_for

    outputs = [Path(o) for o in outputs]
    with _maybe_client(client, scheduler, workers) as cl:
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
def _maybe_client(client, scheduler, workers):
    if client is None and scheduler is None and not workers:
        client = current_client()
    if client is not None:
        yield client
        return
    with dask_client(scheduler, workers) as cl:
        yield cl


def tqdm_progress(desc: str, unit: str = "frame"):
    """A ``progress(done, total)`` callable drawing one tqdm bar on stderr, and the bar (close it)."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True)
    lock = threading.Lock()

    def progress(done, total):
        with lock:
            if bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

    return progress, bar
