"""Session 25: the model's stage of a prediction reports its progress. `sedclassify predict` with a
CNN preprocessed the scan (its bar reached 100 %), then classified the frames in blocks of 512
crops for minutes with no report at all; the Python API (``pipeline.predict.predict_scan``,
``batch_predict``, ``evaluate_model``), `evaluate`, `reduce --model` and the napari Predict step
were as silent. Now the frames classified are reported after each block, as a stage of its own:
a "classify" bar after the "preprocess" bar, "classifying 512 / 576 frames" in the widget, and a
cancel between two blocks stops the run."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from napari_sedclassify.errors import Cancelled

from stage_helpers import FRAMES  # noqa: E402


@pytest.fixture(scope="module")
def files(stage_files):
    return stage_files


def _bars(err: str) -> list:
    """(name, done, total) of every bar that reached 100 %, in the order drawn, each once."""
    found = re.findall(r"(\w[\w /]*?):\s+100%\S*\s+(\d+)/(\d+)", err.replace("\r", "\n"))
    return [bar for i, bar in enumerate(found) if bar not in found[:i]]


def test_a_crop_models_stage_reports_each_block_after_preprocessing(files):
    """``pipeline.predict.predict_scan``: preprocessing counts the scan's frames, then the CNN's
    stage counts the recorded frames it has classified, block by block (512, then the 64 left)."""
    from napari_sedclassify.pipeline.predict import predict_scan

    seen = []
    pred = predict_scan(str(files["cnn"]), str(files["scans"][1]),
                        progress=lambda done, total: seen.append(("preprocess", done, total)),
                        classify_progress=lambda done, total: seen.append(("classify", done, total)))
    stages = [stage for stage, _, _ in seen]
    assert stages == sorted(stages, key=["preprocess", "classify"].index)  # one stage after the other
    assert seen[stages.index("classify") - 1] == ("preprocess", FRAMES, FRAMES)
    assert pred.class_map.size == FRAMES
    assert [(d, t) for s, d, t in seen if s == "classify"] == [(0, FRAMES), (512, FRAMES), (FRAMES, FRAMES)]


def test_the_model_stage_reports_block_by_block_up_to_the_recorded_frames(files):
    """``models.inference.predict_scan``: (frames classified, frames to classify) at the start and
    after each block, growing, ending at the recorded frames (missing ones are not counted)."""
    from napari_sedclassify.models.inference import predict_scan
    from napari_sedclassify.models.persistence import load_model
    from napari_sedclassify.models.training import ScanFeatures
    from napari_sedclassify.pipeline.predict import params_for_model
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.pipeline.scans import open_scans

    model = load_model(files["fcnn"])
    (scan,) = open_scans([str(files["scans"][1])])
    result = preprocess(scan, params_for_model(model, scan.geometry))
    feats = ScanFeatures.from_preprocess(result, scan.geometry, "scan2")
    feats.missing = feats.missing.copy()
    feats.missing[0, :10] = True  # 10 frames not recorded
    recorded = FRAMES - 10
    seen = []
    predict_scan(model, feats, batch_frames=100, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(d, recorded) for d in range(0, recorded, 100)] + [(recorded, recorded)]

    stop = []
    with pytest.raises(Cancelled):  # cancelled after the second block: the third never runs
        predict_scan(model, feats, batch_frames=100, cancel=lambda: len(stop) >= 3,
                     progress=lambda done, total: stop.append(done))
    assert stop == [0, 100, 200]


def test_cancel_between_two_blocks_of_a_cnn_stops_the_prediction(files):
    from napari_sedclassify.pipeline.predict import predict_scan

    seen = []
    with pytest.raises(Cancelled):
        predict_scan(str(files["cnn"]), str(files["scans"][1]), cancel=lambda: bool(seen) and seen[-1] > 0,
                     classify_progress=lambda done, total: seen.append(done))
    assert seen == [0, 512]


def test_batch_predict_and_evaluate_report_each_scans_model_stage(files, tmp_path):
    from napari_sedclassify.pipeline.batch import batch_predict
    from napari_sedclassify.pipeline.evaluate import evaluate_model

    scans = [str(s) for s in files["scans"]]
    whole = [(i, 2, 0, FRAMES) for i in (0, 1)] + [(i, 2, FRAMES, FRAMES) for i in (0, 1)]
    seen = []
    batch_predict(str(files["fcnn"]), scans, tmp_path / "out", classify_progress=lambda *a: seen.append(a))
    assert sorted(seen) == sorted(whole) and seen[0] == (0, 2, 0, FRAMES)
    seen = []
    evaluate_model(str(files["fcnn"]), scans, [str(t) for t in files["truths"]],
                   classify_progress=lambda *a: seen.append(a))
    assert sorted(seen) == sorted(whole) and seen[0] == (0, 2, 0, FRAMES)


def test_sedclassify_predict_draws_a_classify_bar_after_the_preprocess_bar(files, tmp_path):
    """`sedclassify predict` with a CNN: the bar named "classify" counted the scan's frames while it
    was preprocessed, then sat at 100 % while the network classified them; now "preprocess" reaches
    100 %, then "classify" counts the frames the network has classified."""
    done = subprocess.run([sys.executable, "-m", "napari_sedclassify.cli", "predict", str(files["cnn"]),
                           str(files["scans"][1]), "-o", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert _bars(done.stderr) == [("preprocess", str(FRAMES), str(FRAMES)), ("classify", str(FRAMES), str(FRAMES))]
    assert re.search(rf"classify:\s+0%\|[^|]*\|\s*0/{FRAMES}", done.stderr), done.stderr  # shown from its first block
    assert done.stderr.rindex("preprocess") < done.stderr.index("classify"), done.stderr  # not drawn again after it


def test_evaluate_predict_and_reduce_draw_each_scans_classify_stage(files, tmp_path, capsys):
    from napari_sedclassify.cli import main

    scans, truths = [str(s) for s in files["scans"]], [str(t) for t in files["truths"]]
    assert main(["evaluate", str(files["fcnn"]), "--scans", *scans, "--labels", *truths]) == 0
    err = capsys.readouterr().err
    assert _bars(err) == [(f"{stage} scan {i}/2", str(FRAMES), str(FRAMES))
                          for i in (1, 2) for stage in ("preprocess", "classify")], err

    assert main(["predict", str(files["fcnn"]), *scans, "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert _bars(err) == [(f"{stage} scan {i}/2", str(FRAMES), str(FRAMES))
                          for i in (1, 2) for stage in ("preprocess", "classify")], err

    assert main(["reduce", scans[1], "--model", str(files["cnn"]), "-o", str(tmp_path / "kept.h5")]) == 0
    err = capsys.readouterr().err
    assert _bars(err)[:2] == [("preprocess", str(FRAMES), str(FRAMES)), ("classify", str(FRAMES), str(FRAMES))], err
