"""The whole napari workflow on the simulated sample scan, in a real viewer under Xvfb:
open, flat-field, centre, RIA, PCC click, regions drawn -> labels with a mixed border, train,
predict, export; the UI keeps processing events while workers run; TensorFlow (CNN) runs in a
child process while the canvas draws, and never loads into this process."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_sedclassify.classes import AMORPHOUS_ICE, CARBON, CRYSTALLINE_ICE, MIXED
from napari_sedclassify._napari.state import flatfield_of, preprocess_of, session_of

SCAN = "simulated scan (integrated)"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The simulator's sample scan (what File > Open Sample shows) and its flood stack on disk."""
    from napari_sedclassify.simulate import sample_scan

    sim = sample_scan()
    folder = tmp_path_factory.mktemp("sample")
    np.save(folder / "flood.npy", sim.flatfield)
    return sim, folder / "flood.npy"



class Ticker:
    """A 20 ms QTimer on the UI thread; records when it ticks while a job's worker runs (until
    its result reaches the UI thread; showing the result is UI work by nature)."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.times = []
        self.job = None
        self.timer = QTimer()
        self.timer.setInterval(20)
        self.timer.timeout.connect(self._tick)

    def _tick(self):
        if self.job is not None and self.job.outcome is None:
            self.times.append(time.perf_counter())

    def run(self, qtbot, job, timeout_ms):
        self.times = []
        self.job = job
        self.timer.start()
        qtbot.waitUntil(lambda: job.done, timeout=timeout_ms)
        self.timer.stop()
        gaps = np.diff(self.times) if len(self.times) > 1 else np.array([np.inf])
        return len(self.times), float(gaps.max())


def wait(qtbot, job, timeout_ms=60000):
    assert job is not None
    qtbot.waitUntil(lambda: job.done, timeout=timeout_ms)
    assert job.outcome == "done", job.error


def click(viewer, world_position):
    """A mouse click (press, release) at a world position, through napari's mouse callbacks."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    mouse_press_callbacks(viewer, read_only_mouse_event(type="mouse_press", position=world_position))
    mouse_release_callbacks(viewer, read_only_mouse_event(type="mouse_release", position=world_position))


def truth_polygons(truth):
    """Polygons (scan coordinates) a user would draw on the sample: the outline of the ice-filled
    hole, then each crystal, traced where the class changes."""
    from skimage.measure import find_contours

    out = []
    for cid, mask in ((AMORPHOUS_ICE, np.isin(truth, (AMORPHOUS_ICE, CRYSTALLINE_ICE, MIXED)) & (truth != MIXED)),
                      (CRYSTALLINE_ICE, truth == CRYSTALLINE_ICE)):
        padded = np.pad(mask.astype(float), 1)
        for contour in find_contours(padded, 0.5):
            if len(contour) >= 4:
                out.append((cid, contour - 1.0))
    return out


def test_whole_workflow_on_the_sample(make_napari_viewer, qtbot, sample, tmp_path, notifications):
    sim, flood = sample
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-sedclassify", "holey_carbon_scan")
    scan_layer = viewer.layers[SCAN]
    np.testing.assert_allclose(scan_layer.scale, (30.0, 30.0))  # nm
    _, wf = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Workflow (all steps)")
    ticker = Ticker()

    # 1 flat-field from a file: gain map and the simulated dead pixels
    wf.flatfield._path.value = flood
    wait(qtbot, wf.flatfield.run())
    ff = flatfield_of(scan_layer)
    assert ff.shape == (256, 256) and ff.n_dead > 0
    dead_in_flood = np.all(sim.flatfield == 0, axis=0)
    assert ff.mask[dead_in_flood].all()
    assert f"{ff.n_dead} dead" in wf.flatfield._summary.value

    # 2 centring in the background while the UI thread keeps ticking
    job = wf.centring.run()
    ticks, gap = ticker.run(qtbot, job, 60000)
    assert job.outcome == "done", job.error
    assert ticks >= 3 and gap < 3.0, (ticks, gap)
    result = preprocess_of(scan_layer)
    err = np.hypot(*np.moveaxis(result.centres - sim.centres, -1, 0))
    assert np.sqrt(np.nanmean(err**2)) < 0.5  # px, against the simulator's true centres
    width = sim.metadata["edge_pixel_width"]  # a 2x2-binned quad's chip cross: 1.75 binned pitches
    assert f"chip-edge pixels {width:g} pitches wide (file)" in wf.centring._summary.value
    wf.centring._maps_button.native.click()  # the maps as layers, on request
    qtbot.waitUntil(lambda: f"{SCAN} descan residual (px)" in viewer.layers, timeout=10000)  # one map per turn
    cx = viewer.layers[f"{SCAN} centre x (px)"].data
    np.testing.assert_allclose(cx, result.centres[..., 1])
    assert np.isfinite(viewer.layers[f"{SCAN} descan residual (px)"].data).all()
    wf.centring._centring.value = "fitted"  # switching re-runs the pass about the fitted centres
    wait(qtbot, wf.centring._jobs.job)
    result = preprocess_of(scan_layer)
    assert result.params.centring == "fitted"
    np.testing.assert_allclose(result.centres_used, result.centres_fitted)

    # diffraction view: the frame under the cursor, its centre, masked pixels, its RIA
    view = wf.diffraction
    view._on_move(viewer, type("E", (), {"position": scan_layer.data_to_world((5, 7))})())
    qtbot.waitUntil(lambda: view.point is not None and view.point[1:] == (5, 7), timeout=5000)
    assert "fitted descan" in view._info.value and "masked px" in view._info.value

    # 3 RIA per labeled class (here the sample's truth): the ice ring stands out of carbon's profile
    wf.ria._labels.value = viewer.layers["truth"]
    assert wf.ria.plot() == 4
    from napari_sedclassify.processing.ria import class_statistics

    stats = class_statistics(result.ria, sim.truth, result.beam_found, log=True, smooth=1)
    ring = int(np.argmin(abs(result.radii_px - sim.geometry.d_A_to_radius_px(3.7))))
    assert stats[AMORPHOUS_ICE][0][ring] > stats[CARBON][0][ring]
    points = wf.ria.points_layer()
    points.add([[3, 3], [20, 4]])
    assert wf.ria.plot() == 2 and wf.ria.picked_points() == [(3, 3), (20, 4)]

    # 4 PCC: a click on an ice point -> its Pearson map; ice correlates better with ice
    viewer.layers.selection.active = scan_layer
    ice_point = tuple(int(v) for v in np.argwhere(sim.truth == AMORPHOUS_ICE)[0])
    click(viewer, scan_layer.data_to_world(ice_point))
    pcc = viewer.layers[f"{SCAN} PCC"]
    assert pcc.metadata["pcc_point"] == ice_point
    assert pcc.data[ice_point] == pytest.approx(1.0, abs=1e-5)
    assert np.nanmean(pcc.data[sim.truth == AMORPHOUS_ICE]) > np.nanmean(pcc.data[sim.truth == CARBON])
    qtbot.waitUntil(lambda: view.point[1:] == ice_point, timeout=10000)  # the diffraction view follows the click too

    # 5 labels: polygons drawn into the Shapes layer -> class map with a mixed border
    lab = wf.labeling
    lab._scan.value = scan_layer
    for cid, polygon in truth_polygons(sim.truth):
        lab._class.value = cid
        lab.regions_layer().add_polygons([polygon])
    lab._unit.value = "nm"
    lab._beam.value, lab._border.value = 55.0, 25.0  # the simulator's beam; its >= 80 % rule
    labels = lab.make_class_map()
    assert set(np.unique(labels.data)) == {CARBON, AMORPHOUS_ICE, CRYSTALLINE_ICE, MIXED}
    assert (labels.data == sim.truth).mean() > 0.85

    # 6 training (FCNN in the worker thread), UI ticking, live curves, metrics
    tr = wf.training
    tr._data.value = [c for c in tr._data.choices if c.startswith(SCAN) and "labels" in c]
    tr._model.value = "fcnn"
    tr._epochs.value = 150
    stored = []  # the training takes the centring pass's RIAs (they reach farther than it reads)
    unsubscribe = session_of(scan_layer).subscribe(stored.append)
    job = tr.run()
    ticks, gap = ticker.run(qtbot, job, 90000)
    assert job.outcome == "done", job.error
    unsubscribe()
    assert "result" not in stored, stored  # nothing preprocessed again
    assert ticks >= 3 and gap < 3.0, (ticks, gap)
    assert len(tr.history) >= 2 and np.isfinite(tr.history[-1]["val_loss"])
    assert "weighted" in tr._metrics.value
    qtbot.waitUntil(lambda: tr.canvas.figure is not None and any(  # laid out and drawn in a thread
        ax.get_title() == "validation confusion matrix" for ax in tr.canvas.figure.axes), timeout=20000)
    tr._save_path.value = tmp_path / "fcnn_model"
    saved = tr.save_model()
    assert saved.name == "fcnn_model.sedmodel" and saved.exists()

    # 7 prediction with the model just trained (handed over by the workflow)
    pr = wf.prediction
    assert str(pr._model_path.value) == tr.result["path"]
    wait(qtbot, pr.run())
    predicted = viewer.layers[f"{SCAN} predicted classes"]
    qtbot.waitUntil(lambda: f"{SCAN} confidence" in viewer.layers, timeout=5000)  # added in the next turn
    confidence = viewer.layers[f"{SCAN} confidence"]
    assert predicted.data.shape == sim.truth.shape
    assert (predicted.data == sim.truth).mean() > 0.8
    assert np.all((confidence.data > 0.25) & (confidence.data <= 1.0))
    assert "amorphous ice: " in pr._summary.value
    pr._export_path.value = tmp_path / "classes.tif"
    from napari_sedclassify.labels import load_class_map

    np.testing.assert_array_equal(load_class_map(pr.export_class_map()), predicted.data)
    pr._keep.value = [AMORPHOUS_ICE]
    pr._keep_path.value = tmp_path / "keep.csv"
    with open(pr.export_keep_list()) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == int((predicted.data == AMORPHOUS_ICE).sum())
    first = rows[0]
    assert predicted.data[int(first["row"]), int(first["col"])] == AMORPHOUS_ICE
    assert float(first["y_nm"]) == 30.0 * int(first["row"])
    assert not [m for m in notifications if "error" in m.lower() or "could not" in m.lower()]
    assert not [layer.name for layer in viewer.layers if layer.name.endswith("]")]  # results update, not pile up


@pytest.mark.timeout(900)  # a CNN trained at a lower CPU priority while the canvas redraws every 50 ms
def test_cnn_trains_in_a_child_and_predicts_without_tensorflow_while_the_canvas_draws(make_napari_viewer, qtbot,
                                                                                       sample, tmp_path):
    """No TensorFlow in this process, however the CNN is used from the widgets, while napari draws
    (software OpenGL under Xvfb: TensorFlow here would segfault in glClear): training in a child;
    prediction from the model file's arrays here, or in a child for a file without them."""
    from qtpy.QtCore import QTimer

    from napari_sedclassify._napari.layers import scan_layer_data
    from napari_sedclassify._napari.widgets.labeling import labels_layer_name
    from napari_sedclassify.processing.virtual import virtual_image

    sim, _ = sample
    viewer = make_napari_viewer(show=True)
    data, kwargs, _ = scan_layer_data(sim.scan, np.asarray(virtual_image(sim.scan)), name="sample")
    scan_layer = viewer.add_image(data, **kwargs)
    labels = viewer.add_labels(sim.truth, name=labels_layer_name(scan_layer), scale=scan_layer.scale)
    _, tr = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Training")
    _, pr = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Prediction")
    draws = []
    canvas = viewer.window._qt_viewer.canvas
    canvas._scene_canvas.events.draw.connect(lambda e: draws.append(1))
    redraw = QTimer()
    redraw.setInterval(50)
    redraw.timeout.connect(lambda: setattr(viewer.camera, "zoom", viewer.camera.zoom * 1.0001))
    redraw.start()

    tr._data.value = [c for c in tr._data.choices if labels.name in c]
    tr._model.value = "cnn"
    tr._epochs.value, tr._patience.value, tr._crop.value, tr._augment.value = 15, 15, 32, 0
    before = len(draws)
    job = tr.run()
    wait(qtbot, job, 480000)
    assert len(draws) - before >= 5  # the canvas kept drawing during the CNN training
    assert tr.result["kind"] == "cnn" and len(tr.history) >= 1
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules

    pr._model_path.value = tr.result["path"]
    before = len(draws)
    wait(qtbot, pr.run(), 240000)
    redraw.stop()
    assert len(draws) - before >= 3
    predicted = viewer.layers["sample predicted classes"].data
    ice = np.isin(sim.truth, (AMORPHOUS_ICE, CRYSTALLINE_ICE))
    carbon = sim.truth == CARBON
    # carbon and ice apart on most of the (unmixed) points
    assert (np.isin(predicted[ice], (AMORPHOUS_ICE, CRYSTALLINE_ICE)).sum() + (predicted[carbon] == CARBON).sum()) \
        > 0.8 * (ice.sum() + carbon.sum())
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].max() > 0  # the canvas really renders
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules
    # a CNN file without arrays (written before them): Keras, in a child; the same class map
    import json
    import zipfile

    keras_only = tmp_path / "keras_only.sedmodel"
    with zipfile.ZipFile(tr.result["path"]) as zin, zipfile.ZipFile(keras_only, "w") as zout:
        meta = json.loads(zin.read("model.json"))
        meta["estimator"].pop("arrays")
        zout.writestr("model.json", json.dumps(meta))
        zout.writestr("estimator.keras", zin.read("estimator.keras"))
    pr._model_path.value = keras_only
    wait(qtbot, pr.run(), 240000)
    assert np.mean(viewer.layers["sample predicted classes"].data == predicted) > 0.99
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules


def test_bad_inputs_become_notifications(make_napari_viewer, qtbot, sample, tmp_path, notifications, disk_scan):
    from napari_sedclassify._napari.layers import find_scan, scan_layer_data
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.models.training import train
    from napari_sedclassify.pipeline.train import default_recipe, scan_features
    from napari_sedclassify.processing.virtual import virtual_image

    sim, _ = sample
    viewer = make_napari_viewer()
    data, kwargs, _ = scan_layer_data(sim.scan, np.asarray(virtual_image(sim.scan)), name="sample")
    viewer.add_image(data, **kwargs)
    _, ff = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Flat-field")
    _, pr = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Prediction")
    _, ce = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Centring")

    # a flat-field of another detector
    np.save(tmp_path / "small_flood.npy", np.ones((3, 64, 64), np.uint16))
    ff._path.value = tmp_path / "small_flood.npy"
    job = ff.run()
    qtbot.waitUntil(lambda: job.done, timeout=30000)
    assert job.outcome == "failed"
    assert any("small_flood.npy" in m and "64x64" in m and "256x256" in m for m in notifications)
    assert ff.run(use_beside=True) is None  # the in-memory sample has no flat-field file
    assert any("without a flat-field" in m for m in notifications)

    # a file that is no model, and no model at all
    (tmp_path / "junk.sedmodel").write_bytes(b"not a zip")
    pr._model_path.value = tmp_path / "junk.sedmodel"
    assert pr.run() is None
    assert any("junk.sedmodel" in m and "not a napari-sedclassify model file" in m for m in notifications)
    assert pr.export_keep_list() is None
    assert any("classify a scan before" in m for m in notifications)

    # a model made for the sample's detector, applied to a scan from a much smaller one
    recipe = default_recipe("fcnn")
    features, _ = scan_features(sim.scan, recipe, name="sample")
    model = train([features], [sim.truth], kind="fcnn", recipe=recipe, params={"max_epochs": 3})
    save_model(model, tmp_path / "sample.sedmodel")
    data, kwargs, _ = scan_layer_data(disk_scan, np.asarray(virtual_image(disk_scan)))
    small = viewer.add_image(data, **kwargs)
    pr._scan.value = small
    pr._model_path.value = tmp_path / "sample.sedmodel"
    assert pr.run() is None
    # its pixel size is assumed (not in the data) on another detector: the q axes cannot be matched
    assert any("sample.sedmodel cannot be applied to disk_scan" in m and "pixel 55 µm (assumed)" in m
               and "pixel size (Scan geometry)" in m and "--pixel-size" not in m for m in notifications)
    # stated, the q axis is known, and the model's q range is beyond this detector's edge
    find_scan(small).geometry = disk_scan.geometry.with_values("user", pixel_size_um=55.0)
    assert pr.run() is None
    assert any("sample.sedmodel cannot be applied to disk_scan" in m and "reaches 38 px" in m for m in notifications)

    # centring without a flat-field warns, and still works (the steps follow the scan added last:
    # the sample is chosen again)
    ce._scan.value = viewer.layers["sample"]
    job = ce.run()
    qtbot.waitUntil(lambda: job.done, timeout=60000)
    assert job.outcome == "done"
    assert any("No flat-field loaded for sample" in m for m in notifications)


def test_cancel_stops_preprocessing_and_training(make_napari_viewer, qtbot, sample, notifications):
    from napari_sedclassify._napari.layers import scan_layer_data
    from napari_sedclassify._napari.widgets.labeling import labels_layer_name
    from napari_sedclassify.processing.virtual import virtual_image

    sim, _ = sample
    viewer = make_napari_viewer()
    data, kwargs, _ = scan_layer_data(sim.scan, np.asarray(virtual_image(sim.scan)), name="sample")
    scan_layer = viewer.add_image(data, **kwargs)
    viewer.add_labels(sim.truth, name=labels_layer_name(scan_layer), scale=scan_layer.scale)
    _, ce = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Centring")
    _, tr = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Training")

    job = ce.run()
    assert ce._jobs.cancel_button.enabled and not ce._jobs.run_button.enabled
    ce._jobs.cancel_button.clicked.emit()  # what pressing Cancel does
    qtbot.waitUntil(lambda: job.done, timeout=60000)
    assert job.outcome == "cancelled" and ce._jobs.status.value == "cancelled"
    assert preprocess_of(scan_layer) is None
    assert ce._jobs.run_button.enabled and not ce._jobs.cancel_button.enabled
    assert any("cancelled" in m for m in notifications)

    tr._data.value = list(tr._data.choices)
    tr._model.value = "fcnn"
    tr._epochs.value, tr._patience.value = 5000, 500
    job = tr.run()
    qtbot.waitUntil(lambda: len(tr.history) >= 3, timeout=60000)  # training is under way
    tr._jobs.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: job.done, timeout=30000)
    assert job.outcome == "cancelled" and tr.result is None
    assert len(tr.history) < 5000


def test_open_scan_from_the_workflow(make_napari_viewer, qtbot, tmp_path, notifications, disk_scan):
    np.save(tmp_path / "scan.npy", np.asarray(disk_scan.data.compute()))
    viewer = make_napari_viewer()
    _, wf = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Workflow (all steps)")
    layers = wf.open_scan(tmp_path / "scan.npy")
    assert len(layers) == 1 and layers[0].metadata["sedclassify_scan"].scan_shape == (4, 5)
    assert wf.centring._scan.value is not None  # the steps see the new scan
    qtbot.waitUntil(lambda: getattr(viewer.layers.selection.active, "name", None) == layers[0].name,
                    timeout=5000)  # selected a turn later
    qtbot.waitUntil(lambda: "sedclassify_integrating" not in layers[0].metadata, timeout=10000)
    np.testing.assert_allclose(layers[0].data, np.asarray(disk_scan.data.sum(axis=(-2, -1)).compute()), rtol=1e-5)
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    assert wf.open_scan(tmp_path / "broken.npy") == []
    assert any("broken.npy" in m for m in notifications)


def test_training_data_from_files(make_napari_viewer, tmp_path, notifications, disk_scan):
    from napari_sedclassify.labels import save_class_map

    np.save(tmp_path / "scan.npy", np.asarray(disk_scan.data.compute()))
    labels = np.ones((4, 5), np.uint8)
    labels[:, :2] = AMORPHOUS_ICE
    save_class_map(tmp_path / "scan_labels.tif", labels)
    np.save(tmp_path / "other_labels.npy", np.ones((3, 3), np.uint8))
    viewer = make_napari_viewer()
    _, tr = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Training")
    tr._scan_file.value, tr._labels_file.value = tmp_path / "scan.npy", tmp_path / "scan_labels.tif"
    item = tr.add_files()
    assert "file: scan" in tr._data.choices and "file: scan" in tr._data.value
    (chosen,) = tr.labeled_scans()
    assert chosen is item and chosen.scan.scan_shape == (4, 5)
    np.testing.assert_array_equal(chosen.class_map, labels)
    tr._labels_file.value = tmp_path / "other_labels.npy"
    assert tr.add_files() is None
    assert any("other_labels.npy" in m and "does not match the scan shape" in m for m in notifications)


def test_prediction_shows_the_warnings_of_its_class_map(make_napari_viewer, qtbot, tmp_path, notifications):
    """A scan whose true camera length is 8 % shorter than the one its file states, classified in
    the Prediction widget: the class map comes with the engine's warning (the ice ring's camera
    length, how to fix it) as a napari warning and under the counts, as `sedclassify predict`
    prints it."""
    from dataclasses import replace

    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.train import train_model
    from napari_sedclassify.simulate import simulate_scan
    from napari_sedclassify.simulate.params import SessionParams, session_seed

    def sim(name, seed, factor):
        session = replace(SessionParams(name="A"), name=name, gain_seed=session_seed("A"),
                          camera_length_mm=900.0 * factor)
        return simulate_scan(tmp_path / f"{name}.npy", scan_shape=(20, 20), detector_px=128, session=session,
                             seed=seed)

    train = sim("train", 1, 1.0)
    save_model(train_model([train.scan.source], [train.truth], model="svm", flatfield=str(train.flatfield_path)),
               tmp_path / "svm.sedmodel")
    pr = _classify_in_the_widget(make_napari_viewer(), qtbot, sim("off", 2, 0.92), tmp_path / "svm.sedmodel")
    qtbot.waitUntil(lambda: any("amorphous-ice ring" in m for m in notifications), timeout=10000)
    assert any("effective camera length is 82" in m for m in notifications)
    assert "<b>warning</b>" in pr._summary.value
    # in napari's words: the widgets that fix it, not a command to type (there is no command line here)
    (said,) = [m for m in notifications if "amorphous-ice ring" in m]
    assert "the RIA widget's Fit camera length" in said and "(Scan geometry)" in said
    assert "sedclassify calibrate" not in said and "--camera-length" not in said
    assert "sedclassify calibrate" not in pr._summary.value


def test_prediction_says_when_the_model_does_not_fit_the_session(make_napari_viewer, qtbot, tmp_path, notifications):
    """A one-session SVM classifying a scan of a session with 2.5x thicker ice in the Prediction
    widget: its amorphous-ice frames are not the frames showing the ice ring, and the widget says
    so (napari warning and under the counts), as `sedclassify predict` does."""
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.train import train_model
    from napari_sedclassify.simulate import session_grid, simulate_scan

    train = simulate_scan(tmp_path / "train.npy", scan_shape=(24, 24), detector_px=128, seed=1)
    save_model(train_model([train.scan.source], [train.truth], model="svm"), tmp_path / "svm.sedmodel")
    thick = simulate_scan(tmp_path / "thick.npy", scan_shape=(24, 24), detector_px=128, seed=2,
                          session=session_grid("A", ice=(2.5,))[0])
    pr = _classify_in_the_widget(make_napari_viewer(), qtbot, thick, tmp_path / "svm.sedmodel")
    qtbot.waitUntil(lambda: any("agree on only" in m for m in notifications), timeout=10000)
    assert "<b>warning</b>" in pr._summary.value
    (said,) = [m for m in notifications if "agree on only" in m]
    assert "'Classify before labeling' widget's Propose classes" in said and "sedclassify" not in said


def _classify_in_the_widget(viewer, qtbot, sim, model_path):
    """A simulated scan shown as the reader shows it, classified with ``model_path`` in the
    Prediction widget; returns the widget once the job ended."""
    from napari_sedclassify._napari.layers import scan_layer_data
    from napari_sedclassify.processing.virtual import virtual_image

    name = Path(sim.scan.source).stem
    data, kwargs, _ = scan_layer_data(sim.scan, np.asarray(virtual_image(sim.scan)), name=name)
    layer = viewer.add_image(data, **kwargs)
    _, pr = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Prediction")
    pr._scan.value = layer
    pr._model_path.value = model_path
    wait(qtbot, pr.run())
    return pr
