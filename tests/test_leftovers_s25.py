"""Session 25 leftovers:

1. No command-line flag for the direct beam's radius: a scan whose first frames show no beam was
   refused, and the refusal gave only the Python way out. `--beam-radius PX` on every command that
   preprocesses; the refusal names it.
2. A scan whose every frame is 0 (the real DECTRIS ARINA file) was asked "is this a diffraction scan
   with the beam on the detector?": it now says every frame looked at is empty.
3. `sedclassify watch` checked the model's preprocessing against the detector only once the
   calibration sample had arrived (given no --calibration scan): now as soon as the detector is known.
4. The DECTRIS reader kept the file's counter saturation as `saturation_value`, which the plan does
   not read: the saturation level was taken as the 32-bit image's 2**32 - 1.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from napari_sedclassify.cli import main
from napari_sedclassify.simulate import simulate_scan

PREPROCESSING_COMMANDS = ("preprocess", "predict", "train", "evaluate", "reduce", "propose", "calibrate", "watch")


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("command", PREPROCESSING_COMMANDS)
def test_every_command_that_preprocesses_takes_the_beam_radius(command, capsys):
    assert "--beam-radius PX" in _help(command, capsys)


@pytest.fixture(scope="module")
def dark_start(tmp_path_factory):
    """A 24 x 24 scan on a 64 px detector whose first 480 frames (every calibration window: the
    sample and the windows after it) lie behind a grid bar: stray counts, no beam."""
    d = tmp_path_factory.mktemp("dark")
    sim = simulate_scan(scan_shape=(24, 24), detector_px=64, seed=5)
    data = np.asarray(sim.scan.data).copy()
    frames = data.reshape(-1, *data.shape[2:])
    frames[:480] = np.random.default_rng(2).poisson(0.02, (480,) + frames.shape[1:])
    path = d / "dark_start.npy"
    np.save(path, data)
    return sim, path


def test_a_scan_whose_first_frames_show_no_beam_is_preprocessed_with_the_radius_given(dark_start, tmp_path, capsys):
    from napari_sedclassify.pipeline.preprocess import PreprocessResult, preprocess

    sim, path = dark_start
    out = tmp_path / "r.h5"
    assert main(["preprocess", str(path), "-o", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{path}: no direct beam found in the first 480 recorded frames" in line
    assert line.endswith("On the command line, give the beam's radius: --beam-radius PX."), line
    assert not out.exists()
    radius = preprocess(sim.scan).resolved["beam_radius_px"]  # measured where the beam is seen
    assert main(["preprocess", str(path), "-o", str(out), "--beam-radius", f"{radius:.3f}"]) == 0
    result = PreprocessResult.load(out)
    assert result.plan.beam_radius_px == pytest.approx(radius, abs=1e-3)
    found = result.beam_found.ravel()
    assert not found[:480].any() and found[480:].all()


@pytest.mark.parametrize("value, problem", [
    ("0", "direct-beam radius 0 px (beam_radius_px=0, --beam-radius 0) must be more than 0 px"),
    ("40", "direct-beam radius 40 px (beam_radius_px=40, --beam-radius 40) must be at most 32 px "
           "(half the 64 x 64 px detector)"),
])
def test_a_beam_radius_no_scan_can_use_is_refused_in_one_line(dark_start, tmp_path, capsys, value, problem):
    _, path = dark_start
    out = tmp_path / "r.h5"
    assert main(["preprocess", str(path), "-o", str(out), "--beam-radius", value]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert problem in line
    assert not out.exists()


def test_a_scan_whose_every_frame_is_zero_says_so(tmp_path, capsys):
    path = tmp_path / "zeros.npy"
    np.save(path, np.zeros((4, 4, 64, 64), np.uint16))
    assert main(["preprocess", str(path), "-o", str(tmp_path / "r.h5")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{path}: no direct beam found in the first frames (the calibration sample): every frame is empty " \
           "(all pixels 0; 16 frames looked at)" in line
    assert "is this a diffraction scan" not in line and "--beam-radius" not in line


def test_the_real_arina_file_whose_every_pixel_is_zero_says_so(realdata, tmp_path, capsys):
    pytest.importorskip("hdf5plugin")
    from napari_sedclassify.io import open_scan

    path = realdata / "arina" / "test_00_master.h5"
    scan = open_scan(path)
    assert not np.asarray(scan.frames()).any()  # the MANIFEST's "every pixel is 0", seen here
    assert main(["preprocess", str(path), "-o", str(tmp_path / "r.h5")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{path}: no direct beam found in the first frames (the calibration sample): every frame is empty " \
           f"(all pixels 0; {scan.n_frames} frames looked at)" in line


def test_the_dectris_saturation_value_is_the_plans_saturation_level(realdata):
    pytest.importorskip("hdf5plugin")
    import h5py

    from napari_sedclassify.io import open_scan
    from napari_sedclassify.processing.plan import saturation_of

    path = realdata / "arina" / "test_00_master.h5"
    with h5py.File(path, "r") as f:
        stated = float(f["entry/instrument/detector/saturation_value"][()])
    scan = open_scan(path)
    sample = np.asarray(scan.frames())[:4]
    assert saturation_of(scan.metadata, sample, None) == stated


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """An FCNN trained on two 8 x 8 scans of a 64 px detector, and a scan to acquire."""
    from napari_sedclassify.pipeline.train import train_model

    d = tmp_path_factory.mktemp("watch")
    train = [simulate_scan(d / f"t{i}.npy", scan_shape=(8, 8), detector_px=64, seed=40 + i) for i in (0, 1)]
    model = train_model([t.scan.source for t in train], [t.truth for t in train], model="fcnn")
    sim = simulate_scan(d / "acq.npy", scan_shape=(8, 8), detector_px=64, seed=3)
    return model, sim


def _watch_held(sim, target, argv, capsys) -> tuple[int, str]:
    """`sedclassify watch ARGV` on ``target``, a .mib the detector has written 2 frames of and holds
    (the calibration sample, 48 frames, never arrives while the command runs)."""
    from napari_sedclassify.pipeline.acquisition import Acquisition

    release = threading.Event()
    writer = Acquisition(sim.scan, target, rate_hz=500.0, hold=lambda k: k >= 2 and not release.is_set())
    writer.start()
    g = sim.geometry
    try:
        rc = main(["watch", *argv, "--input", str(target), "--timeout", "60", "--pixel-size", str(g.pixel_size_um),
                   "--camera-length", str(g.camera_length_mm), "--voltage", str(g.voltage_kv)])
    finally:
        release.set()
        writer.join()
    return rc, capsys.readouterr().err.splitlines()[-1]


def test_watch_refuses_what_the_detector_cannot_hold_once_its_header_says_it(live, tmp_path, capsys):
    """A model whose beam radius (100 px) a 64 px detector cannot hold, and --beam-radius 40: the
    line `sedclassify preprocess` gives, said once the .mib's first header is read, not after a
    calibration sample that never comes."""
    from napari_sedclassify.models.persistence import save_model

    model, sim = live
    wide = tmp_path / "wide.sedmodel"
    save_model(dataclasses.replace(model, preprocess={**model.preprocess, "beam_radius_px": 100.0}), wide)
    target = tmp_path / "acq.mib"
    rc, line = _watch_held(sim, target, [str(wide), "--out", str(tmp_path / "out")], capsys)
    assert rc == 2
    assert line.endswith(f"{target}: direct-beam radius 100 px (beam_radius_px=100, --beam-radius 100) must be at "
                         "most 32 px (half the 64 x 64 px detector)"), line
    ok = tmp_path / "ok.sedmodel"
    save_model(model, ok)
    target.unlink()
    rc, line = _watch_held(sim, target, [str(ok), "--beam-radius", "40"], capsys)
    assert rc == 2
    assert line.endswith(f"{target}: direct-beam radius 40 px (beam_radius_px=40, --beam-radius 40) must be at "
                         "most 32 px (half the 64 x 64 px detector)"), line
