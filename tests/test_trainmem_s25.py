"""Session 25: CNN training memory, and the camera-length range of a model's training scans.

Training a CNN on a 256 x 256 scan peaked at 3.5 GiB of anonymous memory in the TensorFlow child:
``models.training.train`` concatenated every labeled frame's crop input (and the raw crops it was
resampled from) into one array, and the CNN's standardisation took ``X.var`` over it, each a
temporary as large as the inputs. Now the inputs are made a block of frames at a time into one
array (over a temporary file when large) and the mean and variance are summed in blocks.

The model card recorded only the first training scan's geometry, so the camera-length warning
compared a scan with one training camera length even for a model trained at several; the card now
lists every training scan's camera length and voltage and the warning names their range.

Simulated scans (napari_sedclassify.simulate), real preprocessing, scikit-learn, and TensorFlow
only in a spawned child (``models.tf_process.run_in_process``)."""

from __future__ import annotations

import dataclasses
import json
import tracemalloc
import zipfile

import numpy as np
import pytest

from napari_sedclassify.models.cnn import mean_var
from napari_sedclassify.models.persistence import camera_length_warning, load_model, save_model
from napari_sedclassify.pipeline.train import train_model
from napari_sedclassify.simulate import simulate_scan
from napari_sedclassify.simulate.params import session_params

FAST = {"filters": (4, 8, 8), "max_epochs": 1, "patience": 1, "samples_per_epoch": 300, "batch_size": 64}

# ---- CNN training memory ------------------------------------------------------------------------


def _train_traced(small_blocks: bool, progress=None, cancel=None):
    """In the child: a simulated 32 x 32 scan (128 px frames) tiled to 64 x 64, its CNN trained
    (one short epoch) under tracemalloc. small_blocks: inputs made 64 frames at a time, kept in memory
    up to 1 MiB, statistics read 1 MiB at a time; else all at once, in memory (the unbounded
    computation). Returns (peak traced bytes during training, bytes of the training inputs, the
    network's arrays, its probabilities on the scan's first 256 frames)."""
    from dataclasses import replace

    from models_helpers import tiny_features

    from napari_sedclassify.models import cnn, training
    from napari_sedclassify.simulate import simulate_scan

    sim = _SIMULATED.get("scan") or _SIMULATED.setdefault(
        "scan", simulate_scan(None, scan_shape=(32, 32), detector_px=128, session="A", seed=0))
    (feats,) = tiny_features([sim], kinds=("cnn",))
    tile = lambda a: np.ascontiguousarray(np.tile(a, (2, 2) + (1,) * (a.ndim - 2)))  # noqa: E731
    feats, truth = replace(feats, missing=tile(feats.missing), ria=None, crops=tile(feats.crops)), tile(sim.truth)
    big = 2**40
    training.INPUT_BLOCK_FRAMES = 64 if small_blocks else big
    training.RANK_IN_MEMORY_BYTES = 2**20 if small_blocks else big
    cnn.STATS_BLOCK_BYTES = 2**20 if small_blocks else big
    cnn.import_keras()  # TensorFlow's own import is not what is measured
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    model = training.train([feats], [truth], kind="cnn", params=FAST, seed=0)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    inputs_bytes = model.training["n_train_inputs"] * 48 * 48 * 4
    X = feats.inputs(model.recipe, np.arange(256))
    return peak, inputs_bytes, model.estimator.model_.get_weights(), model.predict_proba(X)


_SIMULATED: dict = {}  # in the child: the scan, simulated once for both runs


def _train_traced_both(progress=None, cancel=None):
    """In one child (one TensorFlow start, one simulated scan): :func:`_train_traced` in blocks,
    then all at once."""
    return _train_traced(True), _train_traced(False)


@pytest.fixture(scope="module")
def cnn_runs():
    from napari_sedclassify.models.tf_process import run_in_process

    return run_in_process(_train_traced_both)


def test_cnn_training_memory_stays_a_fraction_of_its_inputs(cnn_runs):
    (peak, inputs_bytes, _, _), (unbounded_peak, _, _, _) = cnn_runs
    assert inputs_bytes > 50 * 2**20  # 2 x 3.7k crops of 48 x 48 float32: the frames and their copies
    # before: the inputs, their concatenation and the variance's temporary, and the raw crops
    # copied for them, 2-4x the inputs' size
    assert unbounded_peak > inputs_bytes
    assert peak < 0.3 * inputs_bytes, (peak / 2**20, inputs_bytes / 2**20)


def test_cnn_trained_in_blocks_is_the_network_trained_at_once(cnn_runs):
    (_, _, weights, proba), (_, _, ref_weights, ref_proba) = cnn_runs
    assert len(weights) == len(ref_weights)
    for w, r in zip(weights, ref_weights):  # the standardisation's mean and variance first
        np.testing.assert_allclose(w, r, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(proba, ref_proba, atol=1e-6)


def test_standardisation_summed_in_blocks_equals_numpy():
    rng = np.random.default_rng(0)
    X = rng.gamma(2.0, 3.0, (2000, 48, 48, 3)).astype(np.float32)  # 53 MiB
    tracemalloc.start()
    mean, var = mean_var(X, per_channel=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    exact = X.astype(np.float64)
    np.testing.assert_allclose(mean, exact.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(var, exact.var(axis=(0, 1, 2)), rtol=1e-12)
    one = X[..., :1]
    np.testing.assert_allclose(mean_var(one), (exact[..., 0].mean(), exact[..., 0].var()), rtol=1e-12)
    assert peak < 0.4 * X.nbytes  # X.var made a temporary as large as X


# ---- the camera-length range of the training scans -----------------------------------------------


def _at(camera_length_mm: float):
    return dataclasses.replace(session_params("A"), camera_length_mm=camera_length_mm,
                               nominal_camera_length_mm=camera_length_mm)


@pytest.fixture(scope="module")
def two_camera_lengths(tmp_path_factory):
    """An FCNN trained on two 128 px scans, at 600 and 900 mm, saved; the model and its file."""
    d = tmp_path_factory.mktemp("camera_range")
    sims = [simulate_scan(d / f"at{mm}.npy", scan_shape=(12, 12), detector_px=128, session=_at(mm), seed=i)
            for i, mm in enumerate((600.0, 900.0))]
    model = train_model([s.path for s in sims], [s.truth for s in sims], model="fcnn",
                        flatfield=[s.flatfield_path for s in sims], seed=0)
    return load_model(save_model(model, d / "two.sedmodel")), sims[0].geometry


def test_warning_compares_with_the_range_of_the_training_camera_lengths(two_camera_lengths):
    model, g600 = two_camera_lengths
    train = [s for s in model.training["scans"] if s["role"] == "train"]
    assert sorted(s["camera_length_mm"] for s in train) == [600.0, 900.0]
    assert camera_length_warning(model, g600.replace(camera_length_mm=750.0)) is None
    assert camera_length_warning(model, g600.replace(camera_length_mm=1100.0)) is None  # 1.2x 900 mm
    text = camera_length_warning(model, g600.replace(camera_length_mm=300.0), "scan.npy")
    assert text.startswith("scan.npy: ") and "(600-900 mm, 200 kV)" in text and "2.0x shorter" in text
    assert "1.6x longer" in camera_length_warning(model, g600.replace(camera_length_mm=1440.0))


def test_old_model_card_without_the_range_uses_its_geometry(two_camera_lengths, tmp_path):
    """A model file written before session 25 lists no camera lengths: its card's geometry (the first
    training scan's, 600 mm) is what the warning compares with, as before."""
    model, g600 = two_camera_lengths
    old = tmp_path / "old.sedmodel"
    with zipfile.ZipFile(model.source) as zin, zipfile.ZipFile(old, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "model.json":
                meta = json.loads(data)
                for s in meta["training"]["scans"]:
                    s.pop("camera_length_mm", None), s.pop("voltage_kv", None)
                data = json.dumps(meta)
            zout.writestr(name, data)
    old_model = load_model(old)
    assert old_model.geometry.camera_length_mm == 600.0
    assert camera_length_warning(old_model, g600.replace(camera_length_mm=750.0)) is None
    text = camera_length_warning(old_model, g600.replace(camera_length_mm=1100.0))
    assert "(600 mm, 200 kV)" in text and "1.8x longer" in text
