"""The camera length fitted from the data in napari (issue 12): a button on the RIA step runs
``pipeline.calibrate`` in the background, the scan's geometry takes the value (marked fitted), and
the diffraction view draws the fitted ice ring about the frame's centre."""

from __future__ import annotations

SCAN = "simulated scan (integrated)"


def test_ria_step_fits_the_camera_length_and_the_view_draws_the_ring(make_napari_viewer, qtbot):
    from napari_sedclassify._napari.layers import find_scan
    from napari_sedclassify._napari.widgets.diffraction_view import DiffractionView
    from napari_sedclassify._napari.widgets.ria import RIAWidget

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-sedclassify", "holey_carbon_scan")
    layer = viewer.layers[SCAN]
    scan = find_scan(layer)
    ria = RIAWidget(viewer)
    view = DiffractionView(viewer)
    viewer.window.add_dock_widget(ria)
    viewer.window.add_dock_widget(view)
    job = ria.calibrate()
    qtbot.waitUntil(lambda: job.done, timeout=120000)
    assert job.outcome == "done", job.error
    g = scan.geometry
    assert g.origin("camera_length_mm") == "fitted"
    assert abs(g.camera_length_mm / 900.0 - 1) < 0.01  # the sample's session draws its rings at 900 mm
    assert "fitted from" in ria.calibration_info.value
    view.show_point(layer, 12, 12)
    qtbot.waitUntil(lambda: view.frame_view.rgba is not None and len(view.frame_view.rings_px) == 1, timeout=20000)
    expected = g.d_A_to_radius_px(3.7)
    assert abs(view.frame_view.rings_px[0] - expected) < 1e-6
