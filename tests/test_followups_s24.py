"""Session 24 follow-ups: a model trained with fitted centring shows its passes over the scan's
frames in predict, evaluate and reduce; the preprocess summary's frames/s is the scan's; training
refuses a validation fraction outside [0, 1), a bad hold-out, ensemble or label image before any
frame is read; a live run refuses a model whose preprocessing the given detector cannot hold
before it waits for the detector."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from models_helpers import watched

from napari_sedclassify.cli import main
from napari_sedclassify.simulate import simulate_scan

FRAMES = 8 * 8


@pytest.fixture(scope="module")
def sims():
    """Two 8 x 8 scans on a 128 x 128 px detector (calibrated geometry), with their truth."""
    return [simulate_scan(scan_shape=(8, 8), detector_px=128, seed=s) for s in (11, 12)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same scans as .npy files (with their geometry and truth sidecars), and an FCNN trained on
    them with fitted centring."""
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.train import train_model
    from napari_sedclassify.simulate.simulation import sidecar_paths

    folder = tmp_path_factory.mktemp("followups")
    scans = [folder / f"scan{s}.npy" for s in (11, 12)]
    for path, seed in zip(scans, (11, 12)):
        simulate_scan(path, scan_shape=(8, 8), detector_px=128, seed=seed)
    truths = [sidecar_paths(path)["truth"] for path in scans]
    model = train_model(scans, truths, model="fcnn", preprocess_params={"centring": "fitted"},
                        params={"max_epochs": 2})
    assert model.preprocess["centring"] == "fitted"
    return {"scans": scans, "truths": truths, "model": save_model(model, folder / "fitted.sedmodel")}


def _bars(err: str) -> set:
    """(name, done, total) of every bar that reached 100 %."""
    return set(re.findall(r"(\w[\w /]*?):\s+100%\S*\s+(\d+)/(\d+)", err.replace("\r", "\n")))


def test_predict_with_a_fitted_centring_model_shows_each_pass_over_the_scans_frames(files, tmp_path, capsys):
    """`sedclassify predict` with a model trained with --centring fitted showed classify 128/128 for
    a scan of 64 frames (both passes counted as one)."""
    assert main(["predict", str(files["model"]), str(files["scans"][0]), "-o", str(tmp_path / "one")]) == 0
    err = capsys.readouterr().err
    assert _bars(err) == {("preprocess pass 1/2", "64", "64"), ("preprocess pass 2/2", "64", "64"),
                          ("classify", "64", "64")}, err
    assert f"/{2 * FRAMES}" not in err

    assert main(["predict", str(files["model"]), *map(str, files["scans"]), "-o", str(tmp_path / "two")]) == 0
    err = capsys.readouterr().err
    assert _bars(err) == ({(f"preprocess scan {i}/2 pass {k}/2", "64", "64") for i in (1, 2) for k in (1, 2)}
                          | {(f"classify scan {i}/2", "64", "64") for i in (1, 2)}), err


def test_evaluate_and_reduce_show_each_pass_over_the_scans_frames(files, tmp_path, capsys):
    scans, truths = map(str, files["scans"]), map(str, files["truths"])
    assert main(["evaluate", str(files["model"]), "--scans", *scans, "--labels", *truths]) == 0
    err = capsys.readouterr().err
    assert _bars(err) == ({(f"preprocess scan {i}/2 pass {k}/2", "64", "64") for i in (1, 2) for k in (1, 2)}
                          | {(f"classify scan {i}/2", "64", "64") for i in (1, 2)}), err

    assert main(["reduce", str(files["scans"][0]), "--model", str(files["model"]), "--classes", "amorphous_ice",
                 "-o", str(tmp_path / "kept.h5")]) == 0
    err = capsys.readouterr().err
    assert {("preprocess pass 1/2", "64", "64"), ("preprocess pass 2/2", "64", "64"),
            ("classify", "64", "64")} <= _bars(err), err
    assert f"/{2 * FRAMES}" not in err


def test_frames_per_second_of_fitted_centring_is_the_scans(sims):
    """provenance["frames_per_s"] was 2 x frames / wall time with fitted centring: the summary line
    said about twice the scan's rate."""
    from napari_sedclassify.pipeline.preprocess import preprocess

    prov = preprocess(sims[0].scan, {"centring": "fitted"}, sims[0].flatfield).provenance
    assert prov["frames_per_s"] * prov["duration_s"] == pytest.approx(FRAMES, rel=0.05)


@pytest.mark.parametrize("given, problem", [
    (dict(val_fraction=-0.1), r"validation fraction -0\.1 \(val_fraction=-0\.1, --val-fraction -0\.1\) must be at "
                              r"least 0 and less than 1"),
    (dict(val_fraction=1.0), r"validation fraction 1 \(val_fraction=1, --val-fraction 1\) must be at least 0"),
    (dict(holdout=[5]), r"hold-out scan indices \[5\] out of range for 2 scans"),
    (dict(holdout=[0, 1]), "no scans left for training after the hold-out"),
    (dict(params={"ensemble": 0}), "ensemble must be at least 1, got 0"),
    (dict(one_class=True), "fewer than two classes"),
    (dict(unknown_class=True), r"unknown class ids \[7\]"),
])
def test_training_refuses_before_any_frame_is_read(sims, given, problem):
    """train_model preprocessed every scan (minutes on real data) before the hold-out, ensemble,
    labels and validation fraction were checked; a negative validation fraction gave a silently
    wrong split and 1 or more was not refused in Python."""
    from napari_sedclassify.pipeline.train import train_model

    given = dict(given)
    watched_scans = [watched(sim) for sim in sims]
    labels = [np.asarray(sim.truth).copy() for sim in sims]
    if given.pop("one_class", False):
        labels = [np.where(lab > 0, 2, 0) for lab in labels]
    if given.pop("unknown_class", False):
        labels[1][0, 0] = 7
    with pytest.raises(ValueError, match=problem):
        train_model([scan for scan, _ in watched_scans], labels, model="fcnn", **given)
    assert [reads for _, reads in watched_scans] == [[], []]


def test_the_command_line_refuses_a_validation_fraction_in_the_words_of_python(files, tmp_path, capsys):
    argv = ["train", "--scans", *map(str, files["scans"]), "--labels", *map(str, files["truths"]),
            "-o", str(tmp_path / "m.sedmodel"), "--val-fraction", "1.5"]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("validation fraction 1.5 (val_fraction=1.5, --val-fraction 1.5) must be at least 0 and "
                         "less than 1: the share of each class's labeled frames held out for validation"), line
    assert not (tmp_path / "m.sedmodel").exists()


def test_a_live_run_refuses_what_the_given_detector_cannot_hold_before_waiting(files, sims, tmp_path):
    """watch(..., geometry=...) with a model whose beam radius (100 px, set for a 512 px detector)
    the given 128 px detector cannot hold waited for the acquisition, and refused once frames came."""
    from napari_sedclassify.models.persistence import load_model
    from napari_sedclassify.pipeline.live import watch

    model = load_model(files["model"])
    model = dataclasses.replace(model, preprocess={**model.preprocess, "beam_radius_px": 100.0})
    coming = tmp_path / "not_yet.mib"  # the detector has not started writing it
    with pytest.raises(ValueError, match=r"not_yet\.mib: .*beam_radius_px=100, --beam-radius 100\) must be at most 64 px"):
        watch(model, coming, scan_shape=(8, 8), geometry=sims[0].geometry, out_dir=tmp_path / "out", timeout_s=2.0)
    assert not (tmp_path / "out" / "not_yet_watch.lock").exists()
