"""The scan-ends context (issue 18): a frame's band levels relative to its own scan's most
carbon-like and most ice-like frames. Checked on RIAs made from the simulator's carbon and
vitreous-ice profiles (single plus plural scattering), in sessions that differ in ice thickness,
dose and how much of the scan is carbon."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sedclassify.geometry import Geometry
from napari_sedclassify.models.features import FeatureRecipe, carbon_ice_score, ria_features, scan_reference

GEOM = Geometry(detector_shape=(256, 256), pixel_size_um=110.0, camera_length_mm=900.0, voltage_kv=200.0)
RADII = np.arange(128) + 0.5
ENDS = FeatureRecipe(scan_context=6, context_reference="ends")
MEDIAN = FeatureRecipe(scan_context=6)


def _profiles():
    from napari_sedclassify.simulate.diffraction import plural_profiles, profile_density
    from napari_sedclassify.simulate.params import SimParams

    p = SimParams()
    q = np.asarray(GEOM.radius_px_to_q_invA(RADII))
    c = profile_density(q, p.carbon_peaks, p.carbon_background)
    i = profile_density(q, p.ice_peaks, p.ice_background)
    plural = {k: np.interp(q, *plural_profiles(p, k), right=0.0) for k in ("cc", "ci", "ii")}
    return c, i, plural


def _frame(t_carbon, t_ice, dose, prof):
    """Expected RIA of a frame (the simulator's model: N τ e^-τ electrons scattered once keep the
    rings, the rest go into the two-scattering profiles)."""
    c, i, plural = prof
    tc, ti = t_carbon / 240.0, t_ice / 600.0
    tau = tc + ti
    once = dose * np.exp(-tau)
    more = dose * (-np.expm1(-tau) - tau * np.exp(-tau))
    ac, ai = tc / tau, ti / tau
    return (once * (tc * c + ti * i) + more * (ac * ac * plural["cc"] + 2 * ac * ai * plural["ci"]
                                              + ai * ai * plural["ii"]) + dose * 1e-4)


def _scan(ice_scale, dose, carbon_share, prof, n=200, seed=0):
    """Frames of one scan: carbon (20 nm, ice over it 15 nm x scale), hole ice (60-140 nm x scale),
    and the last two: a carbon frame and a mixed hole-edge frame (half carbon)."""
    rng = np.random.default_rng(seed)
    n_c = int(carbon_share * n)
    rows = [_frame(20 * rng.uniform(0.9, 1.1), 15 * ice_scale * rng.uniform(0.8, 1.2), dose, prof) for _ in range(n_c)]
    rows += [_frame(0.0, ice_scale * rng.uniform(60, 140), dose, prof) for _ in range(n - n_c)]
    rows.append(_frame(20.0, 15.0 * ice_scale, dose, prof))  # a carbon point
    rows.append(_frame(10.0, ice_scale * (7.5 + 0.5 * 120.0), dose, prof))  # half carbon, half hole ice
    return np.array(rows)


def _context_of(ria, recipe):
    ref = scan_reference(ria, RADII, recipe, GEOM)
    return ria_features(ria, RADII, recipe, GEOM, reference=ref)[:, recipe.n_bins:]


def test_ends_context_barely_moves_with_ice_thickness_dose_and_coverage():
    prof = _profiles()
    sessions = [(1.0, 1.0, 0.5), (2.2, 1.0, 0.5), (1.0, 3.0, 0.3), (2.2, 0.3, 0.7), (0.6, 1.0, 0.6)]
    ends = [_context_of(_scan(*s, prof), ENDS) for s in sessions]
    median = [_context_of(_scan(*s, prof), MEDIAN) for s in sessions]
    carbon_ends = np.array([e[-2] for e in ends])
    carbon_median = np.array([m[-2] for m in median])
    mixed_ends = np.array([e[-1] for e in ends])
    # the carbon point sits at its scan's carbon end whatever the ice, dose and coverage ...
    assert np.abs(carbon_ends[:, :6]).max() < 0.15
    # ... while against the scan's median it moves with them (coverage flips the median)
    assert np.ptp(carbon_median, axis=0).max() > 0.5
    # (the first six columns: against the carbon end; the other six place it against the ice end,
    # which moves with the thickness of the hole ice)
    assert np.ptp(carbon_ends[:, :6], axis=0).max() < 0.25 * np.ptp(carbon_median, axis=0).max()
    # the mixed point (half the carbon, more ice) stays well away from the carbon end in every
    # session, much further than the carbon point moves between sessions: the classes stay apart
    gap = np.linalg.norm(mixed_ends[:, :6] - carbon_ends[:, :6], axis=1)
    assert gap.min() > 0.4
    assert gap.min() > 3 * np.linalg.norm(carbon_ends[:, :6] - carbon_ends[:, :6].mean(axis=0), axis=1).max()


def test_ends_context_cancels_dose_exactly_and_is_stable_under_noise():
    prof = _profiles()
    ria = _scan(1.6, 1.0, 0.5, prof)
    a = _context_of(ria, ENDS)
    b = _context_of(ria * 7.0, ENDS)
    assert np.allclose(a, b, atol=1e-5)
    # counting noise of a low dose: the context of the carbon point moves little
    rng = np.random.default_rng(1)
    counts = 2e4 * ria / ria.mean()
    noisy = rng.poisson(counts * 2 * np.pi * RADII[None]) / (2 * np.pi * RADII[None])
    c = _context_of(noisy, ENDS)
    assert np.abs(c[-2] - _context_of(counts, ENDS)[-2]).max() < 0.1


def test_ends_reference_picks_carbon_and_ice_frames():
    prof = _profiles()
    ria = _scan(2.2, 1.0, 0.3, prof)
    raw = ria_features(ria, RADII, FeatureRecipe(normalise=False), GEOM)
    score = carbon_ice_score(raw.astype(np.float64), ENDS, GEOM)
    n_c = int(0.3 * 200)
    assert score[:n_c].min() > score[n_c:200].max()  # every carbon frame ranks above every ice frame
    ref = scan_reference(ria, RADII, ENDS, GEOM)
    assert ref.shape == (2, ENDS.n_bins)
    assert np.allclose(ref[0], np.median(raw[:n_c], axis=0), rtol=0.2)  # carbon end = carbon frames
    feats = ria_features(ria, RADII, ENDS, GEOM, reference=ref)
    assert feats.shape == (len(ria), ENDS.n_bins + 12)
    with pytest.raises(ValueError, match="context_reference"):
        FeatureRecipe(scan_context=6, context_reference="mean")
    with pytest.raises(ValueError, match="context_end_fraction"):
        FeatureRecipe(scan_context=6, context_reference="ends", context_end_fraction=0.7)
    # older model files (no context_reference) keep the median reference
    d = MEDIAN.to_dict()
    d.pop("context_reference")
    d.pop("context_end_fraction")
    assert FeatureRecipe.from_dict(d).context_reference == "median"


def test_session_robust_recipe_uses_the_scan_ends():
    from napari_sedclassify.models.features import session_robust_recipe

    r = session_robust_recipe()
    assert r.context_reference == "ends" and r.scan_context == 6
