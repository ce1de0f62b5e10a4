"""The Qt-free session model the widgets observe (pipeline/session.py): results kept under the
inputs they were made from, reused and never recomputed, stale when an input changes, events."""

from __future__ import annotations

import numpy as np

from napari_sedclassify.pipeline.preprocess import preprocess
from napari_sedclassify.pipeline.session import ScanSession
from napari_sedclassify.processing import FlatField, PreprocessParams


def test_results_follow_their_inputs(disk_scan):
    session = ScanSession(disk_scan)
    seen = []
    session.subscribe(seen.append)
    assert session.result() is None and session.latest_result is None
    params = PreprocessParams(workers=1)
    first = preprocess(disk_scan, params)
    session.store_result(first)
    assert session.result() is first and session.result(params) is first
    assert session.result(PreprocessParams(workers=1, ria_bin_px=2.0)) is None  # other parameters: not made
    flat = FlatField.identity(disk_scan.detector_shape)
    session.set_flatfield(flat)
    assert session.result() is None and session.latest_result is first  # made without it: stale, kept
    second = preprocess(disk_scan, params, flat)
    session.store_result(second)
    assert session.result() is second
    session.set_flatfield(None)  # back to the first inputs: the first result again, nothing recomputed
    assert session.result() is first and session.result(params) is first
    assert seen == ["result", "flatfield", "result", "flatfield"]


def test_geometry_change_carries_px_results_and_drops_those_in_angstrom(disk_scan):
    calibrated = disk_scan.geometry.with_values("user", pixel_size_um=55.0, camera_length_mm=900.0, voltage_kv=200.0)
    disk_scan.geometry = calibrated
    session = ScanSession(disk_scan)
    in_px = preprocess(disk_scan, PreprocessParams(workers=1))
    session.store_result(in_px)
    seen = []
    session.subscribe(seen.append)
    longer = calibrated.with_values("fitted", camera_length_mm=950.0)
    assert session.set_geometry(longer) == []
    assert disk_scan.geometry == longer
    carried = session.result()
    assert carried is not None and carried.geometry == longer
    np.testing.assert_array_equal(carried.ria, in_px.ria)  # the RIAs in px stay, their q axis follows
    in_angstrom = preprocess(disk_scan, PreprocessParams(workers=1, bf_d_A=20.0))
    session.store_result(in_angstrom)
    assert session.set_geometry(calibrated) == ["bf_d_A"]
    assert session.result(in_angstrom.params) is None  # made for the old q axis: dropped
    assert session.result(in_px.params) is not None
    assert seen == ["geometry", "result", "geometry"]


def test_prediction_holds_while_its_preprocessing_holds(disk_scan):
    """A prediction is kept with the model file and the preprocessing result it came from: it is the
    session's prediction while that result holds, and goes stale (kept for the record, not served)
    when the flat-field or the geometry changes; going back to the old inputs serves it again."""
    session = ScanSession(disk_scan)
    seen = []
    session.subscribe(seen.append)
    labels = np.zeros(disk_scan.scan_shape, np.uint8)
    labels[0] = 2
    session.set_labels(labels)
    assert session.labels is labels
    user = preprocess(disk_scan, PreprocessParams(workers=1))
    session.store_result(user)
    models = PreprocessParams(workers=1, ria_bin_px=2.0)  # the model's own preprocessing
    made = preprocess(disk_scan, models)
    prediction = {"class_map": np.ones(disk_scan.scan_shape, np.uint8)}
    session.store_prediction(prediction, "/models/a.sedmodel", made)
    assert session.prediction is prediction and session.stale_prediction is None
    assert session.model == "/models/a.sedmodel"
    assert session.latest_result is user  # the model's pass is kept for reuse, not shown as the user's
    assert session.result(models) is made  # reused by the next classification, not recomputed
    flat = FlatField.identity(disk_scan.detector_shape)
    session.set_flatfield(flat)
    assert session.prediction is None and session.stale_prediction is prediction
    session.set_flatfield(None)
    assert session.prediction is prediction
    longer = disk_scan.geometry.with_values("user", camera_length_mm=disk_scan.geometry.camera_length_mm * 1.1)
    session.set_geometry(longer)  # a new q axis: a model applies another plan, so the prediction is stale
    assert session.prediction is None and session.stale_prediction is prediction
    session.clear_prediction()
    assert session.stale_prediction is None
    assert seen == ["labels", "result", "prediction", "flatfield", "flatfield", "geometry", "prediction"]


def test_a_models_short_profile_is_not_offered_as_the_scans_preprocessing(disk_scan):
    """A model's own pass stops the radial profile where the model stops reading it: it is reused
    for that model (asked for by its parameters) but not offered, without parameters, to what
    reads the whole profile (RIA plots, proposals); a full pass is, once there is one."""
    session = ScanSession(disk_scan)
    models = PreprocessParams(workers=1, ria_r_max_px=20.0)
    made = preprocess(disk_scan, models)
    session.store_prediction({"class_map": np.ones(disk_scan.scan_shape, np.uint8)}, "/models/a.sedmodel", made)
    assert session.result(models) is made
    assert session.result() is None
    full = preprocess(disk_scan, PreprocessParams(workers=1, ria_bin_px=2.0))
    session.store_prediction({"class_map": np.ones(disk_scan.scan_shape, np.uint8)}, "/models/b.sedmodel", full)
    assert session.result() is full
    # a model whose pass would stop the profile at 15 px takes the full pass made with its other parameters
    assert session.result_for(PreprocessParams(workers=1, ria_bin_px=2.0, ria_r_max_px=15.0)) is full
    assert session.result_for(models) is made
    assert session.result_for(PreprocessParams(workers=1, ria_bin_px=3.0, ria_r_max_px=15.0)) is None
    # a pass whose profile stops short of another's reach does not serve it; one reaching farther
    # does, the one reaching least far first
    assert session.result_for(PreprocessParams(workers=1, ria_r_max_px=25.0)) is None
    assert session.result_for(PreprocessParams(workers=1, ria_r_max_px=12.0)) is made
    farther = preprocess(disk_scan, PreprocessParams(workers=1, ria_r_max_px=30.0))
    session.store_result(farther, latest=False)
    assert session.result_for(PreprocessParams(workers=1, ria_r_max_px=25.0)) is farther
    assert session.result_for(PreprocessParams(workers=1, ria_r_max_px=12.0)) is made


def test_a_result_made_without_a_flatfield_stays_without_one_when_one_is_loaded_meanwhile(disk_scan):
    """A job passes what it used: a pass made WITHOUT a flat-field (None) while the user loaded one
    is kept under None, so it is not current for the new flat-field (stale), and a prediction made
    from it is stale at once (h3 bug 2)."""
    session = ScanSession(disk_scan)
    params = PreprocessParams(workers=1)
    made = preprocess(disk_scan, params)  # the job started with no flat-field
    flat = FlatField.identity(disk_scan.detector_shape)
    session.set_flatfield(flat)  # loaded while the job ran
    session.store_result(made, flatfield=None)
    assert session.result() is None and session.result(params) is None
    assert session.latest_result is made
    prediction = {"class_map": np.ones(disk_scan.scan_shape, np.uint8)}
    session.store_prediction(prediction, "/models/a.sedmodel", made, flatfield=None)
    assert session.prediction is None and session.stale_prediction is prediction
    session.set_flatfield(None)  # back to what they were made with: current again
    assert session.result() is made and session.prediction is prediction
