"""A model that reads each frame on its own, applied to a scan taken at a much shorter camera length
(session 25): the detector's share of every frame (the direct beam's disc, halo and point spread,
the stray counts) is fixed in detector µm, so in q it spans 1/(λL) and moves the radial profiles
out of the range the model learned. The SVM trained at 900 mm called 240 of 256 frames of a 200 mm
scan crystalline, with no warning: now the prediction says why its class map can be wrong.

Simulated scans (napari_sedclassify.simulate), real preprocessing and scikit-learn."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_sedclassify.models.persistence import builtin_model_path, camera_length_warning, load_model
from napari_sedclassify.pipeline.predict import predict_scan
from napari_sedclassify.pipeline.train import train_model
from napari_sedclassify.simulate import simulate_scan
from napari_sedclassify.simulate.params import session_params


def _at(camera_length_mm: float):
    return dataclasses.replace(session_params("A"), camera_length_mm=camera_length_mm,
                               nominal_camera_length_mm=camera_length_mm)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Three 128 px scans at 900 mm to train on, a held-out one of the same geometry, and a 512 px
    scan at 200 mm (0.011 Å⁻¹ per px)."""
    d = tmp_path_factory.mktemp("camera_length")
    train = [simulate_scan(d / f"train{i}.npy", scan_shape=(16, 16), detector_px=128, seed=i) for i in range(3)]
    held = simulate_scan(d / "held.npy", scan_shape=(16, 16), detector_px=128, seed=10)
    short = simulate_scan(d / "short.npy", scan_shape=(12, 12), detector_px=512, session=_at(200.0), seed=11)
    return train, held, short


@pytest.fixture(scope="module")
def svm(scans):
    train = scans[0]
    return train_model([s.path for s in train], [s.truth for s in train], model="svm",
                       flatfield=[s.flatfield_path for s in train], seed=0)


def _predict(model, sim):
    pred = predict_scan(model, sim.path, flatfield=sim.flatfield_path)
    return pred, float((pred.class_map == sim.truth).mean())


def test_short_camera_length_warns_naming_scan_model_and_cause(svm, scans):
    _, _, short = scans
    pred, accuracy = _predict(svm, short)
    camera = [w for w in pred.warnings if "camera length" in w]
    assert len(camera) == 1, pred.warnings
    text = camera[0]
    assert str(short.path) in text and svm.name in text
    assert "200 mm" in text and "900 mm" in text and "4.5x shorter" in text and "detector µm" in text
    assert "--session-robust" in text
    # the warning is there because the class map really is off the simulator's truth here
    assert accuracy < 0.8


def test_training_geometry_unchanged_and_silent(svm, scans):
    _, held, _ = scans
    pred, accuracy = _predict(svm, held)
    assert not [w for w in pred.warnings if "camera length" in w]
    assert accuracy > 0.85  # the held-out scan of the training geometry is classified as before


def test_models_reading_frames_against_their_scan_are_not_warned(svm, scans):
    """A scan context (session-robust RIA recipes, CNN crops against the scan's ends) cancels what the
    detector adds to every frame of the scan."""
    g = scans[2].geometry
    assert camera_length_warning(svm, g) is not None
    assert camera_length_warning(dataclasses.replace(svm, recipe=svm.recipe.replace(scan_context=6)), g) is None


def test_builtin_model_card_gives_the_training_camera_length():
    """Model files written before session 25 carry the training geometry the check reads (here the
    built-in model's, 915 mm fitted): a 200 mm scan is warned about, a 900 mm one is not."""
    builtin = load_model(builtin_model_path())
    near = simulate_scan(None, scan_shape=(2, 2), detector_px=128, seed=0).geometry
    far = near.replace(camera_length_mm=200.0)
    assert camera_length_warning(builtin, near, "scan.npy") is None
    text = camera_length_warning(builtin, far, "scan.npy")
    assert text.startswith("scan.npy: ") and "built-in model" in text and "4.6x shorter" in text
    longer = near.replace(camera_length_mm=float(np.round(915 * 1.6)))
    assert "1.6x longer" in camera_length_warning(builtin, longer)
