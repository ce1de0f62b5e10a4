"""Batch runs on dask.distributed: identical to the single-process run, tolerant of a dying worker."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from napari_sedclassify.cli import main
from napari_sedclassify.pipeline.batch import batch_predict, batch_preprocess, dask_client
from napari_sedclassify.pipeline.predict import predict_scan
from napari_sedclassify.pipeline.preprocess import PreprocessResult, preprocess


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four simulated 8x8 scans (128 px detector) of one session and an FCNN trained on two of them."""
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.train import train_model
    from napari_sedclassify.simulate import simulate_scan

    d = tmp_path_factory.mktemp("batch")
    sims = [simulate_scan(d / f"scan{i}.npy", scan_shape=(8, 8), detector_px=128, seed=20 + i) for i in range(4)]
    flat = str(sims[0].flatfield_path)
    model = train_model([s.scan.source for s in sims[:2]], [s.truth for s in sims[:2]], model="fcnn", flatfield=flat)
    save_model(model, d / "fcnn.sedmodel")
    return {"dir": d, "scans": [s.scan.source for s in sims[2:]] + [sims[0].scan.source], "flat": flat,
            "model": str(d / "fcnn.sedmodel"), "sims": sims}


@pytest.fixture(scope="module")
def client():
    """The batch runner's own LocalCluster with 2 single-threaded worker processes."""
    with dask_client(workers=2) as client:
        client.wait_for_workers(2)
        assert all(w["nthreads"] == 1 for w in client.scheduler_info()["workers"].values())
        yield client


@pytest.fixture(scope="module")
def single(data):
    """The single-process predictions (pipeline.predict.predict_scan, threads in this process)."""
    return {p: predict_scan(data["model"], p, flatfield=data["flat"]) for p in data["scans"]}


def _check_outputs(results, single):
    assert len(results) == len(single)
    for r in results:
        ref = single[r["source"]]
        cm = np.load(r["files"]["class_map_npy"])
        proba = np.load(r["files"]["probabilities"])
        assert np.array_equal(cm, ref.class_map)
        assert np.array_equal(proba, ref.probabilities, equal_nan=True)  # bit-identical
        assert (cm > 0).all()  # complete: every frame classified
        assert r["counts"] == {k: int((ref.class_map == c).sum()) for c, k in [(1, "carbon"), (2, "amorphous_ice"),
                                                                               (3, "crystalline_ice"), (4, "mixed")]}


def test_batch_predict_on_two_workers_is_identical_to_single_process(data, client, single, tmp_path):
    seen = []
    results = batch_predict(data["model"], data["scans"], tmp_path, flatfield=data["flat"], client=client,
                            chunk_frames=16, progress=lambda d, t: seen.append((d, t)))
    _check_outputs(results, single)
    assert seen[-1] == (3 * 64, 3 * 64)  # one progress over all scans, ending complete
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"{n}_{k}" for n in ("scan2", "scan3", "scan0")
        for k in ("classes.npy", "classes.tif", "probabilities.npy", "probabilities.json", "overlay.png",
                  "keep.csv"))


def test_tasks_carry_paths_not_pixels(data):
    """Every task of a distributed run refers to the scan file; no frame data travels in the graph."""
    import pickle

    from napari_sedclassify.io import open_scan

    scan = open_scan(data["scans"][0])
    blocks = scan.data.rechunk({0: 1, 1: -1}).to_delayed().ravel()
    sizes = [len(pickle.dumps(dict(b.dask))) for b in blocks]
    assert max(sizes) < 20_000 < 64 * 128 * 128 * 2 / 8  # a task is far smaller than the 8 frames it reads


def test_in_process_run_gives_the_same_files(data, single, tmp_path):
    results = batch_predict(data["model"], data["scans"], tmp_path, flatfield=data["flat"], workers=0)
    _check_outputs(results, single)


def test_existing_outputs_are_kept_without_force(data, client, tmp_path):
    marker = tmp_path / "scan2_classes.npy"
    marker.write_bytes(b"earlier result")
    with pytest.raises(FileExistsError, match="--force"):
        batch_predict(data["model"], data["scans"], tmp_path, flatfield=data["flat"], client=client)
    assert marker.read_bytes() == b"earlier result"
    assert sorted(os.listdir(tmp_path)) == ["scan2_classes.npy"]  # nothing written for any scan


def test_batch_preprocess_matches_single_process(data, client, tmp_path):
    outs = [tmp_path / f"{i}.h5" for i in range(len(data["scans"]))]
    results = batch_preprocess(data["scans"], outs, flatfield=data["flat"], client=client)
    assert [r["output"] for r in results] == [str(o) for o in outs]
    for path, out in zip(data["scans"], outs):
        ref = preprocess(path, None, flatfield=data["flat"])
        got = PreprocessResult.load(out)
        for name in ("centres", "ria", "ria_counts", "beam_found", "mask"):
            assert np.array_equal(getattr(got, name), getattr(ref, name), equal_nan=True), name
        assert np.array_equal(got.virtual["total"], ref.virtual["total"])


def test_cli_predict_on_a_scheduler_address(data, client, single, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["predict", data["model"], *data["scans"], "--out", str(out), "--flatfield", data["flat"],
                 "--scheduler", client.scheduler.address, "--json"]) == 0
    _check_outputs(json.loads(capsys.readouterr().out), single)
    assert main(["predict", data["model"], data["scans"][0], "--out", str(out), "--flatfield", data["flat"],
                 "--workers", "0"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["predict", data["model"], data["scans"][0], "--out", str(out), "--flatfield", data["flat"],
                 "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "cannot reach the dask scheduler" in capsys.readouterr().err


def test_cli_preprocess_on_a_scheduler_address(data, client, tmp_path, capsys):
    out = tmp_path / "pre.h5"
    assert main(["preprocess", data["scans"][0], "--flatfield", data["flat"], "--out", str(out),
                 "--scheduler", client.scheduler.address, "--json"]) == 0
    ref = preprocess(data["scans"][0], None, flatfield=data["flat"])
    assert np.array_equal(PreprocessResult.load(out).ria, ref.ria, equal_nan=True)


def test_a_worker_killed_mid_run_is_tolerated(data, client, single, tmp_path):
    """Kill one of the two worker processes while tasks are in flight: the scheduler re-runs its tasks
    on the other worker (and the one the nanny restarts); the outputs are complete and identical.
    (Last in this file: it leaves the cluster with a restarted worker.)"""
    pids = client.run(os.getpid)  # worker address -> process id
    victim = sorted(pids.values())[0]
    killed = []

    def progress(done, total):
        if done and not killed:  # the first chunk came back: the run is under way
            os.kill(victim, signal.SIGKILL)
            killed.append((done, total))

    results = batch_predict(data["model"], data["scans"], tmp_path, flatfield=data["flat"], client=client,
                            chunk_frames=4, progress=progress)
    assert killed and killed[0][0] < killed[0][1]  # killed mid-run
    deadline = time.time() + 30
    while victim in client.run(os.getpid).values() and time.time() < deadline:
        time.sleep(0.1)
    assert victim not in client.run(os.getpid).values()  # that worker process is gone
    _check_outputs(results, single)
