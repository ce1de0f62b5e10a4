"""`sedclassify train / evaluate / predict` end to end on tiny simulated scan files."""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import pytest

from models_helpers import SCAN_SHAPE, majority_f1, write_tiny_scans
from napari_sedclassify.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_scans")
    return folder, write_tiny_scans(folder, [0, 1, 2, 3])


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_evaluate_predict(files, tmp_path, capsys):
    folder, entries = files
    scans = [e[0] for e in entries]
    labels = [e[1] for e in entries]
    flat = entries[0][2]
    model = tmp_path / "svm.sedmodel"
    code, out, err = _run(capsys, "train", "--scans", *scans[:3], "--labels", *labels[:3], "--model", "svm",
                          "--out", model, "--flatfield", flat, "--holdout", "1", "--seed", "3", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert model.exists() and summary["path"] == str(model)
    assert summary["training"]["seed"] == 3 and len(summary["training"]["scans"]) == 3
    assert "preprocess" in err  # the tqdm bar went to stderr
    held = summary["metrics"]["holdout"]["tiny_A_2"]["weighted"]["f1"]
    assert held > 0.8

    code, out, err = _run(capsys, "evaluate", model, "--scans", scans[3], "--labels", labels[3],
                          "--flatfield", flat, "--json", "--plot", tmp_path / "plots")
    assert code == 0, err
    ev = json.loads(out)
    f1 = ev["scans"]["tiny_A_3"]["metrics"]["weighted"]["f1"]
    assert f1 > 0.8 and f1 > majority_f1(np.load(labels[3])) + 0.2
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["tiny_A_3_confusion.png", "tiny_A_3_maps.png"]
    code, out, _ = _run(capsys, "evaluate", model, "--scans", scans[3], "--labels", labels[3], "--flatfield", flat)
    assert code == 0 and "weighted" in out and "Jaccard" in out and "confusion matrix" in out

    code, out, err = _run(capsys, "predict", model, scans[3], "--out", tmp_path / "pred", "--flatfield", flat)
    assert code == 0, err
    cm = np.load(tmp_path / "pred" / "tiny_A_3_classes.npy")
    assert cm.shape == SCAN_SHAPE and cm.dtype == np.uint8
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(tmp_path / "pred" / "tiny_A_3_classes.tif"), cm)
    proba = np.load(tmp_path / "pred" / "tiny_A_3_probabilities.npy")
    assert proba.shape == SCAN_SHAPE + (4,)
    np.testing.assert_array_equal(cm, np.array([1, 2, 3, 4])[proba.argmax(-1)])
    assert json.loads((tmp_path / "pred" / "tiny_A_3_probabilities.json").read_text())["axis_2_class_names"][0] == "carbon"
    assert (tmp_path / "pred" / "tiny_A_3_overlay.png").read_bytes()[:4] == b"\x89PNG"
    # the predicted map is the one `evaluate` scored
    truth = np.load(labels[3])
    assert np.mean(cm[truth > 0] == truth[truth > 0]) == pytest.approx(ev["scans"]["tiny_A_3"]["metrics"]["accuracy"])
    # the keep-list: the same CSV as `watch` and the napari export, the amorphous-ice positions
    import csv

    with open(tmp_path / "pred" / "tiny_A_3_keep.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(int(r["row"]), int(r["col"])) for r in rows] == [tuple(ix) for ix in np.argwhere(cm == 2)]
    assert {r["class"] for r in rows} <= {"amorphous_ice"} and len(rows) > 0
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], proba[cm == 2].max(-1), atol=1e-4)
    code, _, err = _run(capsys, "predict", model, scans[3], "--out", tmp_path / "pred2", "--flatfield", flat,
                        "--keep", "vitreous")
    assert code == 2 and "--keep vitreous" in err and not (tmp_path / "pred2").exists()
    # options first, MODEL and SCANs after --flatfield: one value per --flatfield, nothing swallowed
    code, _, err = _run(capsys, "predict", "--out", tmp_path / "pred3", "--flatfield", flat, model, scans[2], scans[3])
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "pred3" / "tiny_A_3_classes.npy"), cm)
    # one flat-field per scan: --flatfield once per scan; a count that matches neither is refused
    code, _, err = _run(capsys, "predict", model, scans[2], scans[3], "--out", tmp_path / "pred4",
                        "--flatfield", flat, "--flatfield", flat)
    assert code == 0, err
    code, _, err = _run(capsys, "predict", model, scans[1], scans[2], scans[3], "--out", tmp_path / "pred5",
                        "--flatfield", flat, "--flatfield", flat)
    assert code == 2 and "flat-field" in err and not (tmp_path / "pred5").exists()


def test_cli_errors_are_one_clear_line(files, tmp_path, capsys):
    folder, entries = files
    scans = [e[0] for e in entries]
    bad = tmp_path / "bad_labels.npy"
    np.save(bad, np.ones((5, 7), np.uint8))
    code, _, err = _run(capsys, "train", "--scans", scans[0], "--labels", bad, "--model", "fcnn",
                        "--out", tmp_path / "m.sedmodel")
    assert code == 2
    assert f"{bad}: labels shape (5, 7) does not match the scan shape (16, 16)" in err
    assert not (tmp_path / "m.sedmodel").exists()
    code, _, err = _run(capsys, "train", "--scans", *scans[:2], "--labels", entries[0][1], "--model", "fcnn",
                        "--out", tmp_path / "m.sedmodel")
    assert code == 2 and "2 scans but 1 label files" in err
    code, _, err = _run(capsys, "predict", tmp_path / "missing.sedmodel", scans[0], "--out", tmp_path / "p")
    assert code == 2 and "missing.sedmodel: no such file" in err
    code, _, err = _run(capsys, "train", "--scans", scans[0], "--labels", entries[0][1], "--model", "svm",
                        "--epochs", "3", "--out", tmp_path / "m.sedmodel")
    assert code == 2 and "an svm has no epochs" in err


def test_a_wrong_option_is_named_with_its_commands_usage(files, tmp_path, capsys):
    """An option a command does not have is named with that command's usage (argparse alone
    showed the top level's, "sedclassify [-h] [--version] COMMAND ...", which says nothing of the
    command's options); ``-o`` is ``--out`` in every command that writes."""
    folder, entries = files
    scan = entries[0][0]
    with pytest.raises(SystemExit) as exc:
        main(["preprocess", str(scan), "--outfile", str(tmp_path / "r.h5")])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "usage: sedclassify preprocess" in err and "--flatfield" in err
    assert "unrecognized arguments: --outfile" in err and not (tmp_path / "r.h5").exists()
    code, _, err = _run(capsys, "preprocess", scan, "-o", tmp_path / "r.h5")
    assert code == 0, err
    with h5py.File(tmp_path / "r.h5", "r") as h:
        assert h["ria"].shape[:2] == (16, 16)


def test_a_reader_that_goes_away_ends_the_command_quietly(files, monkeypatch, capsys):
    """`sedclassify info SCAN | head -1`: the pipe closes while the command writes. It ends with
    status 141 (a command killed by SIGPIPE) and no error message (it printed "sedclassify info:
    error: [Errno 32] Broken pipe")."""
    folder, entries = files

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["info", str(entries[0][0])]) == 141
    monkeypatch.undo()
    assert "error" not in capsys.readouterr().err
