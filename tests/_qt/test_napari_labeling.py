"""The labeling widget in a real viewer: regions drawn per class -> class map with mixed border,
fixed colours, legend, save/load, and errors as notifications."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sedclassify import Geometry, Scan
from napari_sedclassify._napari.layers import scan_layer_data
from napari_sedclassify.classes import AMORPHOUS_ICE, CARBON, CRYSTALLINE_ICE, MIXED, ClassTable
from napari_sedclassify.labels import Region, class_map_from_regions, load_class_map



def blank_scan(shape=(16, 18), step=30.0):
    data = np.zeros(shape + (8, 8), np.uint16)
    return Scan(data, Geometry(detector_shape=(8, 8), scan_step_nm=step), source="grid")


def add_scan(viewer, scan):
    data, kwargs, _ = scan_layer_data(scan, np.zeros(scan.scan_shape))
    return viewer.add_image(data, **kwargs)


def test_regions_become_a_class_map_with_mixed_border(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    scan_layer = add_scan(viewer, blank_scan())
    _, widget = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Labels")
    widget._class.value = AMORPHOUS_ICE
    shapes = widget.regions_layer()
    assert shapes.name == "grid regions" and shapes.mode == "add_polygon"
    np.testing.assert_allclose(shapes.scale, scan_layer.scale)  # drawn in scan space (nm)
    hole = np.array([[2.5, 2.5], [2.5, 14.5], [13.5, 14.5], [13.5, 2.5]])
    shapes.add_polygons([hole])
    widget._class.value = CRYSTALLINE_ICE
    crystal = np.array([[6.5, 6.5], [10.5, 10.5]])  # a rectangle by two corners
    shapes.add_rectangles([crystal])
    assert list(shapes.features["class"]) == [AMORPHOUS_ICE, CRYSTALLINE_ICE]
    np.testing.assert_allclose(shapes.face_color[1][:3], np.array([0xF2, 0xC1, 0x2E]) / 255, atol=0.01)

    # 60 nm beam and 42 nm border at a 30 nm step: 2 and 1.4 scan steps
    widget._unit.value = "nm"
    widget._beam.value = 60.0
    widget._border.value = 42.0
    assert widget.lengths_in_steps() == pytest.approx((2.0, 1.4))
    labels = widget.make_class_map()
    expected = class_map_from_regions(
        [Region(AMORPHOUS_ICE, hole), Region(CRYSTALLINE_ICE, [[6.5, 6.5], [6.5, 10.5], [10.5, 10.5], [10.5, 6.5]])],
        (16, 18),
        beam_diameter=2.0,
        border=1.4,
    )
    np.testing.assert_array_equal(labels.data, expected)
    assert set(np.unique(labels.data)) == {CARBON, AMORPHOUS_ICE, CRYSTALLINE_ICE, MIXED}
    assert labels.name == "grid labels"
    np.testing.assert_allclose(labels.scale, scan_layer.scale)
    table = ClassTable.default()
    for cid in table.ids:  # fixed colours, whatever the labels' values
        want = np.array([int(table.colours[cid][i : i + 2], 16) / 255 for i in (1, 3, 5)])
        np.testing.assert_allclose(labels.colormap.map(np.array([cid]))[0][:3], want, atol=0.01)
    n_mixed = int((labels.data == MIXED).sum())
    assert f"mixed: {n_mixed}" in widget._legend.value

    # switching units converts the lengths
    widget._unit.value = "steps"
    assert widget._beam.value == pytest.approx(2.0) and widget._border.value == pytest.approx(1.4)

    # selected shapes take a new class
    shapes.selected_data = {1}
    widget._class.value = AMORPHOUS_ICE
    assert list(shapes.features["class"]) == [AMORPHOUS_ICE, AMORPHOUS_ICE]
    assert not np.any(widget.make_class_map().data == CRYSTALLINE_ICE)

    # save, then load into a fresh viewer state
    widget._save_path.value = tmp_path / "grid_labels.tif"
    widget.save_labels()
    np.testing.assert_array_equal(load_class_map(tmp_path / "grid_labels.tif"), labels.data)
    viewer.layers.remove(labels)
    widget._load_path.value = tmp_path / "grid_labels.tif"
    loaded = widget.load_labels()
    np.testing.assert_array_equal(loaded.data, labels.data)

    # a labels file of another scan is refused with a notification, the viewer keeps going
    np.save(tmp_path / "other.npy", np.ones((5, 5), np.uint8))
    widget._load_path.value = tmp_path / "other.npy"
    assert widget.load_labels() is None
    assert any("other.npy" in m and "does not match the scan shape" in m for m in notifications)


def test_nothing_to_label_gives_clear_messages(make_napari_viewer, notifications):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Labels")
    assert widget.make_class_map() is None
    assert any("open a scan first" in m for m in notifications)
    add_scan(viewer, blank_scan(step=None))
    assert widget._unit.value == "steps"  # no nm without a known scan step
    assert widget.make_class_map() is None
    assert any("draw regions first" in m for m in notifications)


def test_overview_registered_onto_the_scan_and_ellipses(make_napari_viewer, tmp_path, notifications):
    """An overview 4x finer than the scan, registered with its overview -> scan affine, lies on the
    scan points; an ellipse drawn over it labels the points inside it."""
    viewer = make_napari_viewer()
    scan_layer = add_scan(viewer, blank_scan((16, 16)))
    overview = viewer.add_image(np.random.default_rng(1).random((72, 72)), name="overview")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Labels")
    affine = np.array([[0.25, 0.0, -1.0], [0.0, 0.25, -2.0], [0.0, 0.0, 1.0]])
    np.savetxt(tmp_path / "overview_to_scan.csv", affine, delimiter=",")
    widget._overview.value = overview
    widget._affine_path.value = tmp_path / "overview_to_scan.csv"
    assert widget.register_overview() is overview
    for p in ([0.0, 0.0], [40.0, 12.0], [71.0, 71.0]):
        scan_xy = affine[:2, :2] @ p + affine[:2, 2]
        np.testing.assert_allclose(overview.data_to_world(p), scan_layer.data_to_world(scan_xy), atol=1e-9)
    np.save(tmp_path / "bad.npy", np.eye(2))
    widget._affine_path.value = tmp_path / "bad.npy"
    assert widget.register_overview() is None
    assert any("must be 3x3" in m for m in notifications)

    shapes = widget.regions_layer()
    shapes.add_ellipses([np.array([[8.0, 8.0], [4.2, 3.2]])])  # centre (8, 8), radii 4.2 x 3.2 steps
    widget._unit.value = "steps"
    widget._beam.value, widget._border.value = 0.0, 0.0
    cm = widget.make_class_map().data
    yy, xx = np.mgrid[:16, :16]
    inside = ((yy - 8) / 4.2) ** 2 + ((xx - 8) / 3.2) ** 2 < 0.97  # off the outline (64-gon)
    outside = ((yy - 8) / 4.2) ** 2 + ((xx - 8) / 3.2) ** 2 > 1.0
    assert np.all(cm[inside] == AMORPHOUS_ICE) and np.all(cm[outside] == CARBON)


def test_overview_registered_from_landmark_pairs_clicked_on_both_images(make_napari_viewer, notifications):
    """Landmarks: the overview is shown beside the integrated image, points go in pairs (the layer
    to click next is selected after each point), and the least-squares affine from the pairs puts
    the overview on the scan points, its landmarks moving with it; bad pairs are refused in place."""
    from napari_sedclassify.labels import overview_to_scan

    viewer = make_napari_viewer()
    scan_layer = add_scan(viewer, blank_scan((16, 16)))
    overview = viewer.add_image(np.random.default_rng(1).random((72, 72)), name="overview")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Labels")
    widget._overview.value = overview
    on_overview, on_scan = widget.landmark_layers()
    # beside the integrated image, as tall: both can be clicked
    ov_box = np.array([overview.data_to_world(p) for p in ([0, 0], [71, 71])])
    scan_box = np.array([scan_layer.data_to_world(p) for p in ([0, 0], [15, 15])])
    assert ov_box[0, 1] > scan_box[1, 1]
    assert abs((ov_box[1, 0] - ov_box[0, 0]) / (scan_box[1, 0] - scan_box[0, 0]) - 71 / 72 * 16 / 15) < 0.01
    assert viewer.layers.selection.active.name == on_overview.name and on_overview.mode == "add"

    angle = np.deg2rad(-5.0)
    true = np.eye(3)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    true[:2, :2] = np.diag([0.22, 0.2]) @ rotation  # the overview's rows a little longer than its columns
    true[:2, 2] = [-0.5, 1.0]
    ov_points = np.array([[5.0, 8.0], [60.0, 12.0], [55.0, 66.0], [10.0, 60.0], [35.0, 35.0]])
    rng = np.random.default_rng(2)
    sc_points = overview_to_scan(ov_points, true) + rng.normal(0, 0.05, ov_points.shape)
    for k, (p, q) in enumerate(zip(ov_points, sc_points)):
        # clicked where each image is drawn: world positions, as napari's add mode does
        on_overview.add(on_overview.world_to_data(overview.data_to_world(p)))
        assert viewer.layers.selection.active.name == on_scan.name and on_scan.mode == "add"
        assert f"on {scan_layer.name}" in widget._status.value
        if k == 1:  # unequal pairs refused in place, nothing moved
            before = np.asarray(overview.affine.affine_matrix).copy()
            assert widget.register_from_landmarks() is None
            assert "2 landmarks on the overview but 1 on the scan" in widget._status.value
            np.testing.assert_array_equal(overview.affine.affine_matrix, before)
        on_scan.add(on_scan.world_to_data(scan_layer.data_to_world(q)))
        assert viewer.layers.selection.active.name == on_overview.name
    for points in (on_overview, on_scan):  # numbered in placing order
        assert list(points.features["pair"]) == [1, 2, 3, 4, 5]
    fit = widget.register_from_landmarks()
    assert fit is not None and fit.kind == "affine" and "residual RMS" in widget._status.value
    for p in ([0.0, 0.0], [40.0, 12.0], [71.0, 71.0]):
        expected = scan_layer.data_to_world(overview_to_scan([p], true)[0])
        np.testing.assert_allclose(overview.data_to_world(p), expected, atol=0.1 * scan_layer.scale[0])
    for p, q in zip(on_overview.data, on_scan.data):  # the landmarks moved with the overview
        gap = np.subtract(on_overview.data_to_world(p), on_scan.data_to_world(q))
        assert np.linalg.norm(gap) < 0.3 * scan_layer.scale[0]
    assert overview in [layer for _, layer in widget._overview_choices()]

    on_scan.data = on_scan.data[:2]  # collinear overview points refused with the reason
    on_overview.data = np.array([[0.0, 0.0], [10.0, 10.0]])
    on_overview.add([20.0, 20.0])
    on_scan.add([5.0, 3.0])
    assert widget.register_from_landmarks() is None
    assert "lie on one line" in widget._status.value
    assert any("lie on one line" in m for m in notifications)
