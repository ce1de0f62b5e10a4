"""Session 25: faster centring and radial sums, to the bit (docs/performance.md "Session 25: kernels").

Each kernel that changed is held against a slow reference written out here from the arithmetic of
the code before the change (numpy's and Python's float operations are the same IEEE operations, in
the same order): the coarse block sums of the centre search, the circle fit of the beam's edge and
its medians, the radial sums (each pixel's (value, 1.0) pair added to its bin) over whole and cut
rows. Frames come from the simulator (a realistic
scan with its saturated beam), with masked (NaN) pixels added.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_sedclassify.processing import _kernels as K
from napari_sedclassify.simulate import simulate_scan


@pytest.fixture(scope="module")
def frames():
    """Corrected-like float32 frames of a small simulated scan (64 px detector), NaN pixels added."""
    scan = simulate_scan(None, scan_shape=(3, 3), detector_px=64, seed=4)
    f = np.asarray(scan.scan.frames(), np.float32) * np.float32(1.037)
    rng = np.random.default_rng(0)
    f[rng.random(f.shape) < 0.01] = np.nan
    return np.ascontiguousarray(f)


def bin_sums_reference(frame, b, row_step, floor):
    """The coarse search's block sums as before: each column summed down the block's rows in float32
    from float64 (v - floor), then the block's columns added in order in float32."""
    ky, kx = frame.shape
    nby, nbx = -(-ky // b), -(-kx // b)
    out = np.zeros((nby, nbx), np.float32)
    for yb in range(nby):
        acc = np.zeros(kx, np.float32)
        for y in range(yb * b, min(ky, (yb + 1) * b), row_step):
            v = frame[y].astype(np.float64)
            acc = (acc.astype(np.float64) + np.where(np.isnan(v), 0.0, v - floor)).astype(np.float32)
        for xb in range(nbx):
            for x in range(xb * b, min(kx, (xb + 1) * b)):
                out[yb, xb] = np.float32(out[yb, xb] + acc[x])
    return out


@pytest.mark.parametrize("floor", [0.0, 37.0, -2.5])
@pytest.mark.parametrize("b, row_step", [(2, 1), (6, 2), (5, 2)])
def test_block_sums_match_the_float64_rounded_sums(frames, floor, b, row_step):
    """Without a pedestal the sums run in float32 (twice the vector width): each float64 sum rounded
    to float32 is the float32 sum, so nothing changes; with one, the float64 path as before."""
    for frame in frames[:4]:
        out = np.empty((-(-64 // b), -(-64 // b)), np.float32)
        K.bin_sums(frame, b, row_step, floor, out)
        np.testing.assert_array_equal(out, bin_sums_reference(frame, b, row_step, floor))


def kasa_reference(points):
    """The circle fit as before: 3x3 normal equations in arrays, Cramer's rule on copies."""
    m = [[0.0] * 3 for _ in range(3)]
    v = [0.0] * 3
    for y, x in points:
        a = (y, x, 1.0)
        z = -(x * x + y * y)
        for r in range(3):
            v[r] += a[r] * z
            for c in range(3):
                m[r][c] += a[r] * a[c]

    def det(t):
        return (t[0][0] * (t[1][1] * t[2][2] - t[1][2] * t[2][1]) - t[0][1] * (t[1][0] * t[2][2] - t[1][2] * t[2][0])
                + t[0][2] * (t[1][0] * t[2][1] - t[1][1] * t[2][0]))

    d = det(m)
    sol = []
    for k in range(3):
        t = [[v[r] if c == k else m[r][c] for c in range(3)] for r in range(3)]
        sol.append(det(t) / d)
    cy, cx = -0.5 * sol[0], -0.5 * sol[1]
    return cy, cx, math.sqrt(cy * cy + cx * cx - sol[2])


def test_the_edge_circle_fit_is_the_same_to_the_bit():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(6, 120))
        phi = rng.uniform(0, 2 * np.pi, n)
        r = rng.uniform(2, 60)
        pts = np.stack([rng.uniform(0, 512) + r * np.sin(phi), rng.uniform(0, 512) + r * np.cos(phi)], axis=1)
        pts += rng.normal(0, 0.3, pts.shape)
        use = rng.random(n) < 0.9
        use[:6] = True
        res = np.zeros(4)
        assert K._kasa(pts, use, n, res)
        assert tuple(res[:3]) == kasa_reference(pts[use].tolist())


def test_the_medians_of_the_edge_fit_are_numpys():
    rng = np.random.default_rng(2)
    for n in (1, 2, 3, 8, 9, 40, 41):
        d = np.abs(rng.normal(0, 1, n))
        d[: n // 3] = d[-1]  # ties
        use = rng.random(n) < 0.7
        use[0] = True
        assert K._median_of(d, use, np.empty(n)) == np.median(d[use])


def radial_reference(frame, cy, cx, r_min, bin_px, nbins):
    """Sum and count per radial bin, each bin's pixels added in raster order separately for even and
    odd columns, the two then added (the kernel's accumulation), float32 distances as documented."""
    ky, kx = frame.shape
    yy, xx = np.meshgrid(np.arange(ky, dtype=np.float64), np.arange(kx, dtype=np.float64), indexing="ij")
    d2 = ((yy - cy) * (yy - cy)).astype(np.float32) + ((xx - cx) * (xx - cx)).astype(np.float32)
    t = (np.sqrt(d2) - np.float32(r_min)) * np.float32(1.0 / bin_px)
    ok = ~np.isnan(frame) & (t >= 0) & (t < nbins)
    sums = np.zeros((2, nbins))
    counts = np.zeros((2, nbins))
    for parity in (0, 1):
        sel = ok & (xx.astype(int) % 2 == parity)
        k = t[sel].astype(np.int64)  # raster order
        np.add.at(sums[parity], k, frame[sel].astype(np.float64))
        np.add.at(counts[parity], k, 1.0)
    return sums[0] + sums[1], counts[0] + counts[1]


@pytest.mark.parametrize("r_min, bin_px, nbins", [(0.0, 1.0, 46), (3.0, 0.5, 30), (0.0, 2.0, 10)])
def test_radial_sums_over_whole_and_cut_rows_are_the_same_to_the_bit(frames, r_min, bin_px, nbins):
    """Rows wholly inside the last bin's edge skip the search for their ends (46 bins of 1 px reach
    every corner of a 64 px frame); the others are cut to the span that reaches it, as before."""
    n = 4
    centres = np.array([[31.7, 30.2], [2.3, 60.9], [33.01, 31.49], [np.nan, 3.0]])
    axis = np.arange(64, dtype=np.float64)
    sums = np.empty((n, nbins))
    counts = np.empty((n, nbins), np.int64)
    K.radial_sums(frames[:n], centres, axis, axis, r_min, bin_px, sums, counts)
    for i in range(n - 1):
        s, c = radial_reference(frames[i], *centres[i], r_min, bin_px, nbins)
        np.testing.assert_array_equal(sums[i], s)
        np.testing.assert_array_equal(counts[i], c)
    assert not sums[-1].any() and not counts[-1].any()
