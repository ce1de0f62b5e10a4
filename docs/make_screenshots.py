"""Take the screenshots of docs/user-guide.md (docs/images/guide_*.png) from a real napari viewer.

    .venv/bin/python docs/make_screenshots.py

Opens napari's sample data (File > Open Sample > SED classify), docks the workflow widget and
walks every step the way a user would (a flat-field file, centring, RIA, a PCC click, regions
drawn per class, FCNN training, prediction), saving a screenshot of the window after each step.
Without a display it starts its own virtual X server (Xvfb, as in the tests).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"
WINDOW = (1920, 1080)


def wait(job, timeout_s=600):
    """Let the event loop run until a widget's background job has finished."""
    from qtpy.QtWidgets import QApplication

    t0 = time.time()
    while not job.done:
        QApplication.processEvents()
        time.sleep(0.01)
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"{job.description} did not finish in {timeout_s} s")
    if job.outcome != "done":
        raise RuntimeError(f"{job.description}: {job.outcome}: {job.error}")


def settle(seconds=0.5):
    from qtpy.QtWidgets import QApplication

    t0 = time.time()
    while time.time() - t0 < seconds:
        QApplication.processEvents()
        time.sleep(0.02)


def shot(viewer, name):
    settle(1.5)  # the widgets' figures are laid out and drawn in threads
    viewer.reset_view()
    settle()
    path = OUT / f"guide_{name}.png"
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"wrote {path.relative_to(OUT.parent.parent)}")


def ice_outlines(truth):
    """Outlines a user would draw on the sample: the ice-filled hole, then each crystal."""
    from skimage.measure import find_contours

    from napari_sedclassify.classes import AMORPHOUS_ICE, CRYSTALLINE_ICE

    out = []
    for cid, mask in ((AMORPHOUS_ICE, np.isin(truth, (AMORPHOUS_ICE, CRYSTALLINE_ICE))),
                      (CRYSTALLINE_ICE, truth == CRYSTALLINE_ICE)):
        for contour in find_contours(np.pad(mask.astype(float), 1), 0.5):
            if len(contour) >= 4:
                # a hand-drawn polygon has a few vertices, not one per pixel edge
                out.append((cid, (contour - 1.0)[:: max(1, len(contour) // 24)]))
    return out


def main():
    import napari

    from napari_sedclassify.classes import AMORPHOUS_ICE, CARBON
    from napari_sedclassify.simulate import sample_scan

    OUT.mkdir(exist_ok=True)
    sim = sample_scan()
    work = Path(tempfile.mkdtemp(prefix="sedclassify-guide-"))
    np.save(work / "flatfield_A.npy", sim.flatfield)

    viewer = napari.Viewer(show=True, title="napari-sedclassify")
    viewer.window._qt_window.resize(*WINDOW)
    viewer.open_sample("napari-sedclassify", "holey_carbon_scan")
    scan_layer = viewer.layers["simulated scan (integrated)"]
    viewer.layers["truth"].visible = False
    _, wf = viewer.window.add_plugin_dock_widget("napari-sedclassify", "Workflow (all steps)")
    viewer.layers.selection.active = scan_layer
    wf.diffraction.show_point(scan_layer, 14, 6, mark=True)
    shot(viewer, "open")

    # 1 flat-field
    wf.flatfield._path.value = work / "flatfield_A.npy"
    wait(wf.flatfield.run())
    wf.show_step(1)
    shot(viewer, "flatfield")

    # 2 centring
    wf.show_step(2)
    wait(wf.centring.run())
    wf.centring._maps_button.native.click()  # the maps as layers too (on request)
    settle(1.0)  # the map layers arrive one per turn of the event loop
    shot(viewer, "centring")

    # diffraction view of an ice point: frame, centre, masked pixels, RIA on a log scale
    wf.diffraction.show_point(scan_layer, 18, 11, mark=True)
    shot(viewer, "diffraction")

    # 3 RIA per class of the true labels, smoothed log (the paper's Fig. 5c)
    wf.show_step(3)
    wf.ria._labels.value = viewer.layers["truth"]
    wf.ria._smooth.value = 13
    wf.ria._axis.value = "q"
    wf.ria.plot()
    shot(viewer, "ria")

    # 4 PCC of a clicked ice point
    wf.show_step(4)
    ice = tuple(int(v) for v in np.argwhere(sim.truth == AMORPHOUS_ICE)[len(np.argwhere(sim.truth == 2)) // 2])
    wf.pcc.correlate(*ice)
    shot(viewer, "pcc")
    viewer.layers[f"{scan_layer.name} PCC"].visible = False

    # 5 labels: the overview registered from landmark pairs (as if opened from its own file),
    # then regions drawn per class, mixed border of the beam's width, carbon elsewhere
    from napari_sedclassify.labels import overview_to_scan

    wf.show_step(5)
    lab = wf.labeling
    overview = viewer.layers["overview (image mode)"]
    overview.affine = np.eye(3)
    lab._overview.reset_choices()
    lab._overview.value = overview
    on_overview, on_scan = lab.landmark_layers()
    rows, cols = overview.data.shape[:2]
    features = np.array([[0.15, 0.2], [0.2, 0.85], [0.8, 0.8], [0.85, 0.15], [0.5, 0.45]]) * (rows, cols)
    clicked = overview_to_scan(features, sim.overview_to_scan) + np.random.default_rng(0).normal(0, 0.15, (5, 2))
    for p, q in zip(features, clicked):
        on_overview.add(p)
        on_scan.add(q)
    from qtpy.QtWidgets import QScrollArea

    area = lab.native.parent()
    while area is not None and not isinstance(area, QScrollArea):
        area = area.parent()
    if area is not None:  # the landmark buttons in view
        area.ensureWidgetVisible(lab._fit.native)
    shot(viewer, "landmarks")
    lab.register_from_landmarks()
    on_overview.visible = on_scan.visible = False
    for cid, polygon in ice_outlines(sim.truth):
        lab._class.value = cid
        lab.regions_layer().add_polygons([polygon])
    lab._beam.value, lab._border.value = 55.0, 40.0
    lab.make_class_map()
    viewer.layers.selection.active = viewer.layers[f"{scan_layer.name} regions"]
    shot(viewer, "labels")

    # 6 training: an FCNN on the RIAs, in the background, with live curves
    wf.show_step(6)
    tr = wf.training
    tr._data.value = [c for c in tr._data.choices if c.startswith(scan_layer.name) and "labels" in c]
    tr._model.value = "fcnn"
    wait(tr.run())
    tr._save_path.value = work / "fcnn_sample.sedmodel"
    tr.save_model()
    shot(viewer, "training")

    # 7 prediction with the model just trained
    wf.show_step(7)
    viewer.layers[f"{scan_layer.name} labels"].visible = False
    viewer.layers[f"{scan_layer.name} regions"].visible = False
    wait(wf.prediction.run())
    viewer.layers.selection.active = scan_layer
    shot(viewer, "prediction")
    agree = (viewer.layers[f"{scan_layer.name} predicted classes"].data == sim.truth).mean()
    carbon = (viewer.layers[f"{scan_layer.name} predicted classes"].data == CARBON).sum()
    print(f"prediction agrees with the truth on {agree:.1%} of the points ({carbon} carbon)")
    viewer.close()


if __name__ == "__main__":
    display = None
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=(1920, 1080), color_depth=24)
        display.start()
    try:
        main()
    finally:
        if display is not None:
            display.stop()
