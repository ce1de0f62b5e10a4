"""A real napari viewer (under Xvfb) runs this plugin's widget and gets the layer it makes."""

from __future__ import annotations

import numpy as np

from napari_sedclassify._napari.layers import SCAN_KEY, scan_layer_data
from napari_sedclassify.processing.virtual import virtual_image


def test_virtual_image_widget_adds_layer(make_napari_viewer, qtbot, disk_scan):
    viewer = make_napari_viewer()
    data, kwargs, _ = scan_layer_data(disk_scan, np.asarray(virtual_image(disk_scan)))
    viewer.add_image(data, **kwargs)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Virtual image")
    widget._inner.value = 0.0
    widget._outer.value = 8.0  # bright field: the direct beam disc
    assert widget.run() is not None
    # the job may end before a signal could be connected here: wait for what it does, the layer
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=30000)
    new = viewer.layers[-1]
    assert new.name.startswith("disk_scan virtual")
    assert new.data.shape == (4, 5)
    # Bright field of the 4x5 scan: the beam (radius 4 px, 200 counts) dominates, plus background.
    assert np.all(new.data > 40 * 200)
    # Left columns carry more background than right ones.
    assert new.data[:, :2].mean() > new.data[:, 3:].mean()
    assert SCAN_KEY not in new.metadata
    np.testing.assert_allclose(new.scale, (30.0, 30.0))
