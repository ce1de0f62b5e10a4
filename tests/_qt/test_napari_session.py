"""The napari session as a user lives it (issue 14; napari parts of issue 12), in real viewers
under Xvfb on tiny scans: refusals said in place with the fix and no stale result, 0-based
label files, overview candidates, lengths without a scan step, the reader as napari's choice
and precise reasons for refused files, the scan geometry fields, units in the status bar,
results reused, layers that do not cover the scan, no matplotlib warnings."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from napari_sedclassify import Geometry, Scan
from napari_sedclassify._napari.layers import SCAN_KEY, scan_layer_data
from napari_sedclassify._napari.state import preprocess_of
from napari_sedclassify.classes import AMORPHOUS_ICE, CARBON, ClassTable

PLUGIN = "napari-sedclassify"



def add_scan(viewer, scan, name=None):
    from napari_sedclassify.processing.virtual import virtual_image

    data, kwargs, _ = scan_layer_data(scan, np.asarray(virtual_image(scan), np.float32), name=name)
    return viewer.add_image(data, **kwargs)


def beam_frames(sy, sx, k=64, seed=0):
    """(sy, sx, k, k) uint16: a Poisson direct beam near the centre on a weak background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:k, :k]
    beam = 200.0 * ((yy - k / 2) ** 2 + (xx - k / 2) ** 2 < 16)
    return rng.poisson(beam + 2.0, size=(sy, sx, k, k)).astype(np.uint16)


def wait(qtbot, job, timeout_ms=60000):
    assert job is not None
    qtbot.waitUntil(lambda: job.done, timeout=timeout_ms)
    assert job.outcome == "done", job.error


# --- prediction ---------------------------------------------------------------------------------

def _model_for_a_larger_detector(path):
    """An FCNN model file trained on a small simulated scan of the 512 px quad."""
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.models.training import train
    from napari_sedclassify.pipeline.train import default_recipe, scan_features
    from napari_sedclassify.simulate import simulate_scan

    sim = simulate_scan(scan_shape=(8, 8), seed=2)
    labels = np.full((8, 8), CARBON, np.uint8)
    labels[:, :4] = AMORPHOUS_ICE
    recipe = default_recipe("fcnn")
    features, _ = scan_features(sim.scan, recipe, name="quad")
    model = train([features], [labels], kind="fcnn", recipe=recipe, params={"max_epochs": 2}, val_fraction=0.4)
    return save_model(model, path)


def test_refused_prediction_clears_the_old_result_and_says_why_with_the_fix(make_napari_viewer, tmp_path, disk_scan):
    viewer = make_napari_viewer()
    layer = add_scan(viewer, disk_scan)
    _, pr = viewer.window.add_plugin_dock_widget(PLUGIN, "Prediction")
    # a previous prediction on show, with its counts and a "done" status
    class_map = np.full(disk_scan.scan_shape, CARBON, np.uint8)
    probabilities = np.full(disk_scan.scan_shape + (4,), 0.25, np.float32)
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.processing import PreprocessParams

    pr.show_prediction(layer, {"class_map": class_map, "probabilities": probabilities, "class_ids": [1, 2, 3, 4]},
                       ClassTable.default(), preprocess(disk_scan, PreprocessParams(workers=1)), "m.sedmodel")
    pr._jobs.status.value = "done"
    assert f"{layer.name} predicted classes" in viewer.layers and "carbon: 20" in pr._summary.value

    pr._model_path.value = _model_for_a_larger_detector(tmp_path / "quad.sedmodel")
    assert pr.run() is None  # refused before any work
    status = pr._jobs.status.value
    assert "refused" in status and "done" not in status
    assert "quad.sedmodel cannot be applied to disk_scan" in status  # the whole reason, not cut after the path
    assert "the q axes cannot be matched" in status and "(the pixel size (Scan geometry))" in status
    assert "--pixel-size" not in status and "Python" not in status  # the engine's advice in napari's words
    assert "fix" in status and "Scan geometry" in status and "pixel size 55 µm" in status  # what to set
    assert f"{layer.name} predicted classes" not in viewer.layers and f"{layer.name} confidence" not in viewer.layers
    assert pr._summary.value == "" and pr.prediction is None

    # a model file that is no model: the reason, without a geometry hint that does not apply
    (tmp_path / "junk.sedmodel").write_bytes(b"not a zip")
    pr._model_path.value = tmp_path / "junk.sedmodel"
    assert pr.run() is None
    assert "not a napari-sedclassify model file" in pr._jobs.status.value and "fix" not in pr._jobs.status.value



def test_prediction_reuses_the_centring_pass_whose_profile_reaches_farther(make_napari_viewer, qtbot, tmp_path):
    """A model on RIAs preprocesses only as far as it reads the profile (q = 0.6 Å⁻¹); when the
    user's centring pass is there (its profile reaching the frame's corner: the same bins and
    more), the prediction takes its RIAs instead of preprocessing the scan again."""
    from napari_sedclassify._napari.state import session_of
    from napari_sedclassify.simulate import simulate_scan

    path = _model_for_a_larger_detector(tmp_path / "m.sedmodel")
    sim = simulate_scan(scan_shape=(8, 8), seed=3)
    viewer = make_napari_viewer()
    layer = add_scan(viewer, sim.scan)
    _, ce = viewer.window.add_plugin_dock_widget(PLUGIN, "Centring")
    _, pr = viewer.window.add_plugin_dock_widget(PLUGIN, "Prediction")
    ce._scan.value = pr._scan.value = layer
    wait(qtbot, ce.run())
    result = preprocess_of(layer)
    assert result.params.ria_r_max_px is None
    pr._model_path.value = path
    wait(qtbot, pr.run())
    kept = session_of(layer)._prediction
    assert kept is not None and kept[1] is result  # the centring pass: nothing preprocessed again
    assert preprocess_of(layer) is result


# --- labels -------------------------------------------------------------------------------------

def test_zero_based_label_files_are_detected_and_shifted(make_napari_viewer, tmp_path, disk_scan, notifications):
    from napari_sedclassify.labels import save_class_map

    viewer = make_napari_viewer()
    layer = add_scan(viewer, disk_scan)
    _, lab = viewer.window.add_plugin_dock_widget(PLUGIN, "Labels")
    zero_based = np.zeros((4, 5), np.uint8)  # 0 = carbon, 1 = amorphous ice, 3 = mixed
    zero_based[:, :2] = 1
    zero_based[:, 2] = 3
    save_class_map(tmp_path / "zero.npy", zero_based)
    lab._load_path.value = tmp_path / "zero.npy"
    labels = lab.load_labels()
    np.testing.assert_array_equal(labels.data, zero_based + 1)
    assert "0-based" in lab._status.value and "1-based" in lab._status.value  # what was done, and the way back
    assert any("0-based" in m for m in notifications)
    lab._ids.value = "one"  # the user says 0 means unlabeled in this file
    np.testing.assert_array_equal(lab.load_labels().data, zero_based)
    # a 1-based file with mixed points is read as stored, silently
    one_based = zero_based + 1
    save_class_map(tmp_path / "one.npy", one_based)
    lab._ids.value = "auto"
    lab._load_path.value = tmp_path / "one.npy"
    np.testing.assert_array_equal(lab.load_labels().data, one_based)
    assert "0-based" not in lab._status.value
    assert layer.name in lab._scan.value.name


def test_overview_list_offers_only_overview_images(make_napari_viewer, disk_scan):
    from napari_sedclassify._napari.state import set_layer

    viewer = make_napari_viewer()
    layer = add_scan(viewer, disk_scan)
    _, lab = viewer.window.add_plugin_dock_widget(PLUGIN, "Labels")
    for name in ("centre x (px)", "descan residual (px)", "PCC"):
        set_layer(viewer, f"{layer.name} {name}", np.zeros(disk_scan.scan_shape), like=layer)
    viewer.add_image(np.zeros(disk_scan.scan_shape), name="another map on the grid", scale=layer.scale)
    overview = viewer.add_image(np.zeros((120, 90)), name="overview (image mode)")
    lab._overview.reset_choices()
    assert [c for c in lab._overview.choices if c is not None] == [overview]


def test_a_class_map_goes_in_without_its_editing_overlays_and_gets_them_in_later_turns(make_napari_viewer, qtbot,
                                                                                       disk_scan):
    """Adding a Labels layer builds napari's polygon and brush overlays in later turns of the event
    loop (one stall less); they end up visible with their visuals, and painting works. What is to
    follow the layer (the confidence map) comes after both, not in the same turn as one."""
    from napari_sedclassify._napari.state import EDITING_OVERLAYS, set_layer

    viewer = make_napari_viewer()
    layer = add_scan(viewer, disk_scan)
    class_map = np.ones(disk_scan.scan_shape, np.uint8)
    seen = []
    labels = set_layer(viewer, f"{layer.name} classes", class_map, kind="labels", like=layer,
                       then=lambda: seen.append([o.visible for o in overlays]))
    canvas = viewer.window._qt_viewer.canvas
    overlays = [labels._overlays[key] for key in EDITING_OVERLAYS]
    assert not any(o.visible for o in overlays) and not seen
    assert not set(overlays) & set(canvas._layer_overlay_to_visual.get(labels, {}))
    qtbot.waitUntil(lambda: all(o.visible for o in overlays), timeout=2000)
    assert set(overlays) <= set(canvas._layer_overlay_to_visual[labels])
    assert not seen  # a turn of its own after the last overlay's
    qtbot.waitUntil(lambda: bool(seen), timeout=2000)
    assert seen == [[True, True]]
    set_layer(viewer, labels.name, class_map * 2, kind="labels", like=layer, then=lambda: seen.append("now"))
    assert seen[-1] == "now" and labels.data.max() == 2  # an existing layer: updated, then at once
    labels.mode = "paint"
    labels.selected_label = 3
    labels.brush_size = 1
    labels.paint((2, 2), 3)
    assert labels.data[2, 2] == 3 and labels.data[0, 0] == 2
    assert labels in viewer.layers and viewer.layers.selection.active is layer

    # a layer to paint on is selected in a turn of its own, before its overlays come
    order = []
    painted = set_layer(viewer, "to paint", class_map, kind="labels", like=layer, select=True,
                        then=lambda: order.append("then"))
    own = [painted._overlays[key] for key in EDITING_OVERLAYS]
    assert viewer.layers.selection.active is layer and not any(o.visible for o in own)
    qtbot.waitUntil(lambda: viewer.layers.selection.active is painted, timeout=2000)
    assert not any(o.visible for o in own) and not order
    qtbot.waitUntil(lambda: order == ["then"], timeout=2000)
    assert all(o.visible for o in own)


def test_lengths_without_a_scan_step_are_in_steps_until_the_step_is_set(make_napari_viewer):
    scan = Scan(beam_frames(6, 6), Geometry(detector_shape=(64, 64)), source="no_step")
    viewer = make_napari_viewer()
    layer = add_scan(viewer, scan)
    _, lab = viewer.window.add_plugin_dock_widget(PLUGIN, "Labels")
    assert lab._unit.value == "steps"
    assert lab._beam.value == 1.0 and lab._border.value == 1.0  # not 55 (nm) taken as 55 steps
    assert "scan step" in lab._status.value and "unknown" in lab._status.value
    assert lab.lengths_in_steps() == (1.0, 1.0)

    _, geo = viewer.window.add_plugin_dock_widget(PLUGIN, "Scan geometry")
    geo._scan.value = geo._scan.choices[0]
    geo._fields["scan_step_nm"].value = 25.0
    assert geo.apply() is not None
    assert lab._unit.value == "nm" and lab._beam.value == 55.0
    assert lab.lengths_in_steps() == pytest.approx((55 / 25, 55 / 25))
    np.testing.assert_allclose(layer.scale, (25.0, 25.0))


# --- readers ------------------------------------------------------------------------------------

def test_file_open_uses_this_plugin_once_the_workflow_is_docked(make_napari_viewer, tmp_path, notifications):
    from napari.settings import get_settings

    np.save(tmp_path / "scan.npy", beam_frames(4, 5))
    np.save(tmp_path / "picture.npy", np.arange(12.0).reshape(3, 4))
    (tmp_path / "notes.npy").write_text("this is text, not an array\n")
    viewer = make_napari_viewer()
    _, wf = viewer.window.add_plugin_dock_widget(PLUGIN, "Workflow (all steps)")
    assert get_settings().plugins.extension2reader["*.npy"] == PLUGIN and wf._prefer.value

    # plugin=None is what File > Open and drag and drop do: napari's reader preferences decide (a
    # plain viewer.open(path) in a script means plugin="napari", napari's own reader, by napari's API)
    (scan_layer,) = viewer.open(str(tmp_path / "scan.npy"), plugin=None)  # no "Choose reader", no raw 4D image
    assert scan_layer.metadata[SCAN_KEY].scan_shape == (4, 5) and scan_layer.name == "scan"
    (picture,) = viewer.open(str(tmp_path / "picture.npy"), plugin=None)  # a plain array still opens as an image
    assert SCAN_KEY not in picture.metadata and picture.data.shape == (3, 4)
    assert viewer.open(str(tmp_path / "notes.npy"), plugin=None) == []
    assert any("notes.npy" in m and "not a NumPy .npy file" in m and "text" in m for m in notifications), notifications

    wf._prefer.value = False  # the choice goes back to napari
    assert "*.npy" not in get_settings().plugins.extension2reader


def test_file_open_and_drag_and_drop_read_scans_without_asking(make_napari_viewer, tmp_path, monkeypatch):
    """napari's own routes, not viewer.open: File > Open (QtViewer._qt_open) and a drop of files
    (_open_from_list_of_urls_data) open a 4D .npy with this plugin and never show "Choose reader"."""
    import napari._qt.qt_viewer as qt_viewer_module
    from qtpy.QtCore import QUrl

    asked = []
    monkeypatch.setattr(qt_viewer_module, "handle_gui_reading", lambda *a, **k: asked.append(a))
    np.save(tmp_path / "scan_a.npy", beam_frames(4, 5))
    np.save(tmp_path / "scan_b.npy", beam_frames(3, 4, seed=1))
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget(PLUGIN, "Workflow (all steps)")
    qt = viewer.window._qt_viewer
    qt._qt_open([str(tmp_path / "scan_a.npy")], stack=False)  # File > Open
    qt._open_from_list_of_urls_data([QUrl.fromLocalFile(str(tmp_path / "scan_b.npy"))], stack=False,
                                    choose_plugin=False)  # drag and drop
    assert not asked  # no reader dialog
    scans = {layer.name: layer.metadata[SCAN_KEY].scan_shape for layer in viewer.layers if SCAN_KEY in layer.metadata}
    assert scans == {"scan_a": (4, 5), "scan_b": (3, 4)}  # scans, not raw 4D images
    assert len(viewer.layers) == 2


def test_flatfield_from_a_text_file_says_what_it_is(tmp_path):
    from napari_sedclassify.processing import load_flatfield

    (tmp_path / "flood.npy").write_text("0 1 2\n3 4 5\n")
    with pytest.raises(ValueError) as info:
        load_flatfield(tmp_path / "flood.npy")
    message = str(info.value)
    assert "flood.npy" in message and "not a NumPy .npy file" in message and "allow_pickle" not in message


# --- scan geometry ------------------------------------------------------------------------------

def test_opening_a_scan_shows_its_geometry_and_apply_updates_the_scan(make_napari_viewer, qtbot, tmp_path):
    from napari_sedclassify._napari.reader import INTEGRATING
    from napari_sedclassify._napari.widgets.geometry import GeometryWidget

    np.save(tmp_path / "stack.npy", beam_frames(1, 24).reshape(24, 64, 64))  # 3D stack: shape not in the file
    (tmp_path / "stack.json").write_text(json.dumps({"geometry": {"voltage_kv": 300.0}}))
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "stack.npy"), plugin=PLUGIN)
    qtbot.waitUntil(lambda: any(isinstance(w, GeometryWidget) for w in viewer.window.dock_widgets.values()),
                    timeout=10000)
    geo = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, GeometryWidget))
    qtbot.waitUntil(lambda: INTEGRATING not in layer.metadata, timeout=30000)
    assert geo._scan.value == layer
    assert "ASSUMED" in geo._fields["pixel_size_um"].label and "ASSUMED" in geo._fields["camera_length_mm"].label
    assert "from the file" in geo._fields["voltage_kv"].label and geo._fields["voltage_kv"].value == 300.0
    assert geo._fields["scan_step_nm"].value == 0.0 and "unknown" in geo._fields["scan_step_nm"].label
    assert "does not say the scan shape" in geo._how.value  # 24 frames opened as one row

    geo._fields["camera_length_mm"].value = 1200.0
    geo._fields["scan_step_nm"].value = 40.0
    geometry = geo.apply()
    scan = layer.metadata[SCAN_KEY]
    assert scan.geometry is geometry and geometry.camera_length_mm == 1200.0 and geometry.scan_step_nm == 40.0
    assert geometry.origin("camera_length_mm") == "user" and geometry.origin("pixel_size_um") == "user"
    assert geometry.origin("voltage_kv") == "file"  # left alone: still from the file
    np.testing.assert_allclose(layer.scale, (40.0, 40.0))
    assert "set by you" in geo._fields["camera_length_mm"].label

    geo._sy.value, geo._sx.value = 4, 6  # the true scan shape
    wait(qtbot, geo.reopen())
    qtbot.waitUntil(lambda: INTEGRATING not in layer.metadata, timeout=30000)
    new = layer.metadata[SCAN_KEY]
    assert new.scan_shape == (4, 6) and layer.data.shape == (4, 6)
    assert new.geometry.camera_length_mm == 1200.0 and new.geometry.origin("camera_length_mm") == "user"
    np.testing.assert_allclose(layer.data.ravel(), beam_frames(1, 24).reshape(24, -1).sum(axis=1))


def test_status_bar_shows_the_scan_point_in_nm(make_napari_viewer, disk_scan):
    viewer = make_napari_viewer()
    layer = add_scan(viewer, disk_scan)
    no_step = add_scan(viewer, Scan(beam_frames(3, 3), Geometry(detector_shape=(64, 64)), source="nostep"))
    no_step.translate = (0.0, 1000.0)
    viewer.window.add_plugin_dock_widget(PLUGIN, "Diffraction view")
    viewer.mouse_over_canvas = True
    viewer.layers.selection.active = layer
    viewer.cursor.position = tuple(layer.data_to_world((2, 3)))
    viewer.update_status_from_cursor()
    assert "scan point (2, 3) of disk_scan at y 60 nm, x 90 nm" in viewer.status["coordinates"]
    viewer.layers.selection.active = no_step
    viewer.cursor.position = tuple(no_step.data_to_world((1, 2)))
    viewer.update_status_from_cursor()
    assert "scan point (1, 2) of nostep (scan step unknown" in viewer.status["coordinates"]


# --- results reused, layout -----------------------------------------------------------------------

def test_centring_maps_stay_hidden_below_and_rias_are_reused(make_napari_viewer, qtbot, disk_scan):
    from napari_sedclassify._napari.state import FLATFIELD_KEY, set_state
    from napari_sedclassify.processing import FlatField

    viewer = make_napari_viewer()
    layer = add_scan(viewer, disk_scan)
    _, ce = viewer.window.add_plugin_dock_widget(PLUGIN, "Centring")
    _, ria = viewer.window.add_plugin_dock_widget(PLUGIN, "RIA")
    viewer.layers.selection.active = layer
    selected = []
    viewer.layers.selection.events.active.connect(lambda e: selected.append(e.value))
    wait(qtbot, ce.run())
    maps = ("centre x (px)", "centre y (px)", "descan residual (px)")
    qtbot.wait(200)  # the figure shows them; as layers only on request (each costs the viewer a stall)
    assert not any(f"{layer.name} {name}" in viewer.layers for name in maps)
    assert not ce._maps_button.native.isHidden()  # offered once there is a result
    ce._maps_button.native.click()  # added one per turn of the loop
    qtbot.waitUntil(lambda: all(f"{layer.name} {name}" in viewer.layers for name in maps), timeout=10000)
    # the scan the user works on stays selected: the maps are added without taking the selection
    # (napari would swap the layer controls for each and resize the canvas)
    assert selected == [] and viewer.layers.selection.active is layer
    names = [ly.name for ly in viewer.layers]
    for name in maps:
        maps = viewer.layers[f"{layer.name} {name}"]
        assert not maps.visible and names.index(maps.name) < names.index(layer.name)  # never over the image
    assert viewer.layers[-1] == layer
    cx_layer = viewer.layers[f"{layer.name} centre x (px)"]
    cx_layer.data = np.zeros_like(cx_layer.data)
    wait(qtbot, ce.run())  # a new result updates the map layers there are
    qtbot.waitUntil(lambda: np.array_equal(cx_layer.data, np.asarray(preprocess_of(layer).centres)[..., 1],
                                           equal_nan=True), timeout=10000)
    result = preprocess_of(layer)
    assert ria.run() is result  # the centring pass made the RIAs: nothing recomputed
    assert "nothing to recompute" in ria._jobs.status.value
    # a new flat-field makes the stored RIAs stale: computed again
    set_state(layer, FLATFIELD_KEY, FlatField.identity(disk_scan.detector_shape))
    job = ria.run()
    wait(qtbot, job)
    assert preprocess_of(layer) is not result


def test_svm_training_curves_draw_without_a_legend_warning(make_napari_viewer):
    viewer = make_napari_viewer()
    _, tr = viewer.window.add_plugin_dock_widget(PLUGIN, "Training")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from napari_sedclassify._napari.widgets.training import training_figure

    tr.history = [{"stage": "fit", "max_epochs": 2, "n_support": 12}, {"val_accuracy": 0.9}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = Figure()
        FigureCanvasAgg(figure)
        training_figure(tr.history, None, figure)
        figure.canvas.draw()
    assert figure.axes[-1].get_ylabel() == "val accuracy" and figure.axes[0].get_legend() is None


def test_uncertain_frames_are_grey_in_the_class_map_and_left_out_of_the_keep_list(make_napari_viewer, tmp_path,
                                                                                     disk_scan):
    import csv

    from napari_sedclassify._napari.widgets.prediction import UNCERTAIN_LABEL
    from napari_sedclassify.models.inference import uncertain_mask

    viewer = make_napari_viewer()
    layer = add_scan(viewer, disk_scan)
    _, pr = viewer.window.add_plugin_dock_widget(PLUGIN, "Prediction")
    rng = np.random.default_rng(5)
    probabilities = rng.dirichlet(np.full(4, 0.6), size=disk_scan.scan_shape).astype(np.float32)
    probabilities[0, 0] = np.nan  # a missing frame: not classified, not "uncertain"
    class_map = np.where(np.isfinite(probabilities).all(-1), probabilities.argmax(-1) + 1, 0).astype(np.uint8)
    out = {"class_map": class_map, "probabilities": probabilities, "class_ids": [1, 2, 3, 4]}
    low = uncertain_mask(probabilities, 0.6)
    assert 0 < low.sum() < low.size - 1  # some frames of each kind

    pr._uncertain.value = 0.6
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.processing import PreprocessParams

    made = preprocess(disk_scan, PreprocessParams(workers=1))
    pr.show_prediction(layer, out, ClassTable.default(), made, tmp_path / "m.sedmodel")
    shown = viewer.layers[f"{layer.name} predicted classes"]
    assert (np.asarray(shown.data)[low] == UNCERTAIN_LABEL).all()  # drawn distinctly...
    assert (np.asarray(shown.data)[~low] == class_map[~low]).all()
    colour = shown.colormap.map(np.array([UNCERTAIN_LABEL]))[0]
    assert colour[3] > 0 and not np.allclose(colour, shown.colormap.map(np.array([0]))[0])  # ...visible, not as 0
    assert (pr.prediction["class_map"][low] == 0).all()  # class 0 in exports
    assert f"{int(low.sum())} uncertain (probability below 0.6)" in pr._summary.value

    pr._keep.value = [1, 2, 3, 4]  # keep every class: only the uncertain (and unclassified) frames drop out
    pr._keep_path.value = tmp_path / "keep.csv"
    pr.export_keep_list()
    with open(tmp_path / "keep.csv") as fh:
        kept = {(int(r["row"]), int(r["col"])) for r in csv.DictReader(fh)}
    expected = {tuple(p) for p in np.argwhere(~low & (class_map > 0))}
    assert kept == expected

    pr._uncertain.value = 0.0  # off: the prediction on show is marked again, nothing uncertain
    assert UNCERTAIN_LABEL not in np.asarray(viewer.layers[f"{layer.name} predicted classes"].data)
    assert (pr.prediction["class_map"] == class_map).all() and "uncertain" not in pr._summary.value


def test_a_prediction_goes_stale_when_its_flatfield_changes(make_napari_viewer, tmp_path, disk_scan, notifications):
    """The class map on show belongs to the flat-field and geometry it was made with: a new flat-field
    marks it stale in place and its keep-list export is refused with the reason, not written from
    the old result."""
    from napari_sedclassify._napari.state import FLATFIELD_KEY, session_of, set_state
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.processing import FlatField, PreprocessParams

    viewer = make_napari_viewer()
    layer = add_scan(viewer, disk_scan)
    _, pr = viewer.window.add_plugin_dock_widget(PLUGIN, "Prediction")
    probabilities = np.random.default_rng(1).dirichlet(np.ones(4), size=disk_scan.scan_shape).astype(np.float32)
    out = {"class_map": (probabilities.argmax(-1) + 1).astype(np.uint8), "probabilities": probabilities,
           "class_ids": [1, 2, 3, 4]}
    made = preprocess(disk_scan, PreprocessParams(workers=1))
    pr.show_prediction(layer, out, ClassTable.default(), made, tmp_path / "m.sedmodel")
    session = session_of(layer)
    assert pr.prediction is not None and session.model == str(tmp_path / "m.sedmodel")
    pr._keep.value = [2]
    pr._keep_path.value = tmp_path / "keep.csv"
    assert pr.export_keep_list() is not None

    set_state(layer, FLATFIELD_KEY, FlatField.identity(disk_scan.detector_shape))
    assert pr.prediction is None and "stale" in pr._summary.value
    (tmp_path / "keep.csv").unlink()
    assert pr.export_keep_list() is None and not (tmp_path / "keep.csv").exists()
    assert any("stale" in n for n in notifications)


def test_docking_the_workflow_prepares_the_first_layers_off_the_event_loop(make_napari_viewer):
    """What the first scan and class-map layers would build in the event loop (napari's unit
    registry, the numba functions of a direct label colour map) is built in a thread when the
    Workflow is docked, and the long-lived objects are frozen out of the garbage collector's walks."""
    import gc

    from napari_sedclassify._napari import reader

    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget(PLUGIN, "Workflow (all steps)")
    assert reader._warming is not None
    reader._warming.join(180)
    assert not reader._warming.is_alive()
    assert gc.get_freeze_count() > 10000


def test_the_warm_up_computes_the_line_dash_patterns_of_the_first_labels_polygon_overlay():
    """vispy computes its line-dash patterns (once per process) when the first 'agg' line visual is
    built, which the first Labels layer's polygon overlay does in the event loop (60 ms of a 100 ms
    turn). The warm-up thread computes them; a fresh process, as the viewer's is."""
    import subprocess
    import sys

    code = ("from vispy.visuals.line import dash_atlas\n"
            "from napari_sedclassify._napari import reader\n"
            "before = dash_atlas._make_pattern.cache_info().currsize\n"
            "reader.warm_up(); reader._warming.join(120)\n"
            "print(before, dash_atlas._make_pattern.cache_info().currsize)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    before, after = map(int, out.stdout.split())
    assert before == 0 and after >= 13


def test_a_job_shows_its_progress_in_its_widget_and_napari_bars_only_for_long_unshown_jobs(
        make_napari_viewer, qtbot, monkeypatch):
    """A job launched from a widget reports in the widget's own bar (napari's activity-dialog bar
    costs 130-250 ms of the event loop to create and to update on a software-rendered desktop);
    a job no widget shows gets napari's bar once it has run NAPARI_BAR_AFTER_S."""
    import threading

    from napari_sedclassify._napari import jobs

    make_napari_viewer()
    monkeypatch.setattr(jobs, "UPDATE_MS", 20)
    monkeypatch.setattr(jobs, "NAPARI_BAR_AFTER_S", 0.2)
    release = threading.Event()

    def work(report, cancelled):
        report(3, 8)
        release.wait(10)
        return "ok"

    buttons = jobs.JobButtons("Run", lambda: None)
    shown = buttons.launch(jobs.BackgroundJob("shown", work))
    alone = jobs.BackgroundJob("alone", work)
    alone.start()
    qtbot.waitUntil(lambda: buttons.bar.value == 3 and alone._bar is not None, timeout=5000)
    assert not buttons.bar.native.isHidden() and buttons.bar.max == 8
    assert shown._bar is None  # never napari's bar, however long it runs
    release.set()
    qtbot.waitUntil(lambda: shown.done and alone.done, timeout=5000)
    assert buttons.bar.native.isHidden() and buttons.status.value == "done: shown" and alone._bar is None  # closed


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_jobs_and_prefetching_run_below_the_viewers_priority(qtbot):
    """A job's work, and the threads it starts (the runner's workers), run niced below the UI
    thread, so the viewer keeps its cores while it builds layers and paints; the UI thread and
    Qt's shared pool threads keep their priority; the diffraction view's prefetch thread is
    lowered, its thread for the frame under the cursor is not."""
    import os
    import threading

    from napari_sedclassify._napari import jobs
    from napari_sedclassify._napari.widgets.diffraction_view import FrameLoader

    def nice():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    ui = nice()

    def work(report, cancelled):
        seen = {"job": nice()}
        child = threading.Thread(target=lambda: seen.__setitem__("child", nice()))
        child.start()
        child.join()
        return seen

    got = []
    job = jobs.BackgroundJob("niced", work, on_returned=got.append)
    job.start()
    qtbot.waitUntil(lambda: job.done, timeout=5000)
    assert job.outcome == "done"
    assert got and got[0]["job"] == min(19, ui + jobs.BACKGROUND_NICE) and got[0]["child"] == got[0]["job"]
    assert nice() == ui

    # a job that fails still reports its error (the work's own thread catches it)
    def broken(report, cancelled):
        raise ValueError("scan.npy: damaged")

    job3 = jobs.BackgroundJob("broken", broken)
    job3.start()
    qtbot.waitUntil(lambda: job3.done, timeout=5000)
    assert job3.outcome == "failed" and "damaged" in str(job3.error)

    loader = FrameLoader()
    loader._start()
    try:
        ids = {t.name: t.native_id for t in loader._threads}
        qtbot.waitUntil(lambda: all(i is not None for i in ids.values()), timeout=2000)
        qtbot.waitUntil(lambda: os.getpriority(os.PRIO_PROCESS, ids["diffraction view frames (prefetch)"]) > ui,
                        timeout=2000)
        assert os.getpriority(os.PRIO_PROCESS, ids["diffraction view frames (requested)"]) == ui
    finally:
        loader.close()


def test_quick_switches_overlap_in_any_order_and_restore_the_interval():
    """A job's work and the viewer's warm-up each switch the interpreter quickly while they run;
    overlapping, ending in either order, the interval from before the first is put back when the
    last ends (each used to put back what it found, leaving 1 ms for good after some overlaps)."""
    import sys

    from napari_sedclassify._napari.interpreter import QUICK_SWITCH_INTERVAL_S, quick_switches

    before = sys.getswitchinterval()
    assert before > QUICK_SWITCH_INTERVAL_S
    for first_ends_first in (True, False):
        a, b = quick_switches(), quick_switches()
        a.__enter__()
        assert sys.getswitchinterval() == QUICK_SWITCH_INTERVAL_S
        b.__enter__()
        (a if first_ends_first else b).__exit__(None, None, None)
        assert sys.getswitchinterval() == QUICK_SWITCH_INTERVAL_S
        (b if first_ends_first else a).__exit__(None, None, None)
        assert sys.getswitchinterval() == before
