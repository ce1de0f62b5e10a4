"""Session 25 sweep, napari: the Prediction step showed the camera-length warning's way out as
"`train --session-robust`", an option its Training widget does not have (tests/test_sweep_s25.py
for the engine and the command line).

Simulated scans (napari_sedclassify.simulate), real preprocessing, scikit-learn, a real napari viewer."""

from __future__ import annotations

import dataclasses

import pytest

from napari_sedclassify.simulate import simulate_scan
from napari_sedclassify.simulate.params import session_params


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    """A 16 x 16 scan (128 px detector) at 900 mm, an FCNN trained on it, and a scan at 300 mm."""
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.train import train_model

    d = tmp_path_factory.mktemp("sweep_napari")
    train = simulate_scan(d / "scan0.npy", scan_shape=(16, 16), detector_px=128, seed=0)
    short = dataclasses.replace(session_params("A"), camera_length_mm=300.0, nominal_camera_length_mm=300.0)
    far = simulate_scan(d / "short.npy", scan_shape=(16, 16), detector_px=128, session=short, seed=5)
    fcnn = save_model(train_model([train.path], [train.truth], model="fcnn", params={"max_epochs": 2}),
                      d / "fcnn.sedmodel")
    return {"short": far, "fcnn": fcnn}


def test_napari_says_the_camera_length_way_out_in_its_own_words(sims, make_napari_viewer, qtbot):
    """An FCNN trained at 900 mm classifies a 300 mm scan in napari: the warning is shown, and its
    way out names where `--session-robust` is (the command line), not a widget option."""
    from napari_sedclassify._napari.widgets.prediction import PredictionWidget

    viewer = make_napari_viewer()
    layer = viewer.open(str(sims["short"].path), plugin="napari-sedclassify")[0]
    widget = PredictionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._scan.value = layer
    widget._model_path.value = sims["fcnn"]
    job = widget.run()
    assert job is not None, widget._jobs.status.value
    qtbot.waitUntil(lambda: job.done, timeout=300000)
    assert job.outcome == "done", job.error
    (camera,) = [w for w in widget.prediction["warnings"] if "camera length of 300 mm" in w]
    assert "3.0x shorter" in camera
    assert "on the command line with `sedclassify train --session-robust`" in camera, camera
