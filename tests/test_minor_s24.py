"""Session 24, small gaps left by session 23.

1. `sedclassify predict` took --flatfield once per file (`--flatfield a --flatfield b`), where
   train and evaluate take a list (`--flatfield a b`): the list was refused ("unrecognized
   arguments"). It takes both now, with train's message when the counts disagree, and a
   --flatfield given before MODEL SCAN still works.
2. `sedclassify reduce --labels`: the progress bar counted the kept frames (its total the kept
   count), not the frames of the scan gone through.
3. The Python `watch()` did not lock its outputs nor check the model against the geometry before
   waiting for the source (only the CLI and the napari widget did, each its own way): it waited
   for the detector, then ran over a second run's files, or refused the model once armed.
4. The wait for dask workers (`worker_wait_s=`) was one value for the whole process: a call in
   another thread changed the wait of a call running beside it, and calls that overlapped left
   their wait behind for the calls after them.
5. A `watch` that failed before its first frame (nothing listening, a wrong port) left its
   status file, and running it again with the same outputs was refused until --force: a retry
   now replaces the outputs of a run that classified nothing; a run's results still need --force.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from models_helpers import write_tiny_scans

from napari_sedclassify.cli import main


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- 1. predict --flatfield takes a list ----------------------------------------------------------
@pytest.fixture(scope="module")
def two_sessions(tmp_path_factory):
    """A tiny scan of session A and one of session B (each with its own flat-field file), an SVM
    trained on A."""
    folder = tmp_path_factory.mktemp("flatfields")
    (a, truth_a, flat_a), = write_tiny_scans(folder, [0], session="A")
    (b, _, flat_b), = write_tiny_scans(folder, [1], session="B")
    assert flat_a != flat_b
    model = folder / "svm.sedmodel"
    assert main(["train", "--scans", str(a), "--labels", str(truth_a), "--model", "svm", "--flatfield", str(flat_a),
                 "-o", str(model)]) == 0
    return {"a": a, "b": b, "flat_a": flat_a, "flat_b": flat_b, "model": model}


def test_predict_takes_a_list_of_flatfields_as_train_does(two_sessions, tmp_path, capsys):
    """`predict MODEL A B --flatfield FA FB` uses FA for A and FB for B (the class maps of each scan
    predicted alone with its own flat-field); a count that fits neither one nor one per scan is
    refused with train's message; `--flatfield F` before MODEL SCAN, and once per scan, still work."""
    s = two_sessions
    code, _, err = _run(capsys, "predict", s["model"], s["a"], s["b"], "--flatfield", s["flat_a"], s["flat_b"],
                        "-o", tmp_path / "both")
    assert code == 0, err
    for scan, flat in ((s["a"], s["flat_a"]), (s["b"], s["flat_b"])):
        code, _, err = _run(capsys, "predict", "--flatfield", flat, s["model"], scan, "-o", tmp_path / "alone")
        assert code == 0, err
        name = f"{scan.stem}_classes.npy"
        np.testing.assert_array_equal(np.load(tmp_path / "both" / name), np.load(tmp_path / "alone" / name))
    # once per scan, as before
    code, _, err = _run(capsys, "predict", s["model"], s["a"], s["b"], "--flatfield", s["flat_a"],
                        "--flatfield", s["flat_b"], "-o", tmp_path / "twice", "--json")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "twice" / f"{s['b'].stem}_classes.npy"),
                                  np.load(tmp_path / "both" / f"{s['b'].stem}_classes.npy"))
    # three flat-fields for two scans: the message train gives
    three = [s["flat_a"], s["flat_b"], s["flat_a"]]
    code, _, err = _run(capsys, "predict", s["model"], s["a"], s["b"], "--flatfield", *three, "-o", tmp_path / "bad")
    assert code == 2 and not (tmp_path / "bad").exists()
    said = err.strip().split("error: ", 1)[1]
    assert said == "3 flat-fields for 2 scans: give one for all scans or one per scan"
    code, _, err = _run(capsys, "train", "--scans", s["a"], s["b"], "--labels", s["a"], s["b"], "--flatfield", *three,
                        "-o", tmp_path / "m.sedmodel")
    assert code == 2 and err.strip().split("error: ", 1)[1] == said


# ---- 2. reduce --labels: the bar counts the frames gone through -------------------------------------
def test_reduce_progress_counts_the_frames_of_the_scan_and_says_how_many_were_kept(tmp_path, capsys):
    """A 16 x 16 scan reduced to its amorphous-ice frames from its labels: progress goes from 0 to
    the scan's 256 frames, never down (it went to the kept count); the command's bar ends at
    256/256 and its summary says how many of them were kept."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.reduce import reduce_scan

    (scan_path, truth, _), = write_tiny_scans(tmp_path, [2])
    labels = np.load(truth)
    n_kept = int((labels == 2).sum())
    assert 0 < n_kept < labels.size
    calls = []
    report = reduce_scan(open_scan(scan_path), labels, tmp_path / "ice.h5", progress=lambda d, t: calls.append((d, t)))
    assert report.n_kept == n_kept and report.n_frames == labels.size
    assert calls[0] == (0, labels.size) and calls[-1] == (labels.size, labels.size)
    done = [d for d, _ in calls]
    assert done == sorted(done) and {t for _, t in calls} == {labels.size}

    code, out, err = _run(capsys, "reduce", scan_path, "--labels", truth, "-o", tmp_path / "cli.h5")
    assert code == 0, err
    assert f"{labels.size}/{labels.size}" in err and f"{n_kept}/{n_kept}" not in err
    assert f"kept {n_kept} of {labels.size} frames" in out


# ---- 3. watch() checks the model and locks its outputs before it waits -------------------------------
@pytest.fixture
def merlin(tmp_path):
    """A 4 x 4 scan (256 px, 12-bit) written as a Merlin .mib + .hdr for LiberTEM-live's Merlin
    simulator on loopback: its ports picked, the simulator not started (the test starts it)."""
    from stream_sims import MerlinSim, simulator

    from napari_sedclassify.optional import live_available

    if not live_available("merlin") or simulator("libertem-live-mib-sim") is None:
        pytest.skip('the live extra is not installed (pip install "napari-sedclassify[live]")')
    from napari_sedclassify.pipeline.acquisition import write_mib
    from napari_sedclassify.simulate import simulate_scan

    sim = simulate_scan(tmp_path / "acq.npy", scan_shape=(4, 4), detector_px=256, seed=42)
    write_mib(tmp_path / "acq.mib", iter(np.asarray(sim.scan.data.compute()).reshape(16, 256, 256)), (4, 4))
    server = MerlinSim(tmp_path / "acq.hdr", (4, 4), tmp_path / "sim.log")
    server.pick_ports()
    try:
        yield {"sim": sim, "server": server}
    finally:
        server.stop()


def _free_port() -> int:
    from stream_sims import free_ports

    return free_ports(1)[0]


def test_watch_refuses_a_model_the_geometry_cannot_serve_before_waiting(tmp_path):
    """The built-in model on a Merlin stream without camera length or voltage: watch() refuses it
    at once (it waited the whole timeout for a detector, then said nothing listened); nothing is
    written."""
    from napari_sedclassify.errors import IncompatibleModelError
    from napari_sedclassify.pipeline.live import MerlinStreamSource, watch

    src = MerlinStreamSource("127.0.0.1", _free_port(), scan_shape=(3, 3), name="acq")
    with pytest.raises(IncompatibleModelError, match="camera length is assumed"):
        watch("builtin", src, out_dir=tmp_path / "out", timeout_s=5)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_watch_locks_its_outputs_while_it_runs(merlin, tmp_path):
    """A first watch() on a Merlin stream holds `<out>/acq_watch.lock` from before the detector
    is there to the run's end; a second watch() with the same folder and name, meanwhile, is
    refused at once, naming the lock (it waited, then wrote over the first one's files). Then the
    simulated detector starts: the first run completes and removes its lock."""
    from napari_sedclassify.pipeline.live import MerlinStreamSource, watch

    sim, server, out = merlin["sim"], merlin["server"], tmp_path / "out"
    options = dict(out_dir=out, flatfield=sim.flatfield_path, geometry=sim.geometry, timeout_s=180)
    first = {}

    def run_first():
        src = MerlinStreamSource("127.0.0.1", server.data, name="acq")
        try:
            first["result"] = watch("builtin", src, **options)
        except BaseException as exc:  # said by the test below
            first["error"] = exc

    thread = threading.Thread(target=run_first)
    thread.start()
    lock = out / "acq_watch.lock"
    while not lock.exists() and thread.is_alive():
        time.sleep(0.01)
    try:
        assert lock.exists(), f"the first run never locked its outputs ({first})"
        second = MerlinStreamSource("127.0.0.1", _free_port(), scan_shape=(4, 4), name="acq")
        with pytest.raises(ValueError, match=r"acq_watch\.lock: another live run \(process "):
            watch("builtin", second, **{**options, "timeout_s": 2, "force": True})
        server.launch(fresh_ports=False).wait()
    finally:
        thread.join()
    assert "error" not in first, first.get("error")
    assert first["result"].status == "complete"
    assert json.loads((out / "acq_keep.json").read_text())["frames_done"] == 16
    assert not lock.exists()


# ---- 4. the wait for dask workers is the call's own ---------------------------------------------------
@pytest.fixture
def workerless(tmp_path):
    """A dask cluster without workers (in this process) and a client of it; a tiny scan on disk."""
    distributed = pytest.importorskip("distributed")
    import logging

    (scan, _, flat), = write_tiny_scans(tmp_path, [3])
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as client:
        yield {"cluster": cluster, "client": client, "scan": scan, "flat": flat, "dir": tmp_path}


def _worker_joins_later(cluster, after_s: float = 3.0):
    """A worker joins ``cluster`` ``after_s`` s from now (an autoscaling cluster's first worker)."""
    timer = threading.Timer(after_s, cluster.scale, args=(1,))
    timer.start()
    return timer


def test_the_wait_for_workers_is_each_calls_own(workerless):
    """Two successive calls on a cluster without workers: the first, with worker_wait_s=0.5 over
    two scans run side by side, stops saying it waited 0.5 s; the second, without it, waits the
    default 60 s and runs once a worker joins, 3 s later. Then two calls in two threads, one with
    0.5 s and one with an hour, their waits overlapping and ending in the other order: the call
    after them, without a wait, again waits the default (it was left with 0.5 s and failed)."""
    from napari_sedclassify.pipeline.batch import batch_preprocess, dask_client
    from napari_sedclassify.processing.runner import WORKERLESS_S

    w = workerless
    scans, d = [w["scan"], w["scan"]], w["dir"]
    with pytest.raises(ConnectionError, match=r"no workers for 0\.5 s"):
        batch_preprocess(scans, [d / "a.h5", d / "b.h5"], flatfield=w["flat"], client=w["client"], concurrent=2,
                         worker_wait_s=0.5)
    timer = _worker_joins_later(w["cluster"])
    try:
        (done,) = batch_preprocess([w["scan"]], [d / "c.h5"], flatfield=w["flat"], client=w["client"])
    finally:
        timer.join()
    assert done["frames"] == 256 and (d / "c.h5").exists()
    assert WORKERLESS_S > 3.0

    w["cluster"].scale(0)
    while w["client"].nthreads():
        time.sleep(0.05)
    address = w["cluster"].scheduler_address
    short_in, long_in, short_out = threading.Event(), threading.Event(), threading.Event()

    def short_call():  # enters first, leaves first
        with dask_client(address, worker_wait_s=0.5):
            short_in.set()
            long_in.wait()
        short_out.set()

    thread = threading.Thread(target=short_call)
    thread.start()
    short_in.wait()
    with dask_client(address, worker_wait_s=3600):
        long_in.set()
        short_out.wait()
    thread.join()
    timer = _worker_joins_later(w["cluster"])
    try:
        (done,) = batch_preprocess([w["scan"]], [d / "d.h5"], flatfield=w["flat"], client=w["client"])
    finally:
        timer.join()
    assert done["frames"] == 256


# ---- 5. a retry after a run that classified nothing needs no --force -------------------------------
def test_watch_retried_after_a_run_that_classified_nothing_needs_no_force(tmp_path, capsys):
    port = _free_port()
    argv = ["watch", "builtin", "--merlin", f"127.0.0.1:{port}", "--scan-shape", "3", "3", "--camera-length", "900",
            "--voltage", "200", "--out", tmp_path, "--timeout", "1"]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "nothing listened" in err
    status = json.loads((tmp_path / "merlin_keep.json").read_text())
    assert status["status"] == "error" and status["frames_done"] == 0
    code, _, err = _run(capsys, *argv)  # the same cause again, not "exists; use --force"
    assert code == 2 and "nothing listened" in err and "--force" not in err
    # a run that classified frames keeps its results: they need --force
    status["frames_done"], status["status"] = 9, "incomplete"
    (tmp_path / "merlin_keep.json").write_text(json.dumps(status))
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "exists" in err and "--force" in err
