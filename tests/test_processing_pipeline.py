"""preprocess(): bad frames, missing frames, fitted centring, crops, files, the CLI, virtual images."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_sedclassify import Scan
from napari_sedclassify.errors import Cancelled
from napari_sedclassify.pipeline.preprocess import PreprocessResult, preprocess
from napari_sedclassify.processing import FlatField, PreprocessParams, virtual_image

simulate = pytest.importorskip("napari_sedclassify.simulate")


@pytest.fixture(scope="module")
def sim():
    return simulate.simulate_scan(scan_shape=(10, 12), detector_px=256, seed=7)


@pytest.fixture(scope="module")
def damaged(sim):
    """The simulated scan as float32 with a blanked frame, an all-zero frame, an all-NaN frame, a
    frame with NaN/inf pixels, and three frames missing (an interrupted acquisition)."""
    data = np.asarray(sim.scan.data, dtype=np.float32).copy()
    rng = np.random.default_rng(0)
    data[0, 0] = rng.poisson(0.01 * sim.flatfield.mean(axis=0) / 500.0)  # blanked: stray counts only
    data[0, 1] = 0
    data[0, 2] = np.nan
    data[0, 3, 100:110, :] = np.nan
    data[0, 3, 5, 5] = np.inf
    missing = np.zeros(sim.scan.scan_shape, bool)
    missing[-1, -3:] = True
    data[missing] = 0
    scan = Scan(data, sim.geometry, missing=missing, metadata=dict(sim.metadata), source="damaged")
    return scan, FlatField.from_flood(sim.flatfield)


def test_bad_and_missing_frames_per_frame(damaged):
    scan, ff = damaged
    res = preprocess(scan, PreprocessParams(crop_radius_px=24, crop_bin=2), ff)
    no_beam = np.zeros(scan.scan_shape, bool)
    no_beam[0, :3] = True
    no_beam |= scan.missing
    np.testing.assert_array_equal(res.beam_found, ~no_beam)
    assert np.isnan(res.centres[no_beam]).all() and np.isfinite(res.centres[~no_beam]).all()
    assert np.isnan(res.ria[no_beam]).all()  # no centre, no RIA
    assert np.isnan(res.crops[no_beam]).all() and np.isfinite(res.crops[~no_beam]).all()
    assert res.crops.shape == (10, 12, 24, 24)
    assert np.isnan(res.virtual["total"][scan.missing]).all()
    assert res.virtual["total"][0, 1] == 0 and res.virtual["total"][0, 2] == 0  # nothing valid to add
    assert np.isnan(res.virtual["bf"][0, :3]).all()
    # the frame with NaN/inf pixels: found, and those pixels left out of its counts
    assert res.beam_found[0, 3]
    assert res.ria_counts[0, 3].sum() < res.ria_counts[0, 4].sum() - 1000
    assert np.isfinite(res.ria[0, 3, 5:100]).all()
    # masked pixels are excluded, not zero-filled: counts never include them
    assert res.mask.sum() >= ff.mask.sum()
    assert res.ria_counts[1, 1].sum() <= (~res.mask).sum()
    assert res.descan is not None and np.isfinite(res.centres_fitted).all()
    assert res.provenance["beam_found"] == int((~no_beam).sum())


def test_fitted_centring_gives_frames_without_beam_a_centre(damaged):
    scan, ff = damaged
    seen = []
    res = preprocess(scan, {"centring": "fitted"}, ff, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (2 * scan.n_frames, 2 * scan.n_frames)
    np.testing.assert_array_equal(res.centres_used, res.centres_fitted)
    assert np.isfinite(res.ria[0, 0, 5:50]).all()  # blanked frame, RIA about the fitted centre
    assert np.isnan(res.ria[scan.missing]).all()
    per_frame = preprocess(scan, None, ff)
    ok = per_frame.beam_found
    diff = np.nanmean(np.abs(res.ria[ok][:, 20:100] - per_frame.ria[ok][:, 20:100]) /
                      np.abs(per_frame.ria[ok][:, 20:100]))
    assert 0 < diff < 0.05  # about nearly the same centres


def test_cancel_stops_with_cancelled(damaged):
    scan, ff = damaged
    with pytest.raises(Cancelled):
        preprocess(scan, None, ff, cancel=lambda: True)


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_save_and_load_round_trip(tmp_path, sim, suffix):
    res = preprocess(sim.scan, PreprocessParams(crop_radius_px=20, centring="fitted"),
                     FlatField.from_flood(sim.flatfield))
    path = tmp_path / f"result{suffix}"
    res.save(path)
    res.save(path)  # replaces an existing result
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind
    back = PreprocessResult.load(path)
    for name in ("centres", "centres_fitted", "beam_found", "beam_radius_px", "ria", "ria_counts", "radii_px",
                 "crops", "mask", "missing"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name), err_msg=name)
    for k in ("total", "bf", "adf"):
        np.testing.assert_array_equal(back.virtual[k], res.virtual[k])
    assert back.params == res.params and back.geometry == res.geometry
    np.testing.assert_allclose(back.descan.fitted(), res.descan.fitted())
    assert back.descan.residual_rms_px == res.descan.residual_rms_px
    prov = back.provenance
    assert prov["version"] and prov["time"] and prov["parameters"]["centring"] == "fitted"
    assert prov["input"]["scan_shape"] == [10, 12]
    np.testing.assert_allclose(back.q_invA, sim.geometry.radius_px_to_q_invA(res.radii_px))
    with pytest.raises(ValueError, match="result.txt"):
        res.save(tmp_path / "result.txt")


def test_cli_preprocess(tmp_path):
    scan_path = tmp_path / "scan.npy"
    simulate.simulate_scan(scan_path, scan_shape=(6, 6), detector_px=128, seed=2)
    out = tmp_path / "result.h5"
    cmd = [sys.executable, "-m", "napari_sedclassify.cli", "preprocess", str(scan_path),
           "--flatfield", str(tmp_path / "flatfield_A.npy"), "--out", str(out), "--crop-radius", "16", "--json"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["frames"] == 36 and summary["beam_found"] == 36
    assert "preprocess" in run.stderr  # the progress bar
    res = PreprocessResult.load(out)
    assert res.crops.shape == (6, 6, 32, 32)
    assert res.provenance["input"]["source"] == str(scan_path)
    assert res.provenance["flatfield"]["source"].endswith("flatfield_A.npy")
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "exists" in again.stderr and "--force" in again.stderr
    np.save(tmp_path / "small_flat.npy", np.ones((2, 64, 64), np.uint16))
    bad = subprocess.run(cmd[:5] + ["--flatfield", str(tmp_path / "small_flat.npy"), "--out", str(tmp_path / "x.h5")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "does not match the detector" in bad.stderr
    missing = subprocess.run(cmd[:4] + [str(tmp_path / "none.npy")], capture_output=True, text=True)
    assert missing.returncode == 2 and "none.npy" in missing.stderr


def test_virtual_image_about_per_frame_centres_and_in_angstrom(sim):
    ff = FlatField.from_flood(sim.flatfield)
    res = preprocess(sim.scan, PreprocessParams(bf_radius_px=6.0, adf_inner_px=10.0), ff)
    used = ff.with_mask(res.mask).with_saturation(res.resolved["saturation_counts"])
    assert res.resolved["saturation_counts"] == 4095  # the simulator's 12-bit counters
    bf = virtual_image(sim.scan, 0.0, 6.0, centres=res.centres, flatfield=used)
    np.testing.assert_allclose(bf, res.virtual["bf"], rtol=1e-9)
    total = virtual_image(sim.scan)
    np.testing.assert_allclose(total, np.asarray(sim.scan.data).sum(axis=(2, 3)), rtol=1e-6)
    g = sim.geometry
    d_in, d_out = 10.0, 3.0  # Å at the inner and outer radius
    ring = virtual_image(sim.scan, centres=res.centres, inner_d_A=d_in, outer_d_A=d_out)
    ring_px = virtual_image(sim.scan, g.d_A_to_radius_px(d_in), g.d_A_to_radius_px(d_out),
                            centres=res.centres)
    np.testing.assert_array_equal(ring, ring_px)
    assert (ring < total).all() and (ring > 0).all()


def test_a_scan_without_a_direct_beam_is_refused_naming_the_file(realdata, tmp_path, capsys):
    """The real ARINA file (every pixel 0: no beam on the detector): the command refuses it in one
    line that names the file and says what is missing, and writes nothing."""
    pytest.importorskip("hdf5plugin")
    from napari_sedclassify.cli import main

    path = realdata / "arina" / "test_00_master.h5"
    out = tmp_path / "r.h5"
    assert main(["preprocess", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: no direct beam found in the first frames" in err
    assert not out.exists()
