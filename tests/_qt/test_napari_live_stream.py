"""The napari Live widget on a detector's own stream: LiberTEM-live's Merlin simulator
(``libertem-live-mib-sim``) replays a simulated scan over the Merlin TCP protocol on loopback; the
widget (source "Merlin TCP stream") draws the class map as it fills, and ends with the batch class
map of the same file. Skips, saying why, without the ``live`` extra."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

try:
    from stream_sims import MerlinSim, simulator
except ImportError:  # tests/ not on sys.path (pytest run from elsewhere)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from stream_sims import MerlinSim, simulator

from napari_sedclassify.optional import live_available

SIM = simulator("libertem-live-mib-sim")
SCAN = (10, 10)
pytestmark = pytest.mark.skipif(
    not live_available("merlin") or SIM is None,
    reason='the live extra is not installed (pip install "napari-sedclassify[live]"): no libertem_qd_mpx '
           "receiver or libertem-live-mib-sim simulator")


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    """A 10x10 scan (128 px) as a Merlin .mib + .hdr served at 20 frames/s (5 s: the map is seen
    filling), and an FCNN whose plan does not depend on a sample of the scan (so the live and batch
    plans are the same)."""
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.acquisition import write_mib
    from napari_sedclassify.pipeline.train import train_model
    from napari_sedclassify.processing import PreprocessParams
    from napari_sedclassify.simulate import simulate_scan

    d = tmp_path_factory.mktemp("live_stream")
    sim = simulate_scan(d / "acq.npy", scan_shape=SCAN, detector_px=128, seed=42)
    frames = np.asarray(sim.scan.data.compute(scheduler="synchronous")).reshape((-1, 128, 128))
    mib = write_mib(d / "acq.mib", frames, SCAN)
    merlin = MerlinSim(mib.with_suffix(".hdr"), SCAN, d / "sim.log", dwell_us=50_000).launch()  # 20 frames/s
    try:
        train = [simulate_scan(d / f"t{i}.npy", scan_shape=(8, 8), detector_px=128, seed=40 + i) for i in (0, 1)]
        flat = str(sim.flatfield_path)
        pinned = PreprocessParams(beam_radius_px=3.5, saturation_counts=4095, detect_bad_pixels=False)
        model = train_model([t.scan.source for t in train], [t.truth for t in train], model="fcnn", flatfield=flat,
                            preprocess_params=pinned)
        save_model(model, d / "fcnn.sedmodel")
        merlin.wait()
        yield {"sim": sim, "mib": mib, "flat": flat, "model": model, "model_path": str(d / "fcnn.sedmodel"),
               "merlin": merlin}
    finally:
        merlin.stop()


def test_napari_live_widget_draws_the_merlin_stream(stream, tmp_path, make_napari_viewer, qtbot):
    from napari_sedclassify._napari.widgets.live import LAYER_NAME, LiveWidget
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.predict import predict_scan

    viewer = make_napari_viewer()
    widget = LiveWidget(viewer)
    viewer.window.add_dock_widget(widget)
    merlin = stream["merlin"]
    widget._model_path.value = stream["model_path"]
    widget._source.value = "merlin"
    assert widget._input.label == "data host:port (6342)"
    widget._input.value = f"127.0.0.1:{merlin.data}"
    widget._control_port.value = merlin.control
    widget._flatfield.value = stream["flat"]
    widget._calibration.value = stream["sim"].scan.source
    widget._out.value = str(tmp_path)
    drawn = []  # positions shown by the layer at each redraw
    original_refresh = widget.refresh

    def refresh():
        original_refresh()
        if widget.layer is not None:
            drawn.append(int((widget.layer.data > 0).sum()))

    widget._timer.timeout.disconnect()
    widget._timer.timeout.connect(refresh)
    job = widget.start()
    assert job is not None, widget._jobs.status.value
    qtbot.waitUntil(lambda: job.done, timeout=180_000)
    assert job.outcome == "done", job.error
    result = widget.result
    assert result.status == "complete" and result.source_stats["frames_dropped"] == 0
    assert result.source_stats["frames_received"] == 100
    layer = viewer.layers[LAYER_NAME]
    # batch on the simulated scan the widget took its geometry (and metadata) from: the same frames
    scan = open_scan(stream["sim"].scan.source)
    batch = predict_scan(stream["model"], scan, flatfield=stream["flat"])
    assert np.array_equal(layer.data, batch.class_map)
    assert set(np.unique(batch.class_map)) >= {1, 2}  # a real mix of classes
    assert any(0 < n < 100 for n in drawn), drawn  # the map was drawn while it filled
    assert "complete: 100 of 100 frames" in widget._summary.value
    assert np.array_equal(np.load(tmp_path / "merlin_live_classes.npy"), batch.class_map)


def test_napari_live_widget_stream_fields_say_what_is_missing(stream, make_napari_viewer):
    """An empty host:port, and a DECTRIS stream without a scan shape, are refused before anything
    starts, with what to give."""
    from napari_sedclassify._napari.widgets.live import LiveWidget

    widget = LiveWidget(make_napari_viewer())
    widget._model_path.value = stream["model_path"]
    widget._source.value = "dectris"
    assert widget._input.label == "stream host:port (9999)"
    assert widget.start() is None and "host:port" in widget._jobs.status.value
    widget._input.value = "127.0.0.1:9999"
    expected = "--scan-shape" if live_available("dectris") else "napari-sedclassify[live]"
    assert widget.start() is None and expected in widget._jobs.status.value
    assert widget.state is None and widget.layer is None
