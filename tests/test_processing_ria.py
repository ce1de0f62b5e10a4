"""Radial intensity averages: exact against brute force (float32 distances, as documented), within a
hair of float64 distances, and against pyFAI's integrate1d."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_sedclassify import Geometry
from napari_sedclassify.processing import FlatField, FrameRunner, PreprocessParams, RadialProfile, radial_profile
from napari_sedclassify.processing.pixels import PixelGrid


def diffraction_frame(rng, shape=(256, 256), centre=(131.37, 120.81), ring_r=(40.0, 85.0)):
    """Poisson counts of a saturated beam, two diffuse rings and a falling background."""
    yy, xx = np.indices(shape)
    r = np.hypot(yy - centre[0], xx - centre[1])
    lam = (5000.0 * (r < 4) + 80 * np.exp(-r / 30) + 40 * np.exp(-0.5 * ((r - ring_r[0]) / 6) ** 2)
           + 25 * np.exp(-0.5 * ((r - ring_r[1]) / 9) ** 2) + 2)
    return np.minimum(rng.poisson(lam), 4095).astype(np.uint16)


def bins_float32(shape, centre, bin_px=1.0, r_min=0.0):
    """Each pixel's bin coordinate t as documented (processing/ria.py): dy^2 and dx^2 in float64,
    rounded to float32, added, square root, less r_min, times 1 / bin_px, all in float32."""
    dy2 = ((np.arange(shape[0]) - centre[0]) ** 2).astype(np.float32)
    dx2 = ((np.arange(shape[1]) - centre[1]) ** 2).astype(np.float32)
    return (np.sqrt(dy2[:, None] + dx2[None, :]) - np.float32(r_min)) * np.float32(1.0 / bin_px)


def brute_force(frame, centre, bin_px=1.0, r_min=0.0, nbins=None, mask=None):
    """Mean and count per bin by plain numpy over every pixel (bins as documented)."""
    f = frame.astype(np.float64)
    k = np.floor(bins_float32(f.shape, centre, bin_px, r_min)).astype(int)
    ok = np.isfinite(f) & (k >= 0) & (k < nbins)
    if mask is not None:
        ok &= ~mask
    sums = np.bincount(k[ok], f[ok], nbins)
    counts = np.bincount(k[ok], minlength=nbins)
    with np.errstate(invalid="ignore"):
        return sums / counts, counts


def run_ria(frame, centre, nbins, bin_px=1.0, r_min=0.0, flatfield=None, grid=None):
    prof = RadialProfile(nbins, bin_px, r_min, grid)
    part = FrameRunner([prof], flatfield).run_chunk(np.asarray(frame)[None], centres=np.array([centre]))
    return part.values["ria"][0], part.values["ria_counts"][0]


@pytest.mark.parametrize("centre", [(131.37, 120.81), (128.0, 128.0), (127.5, 64.25), (10.2, 240.9)])
def test_ria_equals_brute_force(centre):
    rng = np.random.default_rng(1)
    frame = diffraction_frame(rng, centre=centre)
    nbins = 182
    ria, counts = run_ria(frame, centre, nbins)
    ref, ref_counts = brute_force(frame, centre, nbins=nbins)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_allclose(ria, ref, rtol=1e-6, equal_nan=True)
    yy, xx = np.indices(frame.shape)
    assert counts.sum() == np.count_nonzero(np.hypot(yy - centre[0], xx - centre[1]) < nbins)


def test_ria_bin_width_range_and_mask_exclude_pixels():
    rng = np.random.default_rng(2)
    frame = diffraction_frame(rng).astype(np.float32)
    mask = np.zeros(frame.shape, bool)
    mask[100:140, 150:170] = True  # a masked block (e.g. a chip gap)
    frame[mask] = 1e9  # would dominate any average it leaked into
    frame[5, 7] = np.nan  # a non-finite pixel in the data
    frame[6, 9] = np.inf
    centre = (131.37, 120.81)
    ff = FlatField(np.ones(frame.shape, np.float32), mask)
    ria, counts = run_ria(frame, centre, nbins=40, bin_px=2.5, r_min=10.0, flatfield=ff)
    ref, ref_counts = brute_force(np.where(np.isinf(frame), np.nan, frame), centre, 2.5, 10.0, 40, mask)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_allclose(ria, ref, rtol=1e-6)
    assert np.nanmax(ria) < 1e6


def test_ria_matches_pyfai_without_pixel_splitting():
    pytest.importorskip("pyFAI")
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    rng = np.random.default_rng(3)
    shape, centre, nb = (256, 256), (131.37, 120.81), 150
    frame = diffraction_frame(rng, shape, centre)
    bad = np.zeros(shape, bool)
    bad[rng.integers(0, 256, 300), rng.integers(0, 256, 300)] = True
    p = 55e-6
    ai = AzimuthalIntegrator(dist=0.1, poni1=(centre[0] + 0.5) * p, poni2=(centre[1] + 0.5) * p,
                             detector=Detector(p, p, max_shape=shape))
    res = ai.integrate1d(frame, nb, unit="r_mm", radial_range=(0, nb * p * 1e3), method=("no", "csr", "cython"),
                         correctSolidAngle=False, mask=bad.astype(np.int8))
    ff = FlatField(np.ones(shape, np.float32), bad)
    ria, counts = run_ria(frame, centre, nb, flatfield=ff)
    np.testing.assert_allclose(res.radial, (np.arange(nb) + 0.5) * p * 1e3, rtol=1e-6)
    full = counts > 50
    assert full.sum() > 100
    rel = np.abs(ria[full] - res.intensity[full]) / np.abs(res.intensity[full])
    assert rel.max() < 0.01
    assert np.corrcoef(ria[full], res.intensity[full])[0, 1] > 0.999
    np.testing.assert_allclose(counts[full], res.count[full], rtol=0.01)


@pytest.mark.parametrize("shape, bin_px, r_min", [((512, 512), 1.0, 0.0), ((1024, 1024), 1.0, 0.0),
                                                  ((256, 256), 0.37, 3.0), ((515, 515), 1.0, 0.0)])
def test_float32_distances_move_only_pixels_on_a_bin_edge(shape, bin_px, r_min):
    """The bins come from float32 distances (1.2-1.3x faster than float64, docs/performance.md
    session 27): against float64 distances from the same centres, the pixels that change bin lie
    within 3e-7 (t + 2 r_min / bin_px + 1) bins of an edge (five float32 roundings; 1e-4 px at r =
    360 px, 2e-5 px seen), about 1e-5 of all pixels, and every RIA stays within the counting noise
    of the float64 one."""
    rng = np.random.default_rng(11)
    frame = diffraction_frame(rng, shape, centre=(shape[0] / 2 + 0.3, shape[1] / 2 - 0.6))
    nbins = int((0.5 * math.hypot(*shape) - r_min) / bin_px) + 1
    moved = total = 0
    for _ in range(6):
        centre = (shape[0] / 2 - 3 + 6 * rng.random(), shape[1] / 2 - 3 + 6 * rng.random())
        ria, counts = run_ria(frame, centre, nbins, bin_px, r_min)
        ref, ref_counts = brute_force(frame, centre, bin_px, r_min, nbins)
        np.testing.assert_array_equal(counts, ref_counts)  # the documented bins, exactly
        np.testing.assert_allclose(ria, ref, rtol=1e-6, equal_nan=True)
        yy, xx = np.indices(shape)
        t64 = (np.sqrt((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) - r_min) / bin_px
        k64 = np.floor(t64)
        k32 = np.floor(bins_float32(shape, centre, bin_px, r_min))
        differ = k64 != k32
        assert (np.abs(t64[differ] - np.round(t64[differ])) <= 3e-7 * (t64[differ] + 2 * r_min / bin_px + 1)).all()
        moved += differ.sum()
        total += differ.size
        in64 = (k64 >= 0) & (k64 < nbins)
        c64 = np.bincount(k64[in64].astype(int), minlength=nbins)
        s64 = np.bincount(k64[in64].astype(int), frame[in64].astype(np.float64), nbins)
        full = (c64 > 20) & (counts > 20)
        noise = np.sqrt(s64[full]) / c64[full]  # the counting noise of each bin's mean
        assert (np.abs(ria[full] - s64[full] / c64[full]) < noise).all()
    assert moved / total < 1e-4


def test_subpixel_centre_moves_bins_exactly():
    """Shifting the centre by 0.3 px changes the RIA the way brute force says (no quantisation)."""
    rng = np.random.default_rng(4)
    frame = diffraction_frame(rng)
    a, ca = run_ria(frame, (131.0, 120.0), 120)
    b, cb = run_ria(frame, (131.3, 120.0), 120)
    ref, ref_c = brute_force(frame, (131.3, 120.0), nbins=120)
    assert not np.array_equal(ca, cb)
    np.testing.assert_array_equal(cb, ref_c)
    np.testing.assert_allclose(b, ref, rtol=1e-6)


def test_radial_profile_default_reaches_the_far_corner():
    frame = np.ones((64, 80), np.uint16)
    radii, mean, counts = radial_profile(frame, (10.0, 12.0))
    far = math.hypot(63 - 10, 79 - 12)
    assert radii[-1] + 0.5 >= far > radii[-1] - 0.5
    assert counts.sum() == frame.size
    np.testing.assert_allclose(mean[counts > 0], 1.0)


def test_wide_edge_pixels_are_measured_in_pitches():
    """A ring drawn at physical radius 60 about a centre beside a quad's wide pixels: with the
    pixel grid, the RIA peaks at 60 px and stays as sharp as on an ordinary detector."""
    n, w = 256, 2.5
    grid = PixelGrid((n, n), w)
    py, px = grid.centres(0), grid.centres(1)
    centre_phys = (140.0, 120.0)
    r = np.hypot(py[:, None] - centre_phys[0], px[None, :] - centre_phys[1])
    frame = (1000 * np.exp(-0.5 * ((r - 60) / 1.5) ** 2)).astype(np.float32)
    centre_idx = tuple(grid.to_index(np.array(centre_phys)))
    with_grid, _ = run_ria(frame, centre_idx, 120, grid=grid)
    without, _ = run_ria(frame, centre_idx, 120)
    assert abs(np.nanargmax(with_grid) + 0.5 - 60) <= 1
    assert np.nanmax(with_grid) > 1.3 * np.nanmax(without)  # index px smear the ring


def test_q_bins_resolve_through_geometry():
    g = Geometry(detector_shape=(512, 512))
    res = PreprocessParams(ria_q_bin_invA=0.002, ria_q_max_invA=0.4, bf_radius_px=5, adf_inner_px=10).resolve(g)
    assert res["ria_bin_px"] == pytest.approx(g.q_invA_to_radius_px(0.002))
    assert res["ria_r_max_px"] == pytest.approx(g.q_invA_to_radius_px(0.4), abs=res["ria_bin_px"])
    with pytest.raises(ValueError, match="not calibrated"):
        PreprocessParams(ria_q_bin_invA=0.002, bf_radius_px=5, adf_inner_px=10).resolve(
            Geometry((512, 512), camera_length_mm=None))


@pytest.mark.parametrize("wide", [1.0, 2.5])
def test_a_shorter_profile_is_the_first_bins_of_the_full_one(wide):
    """A profile that stops short of the frame's corner (rows beyond its reach skipped, each row
    cut to the pixels that can reach it) holds exactly the first bins of the full profile, on an
    ordinary detector and on a quad's wide pixels, the centre near an edge; and it equals brute
    force."""
    rng = np.random.default_rng(5)
    frame = diffraction_frame(rng, centre=(40.3, 200.7)).astype(np.float32)
    frame[30:34, 180:260] = np.nan  # masked pixels inside the reach
    grid = PixelGrid(frame.shape, wide)
    centre = (40.3, 200.7)
    full, full_counts = run_ria(frame, centre, 330, grid=grid)
    for nbins in (1, 17, 90, 150):
        ria, counts = run_ria(frame, centre, nbins, grid=grid)
        np.testing.assert_array_equal(counts, full_counts[:nbins])
        np.testing.assert_array_equal(ria, full[:nbins])
    ria, counts = run_ria(frame, centre, 90)
    ref, ref_counts = brute_force(frame, centre, nbins=90)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_allclose(ria, ref, rtol=1e-6, equal_nan=True)
