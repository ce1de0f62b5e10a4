"""A prediction says when the frames its model calls amorphous ice are not the frames that show
the amorphous-ice ring: a model trained on one session, applied to a session with 2.5x thicker
ice, puts the ice in other classes with high probability (weighted F1 about 0.5) and said
nothing. Models that hold on the same scan (the built-in one) and the model on its own session
stay silent, and so does the check on a scan that is all ice (nothing to compare)."""

from __future__ import annotations

import json

import numpy as np
import pytest

SHAPE = (24, 24)
PX = 128


def _scan(folder, name, seed, **grid):
    from napari_sedclassify.simulate import session_grid, simulate_scan
    from napari_sedclassify.simulate.params import SessionParams

    session = session_grid("A", **grid)[0] if grid else SessionParams(name="A")
    return simulate_scan(folder / f"{name}.npy", scan_shape=SHAPE, detector_px=PX, session=session, seed=seed)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.train import train_model

    folder = tmp_path_factory.mktemp("agreement")
    train = _scan(folder, "train", 1)
    model = train_model([train.scan.source], [train.truth], model="svm", flatfield=str(train.flatfield_path))
    model_path = folder / "one_session.sedmodel"
    save_model(model, model_path)
    return {"model": model, "model_path": model_path, "same": _scan(folder, "same", 2),
            "thick": _scan(folder, "thick", 2, ice=(2.5,))}


def _amorphous_f1(truth, class_map):
    from sklearn.metrics import f1_score

    return f1_score(np.ravel(truth) == 2, np.ravel(class_map) == 2)


def test_a_one_session_model_on_thicker_ice_warns(scans):
    from napari_sedclassify.pipeline.predict import predict_scan

    model, same, thick = scans["model"], scans["same"], scans["thick"]
    ok = predict_scan(model, same.scan.source, flatfield=str(same.flatfield_path))
    assert ok.warnings == [], ok.warnings
    assert _amorphous_f1(same.truth, ok.class_map) > 0.9
    bad = predict_scan(model, thick.scan.source, flatfield=str(thick.flatfield_path))
    assert _amorphous_f1(thick.truth, bad.class_map) < 0.6  # the failure the warning is about
    (text,) = bad.warnings
    assert "thick.npy" in text and "calls amorphous ice" in text and "3.7 Å ice ring" in text
    agreement = float(text.split("agree on only ")[1].split("%")[0])
    assert agreement < 50


def test_the_builtin_model_on_the_same_scan_stays_silent(scans):
    from napari_sedclassify.models.persistence import builtin_model_path, load_model
    from napari_sedclassify.pipeline.predict import predict_scan

    thick = scans["thick"]
    pred = predict_scan(load_model(builtin_model_path()), thick.scan.source, flatfield=str(thick.flatfield_path))
    assert _amorphous_f1(thick.truth, pred.class_map) > 0.8
    assert pred.warnings == [], pred.warnings


def test_no_judgement_on_a_scan_of_one_material(scans):
    """Only the ice frames of a scan, or only its carbon: the ring heights form one group, and the
    check does not invent a split. The whole scan splits, its ice on the strong side."""
    from napari_sedclassify.pipeline.ice_agreement import frame_scores, ice_agreement, split_by_ring
    from napari_sedclassify.pipeline.predict import predict_scan

    same, model = scans["same"], scans["model"]
    pred = predict_scan(model, same.scan.source, flatfield=str(same.flatfield_path))
    truth = np.ravel(same.truth)
    ria = pred.ria.reshape(truth.size, -1)
    ring, _ = frame_scores(ria, pred.ria_radii_px, pred.geometry)
    strong, judged = split_by_ring(ring, truth > 0)
    assert (truth[strong & (truth != 4)] != 1).all()  # no carbon on the strong side (mixed: either)
    assert (truth[~strong & judged & (truth != 4)] == 1).mean() > 0.95
    assert strong[truth == 2].all()
    for material in (1, 2):
        idx = np.flatnonzero(truth == material)
        assert split_by_ring(ring[idx], np.ones(idx.size, bool)) is None
        assert ice_agreement(pred.class_map.ravel()[idx], model.classes, ria[idx], pred.ria_radii_px,
                             pred.geometry) is None


def test_crystal_rich_scans_are_not_taken_for_disagreement(tmp_path):
    """A scan where crystalline ice outnumbers amorphous ice more than twice: the strong-ring frames
    are mostly crystals (and mixed points around them), which a good model rightly does not call
    amorphous; Bragg spikes and carbon neighbours make those classes plausible, and the check
    stays silent (it warned on such scans before they were left out)."""
    from napari_sedclassify.models.persistence import builtin_model_path, load_model
    from napari_sedclassify.pipeline.predict import predict_scan
    from napari_sedclassify.simulate import simulate_scan
    from napari_sedclassify.simulate.params import SimParams

    sim = simulate_scan(tmp_path / "crystals.npy", scan_shape=(28, 28), detector_px=PX, session="A", seed=22,
                        params=SimParams(crystals_per_um2=80.0, min_crystals=6))
    counts = np.bincount(np.ravel(sim.truth), minlength=5)
    assert counts[3] > 2 * counts[2]
    pred = predict_scan(load_model(builtin_model_path()), sim.scan.source, flatfield=str(sim.flatfield_path))
    assert _amorphous_f1(sim.truth, pred.class_map) > 0.7
    assert pred.warnings == [], pred.warnings


def test_the_command_prints_the_warning(scans, tmp_path, capsys):
    from napari_sedclassify.cli import main

    thick = scans["thick"]
    code = main(["predict", str(scans["model_path"]), str(thick.scan.source), "--flatfield",
                 str(thick.flatfield_path), "-o", str(tmp_path / "out"), "--json"])
    assert code == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "agree on only" in captured.err
    report = json.loads(captured.out)
    assert any("agree on only" in w for entry in report for w in entry.get("warnings", [])), report


def test_a_live_run_ends_with_the_same_warning_as_the_batch_prediction(scans, tmp_path):
    """The thick-ice scan written as a live .mib acquisition and classified as it grows: the run
    ends with the batch prediction's warning (same agreement), in its result and its keep.json;
    the same-session scan ends without one."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.acquisition import Acquisition
    from napari_sedclassify.pipeline.live import watch
    from napari_sedclassify.pipeline.predict import predict_scan

    for name, warns in (("same", False), ("thick", True)):
        sim = scans[name]
        target = tmp_path / f"{name}.mib"
        writer = Acquisition(sim.scan, target, rate_hz=2000.0)
        writer.start()
        result = watch(scans["model"], target, scan_shape=SHAPE, out_dir=tmp_path / name,
                       flatfield=str(sim.flatfield_path), geometry=sim.geometry, timeout_s=30)
        writer.join()
        assert result.status == "complete"
        if not warns:
            assert result.warnings == [], result.warnings
            continue
        (text,) = result.warnings
        assert text.startswith(f"{target}: the frames model") and "agree on only" in text
        scan = open_scan(target, SHAPE)
        scan.geometry = sim.geometry
        scan.metadata.pop("edge_pixel_width", None)
        batch = predict_scan(scans["model"], scan, flatfield=str(sim.flatfield_path))
        assert [w.split("agree on only ")[1][:4] for w in batch.warnings] == [text.split("agree on only ")[1][:4]]
        assert json.loads((tmp_path / name / f"{name}_keep.json").read_text())["warnings"] == [text]


def test_a_reduction_by_the_model_says_and_stores_the_warning(scans, tmp_path, capsys):
    """`reduce --model` keeps the frames the model calls amorphous ice: with the one-session model
    on thicker ice those are the wrong frames. The command says so as `predict` does, and the
    reduced file keeps the warning in its provenance (the file outlives the terminal)."""
    from napari_sedclassify.cli import main
    from napari_sedclassify.io import open_scan

    thick = scans["thick"]
    out = tmp_path / "kept.h5"
    code = main(["reduce", str(thick.scan.source), "--model", str(scans["model_path"]), "--flatfield",
                 str(thick.flatfield_path), "-o", str(out)])
    assert code == 0
    assert "warning:" in capsys.readouterr().err
    stored = open_scan(out).metadata["provenance"]["warnings"]
    assert len(stored) == 1 and "agree on only" in stored[0]
