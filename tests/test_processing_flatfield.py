"""Flat-field: gain map, dead/hot pixels, dark frame, saturation, files, bad pixels in the scan."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sedclassify.processing import FlatField, detect_bad_pixels, load_flatfield


def quad_flood(rng, n=20, k=128, counts=500.0, edge=2.5):
    """Flood frames of a small Medipix quad: 7 % gain spread, wide pixels along the chip cross
    (edge x and edge^2 the area), 5 dead and 3 hot pixels."""
    gain = rng.normal(1.0, 0.07, (k, k))
    w = np.ones(k)
    w[k // 2 - 1: k // 2 + 1] = edge
    area = np.outer(w, w)
    dead = [(3, 4), (50, 60), (k - 38, 10), (k - 8, k - 8), (7, k - 28)]
    hot = [(20, 30), (k - 58, k - 48), (k - 28, 5)]
    lam = counts * gain * area
    for p in dead:
        lam[p] = 0
    frames = rng.poisson(lam, (n, k, k)).astype(np.float64)
    for p in hot:
        frames[(slice(None),) + p] += 40000
    return frames.astype(np.uint16), gain * area, dead, hot


def test_gain_map_dead_hot_and_wide_pixels():
    rng = np.random.default_rng(0)
    flood, response, dead, hot = quad_flood(rng)
    ff = FlatField.from_flood(flood)
    assert ff.n_dead == len(dead) and ff.n_hot == len(hot)
    assert all(ff.mask[p] for p in dead + hot)
    assert ff.mask.sum() == len(dead) + len(hot)  # the wide (2.5x, 6.25x) pixels stay
    good = ~ff.mask
    assert np.nanmean(ff.gain) == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(ff.gain[ff.mask]).all()
    rel = ff.gain[good] / (response[good] / response[good].mean())
    assert np.std(rel) < 0.02  # 20 x 500 counts per pixel: ~1 % Poisson
    # a uniform exposure through the same detector comes out flat
    scene = rng.poisson(200.0 * response).astype(np.uint16)
    corrected = ff.apply(scene)
    assert np.isnan(corrected[ff.mask]).all()
    assert np.nanstd(corrected) / np.nanmean(corrected) < 0.08  # Poisson of 200 counts, not the gain


def test_dark_frame_is_subtracted():
    rng = np.random.default_rng(1)
    k = 64
    dark = np.full((k, k), 30.0)
    gain = rng.normal(1.0, 0.05, (k, k))
    flood = rng.poisson(dark + 1000 * gain, (10, k, k))
    ff = FlatField.from_flood(flood, dark=dark)
    frame = rng.poisson(dark + 300 * gain).astype(np.float32)
    out = ff.apply(frame)
    assert np.nanmean(out) == pytest.approx(300 * gain.mean() / np.mean(gain), rel=0.02)


def test_saturated_pixels_keep_their_counter_value():
    k = 32
    ff = FlatField.from_response(np.full((k, k), 1.0) * np.linspace(0.5, 2.0, k)[None, :])
    frame = np.full((k, k), 4095, np.uint16)
    frame[:, :4] = 100
    out = ff.with_saturation(4095).apply(frame)
    np.testing.assert_array_equal(out[:, 4:], 4095)  # a full counter is not gain-corrected
    assert not np.allclose(out[:, :4], 100)  # ordinary pixels are
    assert not np.allclose(ff.apply(frame)[:, 4:], 4095)  # without a saturation level, all are


def test_load_flatfield_from_files(tmp_path):
    rng = np.random.default_rng(2)
    flood, _, dead, hot = quad_flood(rng, n=5, k=64)
    np.save(tmp_path / "flood.npy", flood)
    ff = load_flatfield(tmp_path / "flood.npy")
    assert ff.shape == (64, 64) and ff.source.endswith("flood.npy")
    np.save(tmp_path / "gain.npy", np.nanmean(flood, axis=0))  # a 2D gain map
    ff2 = load_flatfield(tmp_path / "gain.npy")
    np.testing.assert_array_equal(ff.mask, ff2.mask)
    np.testing.assert_allclose(ff.gain, ff2.gain, rtol=1e-5)
    np.savez(tmp_path / "flood.npz", flood=flood)
    np.testing.assert_array_equal(load_flatfield(tmp_path / "flood.npz").mask, ff.mask)
    np.save(tmp_path / "bad.npy", np.zeros(5))
    with pytest.raises(ValueError, match="bad.npy"):
        load_flatfield(tmp_path / "bad.npy")
    with pytest.raises(FileNotFoundError, match="nothing.npy"):
        load_flatfield(tmp_path / "nothing.npy")
    np.save(tmp_path / "zeros.npy", np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="no positive response"):
        load_flatfield(tmp_path / "zeros.npy")


def test_load_flatfield_written_by_the_simulator(tmp_path):
    sim = pytest.importorskip("napari_sedclassify.simulate")
    path = tmp_path / "flat.npy"
    sim.simulate_flatfield(path, detector_px=128, n_frames=4, seed=3)
    ff = load_flatfield(path)
    assert ff.shape == (128, 128)
    assert ff.n_dead >= 1  # the simulated detector has dead pixels
    assert not ff.mask[63:65, :].all()  # its wide chip-edge pixels are not masked


def test_bad_pixels_found_in_the_scan_but_not_the_beam_or_spots():
    rng = np.random.default_rng(4)
    m, k = 32, 96
    yy, xx = np.indices((k, k))
    sample = np.empty((m, k, k), np.float32)
    for i in range(m):
        cy, cx = 48 + rng.uniform(-10, 10, 2)
        lam = 4000.0 * (np.hypot(yy - cy, xx - cx) < 4) + 0.5
        sy, sx = rng.integers(5, 90, 2)
        lam[sy, sx] += 500  # a one-frame Bragg spot
        sample[i] = np.minimum(rng.poisson(lam), 4095)
    sample[:, 10, 70] += 50  # a hot pixel in every frame
    sample[:, 80, 20] = 0  # not dead: its neighbours barely count either
    bad = detect_bad_pixels(sample)
    assert bad[10, 70]
    assert bad.sum() == 1


@pytest.mark.parametrize("with_dark", [False, True])
def test_bad_pixels_of_raw_frames_with_their_flatfield(tmp_path, with_dark):
    """Raw frames with the flat-field that corrects them (corrected pixel by pixel on the way, as
    the plan does) give the bad pixels of the corrected copy, on a simulated detector's flood
    (dead and wide pixels, gain spread) and a scan sample with a saturated beam and a hot pixel."""
    path = tmp_path / "flat.npy"
    sim = pytest.importorskip("napari_sedclassify.simulate")
    sim.simulate_flatfield(path, detector_px=128, n_frames=4, seed=5)
    rng = np.random.default_rng(6)
    dark = rng.uniform(0, 2, (128, 128)).astype(np.float32) if with_dark else None
    ff = load_flatfield(path, dark=dark).with_saturation(4095)
    yy, xx = np.indices((128, 128))
    raw = np.empty((24, 128, 128), np.uint16)
    for i in range(len(raw)):
        cy, cx = 60 + rng.uniform(-8, 8, 2)
        lam = 9000.0 * (np.hypot(yy - cy, xx - cx) < 5) + 2.0 / ff.gain.clip(0.2) + 2
        raw[i] = np.minimum(rng.poisson(np.nan_to_num(lam, nan=2.0)), 4095)
    raw[:, 30, 90] += 400  # hot in every frame
    from_raw = detect_bad_pixels(raw, flatfield=ff)
    np.testing.assert_array_equal(from_raw, detect_bad_pixels(ff.apply(raw)))
    assert from_raw[30, 90] and not from_raw[ff.mask].any()
    with pytest.raises(ValueError, match="do not match the flat-field"):
        detect_bad_pixels(raw[:, :64], flatfield=ff)


def test_bad_pixels_at_the_seams_of_the_parallel_bands():
    """The bad-pixel search splits the detector into bands of rows, one per core; each pixel's 5x5
    median still sees the rows of the next band. A pixel on the last row of the first band (row 31
    of 64) that only looks hot when the 2 rows below it are replaced by copies of its own row is not
    flagged, and the whole map equals a scipy reference (upper median over the frames, 5x5 median
    with the edges extended)."""
    from scipy import ndimage

    rng = np.random.default_rng(8)
    m, k = 48, 64
    sample = rng.poisson(2.0, (m, k, k)).astype(np.float32)
    sample[:, 31, 12] = 60.0  # the candidate, on the seam
    sample[:, 32:34, 10:15] = 100.0  # bright rows just across the seam
    sample[:, 29:31, 11:13] = 100.0
    sample[:, 40, 50] = 80.0  # an ordinary hot pixel
    bad = detect_bad_pixels(sample)
    med = np.sort(sample, axis=0)[m // 2]
    local = ndimage.median_filter(med, size=5, mode="nearest")
    hot = (med > 5.0 * np.maximum(local, 1e-3)) & (med - local > 6.0 * np.sqrt(np.maximum(local, 1.0)))
    np.testing.assert_array_equal(bad, hot)
    assert bad[40, 50] and not bad[31, 12]


@pytest.mark.parametrize("shape", [(512, 512), (7, 9), (64, 3)])
def test_neighbourhood_filters_equal_scipy(shape):
    """The bad-pixel search's 5x5 median (a compiled kernel) and mean (numpy; no scipy import at run
    time) equal scipy.ndimage's median_filter (mode nearest) and uniform_filter, edges included."""
    from scipy import ndimage

    from napari_sedclassify.processing import flatfield
    from napari_sedclassify.processing._kernels import median_5x5
    from napari_sedclassify.processing.selection import selection_network

    rng = np.random.default_rng(sum(shape))
    a = rng.poisson(5.0, shape).astype(np.float32)
    a[min(3, shape[0] - 1), 1] = 1000.0
    med = np.empty_like(a)
    median_5x5(a, selection_network(25, 12), med)
    np.testing.assert_array_equal(med, ndimage.median_filter(a, size=5, mode="nearest"))
    b = rng.random(shape)
    np.testing.assert_allclose(flatfield._mean_5x5(b), ndimage.uniform_filter(b, size=5), rtol=0, atol=1e-9)


@pytest.mark.parametrize("m", [1, 2, 7, 48, 64, 65, 100])
def test_pixel_statistics_equal_numpy(m):
    """The bad-pixel search's per-pixel statistics over the sample, computed one detector row at a
    time, equal numpy's: the upper median (np.partition; a selection network, all of a row's
    pixels at once), the mean, "above 0 in some frame" and "NaN in every frame", NaN read as 0,
    on Poisson frames with masked pixels and ties, part of them gain-corrected (not integers)."""
    from napari_sedclassify.processing._kernels import pixel_statistics
    from napari_sedclassify.processing.selection import selection_network

    rng = np.random.default_rng(m)
    sample = rng.poisson(0.7, (m, 33, 41)).astype(np.float32)
    sample[:, :, 20:] *= rng.uniform(0.8, 1.2, (33, 21)).astype(np.float32)
    sample[:, 5, 7] = np.nan
    sample[: max(1, m // 2), 9, 9] = np.nan
    sample[:, 11, :] = 0.0
    ky, kx = sample.shape[1:]
    med, mean = np.empty((ky, kx), np.float32), np.empty((ky, kx), np.float32)
    counted, all_nan = np.empty((ky, kx), bool), np.empty((ky, kx), bool)
    one, zero = np.ones((ky, kx), np.float32), np.zeros((ky, kx), np.float32)
    pixel_statistics(sample, one, zero, False, np.inf, selection_network(m, m // 2), 0, ky, med, mean, counted, all_nan)
    filled = np.nan_to_num(sample, nan=0.0)
    np.testing.assert_array_equal(med, np.partition(filled, m // 2, axis=0)[m // 2])
    np.testing.assert_allclose(mean, filled.mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(counted, (filled > 0).any(axis=0))
    np.testing.assert_array_equal(all_nan, np.isnan(sample).all(axis=0))
    assert all_nan[5, 7] and all_nan[9, 9] == (m == 1) and not counted[11].any()


def test_a_diffraction_scan_given_as_the_flood_is_refused(tmp_path):
    """The frames of a diffraction scan given as the flat-field (a user's slip: the file beside the
    scan) made a gain map with the beam in it and classified 0 amorphous ice, in silence; now a
    clear error names the file and the bright spot. The simulator's Medipix quad flood (wide
    pixels along the cross, hot pixels) is still accepted."""
    from napari_sedclassify.simulate import simulate_scan

    sim = simulate_scan(tmp_path / "quad.npy", scan_shape=(6, 6), detector_px=256, session="A", seed=2)
    flood = load_flatfield(sim.flatfield_path)
    assert flood.shape == (256, 256)
    with pytest.raises(ValueError, match=r"quad\.npy: not a flood: the mean of its 36 frame\(s\) rises to \d+ times"):
        load_flatfield(sim.scan.source)
