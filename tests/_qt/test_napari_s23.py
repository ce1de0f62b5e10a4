"""Session 23, napari: the chip-edge pixel width of a Medipix3 quad set in the Scan geometry widget
(results made with another width go stale, the engine's ``--edge-pixel-width`` advice said in the
widget's words), and what the black-box sweep of the widgets on real files found."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sedclassify._napari.layers import scan_layer_data
from napari_sedclassify._napari.state import session_of
from napari_sedclassify.classes import ClassTable

PLUGIN = "napari-sedclassify"
simulate = pytest.importorskip("napari_sedclassify.simulate")


def add_scan(viewer, scan):
    from napari_sedclassify.processing.virtual import virtual_image

    data, kwargs, _ = scan_layer_data(scan, np.asarray(virtual_image(scan), np.float32))
    return viewer.add_image(data, **kwargs)


def wait(qtbot, job, timeout_ms=120000):
    assert job is not None
    qtbot.waitUntil(lambda: job.done, timeout=timeout_ms)
    assert job.outcome == "done", job.error


@pytest.fixture
def quad():
    """A simulated 256 px Medipix3 quad (2x2 binned: chip-edge pixels 1.75 pitches wide, as its
    metadata says), 10 x 10 scan points."""
    return simulate.simulate_scan(scan_shape=(10, 10), detector_px=256, session="C", seed=3)


def test_chip_edge_pixel_width_set_in_the_geometry_widget(make_napari_viewer, qtbot, quad):
    """The width stated by the file is shown; another one applied makes the centring pass, the
    prediction and the camera-length fit made with the old width stale (and says to redo them);
    the fit's warning advises the widget's field, not a command-line flag; going back to the
    file's width serves the first pass again; nonsense is refused."""
    viewer = make_napari_viewer()
    layer = add_scan(viewer, quad.scan)
    _, geo = viewer.window.add_plugin_dock_widget(PLUGIN, "Scan geometry")
    _, centring = viewer.window.add_plugin_dock_widget(PLUGIN, "Centring")
    _, ria = viewer.window.add_plugin_dock_widget(PLUGIN, "RIA")
    _, pr = viewer.window.add_plugin_dock_widget(PLUGIN, "Prediction")
    session = session_of(layer)
    assert geo._edge.value == pytest.approx(1.75) and "from the file" in geo._edge.label

    wait(qtbot, centring.run())
    first = session.result()
    assert first.resolved["edge_pixel_width"] == pytest.approx(1.75)
    out = {"class_map": np.ones(quad.scan.scan_shape, np.uint8), "class_ids": [1, 2, 3, 4],
           "probabilities": np.full(quad.scan.scan_shape + (4,), 0.25, np.float32)}
    pr.show_prediction(layer, out, ClassTable.default(), first, "m.sedmodel")
    assert pr.prediction is not None

    geo._edge.value = 1.0  # what a user types when the pixels are taken as equal
    assert geo.apply() is not None
    assert session.edge_pixel_width == (1.0, "given") and "set by you" in geo._edge.label
    assert session.result() is None and "run Find centres again" in geo._summary.value
    assert pr.prediction is None and "stale" in pr._summary.value

    wait(qtbot, ria.calibrate())  # the fit reads the scan with the width set: the frames contradict it
    assert "chip-edge pixel width (Scan geometry; 0 = measured from the frames)" in ria.calibration_info.value
    assert "--edge-pixel-width" not in ria.calibration_info.value
    wait(qtbot, ria.run())
    assert session.result().resolved["edge_pixel_width"] == 1.0

    geo._edge.value = 1.75  # back to the file's width: the first pass holds again (on the fitted q axis), not redone
    geo.apply()
    again = session.result()
    assert again.provenance == first.provenance and again.geometry == quad.scan.geometry
    assert "fit it again" in geo._summary.value
    geo._edge.value = 0.0  # measured from the frames, although the file states a width
    geo.apply()
    assert session.edge_pixel_width == (None, "measured") and session.result() is None
    assert "edge_pixel_width" not in quad.scan.metadata
    wait(qtbot, centring.run())
    assert session.result().resolved["edge_pixel_width_origin"] == "measured"

    geo._edge.value = 0.5  # narrower than a pixel: refused, nothing changed
    assert geo.apply() is None
    assert "at least 1 pitch" in geo._summary.value and session.edge_pixel_width == (None, "measured")


def test_opening_a_scan_while_the_warm_up_builds_the_unit_registry(realdata, tmp_path):
    """In a new napari process, the plugin's warm-up thread built pint's unit registry in place;
    a scan opened while it did read it half built and File > Open failed ("'pixel' is not defined
    in the unit registry", one start in three of the sweep). Here the event loop asks for units the
    moment the thread has started on the application registry."""
    import subprocess
    import sys

    mib = realdata / "merlin" / "001_4x2_6bit.mib"
    script = tmp_path / "open.py"
    script.write_text(
        "import threading, time\n"
        "errors = []\n"
        "threading.excepthook = lambda a: errors.append(repr(a.exc_value))\n"
        "import napari, pint\n"
        "from pint.registry import LazyRegistry\n"
        "from qtpy.QtWidgets import QApplication\n"
        "viewer = napari.Viewer(show=False)\n"
        "from napari_sedclassify._napari import reader\n"
        "reader.warm_up()  # what opening a scan or docking the Workflow starts\n"
        "application = pint.get_application_registry()\n"
        "t0 = time.time()\n"
        "while reader._warming.is_alive() and isinstance(application.get(), LazyRegistry) and time.time() - t0 < 60:\n"
        "    time.sleep(0.0005)\n"
        "try:\n"
        f"    layers = viewer.open({str(mib)!r}, plugin='napari-sedclassify')\n"
        "    print('units', [str(u) for u in layers[0].units])\n"
        "except Exception as exc:\n"
        "    print('open failed', repr(exc))\n"
        "while reader._warming.is_alive() and time.time() - t0 < 60:\n"
        "    QApplication.processEvents(); time.sleep(0.02)\n"
        "print('errors', errors)\n"
        "viewer.close()\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "units ['pixel', 'pixel']" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "errors []" in out.stdout, out.stdout


def _open(viewer, qtbot, path):
    from napari_sedclassify._napari.reader import INTEGRATING

    layer = viewer.open(str(path), plugin=PLUGIN)[0]
    qtbot.waitUntil(lambda: INTEGRATING not in layer.metadata, timeout=60000)
    return layer


def test_a_refused_model_is_notified_in_the_widgets_words(make_napari_viewer, qtbot, realdata, notifications):
    """The built-in model refuses the real Merlin scan (camera length and voltage assumed): the
    napari notification said "give it (--camera-length MM) or fit it with `sedclassify calibrate`"
    and "(in Python: open_scan(...))" where the status line beside it named the widgets."""
    viewer = make_napari_viewer()
    layer = _open(viewer, qtbot, realdata / "merlin" / "001_4x2_6bit.mib")
    _, pr = viewer.window.add_plugin_dock_widget(PLUGIN, "Prediction")
    pr._scan.value = layer
    pr.use_builtin_model()
    assert pr.run() is None
    said = [m for m in notifications if m.startswith("Prediction:")]
    assert said and all("--" not in m and "Python" not in m and "sedclassify calibrate" not in m for m in said), said
    assert "camera length (Scan geometry)" in said[-1]


def test_a_proposal_of_one_class_asks_for_a_second_instead_of_failing(make_napari_viewer, qtbot, realdata,
                                                                      notifications):
    """The 8 frames of the real Merlin scan are one cluster: the proposal's class map holds one
    class, and the quick training that follows it failed with an error notification ("fewer than
    two classes"). It now says in place what to do and trains nothing; the assumed values are named
    in words ("camera_length_mm, voltage_kv assumed" before)."""
    viewer = make_napari_viewer()
    layer = _open(viewer, qtbot, realdata / "merlin" / "001_4x2_6bit.mib")
    _, quick = viewer.window.add_plugin_dock_widget(PLUGIN, "Classify before labeling")
    quick._scan.value = layer
    wait(qtbot, quick.propose())
    assert len(np.unique(viewer.layers[-1].data)) == 1
    # the proposal's own warning (it never reached the viewer): notified and in the status line
    assert any("Proposal: all 8 frames proposed as" in m for m in notifications), notifications
    assert "Warning: all 8 frames proposed as" in quick.status.value
    job = quick.retrain()  # what the timer after the proposal calls
    if job is not None:
        qtbot.waitUntil(lambda: job.done, timeout=60000)
    assert "at least two classes" in quick.status.value and quick.trainings == 0
    assert "camera length, voltage assumed" in quick.status.value  # not the field names camera_length_mm, ...
    assert not [m for m in notifications if "fewer than two classes" in m]


def test_quick_training_follows_a_geometry_change_after_the_proposal(make_napari_viewer, qtbot):
    """The brush retrained on the features cached at the proposal: after the camera length (or the
    flat-field, or the chip-edge pixel width) changed, the quick prediction and the model saved from
    it kept the old q axis. The next retraining now makes the features again, the labels stay."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "holey_carbon_scan")
    layer = viewer.layers["simulated scan (integrated)"]
    _, quick = viewer.window.add_plugin_dock_widget(PLUGIN, "Classify before labeling")
    _, geo = viewer.window.add_plugin_dock_widget(PLUGIN, "Scan geometry")
    quick._scan.value = geo._scan.value = layer
    quick._follow.value = False  # retrain called by hand below
    wait(qtbot, quick.propose())
    wait(qtbot, quick.retrain())
    assert quick.model is not None and quick.trainings == 1
    geo._fields["camera_length_mm"].value = 1100.0
    assert geo.apply() is not None
    wait(qtbot, quick.retrain())
    assert quick.trainings == 2
    assert quick.model.geometry.camera_length_mm == 1100.0  # the model (saved as is) was trained on the new q axis


def test_a_failed_proposal_replaces_the_proposal_of_another_scan(make_napari_viewer, qtbot, realdata, quad):
    """A proposal for one scan, then one that fails for another (the ARINA file: all zeros): the status
    line kept the first scan's counts under the failure notification."""
    viewer = make_napari_viewer()
    good = add_scan(viewer, quad.scan)
    zeros = _open(viewer, qtbot, realdata / "arina" / "test_00_master.h5")
    _, quick = viewer.window.add_plugin_dock_widget(PLUGIN, "Classify before labeling")
    quick._follow.value = False
    quick._scan.value = good
    wait(qtbot, quick.propose())
    assert "Proposal from" in quick.status.value
    quick._scan.value = zeros
    job = quick.propose()
    qtbot.waitUntil(lambda: job.done, timeout=60000)
    assert job.outcome == "failed"
    assert "Proposal from" not in quick.status.value and "No proposal for test_00_master" in quick.status.value


def _live_files(tmp_path, n_frames=None):
    """The quad scan as a file with its geometry (for the Live widget's "geometry of scan": the
    built-in model needs the camera length) and its frames as a bare .mib (no .hdr)."""
    from napari_sedclassify.pipeline.acquisition import mib_frame_bytes

    sim = simulate.simulate_scan(tmp_path / "geometry.npy", scan_shape=(10, 10), detector_px=256, session="C", seed=3)
    frames = np.asarray(sim.scan.data).reshape(-1, *sim.scan.detector_shape)[:n_frames]
    (tmp_path / "live.mib").write_bytes(b"".join(mib_frame_bytes(f, i + 1) for i, f in enumerate(frames)))
    return tmp_path / "geometry.npy", tmp_path / "live.mib"


def test_a_new_live_run_does_not_show_the_counts_of_the_last(make_napari_viewer, qtbot, tmp_path):
    """A live run's counts ("... of N frames") stayed under the next run, which waits for a file
    not written yet."""
    from napari_sedclassify.models.persistence import resolve_model_path

    geometry, mib = _live_files(tmp_path)
    viewer = make_napari_viewer()
    _, live = viewer.window.add_plugin_dock_widget(PLUGIN, "Live classification")
    live._model_path.value = resolve_model_path("builtin")
    live._calibration.value = geometry
    live._input.value = str(mib)
    live._rows.value, live._cols.value = 4, 25  # the frames of a 10 x 10 scan
    first = live.start()
    qtbot.waitUntil(lambda: first.done, timeout=60000)
    assert "of 100 frames" in live._summary.value
    live._input.value = str(tmp_path / "not yet.mib")  # the detector has not started writing it
    job = live.start()
    qtbot.wait(300)
    assert "of 100 frames" not in live._summary.value
    live._jobs.cancel()
    qtbot.waitUntil(lambda: job.done, timeout=30000)
    assert job.outcome == "cancelled"


def test_live_without_a_scan_shape_names_the_widgets_fields(make_napari_viewer, qtbot, tmp_path):
    """A .mib without a .hdr and no scan rows given: the reason said "give --scan-shape SY SX"."""
    from napari_sedclassify.models.persistence import resolve_model_path

    geometry, mib = _live_files(tmp_path, 4)
    viewer = make_napari_viewer()
    _, live = viewer.window.add_plugin_dock_widget(PLUGIN, "Live classification")
    live._model_path.value = resolve_model_path("builtin")
    live._calibration.value = geometry
    live._input.value = str(mib)
    job = live.start()
    qtbot.waitUntil(lambda: job.done, timeout=60000)
    assert job.outcome == "failed"
    assert "give the scan rows and columns" in live._jobs.status.value and "--" not in live._jobs.status.value


def test_closing_the_viewer_while_a_quick_retraining_is_due(make_napari_viewer, qtbot, realdata):
    """The proposal schedules a retraining 0.6 s later, and every brush edit of its layer another;
    with the viewer (and the widget) closed meanwhile, the timer and the edits reached its deleted Qt widgets
    (RuntimeError: wrapped C/C++ object of type QComboBox has been deleted, in the event loop)."""
    viewer = make_napari_viewer()
    layer = _open(viewer, qtbot, realdata / "merlin" / "001_4x2_6bit.mib")
    _, quick = viewer.window.add_plugin_dock_widget(PLUGIN, "Classify before labeling")
    quick._scan.value = layer
    wait(qtbot, quick.propose())  # its retraining is now due
    proposal = viewer.layers[f"{layer.name} proposal"]
    viewer.close()
    qtbot.waitUntil(lambda: quick.closed, timeout=5000)
    proposal.data = np.full(proposal.data.shape, 2, np.uint8)  # an edit after the widget went
    qtbot.wait(1500)  # past the retraining delay: nothing runs, nothing raises
    assert quick.trainings == 0


@pytest.mark.parametrize("gamma", ["-1", "0", "nan"])
def test_an_svm_width_it_cannot_have_is_refused_before_any_work(make_napari_viewer, qtbot, gamma, notifications):
    """gamma -1 was accepted: the scan was preprocessed, a child process started, and training ended
    with scikit-learn's "InvalidParameterError: The 'gamma' parameter of SVC must be ..."."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "holey_carbon_scan")
    layer = viewer.layers["simulated scan (integrated)"]
    _, lab = viewer.window.add_plugin_dock_widget(PLUGIN, "Labels")
    _, tr = viewer.window.add_plugin_dock_widget(PLUGIN, "Training")
    class_map = np.ones(find_scan_shape(layer), np.uint8)
    class_map[:12] = 2
    lab.show_class_map(layer, class_map)
    tr._refresh_data()
    tr._model.value = "svm"
    tr._gamma.value = gamma
    assert tr.run() is None
    assert "positive number" in tr._jobs.status.value
    assert not [m for m in notifications if "InvalidParameterError" in m]


def find_scan_shape(layer):
    from napari_sedclassify._napari.layers import find_scan

    return find_scan(layer).scan_shape
