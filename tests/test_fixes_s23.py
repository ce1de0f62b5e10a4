"""Session 23 fixes: messages in the user's words (a truncated .npy, the CLI's --dataset, the
calibration's advice in napari), a demo folder that describes one run, an interrupted simulation
that says what it wrote, and no empty output folder left by a stopped command."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_sedclassify.cli import main
from napari_sedclassify.errors import CalibrationError, ScanFormatError
from napari_sedclassify.io import open_scan
from napari_sedclassify.simulate import load_dataset, sample_scan, simulate_dataset, simulate_scan


def _one_line_error(capsys, argv) -> str:
    """The command's stderr, which must be one error line (and no traceback), exit status 2."""
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    return line


def test_truncated_npy_says_how_many_frames_it_holds(tmp_path, capsys):
    path = tmp_path / "scan.npy"
    simulate_scan(path, scan_shape=(4, 5), detector_px=64, seed=3)
    frame_bytes = 64 * 64 * 2
    cut = tmp_path / "cut.npy"  # an interrupted copy: 12 whole frames and part of the 13th
    cut.write_bytes(path.read_bytes()[: path.stat().st_size - 7 * frame_bytes - 100])
    with pytest.raises(ScanFormatError) as refused:
        open_scan(cut)
    assert "truncated: it holds 12 whole frames of the 20 its header states" in str(refused.value)
    line = _one_line_error(capsys, ["info", str(cut)])
    assert line.startswith(f"sedclassify info: error: {cut}: truncated: it holds 12 whole frames of the 20")
    assert "mmap" not in line


def test_the_command_line_names_its_dataset_flag(realdata, tmp_path, capsys):
    blockfile = realdata / "blockfile" / "test2.blo"
    line = _one_line_error(capsys, ["info", str(blockfile), "--dataset", "foo"])
    assert f"{blockfile}: --dataset foo " in line and "not to blockfile files" in line
    assert " dataset= " not in line  # the Python keyword alone, as it said before
    with pytest.raises(ValueError, match=r"\(Python: dataset='foo'\)"):  # Python users read their keyword
        open_scan(blockfile, dataset="foo")

    import h5py

    frames = np.asarray(sample_scan().scan.data[:2]).reshape(-1, 256, 256)
    two = tmp_path / "two.h5"
    with h5py.File(two, "w") as f:
        f["entry/a"] = frames
        f["entry/b"] = frames
    line = _one_line_error(capsys, ["info", str(two)])
    assert "several datasets could be the scan, choose one with --dataset NAME (Python: dataset=NAME)" in line

    from napari_sedclassify._napari.wording import in_napari_words  # what the plugin shows of it

    assert "Python" not in in_napari_words(line) and "dataset=" not in in_napari_words(line)


def test_calibration_advice_in_the_words_of_cli_and_napari():
    sim = sample_scan()
    scan = sim.scan
    scan.geometry = scan.geometry.with_values("user", camera_length_mm=1.19 * scan.geometry.camera_length_mm)
    with pytest.raises(CalibrationError) as failed:  # the ring lies at the edge of the ±15 % search
        from napari_sedclassify.pipeline.calibrate import calibrate

        calibrate(scan, "ice", sim.flatfield)
    cli = str(failed.value)
    assert "a wider --search" in cli and "--ring gold" in cli

    from napari_sedclassify._napari.wording import in_napari_words

    shown = in_napari_words(cli)
    assert "--" not in shown and "ring gold" not in shown, shown
    assert "set the camera length near the right value in Scan geometry and Fit camera length again" in shown


def test_a_demo_run_again_with_fewer_models_leaves_only_its_own_files(tmp_path):
    from napari_sedclassify.pipeline.demo import earlier_outputs, run_demo

    out = tmp_path / "demo"
    settings = dict(scan_shape=(8, 8), detector_px=64, n_session_a=2, log=None)
    run_demo(out, models=("fcnn", "svm"), **settings)
    assert (out / "models" / "fcnn.sedmodel").exists()
    (out / "notes.txt").write_text("mine")  # the user's own files stay
    (out / "figures" / "my_plot.png").write_bytes(b"mine")

    report = run_demo(out, models=("svm",), **settings)
    assert sorted(p.name for p in (out / "models").iterdir()) == ["svm.sedmodel"]
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert not [f for f in figures if "fcnn" in f] and "my_plot.png" in figures
    assert (out / "notes.txt").read_text() == "mine"
    assert "figures/my_plot.png" not in report["figures"]  # the report lists the figures of its run
    ours = sorted(str(p.relative_to(out)) for p in earlier_outputs(out))
    assert ours == sorted(["report.json", "report.md", "models/svm.sedmodel", *report["figures"]])
    assert json.loads((out / "report.json").read_text())["settings"]["models"] == ["svm"]


def test_an_interrupted_simulation_describes_the_scans_it_wrote(tmp_path):
    frames_per_scan = 6 * 6
    done = 0

    def ctrl_c_in_the_second_scan(k):
        nonlocal done
        done += k
        if done > frames_per_scan:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate_dataset(tmp_path, n_scans=3, scan_shape=(6, 6), detector_px=64, progress=ctrl_c_in_the_second_scan)
    dataset = load_dataset(tmp_path)
    assert dataset["complete"] is False and dataset["planned_scans"] == 3
    assert [e["name"] for e in dataset["scans"]] == ["scan_A_00"]
    assert all(Path(e[k]).exists() for e in dataset["scans"] for k in ("scan", "truth", "flatfield"))
    assert not (tmp_path / "scan_A_01.npy").exists()


def _interrupted(argv, ready) -> tuple[int, str]:
    """Run ``sedclassify argv`` and press Ctrl-C (SIGINT) once ``ready()`` holds."""
    command = [sys.executable, "-c", "import sys; from napari_sedclassify.cli import entry; entry()", *argv]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    while proc.poll() is None and not ready():
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    return proc.wait(), proc.stderr.read()


def test_a_stopped_command_leaves_no_empty_folder_it_made(tmp_path):
    out = tmp_path / "new" / "sim"
    argv = ["simulate", str(out), "--scan-shape", "32", "32", "--detector", "256"]
    rc, err = _interrupted(argv, out.exists)
    assert rc == 130 and err.splitlines()[-1] == "sedclassify simulate: interrupted", err
    assert not (tmp_path / "new").exists() and tmp_path.exists()

    kept = tmp_path / "kept"  # a folder that was there before is kept, empty or not
    kept.mkdir()
    rc, err = _interrupted(["simulate", str(kept), *argv[2:]], lambda: any(kept.iterdir()))
    assert rc == 130 and kept.is_dir() and not any(kept.iterdir()), err
