"""Edges a new user met (session 22): a calibration ring near the end of the radial profile, an SVM
trained with a class of very few labeled frames, an empty scan, frames with a negative pedestal
(dark-subtracted or signed exports) and a prediction where many frames have no beam, and the
geometry hint of a refused model for Python users. All on simulated scans."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sedclassify.cli import main
from napari_sedclassify.errors import CalibrationError, IncompatibleModelError
from napari_sedclassify.io import open_scan
from napari_sedclassify.pipeline.calibrate import calibrate
from napari_sedclassify.pipeline.predict import predict_scan
from napari_sedclassify.pipeline.preprocess import preprocess
from napari_sedclassify.processing.centre import CentreFinder
from napari_sedclassify.scan import Scan
from napari_sedclassify.simulate import SessionParams, simulate_scan

TRUE_MM = 600.0  # a short camera length: amorphous carbon's 1.21-Å ring lies near the end of a 256 px detector


@pytest.fixture(scope="module")
def short_camera(tmp_path_factory):
    """A 256 px scan recorded at 600 mm whose file says 650 mm (8 % off)."""
    path = tmp_path_factory.mktemp("edges") / "short.npy"
    session = SessionParams(name="edges", camera_length_mm=TRUE_MM, nominal_camera_length_mm=650.0)
    simulate_scan(path, scan_shape=(10, 10), detector_px=256, session=session, seed=3)
    return path


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory):
    """An 8 x 8 scan on 256 px (session A), its truth and the session's flat-field."""
    path = tmp_path_factory.mktemp("small") / "small.npy"
    sim = simulate_scan(path, scan_shape=(8, 8), detector_px=256, seed=0)
    return path, sim.truth, path.parent / "flatfield_A.npy"


def test_a_ring_near_the_profile_end_is_searched_as_far_as_the_profile_reaches(short_camera):
    # searched ±15 % with room for the background, the 1.21-Å ring at 650 mm would need the
    # profile beyond its end; it was refused although it lies inside the profile
    cal = calibrate(short_camera, ring=1.21)
    assert abs(cal.camera_length_mm / TRUE_MM - 1) < 0.01
    assert cal.window_px[1] <= cal.ring_radius_px * 1.5


def test_a_ring_outside_a_search_cut_short_says_what_was_searched(short_camera):
    # at 710 mm the ring lies 16 % inside where the camera length puts it: outside the search,
    # which the profile's end cut short outwards; the message says so (not that the profile is too short)
    scan = open_scan(short_camera, geometry={"camera_length_mm": 710.0})
    with pytest.raises(CalibrationError) as err:
        calibrate(scan, ring=1.21)
    msg = str(err.value)
    assert "-15% to +" in msg and "the RIA ending at" in msg and "or beyond" not in msg
    assert str(short_camera) in msg


def _labels_with(truth, cls, n):
    """The true class map with class ``cls`` kept on its first ``n`` frames only (the rest: mixed)."""
    lab = truth.copy()
    where = np.flatnonzero(lab.ravel() == cls)
    assert len(where) > n
    lab.ravel()[where[n:]] = 4
    return lab


def test_svm_trains_with_a_class_of_two_labeled_frames(small_scan, tmp_path, capsys):
    path, truth, flat = small_scan
    labels = tmp_path / "labels.npy"
    np.save(labels, _labels_with(truth, 3, 2))
    out = tmp_path / "m.sedmodel"
    assert main(["train", "--scans", str(path), "--labels", str(labels), "--flatfield", str(flat),
                 "--model", "svm", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "crystalline_ice (1)" in err  # the rare-class warning (one frame is held out for validation)
    pred = predict_scan(out, path, flatfield=flat)
    assert np.allclose(pred.probabilities.sum(axis=-1)[pred.class_map > 0], 1.0, atol=1e-5)


def test_svm_refuses_a_class_of_one_labeled_frame_by_name(small_scan, tmp_path, capsys):
    path, truth, flat = small_scan
    labels = tmp_path / "labels.npy"
    np.save(labels, _labels_with(truth, 3, 1))
    code = main(["train", "--scans", str(path), "--labels", str(labels), "--flatfield", str(flat),
                 "--model", "svm", "--out", str(tmp_path / "m.sedmodel")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    line = [ln for ln in err.splitlines() if "error" in ln][-1]
    assert "crystalline_ice: 1 labeled frame" in line and "small" in line and "n_splits" not in line


@pytest.mark.parametrize("shape", [(0, 0, 256, 256), (0, 4, 16, 16), (3, 3, 0, 0)])
def test_an_empty_scan_is_refused(shape):
    with pytest.raises(ValueError, match="empty"):
        Scan(np.zeros(shape, np.uint16), source="empty.npy")


def test_frames_with_a_negative_pedestal_find_their_beam(small_scan):
    path, _, _ = small_scan
    raw = np.load(path)
    frames = raw.reshape(-1, *raw.shape[2:]).astype(np.float32)
    finder = CentreFinder(beam_radius_px=2.6)
    plain, shifted = finder.process_chunk(frames), finder.process_chunk(frames - 100)
    assert plain["beam_found"].all()
    np.testing.assert_array_equal(shifted["beam_found"], plain["beam_found"])
    np.testing.assert_array_equal(shifted["centre"], plain["centre"])
    # the whole preprocessing of an int32 scan with the pedestal subtracted
    geometry = open_scan(path).geometry
    result = preprocess(Scan(raw.astype(np.int32) - 100, geometry))
    assert result.beam_found.all()


def test_a_prediction_says_how_many_frames_had_no_beam(small_scan, tmp_path, capsys):
    path, _, flat = small_scan
    frames = np.load(path)
    frames[2:4] = 0  # the beam blanked for two scan rows
    blanked = tmp_path / "blanked.npy"
    np.save(blanked, frames)
    (tmp_path / "blanked.json").write_text(path.with_suffix(".json").read_text())
    pred = predict_scan("builtin", blanked, flatfield=flat)
    lost = int((pred.class_map == 0).sum())
    assert lost == 16
    said = [w for w in pred.warnings if "no direct beam found" in w]
    assert len(said) == 1 and f"{lost} of 64 frames" in said[0] and "class 0" in said[0]
    assert not any("no direct beam" in w for w in predict_scan("builtin", path, flatfield=flat).warnings)
    assert main(["predict", "builtin", str(blanked), "--flatfield", str(flat), "--out", str(tmp_path / "p")]) == 0
    assert f"{lost} of 64 frames: no direct beam found" in capsys.readouterr().err


def test_a_refused_model_names_the_python_form_of_the_flags(small_scan, tmp_path):
    path, _, _ = small_scan
    bare = tmp_path / "bare.npy"  # no sidecar: every calibration value assumed
    np.save(bare, np.load(path))
    with pytest.raises(IncompatibleModelError) as err:
        predict_scan("builtin", bare)
    msg = str(err.value)
    assert "--camera-length MM" in msg and "--voltage KV" in msg
    assert 'open_scan(path, geometry={' in msg and '"camera_length_mm"' in msg and '"voltage_kv"' in msg


def test_fcnn_calibrates_with_a_few_validation_frames_per_class(tmp_path):
    """An 8x8 scan: some classes have 2-4 validation frames. The FCNN's temperature was skipped
    below 5 per class (scikit-learn's 5 calibration folds), leaving raw softmax outputs; it is now
    fitted on the validation frames in one piece."""
    from napari_sedclassify.models.fcnn import FCNNClassifier
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.simulate import simulate_scan

    sim = simulate_scan(None, scan_shape=(12, 12), detector_px=64, seed=4)
    result = preprocess(sim.scan, None, flatfield=sim.flatfield)
    X = np.log1p(np.nan_to_num(result.ria.reshape(144, -1)))  # the profiles as features
    y = np.ravel(sim.truth)
    rng = np.random.default_rng(0)
    val = np.zeros(y.size, bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        val[rng.choice(idx, size=min(3, idx.size // 2), replace=False)] = True
    assert np.unique(y[val], return_counts=True)[1].min() < 5
    model = FCNNClassifier(max_epochs=20).fit(X[~val], y[~val], validation_data=(X[val], y[val]))
    assert model.history_[-1]["temperature"] is not None
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
