"""Session 25 sweep: the new prediction stages, tried as a microscopist would on simulated scans.

- `sedclassify predict` of several scans drew "preprocess scan 1/3" a second time after its
  "classify scan 1/3" bar (the frames summed over scans cannot tell scan 1 done from scan 2 started),
  and scan 2's bar then jumped (0 → 576 at once).
- A batch (`predict`, `evaluate` of several scans) refused a scan its model cannot read only after
  preprocessing and classifying every scan before it.
- A fitted-centring model's batch grew its bar's total as each scan started (3 x 576, then 4 x 576).
- An ensemble (`--session-robust`, `--ensemble N`) drew its members' epochs on one "train" bar that
  went back to 1/2 at each member.
(napari's wording of the camera-length warning: tests/_qt/test_sweep_napari_s25.py.)

Simulated scans (napari_sedclassify.simulate), real preprocessing, scikit-learn, real dask."""

from __future__ import annotations

import dataclasses
import re

import pytest

from napari_sedclassify.simulate import simulate_scan
from napari_sedclassify.simulate.params import session_params

FRAMES = 16 * 16


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    """Three 16 x 16 scans (128 px detector) at 900 mm and one at 300 mm (3x shorter), an FCNN
    trained on the first, and a fitted-centring FCNN."""
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.train import train_model

    d = tmp_path_factory.mktemp("sweep")
    scans = [simulate_scan(d / f"scan{i}.npy", scan_shape=(16, 16), detector_px=128, seed=i) for i in range(3)]
    short = dataclasses.replace(session_params("A"), camera_length_mm=300.0, nominal_camera_length_mm=300.0)
    scans.append(simulate_scan(d / "short.npy", scan_shape=(16, 16), detector_px=128, session=short, seed=5))
    fcnn = save_model(train_model([scans[0].path], [scans[0].truth], model="fcnn", params={"max_epochs": 2}),
                      d / "fcnn.sedmodel")
    fitted = save_model(train_model([scans[0].path], [scans[0].truth], model="fcnn", params={"max_epochs": 2},
                                    preprocess_params={"centring": "fitted"}), d / "fitted.sedmodel")
    return {"scans": scans, "fcnn": fcnn, "fitted": fitted, "dir": d}


def _bar_sequence(err: str) -> list[str]:
    """The names of the bars in the order drawn, a bar redrawn in place (tqdm's \\r) counted once."""
    names = re.findall(r"^([A-Za-z][\w /]*?):\s+\d+%\|", err.replace("\r", "\n"), flags=re.M)
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


def test_predict_draws_each_scans_bars_once_in_order(sims, tmp_path, capsys):
    from napari_sedclassify.cli import main

    scans = [str(s.path) for s in sims["scans"][:3]]
    assert main(["predict", str(sims["fcnn"]), *scans, "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert _bar_sequence(err) == [f"{stage} scan {i}/3" for i in (1, 2, 3) for stage in ("preprocess", "classify")], err
    # a scan's preprocessing bar starts from its first frames, not at 100 %
    for i in (2, 3):
        assert re.search(rf"preprocess scan {i}/3:\s+0%\|[^|]*\|\s*0/{FRAMES}", err), err


def test_batch_predict_reports_each_scans_frames_with_its_index(sims, tmp_path):
    from napari_sedclassify.pipeline.batch import batch_predict

    seen = []
    batch_predict(str(sims["fcnn"]), [str(s.path) for s in sims["scans"][:2]], tmp_path,
                  scan_progress=lambda *a: seen.append(a))
    assert [a[0] for a in seen] == sorted(a[0] for a in seen)  # scan 0's frames, then scan 1's
    assert seen[-1] == (1, 2, FRAMES, FRAMES) and (0, 2, FRAMES, FRAMES) in seen
    assert all(a[1] == 2 and a[3] == FRAMES for a in seen)


def test_a_batch_refuses_an_unreadable_scan_before_any_work(sims, tmp_path):
    """The third scan opened at 80 kV: the model needs q the detector does not reach there. Said at
    once, naming that file, with nothing preprocessed and nothing written."""
    from napari_sedclassify.errors import IncompatibleModelError
    from napari_sedclassify.pipeline.batch import batch_predict
    from napari_sedclassify.pipeline.evaluate import evaluate_model
    from napari_sedclassify.io import open_scan

    good = [open_scan(s.path) for s in sims["scans"][:2]]
    bad = open_scan(sims["scans"][2].path, geometry={"voltage_kv": 80.0})
    seen = []
    with pytest.raises(IncompatibleModelError, match=re.escape(str(sims["scans"][2].path))):
        batch_predict(str(sims["fcnn"]), [*good, bad], tmp_path / "out", progress=lambda *a: seen.append(a),
                      classify_progress=lambda *a: seen.append(a))
    assert seen == [] and not (tmp_path / "out").exists()
    with pytest.raises(IncompatibleModelError, match=re.escape(str(sims["scans"][2].path))):
        evaluate_model(str(sims["fcnn"]), [*good, bad], [s.truth for s in sims["scans"][:3]],
                       scan_progress=lambda *a: seen.append(a))
    assert seen == []


def test_a_fitted_centring_batch_counts_both_passes_from_the_start(sims, tmp_path):
    from napari_sedclassify.pipeline.batch import batch_predict

    totals = []
    batch_predict(str(sims["fitted"]), [str(s.path) for s in sims["scans"][:2]], tmp_path,
                  progress=lambda done, total: totals.append(total))
    assert totals and set(totals) == {2 * 2 * FRAMES}


def test_an_ensemble_draws_a_training_bar_per_member(sims, tmp_path, capsys):
    from napari_sedclassify.cli import main

    from napari_sedclassify.simulate.simulation import sidecar_paths

    s = sims["scans"][0]
    assert main(["train", "--scans", str(s.path), "--labels", str(sidecar_paths(s.path)["truth"]), "--model", "svm",
                 "--ensemble", "2", "--out", str(tmp_path / "e.sedmodel")]) == 0
    err = capsys.readouterr().err
    assert [n for n in _bar_sequence(err) if n.startswith("train")] == ["train member 1/2", "train member 2/2"], err


def test_a_cnns_full_preprocess_bar_says_tensorflow_is_starting(capsys):
    """`sedclassify train --model cnn`: the preprocess bar sat at 100 % for 10-20 s, saying nothing,
    while the TensorFlow process the network trains in started; now it says so (the FCNN's does not
    wait, and says nothing more)."""
    from napari_sedclassify.cli._bars import Bars
    from napari_sedclassify.cli.train import _preprocess_bar

    for model in ("fcnn", "cnn"):
        with Bars() as bars:
            show = _preprocess_bar(bars, model)
            for i in (0, 1):
                show(i, 2, FRAMES // 2, FRAMES)
                show(i, 2, FRAMES, FRAMES)
        err = capsys.readouterr().err
        assert ("starting TensorFlow for the CNN" in err) == (model == "cnn"), err


def test_a_negative_beam_radius_is_refused_in_the_command_lines_words(sims, tmp_path, capsys):
    from napari_sedclassify.cli import main

    out = tmp_path / "r.h5"
    assert main(["preprocess", str(sims["scans"][0].path), "-o", str(out), "--beam-radius", "-2"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("must be more than 0 px (leave --beam-radius out to measure it)"), line
    assert "None" not in line and not out.exists()


def test_on_a_dask_cluster_the_full_bar_says_the_frames_classified(sims, tmp_path, capsys):
    """`predict --workers 1` of two scans (a local dask cluster): one preprocess bar over both scans,
    which sat full and silent while the model classified; now it says the frames classified."""
    from napari_sedclassify.cli import main

    scans = [str(s.path) for s in sims["scans"][:2]]
    assert main(["predict", str(sims["fcnn"]), *scans, "-o", str(tmp_path / "out"), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert _bar_sequence(err) == ["preprocess"], err
    assert f"classified {2 * FRAMES}/{2 * FRAMES} frames" in err, err
