"""The beam's peak in the centring (``_kernels._kth_largest``: the k-th largest value of a window,
searched only in the rows whose maximum reaches the k largest row maxima) equals the k-th largest
of every value the window holds, NaN left out, on the windows the centring meets: a saturated disc,
a Gaussian beam without saturation, hot pixels, ties, masked (NaN) pixels and whole masked rows,
windows with fewer rows or values than k, windows cut by the frame's edge; and the descan's design
(the powers of the scan coordinates by products) agrees with numpy's powers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sedclassify.processing._kernels import _kth_largest, _row_max
from napari_sedclassify.processing.descan import _design


def _reference(window: np.ndarray, k: int) -> float:
    values = np.sort(window[~np.isnan(window)].ravel())
    return float(values[-k]) if values.size >= k else -np.inf


def _frames():
    rng = np.random.default_rng(31)
    yy, xx = np.indices((64, 64))
    r = np.hypot(yy - 30.3, xx - 33.8)
    disc = np.where(r < 5, 4095.0, 3.0 + 40.0 * np.exp(-r / 8)).astype(np.float32)
    yield "saturated disc", rng.poisson(disc).clip(0, 4095).astype(np.float32)
    yield "gaussian beam", rng.poisson(2.0 + 900.0 * np.exp(-(r / 4.0) ** 2)).astype(np.float32)
    hot = rng.poisson(5.0, (64, 64)).astype(np.float32)
    hot[rng.integers(0, 64, 6), rng.integers(0, 64, 6)] = 60000.0
    yield "hot pixels", hot
    yield "ties", rng.integers(0, 3, (64, 64)).astype(np.float32)
    masked = (rng.poisson(disc) * rng.uniform(0.8, 1.2, (64, 64))).astype(np.float32)
    masked[rng.random((64, 64)) < 0.1] = np.nan
    masked[29, :] = np.nan  # a whole row under the mask, through the beam
    yield "masked", masked
    yield "all masked", np.full((64, 64), np.nan, np.float32)
    yield "descending", np.arange(64 * 64, 0, -1, dtype=np.float32).reshape(64, 64)


@pytest.mark.parametrize("name,frame", list(_frames()), ids=lambda v: v if isinstance(v, str) else "")
def test_the_kth_largest_of_a_window_is_that_of_all_its_values(name, frame):
    windows = [(15, 46, 18, 49), (0, 9, 0, 64), (60, 64, 55, 64), (28, 31, 30, 33), (0, 64, 0, 64), (10, 13, 5, 50)]
    for k in (1, 2, 9, 40):
        for y0, y1, x0, x1 in windows:
            top = np.empty(k, np.float32)
            rowmax = np.empty(y1 - y0 + 2 * (x1 - x0), np.float32)
            got = _kth_largest(frame, y0, y1, x0, x1, top, rowmax)
            want = _reference(frame[y0:y1, x0:x1], k)
            assert got == want, (name, k, (y0, y1, x0, x1))
            kept = np.sort(frame[y0:y1, x0:x1][~np.isnan(frame[y0:y1, x0:x1])])[::-1][:k]
            assert np.array_equal(np.sort(top[np.isfinite(top)])[::-1], kept[np.isfinite(kept)]), (name, k)


@pytest.mark.parametrize("name,frame", list(_frames()), ids=lambda v: v if isinstance(v, str) else "")
def test_a_rows_maximum_leaves_nan_out(name, frame):
    for y in (0, 29, 31, 63):
        for x0, x1 in ((0, 64), (3, 10), (5, 6), (7, 7)):
            row = frame[y, x0:x1]
            finite = row[~np.isnan(row)]
            assert _row_max(frame[y], x0, x1) == (finite.max() if finite.size else -np.inf)
            assert -_row_max(frame[y], x0, x1, -1.0) == (finite.min() if finite.size else np.inf)


@pytest.mark.parametrize("shape,degree", [((100, 100), 3), ((40, 17), 3), ((8, 8), 5), ((2, 50), 1)])
def test_the_descan_design_is_numpys_powers(shape, degree):
    a, terms = _design(shape, degree)
    sy, sx = shape
    iy, ix = np.mgrid[:sy, :sx].astype(float)
    u = 2.0 * iy / max(sy - 1, 1) - 1.0
    v = 2.0 * ix / max(sx - 1, 1) - 1.0
    want = np.stack([np.power(u, p) * np.power(v, q) for p, q in terms], axis=-1)
    np.testing.assert_allclose(a, want, rtol=4e-16 * degree, atol=4e-16 * degree)
    for j, (p, q) in enumerate(terms):
        if p <= 2 and q <= 2:  # squares, the coordinates and ones: the same bits as before
            assert np.array_equal(a[..., j], want[..., j]), (p, q)


@pytest.mark.parametrize("name,frame", list(_frames()), ids=lambda v: v if isinstance(v, str) else "")
def test_the_edge_crossings_skip_only_rows_and_columns_that_hold_none(name, frame):
    """``_circle`` passes over the rows and columns of its window whose values lie wholly on one
    side of the edge's level: the points found are those of a search of every row and column."""
    from napari_sedclassify.processing._kernels import _crossings

    axis = np.arange(64, dtype=np.float64)
    ones = np.ones(64)
    wide = ones.copy()
    wide[31:33] = 2.0  # chip-edge pixels take no part
    y0, y1, x0, x1 = 14, 47, 17, 50
    found = 0
    for level in (20.0, 400.0, 2047.5, 1.0):
        for weights in (ones, wide):
            for view, i0, i1, j0, j1, c, swap in ((frame, y0, y1, x0, x1, 33.8, 0), (frame.T, x0, x1, y0, y1, 30.3, 1)):
                lo = np.array([-_row_max(view[i], j0, j1, -1.0) for i in range(i0, i1)], np.float32)
                hi = np.array([_row_max(view[i], j0, j1) for i in range(i0, i1)], np.float32)
                every = np.full(i1 - i0, -np.inf, np.float32), np.full(i1 - i0, np.inf, np.float32)
                pts_a, pts_b = np.zeros((400, 2)), np.zeros((400, 2))
                n_a = _crossings(view, i0, i1, j0, j1, level, axis, axis, weights, weights, c, pts_a, 0, swap, lo, hi)
                n_b = _crossings(view, i0, i1, j0, j1, level, axis, axis, weights, weights, c, pts_b, 0, swap, *every)
                assert n_a == n_b and np.array_equal(pts_a[:n_a], pts_b[:n_b]), (name, level)
                found += n_a
    assert found > 0 or name in ("all masked", "descending"), name  # a beam's edge is crossed
