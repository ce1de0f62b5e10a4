"""The diffraction view: one frame read from the lazy scan per point shown, its centre, masked
pixels and RIA (log or linear), hover and click, missing frames."""

from __future__ import annotations

import numpy as np

from napari_sedclassify import Geometry, Scan
from napari_sedclassify._napari.layers import scan_layer_data
from napari_sedclassify.processing import FlatField


class CountingFrames:
    """A (sy, sx, k, k) array that records which frames are read."""

    def __init__(self, data):
        self.data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads = []

    def __getitem__(self, index):
        self.reads.append(index)
        return self.data[index]


def beam_scan(missing_point=None):
    """6x7 scan, 64x64 px: a 200-count beam of radius 4 px drifting 0.5 px per step, a ring at
    20 px; one frame recorded as missing (zeros) when asked."""
    import dask.array as da

    rng = np.random.default_rng(3)
    sy, sx, k = 6, 7, 64
    yy, xx = np.mgrid[:k, :k]
    data = np.zeros((sy, sx, k, k), np.uint16)
    for iy in range(sy):
        for ix in range(sx):
            cy, cx = 30.0 + 0.5 * iy, 31.0 + 0.5 * ix
            r = np.hypot(yy - cy, xx - cx)
            data[iy, ix] = rng.poisson(200.0 * (r < 4) + 20.0 * np.exp(-((r - 20) ** 2) / 4) + 2.0)
    missing = np.zeros((sy, sx), bool)
    if missing_point is not None:
        data[missing_point] = 0
        missing[missing_point] = True
    frames = CountingFrames(data)
    scan = Scan(da.from_array(frames, chunks=(1, 1, k, k), asarray=False),
                Geometry(detector_shape=(k, k), scan_step_nm=30.0), missing=missing, source="beam_scan")
    return scan, frames


def test_one_frame_read_per_point_with_centre_mask_and_ria(make_napari_viewer, qtbot):
    scan, frames = beam_scan(missing_point=(5, 6))
    viewer = make_napari_viewer()
    data, kwargs, _ = scan_layer_data(scan, np.zeros(scan.scan_shape))
    layer = viewer.add_image(data, **kwargs)
    _, view = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Diffraction view")

    frames.reads.clear()
    view.show_point(view._scan.value, 2, 3)  # the layer as the widget sees it (napari proxies it)
    assert len(frames.reads) == 1  # the 4D scan stays lazy: only that frame was read
    cy, cx = (float(np.ravel(v)[0]) for v in view._ax_frame.lines[0].get_data()[::-1])  # marker at (x, y)
    assert abs(cy - 31.0) < 0.3 and abs(cx - 32.5) < 0.3
    ria_line = view._ax_ria.lines[0]
    radii, ria = ria_line.get_data()
    ring = ria[np.argmin(abs(radii - 20.0))]
    assert ring > 5 * ria[np.argmin(abs(radii - 12.0))]  # the ring at 20 px stands out
    assert view._ax_ria.get_yscale() == "log"
    view._log.value = False
    assert view._ax_ria.get_yscale() == "linear"

    # a flat-field with masked pixels: they are excluded and drawn over the frame
    mask = np.zeros((64, 64), bool)
    mask[10, 10:15] = True
    layer.metadata = {**layer.metadata, "sedclassify_flatfield": FlatField(np.ones((64, 64)), mask)}
    assert "5 masked px" in view._info.value  # the view refreshed itself on the new flat-field
    assert len(view._ax_frame.images) == 2  # frame + masked-pixel overlay

    # hovering: several moves in a row show only where the cursor stopped
    frames.reads.clear()
    for point in ((0, 0), (1, 1), (4, 5)):
        view._on_move(viewer, type("E", (), {"position": layer.data_to_world(point)})())
    qtbot.waitUntil(lambda: view.point[1:] == (4, 5), timeout=5000)
    assert len(frames.reads) == 1
    assert view._ax_frame.get_title().endswith("(4, 5)")

    # a missing frame: said so, no centre, no crash
    view.show_point(layer, 5, 6)
    assert "missing frame" in view._info.value
    assert "no beam found" in view._ax_ria.texts[0].get_text()
