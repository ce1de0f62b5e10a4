"""The napari Live widget: the class-map layer fills as frames arrive; a CNN model classifies in a
child process (TensorFlow never enters the viewer's process)."""

from __future__ import annotations

import numpy as np
from test_live import setup  # noqa: F401  (the fixture: a scan to acquire and the FCNN for it)

from napari_sedclassify.io import open_scan
from napari_sedclassify.pipeline.acquisition import Acquisition
from napari_sedclassify.pipeline.predict import predict_scan


def test_napari_live_layer_follows_the_acquisition(setup, tmp_path, make_napari_viewer, qtbot):
    from napari_sedclassify._napari.widgets.live import LAYER_NAME, LiveWidget
    from napari_sedclassify.models.persistence import load_model

    sim = setup["sim"]
    viewer = make_napari_viewer()
    widget = LiveWidget(viewer)
    viewer.window.add_dock_widget(widget)
    target = tmp_path / "acq.mib"
    widget._model_path.value = setup["model_path"]
    widget._input.value = str(target)
    widget._flatfield.value = setup["flat"]
    widget._calibration.value = sim.scan.source
    drawn = []  # frames shown by the layer at each redraw
    load_model(setup["model_path"])  # libraries imported: the widget starts watching at once
    job = widget.start()
    writer = Acquisition(sim.scan, target, rate_hz=100,
                         hold=lambda k: k >= 60 and not any(n > 0 for n in drawn))  # until a partial map showed
    writer.start()
    original_refresh = widget.refresh

    def refresh():
        original_refresh()
        if widget.layer is not None:
            drawn.append(int((widget.layer.data > 0).sum()))

    widget._timer.timeout.disconnect()
    widget._timer.timeout.connect(refresh)
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    writer.join()
    assert job.outcome == "done" and widget.result.status == "complete"
    layer = viewer.layers[LAYER_NAME]
    assert np.array_equal(layer.data, widget.state.class_map())
    assert (layer.data > 0).all()
    assert any(0 < n < 100 for n in drawn), drawn  # the layer showed a partial class map while frames arrived
    assert "complete: 100 of 100 frames" in widget._summary.value


#: A tiny CNN, seconds to train on 2 cores.
TINY_CNN = {"filters": (4, 8, 8), "max_epochs": 3, "patience": 3, "samples_per_epoch": 256, "batch_size": 64}


def _train_cnn_in_child(folder, flat, progress=None, cancel=None):
    """In a spawned child (TensorFlow never loads in the test process, where napari draws): a tiny
    CNN on the two training scans of ``setup``, with the default preprocessing, as its FCNN."""
    from pathlib import Path

    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.train import train_model
    from napari_sedclassify.simulate.simulation import sidecar_paths

    folder = Path(folder)
    scans = [str(folder / f"t{i}.npy") for i in (0, 1)]
    model = train_model(scans, [str(sidecar_paths(s)["truth"]) for s in scans], model="cnn", flatfield=flat,
                        params=TINY_CNN)
    return str(save_model(model, folder / "cnn.sedmodel"))


def _batch_in_child(model_path, path, geometry, flat, progress=None, cancel=None):
    scan = open_scan(path, (10, 10))
    scan.geometry = geometry
    scan.metadata.pop("edge_pixel_width", None)
    return predict_scan(model_path, scan, flatfield=flat).class_map


def test_napari_live_with_a_cnn_model_keeps_tensorflow_out(setup, tmp_path, make_napari_viewer, qtbot):
    """The Live widget with a CNN model file without arrays (written before them): the network
    classifies in a spawned child whose state is relayed to the widget; TensorFlow never enters
    this process while the canvas draws. (A file with arrays is applied here, with numpy.)"""
    import sys

    from napari_sedclassify._napari.widgets.live import LAYER_NAME, LiveWidget
    from napari_sedclassify.models.tf_process import run_in_process

    assert "tensorflow" not in sys.modules and "keras" not in sys.modules
    import json
    import zipfile

    trained = run_in_process(_train_cnn_in_child, str(setup["dir"]), setup["flat"])
    model_path = str(tmp_path / "keras_only.sedmodel")
    with zipfile.ZipFile(trained) as zin, zipfile.ZipFile(model_path, "w") as zout:
        meta = json.loads(zin.read("model.json"))
        meta["estimator"].pop("arrays")
        zout.writestr("model.json", json.dumps(meta))
        zout.writestr("estimator.keras", zin.read("estimator.keras"))
    sim = setup["sim"]
    viewer = make_napari_viewer(show=True)  # a drawing canvas: TensorFlow here would crash on software OpenGL
    widget = LiveWidget(viewer)
    viewer.window.add_dock_widget(widget)
    target = tmp_path / "acq.mib"
    widget._model_path.value = model_path
    widget._input.value = str(target)
    widget._flatfield.value = setup["flat"]
    widget._calibration.value = sim.scan.source
    job = widget.start()
    assert job is not None
    writer = Acquisition(sim.scan, target, rate_hz=100,
                         hold=lambda k: k >= 60 and (widget.state is None or widget.state.n_done == 0))
    writer.start()
    qtbot.waitUntil(lambda: job.done, timeout=180_000)
    writer.join()
    assert job.outcome == "done", job.error
    assert widget.result.status == "complete" and widget.state.n_done == 100
    assert widget.state.latency_stats()["calibration_frames"] >= 48  # relayed from the child
    layer = viewer.layers[LAYER_NAME]
    assert np.array_equal(layer.data, widget.state.class_map()) and (layer.data > 0).all()
    assert "complete: 100 of 100 frames" in widget._summary.value
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules
    # the same class map as a batch run of the CNN on the finished file (also in a child)
    batch = run_in_process(_batch_in_child, model_path, str(target), sim.geometry, setup["flat"])
    assert np.array_equal(widget.state.class_map(), batch)
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules


def test_napari_live_says_a_warning_while_the_run_goes_on(make_napari_viewer, notifications):
    """A warning the live run raises mid-acquisition (the ice ring says the camera length is off),
    in the viewer's process or relayed from a child's: napari says it once, and the summary keeps it
    under the counts."""
    from napari_sedclassify._napari.model_jobs import live_relay
    from napari_sedclassify._napari.widgets.live import LiveWidget
    from napari_sedclassify.pipeline.live import LiveClassMap

    viewer = make_napari_viewer()
    widget = LiveWidget(viewer)
    viewer.window.add_dock_widget(widget)
    state = LiveClassMap((4, 4), [1, 2, 3, 4], [2], {1: "carbon", 2: "amorphous_ice", 3: "crystalline_ice",
                                                     4: "mixed"})
    widget.state = state
    relay = live_relay(state)  # what a child's state changes do to the parent's
    relay(1, {"event": "update", "index": np.arange(4), "class_ids": np.full(4, 2, np.uint8),
              "probabilities": np.full((4, 4), 0.25, np.float32), "latencies": np.zeros(4)})
    text = "after 4 of 16 frames: acq.mib: its amorphous-ice ring (3.7 Å, 4 frames) lies 8.0% further in"
    relay(2, {"event": "warn", "text": text})
    relay(3, {"event": "warn", "text": text})  # said once
    assert state.warnings == [text]
    widget.refresh()
    widget.refresh()
    assert "<b>warning</b>: after 4 of 16 frames" in widget._summary.value
    assert sum(text in m for m in notifications) == 1
