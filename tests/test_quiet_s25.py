"""What reaches the user's terminal (session 25): TensorFlow's start-up notices (absl's "All log
messages before absl::InitializeLog()" and "oneDNN custom operations are on", printed while
TensorFlow loads whatever TF_CPP_MIN_LOG_LEVEL says) are kept off stderr, in the CLI's process and in
the child process the napari widgets use, while errors still come through; and `sedclassify watch`
refusing an acquisition once its header is read prints that refusal alone, no empty progress bar.
TensorFlow loads only in subprocesses here."""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
import sys
import threading

import pytest

from napari_sedclassify.cli import main
from napari_sedclassify.simulate import simulate_scan

NOTICES = ("oneDNN", "absl::InitializeLog")


def test_cnn_training_on_the_command_line_prints_no_tensorflow_notices(tmp_path):
    from napari_sedclassify.simulate.simulation import sidecar_paths

    scan = tmp_path / "scan.npy"
    simulate_scan(scan, scan_shape=(12, 12), detector_px=64, seed=1)
    done = subprocess.run([sys.executable, "-m", "napari_sedclassify.cli", "train", "--scans", str(scan),
                           "--labels", str(sidecar_paths(scan)["truth"]), "--model", "cnn", "--epochs", "1",
                           "--out", str(tmp_path / "cnn.sedmodel")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not [line for line in done.stderr.splitlines() if any(n in line for n in NOTICES)], done.stderr
    assert "train: 100%" in done.stderr  # the bars still come through
    assert re.fullmatch(r"sedclassify train: [\d.]+ s, 144 frames, \d+ frames/s", done.stderr.splitlines()[-1])


RAISING_JOB = '''
def fails(progress=None, cancel=None):
    from napari_sedclassify.models.cnn import import_keras

    import_keras()
    raise ValueError("the job's own error")
'''


def test_a_child_that_loaded_tensorflow_still_reports_its_errors_and_no_notices(tmp_path, monkeypatch, capfd):
    """A spare child preloading Keras (as the napari widgets start one for a CNN) and a module
    that does not exist: the failed preload is still said on stderr, the job's exception still
    reaches the caller with the child's traceback, and no TensorFlow notice is printed."""
    from napari_sedclassify.models import tf_process

    (tmp_path / "quiethelper.py").write_text(RAISING_JOB)
    monkeypatch.syspath_prepend(str(tmp_path))
    fails = importlib.import_module("quiethelper").fails
    warm = ("keras", "no_such_module_s25")
    try:
        tf_process.prestart(warm)
        with pytest.raises(tf_process.WorkerProcessError) as raised:
            tf_process.run_in_process(fails, warm=warm)
    finally:
        tf_process.stop_spares()
    message = str(raised.value)
    assert message.startswith("ValueError: the job's own error")
    assert "--- in the worker process ---" in message and 'raise ValueError("the job\'s own error")' in message
    err = capfd.readouterr().err
    assert "preloading no_such_module_s25 failed: ModuleNotFoundError" in err
    assert not any(n in err for n in NOTICES), err


def test_watch_refusing_an_acquisition_once_its_header_is_read_prints_the_refusal_alone(tmp_path, capsys):
    """A model whose beam radius (100 px) a 64 px detector cannot hold: the refusal comes once the
    .mib's first header is read; before, an empty "watch: 0frame" bar was drawn above it."""
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.acquisition import Acquisition
    from napari_sedclassify.pipeline.train import train_model

    train = simulate_scan(tmp_path / "train.npy", scan_shape=(8, 8), detector_px=64, seed=40)
    model = train_model([train.scan.source], [train.truth], model="fcnn", params={"max_epochs": 2})
    wide = tmp_path / "wide.sedmodel"
    save_model(dataclasses.replace(model, preprocess={**model.preprocess, "beam_radius_px": 100.0}), wide)
    sim = simulate_scan(scan_shape=(8, 8), detector_px=64, seed=3)
    target = tmp_path / "acq.mib"
    release = threading.Event()
    writer = Acquisition(sim.scan, target, rate_hz=500.0, hold=lambda k: k >= 2 and not release.is_set())
    writer.start()
    g = sim.geometry
    try:
        rc = main(["watch", str(wide), "--input", str(target), "--timeout", "60", "--out", str(tmp_path / "out"),
                   "--pixel-size", str(g.pixel_size_um), "--camera-length", str(g.camera_length_mm),
                   "--voltage", str(g.voltage_kv)])
    finally:
        release.set()
        writer.join()
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.splitlines()) == 1, repr(err)
    assert err.rstrip("\n").endswith(f"{target}: direct-beam radius 100 px (beam_radius_px=100, --beam-radius 100) "
                                     "must be at most 32 px (half the 64 x 64 px detector)"), err
