"""The diffraction view: one frame read from the lazy scan per point shown, its centre, masked
pixels and RIA (log or linear), hover and click, missing frames."""

from __future__ import annotations

import numpy as np

from napari_sedclassify import Geometry, Scan
from napari_sedclassify._napari.layers import scan_layer_data
from napari_sedclassify._napari.state import FLATFIELD_KEY, set_state
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

    def points(self):
        """(iy, ix) of each read, in order (dask reads with slices or integers)."""
        return [tuple(int(getattr(i, "start", i)) for i in index[:2]) for index in self.reads]


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
    view.prefetch_radius = 0  # reads ahead: see test_points_around_the_cursor_are_prepared_ahead
    qtbot.waitUntil(lambda: view._loader.idle, timeout=5000)

    frames.reads.clear()
    view.show_point(view._scan.value, 2, 3)  # the layer as the widget sees it (napari proxies it)
    assert len(frames.reads) == 1  # the 4D scan stays lazy: only that frame was read
    cy, cx = view.frame_view.centre  # the cyan cross
    assert abs(cy - 31.0) < 0.3 and abs(cx - 32.5) < 0.3
    radii, ria = view.ria_view.x, view.ria_view.y
    ring = ria[np.argmin(abs(radii - 20.0))]
    assert ring > 5 * ria[np.argmin(abs(radii - 12.0))]  # the ring at 20 px stands out
    assert view.ria_view.log
    view._log.value = False
    assert not view.ria_view.log

    # a flat-field with masked pixels: they are excluded and drawn over the frame
    mask = np.zeros((64, 64), bool)
    mask[10, 10:15] = True
    set_state(layer, FLATFIELD_KEY, FlatField(np.ones((64, 64)), mask))
    # the view refreshes itself on the new flat-field (prepared in its thread, not in the event loop)
    qtbot.waitUntil(lambda: "5 masked px" in view._info.value, timeout=5000)
    from napari_sedclassify._napari.light_plots import MASK_RGBA

    assert (view.frame_view.rgba[10, 10:15] == MASK_RGBA).all()  # masked pixels drawn green
    assert not (view.frame_view.rgba[11, 10:15] == MASK_RGBA).all(axis=-1).any()

    # hovering: several moves in a row show only where the cursor stopped; the latest request
    # replaces one not yet started, so a sweep does not queue reads (no reads ahead here)
    view.prefetch_radius = 0
    qtbot.waitUntil(lambda: not view.loading, timeout=5000)
    frames.reads.clear()
    for point in ((0, 0), (1, 1), (4, 5)):
        view._on_move(viewer, type("E", (), {"position": layer.data_to_world(point)})())
    qtbot.waitUntil(lambda: view.point[1:] == (4, 5), timeout=5000)
    read = frames.points()
    assert read[-1] == (4, 5) and (1, 1) not in read and len(read) <= 2, read
    assert view.frame_view.title.endswith("(4, 5)")

    # a missing frame: said so, no centre, no crash
    view.show_point(layer, 5, 6)
    assert "missing frame" in view._info.value
    assert "no beam found" in view.ria_view.message


def test_frame_view_shows_the_stored_ria_on_a_quad_with_wide_edge_pixels():
    """On the simulator's 512 px quad (edge pixels 2.5 pitches wide) the frame view's centre and
    RIA are the preprocessing results', not a recomputation on a uniform pixel grid."""
    from types import SimpleNamespace

    from napari_sedclassify._napari.frame_info import frame_details
    from napari_sedclassify._napari.state import session_of
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.simulate import simulate_scan

    sim = simulate_scan(scan_shape=(4, 5), seed=1)
    assert sim.scan.metadata["edge_pixel_width"] == 2.5 and sim.scan.detector_shape == (512, 512)
    flatfield = FlatField.from_flood(sim.flatfield)
    layer = SimpleNamespace(metadata={"sedclassify_scan": sim.scan})
    session_of(layer).set_flatfield(flatfield)

    before = frame_details(layer, 2, 3)  # no results yet: the frame alone, through preprocess
    assert before.centre_kind == "found in this frame"
    assert np.allclose(before.centre, sim.centres[2, 3], atol=0.5)

    result = preprocess(sim.scan, {"workers": 1}, flatfield)
    assert result.resolved["edge_pixel_width"] == 2.5
    session_of(layer).store_result(result)
    for iy, ix in ((0, 0), (2, 3), (3, 4)):
        details = frame_details(layer, iy, ix)
        assert details.centre_kind == "per-frame"
        assert np.allclose(details.centre, result.centres_used[iy, ix], atol=1e-9)
        np.testing.assert_allclose(details.radii, result.radii_px, atol=1e-6)
        np.testing.assert_allclose(details.ria, result.ria[iy, ix], atol=1e-6, equal_nan=True)


def _hover(view, viewer, layer, point):
    view._on_move(viewer, type("E", (), {"position": layer.data_to_world(point)})())


def test_view_follows_the_scan_under_the_cursor_with_its_own_labels(make_napari_viewer, qtbot):
    """Two scans side by side: hovering B shows B's frame and B's labels, never A's; a frame
    is read off the UI thread once, then comes from the view's cache."""
    import time

    from napari_sedclassify._napari.state import LABELS_OF_KEY

    scan_a, frames_a = beam_scan()
    scan_b, frames_b = beam_scan()
    scan_b.source = "scan_B.npy"
    viewer = make_napari_viewer()
    data, kwargs, _ = scan_layer_data(scan_a, np.zeros(scan_a.scan_shape))
    layer_a = viewer.add_image(data, **kwargs)
    data, kwargs, _ = scan_layer_data(scan_b, np.zeros(scan_b.scan_shape))
    assert kwargs["name"] == "scan_B"  # no ".npy" in layer names
    layer_b = viewer.add_image(data, translate=(0.0, 300.0), **kwargs)  # B to the right of A
    labels_a = np.full(scan_a.scan_shape, 2, np.uint8)  # A: amorphous ice everywhere
    viewer.add_labels(labels_a, name="A labels", scale=layer_a.scale, metadata={LABELS_OF_KEY: layer_a.name})
    labels_b = np.full(scan_b.scan_shape, 1, np.uint8)  # B: carbon everywhere
    viewer.add_labels(labels_b, name="B labels", scale=layer_b.scale, translate=layer_b.translate,
                      metadata={LABELS_OF_KEY: layer_b.name})
    _, view = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Diffraction view")
    view.prefetch_radius = 0  # reads ahead: see test_points_around_the_cursor_are_prepared_ahead

    _hover(view, viewer, layer_a, (1, 2))
    qtbot.waitUntil(lambda: view.point is not None and view.point[1:] == (1, 2), timeout=5000)
    assert view.point[0] == layer_a and "A labels: amorphous ice" in view._info.value
    assert view.frame_view.title == "beam_scan (1, 2)"

    qtbot.waitUntil(lambda: view._loader.idle, timeout=5000)
    frames_a.reads.clear()
    frames_b.reads.clear()
    _hover(view, viewer, layer_b, (3, 4))
    qtbot.waitUntil(lambda: view.point[0] == layer_b, timeout=5000)
    assert view.point[1:] == (3, 4)
    assert view.frame_view.title == "scan_B (3, 4)"
    assert "B labels: carbon" in view._info.value and "A labels" not in view._info.value
    assert view._scan.value == layer_b  # the list says which scan is shown
    assert len(frames_b.reads) == 1 and not frames_a.reads

    # each mouse move is cheap (the frame is read in a worker, later); going back reads nothing
    times = []
    for point in [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5)] * 3:
        t0 = time.perf_counter()
        _hover(view, viewer, layer_b, point)
        times.append(time.perf_counter() - t0)
        qtbot.wait(5)
    assert max(times) < 0.05, times
    qtbot.waitUntil(lambda: view.point[1:] == (5, 5) and not view.loading, timeout=5000)
    frames_b.reads.clear()
    _hover(view, viewer, layer_b, (3, 4))
    qtbot.waitUntil(lambda: view.point[1:] == (3, 4), timeout=5000)
    assert not frames_b.reads  # from the cache


def _prefetching_view(make_napari_viewer):
    """(frames, viewer, scan layer, diffraction view) on beam_scan, prefetching 1 point around."""
    scan, frames = beam_scan()
    viewer = make_napari_viewer()
    data, kwargs, _ = scan_layer_data(scan, np.zeros(scan.scan_shape))
    layer = viewer.add_image(data, **kwargs)
    _, view = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Diffraction view")
    view.prefetch_radius = 1
    return frames, viewer, layer, view


def test_points_around_the_cursor_are_prepared_ahead(make_napari_viewer, qtbot):
    """Resting on a point prepares its neighbours in the view's thread (the way the cursor went
    first); moving there then shows the frame within the mouse-move callback, reading nothing."""
    frames, viewer, layer, view = _prefetching_view(make_napari_viewer)
    _hover(view, viewer, layer, (2, 2))
    qtbot.waitUntil(lambda: view.point is not None and view.point[1:] == (2, 2) and view._loader.idle, timeout=20000)
    read = frames.points()
    around = {(y, x) for y in (1, 2, 3) for x in (1, 2, 3)}
    assert around <= set(read) and len(read) == len(set(read)), read  # (2, 2) and its 8 neighbours, once each
    frames.reads.clear()
    _hover(view, viewer, layer, (2, 3))  # moving right: only the column ahead is new
    qtbot.waitUntil(lambda: view.point[1:] == (2, 3) and view._loader.idle, timeout=20000)
    read = frames.points()
    assert set(read) == {(1, 4), (2, 4), (3, 4)} and len(read) == 3, read  # the rest was prepared already

    frames.reads.clear()
    _hover(view, viewer, layer, (2, 4))
    assert view.point[1:] == (2, 4) and view.frame_view.title == "beam_scan (2, 4)"  # shown at once
    assert not view.loading
    qtbot.waitUntil(lambda: view._loader.idle, timeout=20000)
    assert (2, 4) not in frames.points()


def test_prefetching_waits_while_a_job_runs(make_napari_viewer, qtbot):
    """While a background job runs (the integrated image of a scan just opened, preprocessing),
    the point under the cursor is still shown at once, but its neighbours are prepared only once
    the job has ended: guesses do not take the cores from the job and the viewer. The
    interpreter's switch interval is short while the job runs, as it was before afterwards."""
    import sys
    import threading

    from napari_sedclassify._napari.interpreter import QUICK_SWITCH_INTERVAL_S
    from napari_sedclassify._napari.jobs import BackgroundJob, jobs_running

    frames, viewer, layer, view = _prefetching_view(make_napari_viewer)
    qtbot.waitUntil(lambda: view._loader.idle, timeout=20000)  # what docking the view showed
    frames.reads.clear()
    release, running = threading.Event(), threading.Event()
    job = BackgroundJob("a long job", lambda report, cancelled: (running.set(), release.wait(60)))
    interval = sys.getswitchinterval()
    assert interval > QUICK_SWITCH_INTERVAL_S
    job.start()
    try:
        assert jobs_running() == 1  # counted from the start, before its thread runs
        assert running.wait(20) and jobs_running() == 1
        assert sys.getswitchinterval() == QUICK_SWITCH_INTERVAL_S
        _hover(view, viewer, layer, (2, 2))
        qtbot.waitUntil(lambda: view.point is not None and view.point[1:] == (2, 2), timeout=20000)
        qtbot.wait(500)  # ample time for 8 neighbours to be prepared, were the prefetch not waiting
        assert frames.points() == [(2, 2)] and not view._loader.idle
    finally:
        release.set()
        qtbot.waitUntil(lambda: job.done, timeout=20000)
    assert jobs_running() == 0 and sys.getswitchinterval() == interval
    qtbot.waitUntil(lambda: view._loader.idle, timeout=20000)
    assert set(frames.points()) == {(y, x) for y in (1, 2, 3) for x in (1, 2, 3)}


def test_the_first_point_of_a_scan_being_integrated_waits_for_its_image(make_napari_viewer, qtbot):
    """A scan just opened: the view shows its first point only once the integrated image is in
    (preparing that frame, centring and calibration sample included, competed with the image for
    the cores); a point under the cursor meanwhile does not wait."""
    from napari_sedclassify._napari.reader import INTEGRATING

    scan, frames = beam_scan()
    frames.reads.clear()  # dask's look at the array's type
    viewer = make_napari_viewer()
    _, view = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Diffraction view")
    data, kwargs, _ = scan_layer_data(scan, np.zeros(scan.scan_shape))
    kwargs["metadata"][INTEGRATING] = True
    layer = viewer.add_image(data, **kwargs)
    qtbot.waitUntil(lambda: view.loading, timeout=20000)  # the first point is asked for ...
    qtbot.wait(500)
    assert frames.points() == [] and view.loading and view.point is None  # ... and waits
    layer.metadata.pop(INTEGRATING)  # the image is in (reader._fill_layer)
    qtbot.waitUntil(lambda: view.point is not None and view.point[1:] == (0, 0), timeout=20000)
    assert frames.points()[0] == (0, 0)

    scan2, frames2 = beam_scan()
    frames2.reads.clear()
    data, kwargs, _ = scan_layer_data(scan2, np.zeros(scan2.scan_shape))
    kwargs["metadata"][INTEGRATING] = True
    kwargs["translate"] = (0.0, 1000.0)  # beside the first scan
    layer2 = viewer.add_image(data, **kwargs)
    qtbot.wait(200)
    _hover(view, viewer, layer2, (1, 2))  # the cursor: shown at once, integrating or not
    qtbot.waitUntil(lambda: view.point is not None and view.point[0] == layer2 and view.point[1:] == (1, 2),
                    timeout=20000)
    assert (1, 2) in frames2.points() and INTEGRATING in layer2.metadata
