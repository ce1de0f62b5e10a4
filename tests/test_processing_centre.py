"""Direct-beam centres (saturation, hot pixels, Bragg spots, no beam) and the descan fit."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sedclassify.processing import CentreFinder, FlatField, FrameRunner, find_centre, fit_descan


def beam_frame(rng, centre, shape=(256, 256), radius=5.0, electrons=4e5, bg=0.5, saturation=4095):
    """Poisson frame of a flat disc (soft edge, sampled 4x4 per pixel) with a halo, saturated."""
    sub = 4
    yy, xx = np.indices((shape[0] * sub, shape[1] * sub))
    r = np.hypot((yy + 0.5) / sub - 0.5 - centre[0], (xx + 0.5) / sub - 0.5 - centre[1])
    disc = (r < radius).reshape(shape[0], sub, shape[1], sub).mean(axis=(1, 3))
    disc *= electrons / disc.sum()
    yy, xx = np.indices(shape)
    rr = np.hypot(yy - centre[0], xx - centre[1])
    lam = disc + 300 * (1 + (rr / 6) ** 2) ** -1.5 + bg
    return np.minimum(rng.poisson(lam), saturation).astype(np.uint16)


def centres_of(frames, flatfield=None, **kw):
    part = FrameRunner([], flatfield, CentreFinder(**kw)).run_chunk(np.asarray(frames))
    return part.values["centre"], part.values["beam_found"], part.values["beam_radius_px"]


def test_saturated_beam_subpixel():
    rng = np.random.default_rng(0)
    true = rng.uniform(60, 190, (12, 2))
    frames = np.array([beam_frame(rng, c) for c in true])
    assert (frames == 4095).sum(axis=(1, 2)).min() > 40  # flat-topped: saturated cores
    c, found, radius = centres_of(frames)
    assert found.all()
    err = np.hypot(*(c - true).T)
    assert np.sqrt(np.mean(err**2)) < 0.1
    np.testing.assert_allclose(radius, 5.0, atol=0.8)


def test_hot_pixels_and_bragg_spots_do_not_pull_the_centre():
    rng = np.random.default_rng(1)
    true = np.array([[120.3, 131.7], [140.8, 99.2], [101.1, 150.6]])
    frames = np.array([beam_frame(rng, c) for c in true]).astype(np.float32)
    for f, (cy, cx) in zip(frames, true):
        iy, ix = int(cy), int(cx)
        f[iy + 6, ix - 4] = 60000  # unmasked hot pixels right beside the beam
        f[iy - 5, ix + 7] = 30000
        f[iy + 2, ix + 9] = 65535
        yy, xx = np.indices(f.shape)
        for dy, dx in ((0, 40), (35, -20), (-38, -18)):  # strong Bragg spots of a crystal
            f += 1500 * np.exp(-((yy - cy - dy) ** 2 + (xx - cx - dx) ** 2) / 2.0)
        f[5:9, 200:204] = 4095  # a cluster of full counters far away
    c, found, _ = centres_of(frames)
    assert found.all()
    assert np.hypot(*(c - true).T).max() < 0.15


def test_masked_pixels_inside_the_beam_are_ignored():
    rng = np.random.default_rng(2)
    true = (128.4, 127.6)
    frame = beam_frame(rng, true)
    mask = np.zeros(frame.shape, bool)
    mask[126:130, 124:127] = True  # dead pixels under the beam
    frame[mask] = 0
    ff = FlatField(np.ones(frame.shape, np.float32), mask)
    c = find_centre(frame, ff)
    assert np.hypot(c[0] - true[0], c[1] - true[1]) < 0.15


def test_frames_without_beam_are_flagged_not_centred():
    rng = np.random.default_rng(3)
    shape = (256, 256)
    frames = np.stack([
        np.zeros(shape),  # all zeros
        rng.poisson(0.3, shape),  # blanked: stray background only
        np.full(shape, np.nan),  # no data
        rng.poisson(2.0, shape) + 4095 * (rng.random(shape) < 2e-5),  # blanked, with a hot pixel
        beam_frame(rng, (100.5, 150.5)),
    ]).astype(np.float32)
    c, found, radius = centres_of(frames)
    np.testing.assert_array_equal(found, [False, False, False, False, True])
    assert np.isnan(c[:4]).all() and np.isnan(radius[:4]).all()
    assert np.hypot(c[4, 0] - 100.5, c[4, 1] - 150.5) < 0.1


def test_inf_pixels_and_an_edge_beam():
    rng = np.random.default_rng(4)
    f = beam_frame(rng, (3.5, 200.0)).astype(np.float32)  # beam half off the detector
    f[100, 100] = np.inf
    f[101, 100] = -np.inf
    c = find_centre(f)
    assert c is not None and np.isfinite(c).all()
    assert abs(c[1] - 200.0) < 0.3 and abs(c[0] - 3.5) < 1.5


def test_descan_fit_plane_outliers_and_residuals():
    rng = np.random.default_rng(5)
    sy, sx = 30, 40
    iy, ix = np.mgrid[:sy, :sx]
    slope = np.array([[0.47, -0.17], [0.17, 0.47]])
    truth = np.stack([250 + slope[0, 0] * iy + slope[0, 1] * ix + 0.002 * (ix - 20) ** 2,
                      240 + slope[1, 0] * iy + slope[1, 1] * ix], axis=-1)
    meas = truth + rng.normal(0, 0.15, truth.shape)
    bad = rng.random((sy, sx)) < 0.03
    meas[bad] += rng.choice([-1, 1], (bad.sum(), 2)) * rng.uniform(5, 30, (bad.sum(), 2))  # mis-centred
    meas[0, :5] = np.nan  # frames without beam
    fit = fit_descan(meas)
    assert fit.smooth.n_rejected >= bad.sum()
    assert not fit.smooth.inliers[bad].any()
    assert fit.smooth.rms_px == pytest.approx(0.15 * np.sqrt(2), rel=0.25)
    np.testing.assert_allclose(fit.plane.slope_px_per_step(), slope, atol=0.01)
    fitted = fit.fitted()
    assert np.isfinite(fitted).all()  # frames without beam get a centre too
    assert np.sqrt(np.mean(np.sum((fitted - truth) ** 2, -1))) < 0.06
    assert fit.plane.rms_px > fit.smooth.rms_px  # the curvature is only in the smooth model
    with pytest.raises(ValueError, match="at least 3"):
        fit_descan(np.full((4, 4, 2), np.nan))


@pytest.fixture(scope="module")
def simulated():
    sim = pytest.importorskip("napari_sedclassify.simulate")
    return sim.simulate_scan(scan_shape=(20, 20), detector_px=512, seed=11)


def test_simulated_scan_centres_and_descan(simulated):
    """The simulator's Medipix quad: saturated beam, hot/dead pixels, wide chip-edge pixels under the
    beam, crystals, jitter; centres within 0.3 px RMS of the truth, the fit recovers the descan."""
    from napari_sedclassify.pipeline.preprocess import preprocess

    sim = simulated
    res = preprocess(sim.scan, None, FlatField.from_flood(sim.flatfield))
    assert res.beam_found.all()
    err = np.hypot(*(res.centres - sim.centres).reshape(-1, 2).T)
    assert np.sqrt(np.mean(err**2)) < 0.3
    assert np.median(err) < 0.2
    truth_slope = np.array(sim.metadata["descan"]["px_per_scan_step"])
    np.testing.assert_allclose(res.descan.plane.slope_px_per_step(), truth_slope, atol=0.03)
    jitter = sim.metadata["descan"]["jitter_px"]
    fit_err = np.hypot(*(res.centres_fitted - sim.centres).reshape(-1, 2).T)
    assert np.sqrt(np.mean(fit_err**2)) < 2.0 * jitter * np.sqrt(2)


def test_every_frame_centre_is_the_same_whatever_chunk_it_travels_in():
    """The default centre finder starts each frame from that frame's coarse maximum: a simulated
    scan (drifting beam, rings, carbon and crystalline frames, dead pixels) gives bit-identical
    centres, radii and RIAs processed whole, frame by frame, in chunks of 3, 7 and 16 frames, and
    through the threaded reader of the file; a warm start (each frame from its predecessor) is
    the documented exception."""
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.simulate import simulate_scan

    sim = simulate_scan(None, scan_shape=(12, 12), detector_px=128, seed=11)
    base = preprocess(sim.scan)
    assert base.beam_found.sum() >= 140
    for chunk in (1, 3, 7, 16):
        got = preprocess(sim.scan, {"chunk_frames": chunk})
        np.testing.assert_array_equal(got.centres, base.centres)
        np.testing.assert_array_equal(got.beam_radius_px, base.beam_radius_px)
        np.testing.assert_array_equal(got.ria, base.ria)
    finder = CentreFinder(None)
    assert finder.warm_start is False


def test_wide_pixel_symmetry_search_takes_the_minimum_of_its_whole_grid(simulated):
    """Beam on a quad's wide pixels: the symmetry search returns the best of all its candidate
    centres (+-1.4 px in 0.2 px, then +-0.2 px in 0.04 px about the best), as a plain numpy search
    over the same grid says, on the simulator's frames; a search that stops at a local minimum
    (tried: 49 % of frames differed, by up to 1 px) fails here."""
    from napari_sedclassify.processing import _kernels
    from napari_sedclassify.processing.pixels import PixelGrid

    sim = simulated
    frames = np.asarray(sim.scan.frame_source[:, :]).reshape((-1, 512, 512))
    ff = FlatField.from_flood(sim.flatfield)
    grid = PixelGrid((512, 512), float(sim.metadata["edge_pixel_width"]))
    py, px, wy, wx, ey, ex = (grid.centres(0), grid.centres(1), grid.widths(0), grid.widths(1),
                              grid.edges(0), grid.edges(1))
    centres, found, radii = centres_of(frames[:40], ff, grid=grid)
    corrected = ff.apply(frames[:40]).astype(np.float32)
    checked = 0
    for i in np.flatnonzero(found):
        half = max(int(1.6 * radii[i]) + 3, 5)
        cy0 = float(np.interp(centres[i, 0], np.arange(513) - 0.5, ey)) + 0.31
        cx0 = float(np.interp(centres[i, 1], np.arange(513) - 0.5, ex)) - 0.17
        iy, ix = (int(round(np.interp(c, e, np.arange(513) - 0.5))) for c, e in ((cy0, ey), (cx0, ex)))
        rows = slice(max(0, iy - half), min(512, iy + half + 1))
        cols = slice(max(0, ix - half), min(512, ix + half + 1))
        if (wy[rows] == 1).all() and (wx[cols] == 1).all():
            continue  # no wide pixel in the window: the circle fit's case
        f = corrected[i]
        yy, xx = np.meshgrid(py[rows], px[cols], indexing="ij")
        ok = (wy[rows][:, None] == 1) & (wx[cols][None, :] == 1) & np.isfinite(f[rows, cols])
        yv, xv, vv = yy[ok], xx[ok], f[rows, cols][ok].astype(np.float64)
        nb = int(2 * half * 1.5 / 0.5) + 2

        def spread(cy, cx):
            b = np.minimum((np.sqrt((yv - cy) ** 2 + (xv - cx) ** 2) * 2.0).astype(int), nb - 1)
            s, c = np.bincount(b, vv, nb), np.bincount(b, minlength=nb)
            return -np.sum(s[c > 0] ** 2 / c[c > 0])

        by, bx = cy0, cx0
        for step, reach in ((0.2, 7), (0.04, 5)):
            gy, gx = by, bx
            grid_yx = [(gy + a * step, gx + b * step) for a in range(-reach, reach + 1) for b in range(-reach, reach + 1)]
            by, bx = grid_yx[int(np.argmin([spread(*c) for c in grid_yx]))]
        res = np.empty(5)
        edges = (np.arange(f.shape[0] + 1) - 0.5, np.arange(f.shape[1] + 1) - 0.5)
        assert _kernels._symmetric(f, cy0, cx0, half, py, px, wy, wx, ey, ex, *edges, res)
        np.testing.assert_allclose(res[:2], (by, bx), atol=1e-9)
        checked += 1
    assert checked >= 10


def test_scalar_interp_is_numbas_np_interp_to_the_bit():
    """The centring's scalar interpolation (between index and physical px) returns what numba's
    np.interp returns, to the bit: inside, on and beyond the edges, NaN, on uniform and on wide-pixel
    (Medipix quad) grids, both ways."""
    from numba import njit

    from napari_sedclassify.processing import _kernels
    from napari_sedclassify.processing.pixels import PixelGrid

    @njit
    def both(xs, xp, fp):  # numba's np.interp and the kernels' one, point by point
        want, got = np.empty(xs.size), np.empty(xs.size)
        for i in range(xs.size):
            want[i] = np.interp(xs[i], xp, fp)
            got[i] = _kernels._interp(xs[i], xp, fp)
        return want, got

    rng = np.random.default_rng(3)
    for grid in (PixelGrid((192, 192), 1.0), PixelGrid((512, 512), 3.0)):
        index_edges = np.arange(grid.shape[0] + 1) - 0.5
        phys_edges = grid.edges(0)
        for xp, fp in ((phys_edges, index_edges), (index_edges, phys_edges)):
            wide = np.flatnonzero(np.diff(xp) != 1.0)  # the chip-edge pixels: slopes other than 1
            in_wide = [rng.uniform(xp[j], xp[j + 1], 2000) for j in wide]
            xs = np.concatenate([rng.uniform(xp[0] - 3, xp[-1] + 3, 20000), *in_wide, xp, np.nextafter(xp, np.inf),
                                 np.nextafter(xp, -np.inf), [np.nan, -np.inf, np.inf]])
            want, got = both(xs, xp, fp)
            assert np.array_equal(want, got, equal_nan=True)
            assert want.view(np.int64)[np.isfinite(want)].tolist() == got.view(np.int64)[np.isfinite(got)].tolist()


def test_median_without_numpy_ma_is_numpys_median_to_the_bit():
    """processing.stats.median (the plan's beam radius, the descan fit's clipping, the flat-field's
    robust sigma) returns np.median's value and dtype, odd and even sizes, ties, NaN, integers."""
    from napari_sedclassify.processing.stats import median

    rng = np.random.default_rng(11)
    cases = [np.array([2.5]), np.array([3, 1], np.uint16), np.array([np.nan, 1.0, 2.0]),
             np.array([1.0, 2.0, np.nan, 4.0], np.float32), np.full(6, 7.25, np.float32)]
    for n in (1, 2, 3, 48, 49, 1600, 1601):
        for dtype in (np.float32, np.float64, np.int64, np.uint16):
            x = rng.normal(100, 30, n) if dtype in (np.float32, np.float64) else rng.integers(0, 4095, n)
            cases.append(x.astype(dtype))
            cases.append(np.round(x / 10).astype(dtype))  # many ties
    for x in cases:
        want, got = np.median(x), median(x)
        assert np.asarray(got).dtype == np.asarray(want).dtype, x.dtype
        assert np.array_equal(want, got, equal_nan=True) and (np.isnan(want) or want == got), (x, want, got)
        assert np.asarray(want).tobytes() == np.asarray(got).tobytes()
    # along an axis (the RIA features' per-frame medians): rows of odd and even length, a NaN row
    for shape in ((7, 136), (5, 135), (3, 1), (4, 2, 6)):
        for dtype in (np.float32, np.float64, np.int32):
            x = rng.normal(50, 20, shape).astype(dtype)
            if dtype != np.int32:
                x[1, ..., 0] = np.nan
            for axis in range(x.ndim):
                want, got = np.median(x, axis=axis), median(x, axis=axis)
                assert got.dtype == want.dtype and got.shape == want.shape
                assert np.asarray(want).tobytes() == np.asarray(got).tobytes(), (shape, dtype, axis)


def test_a_convergent_beam_wider_than_the_first_search_window():
    """A disc 60 px across (a convergent beam): the first 33 px window lies inside it (its border
    as bright as its peak), so the window is doubled until it holds the edge; found to 0.3 px."""
    rng = np.random.default_rng(3)
    true = rng.uniform(80, 176, (6, 2))
    frames = np.array([beam_frame(rng, c, radius=30.0, electrons=4e5 * 36) for c in true])
    c, found, radius = centres_of(frames)
    assert found.all()
    assert np.hypot(*(c - true).T).max() < 0.3
    np.testing.assert_allclose(radius, 30.0, atol=1.0)


def six_bit_frame(rng, centre, radius=12.0, shape=(128, 128)):
    """A 6-bit counter (full at 63): a saturated disc in a halo of 30-50 counts, falling off."""
    yy, xx = np.indices(shape)
    r = np.hypot(yy - centre[0], xx - centre[1])
    lam = np.where(r < radius, 5000.0, 45.0 * np.exp(-np.maximum(r - radius, 0) / 25.0) + 1.0)
    return np.minimum(rng.poisson(lam), 63).astype(np.uint8)


def test_a_saturated_6_bit_beam_in_a_bright_halo():
    """At 63 counts full, a saturated disc in a halo of 30-50 counts: once the finder knows the
    counter is full, the disc's edge is taken near the full counter, not half-way, which takes in
    the halo (a disc 1.6x too wide, its centre up to 1 px off when the counter is unknown); a disc
    cut by the detector's edge is centred on the circle through its edge."""
    rng = np.random.default_rng(5)
    true = rng.uniform(40, 88, (8, 2))
    frames = np.array([six_bit_frame(rng, t) for t in true])
    c, found, radius = centres_of(frames)
    assert found.all() and radius.min() > 17  # the counter unknown: the halo taken in
    c, found, radius = centres_of(frames, saturation_counts=63)
    assert found.all()
    assert np.hypot(*(c - true).T).max() < 0.2
    np.testing.assert_allclose(radius, 12.0, atol=0.5)
    # a disc 10 px across in the same halo (its ring of halo pixels above half height is 2.4 px wide)
    true = rng.uniform(40, 88, (8, 2))
    frames = np.array([six_bit_frame(rng, t, radius=5.0) for t in true])
    c, found, radius = centres_of(frames, saturation_counts=63)
    assert found.all()
    assert np.hypot(*(c - true).T).max() < 0.6
    np.testing.assert_allclose(radius, 5.0, atol=0.5)
    # a disc 50 px across cut in half by the detector's edge: the centre of mass of what is left
    # lies 10 px inside; the circle through its clean edge finds the centre
    true = np.column_stack([rng.uniform(100, 150, 4), rng.uniform(0.0, 1.0, 4)])
    frames = np.array([six_bit_frame(rng, t, radius=25.0, shape=(256, 256)) for t in true])
    c, found, radius = centres_of(frames, saturation_counts=63)
    assert found.all()
    assert np.hypot(*(c - true).T).max() < 0.6
    np.testing.assert_allclose(radius, 25.0, atol=0.5)


def test_the_real_6_bit_merlin_beam_at_the_detector_edge(realdata):
    """001_4x2_6bit.mib: a real saturated beam 46 px across, cut by the detector's left edge, in a
    bright halo. Found in all 8 frames by preprocessing (the counter depth from the .hdr), within
    1.5 px of a circle fitted independently (scipy) to the edge of the largest saturated region."""
    from scipy import ndimage

    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.preprocess import preprocess

    scan = open_scan(realdata / "merlin" / "001_4x2_6bit.mib")
    res = preprocess(scan)
    assert res.beam_found.all()
    frames = np.asarray(scan.read(np.arange(8)))
    for k, frame in enumerate(frames):
        sat = ndimage.binary_opening(frame >= 63, np.ones((3, 3)))
        lab, n = ndimage.label(sat)
        disc = ndimage.binary_fill_holes(lab == 1 + np.argmax(ndimage.sum(sat, lab, range(1, n + 1))))
        by, bx = np.nonzero(disc & ~ndimage.binary_erosion(disc))
        keep = bx > 1  # not the detector's edge
        by, bx = by[keep].astype(float), bx[keep].astype(float)
        a, b, c = np.linalg.lstsq(np.column_stack([bx, by, np.ones_like(bx)]), bx**2 + by**2, rcond=None)[0]
        cx, cy = a / 2, b / 2
        r = np.sqrt(c + cx**2 + cy**2)
        got = res.centres.reshape(-1, 2)[k]
        assert np.hypot(got[0] - cy, got[1] - cx) < 1.5, (k, got, (cy, cx))
        assert abs(res.beam_radius_px.ravel()[k] - r) < 0.2 * r
