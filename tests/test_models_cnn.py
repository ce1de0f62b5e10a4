"""The CNN (Keras 3 on TensorFlow) on tiny simulated scans, its model file in safe mode, and the
spawned-process runner the napari widgets use for TensorFlow work."""

from __future__ import annotations

import threading
import zipfile

import numpy as np
import pytest

from models_helpers import majority_f1, predict_in_fresh_process, tiny_features, tiny_simulated, write_tiny_scans

#: Small and fast: about a second per epoch on 2 cores.
FAST = {"filters": (4, 8, 8), "max_epochs": 6, "patience": 3, "samples_per_epoch": 600, "batch_size": 64}


def _cnn_checks(tmp, progress=None, cancel=None):
    """In a fresh child process (TensorFlow must never load where napari draws, and other tests
    of this suite run napari viewers): train a tiny CNN, check what it learned, its architecture,
    its model file round trip and safe-mode refusal. Returns the hold-out weighted F1."""
    from pathlib import Path

    from napari_sedclassify.models.cnn import import_keras
    from napari_sedclassify.errors import ModelFileError
    from napari_sedclassify.models.persistence import load_model, read_metadata, save_model
    from napari_sedclassify.models.training import train

    tmp_path = Path(tmp)
    sims = tiny_simulated([0, 1, 2])
    feats, truths = tiny_features(sims, kinds=("cnn",)), [s.truth for s in sims]
    epochs = []
    model = train(feats, truths, kind="cnn", params=FAST, holdout=[2], seed=0,
                  progress=lambda e, logs: epochs.append((e, logs)))

    # learned behaviour on the held-out scan
    assert model.recipe.kind == "crop" and model.training["epochs"] == len(epochs) >= 1
    assert {"loss", "val_loss", "val_accuracy", "max_epochs"} <= set(epochs[0][1])
    f1 = model.metrics["holdout"]["A_2"]["weighted"]["f1"]
    assert f1 > 0.8 and f1 > majority_f1(truths[2]) + 0.2, f1
    X = feats[2].inputs(model.recipe)
    assert X.shape == (256, 48, 48)
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    est = model.estimator
    assert est.get_params()["filters"] == (4, 8, 8)
    # six convolution layers, each pair followed by pooling and dropout
    kinds = [type(layer).__name__ for layer in est.model_.layers]
    assert kinds.count("Conv2D") == 6 and kinds.count("MaxPooling2D") == 3 and kinds.count("Dropout") == 3

    # model file round trip
    path = save_model(model, tmp_path / "cnn.sedmodel")
    assert set(zipfile.ZipFile(path).namelist()) == {"model.json", "estimator.keras", "estimator.npz"}
    meta = read_metadata(path)
    assert meta["recipe"]["kind"] == "crop" and meta["recipe"]["crop_radius_A"] == 2.7 and "keras" in meta["versions"]
    np.testing.assert_array_equal(load_model(path, native=True).predict_proba(X), proba)  # Keras, safe mode

    # a network holding Python code (a Lambda layer) is refused in safe mode
    import json

    keras = import_keras()
    evil = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)])
    evil.save(tmp_path / "evil.keras")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp_path / "evil_arrays.sedmodel", "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, (tmp_path / "evil.keras").read_bytes() if name == "estimator.keras" else zin.read(name))
    with pytest.raises(ModelFileError, match="evil_arrays.sedmodel: the Keras network .* refused"):
        load_model(tmp_path / "evil_arrays.sedmodel", native=True)
    assert np.allclose(load_model(tmp_path / "evil_arrays.sedmodel").predict_proba(X), proba, atol=1e-4)  # arrays
    old = {**meta, "estimator": {k: v for k, v in meta["estimator"].items() if k != "arrays"}}
    with zipfile.ZipFile(tmp_path / "evil.sedmodel", "w") as zout:  # as written before the arrays
        zout.writestr("model.json", json.dumps(old))
        zout.write(tmp_path / "evil.keras", "estimator.keras")
    with pytest.raises(ModelFileError, match="evil.sedmodel: the Keras network .* refused"):
        load_model(tmp_path / "evil.sedmodel")
    return f1, str(path), X, proba


def test_cnn_learns_round_trips_and_refuses_unsafe_files(tmp_path):
    from napari_sedclassify.models.tf_process import run_in_process

    import sys

    from napari_sedclassify.models.arrays import ArrayClassifier
    from napari_sedclassify.models.persistence import load_model

    f1, path, X, proba = run_in_process(_cnn_checks, str(tmp_path))
    assert 0.8 < f1 <= 1.0
    # this process has no TensorFlow: the model file's arrays give Keras' probabilities
    model = load_model(path)
    assert isinstance(model.estimator, ArrayClassifier)
    got = model.predict_proba(X)
    np.testing.assert_allclose(got, proba, rtol=0, atol=1e-4)
    assert (got.argmax(1) == proba.argmax(1)).all() and len(np.unique(proba.argmax(1))) > 1
    assert not {"tensorflow", "keras"} & {m.split(".")[0] for m in sys.modules}


def _cnn_ensemble_checks(tmp, progress=None, cancel=None):
    """In a child: a CNN ensemble of 3 is one Keras network averaging its members, saved and
    loaded in safe mode; returns (ensemble, members' mean, reloaded) probabilities."""
    from pathlib import Path

    from napari_sedclassify.models.persistence import load_model, save_model
    from napari_sedclassify.models.training import train

    sims = tiny_simulated([0, 1])
    feats, truths = tiny_features(sims, kinds=("cnn",)), [s.truth for s in sims]
    model = train(feats, truths, kind="cnn", params={**FAST, "max_epochs": 2, "ensemble": 3}, seed=0)
    X = feats[1].inputs(model.recipe)
    members = [layer for layer in model.estimator.model_.layers if layer.name.startswith("member")]
    each = [np.asarray(m(X, training=False)) for m in members]
    path = save_model(model, Path(tmp) / "ensemble.sedmodel")
    back = load_model(path, native=True)  # safe mode
    arrays = load_model(path)  # numpy
    return (model.training["ensemble"], len(members), model.predict_proba(X), each, back.predict_proba(X),
            arrays.predict_proba(X), type(arrays.estimator).__name__)


def test_a_cnn_ensemble_is_one_safe_network_averaging_its_members(tmp_path):
    from napari_sedclassify.models.tf_process import run_in_process

    n, n_members, proba, each, back, arrays, kind = run_in_process(_cnn_ensemble_checks, str(tmp_path))
    assert n == n_members == 3 and not np.allclose(each[0], each[1], atol=1e-3)  # members differ
    np.testing.assert_allclose(proba, np.mean(each, axis=0), atol=1e-5)
    np.testing.assert_allclose(back, proba, atol=1e-6)
    assert kind == "ArrayClassifier"
    np.testing.assert_allclose(arrays, proba, rtol=0, atol=1e-4)  # the members averaged by numpy


def _square(x, progress=None, cancel=None):
    for i in range(3):
        progress(i + 1, {"loss": 1.0 / (i + 1), "max_epochs": 3})
    return x * x


def _wait_for_cancel(progress=None, cancel=None):
    import time

    progress(1, {"max_epochs": 1})
    while not cancel():
        time.sleep(0.05)
    from napari_sedclassify.errors import Cancelled

    raise Cancelled("stopped by the parent")


def _fail(progress=None, cancel=None):
    raise ValueError("bad input in the child")


def test_process_runner_passes_progress_results_errors_and_cancel():
    from napari_sedclassify.errors import Cancelled
    from napari_sedclassify.models.tf_process import WorkerProcessError, run_in_process

    seen = []
    assert run_in_process(_square, 7, progress=lambda e, logs: seen.append((e, logs["loss"]))) == 49
    assert seen == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    with pytest.raises(WorkerProcessError, match="ValueError: bad input in the child"):
        run_in_process(_fail)
    started = threading.Event()
    with pytest.raises(Cancelled, match="stopped by the parent"):
        run_in_process(_wait_for_cancel, progress=lambda e, logs: started.set(), cancel=started.is_set)


def _train_then_predict(scans, labels, out, flatfield, progress=None, cancel=None):
    """In the child: train a CNN model file, then predict the last scan with it."""
    from napari_sedclassify.pipeline.predict import predict_scan
    from napari_sedclassify.pipeline.train import train_to_file

    summary = train_to_file(scans, labels, out, model="cnn", params={**FAST, "max_epochs": 2}, flatfield=flatfield,
                            seed=1, progress=progress, cancel=cancel)
    pred = predict_scan(summary["path"], scans[-1], flatfield=flatfield)
    return summary, pred.probabilities


def _predict(model, scan, flatfield, progress=None, cancel=None):
    from napari_sedclassify.pipeline.predict import predict_scan

    return predict_scan(model, scan, flatfield=flatfield).probabilities


def test_cnn_trains_in_a_spawned_process_like_in_process(tmp_path):
    """Train a CNN through the runner (as the napari widget does); the child's predictions equal
    those of another fresh process loading the model file it wrote."""
    from napari_sedclassify.models.tf_process import run_in_process

    files = write_tiny_scans(tmp_path, [0])
    scans, labels, flat = [str(f[0]) for f in files], [str(f[1]) for f in files], str(files[0][2])
    epochs = []
    summary, child = run_in_process(_train_then_predict, scans, labels, str(tmp_path / "cnn.sedmodel"), flat,
                                    progress=lambda e, logs: epochs.append(e))
    assert epochs == list(range(1, summary["training"]["epochs"] + 1))
    here = run_in_process(_predict, summary["path"], scans[-1], flat)
    np.testing.assert_allclose(child, here, atol=1e-6)
    assert np.isfinite(here).all()


def test_predict_with_a_cnn_file_runs_without_tensorflow(tmp_path):
    """`sedclassify train --model cnn` (TensorFlow, its own process), then `sedclassify predict` with
    the file in a fresh process: the network is applied from the file's arrays, TensorFlow and
    Keras are never imported, and the scan it was trained on is classified."""
    import subprocess
    import sys

    (scan0, truth0, flat), (scan1, truth1, _) = write_tiny_scans(tmp_path, [0, 1])
    model = tmp_path / "cnn.sedmodel"
    train = subprocess.run([sys.executable, "-m", "napari_sedclassify.cli", "train", "--scans", str(scan0), str(scan1),
                            "--labels", str(truth0), str(truth1), "--model", "cnn", "--epochs", "3",
                            "--flatfield", str(flat), "--out", str(model)], capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr
    assert predict_in_fresh_process(model, scan1, tmp_path / "pred", ["--flatfield", flat],
                                    watch={"tensorflow", "keras"}) == (0, [])
    classes, truth = np.load(tmp_path / "pred" / f"{scan1.stem}_classes.npy"), np.load(truth1)
    assert classes.shape == truth.shape and set(np.unique(classes)) <= {1, 2, 3, 4}
    assert np.mean(classes[truth > 0] == truth[truth > 0]) > 0.5  # a scan it was trained on, 3 epochs
