"""Session 25: a job's large arrays (a scan's crops) reach the TensorFlow child through temporary
files it maps, not through one pickled message, so neither process holds a pickled copy of the
scan; probabilities stay the same to the bit; the files are removed however the job ends."""

from __future__ import annotations

import json
import os
import tracemalloc
import zipfile
from dataclasses import replace

import numpy as np
import pytest

from models_helpers import DETECTOR_PX, tiny_features, tiny_simulated

#: Tiny and quick: one epoch on a few hundred crops.
FAST = {"filters": (4, 8, 8), "max_epochs": 1, "patience": 1, "samples_per_epoch": 300, "batch_size": 64}


@pytest.fixture(scope="module")
def scans():
    """(16 x 16 ScanFeatures, its truth, 48 x 48 ScanFeatures: 2304 frames, five prediction blocks
    of 512), simulated and preprocessed as the other model tests do."""
    from napari_sedclassify.simulate import simulate_scan

    (small_sim,) = tiny_simulated([0])
    big_sim = simulate_scan(None, scan_shape=(48, 48), detector_px=DETECTOR_PX, session="A", seed=1)
    small, big = tiny_features([small_sim, big_sim], kinds=("cnn",))
    return small, small_sim.truth, big


@pytest.fixture
def job_folder(tmp_path, monkeypatch):
    """The folder run_in_process makes its temporary folders in (tempfile's own setting)."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _anon_mib() -> float:
    """This process's anonymous resident memory (MiB): what it cannot give back to the page cache."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024


def _memory_behind(array) -> str:
    """The type of the object that holds an array's data ("mmap": a mapped file)."""
    while isinstance(array, memoryview) or isinstance(array, np.ndarray) and array.base is not None:
        array = array.obj if isinstance(array, memoryview) else array.base
    return type(array).__name__


def _old_style_cnn_predictions(tmp, small, truth, big, progress=None, cancel=None):
    """In the child: train a tiny CNN, save it as a file without its arrays (as written before
    session 10: applied by Keras), classify ``big`` (arrived through the mapped files) through the
    usual block loop, and again from an in-memory copy of its crops (what the one-message path
    gave the child) and all frames at once."""
    from pathlib import Path

    from napari_sedclassify.models.inference import predict_scan
    from napari_sedclassify.models.persistence import load_model, needs_tensorflow, read_metadata, save_model
    from napari_sedclassify.models.training import train

    new = save_model(train([small], [truth], kind="cnn", params=FAST, seed=0), Path(tmp) / "new.sedmodel")
    old = Path(tmp) / "old.sedmodel"
    with zipfile.ZipFile(new) as zin, zipfile.ZipFile(old, "w") as zout:
        meta = json.loads(zin.read("model.json"))
        del meta["estimator"]["arrays"]
        zout.writestr("model.json", json.dumps(meta))
        zout.writestr("estimator.keras", zin.read("estimator.keras"))
    assert needs_tensorflow(read_metadata(old))
    model = load_model(old)
    streamed = predict_scan(model, big).probabilities
    in_memory = predict_scan(model, replace(big, crops=np.array(big.crops))).probabilities
    whole = model.predict_proba(big.inputs(model.recipe))
    order = [model.classes.ids.index(int(c)) for c in model.estimator.classes_]
    return streamed, in_memory, whole, order, _memory_behind(big.crops)


def test_an_old_style_cnn_gives_the_same_probabilities_from_mapped_crops(scans, tmp_path, job_folder):
    from napari_sedclassify.models.tf_process import run_in_process

    small, truth, big = scans
    streamed, in_memory, whole, order, memory = run_in_process(_old_style_cnn_predictions, str(tmp_path), small,
                                                               truth, big)
    assert memory == "mmap"  # the child's crops are the mapped file, not a copy it unpickled
    assert streamed.shape == (48, 48, len(order)) and np.isfinite(streamed).all()
    np.testing.assert_array_equal(streamed, in_memory)  # to the bit
    np.testing.assert_array_equal(streamed.reshape(-1, len(order))[:, order], whole)
    assert list(job_folder.iterdir()) == []


def _memory_and_files(features, folder, progress=None, cancel=None):
    """In the child: its anonymous memory (MiB), whether its crops can be written (as an unpickled
    copy could), and the files in the parent's temporary folder meanwhile."""
    from pathlib import Path

    features.crops[0, 0] += 1.0  # copy-on-write: the file the parent wrote stays as it is
    return _anon_mib(), bool(features.crops.flags.writeable), sorted(p.name for p in Path(folder).glob("*/*"))


def test_a_scans_crops_cross_to_the_child_without_a_pickled_copy(scans, job_folder):
    """The message through the pipe stays small: the parent's traced memory while sending and the
    child's anonymous memory do not grow by the crops' size (the one-message path held the pickle
    twice in the parent and the pickle and its unpickled arrays in the child)."""
    from napari_sedclassify.models.tf_process import run_in_process

    small, _, big = scans
    crops_mib = big.crops.nbytes / 2**20
    assert crops_mib > 40
    baseline, _, _ = run_in_process(_memory_and_files, small, str(job_folder))
    before = big.crops.copy()
    tracemalloc.start()
    try:
        child_mib, writeable, files = run_in_process(_memory_and_files, big, str(job_folder))
        _, parent_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parent_peak / 2**20 < 0.25 * crops_mib, (parent_peak / 2**20, crops_mib)
    assert child_mib - baseline < 0.5 * crops_mib, (child_mib, baseline, crops_mib)
    assert writeable and files == ["array0.bin"]
    np.testing.assert_array_equal(big.crops, before)
    assert list(job_folder.iterdir()) == []  # removed after success


def _wait_for_cancel(features, progress=None, cancel=None):
    import time

    from napari_sedclassify.errors import Cancelled

    progress(1, {})
    while not cancel():
        time.sleep(0.01)
    raise Cancelled("prediction cancelled")


def _die(features, progress=None, cancel=None):
    os._exit(3)


def test_the_temporary_files_go_after_a_cancel_and_a_dead_child(scans, job_folder):
    import threading

    from napari_sedclassify.errors import Cancelled
    from napari_sedclassify.models.tf_process import WorkerProcessError, run_in_process

    big = scans[2]
    started = threading.Event()
    with pytest.raises(Cancelled, match="^prediction cancelled$"):
        run_in_process(_wait_for_cancel, big, progress=lambda n, logs: started.set(), cancel=started.is_set)
    assert list(job_folder.iterdir()) == []
    with pytest.raises(Cancelled, match="^_wait_for_cancel cancelled before it started$"):
        run_in_process(_wait_for_cancel, big, cancel=lambda: True)
    assert list(job_folder.iterdir()) == []
    with pytest.raises(WorkerProcessError, match=r"^the worker process for _die died without a result \(exit code 3\)$"):
        run_in_process(_die, big)
    assert list(job_folder.iterdir()) == []
