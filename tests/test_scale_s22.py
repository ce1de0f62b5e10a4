"""Runs that outgrow one process: a dask scheduler that is wrong, missing or without workers,
workers in another working folder, workers that die, and a prediction stopped while writing."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pytest
from distributed import LocalCluster

from napari_sedclassify.cli import main
from napari_sedclassify.pipeline.preprocess import PreprocessResult
from napari_sedclassify.processing import runner
from napari_sedclassify.processing.runner import FrameProcessor, FrameRunner, Output


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A simulated 8 x 8 scan on a 128 px detector, with its flat-field."""
    from napari_sedclassify.simulate import simulate_scan

    d = tmp_path_factory.mktemp("scale")
    s = simulate_scan(d / "scan.npy", scan_shape=(8, 8), detector_px=128, seed=5)
    return {"dir": d, "scan": Path(s.scan.source), "flat": str(s.flatfield_path)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_scheduler_not_running_is_one_line_at_once(sim, tmp_path, capsys):
    """Nothing listening: said at once (distributed retried for 20 s), naming the address."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    rc = main(["preprocess", str(sim["scan"]), "-o", str(tmp_path / "r.h5"), "--scheduler", address])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"cannot reach the dask scheduler at {address}: nothing listens there (connection refused)" in err
    assert not (tmp_path / "r.h5").exists()


@pytest.mark.timeout(120)
def test_dashboard_port_is_not_taken_for_a_scheduler(sim, tmp_path, capsys):
    """An HTTP server (a dashboard's port) accepts the connection and waits for a request:
    distributed's handshake waited for it without end; now a one-line error."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.server_address[1]}"
    try:
        rc = main(["predict", "builtin", str(sim["scan"]), "-o", str(tmp_path / "out"), "--scheduler", address])
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"{address} is not a dask scheduler" in err and "dashboard" in err


@pytest.fixture(scope="module")
def cluster_elsewhere(tmp_path_factory):
    """A running cluster (2 worker processes) whose workers work in another folder than the client."""
    elsewhere = tmp_path_factory.mktemp("workers_cwd")
    here = os.getcwd()
    os.chdir(elsewhere)
    try:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    finally:
        os.chdir(here)
    with cluster:
        yield cluster.scheduler_address


@pytest.mark.timeout(300)
def test_relative_scan_path_on_a_running_cluster(sim, tmp_path, monkeypatch, cluster_elsewhere, capsys):
    """`preprocess scan.npy --scheduler` from the scan's folder: the workers read it from their own
    working folder ("No such file or directory: 'scan.npy'"); now sent absolute, and the result is
    the in-process one to the bit. predict likewise."""
    monkeypatch.chdir(sim["dir"])
    ff = ["--flatfield", sim["flat"]]
    assert main(["preprocess", "scan.npy", *ff, "-o", str(tmp_path / "here.h5")]) == 0
    assert main(["preprocess", "scan.npy", *ff, "-o", str(tmp_path / "cluster.h5"),
                 "--scheduler", cluster_elsewhere]) == 0, capsys.readouterr().err
    here, there = PreprocessResult.load(tmp_path / "here.h5"), PreprocessResult.load(tmp_path / "cluster.h5")
    for name in ("centres", "ria", "beam_found", "mask"):
        assert np.array_equal(getattr(here, name), getattr(there, name), equal_nan=True), name
    assert main(["predict", "builtin", "scan.npy", *ff, "-o", str(tmp_path / "p_here")]) == 0
    assert main(["predict", "builtin", "scan.npy", *ff, "-o", str(tmp_path / "p_cluster"),
                 "--scheduler", cluster_elsewhere]) == 0, capsys.readouterr().err
    for f in ("scan_classes.npy", "scan_probabilities.npy"):
        assert np.array_equal(np.load(tmp_path / "p_here" / f), np.load(tmp_path / "p_cluster" / f))


@pytest.mark.timeout(300)
def test_workers_that_cannot_read_a_scan_are_named(sim, tmp_path, monkeypatch, cluster_elsewhere, capsys):
    """A relative path given with --scheduler: every command (train too) sends it from the root,
    so the workers, working elsewhere, read it. A path the workers cannot read is named with the
    workers before any work, not left to a worker's bare "No such file or directory"."""
    monkeypatch.chdir(sim["dir"])
    from napari_sedclassify.simulate import load_simulated

    truth = load_simulated(sim["scan"]).truth
    np.save(tmp_path / "labels.npy", truth)
    rc = main(["train", "--scans", "scan.npy", "--labels", str(tmp_path / "labels.npy"), "--flatfield", sim["flat"],
               "-o", str(tmp_path / "m.sedmodel"), "--scheduler", cluster_elsewhere])
    err = capsys.readouterr().err
    assert rc == 0, err
    # a path the workers cannot see (their working folder is elsewhere): named, before any work
    from distributed import Client

    from napari_sedclassify.pipeline.batch import check_workers_read

    with Client(cluster_elsewhere) as client, pytest.raises(OSError) as refused:
        check_workers_read(client, ["scan.npy"])
    text = str(refused.value)
    assert "scan.npy: the dask workers" in text and "cannot read it (2 of 2)" in text and "absolute path" in text

@pytest.mark.timeout(120)
def test_cluster_without_workers_stops_with_an_error(sim, tmp_path, monkeypatch, capsys):
    """A scheduler with no workers kept the run waiting without end; it stops after WORKERLESS_S."""
    monkeypatch.setattr(runner, "WORKERLESS_S", 2.0)
    with LocalCluster(n_workers=0, processes=True, dashboard_address=":0") as cluster:
        rc = main(["preprocess", str(sim["scan"]), "-o", str(tmp_path / "r.h5"),
                   "--scheduler", cluster.scheduler_address])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "has had no workers for 2 s (none joined; 0 of 64 frames done)" in err
    assert not (tmp_path / "r.h5").exists()


class _KillsItsWorker(FrameProcessor):
    """A processor whose process dies on every block (as a crashing native library would)."""

    needs_centres = False

    def outputs(self):
        return {"total": Output()}

    def process_chunk(self, frames, centres, mask):
        os._exit(1)


@pytest.mark.timeout(120)
def test_workers_dying_on_every_block_is_an_error_not_a_traceback(sim):
    """distributed's KilledWorker (not an error the CLI reports in a line) becomes a ChildProcessError."""
    import cloudpickle

    from napari_sedclassify.io import open_scan

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            cluster.get_client() as client:
        with pytest.raises(ChildProcessError, match="dask workers died each time they ran one block"):
            FrameRunner([_KillsItsWorker()]).run(open_scan(sim["scan"]), client=client)


def test_staged_files_appear_together_or_not_at_all(tmp_path):
    """An error while a set is written leaves the previous set whole, and no staging folder."""
    from napari_sedclassify.io.atomic import staged_files

    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")
    with pytest.raises(RuntimeError):
        with staged_files(tmp_path, force=True) as staging:
            (staging / "a.txt").write_text("new a")
            raise RuntimeError("stopped between a and b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    assert (tmp_path / "a.txt").read_text() == "old a"
    with staged_files(tmp_path, force=True) as staging:
        for name in ("a.txt", "b.txt"):
            (staging / name).write_text(f"new {name[0]}")
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")] == ["new a", "new b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


PREDICTION = ("scan_classes.npy", "scan_classes.tif", "scan_probabilities.npy", "scan_probabilities.json",
              "scan_overlay.png", "scan_keep.csv")


@pytest.mark.timeout(300)
def test_prediction_killed_while_writing_leaves_no_partial_set(sim, tmp_path):
    """kill -9 as the first output file is complete (has its name): the folder holds none of the
    scan's files (a class map without its keep-list made the rerun refuse: "exists; not
    overwritten"), and the rerun, without --force, writes the whole set and removes what the
    killed run left."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "napari_sedclassify.cli", "predict", "builtin", str(sim["scan"]),
           "--flatfield", sim["flat"], "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not any(n[0] != "." for _, _, names in os.walk(out) for n in names):
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = {p.name for p in out.iterdir() if not p.name.startswith(".")} if out.exists() else set()
    assert written in (set(), set(PREDICTION))
    assert main(["predict", "builtin", str(sim["scan"]), "--flatfield", sim["flat"], "-o", str(out),
                 *(["--force"] if written else [])]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(PREDICTION)


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_what_a_killed_preprocess_left_is_removed_by_the_next(sim, tmp_path, capsys, suffix):
    """`preprocess -o out.h5` killed while it saved left `.out.h5.tmp-PID` (130 MB here; a folder
    for .zarr) that no later run removed. Its temporary file now has ``io.atomic``'s naming; the
    next save removes those of processes that are gone, and keeps a running one's."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    out = tmp_path / f"out{suffix}"
    left = tmp_path / f".{out.name}.{pid}-abc123.part{suffix}"
    mine = tmp_path / f".{out.name}.{os.getpid()}-def456.part{suffix}"
    for partial in (left, mine):
        if suffix == ".zarr":
            (partial / "ria").mkdir(parents=True)
            (partial / "ria" / "c0").write_bytes(b"\0" * 4096)
        else:
            partial.write_bytes(b"\0" * 4096)
    assert main(["preprocess", str(sim["scan"]), "-o", str(out)]) == 0, capsys.readouterr().err
    assert not left.exists() and mine.exists()
    assert PreprocessResult.load(out).ria.shape[:2] == (8, 8)
