"""Pearson cross-correlation maps: rows, the full matrix, NaN safety, binned frames as features."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sedclassify import Geometry, Scan
from napari_sedclassify.processing import PCC, frame_features, pcc_matrix, pcc_row


def profiles(sy=8, sx=9, nb=60, seed=0):
    """RIA-like profiles of two materials (a ring at 20 or at 35) with noise."""
    rng = np.random.default_rng(seed)
    r = np.arange(nb)
    a = np.exp(-0.5 * ((r - 20) / 4) ** 2)
    b = np.exp(-0.5 * ((r - 35) / 6) ** 2)
    which = rng.random((sy, sx)) < 0.5
    f = np.where(which[..., None], a, b) + 0.05 * rng.normal(size=(sy, sx, nb)) + np.exp(-r / 15)
    return f.astype(np.float32), which


def test_row_and_matrix_equal_numpy_corrcoef():
    f, which = profiles()
    ref = np.corrcoef(f.reshape(-1, f.shape[-1]).astype(np.float64))
    pcc = PCC(f)
    np.testing.assert_allclose(pcc.row((3, 4)), ref[3 * 9 + 4].reshape(8, 9), atol=1e-5)
    np.testing.assert_allclose(pcc.row(17), ref[17].reshape(8, 9), atol=1e-5)
    m = pcc_matrix(f)
    np.testing.assert_allclose(m, ref, atol=1e-5)
    np.testing.assert_allclose(np.diag(m), 1, atol=1e-5)
    row = pcc_row(f, 0)
    same = which == which.flat[0]
    assert row[same].min() > row[~same].max()  # the map separates the two materials


def test_nan_bins_missing_and_constant_frames():
    f, _ = profiles()
    f[:, :, -5:] = np.nan  # the outermost bins of some frames empty
    f[0, 1, -8] = np.nan
    f[2, 2] = np.nan  # no beam
    f[3, 3] = 1.0  # constant
    missing = np.zeros((8, 9), bool)
    missing[7, 8] = True
    pcc = PCC(f, missing)
    assert pcc.n_features == 60 - 6  # the 5 outer bins and bin -8
    row = pcc.row((1, 1))
    assert np.isnan(row[2, 2]) and np.isnan(row[3, 3]) and np.isnan(row[7, 8])
    assert np.isfinite(np.delete(row.ravel(), [2 * 9 + 2, 3 * 9 + 3, 7 * 9 + 8])).all()
    assert np.isnan(pcc.row((2, 2))).all()
    m = pcc.matrix()
    assert np.isnan(m[2 * 9 + 2]).all() and np.isnan(m[:, 7 * 9 + 8]).all()
    with pytest.raises(ValueError, match="at least 2 features"):
        PCC(np.full((3, 3, 4), np.nan))
    with pytest.raises(IndexError):
        pcc.row(72)


def test_binned_frames_as_features():
    rng = np.random.default_rng(1)
    yy, xx = np.indices((64, 64))
    ring = lambda r0: 50 * np.exp(-0.5 * ((np.hypot(yy - 32, xx - 32) - r0) / 3) ** 2)  # noqa: E731
    kinds = rng.random((5, 6)) < 0.5
    data = np.stack([[rng.poisson(ring(12 if k else 22) + 2) for k in row] for row in kinds]).astype(np.uint16)
    scan = Scan(data, Geometry((64, 64)), missing=np.eye(5, 6, dtype=bool))
    feats = frame_features(scan, bin=4)
    assert feats.shape == (5, 6, 16, 16)
    assert np.isnan(feats[0, 0]).all()
    np.testing.assert_allclose(feats[1, 2], data[1, 2].reshape(16, 4, 16, 4).mean(axis=(1, 3)), rtol=1e-6)
    row = PCC(feats, scan.missing).row((0, 1))
    same = (kinds == kinds[0, 1]) & ~scan.missing
    other = (kinds != kinds[0, 1]) & ~scan.missing
    assert row[same].min() > row[other].max()
