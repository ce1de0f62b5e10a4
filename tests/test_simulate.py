"""The scan simulator: physics (rings, descan, detector), files, determinism, sessions, CLI, napari sample."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_sedclassify.classes import AMORPHOUS_ICE, CARBON, CRYSTALLINE_ICE, MIXED
from napari_sedclassify.geometry import electron_wavelength_A
from napari_sedclassify.io import open_scan
from napari_sedclassify.simulate import (
    SessionParams,
    demo_dataset,
    load_dataset,
    load_simulated,
    sample_scan,
    session_params,
    simulate_dataset,
    simulate_flatfield,
    simulate_scan,
)
from napari_sedclassify.simulate.detector import make_detector, poisson_counts


def bad_pixels(flat):
    """Dead (never counts) and hot (counts far above their neighbours) pixels, from a flat-field stack."""
    from scipy.ndimage import median_filter

    m = flat.mean(0)
    return (m == 0) | (m > 1.3 * median_filter(m, 3))


def radial_profile(frame, centre, bad, n_bins):
    """Mean counts in 1-px rings about ``centre`` (cy, cx) px, bad pixels excluded (np.bincount)."""
    yy, xx = np.indices(frame.shape)
    r = np.hypot(yy - centre[0], xx - centre[1]).astype(int).ravel()
    ok = ~bad.ravel() & (r < n_bins)
    s = np.bincount(r[ok], frame.ravel()[ok].astype(np.float64), minlength=n_bins)
    c = np.bincount(r[ok], minlength=n_bins)
    return s / np.maximum(c, 1)


def ring_peak(profile, lo, hi, half=None):
    """Sub-px radius of the maximum of a 1-px-bin ``profile`` within [lo, hi).

    Least-squares parabola through the ``half`` bins either side of the highest one (default: about
    a third of the ring's width at 512 px, scaled with the radius); bin k holds radii [k, k+1).
    """
    k = lo + int(np.argmax(profile[lo:hi]))
    half = half or max(1, int(round(k / 22)))
    x = np.arange(k - half, k + half + 1)
    c2, c1, _ = np.polyfit(x - k, profile[x], 2)
    return k + 0.5 - c1 / (2 * c2)


def ice_ring_radius(sim, n_frames=12):
    """Peak radius of the mean profile of pure amorphous-ice frames about their true centres."""
    bad = bad_pixels(sim.load_flatfield())
    n = sim.scan.detector_shape[0]
    pts = np.argwhere(sim.truth == AMORPHOUS_ICE)[:n_frames]
    assert len(pts) >= 4, "the test scan should show amorphous ice"
    prof = np.mean(
        [radial_profile(sim.scan.frame(iy, ix), sim.centres[iy, ix], bad, n // 2) for iy, ix in pts], axis=0
    )
    return prof, pts


@pytest.fixture(scope="module")
def sample():
    """The napari sample scan (24x24 points, 256 px), simulated once for this module."""
    return sample_scan()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """A demo-like set of 4 small scans (20x20 points, 128 px detector) on disk."""
    out = tmp_path_factory.mktemp("simset")
    simulate_dataset(out, n_scans=4, scan_shape=(20, 20), detector_px=128, seed=0)
    return out


def test_wavelength_and_camera_constant():
    """200 kV gives λ = 0.02508 Å and λL/p ≈ 410 Å·px at 90 cm and 55 µm (150 px ≈ 2.7 Å)."""
    sim = simulate_scan(None, scan_shape=(2, 2), detector_px=512, seed=0)
    assert electron_wavelength_A(200) == pytest.approx(0.02508, abs=2e-5)
    assert sim.geometry.lambda_L_over_p == pytest.approx(410.4, abs=0.5)
    assert sim.geometry.radius_px_to_d_A(150) == pytest.approx(2.74, abs=0.02)


def test_ice_ring_peaks_at_3p7_A_about_true_centre():
    """Default geometry (512 px): amorphous-ice frames peak within 2 % of r(3.7 Å), about the true centre."""
    sim = simulate_scan(None, scan_shape=(10, 10), detector_px=512, seed=2)
    predicted = sim.geometry.d_A_to_radius_px(3.7)  # ≈ 111 px
    prof, pts = ice_ring_radius(sim)
    peak = ring_peak(prof, 60, 170)
    assert abs(peak - predicted) / predicted < 0.02, (peak, predicted)
    # on the sensor (physical px, gap-aware) the ring sits exactly there; in index px it is about
    # 2 (edge width - 1) / 2 px smaller, because the wide pixels along the chip cross take up the gap
    det = make_detector(session_params("A"), 512)
    bad = bad_pixels(sim.load_flatfield())
    pc = det.centres
    phys = []
    for iy, ix in pts:
        cy, cx = det.to_physical(sim.centres[iy, ix])
        r = np.hypot(pc[:, None] - cy, pc[None, :] - cx).astype(int).ravel()
        ok = ~bad.ravel() & (r < 256)
        f = sim.scan.frame(iy, ix).ravel()[ok].astype(float)
        phys.append(np.bincount(r[ok], f, 256) / np.maximum(np.bincount(r[ok], minlength=256), 1))
    assert ring_peak(np.mean(phys, 0), 60, 170) == pytest.approx(predicted, rel=0.005)
    # the ring is centred on the TRUE centre: about a centre 10 px off it is lower and broader
    off = np.mean(
        [radial_profile(sim.scan.frame(iy, ix), sim.centres[iy, ix] + [10.0, 0.0], bad, 256) for iy, ix in pts],
        axis=0,
    )
    assert prof[int(round(peak))] > 1.15 * off[int(round(peak))]
    # ice scatters much more at 3.7 Å than carbon does
    carbon = np.argwhere(sim.truth == CARBON)
    if len(carbon):
        c = radial_profile(sim.scan.frame(*carbon[0]), sim.centres[tuple(carbon[0])], bad, 256)
        assert prof[100:122].mean() > 2 * c[100:122].mean()


def test_smaller_detector_keeps_rings_in_place(small_set):
    """A 128-px detector has 4x larger pixels: the ring sits at the same fraction of the detector."""
    ds = load_dataset(small_set)
    sim = load_simulated(ds["scans"][0]["scan"])
    assert sim.geometry.pixel_size_um == pytest.approx(55.0 * 4)
    predicted = sim.geometry.d_A_to_radius_px(3.7)
    assert predicted == pytest.approx(410.4 / 3.7 / 4, rel=1e-3)
    prof, _ = ice_ring_radius(sim)
    assert abs(ring_peak(prof, 15, 45) - predicted) / predicted < 0.03


def test_dead_pixels_zero_and_chip_cross_in_summed_frame(small_set):
    ds = load_dataset(small_set)
    sim = load_simulated(ds["scans"][0]["scan"])
    frames = np.load(sim.path, mmap_mode="r")
    n = frames.shape[-1]
    flat = sim.load_flatfield()
    dead = (flat == 0).all(0)
    assert dead.sum() >= 3
    # dead pixels are 0 in every frame of every scan
    for entry in ds["scans"]:
        f = np.load(entry["scan"], mmap_mode="r")
        assert f[..., dead].max() == 0
    # the detector's own dead map is what the flat-field shows (no other pixel is always 0)
    det = make_detector(session_params("A"), n)
    np.testing.assert_array_equal(dead, det.dead)
    # summed frame: the pixels along the chip boundaries collect more (bright cross)
    total = frames.reshape(-1, n, n).sum(0, dtype=np.int64).astype(float)
    total[dead | bad_pixels(flat)] = np.nan
    h = n // 2
    edge_rows = np.nanmean(total[h - 1 : h + 1, 8:-8])
    near_rows = np.nanmean(total[[h - 4, h - 3, h + 2, h + 3], 8:-8])
    edge_cols = np.nanmean(total[8:-8, h - 1 : h + 1])
    near_cols = np.nanmean(total[8:-8, [h - 4, h - 3, h + 2, h + 3]])
    assert edge_rows > 1.3 * near_rows and edge_cols > 1.3 * near_cols
    # in the flat-field the edge pixels are wider by the configured factor (minus the binning)
    fm = flat.mean(0)
    width = 1 + (SessionParams().edge_pixel_width - 1) / (512 / n)
    ratio = np.median(fm[h - 1, 8:h - 8]) / np.median(fm[h - 8, 8:h - 8])
    assert ratio == pytest.approx(width, rel=0.05)


def test_counts_saturate_at_4095(sample):
    sim = sample
    frames = np.asarray(sim.scan.data)
    assert frames.dtype == np.uint16
    assert frames.max() == 4095
    # the direct beam saturates its core in every frame; a few hundred thousand electrons per frame
    assert (frames.reshape(-1, 256 * 256).max(1) == 4095).all()
    assert 1e5 < sim.metadata["electrons_per_frame"] < 1e6


def test_all_four_classes_occur(small_set):
    ds = load_dataset(small_set)
    found = set()
    for entry in ds["scans"]:
        truth = np.load(entry["truth"])
        frac = np.load(entry["fractions"])
        np.testing.assert_allclose(frac.sum(-1), 1.0, atol=1e-5)
        # the documented rule: a material covering >= 0.8 of the beam disc, otherwise mixed
        pure = frac.max(-1) >= 0.8
        assert (truth[~pure] == MIXED).all()
        np.testing.assert_array_equal(truth[pure], frac.argmax(-1)[pure] + 1)
        found |= set(np.unique(truth).tolist())
    assert found == {CARBON, AMORPHOUS_ICE, CRYSTALLINE_ICE, MIXED}


def test_sample_scan_is_small_complete_and_in_memory(sample):
    sim = sample
    assert sim.scan.scan_shape == (24, 24) and sim.scan.detector_shape == (256, 256)
    assert sim.path is None and sim.flatfield.shape[1:] == (256, 256) and sim.flatfield.dtype == np.uint16
    assert set(np.unique(sim.truth).tolist()) == {CARBON, AMORPHOUS_ICE, CRYSTALLINE_ICE, MIXED}
    assert sim.centres.shape == (24, 24, 2) and sim.fractions.shape == (24, 24, 3)
    assert sim.geometry.scan_step_nm == 30.0


def test_overview_carbon_darker_than_ice_and_registered(sample):
    """Sampling the overview at the scan points through the affine: carbon darker than ice, crystals dark."""
    from scipy.ndimage import map_coordinates

    sim = sample
    inv = np.linalg.inv(sim.overview_to_scan)
    iy, ix = np.indices(sim.truth.shape)
    pts = np.stack([iy.ravel(), ix.ravel(), np.ones(iy.size)])
    oy, ox, _ = inv @ pts
    assert sim.overview.shape[0] > 3 * sim.truth.shape[0]  # higher resolution than the scan grid
    vals = map_coordinates(sim.overview, [oy, ox], order=1).reshape(sim.truth.shape)
    carbon = np.median(vals[sim.truth == CARBON])
    ice = np.median(vals[sim.truth == AMORPHOUS_ICE])
    crystal = np.median(vals[sim.truth == CRYSTALLINE_ICE])
    assert carbon < 0.9 * ice and crystal < 0.9 * ice
    # a transform that ignores the registration (flipped) loses most of the contrast
    flipped = map_coordinates(sim.overview, [oy[::-1], ox[::-1]], order=1).reshape(sim.truth.shape)
    assert abs(np.median(flipped[sim.truth == CARBON]) - np.median(flipped[sim.truth == AMORPHOUS_ICE])) < abs(
        carbon - ice
    )


def test_true_centres_drift_as_configured():
    """Fit a plane to the true centres (in physical px): slopes = configured descan, residual = jitter."""
    sess = session_params("A")
    for n, shape in ((512, (10, 10)), (64, (24, 24))):
        sim = simulate_scan(None, scan_shape=shape, detector_px=n, seed=4)
        b = 512 / n
        det = make_detector(sess, n)
        phys = det.to_physical(sim.centres)
        iy, ix = np.indices(shape)
        a = np.stack([iy.ravel(), ix.ravel(), np.ones(iy.size)], axis=1)
        coef, *_ = np.linalg.lstsq(a, phys.reshape(-1, 2), rcond=None)
        # configured: 0.5 px per 30-nm step at 512 px, turned by 20° from +x towards +y
        ang = np.deg2rad(sess.descan_angle_deg)
        m = sess.descan_px_per_nm * sess.scan_step_nm / b
        expected = m * np.array([[np.cos(ang), np.sin(ang)], [-np.sin(ang), np.cos(ang)]])
        np.testing.assert_allclose(coef[:2].T, expected, atol=0.02 / b)
        resid = phys.reshape(-1, 2) - a @ coef
        assert resid.std() == pytest.approx(sess.jitter_px / b, rel=0.25)
        # the beam sweeps the configured distance across the scan (±10 px over 40x40 at 512 px)
        span = np.ptp(phys.reshape(-1, 2), axis=0)
        np.testing.assert_allclose(span, np.abs(expected) @ (np.array(shape) - 1), atol=1.2 / b)
        # and it starts near the detector centre (the chip cross)
        assert np.abs(sim.centres.mean((0, 1)) - (n - 1) / 2).max() < 6 / b


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(n_scans=1, scan_shape=(6, 7), detector_px=64)
    simulate_dataset(tmp_path / "a", seed=5, **kw)
    simulate_dataset(tmp_path / "b", seed=5, **kw)
    simulate_dataset(tmp_path / "c", seed=6, **kw)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "scan_A_00.npy" in names and "flatfield_A.npy" in names and "scan_A_00_truth.tif" in names
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    for name in ("scan_A_00.npy", "scan_A_00_centres.npy", "scan_A_00_overview.npy", "flatfield_A.npy"):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes(), name
    assert not list(tmp_path.glob("*/.*tmp*")), "temporary files left behind"


def test_sessions_differ_as_configured():
    """The same sample area (same seed) seen in sessions A and B: camera length, dose, beam, descan, gain."""
    a = simulate_scan(None, scan_shape=(10, 10), detector_px=256, seed=2, session="A")
    b = simulate_scan(None, scan_shape=(10, 10), detector_px=256, seed=2, session="B")
    sa, sb = session_params("A"), session_params("B")
    np.testing.assert_array_equal(a.truth, b.truth)  # same sample
    # configured differences
    assert 0.02 <= abs(sb.camera_length_mm / sa.camera_length_mm - 1) <= 0.04
    assert 0.05 <= abs(sb.dose_e_per_A2 / sa.dose_e_per_A2 - 1) <= 0.15
    assert 20 <= abs(sb.descan_angle_deg - sa.descan_angle_deg) <= 45
    assert session_params("B") == sb  # deterministic from the name
    # the geometry reports the nominal camera length in both (what a microscope would say)
    assert a.geometry == b.geometry
    # the ring moves with the true camera length
    ra = ring_peak(ice_ring_radius(a)[0], 30, 90)
    rb = ring_peak(ice_ring_radius(b)[0], 30, 90)
    assert rb / ra == pytest.approx(sb.camera_length_mm / sa.camera_length_mm, abs=0.01)
    # scattered counts (outside the beam) scale with the dose
    def scattered(sim):
        f = np.asarray(sim.scan.data, dtype=np.float64)
        bad = bad_pixels(sim.load_flatfield())
        yy, xx = np.indices(f.shape[2:])
        tot = 0.0
        for iy in range(10):
            for ix in range(10):
                cy, cx = sim.centres[iy, ix]
                far = (np.hypot(yy - cy, xx - cx) > 20) & ~bad
                tot += f[iy, ix][far].sum()
        return tot
    assert scattered(b) / scattered(a) == pytest.approx(sb.dose_e_per_A2 / sa.dose_e_per_A2, abs=0.03)
    # descan: the drift across the scan turns with the session's descan direction
    da = a.centres[-1, -1] - a.centres[0, 0]
    db = b.centres[-1, -1] - b.centres[0, 0]
    turn = np.degrees(np.arctan2(db[0], db[1]) - np.arctan2(da[0], da[1]))
    assert turn == pytest.approx(sb.descan_angle_deg - sa.descan_angle_deg, abs=6)
    # gain maps differ, the hardware (dead pixels) does not
    fa, fb = a.load_flatfield().mean(0), b.load_flatfield().mean(0)
    np.testing.assert_array_equal(fa == 0, fb == 0)
    ok = (fa > 0) & (fb > 0)
    assert np.corrcoef(fa[ok], fb[ok])[0, 1] < 0.9


def test_demo_dataset_layout(tmp_path):
    ds = demo_dataset(tmp_path, scan_shape=(4, 4), detector_px=32, seed=0)
    sessions = [s["session"] for s in ds["scans"]]
    assert sessions.count("A") == 16 and sessions.count("B") == 1
    on_disk = json.loads((tmp_path / "dataset.json").read_text())
    assert on_disk == ds and set(on_disk["sessions"]) == {"A", "B"}
    assert (tmp_path / "flatfield_A.npy").exists() and (tmp_path / "flatfield_B.npy").exists()
    for entry in load_dataset(tmp_path)["scans"]:
        for key in ("scan", "truth", "truth_tif", "centres", "overview", "flatfield", "metadata"):
            assert entry[key].exists(), entry[key]


def test_scan_files_open_with_their_geometry(tmp_path):
    import tifffile

    out = tmp_path / "one" / "scan.npy"
    sim = simulate_scan(out, scan_shape=(5, 6), detector_px=64, seed=3, session="B")
    scan = open_scan(out)
    assert scan.scan_shape == (5, 6) and scan.detector_shape == (64, 64) and scan.dtype == np.uint16
    meta = json.loads(out.with_suffix(".json").read_text())
    assert scan.geometry.to_dict() == meta["geometry"] == sim.geometry.to_dict()
    assert meta["session"] == "B" and meta["seed"] == 3
    assert meta["class_names"] == {"1": "carbon", "2": "amorphous_ice", "3": "crystalline_ice", "4": "mixed"}
    assert np.asarray(meta["overview_to_scan"]).shape == (3, 3)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "one" / "scan_truth.tif"), sim.truth)
    assert np.load(tmp_path / "one" / "scan_centres.npy").dtype == np.float64
    assert np.load(tmp_path / "one" / "scan_overview.npy").dtype == np.float32
    assert (tmp_path / "one" / "flatfield_B.npy").exists()
    np.testing.assert_array_equal(scan.frame(2, 3), sim.scan.frame(2, 3))
    # the flat-field file equals a fresh simulate_flatfield of the same session and seed
    np.testing.assert_array_equal(
        np.load(tmp_path / "one" / "flatfield_B.npy"), simulate_flatfield(detector_px=64, session="B", seed=3)
    )
    with pytest.raises(ValueError, match="ending in .npy"):
        simulate_scan(tmp_path / "scan.h5", scan_shape=(2, 2), detector_px=32)
    with pytest.raises(ValueError, match="even number"):
        simulate_scan(None, scan_shape=(2, 2), detector_px=33)
    with pytest.raises(ValueError, match="session name"):
        simulate_scan(None, scan_shape=(2, 2), detector_px=32, session="../x")


def test_flatfield_is_a_flood_through_the_session_detector():
    flat = simulate_flatfield(detector_px=128, session="A", n_frames=10, seed=0)
    assert flat.shape == (10, 128, 128) and flat.dtype == np.uint16
    det = make_detector(session_params("A"), 128)
    m = flat.mean(0)
    normal = np.ones((128, 128), bool)
    normal[63:65] = normal[:, 63:65] = False
    normal &= ~det.dead
    normal.ravel()[det.hot_index] = False
    rel = m[normal] / np.median(m[normal])
    # pixel gain spread of 5-10 % (plus counting noise of 500 counts x 10 frames)
    assert 0.05 < rel.std() < 0.11
    # the flat-field measures the detector's gain map to counting precision (5000 counts: 1.4 %)
    resid = m[normal] / 500.0 / det.gain[normal] - 1
    assert abs(resid.mean()) < 0.005 and resid.std() < 0.02


def test_poisson_counts_match_the_poisson_distribution():
    from scipy import stats

    rng = np.random.default_rng(0)
    for lam in (0.02, 0.7, 4.0, 30.0):
        x = poisson_counts(np.full(200_000, lam, np.float32), rng).astype(np.int64)
        assert x.mean() == pytest.approx(lam, rel=0.02, abs=0.002)
        assert x.var() == pytest.approx(lam, rel=0.03, abs=0.002)
        k = np.arange(x.max() + 1)
        expected = stats.poisson.pmf(k, lam) * x.size
        observed = np.bincount(x, minlength=k.size)
        keep = expected > 20
        chi2 = (((observed - expected) ** 2 / expected)[keep]).sum()
        assert chi2 < stats.chi2.ppf(0.999, keep.sum() - 1)


def test_cli_simulate_writes_files(tmp_path):
    out = tmp_path / "sim"
    res = subprocess.run(
        [sys.executable, "-m", "napari_sedclassify.cli", "simulate", str(out), "--scans", "2",
         "--scan-shape", "5", "4", "--detector", "64", "--seed", "1", "--session", "B", "--json"],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [s["scan"] for s in data["scans"]] == ["scan_B_00.npy", "scan_B_01.npy"]
    assert "frame" in res.stderr  # tqdm progress bar
    for s in data["scans"]:
        assert open_scan(out / s["scan"]).scan_shape == (5, 4)
        assert np.load(out / s["truth"]).shape == (5, 4)
    assert (out / "dataset.json").exists() and (out / "flatfield_B.npy").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "napari_sedclassify.cli", "simulate", str(out), "--detector", "63"],
        capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "--detector" in bad.stderr


def test_scans_of_two_detector_sizes_in_one_folder_keep_their_own_flatfield(tmp_path):
    """Session A at 64 px, then at 48 px, then at 64 px again, into one folder: the second scan's
    flat-field once replaced the first's (the 64 px scan then failed with a shape mismatch); now
    each scan finds a flood of its own detector, and scans made the same way share one file."""
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.simulate import load_simulated, simulate_scan

    first = simulate_scan(tmp_path / "a64.npy", scan_shape=(3, 3), detector_px=64, seed=1)
    second = simulate_scan(tmp_path / "a48.npy", scan_shape=(3, 3), detector_px=48, seed=1)
    third = simulate_scan(tmp_path / "b64.npy", scan_shape=(3, 3), detector_px=64, seed=1)
    assert first.flatfield_path != second.flatfield_path
    assert third.flatfield_path == first.flatfield_path
    for path, px in (("a64.npy", 64), ("a48.npy", 48), ("b64.npy", 64)):
        sim = load_simulated(tmp_path / path)
        flood = sim.load_flatfield()
        assert flood.shape[-2:] == (px, px)
        preprocess(sim.scan, None, flatfield=str(sim.flatfield_path))


def test_a_descan_that_takes_the_beam_off_the_detector_is_simulated():
    """A descan 60 times the default moves the beam across and beyond a 256 px detector over a
    24 x 24 scan: the simulator's radial tables reach every pixel from every centre (they stopped
    at 1.5 detector widths: an IndexError), and where the beam is on the detector preprocessing
    finds it within 0.5 px (1 px on the wide chip-edge pixels)."""
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.simulate import session_grid

    (sess,) = session_grid("A", descan=(60.0,))
    sim = simulate_scan(None, scan_shape=(24, 24), detector_px=256, session=sess, seed=5)
    frames = np.asarray(sim.scan.frame_source[:, :])
    assert frames.shape == (24, 24, 256, 256) and frames.sum(axis=(2, 3)).min() > 0
    truth = sim.centres
    on = ((truth > 8) & (truth < 247)).all(axis=-1)  # the whole disc on the detector
    assert 100 <= on.sum() < 24 * 24  # part of the scan's beam lies beyond the detector
    result = preprocess(sim.scan)
    assert result.beam_found[on].all()
    err = np.hypot(*(result.centres - truth).transpose(2, 0, 1))
    cross = (np.abs(truth - 127.5) < 8).any(axis=-1)  # the beam on the wide chip-edge pixels
    assert err[on & ~cross].max() < 0.5 and err[on & cross].max() < 1.0
