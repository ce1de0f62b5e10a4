"""Session-robust CNN inputs (issue 18): convergent-beam blur and dose-noise augmentation of crops,
the direct-beam mask, the scan context of crops against the scan's two ends, older crop recipes,
and a CNN on several input channels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sedclassify.geometry import Geometry
from napari_sedclassify.models.features import (
    Augmentation,
    FeatureRecipe,
    crop_features,
    crop_reference,
    crop_score,
    session_robust_crop_recipe,
)

GEOM = Geometry(detector_shape=(256, 256), pixel_size_um=110.0, camera_length_mm=900.0, voltage_kv=200.0)
S = 48
QPP = (1 / 2.7) / (S / 2)  # q per output px of a 2.7 Å crop of 48 px


def _aug(n, **extra):
    base = {"scale": np.ones(n), "jitter": np.zeros(n), "angle": np.zeros(n), "intensity": np.ones(n)}
    base.update(extra)
    return base


def _rings(n, q_ring, width=0.02, level=1.0, base=0.2):
    """Crops (n, S, S) with a ring at q_ring (Å⁻¹) on a flat background."""
    c = (S - 1) / 2
    y, x = np.mgrid[:S, :S]
    q = np.hypot(y - c, x - c) * QPP
    img = base + np.exp(-0.5 * ((q - q_ring) / width) ** 2)
    return np.repeat((level * img)[None], n, axis=0).astype(np.float32)


def test_crop_blur_is_a_disc_of_the_convergence_radius():
    point = np.zeros((1, S, S), np.float32)
    point[0, S // 2, S // 2] = 1.0  # a sharp direct beam between four output px
    recipe = FeatureRecipe(kind="crop", normalise=False)
    radius_q = 0.05  # 3.2 px
    out = crop_features(point, S / 2, recipe, _aug(1, blur_q=np.array([radius_q])), q_per_px=QPP)[0]
    a = radius_q / QPP
    c = S // 2
    y, x = np.mgrid[:S, :S]
    r = np.hypot(y - c, x - c)
    assert np.isclose(out.sum(), 1.0, atol=1e-4)  # the blur keeps the counts
    assert out[r > a + 1].sum() < 1e-6 and out[r < a - 1].min() > 0  # a disc of radius a
    assert np.isclose(out[c, c], 1 / (np.pi * a ** 2), rtol=0.1)
    sharp = crop_features(point, S / 2, recipe, _aug(1), q_per_px=QPP)[0]
    assert np.isclose(sharp[c, c], 1.0)  # no blur drawn: nothing blurs
    with pytest.raises(ValueError, match="q scale"):
        crop_features(point, S / 2, recipe, _aug(1, blur_q=np.array([radius_q])))


def test_crop_dose_noise_is_poisson_thinning_of_binned_means():
    n, f, x = 3000, 0.25, 4.0
    crops = np.full((n, 8, 8), x, np.float32)
    recipe = FeatureRecipe(kind="crop", normalise=False, crop_size=8)
    # 8 input px over a radius of 8 detector px: each input px is the mean of 2 x 2 detector px
    out = crop_features(crops, 8.0, recipe, _aug(n, dose=np.full(n, f), noise_seed=1))
    assert np.isclose(out.mean(), x, atol=0.02)
    assert np.isclose(out[:, 3, 3].var(), x * (1 / f - 1) / 4, rtol=0.1)
    same = crop_features(crops[:4], 8.0, recipe, _aug(4, dose=np.ones(4), noise_seed=1))
    assert np.allclose(same, x)


def test_thicker_ice_augmentation_scales_the_scattering_and_weakens_the_rings():
    c = (S - 1) / 2
    y, x = np.mgrid[:S, :S]
    q = np.hypot(y - c, x - c) * QPP
    crops = _rings(3, 0.27, base=0.1)
    crops[:, q < 0.03] = 500.0  # the direct beam
    recipe = FeatureRecipe(kind="crop", normalise=False)
    aug = _aug(3, thickness=np.array([1.0, 1.5, 1.0]), plural=np.array([0.0, 0.0, 0.6]))
    out = crop_features(crops, S / 2, recipe, aug, q_per_px=QPP)
    ring, between, outside = (q > 0.25) & (q < 0.29), (q > 0.12) & (q < 0.16), (q > 0.06) & (q < 0.36)
    beam = q < 0.03
    np.testing.assert_allclose(out[0], crops[0], rtol=1e-6)  # factor 1, nothing moved: unchanged
    np.testing.assert_allclose(out[1][outside], 1.5 * crops[1][outside], rtol=1e-5)  # 1.5x thicker: 1.5x scattering
    np.testing.assert_allclose(out[:, beam], crops[:, beam])  # the beam is never touched
    contrast = [o[ring].mean() / o[between].mean() for o in out]
    assert contrast[2] < 0.6 * contrast[0]  # plural scattering: weaker rings on a broader background
    scattered = q >= 0.06  # the rest (5 %) is blurred under the beam, which the recipe masks anyway
    assert np.isclose(out[2][scattered].sum(), crops[2][scattered].sum(), rtol=0.08)  # ... and keeps the counts
    # the draws: absent when off (older recipes draw the same numbers), within range when on
    assert "thickness" not in Augmentation().draw(3, np.random.default_rng(0))
    d = Augmentation(thickness_range=(0.7, 1.6), plural_fraction=0.5).draw(2000, np.random.default_rng(0))
    assert 0.7 <= d["thickness"].min() and d["thickness"].max() <= 1.6 and 0 <= d["plural"].min()
    assert d["plural"].max() <= 0.5
    np.testing.assert_allclose(Augmentation().draw(5, np.random.default_rng(3))["intensity"],
                               Augmentation(thickness_range=(0.7, 1.6)).draw(5, np.random.default_rng(3))["intensity"])
    with pytest.raises(ValueError, match="q scale"):
        crop_features(crops, S / 2, recipe, aug)
    with pytest.raises(ValueError, match="crop recipes"):
        FeatureRecipe(kind="ria", augmentation=Augmentation(thickness_range=(0.7, 1.6)))
    with pytest.raises(ValueError, match="plural_fraction"):
        FeatureRecipe(kind="crop", augmentation=Augmentation(plural_fraction=1.5))


def test_crop_context_against_the_scan_ends_cancels_dose_and_ranks_carbon():
    carbon = _rings(30, 0.19)  # a ring where the shoulder band lies
    ice = _rings(30, 0.27)  # vitreous ice's 3.7 Å ring
    half = 0.5 * (carbon[:10] + ice[:10])
    scan = np.concatenate([carbon, ice, half])
    score = crop_score(scan, QPP)
    assert score[:30].min() > score[60:].max() > score[30:60].max()
    recipe = FeatureRecipe(kind="crop", normalise=True, crop_context="ends", context_end_fraction=0.2,
                           crop_mask_q_invA=0.06)
    ref = crop_reference(scan, recipe, QPP)
    assert ref.shape == (2, S, S)
    np.testing.assert_allclose(ref[0], carbon[0], rtol=1e-5)
    np.testing.assert_allclose(ref[1], ice[0], rtol=1e-5)
    x = crop_features(scan, S / 2, recipe, q_per_px=QPP, reference=ref)
    assert x.shape == (70, S, S, 3)
    assert np.abs(x[:30, ..., 1]).max() < 1e-5 and np.abs(x[30:60, ..., 2]).max() < 1e-5  # at their own end
    assert np.abs(x[60:, ..., 1]).max() > 0.3 and np.abs(x[60:, ..., 2]).max() > 0.3  # between the ends
    # a dose (or gain) factor on the whole scan cancels in every channel
    y = crop_features(3 * scan, S / 2, recipe, q_per_px=QPP, reference=crop_reference(3 * scan, recipe, QPP))
    np.testing.assert_allclose(y, x, atol=1e-4)
    # the intensity augmentation moves neither the context nor the normalised crop
    z = crop_features(scan, S / 2, recipe, _aug(70, intensity=np.full(70, 2.0)), q_per_px=QPP, reference=ref)
    np.testing.assert_allclose(z, x, atol=1e-4)
    # the direct beam is masked in every channel
    c = (S - 1) / 2
    yy, xx = np.mgrid[:S, :S]
    inner = np.hypot(yy - c, xx - c) * QPP < 0.06
    assert inner.sum() > 4 and np.all(x[:, inner] == 0) and np.any(x[:, ~inner] != 0)
    with pytest.raises(ValueError, match="reference"):
        crop_features(scan, S / 2, recipe, q_per_px=QPP)


def test_scan_features_build_the_crop_context_and_keep_the_whole_scan_rule():
    from napari_sedclassify.models.inference import MIN_CONTEXT_FRAMES
    from napari_sedclassify.models.training import ScanFeatures

    crops = np.concatenate([_rings(50, 0.19), _rings(50, 0.27)]).reshape(10, 10, S, S)
    feats = ScanFeatures("s", GEOM, np.zeros((10, 10), bool), crops=crops,
                         crop_radius_px=float(GEOM.d_A_to_radius_px(2.7)))
    recipe = session_robust_crop_recipe()
    assert np.isclose(feats.crop_q_per_px(recipe), QPP, rtol=1e-3)
    x = feats.inputs(recipe)
    assert x.shape == (100, S, S, 4) and np.isfinite(x).all()  # crop, two ends, the neighbour's channel
    assert feats.inputs(recipe, np.arange(50, 60)).shape == (10, S, S, 4)
    assert feats.inputs(recipe.replace(scan_neighbours=False)).shape == (100, S, S, 3)
    aug = recipe.augmentation.draw(100, np.random.default_rng(0))
    assert {"blur_q", "dose"} <= set(aug)
    assert np.isfinite(feats.inputs(recipe, None, aug)).all()
    few = ScanFeatures("live", GEOM, np.zeros((1, MIN_CONTEXT_FRAMES - 1), bool),
                       crops=crops.reshape(100, S, S)[None, :MIN_CONTEXT_FRAMES - 1],
                       crop_radius_px=feats.crop_radius_px)
    with pytest.raises(ValueError, match="whole scan"):
        few.inputs(recipe)
    assert few.inputs(FeatureRecipe(kind="crop")).shape == (MIN_CONTEXT_FRAMES - 1, S, S)


def test_older_crop_recipes_keep_their_meaning():
    old = FeatureRecipe(kind="crop").to_dict()
    for key in ("crop_mask_q_invA", "crop_context"):
        old.pop(key)
    r = FeatureRecipe.from_dict(old)
    assert r == FeatureRecipe(kind="crop") and r.crop_context == "none" and r.crop_mask_q_invA == 0
    crops = _rings(5, 0.27)
    x = crop_features(crops, S / 2, r)
    assert x.shape == (5, S, S)
    np.testing.assert_allclose(x, np.log1p(crops / np.median(crops.reshape(5, -1), axis=1)[:, None, None]),
                               rtol=1e-6)
    new = session_robust_crop_recipe()
    assert FeatureRecipe.from_dict(new.to_dict()) == new
    with pytest.raises(ValueError, match="crop recipes"):
        FeatureRecipe(crop_context="ends")
    with pytest.raises(ValueError, match="crop_context"):
        FeatureRecipe(kind="crop", crop_context="median")
    assert set(Augmentation().draw(3, np.random.default_rng(0))) == {"scale", "jitter", "angle", "intensity"}


def _multichannel_cnn(progress=None, cancel=None):
    """In a child process: a CNN on 3-channel inputs learns a class that only the third channel
    shows, and standardises every channel on its own."""
    from napari_sedclassify.models.cnn import CNNClassifier

    rng = np.random.default_rng(0)
    n = 256
    y = rng.integers(1, 3, n)
    X = rng.normal(size=(n, 8, 8, 3)).astype(np.float32)
    X[..., 0] *= 5.0
    X[..., 2] += 1.5 * (y == 2)[:, None, None]
    est = CNNClassifier(filters=(4, 4, 4), dense_units=8, max_epochs=3, patience=3, samples_per_epoch=None,
                        batch_size=32, learning_rate=1e-2).fit(X, y)
    norm = est.model_.layers[0]
    # the per-channel standardisation survives a safe-mode save and load
    import tempfile
    from pathlib import Path

    from napari_sedclassify.models.cnn import import_keras

    with tempfile.TemporaryDirectory() as d:
        est.model_.save(Path(d) / "m.keras")
        again = import_keras().saving.load_model(Path(d) / "m.keras", safe_mode=True, compile=False)
        same = bool(np.allclose(again.predict(X[:8], verbose=0), est.predict_proba(X[:8]), atol=1e-6))
    return float(np.mean(est.predict(X) == y)), np.asarray(norm.mean).ravel().tolist(), \
        np.asarray(norm.variance).ravel().tolist(), est.predict_proba(X[:3]).shape, same


def test_cnn_takes_scan_context_channels():
    from napari_sedclassify.models.tf_process import run_in_process
    from napari_sedclassify.optional import cnn_problem

    if cnn_problem():  # asked without importing TensorFlow: it never loads in the test process
        pytest.skip(cnn_problem())
    acc, mean, var, shape, same = run_in_process(_multichannel_cnn)
    assert acc > 0.9, acc
    assert len(mean) == 3 and var[0] > 10 * var[1]  # per channel
    assert shape == (3, 2) and same


def test_svm_chooses_c_and_gamma_across_groups_of_scans():
    """search="groups": every grid setting is scored leaving one group (session) out; the one whose
    worst group scores best is kept, and train() hands every frame's group (one per scan) over."""
    from napari_sedclassify.models.svm import SVMClassifier
    from napari_sedclassify.models.training import ScanFeatures, train

    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(1, 3, n)
    groups = np.repeat(["a", "b", "c"], n // 3)
    shift = {"a": 0.0, "b": 0.5, "c": -0.5}
    X = rng.normal(size=(n, 4)) + 1.5 * (y == 2)[:, None] + np.array([shift[g] for g in groups])[:, None]
    est = SVMClassifier(search="groups", search_C=(0.1, 10.0), search_gamma=(1.0,), class_weight=None).fit(
        X, y, groups=groups)
    grid = est.search_results_["grid"]
    assert len(grid) == 2 and all(0 < r["worst"] <= r["mean"] <= 1 for r in grid)
    best = max(grid, key=lambda r: (round(r["worst"], 3), r["mean"]))
    assert est.best_params_ == {"C": best["C"], "gamma": best["gamma"]}
    assert np.mean(est.predict(X) == y) > 0.8
    with pytest.raises(ValueError, match="groups"):
        SVMClassifier(search="groups").fit(X, y)
    both = SVMClassifier(search="groups", search_C=(1.0,), search_gamma=(1.0,),
                         search_class_weight=("sqrt", None)).fit(X, y, groups=groups)
    rows = both.search_results_["grid"]
    assert [r["class_weight"] for r in rows] == ["sqrt", None]
    assert both.search_results_["best_params"]["class_weight"] == max(
        rows, key=lambda r: (round(r["worst"], 3), r["mean"]))["class_weight"]

    radii = np.arange(181) + 0.5
    scans, maps = [], []
    for k in range(3):
        labels = rng.integers(1, 3, (8, 8))
        ring = np.exp(-0.5 * ((radii - np.where(labels == 1, 40.0, 60.0)[..., None]) / 4) ** 2) + 0.05
        scans.append(ScanFeatures(f"s{k}", GEOM, np.zeros((8, 8), bool), ring * rng.uniform(0.9, 1.1, ring.shape),
                                  radii))
        maps.append(labels)
    recipe = FeatureRecipe(augmentation=Augmentation(copies=1))
    params = {"search": "groups", "search_C": (1.0,), "search_gamma": (1.0,)}
    model = train(scans, maps, kind="svm", recipe=recipe, params=params, groups=["x", "y", "z"])
    assert model.training["search_results"]["best_params"]["C"] == 1.0
    with pytest.raises(ValueError, match="one group per scan"):
        train(scans, maps, kind="svm", recipe=recipe, params=params, groups=["x"])


def _crop_inputs_on(path, recipe, fitted, cut_on=None):
    """Crops of a simulated scan preprocessed on the camera length its file states (or on
    ``cut_on``'s), then made into inputs on ``fitted`` (a geometry whose camera length was fitted
    afterwards)."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.models.training import ScanFeatures
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.pipeline.train import preprocess_params_for
    from napari_sedclassify.processing import load_flatfield
    from napari_sedclassify.simulate import load_simulated

    scan = open_scan(path, geometry=None if cut_on is None else {"camera_length_mm": cut_on.camera_length_mm})
    result = preprocess(scan, preprocess_params_for([recipe], scan.geometry),
                        flatfield=load_flatfield(load_simulated(path).flatfield_path))
    return ScanFeatures.from_preprocess(result, fitted, "scan").inputs(recipe.replace(normalise=False))


@pytest.mark.parametrize("camera", [1.10, 0.92])
def test_a_camera_length_fitted_after_preprocessing_is_resampled_from_recorded_pixels(tmp_path, camera):
    """A session whose true camera length is 10 % longer (or 8 % shorter) than its files state: the
    crops were cut on the stated one, the model resamples them on the fitted one. The
    session-robust recipe cuts wide enough that the crops equal those cut on the true camera
    length; a cut of exactly 2.7 Å on the stated camera length fills the rim of the longer one
    with copies of its edge. (96 px crops, so that neither cut is binned and the two cuts resample
    the same recorded pixels.)"""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.simulate import load_simulated, session_grid, simulate_scan

    (session,) = session_grid("A", camera=(camera,))
    path = tmp_path / "scan.npy"
    simulate_scan(path, scan_shape=(2, 2), detector_px=128, session=session, seed=5)
    true = Geometry.from_dict(load_simulated(path).metadata["true_geometry"])
    assert np.isclose(true.camera_length_mm / open_scan(path).geometry.camera_length_mm, camera, rtol=1e-3)

    size = 96
    robust = session_robust_crop_recipe(crop_context="none", crop_mask_q_invA=0.0, augmentation=Augmentation(),
                                        crop_size=size)
    on_true = _crop_inputs_on(path, robust, true, cut_on=true)
    np.testing.assert_allclose(_crop_inputs_on(path, robust, true), on_true, rtol=1e-5, atol=1e-5)

    exact = _crop_inputs_on(path, robust.replace(crop_cut_margin=1.0), true)
    c = (size - 1) / 2
    y, x = np.mgrid[:size, :size]
    rim = np.hypot(y - c, x - c) > 0.9 * size / 2
    copies = (exact[:, 1:] == exact[:, :-1])[:, rim[1:]].mean()  # rim pixels equal to their neighbour
    if camera > 1:
        assert copies > 0.1 and not np.allclose(exact, on_true, rtol=1e-3), copies
    else:  # a shorter camera length: the exact cut already reaches beyond the crop
        assert copies < 0.01
        np.testing.assert_allclose(exact, on_true, rtol=1e-5, atol=1e-5)
