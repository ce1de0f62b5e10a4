"""The descan fit's least squares (session 33): the same coefficients as ``lstsq`` on the whole
design, the minimum-norm one where the design lacks full rank (one scan row), and no BLAS thread
left spinning on the other core after the fit in the viewer's or the API's process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from napari_sedclassify.processing.descan import fit_descan


def _descan_centres(shape, rng, outliers=0):
    """Beam centres (sy, sx, 2) drifting with the scan as a real descan does (a tilt and a gentle
    curvature, a few px over the scan), with 0.05 px of centring noise and ``outliers`` frames
    whose centre is far off (a Bragg spot taken for the beam)."""
    sy, sx = shape
    iy, ix = np.mgrid[:sy, :sx].astype(float)
    cy = 255.3 + 0.021 * iy - 0.008 * ix + 3e-5 * iy * ix
    cx = 250.8 + 0.013 * iy + 0.017 * ix - 2e-5 * ix**2
    c = np.stack([cy, cx], axis=-1) + rng.normal(0, 0.05, (sy, sx, 2))
    if outliers:
        k = rng.choice(sy * sx, outliers, replace=False)
        c.reshape(-1, 2)[k] += rng.normal(0, 40, (outliers, 2))
    return c


def _reference(model, centres):
    """lstsq on the model's own design (its terms, on coordinates scaled to [-1, 1]) over its
    inliers: the fit the model should hold."""
    sy, sx = model.inliers.shape
    iy, ix = np.mgrid[:sy, :sx].astype(float)
    u = 2.0 * iy / max(sy - 1, 1) - 1.0
    v = 2.0 * ix / max(sx - 1, 1) - 1.0
    a = np.stack([u**p * v**q for p, q in model.terms], axis=-1)[model.inliers]
    return np.linalg.lstsq(a, centres[model.inliers], rcond=None)[0]


def test_the_fit_matches_lstsq_on_the_design_with_and_without_outliers():
    rng = np.random.default_rng(33)
    for shape, outliers in (((40, 40), 0), ((100, 100), 25), ((7, 64), 3)):
        centres = _descan_centres(shape, rng, outliers)
        fit = fit_descan(centres)
        for model in (fit.plane, fit.smooth):
            np.testing.assert_allclose(model.coef, _reference(model, centres), rtol=0, atol=1e-9)
            assert model.n_rejected >= (outliers if model is fit.smooth else 0)
        # the model follows the drift: residual RMS at the centring noise (0.05 px per axis)
        assert fit.smooth.rms_px < 0.1


def test_a_single_scan_row_gets_the_minimum_norm_fit():
    """A 1 x 64 line scan: the row coordinate is constant, so the design's constant and row
    columns are the same (up to sign); lstsq gives the minimum-norm coefficients and so must the fit."""
    rng = np.random.default_rng(5)
    centres = _descan_centres((1, 64), rng)
    fit = fit_descan(centres)
    ref = _reference(fit.plane, centres)
    np.testing.assert_allclose(fit.plane.coef, ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fit.fitted(), fit.plane.evaluate(), rtol=0, atol=1e-12)
    assert np.abs(fit.fitted() - centres).max() < 0.3


def test_no_blas_thread_spins_after_the_fit():
    """In a fresh process with OpenBLAS's defaults (as numpy is in the napari viewer): the CPU time
    the process's other threads (OpenBLAS's pool) use in the 0.3 s after fitting the descan of a
    100 x 100 and a 256 x 256 scan (and its fitted centres): ``lstsq`` on the whole design woke the
    pool, and so does the product of a 65,536-row design with the coefficients; its threads then
    spun about 0.1 s."""
    code = (
        "import os, threading, time\n"
        "import numpy as np\n"
        "from napari_sedclassify.processing.descan import fit_descan\n"
        "def others():\n"
        "    me, tot = threading.get_native_id(), 0\n"
        "    for t in os.listdir('/proc/self/task'):\n"
        "        if int(t) != me:\n"
        "            f = open(f'/proc/self/task/{t}/stat').read().rsplit(')', 1)[1].split()\n"
        "            tot += int(f[11]) + int(f[12])\n"
        "    return tot / os.sysconf('SC_CLK_TCK')\n"
        "rng = np.random.default_rng(1)\n"
        "time.sleep(0.5)  # OpenBLAS's start-up over\n"
        "worst = 0.0\n"
        "for side in (100, 256, 100):\n"
        "    iy, ix = np.mgrid[:side, :side].astype(float)\n"
        "    c = np.stack([250 + 0.02 * iy, 251 + 0.015 * ix], -1) + rng.normal(0, 0.05, (side, side, 2))\n"
        "    fit = fit_descan(c); fit.fitted()\n"
        "    t0 = others(); time.sleep(0.3); worst = max(worst, others() - t0)\n"
        "print(worst)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS_", "OMP_", "MKL_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    spun_s = float(out.stdout.strip().splitlines()[-1])
    assert spun_s < 0.03, f"other threads used {spun_s:.2f} s of CPU in the 0.3 s after the fit"
