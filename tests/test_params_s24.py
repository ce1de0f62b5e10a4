"""Preprocessing parameters refused in one place, the same way by the Python API and the CLI,
before any frame is read; the fitted-centring progress bar counts the scan's frames per pass."""

from __future__ import annotations

import re

import numpy as np
import pytest
from models_helpers import watched

from napari_sedclassify.cli import main
from napari_sedclassify.models.features import FeatureRecipe
from napari_sedclassify.pipeline.preprocess import preprocess
from napari_sedclassify.pipeline.train import preprocess_params_for
from napari_sedclassify.processing import PreprocessParams

simulate = pytest.importorskip("napari_sedclassify.simulate")


@pytest.fixture(scope="module")
def sim():
    """A 16 x 16 scan on a 128 x 128 px detector (calibrated geometry)."""
    return simulate.simulate_scan(scan_shape=(16, 16), detector_px=128, seed=3)


@pytest.fixture(scope="module")
def scan_file(sim, tmp_path_factory):
    path = tmp_path_factory.mktemp("params") / "scan.npy"
    np.save(path, np.asarray(sim.scan.data))
    return path


def test_a_crop_larger_than_the_detector_is_refused_by_python_as_by_the_cli(sim, scan_file, tmp_path, capsys):
    """preprocess(scan, PreprocessParams(crop_radius_px=150)) on 128 px frames returned crops of
    300 x 300 px, mostly padding, while `sedclassify preprocess --crop-radius 150` refused: now both
    refuse, with one message, before any frame is read."""
    scan, reads = watched(sim, chunk_cols=16)
    with pytest.raises(ValueError) as python:
        preprocess(scan, PreprocessParams(crop_radius_px=150))
    assert reads == []
    message = str(python.value)
    assert "at most 64 px" in message and "128 x 128 px detector" in message and "crop_radius_px=150" in message
    assert "\n" not in message
    assert preprocess(scan, PreprocessParams(crop_radius_px=64)).crops.shape == (16, 16, 128, 128) and reads
    out = tmp_path / "crops.h5"
    assert main(["preprocess", str(scan_file), "--crop-radius", "150", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message.split(": ", 1)[1] in err and "--crop-radius 150" in err and not out.exists()


def test_a_crop_given_in_angstrom_is_refused_on_a_small_detector(sim):
    """crop_d_A whose radius is beyond the detector gave crops of 410 x 410 px of 128 px frames."""
    scan, reads = watched(sim, chunk_cols=16)
    with pytest.raises(ValueError, match=r"crop_d_A=0\.5\), \d+\.\d px on this detector, is larger than the "
                                         r"detector holds: at most 64 px"):
        preprocess(scan, PreprocessParams(crop_d_A=0.5))
    assert reads == []


def test_a_cnn_crop_on_a_small_detector_stays_within_it(sim):
    """A CNN's crop (2.7 Å: 150 px of a 512 px detector at 900 mm) is laid out for the detector it
    is cut from, so the check of the crop's size never refuses a model's own preprocessing."""
    params = preprocess_params_for([FeatureRecipe(kind="crop")], sim.geometry)
    assert params.crop_radius_px is not None and params.crop_radius_px <= 64
    params.check_detector(sim.geometry)


@pytest.mark.parametrize("given, unit, allowed", [
    (dict(beam_radius_px=0.0), "px", "more than 0 px"),
    (dict(edge_pixel_width=0.5), "pitches", "at least 1 pitch"),
    (dict(saturation_counts=0.0), "counts", "more than 0 counts"),
    (dict(descan_degree=0), "", "at least 1"),
    (dict(descan_clip_sigma=0.0), "sigmas", "more than 0 sigmas"),
    (dict(ria_bin_px=-1.0), "px", "more than 0 px"),
    (dict(ria_r_min_px=-5.0), "px", "at least 0 px"),
    (dict(ria_q_bin_invA=0.0), "Å⁻¹", "more than 0 Å⁻¹"),
    (dict(ria_q_max_invA=-1.0), "Å⁻¹", "more than 0 Å⁻¹"),
    (dict(crop_radius_px=0.0), "px", "at least 1 px"),
    (dict(crop_d_A=0.0), "Å", "more than 0 Å"),
    (dict(bf_d_A=0.0), "Å", "more than 0 Å"),
    (dict(bad_pixel_sample=0), "frames", "at least 1"),
    (dict(hot_ratio=1.0), "", "more than 1"),
    (dict(chunk_frames=0), "frames", "at least 1"),
    (dict(workers=-1), "", "at least 0"),
])
def test_a_value_no_scan_can_use_is_refused_when_the_parameters_are_made(given, unit, allowed):
    """These were accepted (hot_ratio 1 called every pixel above its neighbours' median hot, a
    calibration sample of 0 frames, a descan degree of 0...) or failed in the middle of the run
    (ZeroDivisionError for crop_d_A=0, a thread pool's error for workers=-1)."""
    (name, value), = given.items()
    with pytest.raises(ValueError) as refused:
        PreprocessParams(**given)
    message = str(refused.value)
    assert f"({name}={value:g}" in message and allowed in message and f"{value:g} {unit}".strip() in message
    assert "\n" not in message


@pytest.mark.parametrize("given, problem", [
    (dict(beam_radius_px=500.0), r"beam_radius_px=500, --beam-radius 500\) must be at most 64 px \(half the 128 x 128 px detector\)"),
    (dict(ria_r_min_px=200.0, ria_r_max_px=300.0), r"ria_r_min_px=200\) must be less than 90\.5 px"),
    (dict(adf_inner_px=1000.0), r"adf_inner_px=1000\) must be less than 90\.5 px"),
    (dict(ria_r_min_px=20.0, ria_q_max_invA=0.01), r"ria_q_max_invA=0\.01\) must be more than"),
])
def test_a_value_this_detector_cannot_hold_is_refused_before_any_frame_is_read(sim, given, problem):
    """A beam radius or a radial profile's start beyond the 128 px detector was accepted (an
    all-NaN profile, an empty ADF image); a q end below the start was refused only after the
    calibration sample had been read."""
    scan, reads = watched(sim, chunk_cols=16)
    with pytest.raises(ValueError, match=problem):
        preprocess(scan, PreprocessParams(**given))
    assert reads == []


def test_fitted_centring_progress_counts_the_scans_frames_per_pass(scan_file, tmp_path, capsys):
    """`preprocess --centring fitted` showed 512/512 frames for a 256-frame scan (two passes)."""
    assert main(["preprocess", str(scan_file), "--centring", "fitted", "-o", str(tmp_path / "fitted.h5")]) == 0
    err = capsys.readouterr().err
    bars = set(re.findall(r"preprocess pass (\d)/2:\s+100%\S*\s+(\d+)/(\d+)", err.replace("\r", "\n")))
    assert bars == {("1", "256", "256"), ("2", "256", "256")}
    assert "/512" not in err
