"""Session 24, napari: what driving the widgets as a microscopist does (two scans open at once,
files the project did not make, odd scans) found: results of one scan shown or exported as
another's, engine advice for Python or the command line in napari's messages."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sedclassify._napari.layers import scan_layer_data
from napari_sedclassify._napari.state import session_of

PLUGIN = "napari-sedclassify"
simulate = pytest.importorskip("napari_sedclassify.simulate")


def add_scan(viewer, scan, name):
    from napari_sedclassify.processing.virtual import virtual_image

    data, kwargs, _ = scan_layer_data(scan, np.asarray(virtual_image(scan), np.float32))
    return viewer.add_image(data, **{**kwargs, "name": name})


def wait(qtbot, job, timeout_ms=120000):
    assert job is not None and hasattr(job, "done"), job
    qtbot.waitUntil(lambda: job.done, timeout=timeout_ms)
    assert job.outcome == "done", job.error


def sim(shape, seed):
    """A small simulated scan (128 px detector, geometry stated as the simulator recorded it)."""
    return simulate.simulate_scan(scan_shape=shape, detector_px=128, seed=seed).scan


def test_exports_and_counts_follow_the_scan_chosen_in_the_prediction_widget(make_napari_viewer, qtbot, tmp_path):
    """Scan A classified, then scan B opened (the widget's scan box takes B): Export class map must
    not write A's class map as if it were B's, and the counts shown are not A's; once B is classified
    its own map is exported, and choosing A again exports A's (with A's counts)."""
    viewer = make_napari_viewer()
    a = add_scan(viewer, sim((6, 6), 1), "scan A")
    _, pr = viewer.window.add_plugin_dock_widget(PLUGIN, "Prediction")
    pr._scan.value = a
    pr.use_builtin_model()
    wait(qtbot, pr.run())
    assert "carbon: " in pr._summary.value

    b = add_scan(viewer, sim((5, 7), 2), "scan B")  # opened after: the scan box follows it
    assert pr._scan.value is b
    out = tmp_path / "B.npy"
    pr._export_path.value = out
    assert pr.prediction is None and pr.export_class_map() is None and not out.exists()
    assert "carbon: " not in pr._summary.value

    wait(qtbot, pr.run())
    assert np.load(pr.export_class_map()).shape == (5, 7)
    pr._scan.value = a
    assert "carbon: " in pr._summary.value
    pr._export_path.value = tmp_path / "A.npy"
    assert np.load(pr.export_class_map()).shape == (6, 6)
    assert session_of(a).prediction is not None and session_of(b).prediction is not None


def test_brushing_one_scans_proposal_retrains_on_that_scan_only(make_napari_viewer, qtbot):
    """Two scans of the same shape, each with its proposal; the user corrects scan A's proposal
    while the widget's scan box shows B (the scan opened last): the retraining learned A's
    corrections on... scan B's features and proposal (A's edits were dropped, or B's labels were
    trained on A's frames when A was chosen). It now trains on the scan whose proposal was edited."""
    from napari_sedclassify._napari.widgets.quick import QuickClassifyWidget, quick_prediction_layer_name

    viewer = make_napari_viewer()
    a = add_scan(viewer, sim((12, 12), 1), "scan A")
    b = add_scan(viewer, sim((12, 12), 2), "scan B")
    quick = QuickClassifyWidget(viewer)
    viewer.window.add_dock_widget(quick)
    quick._follow.value = False  # retrain called by hand below (what the timer calls)
    for layer in (a, b):
        quick._scan.value = layer
        wait(qtbot, quick.propose())

    corrected = np.zeros((12, 12), np.uint8)  # A's proposal, corrected: 72 points labeled in two classes
    corrected[:6, :6], corrected[:6, 6:] = 1, 2
    viewer.layers["scan A proposal"].data = corrected
    assert quick._scan.value is b
    wait(qtbot, quick.retrain())
    assert quick_prediction_layer_name(a) in viewer.layers and quick_prediction_layer_name(b) not in viewer.layers
    assert "on 72 labeled points" in quick.status.value


def _open(viewer, qtbot, path):
    from napari_sedclassify._napari.reader import INTEGRATING

    layer = viewer.open(str(path), plugin=PLUGIN)[0]
    qtbot.waitUntil(lambda: INTEGRATING not in layer.metadata, timeout=60000)
    return layer


def test_no_beam_and_refusals_say_what_to_do_in_the_widgets(make_napari_viewer, qtbot, realdata, notifications):
    """The real ARINA file (every pixel 0: no beam): Propose classes and Classify failed with the
    engine's "(In Python, give bf_radius_px and adf_inner_px, or beam_radius_px.)" where Find
    centres named the Centring field; the built-in model's refusal of the blockfile's 5x5 px
    detector ended "(sedclassify train)", a command where there is no command line."""
    from napari_sedclassify._napari.widgets.quick import QuickClassifyWidget

    viewer = make_napari_viewer()
    zeros = _open(viewer, qtbot, realdata / "arina" / "test_00_master.h5")
    quick = QuickClassifyWidget(viewer)
    viewer.window.add_dock_widget(quick)
    _, pr = viewer.window.add_plugin_dock_widget(PLUGIN, "Prediction")
    _, geo = viewer.window.add_plugin_dock_widget(PLUGIN, "Scan geometry")
    quick._scan.value = pr._scan.value = geo._scan.value = zeros
    geo._fields["camera_length_mm"].value, geo._fields["voltage_kv"].value = 1000.0, 200.0  # what the user knows
    assert geo.apply() is not None
    for job in (quick.propose(), (pr.use_builtin_model(), pr.run())[1]):
        qtbot.waitUntil(lambda job=job: job.done, timeout=60000)
        assert job.outcome == "failed"
    said = [m for m in notifications if "no direct beam" in m]
    # every frame of it is 0: said so (session 25), not the beam-radius field, which would not help
    assert len(said) == 2 and all("every frame is empty" in m and "Python" not in m and "command line" not in m
                                  for m in said), said
    assert "Python" not in quick.status.value and "Python" not in pr._jobs.status.value

    pr._scan.value = _open(viewer, qtbot, realdata / "blockfile" / "test2.blo")
    assert pr.run() is None
    (refused,) = [m for m in notifications if "outside the 128-512 px" in m]
    assert "sedclassify" not in refused and "the Training widget" in refused


def test_the_session_advice_of_a_prediction_warning_names_no_command():
    """The built-in model's "agree on only 5%" warning (seen on a simulated 128 px scan) advised
    "(`train --session-robust` on scans of several sessions holds better)" in napari."""
    from napari_sedclassify._napari.wording import in_napari_words
    from napari_sedclassify.pipeline.ice_agreement import agreement_warning

    said = in_napari_words(agreement_warning("scan.npy", "'builtin'", 0.05))
    assert "--session-robust" not in said and "sedclassify" not in said
    assert "trained on scans of several sessions holds better" in said


def test_a_centring_pass_ending_under_another_scan_shows_nothing_of_it(make_napari_viewer, qtbot):
    """Find centres on scan B, then scan A chosen in the Centring widget while it runs (A has 10
    rows without beam): the widget showed "beam found in 64 of 64 frames" (B's figure and counts)
    under A's name. B's result is shown when B is chosen again."""
    scan_b = sim((8, 8), 2)
    blanked = np.asarray(sim((6, 6), 1).data).copy()
    blanked[:3] = 0  # the beam blanked for the first rows
    from napari_sedclassify import Scan

    viewer = make_napari_viewer()
    a = add_scan(viewer, Scan(blanked, geometry=scan_b.geometry), "scan A")
    b = add_scan(viewer, scan_b, "scan B")
    _, centring = viewer.window.add_plugin_dock_widget(PLUGIN, "Centring")
    centring._scan.value = b
    job = centring.run()
    centring._scan.value = a  # before the pass ends (its end is handled in the event loop)
    wait(qtbot, job)
    assert "of 64 frames" not in centring._summary.value
    centring._scan.value = b
    assert "beam found in 64 of 64 frames" in centring._summary.value


def test_a_class_on_one_point_asks_for_more_instead_of_an_error(make_napari_viewer, qtbot, notifications):
    """A 1 x 50 line scan: the proposal named one frame crystalline ice, and the retraining that
    follows the proposal (and every brush stroke that puts a new class on one point) popped an
    error notification "too few for the SVM". It now says in the status line what to brush,
    trains nothing, and trains once a second point of that class is brushed."""
    from napari_sedclassify._napari.widgets.quick import QuickClassifyWidget

    viewer = make_napari_viewer()
    add_scan(viewer, sim((1, 50), 3), "line scan")
    quick = QuickClassifyWidget(viewer)
    viewer.window.add_dock_widget(quick)
    quick._follow.value = False  # retrain called by hand below (what the timer calls)
    wait(qtbot, quick.propose())
    labels = viewer.layers["line scan proposal"]
    corrected = np.zeros((1, 50), np.uint8)
    corrected[0, :20], corrected[0, 20:40], corrected[0, 45] = 1, 2, 3  # one point of crystalline ice
    labels.data = corrected
    assert quick.retrain() is None and quick.trainings == 0
    assert "crystalline ice labeled on fewer than 2 points" in quick.status.value
    assert not [m for m in notifications if "too few for the SVM" in m]
    corrected[0, 46] = 3
    labels.data = corrected.copy()
    wait(qtbot, quick.retrain())
    assert quick.trainings == 1 and "retrained on 42 labeled points" in quick.status.value


def test_the_quick_model_goes_stale_with_the_geometry(make_napari_viewer, qtbot, tmp_path):
    """A quick model trained, then the camera length corrected in Scan geometry: Save model wrote the
    model trained on the old q axis, and the quick prediction stayed on show as if it held. Now the
    save is refused with the reason until it is retrained, and the status says it is out of date."""
    from napari_sedclassify._napari.widgets.quick import QuickClassifyWidget
    from napari_sedclassify.models.persistence import load_model

    viewer = make_napari_viewer()
    layer = add_scan(viewer, sim((12, 12), 1), "scan")
    quick = QuickClassifyWidget(viewer)
    viewer.window.add_dock_widget(quick)
    _, geo = viewer.window.add_plugin_dock_widget(PLUGIN, "Scan geometry")
    quick._follow.value = False  # retrain called by hand below (what the timer calls)
    wait(qtbot, quick.propose())
    labels = np.zeros((12, 12), np.uint8)
    labels[:6], labels[6:] = 1, 2
    viewer.layers["scan proposal"].data = labels
    wait(qtbot, quick.retrain())
    old = quick.model.geometry.camera_length_mm

    geo._scan.value = layer
    geo._fields["camera_length_mm"].value = old * 1.2
    assert geo.apply() is not None
    assert "made before its geometry changed" in quick.status.value
    quick._path.value = tmp_path / "quick.sedmodel"
    assert quick.save() is None and not (tmp_path / "quick.sedmodel").exists()
    assert "Not saved" in quick.status.value

    wait(qtbot, quick.retrain())
    assert load_model(quick.save()).geometry.camera_length_mm == pytest.approx(old * 1.2)


def test_apply_geometry_keeps_a_chip_edge_width_the_field_rounds(make_napari_viewer, qtbot):
    """A simulated Medipix3 scan whose metadata states chip-edge pixels 1.375 pitches wide: its field
    shows 1.38, and Apply geometry (only the camera length changed) made that 1.38 "given", so the
    centring result of the file's width went stale ("run Find centres again") and later passes used
    1.38. A field left as shown now keeps the scan's own value."""
    scan = sim((6, 6), 1)
    assert scan.metadata["edge_pixel_width"] == 1.375
    viewer = make_napari_viewer()
    layer = add_scan(viewer, scan, "scan")
    _, geo = viewer.window.add_plugin_dock_widget(PLUGIN, "Scan geometry")
    _, centring = viewer.window.add_plugin_dock_widget(PLUGIN, "Centring")
    geo._scan.value = centring._scan.value = layer
    wait(qtbot, centring.run())
    assert geo._edge.value == pytest.approx(1.38)
    geo._fields["camera_length_mm"].value = 1000.0
    assert geo.apply().camera_length_mm == 1000.0
    assert session_of(layer).edge_pixel_width == (1.375, "file")
    assert session_of(layer).result() is not None and "Find centres again" not in geo._summary.value


def test_a_fitted_camera_length_is_shown_for_its_own_scan_only(make_napari_viewer, qtbot):
    """Fit camera length on scan A, then scan B chosen in the RIA widget (or opened: the box
    follows it): "Camera length ... mm (fitted from ... ice frames)" stayed under B's name although
    B's camera length was never fitted. It now shows the chosen scan's fit, and A's again with A."""
    viewer = make_napari_viewer()
    a = add_scan(viewer, sim((10, 10), 1), "scan A")
    _, ria = viewer.window.add_plugin_dock_widget(PLUGIN, "RIA")
    ria._scan.value = a
    wait(qtbot, ria.calibrate())
    assert "fitted from" in ria.calibration_info.value
    add_scan(viewer, sim((5, 5), 2), "scan B")
    assert ria._scan.value is not a and ria.calibration_info.value == ""
    ria._scan.value = a
    assert "fitted from" in ria.calibration_info.value
