"""The command line's shared contracts, found by a black-box test on files other tools write
(s21/h1): every command that opens scans reads --dataset / --missing-at; outputs are checked (and
their folders created) before any work, and errors name the path given; --json prints the JSON
alone on standard output; Ctrl-C is one line at any moment."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from models_helpers import write_tiny_scans
from napari_sedclassify.cli import build_parser, main

SCAN_COMMANDS = ["preprocess", "predict", "propose", "train", "evaluate", "watch", "calibrate", "reduce", "info"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny 16x16 scan (128 px), its truth and flat-field, an SVM trained on it, its calibration
    as command-line flags, and an HDF5 copy holding two 4D datasets (no calibration in it)."""
    from napari_sedclassify.io import open_scan

    folder = tmp_path_factory.mktemp("cli_outputs")
    (scan, truth, flat), = write_tiny_scans(folder, [0])
    model = folder / "svm.sedmodel"
    assert main(["train", "--scans", str(scan), "--labels", str(truth), "--model", "svm", "--flatfield", str(flat),
                 "-o", str(model)]) == 0
    opened = open_scan(scan)
    g = opened.geometry
    flags = ["--pixel-size", g.pixel_size_um, "--camera-length", g.camera_length_mm, "--voltage", g.voltage_kv,
             "--edge-pixel-width", opened.metadata.get("edge_pixel_width", 1.0)]
    data = np.load(scan)
    multi = folder / "multi.h5"
    with h5py.File(multi, "w") as h:
        h["scan"] = data
        h["other"] = data[:2, :2]
    return {"dir": folder, "scan": scan, "truth": truth, "flat": flat, "model": model,
            "flags": [str(f) for f in flags], "data": data, "multi": multi}


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_that_opens_scans_takes_dataset_and_missing_at():
    """Only info, calibrate and reduce had --dataset and only info --missing-at; the error of a
    file with several datasets told every command's user to give --dataset."""
    for command in SCAN_COMMANDS:
        parser = build_parser(command)
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]
        options = {s for a in sub._actions for s in a.option_strings}
        assert {"--dataset", "--missing-at"} <= options, command


def test_predict_reads_a_chosen_dataset_and_frames_missing_at_the_start(tiny, tmp_path, capsys):
    code, _, err = _run(capsys, "predict", tiny["model"], tiny["scan"], "--flatfield", tiny["flat"], "-o",
                        tmp_path / "ref", *tiny["flags"])
    assert code == 0, err
    ref = np.load(tmp_path / "ref" / "tiny_A_0_classes.npy")
    code, _, err = _run(capsys, "predict", tiny["model"], tiny["multi"], "--flatfield", tiny["flat"], "-o",
                        tmp_path / "h5", *tiny["flags"])
    assert code == 2 and "--dataset" in err
    code, _, err = _run(capsys, "predict", tiny["model"], tiny["multi"], "--dataset", "scan", "--flatfield",
                        tiny["flat"], "-o", tmp_path / "h5", *tiny["flags"])
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "h5" / "multi_classes.npy"), ref)
    # the first 8 frames never recorded: with --missing-at start the others keep their positions
    late = tmp_path / "late.npy"
    np.save(late, tiny["data"].reshape(-1, 128, 128)[8:])
    code, _, err = _run(capsys, "predict", tiny["model"], late, "--scan-shape", 16, 16, "--missing-at", "start",
                        "--flatfield", tiny["flat"], "-o", tmp_path / "late", *tiny["flags"])
    assert code == 0, err
    late_map = np.load(tmp_path / "late" / "late_classes.npy").ravel()
    assert (late_map[:8] == 0).all()
    assert np.mean(late_map[8:] == ref.ravel()[8:]) > 0.95


def test_train_refuses_to_replace_a_model_without_force(tiny, tmp_path, capsys):
    """`train -o` replaced an existing model file without a word; every other command refuses."""
    precious = tmp_path / "precious.sedmodel"
    precious.write_bytes(tiny["model"].read_bytes())
    before = precious.read_bytes()
    argv = ["train", "--scans", tiny["scan"], "--labels", tiny["truth"], "--model", "svm", "--seed", 5,
            "--flatfield", tiny["flat"], "-o", precious]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and f"{precious}: exists" in err and "--force" in err
    assert precious.read_bytes() == before
    code, _, err = _run(capsys, *argv, "--force")
    assert code == 0, err
    assert precious.read_bytes() != before


def test_json_alone_on_stdout_notes_on_stderr(tiny, tmp_path, capsys):
    """`propose --json` printed its 'note: ... assumed' line on standard output before the JSON;
    the engine's warnings (a "warnings" list in a prediction or an evaluation) are printed as
    `warning: <text>` on standard error, and stay in the JSON."""
    bare = tmp_path / "bare.npy"  # no calibration: camera length and voltage assumed (the pixel size
    np.save(bare, tiny["data"])  # given, else the assumed 55 µm puts the ice ring beyond the profile)
    code, out, err = _run(capsys, "propose", bare, "-o", tmp_path / "p", "--json", *tiny["flags"][:2])
    assert code == 0, err
    assert json.loads(out)["scan"] == str(bare)
    assert "note:" in err and "assumed" in err


def test_engine_warnings_go_to_stderr_and_stay_in_the_json(tiny, tmp_path, capsys, monkeypatch):
    import napari_sedclassify.pipeline.batch as batch
    import napari_sedclassify.pipeline.evaluate as evaluate

    real_predict, real_evaluate = batch.batch_predict, evaluate.evaluate_model

    def predict_with_warnings(*a, **k):
        return [{**r, "warnings": ["the frames look odd"]} for r in real_predict(*a, **k)]

    class Warned:
        def __init__(self, ev):
            self.ev = ev

        def __getattr__(self, name):
            return getattr(self.ev, name)

        def to_dict(self):
            return {**self.ev.to_dict(), "warnings": ["the labels look odd"]}

    monkeypatch.setattr(batch, "batch_predict", predict_with_warnings)
    monkeypatch.setattr(evaluate, "evaluate_model", lambda *a, **k: Warned(real_evaluate(*a, **k)))
    code, out, err = _run(capsys, "predict", tiny["model"], tiny["scan"], "--flatfield", tiny["flat"], "-o",
                          tmp_path / "w", "--json", *tiny["flags"])
    assert code == 0, err
    assert json.loads(out)[0]["warnings"] == ["the frames look odd"]
    assert "warning: the frames look odd" in err.splitlines()
    code, out, err = _run(capsys, "predict", tiny["model"], tiny["scan"], "--flatfield", tiny["flat"], "-o",
                          tmp_path / "w2", *tiny["flags"])
    assert code == 0 and "warning: the frames look odd" in err.splitlines() and "warning:" not in out
    code, out, err = _run(capsys, "evaluate", tiny["model"], "--scans", tiny["scan"], "--labels", tiny["truth"],
                          "--flatfield", tiny["flat"], "--json", *tiny["flags"])
    assert code == 0, err
    assert json.loads(out)["warnings"] == ["the labels look odd"]
    assert "warning: the labels look odd" in err.splitlines()


def test_a_crop_radius_beyond_the_detector_is_refused(tiny, tmp_path, capsys):
    """--crop-radius 1000 on 128 px frames wrote 2000 x 2000 crops (almost all padding); a larger
    scan's filled the disk and the process died of SIGBUS."""
    small = tmp_path / "small.npy"
    np.save(small, tiny["data"][:4, :4])
    out = tmp_path / "crops.h5"
    code, _, err = _run(capsys, "preprocess", small, "--crop-radius", 200, "-o", out)
    assert code == 2 and "--crop-radius 200" in err and "at most 64 px" in err and "128 x 128" in err
    assert not out.exists()
    code, _, err = _run(capsys, "preprocess", small, "--crop-radius", 0, "-o", out)
    assert code == 2 and "--crop-radius" in err and not out.exists()


def test_multi_scan_predict_checks_every_flatfield_before_any_work(tiny, tmp_path, capsys):
    """A flat-field of the wrong shape for the second scan was found only after the first scan's
    outputs were written (and a rerun then stopped on them)."""
    cropped = tmp_path / "cropped.npy"
    np.save(cropped, tiny["data"][:4, :4, 4:-4, 4:-4])
    out = tmp_path / "two"
    code, _, err = _run(capsys, "predict", tiny["model"], tiny["scan"], cropped, "--flatfield", tiny["flat"],
                        "-o", out, *tiny["flags"])
    assert code == 2 and "does not match the detector (120, 120)" in err and "cropped.npy" in err
    assert not out.exists() or not any(out.iterdir())


def test_output_folders_are_created_and_checked_before_any_work(tiny, tmp_path, capsys, monkeypatch):
    """`preprocess -o nope/deeper/x.h5` failed with an HDF5 message naming a hidden temporary file
    (the other commands create missing folders: now all do); `predict` classified the whole scan
    before it found the output folder unwritable (next test)."""
    small = tmp_path / "small.npy"
    np.save(small, tiny["data"][:4, :4])
    deep = tmp_path / "nope" / "deeper" / "x.h5"
    code, _, err = _run(capsys, "preprocess", small, "-o", deep)
    assert code == 0, err
    assert deep.exists() and [p.name for p in deep.parent.iterdir()] == ["x.h5"]


def test_an_unwritable_output_folder_is_found_before_any_work(tiny, tmp_path, capsys, monkeypatch):
    import tempfile

    import napari_sedclassify.pipeline.batch as batch

    small = tmp_path / "small.npy"
    np.save(small, tiny["data"][:4, :4])
    locked = tmp_path / "locked"
    locked.mkdir()
    real, real_open = tempfile.TemporaryFile, os.open

    def no_writing_in_locked(*a, dir=None, **k):  # a read-only folder, even for root: no named file ...
        if dir is not None and os.path.realpath(dir) == os.path.realpath(locked):
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*a, dir=dir, **k)

    def no_unnamed_file_in_locked(path, flags, *a, **k):  # ... nor an unnamed one (O_TMPFILE)
        if os.path.realpath(path) == os.path.realpath(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    def no_work(*a, **k):
        raise AssertionError("classified before checking the output folder")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_writing_in_locked)
    monkeypatch.setattr(os, "open", no_unnamed_file_in_locked)
    monkeypatch.setattr(batch, "batch_predict", no_work)
    code, _, err = _run(capsys, "predict", tiny["model"], small, "-o", locked, *tiny["flags"])
    assert code == 2 and f"{locked}: cannot write in the folder" in err and "Permission denied" in err
    assert ".part" not in err and "tmp" not in err.replace(str(tmp_path), "")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes in read-only folders")
def test_errors_in_a_read_only_folder_name_the_path_given(tiny, tmp_path, capsys):
    small = tmp_path / "small.npy"
    np.save(small, tiny["data"][:4, :4])
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for argv in (["preprocess", small, "-o", ro / "r.h5"],
                     ["reduce", small, "--labels", tiny["truth"], "-o", ro / "r.h5"]):
            code, _, err = _run(capsys, *argv)
            assert code == 2 and str(ro / "r.h5") in err and ".part" not in err and ".tmp" not in err
    finally:
        ro.chmod(0o755)


def test_ctrl_c_before_the_command_runs_is_one_line(tmp_path):
    """Ctrl-C in the first ~0.1 s (parsing the command line, importing its module) printed a
    KeyboardInterrupt traceback; later it printed "sedclassify COMMAND: interrupted"."""
    code = ("import sys\n"
            "import napari_sedclassify.cli as cli\n"
            "def interrupt(*a, **k):\n"
            "    raise KeyboardInterrupt\n"
            "cli.build_parser = interrupt\n"
            "sys.argv = ['sedclassify', 'info', 'scan.npy']\n"
            "cli.entry()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "sedclassify info: interrupted\n"


def test_the_console_script_imports_nothing_heavy_before_it_can_catch_ctrl_c():
    """The console script imports ``napari_sedclassify.cli`` before ``entry()`` runs: that import
    must not import numpy (about 0.1 s, where a Ctrl-C printed a traceback), so every heavy import
    happens inside ``entry()``, which turns Ctrl-C into one line. The package's own names still
    resolve (``napari_sedclassify.Geometry``)."""
    code = ("import sys\n"
            "import napari_sedclassify.cli\n"
            "print('numpy' in sys.modules)\n"
            "import napari_sedclassify\n"
            "print(napari_sedclassify.Geometry.__name__, napari_sedclassify.Scan.__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split("\n")[:2] == ["False", "Geometry Scan"], proc.stderr


def test_simulate_does_not_replace_a_data_set_without_force(tmp_path, capsys):
    """`sedclassify simulate` into a folder that holds a data set replaced its scans in silence."""
    import hashlib

    from napari_sedclassify.cli import main

    out = tmp_path / "sim"
    args = ["simulate", str(out), "--scan-shape", "2", "2", "--detector", "64"]
    assert main(args) == 0
    digest = hashlib.md5((out / "scan_A_00.npy").read_bytes()).hexdigest()
    assert main(args + ["--seed", "3"]) == 2
    assert "already holds a simulated data set" in capsys.readouterr().err
    assert hashlib.md5((out / "scan_A_00.npy").read_bytes()).hexdigest() == digest
    assert main(args + ["--seed", "3", "--force"]) == 0
    assert hashlib.md5((out / "scan_A_00.npy").read_bytes()).hexdigest() != digest


def test_the_folder_check_leaves_nothing_behind_with_or_without_unnamed_files(tmp_path, monkeypatch):
    """An output folder is checked by making a file in it and dropping it: an unnamed one (O_TMPFILE)
    where the file system has them, else a named temporary file; either way the folder stays empty,
    and a folder that takes no file is refused by name."""
    import errno

    from napari_sedclassify.cli import CLIError, _scan_options
    from napari_sedclassify.cli._scan_options import writable_folder

    monkeypatch.setattr(_scan_options, "_CREATED", [])  # the folders made here are not a later command's
    out = tmp_path / "made" / "here"
    assert writable_folder(out) == out and out.is_dir() and list(out.iterdir()) == []

    real_open = os.open
    unnamed = getattr(os, "O_TMPFILE", 0)
    tried = []

    def no_unnamed_files(path, flags, *a, **k):  # a file system without O_TMPFILE (some network mounts)
        if unnamed and flags & unnamed == unnamed:
            tried.append(path)
            raise OSError(errno.EOPNOTSUPP, "Operation not supported", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", no_unnamed_files)
    other = tmp_path / "other"
    assert writable_folder(other) == other and list(other.iterdir()) == []
    assert bool(tried) == bool(unnamed)  # the unnamed file was tried first where the system has them

    def nothing_at_all(path, flags, *a, **k):
        if os.path.realpath(path).startswith(os.path.realpath(tmp_path / "locked")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", nothing_at_all)
    with pytest.raises(CLIError, match="locked: cannot write in the folder .*Permission denied"):
        writable_folder(tmp_path / "locked")
