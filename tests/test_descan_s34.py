"""The descan fit made with one design (session 34): the cubic design's first columns are the
plane's, so the plane, the smooth model and the fitted centres all come from one design, with
frames dropped (no beam, outliers) or none; the models match a fit on each model's own design."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sedclassify.processing import descan
from napari_sedclassify.processing.descan import _design, fit_descan

from test_descan_s33 import _descan_centres, _reference


@pytest.mark.parametrize("shape", [(100, 100), (40, 40), (7, 64), (3, 3)])
def test_a_lower_degree_design_is_the_first_columns_of_a_higher_one(shape):
    cubic, terms3 = _design(shape, 3)
    for degree in (1, 2):
        low, terms = _design(shape, degree)
        assert terms == terms3[: len(terms)]
        assert np.array_equal(cubic[..., : len(terms)], low)


@pytest.mark.parametrize("case", ["every frame", "outliers", "no beam in some", "valid given"])
def test_one_design_serves_both_models_and_their_fit_holds(case, monkeypatch):
    rng = np.random.default_rng(34)
    shape = (60, 50)
    c = _descan_centres(shape, rng, outliers=40 if case == "outliers" else 0)
    valid = None
    if case == "no beam in some":
        c[rng.random(shape) < 0.1] = np.nan
    if case == "valid given":
        valid = rng.random(shape) < 0.7
    built = []
    real = descan._design
    monkeypatch.setattr(descan, "_design", lambda *a: built.append(a) or real(*a))
    fit = fit_descan(c, valid)
    assert len(built) == 1  # the plane, the cubic and the fitted centres from one design
    assert fit.smooth.degree == 3 and fit.plane.degree == 1
    for model in (fit.plane, fit.smooth):
        assert np.allclose(model.coef, _reference(model, c), rtol=0, atol=1e-9)
    if case == "outliers":
        assert fit.smooth.n_rejected >= 40
    ok = np.isfinite(c).all(axis=-1)
    fitted = fit.smooth.evaluate()
    assert np.allclose(fitted, real(shape, 3)[0] @ fit.smooth.coef, rtol=0, atol=1e-12)
    assert np.array_equal(np.isnan(fit.residuals).any(axis=-1), ~ok)


# -- the plan's saturation level, counted a frame at a time (session 34) --------------------------
def _saturation_by_definition(sample):
    """The sample's maximum when, on average, at least 4 pixels a frame sit at it (and it is 15 or
    more), counted on the whole sample at once."""
    top = sample.max()
    return float(top) if top >= 15 and np.count_nonzero(sample == top) >= 4 * len(sample) else None


def test_the_saturation_level_is_counted_as_defined_on_real_and_simulated_frames(realdata):
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.processing.plan import saturation_of
    from napari_sedclassify.simulate import simulate_scan

    merlin = open_scan(realdata / "merlin" / "001_4x2_6bit.mib")
    samples = {"merlin 6-bit": merlin.read(np.arange(merlin.n_frames))}
    sim = simulate_scan(scan_shape=(4, 4), detector_px=128, seed=3)
    frames = sim.scan.read(np.arange(16))
    samples["simulated"] = frames
    rng = np.random.default_rng(34)
    for n_top in (0, 1, 3, 4, 5):  # at, below and above the threshold of 4 a frame on average
        s = rng.integers(0, 1000, (6, 40, 40)).astype(np.uint16)
        s.reshape(-1)[rng.choice(s.size, 6 * n_top, replace=False)] = 4095
        samples[f"{n_top} a frame at the top"] = s
    samples["4 a frame, all in one frame"] = s.copy()
    s = samples["4 a frame, all in one frame"]
    s[s == 4095] = 0
    s[0].reshape(-1)[:24] = 4095
    samples["too low to be a counter"] = np.full((3, 8, 8), 14, np.uint8)
    samples["not contiguous"] = frames[:, ::2, :]
    seen = set()
    for name, sample in samples.items():
        got = saturation_of({}, sample, None)
        assert got == _saturation_by_definition(sample), name
        seen.add(got is None)
    assert seen == {True, False}  # both outcomes met
    assert saturation_of({}, samples["merlin 6-bit"], None) == 63.0  # its saturated beam
