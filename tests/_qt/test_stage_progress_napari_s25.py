"""Session 25: napari's Predict step shows the model's stage of a prediction (see
tests/test_stage_progress_s25.py for the engine and the command line)."""

from __future__ import annotations

import re

from stage_helpers import FRAMES, SCAN_SHAPE


def test_napari_predict_step_shows_the_classify_stage_and_cancels_between_blocks(stage_files, make_napari_viewer, qtbot):
    """The Predict step's status line said "Classifying scan2 (CNN)…" from the first frame
    preprocessed to the class map, its bar full while the network ran: now it says "classifying
    512 / 576 frames" as blocks are classified, and Cancel stops the network between two blocks."""
    from napari_sedclassify._napari.widgets.prediction import PredictionWidget

    viewer = make_napari_viewer()
    layer = viewer.open(str(stage_files["scans"][1]), plugin="napari-sedclassify")[0]
    widget = PredictionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._scan.value = layer
    widget._model_path.value = stage_files["cnn"]
    status = widget._jobs.status
    job = widget.run()
    assert job is not None, status.value
    # the network takes seconds per block of 512 crops; the status line follows twice a second
    qtbot.waitUntil(lambda: status.value.startswith("classifying") or job.done, timeout=300000)
    assert re.fullmatch(rf"classifying (0|512) / {FRAMES} frames", status.value), status.value
    widget._jobs.cancel()
    qtbot.waitUntil(lambda: job.done, timeout=300000)
    assert job.outcome == "cancelled" and status.value == "cancelled" and widget.prediction is None

    job = widget.run()
    qtbot.waitUntil(lambda: job.done, timeout=300000)
    assert job.outcome == "done" and status.value.startswith("done"), job.error
    assert widget.prediction["class_map"].shape == SCAN_SHAPE
