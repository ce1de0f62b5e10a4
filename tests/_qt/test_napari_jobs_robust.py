"""Jobs of the widgets as a user meets them mid-run (black-box report h3): a result keeps the
flat-field it was made with, a setting changed during a pass restarts it (one job per step), a
viewer closed during training takes its progress and spare child with it, a frame for a removed
scan layer is dropped, a training that cannot work is refused at once, and a child process's
traceback stays in the log."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_sedclassify._napari.layers import scan_layer_data
from napari_sedclassify.classes import CARBON

PLUGIN = "napari-sedclassify"


def add_scan(viewer, scan, name=None):
    from napari_sedclassify.processing.virtual import virtual_image

    data, kwargs, _ = scan_layer_data(scan, np.asarray(virtual_image(scan), np.float32), name=name)
    return viewer.add_image(data, **kwargs)


@pytest.fixture
def gated_preprocess(monkeypatch):
    """pipeline.preprocess.preprocess held at its start until the returned Event is set (each call
    waits for it), so a test acts while a pass runs; ``gate.calls`` counts the passes started."""
    from napari_sedclassify.pipeline import preprocess as module

    real = module.preprocess
    gate = threading.Event()
    gate.calls = 0

    def held(*args, **kwargs):
        gate.calls += 1
        cancel = kwargs.get("cancel")
        for _ in range(1000):  # 20 s at most: a test failing meanwhile must not hold the thread pool
            if gate.wait(0.02) or (cancel is not None and cancel()):
                break
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "preprocess", held)
    return gate


def test_a_pass_made_without_a_flatfield_is_stale_once_one_is_loaded_while_it_ran(
        make_napari_viewer, qtbot, disk_scan, gated_preprocess):
    """Bug 2: Find centres with no flat-field, the scan's flat-field loaded while it runs: the result
    is kept as made WITHOUT it, so it is not current (the RIA tab recomputes, models re-preprocess)."""
    from napari_sedclassify._napari.state import FLATFIELD_KEY, preprocess_current, preprocess_of, set_state
    from napari_sedclassify.processing import FlatField

    viewer = make_napari_viewer()
    layer = add_scan(viewer, disk_scan)
    _, ce = viewer.window.add_plugin_dock_widget(PLUGIN, "Centring")
    job = ce.run()
    set_state(layer, FLATFIELD_KEY, FlatField.identity(disk_scan.detector_shape))  # loaded mid-run
    gated_preprocess.set()
    qtbot.waitUntil(lambda: job.done, timeout=60000)
    assert job.outcome == "done", job.error
    assert preprocess_of(layer) is not None  # kept, as the latest pass
    assert preprocess_current(layer) is None  # but not for the flat-field loaded now


def test_a_setting_changed_mid_run_restarts_the_pass_one_job_at_a_time(
        make_napari_viewer, qtbot, disk_scan, gated_preprocess):
    """Bug 3: switching to fitted centres during a pass cancels it and starts the new one once it
    has stopped: never two passes at once, Run disabled and no "done" until the last one ends."""
    from napari_sedclassify._napari.jobs import jobs_running

    viewer = make_napari_viewer()
    add_scan(viewer, disk_scan)
    _, ce = viewer.window.add_plugin_dock_widget(PLUGIN, "Centring")
    gated_preprocess.set()
    first = ce.run()
    qtbot.waitUntil(lambda: first.done, timeout=60000)
    gated_preprocess.clear()

    job1 = ce.run()  # held at its start
    ce._centring.value = "fitted"  # RIAs follow the chosen centres: a new pass
    assert jobs_running() == 1 and job1.cancel_event.is_set()
    assert not ce._jobs.run_button.enabled and "done" not in ce._jobs.status.value
    gated_preprocess.set()
    qtbot.waitUntil(lambda: job1.done, timeout=60000)
    job2 = ce._jobs.job
    assert job2 is not job1 and job1.outcome == "cancelled"
    if not job2.done:
        assert not ce._jobs.run_button.enabled and not ce._jobs.status.value.startswith("done")
    qtbot.waitUntil(lambda: job2.done, timeout=60000)
    assert job2.outcome == "done", job2.error
    assert ce._jobs.run_button.enabled and not ce._jobs.cancel_button.enabled
    assert ce._jobs.status.value.startswith("done") and not ce._jobs.running
    from napari_sedclassify._napari.state import preprocess_of

    assert preprocess_of(ce._scan.value).params.centring == "fitted"


def test_closing_the_viewer_during_training_drops_its_progress_silently(make_napari_viewer, qtbot, monkeypatch):
    """Bug 4: progress (loss curves) that arrives after the viewer closed is dropped: no traceback
    from the deleted figure, no napari progress bar instead, and the job is cancelled."""
    from napari_sedclassify._napari import jobs

    monkeypatch.setattr(jobs, "UPDATE_MS", 20)
    monkeypatch.setattr(jobs, "NAPARI_BAR_AFTER_S", 0.1)
    viewer = make_napari_viewer()
    _, tr = viewer.window.add_plugin_dock_widget(PLUGIN, "Training")
    go = threading.Event()

    def work(report, cancelled):
        go.wait(10)
        for epoch in range(1, 4):
            report(epoch, 3000, {"loss": 1.0 / epoch})
        while not cancelled():
            threading.Event().wait(0.02)
        return None

    job = tr._jobs.launch(jobs.BackgroundJob("Training a FCNN model", work, on_progress=tr._progress))
    viewer.close()
    qtbot.wait(100)
    go.set()
    qtbot.waitUntil(lambda: job.done, timeout=10000)  # cancelled with its widget
    qtbot.wait(300)  # polls after the close
    assert job.outcome == "cancelled" and job._bar is None
    assert job.orphaned and job.cancel_event.is_set()


def test_a_cancelled_child_job_starts_no_spare_child(monkeypatch):
    """Bug 4: after a job in a child process was cancelled (its viewer closed), no spare child is
    started for a next job; after one that ended normally, one is."""
    from napari_sedclassify._napari import model_jobs
    from napari_sedclassify.errors import Cancelled
    from napari_sedclassify.models import tf_process

    started = []
    monkeypatch.setattr(model_jobs, "prepare", started.append)

    def cancelled_child(*args, **kwargs):
        raise Cancelled("cancelled")

    monkeypatch.setattr(tf_process, "run_in_process", cancelled_child)
    with pytest.raises(Cancelled):
        model_jobs.run("fcnn", print, cancel=lambda: True, child=True)
    assert started == []
    monkeypatch.setattr(tf_process, "run_in_process", lambda *a, **k: "ok")
    assert model_jobs.run("fcnn", print, cancel=lambda: False, child=True) == "ok"
    assert started == ["fcnn"]


def test_a_frame_for_a_removed_scan_layer_is_dropped(make_napari_viewer, qtbot, disk_scan):
    """Bug 5: a frame asked for a scan layer that is removed before it arrives is not shown (the
    'shown' list no longer has that layer: no ValueError in the event loop)."""
    viewer = make_napari_viewer()
    a = add_scan(viewer, disk_scan, name="scan_A")
    add_scan(viewer, disk_scan, name="scan_B")
    _, view = viewer.window.add_plugin_dock_widget(PLUGIN, "Diffraction view")
    view.request(a, 1, 2)
    viewer.layers.remove(a)  # before the loader thread's frame reaches the event loop
    qtbot.waitUntil(lambda: not view.loading, timeout=10000)
    qtbot.wait(100)
    assert view.point is None or view.point[0] is not a
    view.show_point(a, 1, 1)  # nothing, no error either
    assert view.point is None or view.point[0] is not a


@pytest.mark.parametrize("labels", ["one class", "all zero"])
def test_training_without_two_labeled_classes_is_refused_at_once(make_napari_viewer, disk_scan, notifications,
                                                                 gated_preprocess, labels):
    """Bug 6: fewer than two labeled classes (or none) are refused in the viewer's process before
    any preprocessing, with a one-line reason in place and in the notification."""
    from napari_sedclassify._napari.state import scan_layer_spatial

    viewer = make_napari_viewer()
    _, tr = viewer.window.add_plugin_dock_widget(PLUGIN, "Training")
    layer = add_scan(viewer, disk_scan)
    value = CARBON if labels == "one class" else 0
    viewer.add_labels(np.full(disk_scan.scan_shape, value, np.uint8), name="labels", **scan_layer_spatial(layer))
    assert tr._data.value  # the scan with its labels is chosen
    assert tr.run() is None
    assert gated_preprocess.calls == 0
    status = tr._jobs.status.value
    assert "two classes" in status and "\n" not in status and "Traceback" not in status
    assert any("two classes" in n for n in notifications)


def test_a_child_processs_traceback_stays_out_of_the_status_and_notifications(make_napari_viewer, qtbot,
                                                                              notifications, caplog):
    """Bug 6: a job that failed in a child process shows the one-line reason; the child's traceback
    goes to the log only."""
    from napari_sedclassify._napari import jobs
    from napari_sedclassify.models.tf_process import WorkerProcessError

    make_napari_viewer()
    text = ("ValueError: the labels hold one class\n--- in the worker process ---\n"
            "Traceback (most recent call last):\n  File \"_tf_child.py\", line 121, in main\nValueError: ...")

    def work(report, cancelled):
        raise WorkerProcessError(text)

    buttons = jobs.JobButtons("Train", lambda: None)
    job = buttons.launch(jobs.BackgroundJob("Training a FCNN model", work))
    qtbot.waitUntil(lambda: job.done, timeout=10000)
    assert job.outcome == "failed"
    shown = [buttons.status.value] + [n for n in notifications if "Training" in n]
    assert len(shown) == 2
    for message in shown:
        assert "the labels hold one class" in message
        assert "worker process" not in message and "Traceback" not in message
    assert "Traceback" in caplog.text  # kept in the log


def test_no_beam_error_points_at_the_centring_tabs_beam_radius_field(make_napari_viewer, qtbot, notifications):
    """Bug 8: a scan without a direct beam fails Find centres with the tab's own field to fill in,
    not the Python parameter names."""
    from napari_sedclassify import Geometry, Scan

    rng = np.random.default_rng(0)
    scan = Scan(rng.poisson(2.0, size=(4, 5, 64, 64)).astype(np.uint16),
                Geometry(detector_shape=(64, 64), scan_step_nm=30.0), source="no_beam")
    viewer = make_napari_viewer()
    add_scan(viewer, scan)
    _, ce = viewer.window.add_plugin_dock_widget(PLUGIN, "Centring")
    job = ce.run()
    qtbot.waitUntil(lambda: job.done, timeout=60000)
    assert job.outcome == "failed"
    status = ce._jobs.status.value
    assert "beam radius (px, 0 = measure)" in status and "In Python" not in status
    assert "command line" not in status and "--beam-radius" not in status
    assert any("beam radius (px, 0 = measure)" in n for n in notifications)


def test_make_class_map_with_an_empty_regions_layer_says_it_is_empty(make_napari_viewer, disk_scan, notifications):
    """Bug 8: after Draw regions, Make class map with no shape drawn says the regions layer is empty
    (not "draw regions first", which it already did)."""
    viewer = make_napari_viewer()
    add_scan(viewer, disk_scan)
    _, lab = viewer.window.add_plugin_dock_widget(PLUGIN, "Labels")
    lab._draw.changed.emit(True)  # Draw regions
    assert any(layer.name.endswith(" regions") for layer in viewer.layers)
    assert lab.make_class_map() is None
    assert "is empty" in lab._status.value and "first" not in lab._status.value
    assert any("is empty" in n for n in notifications)


def test_a_scan_file_overwritten_since_it_was_opened_says_so(make_napari_viewer, qtbot, tmp_path, disk_scan,
                                                             notifications):
    """Bug 8: a scan file overwritten (in place) by a smaller scan after it was opened: the failure
    says the file changed since it was opened and to open it again."""
    from napari_sedclassify.io import open_scan

    path = tmp_path / "scan_g3.npy"
    np.save(path, np.asarray(disk_scan.data))
    scan = open_scan(path)
    viewer = make_napari_viewer()
    add_scan(viewer, scan)
    _, ce = viewer.window.add_plugin_dock_widget(PLUGIN, "Centring")
    np.save(path, np.asarray(disk_scan.data)[:2])  # the same file, another (smaller) scan
    job = ce.run()
    qtbot.waitUntil(lambda: job.done, timeout=60000)
    assert job.outcome == "failed"
    status = ce._jobs.status.value
    assert "changed on disk since the scan was opened" in status and "open it again" in status
    assert any("open it again" in n for n in notifications)


def test_the_steps_follow_the_scan_just_opened_or_selected_and_name_it_when_done(make_napari_viewer, qtbot,
                                                                                  disk_scan):
    """Bug 7: a newly opened scan becomes the steps' scan, so does one selected in the layer list;
    when the chosen scan's layer is removed the steps take the selected scan; the status names the
    scan that was processed."""
    viewer = make_napari_viewer()
    _, ce = viewer.window.add_plugin_dock_widget(PLUGIN, "Centring")
    _, pr = viewer.window.add_plugin_dock_widget(PLUGIN, "Prediction")
    a = add_scan(viewer, disk_scan, name="scan_A")
    assert ce._scan.value is a and pr._scan.value is a
    b = add_scan(viewer, disk_scan, name="scan_B")
    assert ce._scan.value is b and pr._scan.value is b  # just opened
    c = add_scan(viewer, disk_scan, name="scan_C")
    viewer.layers.selection.active = a
    assert ce._scan.value is a and pr._scan.value is a  # selected in the layer list
    viewer.layers.selection.active = c
    ce._scan.value = b  # the user's own choice in the tab, then its layer removed while C is selected
    viewer.layers.remove(b)
    assert ce._scan.value is c
    job = ce.run()
    qtbot.waitUntil(lambda: job.done, timeout=60000)
    assert job.outcome == "done", job.error
    assert "scan_C" in ce._jobs.status.value and ce._jobs.status.value.startswith("done")
