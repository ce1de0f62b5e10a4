"""The napari Live widget before the first frame (session 23 sweep): a path whose folder does not
exist is said at once; a file not written yet is waited for, saying so, for a limited time; a model
the live geometry cannot serve is refused at once, its advice naming where a live run takes its
geometry (the Live widget's 'geometry of scan' file), not the Scan geometry widget."""

from __future__ import annotations

import pytest

simulate = pytest.importorskip("napari_sedclassify.simulate")


@pytest.fixture
def widget(make_napari_viewer):
    from napari_sedclassify._napari.widgets.live import LiveWidget
    from napari_sedclassify.models.persistence import builtin_model_path

    viewer = make_napari_viewer()
    w = LiveWidget(viewer)
    viewer.window.add_dock_widget(w)
    w._model_path.value = builtin_model_path()
    return w


def test_a_path_in_a_folder_that_does_not_exist_is_said_at_once(widget):
    """`/nonexistent/x.mib`: nothing starts, the status names the missing folder (it waited forever,
    showing only "live classification…")."""
    widget._input.value = "/nonexistent/x.mib"
    assert widget.start() is None
    status = widget._jobs.status.value
    assert "/nonexistent/x.mib" in status and "there is no folder /nonexistent" in status


def test_a_file_not_written_yet_is_waited_for_saying_so_then_given_up(widget, tmp_path, qtbot, monkeypatch):
    """A .mib file in an existing folder, not written yet: the summary says the run waits for it to
    be written and for how long; after that long without it, the run fails saying no frame arrived.
    (The wait is shortened to 1 s here; the widget waits 30 s, as `sedclassify watch`.)"""
    from napari_sedclassify._napari.widgets import live

    monkeypatch.setattr(live, "FILE_WAIT_S", 1.0, raising=False)
    sim = simulate.simulate_scan(tmp_path / "ref.npy", scan_shape=(4, 4), detector_px=128, session="A", seed=1)
    widget._calibration.value = sim.scan.source  # its geometry (from its file) serves the built-in model
    target = tmp_path / "acq.mib"
    widget._input.value = str(target)
    widget._rows.value, widget._cols.value = 4, 4
    job = widget.start()
    assert job is not None
    assert f"waiting for {target} to be written (not there yet): stops after 1 s" in widget._summary.value
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    assert job.outcome == "failed"
    assert f"{target}: no frame arrived within 1 s" in widget._jobs.status.value


def test_a_model_the_live_geometry_cannot_serve_is_refused_in_the_live_widgets_words(widget, tmp_path):
    """The built-in model and no 'geometry of scan' file (a .mib file records no camera length or
    voltage): refused before anything starts, the advice pointing to the Live widget's geometry
    file (it waited for the frames, and geometry advice named the Scan geometry widget, which does
    not set a live run's geometry)."""
    widget._input.value = str(tmp_path / "acq.mib")
    widget._rows.value, widget._cols.value = 4, 4
    assert widget.start() is None
    status = widget._jobs.status.value
    assert "cannot be applied to" in status and "camera length" in status
    assert "(Live: choose a 'geometry of scan' file that records it" in status
    assert "(Scan geometry)" not in status and "--camera-length" not in status


def test_outputs_another_run_writes_are_refused_in_the_live_widgets_words(widget, tmp_path, qtbot):
    """Another live run holds the outputs' lock (session 24: the lock moved into `watch()`): the run
    fails at once, its advice naming the widget's 'write to folder' field, not `--out`/`--name`."""
    from napari_sedclassify.pipeline.live import lock_outputs, unlock_outputs

    sim = simulate.simulate_scan(tmp_path / "ref.npy", scan_shape=(4, 4), detector_px=128, session="A", seed=1)
    widget._calibration.value = sim.scan.source
    widget._input.value = str(tmp_path / "acq.mib")
    widget._rows.value, widget._cols.value = 4, 4
    widget._out.value = tmp_path / "out"
    lock = lock_outputs(tmp_path / "out", "acq")  # held by this process: a run beside the widget's
    try:
        job = widget.start()
        if job is not None:
            qtbot.waitUntil(lambda: job.done, timeout=60_000)
            assert job.outcome == "failed"
    finally:
        unlock_outputs(lock)
    status = widget._jobs.status.value
    assert "another live run" in status and "choose another 'write to folder'" in status, status
    assert "--out" not in status and "--name" not in status
