"""The plugin's sample data in a real viewer: overview, integrated image and truth, registered."""

from __future__ import annotations

import numpy as np


def test_napari_sample_data_opens_in_viewer(make_napari_viewer):
    from napari_sedclassify._napari.layers import find_scan

    viewer = make_napari_viewer()
    viewer.open_sample("napari-sedclassify", "holey_carbon_scan")
    names = [layer.name for layer in viewer.layers]
    assert names == ["overview (image mode)", "simulated scan (integrated)", "truth"]
    overview, image, truth = viewer.layers
    scan = find_scan(image)
    assert scan is not None and scan.scan_shape == (24, 24) and scan.detector_shape == (256, 256)
    assert image.data.shape == (24, 24)
    assert truth.data.shape == (24, 24) and set(np.unique(truth.data)) == {1, 2, 3, 4}
    np.testing.assert_allclose(truth.scale, (30.0, 30.0))
    # the class colours are those of the class table
    from napari_sedclassify.classes import ClassTable
    from napari.utils.colormaps.standardize_color import transform_color

    for cid, hexcol in ClassTable.default().colours.items():
        if cid:
            np.testing.assert_allclose(truth.colormap.map(cid), transform_color(hexcol)[0], atol=1e-2)
    # the overview is registered on the scan: world position of scan point (iy, ix) is (30 iy, 30 ix) nm,
    # and in the overview carbon points are darker than ice points
    iy, ix = np.indices((24, 24))
    world = np.stack([iy.ravel() * 30.0, ix.ravel() * 30.0], axis=1)
    data = np.array([overview.world_to_data(w) for w in world])
    from scipy.ndimage import map_coordinates

    vals = map_coordinates(overview.data, data.T, order=1).reshape(24, 24)
    assert np.median(vals[truth.data == 1]) < 0.9 * np.median(vals[truth.data == 2])
