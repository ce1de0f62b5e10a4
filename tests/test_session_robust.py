"""Session-robust features and confidence (issue 18): convergent-beam blur and dose-noise
augmentation, background removal, old recipes, temperature-scaled FCNN probabilities, the
uncertain mark, the reliability summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sedclassify.geometry import Geometry
from napari_sedclassify.models.features import Augmentation, FeatureRecipe, ria_features

GEOM = Geometry(detector_shape=(256, 256), pixel_size_um=110.0, camera_length_mm=900.0, voltage_kv=200.0)
RADII = np.arange(181) + 0.5


def _aug(n, **extra):
    base = {"scale": np.ones(n), "jitter": np.zeros(n), "angle": np.zeros(n), "intensity": np.ones(n)}
    base.update(extra)
    return base


def _ring_profile(radii_px, centre_px=55.0, sigma_px=4.0):
    return np.exp(-0.5 * ((radii_px - centre_px) / sigma_px) ** 2) + 0.05


def test_blur_augmentation_matches_a_2d_disc_blur():
    """A ring blurred by the augmentation is the ring convolved in 2D with a uniform disc (the
    simulator's exact quadrature), up to the small curvature the radial shift model leaves out."""
    from napari_sedclassify.simulate.diffraction import disc_average

    step = 0.05
    fine_r = np.arange(0, 200, step)
    radius_q = 0.03
    a_px = float(GEOM.q_invA_to_radius_px(radius_q))
    blurred = disc_average(_ring_profile(fine_r), step, a_px)
    # 1-px bin means of the exact blurred profile
    exact = np.array([blurred[(fine_r >= lo) & (fine_r < lo + 1)].mean() for lo in RADII - 0.5])
    recipe = FeatureRecipe(normalise=False)
    ria = _ring_profile(RADII)[None]
    got = ria_features(ria, RADII, recipe, GEOM, _aug(1, blur_q=np.array([radius_q])))[0]
    want = ria_features(exact[None], RADII, recipe, GEOM)[0]
    sharp = ria_features(ria, RADII, recipe, GEOM)[0]
    assert np.max(np.abs(got - want)) < 0.02 * want.max()
    assert np.max(np.abs(sharp - want)) > 0.1 * want.max()  # the blur is not negligible


def test_dose_noise_augmentation_adds_poisson_thinning_noise():
    n = 4000
    ria = np.full((n, RADII.size), 2.0)
    f = 0.25
    aug = _aug(n, dose=np.full(n, f), noise_seed=3)
    recipe = FeatureRecipe(normalise=False, axis="px", r_min_px=20.0, r_max_px=21.0, n_bins=1)
    x = ria_features(ria, RADII, recipe, GEOM, aug)[:, 0]
    # one 1-px bin at r = 20.5 px: variance x (1/f - 1) / (2 pi r)
    assert np.isclose(x.mean(), 2.0, atol=0.02)
    assert np.isclose(x.var(), 2.0 * (1 / f - 1) / (2 * np.pi * 20.5), rtol=0.1)
    same = ria_features(ria[:5], RADII, recipe, GEOM, _aug(5, dose=np.ones(5), noise_seed=3))
    assert np.allclose(same, 2.0)
    draw = Augmentation(dose_range=(0.3, 1.0)).draw(1000, np.random.default_rng(0))
    assert 0.3 <= draw["dose"].min() and draw["dose"].max() <= 1.0
    assert "dose" not in Augmentation().draw(3, np.random.default_rng(0))  # off by default


def test_background_removal_and_standardisation():
    q_edges = np.linspace(0.06, 0.6, 97)
    qc = 0.5 * (q_edges[1:] + q_edges[:-1])
    smooth = np.exp(1.0 - 2.0 * np.log(qc) + 0.3 * np.log(qc) ** 2)  # a polynomial in log q, in log space
    r = GEOM.q_invA_to_radius_px(qc)
    ria = np.interp(RADII, r, smooth)[None]
    recipe = FeatureRecipe(background="poly", background_degree=2)
    out = ria_features(ria, RADII, recipe, GEOM)[0]
    assert np.max(np.abs(out[5:-5])) < 0.05  # the smooth background is gone
    ring = ria * (1 + 2 * np.exp(-0.5 * ((RADII - GEOM.q_invA_to_radius_px(0.27)) / 4) ** 2))
    with_ring = ria_features(ring, RADII, recipe, GEOM)[0]
    assert with_ring.max() > 0.5  # the ring stays
    std = ria_features(ring * 7.0, RADII, FeatureRecipe(background="poly", standardise=True), GEOM)[0]
    assert abs(std.mean()) < 1e-5 and abs(std.std() - 1) < 1e-4
    with pytest.raises(ValueError, match="background"):
        FeatureRecipe(background="spline")
    with pytest.raises(ValueError, match="normalised RIA"):
        FeatureRecipe(kind="crop", standardise=True)


def test_recipes_of_older_model_files_keep_their_meaning():
    old = FeatureRecipe().to_dict()
    for key in ("background", "background_degree", "standardise"):
        old.pop(key)
    for key in ("blur_q_invA", "dose_range"):
        old["augmentation"].pop(key)
    r = FeatureRecipe.from_dict(old)
    assert r == FeatureRecipe()
    assert r.background == "none" and not r.standardise and r.augmentation.blur_q_invA == 0
    new = FeatureRecipe(background="poly", augmentation=Augmentation(blur_q_invA=0.03, dose_range=(0.2, 1.0)))
    assert FeatureRecipe.from_dict(json.loads(json.dumps(new.to_dict()))) == new
    # the old default augmentation draws the same numbers as before the new fields existed
    d = Augmentation().draw(5, np.random.default_rng(1))
    assert set(d) == {"scale", "jitter", "angle", "intensity"}


def _toy(n=900, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(1, 5, n)
    X = rng.normal(scale=1.2, size=(n, 12)) + 2.0 * np.eye(12)[y]
    return X.astype(np.float32), y


def test_fcnn_temperature_scaling_keeps_the_classes_and_saves_safely(tmp_path):
    from napari_sedclassify.classes import ClassTable
    from napari_sedclassify.geometry import Geometry as G
    from napari_sedclassify.models.fcnn import FCNNClassifier
    from napari_sedclassify.models.persistence import SedModel, load_model, save_model

    X, y = _toy()
    Xv, yv = _toy(300, 1)
    raw = FCNNClassifier(max_epochs=15, calibration=None).fit(X, y, validation_data=(Xv, yv))
    cal = FCNNClassifier(max_epochs=15).fit(X, y, validation_data=(Xv, yv))
    assert "temperature" in cal.history_[-1] and "temperature" not in raw.history_[-1]
    assert np.array_equal(raw.predict(Xv), cal.predict(Xv))  # one factor on the logits: same argmax
    assert not np.allclose(raw.predict_proba(Xv), cal.predict_proba(Xv))

    def nll(p):
        return -np.mean(np.log(np.clip(p[np.arange(len(yv)), np.searchsorted(cal.classes_, yv)], 1e-12, 1)))

    assert nll(cal.predict_proba(Xv)) <= nll(raw.predict_proba(Xv)) + 1e-6
    model = SedModel(kind="fcnn", estimator=cal, recipe=FeatureRecipe(), preprocess={}, classes=ClassTable.default(),
                     geometry=G())
    back = load_model(save_model(model, tmp_path / "t.sedmodel"))  # the temperature calibrator is trusted
    assert np.allclose(back.predict_proba(Xv), cal.predict_proba(Xv))
    two = FCNNClassifier(max_epochs=5).fit(X, (y > 2) + 1, validation_data=(Xv, (yv > 2) + 1))
    p = two.predict_proba(Xv)
    assert np.allclose(p.sum(axis=1), 1) and 0.02 < p[:, 1].mean() < 0.98  # two classes: Platt scaling
    # validation frames that miss one of the trained classes (a small labeled region): the raw
    # softmax, not an error
    keep = yv != yv.max()
    partial = FCNNClassifier(max_epochs=5).fit(X, y, validation_data=(Xv[keep], yv[keep]))
    assert partial.history_[-1]["temperature"] is None  # not calibrated
    assert partial.predict_proba(Xv).shape == (len(Xv), len(np.unique(y)))


def test_uncertain_mark_and_files(tmp_path):
    from napari_sedclassify.classes import ClassTable
    from napari_sedclassify.models.inference import mark_uncertain, uncertain_mask
    from napari_sedclassify.pipeline.predict import ScanPrediction, with_uncertain, write_prediction
    from napari_sedclassify.pipeline.reduce import kept_positions

    p = np.array([[[0.9, 0.05, 0.03, 0.02], [0.4, 0.35, 0.15, 0.1]],
                  [[np.nan] * 4, [0.1, 0.7, 0.1, 0.1]]], dtype=np.float32)
    cm = np.array([[1, 1], [0, 2]], dtype=np.uint8)
    assert uncertain_mask(p, 0.5).tolist() == [[False, True], [False, False]]
    marked, mask = mark_uncertain(cm, p, 0.75)
    assert marked.tolist() == [[1, 0], [0, 0]] and mask.sum() == 2
    with pytest.raises(ValueError):
        uncertain_mask(p, 1.5)
    pred = ScanPrediction("s", cm, p, [1, 2, 3, 4], np.ones((2, 2)))
    assert with_uncertain(pred, None) is pred
    files = write_prediction(with_uncertain(pred, 0.75), tmp_path, ClassTable.default())
    assert np.load(files["class_map_npy"]).tolist() == [[1, 0], [0, 0]]
    assert np.load(files["uncertain"]).tolist() == [[False, True], [False, True]]
    assert not kept_positions(np.load(files["class_map_npy"]), [2]).any()  # uncertain ice is not kept
    plain = write_prediction(pred, tmp_path / "plain", ClassTable.default())
    assert "uncertain" not in plain and np.load(plain["class_map_npy"]).tolist() == cm.tolist()


def test_reliability_summary_and_plot(tmp_path):
    from napari_sedclassify.models.metrics import plot_reliability, reliability

    rng = np.random.default_rng(0)
    n = 20000
    conf = rng.uniform(0.3, 1.0, n)
    y = np.where(rng.uniform(size=n) < conf, 2, 1)  # class 2 with probability conf: calibrated
    proba = np.stack([1 - conf, conf], axis=1)
    r = reliability(y, proba, [1, 2], n_bins=10)
    assert r["n"] == n and r["ece"] < 0.02
    over = reliability(y, np.stack([1 - conf ** 0.2, conf ** 0.2], axis=1), [1, 2])  # overconfident
    assert over["ece"] > 0.05
    curve = {row["threshold"]: row for row in r["curve"]}
    assert curve[0.0]["kept"] == 1.0 and curve[0.9]["kept"] < 0.3
    assert curve[0.9]["amorphous_ice_precision"] > curve[0.0]["amorphous_ice_precision"]
    plot_reliability({"calibrated": r, "overconfident": over}, tmp_path / "rel.png", title="t")
    assert (tmp_path / "rel.png").stat().st_size > 1000


def test_scan_context_features_and_the_whole_scan_rule():
    from napari_sedclassify.errors import IncompatibleModelError
    from napari_sedclassify.models.features import scan_reference
    from napari_sedclassify.models.inference import MIN_CONTEXT_FRAMES, predict_scan
    from napari_sedclassify.models.training import ScanFeatures, train

    rng = np.random.default_rng(0)
    n = 100
    level = np.where(np.arange(n) < 50, 1.0, 3.0)  # half the frames scatter three times more
    ria = (_ring_profile(RADII)[None] * level[:, None] * rng.uniform(0.95, 1.05, (n, RADII.size)))
    recipe = FeatureRecipe(scan_context=4)
    ref = scan_reference(ria, RADII, recipe, GEOM)
    x = ria_features(ria, RADII, recipe, GEOM, reference=ref)
    assert x.shape == (n, 96 + 4)
    ctx = x[:, -4:]
    assert np.all(ctx[50:].mean(axis=0) - ctx[:50].mean(axis=0) > 0.9)  # log 3 = 1.1 between the halves
    plain = ria_features(ria, RADII, FeatureRecipe(), GEOM)
    assert np.allclose(x[:, :96], plain, atol=1e-5)  # the shape features are unchanged
    # a dose factor on the whole scan cancels in the context
    assert np.allclose(ria_features(5 * ria, RADII, recipe, GEOM, reference=scan_reference(5 * ria, RADII, recipe,
                                                                                          GEOM)), x, atol=1e-4)
    with pytest.raises(ValueError, match="reference"):
        ria_features(ria, RADII, recipe, GEOM)
    labels = np.where(np.arange(n) < 50, 1, 2).reshape(10, 10)
    feats = ScanFeatures("s", GEOM, np.zeros((10, 10), bool), ria.reshape(10, 10, -1), RADII)
    model = train([feats], [labels], kind="svm", recipe=recipe.replace(augmentation=Augmentation(copies=0)))
    assert predict_scan(model, feats).class_map.shape == (10, 10)
    few = ScanFeatures("live", GEOM, np.zeros((1, MIN_CONTEXT_FRAMES - 1), bool), ria[None, :MIN_CONTEXT_FRAMES - 1],
                       RADII)
    with pytest.raises(IncompatibleModelError, match="whole scan"):
        predict_scan(model, few)


def test_train_session_robust_from_the_command_line(tmp_path, capsys):
    from models_helpers import write_tiny_scans
    from napari_sedclassify.cli import main
    from napari_sedclassify.models.persistence import read_metadata

    entries = write_tiny_scans(tmp_path, [0, 1])
    out = tmp_path / "robust.sedmodel"
    code = main(["train", "--scans", *[str(e[0]) for e in entries], "--labels", *[str(e[1]) for e in entries],
                 "--model", "svm", "--session-robust", "--out", str(out), "--flatfield", str(entries[0][2])])
    assert code == 0, capsys.readouterr().err
    meta = read_metadata(out)
    r = meta["recipe"]
    assert r["scan_context"] == 6 and r["augmentation"]["blur_q_invA"] == 0.035
    assert r["context_reference"] == "ends"  # the scan's own carbon-like and ice-like frames
    assert r["scan_neighbours"] and r["neighbour_copies"] == 10  # what the scan neighbours look like
    assert r["augmentation"]["dose_range"] == [0.2, 1.0]
    assert r["augmentation"]["radial_scale"] == 0.12  # the camera lengths were not fitted
    assert meta["estimator"]["params"]["class_weight"] == "sqrt"
    assert meta["training"]["ensemble"] == 5  # the session-robust SVM is an ensemble of five
    code = main(["train", "--scans", str(entries[0][0]), "--labels", str(entries[0][1]), "--model", "svm",
                 "--ensemble", "0", "--out", str(tmp_path / "c.sedmodel")])
    assert code == 2 and "--ensemble takes N >= 1" in capsys.readouterr().err


def test_session_robust_cnn_settings_from_the_command_line():
    from napari_sedclassify.cli import build_parser
    from napari_sedclassify.cli.train import model_settings
    from napari_sedclassify.models.features import session_robust_crop_recipe
    from napari_sedclassify.pipeline.train import default_recipe

    args = build_parser().parse_args(["train", "--scans", "s.npy", "--labels", "l.npy", "--model", "cnn",
                                      "--session-robust", "--out", "m.sedmodel"])
    args._all_fitted = True
    changes, params = model_settings(args)
    assert default_recipe("cnn", **changes) == session_robust_crop_recipe(camera_length_fitted=True)
    assert params == {"class_weight": "sqrt"}  # one network: no ensemble for the CNN


def test_an_ensemble_averages_members_trained_on_their_own_draws_and_saves_safely(tmp_path):
    """FCNN and SVM ensembles: members differ (their own augmentation draw, seed and, for the SVM,
    subsample), the model's probabilities are their mean, and the model file holds scikit-learn
    types only (loaded through the reviewed trusted list)."""
    from models_helpers import tiny_features, tiny_simulated
    from napari_sedclassify.models.persistence import load_model, save_model
    from napari_sedclassify.models.training import train

    sims = tiny_simulated([0, 1])
    feats = tiny_features(sims, kinds=("fcnn",))
    recipe = FeatureRecipe(augmentation=Augmentation(copies=1, intensity_range=(0.5, 2.0), dose_range=(0.2, 1.0)))
    X = feats[0].inputs(recipe)
    for kind, params in (("svm", {"max_train_samples": 300}), ("fcnn", {"max_epochs": 5})):
        told = []
        model = train(feats, [s.truth for s in sims], kind=kind, recipe=recipe, params={**params, "ensemble": 3},
                      progress=lambda epoch, logs: told.append((logs["member"], logs["members"])))
        assert model.training["ensemble"] == 3 and sorted(set(told)) == [(1, 3), (2, 3), (3, 3)]
        members = [m.predict_proba(X) for m in model.estimator.pipeline_.estimators_]
        assert len(members) == 3 and not np.allclose(members[0], members[1], atol=1e-3)
        np.testing.assert_allclose(model.estimator.predict_proba(X), np.mean(members, axis=0), rtol=1e-5, atol=1e-6)
        back = load_model(save_model(model, tmp_path / f"{kind}.sedmodel"))
        np.testing.assert_allclose(back.estimator.predict_proba(X), model.estimator.predict_proba(X), atol=1e-6)
        one = train(feats, [s.truth for s in sims], kind=kind, recipe=recipe, params=params)
        assert "ensemble" not in one.estimator.get_params() and not hasattr(one.estimator.pipeline_, "estimators_")
    with pytest.raises(ValueError, match="ensemble"):
        train(feats, [s.truth for s in sims], kind="svm", params={"ensemble": 0})
