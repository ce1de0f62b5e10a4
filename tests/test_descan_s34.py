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
