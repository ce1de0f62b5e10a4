"""Layers removed in a long session (black-box report: a segfault in vispy's glDrawArrays after a
scan's layers were removed): the viewer keeps drawing when the regions drawn for labels are
removed and other layers are added after, and nothing is added for a scan that is gone."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sedclassify._napari.layers import scan_layer_data

PLUGIN = "napari-sedclassify"
SQUARE = np.array([[1.0, 1.0], [1.0, 5.0], [5.0, 5.0], [5.0, 1.0]])


@pytest.fixture(scope="module")
def sim():
    """A small simulated scan (8 x 8 points, 128 px frames) with its true class map."""
    from napari_sedclassify.simulate import simulate_scan

    return simulate_scan(scan_shape=(8, 8), detector_px=128, seed=3)


def add_scan(viewer, scan, name="scan"):
    from napari_sedclassify.processing.virtual import virtual_image

    data, kwargs, _ = scan_layer_data(scan, np.asarray(virtual_image(scan), np.float32), name=name)
    return viewer.add_image(data, **kwargs)


def painted(qtbot):
    """Let the window paint on screen (the crash came in that paint; a screenshot's offscreen
    render did not crash)."""
    qtbot.wait(300)


def test_regions_removed_then_labels_loaded_keeps_the_viewer_alive(make_napari_viewer, qtbot, sim, tmp_path):
    """Draw regions, remove their layer, load labels from a file: napari deleted the removed layer's
    shader programs and the next paint segfaulted in glDrawArrays (Mesa llvmpipe); the process died."""
    np.save(tmp_path / "truth.npy", sim.truth)
    viewer = make_napari_viewer(show=True)
    scan_layer = add_scan(viewer, sim.scan)
    _, lab = viewer.window.add_plugin_dock_widget(PLUGIN, "Labels")
    lab._scan.value = scan_layer
    lab.regions_layer().add_polygons([SQUARE])
    painted(qtbot)
    viewer.layers.remove(f"{scan_layer.name} regions")
    painted(qtbot)
    lab._load_path.value, lab._ids.value = tmp_path / "truth.npy", "one"
    labels = lab.load_labels()
    painted(qtbot)
    np.testing.assert_array_equal(labels.data, sim.truth)


def test_class_map_made_again_while_the_regions_go(make_napari_viewer, qtbot, sim, tmp_path):
    """Labels loaded, Make class map over them, the regions layer removed in the same turn: the
    Labels layer got new data and its (same) colormap again in that turn, and the next paint
    aborted the viewer (vispy: "Could not find texture")."""
    np.save(tmp_path / "truth.npy", sim.truth)
    viewer = make_napari_viewer(show=True)
    scan_layer = add_scan(viewer, sim.scan)
    _, lab = viewer.window.add_plugin_dock_widget(PLUGIN, "Labels")
    lab._scan.value = scan_layer
    lab._load_path.value, lab._ids.value = tmp_path / "truth.npy", "one"
    lab.load_labels()
    viewer.layers.remove(f"{scan_layer.name} labels")
    painted(qtbot)
    lab.load_labels()
    painted(qtbot)
    lab.regions_layer().add_polygons([SQUARE])
    labels = lab.make_class_map()
    viewer.layers.remove(f"{scan_layer.name} regions")
    painted(qtbot)
    assert labels in viewer.layers and int((labels.data != 1).sum()) > 0


def test_no_centring_maps_for_a_scan_removed_meanwhile(make_napari_viewer, qtbot, sim):
    """'Show the maps as layers', then the scan removed before they are added (one per turn): no
    map layer of the removed scan appears."""
    viewer = make_napari_viewer(show=True)
    scan_layer = add_scan(viewer, sim.scan)
    _, ce = viewer.window.add_plugin_dock_widget(PLUGIN, "Centring")
    job = ce.run()
    qtbot.waitUntil(lambda: job.done, timeout=60000)
    assert job.outcome == "done", job.error
    ce._maps_button.native.click()
    viewer.layers.remove(scan_layer)
    qtbot.wait(300)  # the maps were due 20 ms apart
    assert [layer.name for layer in viewer.layers if layer.name.startswith("scan ")] == []
