"""The napari Live widget stopped while it waits for a detector stream: the receiver is stopped and
its shared-memory handle folder removed (before, *Stop* ended the job but left the receiver
waiting, retrying to connect, for the rest of the napari session). No simulator: nothing listens
at the port, as when the detector's software is not running yet. Skips without the ``live``
extra."""

from __future__ import annotations

import tempfile

import pytest

from napari_sedclassify.optional import live_available

pytestmark = pytest.mark.skipif(not live_available("merlin"),
                                reason='the live extra is not installed (pip install "napari-sedclassify[live]")')


@pytest.fixture
def fcnn_path(tmp_path):
    """An FCNN trained on two small simulated scans (64 px frames)."""
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.train import train_model
    from napari_sedclassify.simulate import simulate_scan

    train = [simulate_scan(tmp_path / f"t{i}.npy", scan_shape=(8, 8), detector_px=64, seed=40 + i) for i in (0, 1)]
    model = train_model([t.scan.source for t in train], [t.truth for t in train], model="fcnn",
                        flatfield=str(train[0].flatfield_path))
    return str(save_model(model, tmp_path / "fcnn.sedmodel"))


def test_stop_while_waiting_for_the_stream_stops_the_receiver(fcnn_path, tmp_path, monkeypatch, make_napari_viewer,
                                                              qtbot):
    import socket

    from napari_sedclassify._napari.widgets.live import LiveWidget

    handles = tmp_path / "tmp"  # this test's temporary folder, where the receiver's handle goes
    handles.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(handles))
    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    widget = LiveWidget(make_napari_viewer())
    widget._model_path.value = fcnn_path
    widget._source.value = "merlin"
    widget._input.value = f"127.0.0.1:{port}"
    widget._rows.value, widget._cols.value = 8, 8
    job = widget.start()
    assert job is not None, widget._jobs.status.value
    qtbot.waitUntil(lambda: any(handles.glob("sedclassify-merlin-*")), timeout=60_000)  # the receiver waits
    widget._jobs.cancel_button.clicked.emit()  # what pressing Stop does
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    assert job.outcome == "cancelled"
    qtbot.waitUntil(lambda: not any(handles.glob("sedclassify-*")), timeout=30_000)  # the receiver ended
