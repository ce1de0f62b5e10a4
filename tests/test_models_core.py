"""Features, FCNN, SVM, metrics, model files and training on tiny simulated scans (no TensorFlow)."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace

import numpy as np
import pytest

from models_helpers import majority_f1, tiny_features, tiny_simulated
from napari_sedclassify.errors import Cancelled
from napari_sedclassify.geometry import Geometry
from napari_sedclassify.models.features import Augmentation, FeatureRecipe, crop_features, ria_features


@pytest.fixture(scope="module")
def tiny():
    """Four session-A scans (three to train, one held out) and one session-B scan."""
    sims = tiny_simulated([0, 1, 2, 3]) + tiny_simulated([10], session="B")
    return tiny_features(sims), [s.truth for s in sims]


# ---- features -------------------------------------------------------------------------------


def test_ria_features_are_exact_bin_means_and_session_invariant():
    g = Geometry(detector_shape=(256, 256), pixel_size_um=110.0)
    radii = np.arange(180) + 0.5
    ramp = 2.0 * radii + 5.0  # bin k = [k, k + 1) px holds 2 (k + 0.5) + 5
    recipe = FeatureRecipe(normalise=False, n_bins=20, augmentation=Augmentation(copies=0))
    edges = recipe.ria_edges_px(g)
    f = ria_features(ramp[None], radii, recipe, g)[0]
    # the exact mean of the piecewise-constant profile over each feature bin
    exact = [ramp[np.floor(np.linspace(a, b, 200001)[:-1]).astype(int)].mean() for a, b in zip(edges[:-1], edges[1:])]
    np.testing.assert_allclose(f, exact, rtol=1e-4)
    # normalisation removes any dose / global gain factor
    norm = FeatureRecipe(n_bins=20)
    a = ria_features(ramp[None], radii, norm, g)
    b = ria_features(3.7 * ramp[None], radii, norm, g)
    np.testing.assert_allclose(a, b, atol=1e-5)
    # empty bins (NaN) inside the range are bridged; an all-NaN profile stays NaN
    holey = ramp.copy()
    holey[60:63] = np.nan
    np.testing.assert_allclose(ria_features(holey[None], radii, recipe, g)[0], f, rtol=1e-3)
    assert np.isnan(ria_features(np.full((1, 180), np.nan), radii, recipe, g)).all()


def test_ria_radial_scaling_moves_a_ring_like_a_camera_length_change():
    g = Geometry(detector_shape=(256, 256), pixel_size_um=110.0)
    radii = np.arange(180) + 0.5
    ring_px = g.d_A_to_radius_px(3.7)
    ria = 1.0 + 50 * np.exp(-0.5 * ((radii - ring_px) / 2.0) ** 2)
    recipe = FeatureRecipe(normalise=False, n_bins=400, q_min_invA=0.2, q_max_invA=0.35)
    centres = 0.5 * (recipe.ria_edges_px(g)[1:] + recipe.ria_edges_px(g)[:-1])
    aug = {"scale": np.array([1.0, 1.04]), "jitter": np.zeros(2), "intensity": np.ones(2)}
    f = ria_features(np.stack([ria, ria]), radii, recipe, g, aug)
    w = f - 1.0
    peak = (w * centres).sum(axis=1) / w.sum(axis=1)  # ring centroids (px)
    # sampling the profile at 1.04 r puts the ring at r / 1.04
    assert abs(peak[0] - ring_px) < 0.05
    assert abs(peak[1] - ring_px / 1.04) < 0.05


def test_crop_features_resample_normalise_and_shift():
    recipe = FeatureRecipe(kind="crop", crop_size=24)
    yy, xx = np.mgrid[:60, :60]
    crop = 1.0 + 100.0 * (((yy - 29.5) ** 2 + (xx - 29.5) ** 2) < 9)
    out = crop_features(np.stack([crop, 5 * crop]), 30.0, recipe)
    assert out.shape == (2, 24, 24)
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)  # dose-invariant
    # a 3 px centre error moves the beam by 3 / 60 * 24 = 1.2 output px
    aug = {"scale": np.ones(1), "jitter": np.array([3.0]), "angle": np.array([0.0]), "intensity": np.ones(1)}
    moved = crop_features(crop[None], 30.0, recipe.replace(normalise=False), aug)[0]
    still = crop_features(crop[None], 30.0, recipe.replace(normalise=False))[0]
    com = [np.sum((img - 1) * np.arange(24)[None, :]) / (img - 1).sum() for img in (moved, still)]
    assert com[1] - com[0] == pytest.approx(1.2, abs=0.2)


def test_crop_layout_clips_to_the_frame_and_works_in_angstrom():
    recipe = FeatureRecipe(kind="crop")
    g512 = Geometry(detector_shape=(512, 512))
    half, b = recipe.crop_layout(g512)
    assert abs(g512.radius_px_to_d_A(half) - 2.7) < 0.05 and (2 * half) % b == 0
    g256 = Geometry(detector_shape=(256, 256), pixel_size_um=110.0)
    half256, b256 = recipe.crop_layout(g256)
    assert abs(g256.radius_px_to_d_A(half256) - 2.7) < 0.1
    small = Geometry(detector_shape=(256, 256))  # 55 µm px: 2.7 Å lies outside the frame
    half_small, _ = recipe.crop_layout(small)
    assert half_small <= 126
    with pytest.raises(ValueError, match="not calibrated"):
        recipe.crop_layout(Geometry(detector_shape=(256, 256), camera_length_mm=None))


# ---- metrics --------------------------------------------------------------------------------


def test_metrics_match_scikit_learn(tmp_path):
    from sklearn import metrics as skm

    from napari_sedclassify.models.metrics import evaluate, format_table, plot_confusion, plot_maps

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 5, (20, 20))
    pred = np.where(rng.random((20, 20)) < 0.7, truth, rng.integers(1, 5, (20, 20)))
    m = evaluate(truth, pred)
    keep = truth > 0
    t, p = truth[keep], pred[keep]
    prec, rec, f1, _ = skm.precision_recall_fscore_support(t, p, average="weighted", labels=[1, 2, 3, 4])
    assert m["weighted"]["precision"] == pytest.approx(prec)
    assert m["weighted"]["recall"] == pytest.approx(rec)
    assert m["weighted"]["f1"] == pytest.approx(f1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(t, p))
    jac = skm.jaccard_score(t, p, average=None, labels=[1, 2, 3, 4])
    assert [m["per_class"][c]["jaccard"] for c in m["per_class"]] == pytest.approx(list(jac))
    assert m["confusion"] == skm.confusion_matrix(t, p, labels=[1, 2, 3, 4]).tolist()
    assert m["n_excluded"] == int((~keep).sum())
    np.testing.assert_allclose(np.sum(m["confusion_normalised"], axis=1), 1.0, atol=1e-3)
    table = format_table(m)
    assert "crystalline_ice" in table and f"{m['weighted']['f1']:.3f}" in table
    json.dumps(m)
    plot_confusion(m, tmp_path / "cm.png")
    plot_maps(truth, pred, tmp_path / "maps.png", integrated=rng.random((20, 20)))
    for f in ("cm.png", "maps.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overlay_shows_each_scan_point_in_its_class_colour(tmp_path):
    """The prediction overlay (Pillow, no matplotlib): the right panel is the integrated image
    with each point's class colour blended in, whole blocks of screen pixels per scan point;
    unlabeled (0) points stay grey."""
    from PIL import Image, ImageColor

    from napari_sedclassify.classes import ClassTable
    from napari_sedclassify.models.metrics import plot_overlay

    table = ClassTable.default()
    rng = np.random.default_rng(4)
    integrated = rng.random((12, 30))
    classes = rng.integers(0, 5, (12, 30))
    plot_overlay(integrated, classes, tmp_path / "o.png", table, title="a title", alpha=0.5)
    png = np.asarray(Image.open(tmp_path / "o.png").convert("RGB")).astype(float)
    scale = 360 // 30
    grey = (integrated - integrated.min()) / (integrated.max() - integrated.min())
    # find the right panel: the block of the last scan point's colour, scanning from the left
    left = png[44:44 + 12 * scale, 12:12 + 30 * scale]
    np.testing.assert_allclose(left[::scale, ::scale, 0], 255 * grey, atol=1.0)
    right = png[44:44 + 12 * scale, 24 + 30 * scale:24 + 60 * scale]
    for (y, x), c in np.ndenumerate(classes):
        block = right[y * scale:(y + 1) * scale, x * scale:(x + 1) * scale]
        want = 255 * grey[y, x] * np.ones(3)
        if c:
            want = 0.5 * want + 0.5 * np.asarray(ImageColor.getrgb(table.colours[c])[:3], float)
        np.testing.assert_allclose(block.reshape(-1, 3), np.broadcast_to(want, (scale * scale, 3)), atol=1.0)


# ---- training and estimators ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fcnn", "svm"])
def test_models_learn_on_tiny_scans_and_round_trip(tiny, kind, tmp_path):
    from napari_sedclassify.models.persistence import load_model, read_metadata, save_model

    feats, truths = tiny
    epochs = []
    model = train_model(feats, truths, kind, progress=lambda e, logs: epochs.append((e, logs)))
    assert epochs and all("max_epochs" in lg for _, lg in epochs)
    for name in ("A_3", "B_10"):
        f1 = model.metrics["holdout"][name]["weighted"]["f1"]
        assert f1 > 0.8 and f1 > majority_f1(truths[[f.name for f in feats].index(name)]) + 0.2, (name, f1)
    est = model.estimator
    assert set(est.classes_) <= {1, 2, 3, 4} and "random_state" in est.get_params()
    X = feats[3].inputs(model.recipe)
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(est.predict(X), est.classes_[proba.argmax(1)])

    path = save_model(model, tmp_path / f"{kind}.sedmodel")
    meta = read_metadata(path)
    assert meta["kind"] == kind and meta["recipe"]["axis"] == "q"
    assert meta["classes"]["names"]["2"] == "amorphous_ice" and meta["geometry"]["detector_shape"] == [128, 128]
    assert "scikit-learn" in meta["versions"] and meta["training"]["n_train_frames"] > 0
    assert set(zipfile.ZipFile(path).namelist()) == {"model.json", "estimator.skops", "estimator.npz"}
    loaded = load_model(path)  # applied from the arrays, with numpy
    np.testing.assert_allclose(loaded.predict_proba(X), proba, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    assert loaded.recipe == model.recipe and loaded.classes == model.classes
    assert loaded.estimator.get_params() == json.loads(json.dumps(est.get_params()))
    as_sklearn = load_model(path, native=True)  # the scikit-learn pipeline, through skops
    np.testing.assert_array_equal(as_sklearn.predict_proba(X), proba)


def train_model(feats, truths, kind, **kw):
    from napari_sedclassify.models.training import train

    return train(feats, truths, kind=kind, holdout=[3, 4], seed=0, **kw)


def test_training_is_reproducible_and_splits_by_scan(tiny):
    feats, truths = tiny
    a = train_model(feats, truths, "fcnn", params={"max_epochs": 30})
    b = train_model(feats, truths, "fcnn", params={"max_epochs": 30})
    X = feats[3].inputs(a.recipe)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    t = a.training
    labeled = sum(int((truths[i] > 0).sum()) for i in range(3))
    assert t["n_train_frames"] + t["n_validation_frames"] == labeled
    assert t["n_validation_frames"] == pytest.approx(0.1 * labeled, abs=4)
    assert t["n_train_inputs"] == 2 * t["n_train_frames"]  # one augmented copy
    assert [s["role"] for s in t["scans"]] == ["train"] * 3 + ["holdout"] * 2


def test_training_passes_stop_the_profile_where_the_features_stop_reading_it():
    """A training pass bins the radial profile only as far as the recipe reads it (q = 0.6 Å⁻¹: 62
    px of this 128 px detector, whose corner is 91 px away; its augmented copies read 4 % and 1 px
    farther): the same features, augmented copies included, as a pass to the corner, so the same
    model to the bit; a radius the user set short of that reach is moved out."""
    from napari_sedclassify.models.training import ScanFeatures
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.pipeline.train import default_recipe, preprocess_params_for, scan_features
    from napari_sedclassify.processing import FlatField, PreprocessParams

    sims = tiny_simulated([0, 1, 2])
    recipe = default_recipe("fcnn")
    cut, whole = [], []
    for i, sim in enumerate(sims):
        ff = FlatField.from_flood(sim.flatfield)
        f, res = scan_features(sim.scan, recipe, name=f"s{i}", flatfield=ff)
        reach = recipe.ria_reach_px(sim.scan.geometry, augmented=True)
        assert reach > float(recipe.ria_edges_px(sim.scan.geometry)[-1]) + 3
        assert reach <= res.radii_px[-1] + 0.5 < reach + 3
        full = preprocess(sim.scan, replace(preprocess_params_for([recipe], sim.scan.geometry), ria_r_max_px=None),
                          flatfield=ff)
        assert full.radii_px[-1] > reach + 20
        g = ScanFeatures.from_preprocess(full, sim.scan.geometry, f"s{i}")
        np.testing.assert_array_equal(f.inputs(recipe), g.inputs(recipe))
        cut.append(f)
        whole.append(g)
        short = preprocess_params_for([recipe], sim.scan.geometry, PreprocessParams(ria_r_max_px=40.0), training=True)
        assert short.ria_r_max_px >= reach
    truths = [s.truth for s in sims]
    from napari_sedclassify.models.training import train

    a = train(cut, truths, kind="fcnn", holdout=[2], seed=0, params={"max_epochs": 20})
    b = train(whole, truths, kind="fcnn", holdout=[2], seed=0, params={"max_epochs": 20})
    X = whole[2].inputs(recipe)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert a.metrics == b.metrics
    # the model file records the pass it was trained on: the profile to that reach
    from napari_sedclassify.pipeline.train import train_model as train_on_scans

    m = train_on_scans([s.scan for s in sims], truths, model="fcnn", params={"max_epochs": 2},
                       flatfield=[FlatField.from_flood(s.flatfield) for s in sims])
    assert reach + 1 < m.preprocess["ria_r_max_px"] < reach + 3


def test_training_cancels(tiny):
    feats, truths = tiny
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        train_model(feats, truths, "fcnn", cancel=cancel)


def test_bad_labels_are_refused_with_clear_errors(tiny):
    feats, truths = tiny
    with pytest.raises(ValueError, match=r"labels for A_0: shape \(15, 16\) does not match the scan grid 16x16"):
        train_model(feats, [truths[0][:15]] + truths[1:], "fcnn")
    bad = truths[0].astype(np.int64).copy()
    bad[0, 0] = 9
    with pytest.raises(ValueError, match=r"unknown class ids \[9\]"):
        train_model(feats, [bad] + truths[1:], "fcnn")
    with pytest.raises(ValueError, match="fewer than two classes"):
        train_model(feats, [np.ones_like(t) for t in truths], "svm")


def test_svm_randomized_search(tiny):
    feats, truths = tiny
    model = train_model(feats, truths, "svm", params={"search": True, "n_iter": 4, "search_samples": 300})
    assert set(model.training["search_results"]["best_params"]) == {"C", "gamma"}
    assert model.metrics["holdout"]["A_3"]["weighted"]["f1"] > 0.8


# ---- model files: safety and compatibility ---------------------------------------------------


def _swap_member(src, dst, member, data):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            zout.writestr(item, data if item == member else zin.read(item))


def test_untrusted_or_foreign_model_files_are_refused(tiny, tmp_path):
    import os

    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from napari_sedclassify.errors import ModelFileError
    from napari_sedclassify.models.persistence import load_model, save_model

    feats, truths = tiny
    good = save_model(train_model(feats, truths, "svm"), tmp_path / "good.sedmodel")
    evil = Pipeline([("run", FunctionTransformer(os.system))])
    _swap_member(good, tmp_path / "evil_arrays.sedmodel", "estimator.skops", sio.dumps(evil))
    # applying the model reads its arrays only: the stored pipeline is never loaded...
    X = feats[3].inputs(load_model(good).recipe)
    np.testing.assert_array_equal(load_model(tmp_path / "evil_arrays.sedmodel").predict_proba(X),
                                  load_model(good).predict_proba(X))
    # ...and loading it as scikit-learn refuses it
    with pytest.raises(ModelFileError, match=r"evil_arrays.sedmodel: refused to load.*(posix|os)\.system"):
        load_model(tmp_path / "evil_arrays.sedmodel", native=True)
    # a file without arrays (written before they existed) is loaded through skops: refused
    meta = json.loads(zipfile.ZipFile(good).read("model.json"))
    del meta["estimator"]["arrays"]
    with zipfile.ZipFile(tmp_path / "evil_arrays.sedmodel") as zin, zipfile.ZipFile(tmp_path / "evil.sedmodel", "w") as zout:
        zout.writestr("model.json", json.dumps(meta))
        zout.writestr("estimator.skops", zin.read("estimator.skops"))
    with pytest.raises(ModelFileError, match=r"evil.sedmodel: refused to load.*(posix|os)\.system"):
        load_model(tmp_path / "evil.sedmodel")
    # arrays holding pickled objects are refused, never unpickled
    buf = io.BytesIO()
    np.savez(buf, a0=np.array([os.system], dtype=object))
    _swap_member(good, tmp_path / "pickled.sedmodel", "estimator.npz", buf.getvalue())
    with pytest.raises(ModelFileError, match=r"pickled.sedmodel: the estimator's arrays .* cannot be (read|applied)"):
        load_model(tmp_path / "pickled.sedmodel")
    # a prediction loads the estimator in a thread while it preprocesses the scan: the refusal
    # still stops it, and no output is written
    from napari_sedclassify.pipeline.predict import ModelLoading, predict_to_files
    from models_helpers import write_tiny_scans

    (scan, _truth, flat), = write_tiny_scans(tmp_path, [7])
    with pytest.raises(ModelFileError, match=r"evil.sedmodel: refused to load"):
        predict_to_files(tmp_path / "evil.sedmodel", [scan], tmp_path / "out", flatfield=flat)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    loading = ModelLoading(good)  # the card at once, the estimator from the thread
    assert loading.card.estimator is None and loading.card.classes == loading.model().classes
    assert loading.model().estimator is not None
    (tmp_path / "junk.sedmodel").write_bytes(b"not a zip at all")
    with pytest.raises(ModelFileError, match="junk.sedmodel: not a napari-sedclassify model file"):
        load_model(tmp_path / "junk.sedmodel")
    meta = json.loads(zipfile.ZipFile(good).read("model.json"))
    meta["format_version"] = 99
    _swap_member(good, tmp_path / "future.sedmodel", "model.json", json.dumps(meta))
    with pytest.raises(ModelFileError, match="newer than this"):
        load_model(tmp_path / "future.sedmodel")


def test_incompatible_geometry_is_a_clear_error(tiny, tmp_path):
    from napari_sedclassify.models.inference import predict_scan
    from napari_sedclassify.errors import IncompatibleModelError
    from napari_sedclassify.models.persistence import load_model, save_model
    from napari_sedclassify.models.training import ScanFeatures

    feats, truths = tiny
    path = save_model(train_model(feats, truths, "fcnn", params={"max_epochs": 5}), tmp_path / "m.sedmodel")
    model = load_model(path)
    f = feats[3]
    uncalibrated = ScanFeatures(f.name, f.geometry.replace(camera_length_mm=None), f.missing, f.ria, f.radii_px)
    with pytest.raises(IncompatibleModelError, match=r"m\.sedmodel cannot be applied to A_3: .*camera length"):
        predict_scan(model, uncalibrated)
    far = ScanFeatures(f.name, f.geometry.replace(camera_length_mm=3000.0), f.missing, f.ria, f.radii_px)
    with pytest.raises(IncompatibleModelError, match=r"needs q up to 0\.6 Å⁻¹, .* detector reaches 77 px"):  # a quarter circle at 77 px
        predict_scan(model, far)
    px_model = train_model(feats, truths, "fcnn", recipe=FeatureRecipe(axis="px", r_min_px=5, r_max_px=60),
                           params={"max_epochs": 5})
    other = ScanFeatures(f.name, f.geometry.replace(pixel_size_um=110.0), f.missing, f.ria, f.radii_px)
    with pytest.raises(IncompatibleModelError, match="pixel size 110.0 µm, model trained with 220.0 µm"):
        predict_scan(px_model, other)


def test_predictions_cover_the_scan_and_skip_missing_frames(tiny):
    from napari_sedclassify.models.inference import predict_scan
    from napari_sedclassify.models.training import ScanFeatures

    feats, truths = tiny
    model = train_model(feats, truths, "svm")
    f = feats[3]
    missing = np.zeros(f.scan_shape, bool)
    missing[0, :5] = True
    pred = predict_scan(model, ScanFeatures(f.name, f.geometry, missing, f.ria, f.radii_px))
    assert pred.class_map.shape == f.scan_shape and pred.probabilities.shape == f.scan_shape + (4,)
    assert (pred.class_map[0, :5] == 0).all() and np.isnan(pred.probabilities[0, :5]).all()
    assert (pred.class_map[~missing] > 0).all()
    np.testing.assert_allclose(np.nansum(pred.probabilities[~missing], axis=-1), 1.0, atol=1e-5)


def test_precomputed_preprocessing_is_checked_against_the_model(tiny):
    from napari_sedclassify.errors import IncompatibleModelError
    from napari_sedclassify.pipeline.predict import params_for_model, predict_scan
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.pipeline.train import preprocess_params_for
    from napari_sedclassify.processing import FlatField, PreprocessParams

    feats, truths = tiny
    model = train_model(feats, truths, "fcnn", preprocess=PreprocessParams().to_dict(), params={"max_epochs": 20})
    (sim,) = tiny_simulated([5])
    ff = FlatField.from_flood(sim.flatfield)
    own = predict_scan(model, sim.scan, flatfield=ff, name="s5")
    # a pass to the frame's corner (as the centring widget makes), which the model may take instead
    done = preprocess(sim.scan, replace(preprocess_params_for([model.recipe], sim.scan.geometry), ria_r_max_px=None),
                      flatfield=ff)
    again = predict_scan(model, sim.scan, name="s5", result=done)
    np.testing.assert_array_equal(again.class_map, own.class_map)
    assert np.mean(own.class_map == sim.truth) > 0.8
    # the model's own pass stops the radial profile where the model stops reading it (q = 0.6 Å⁻¹,
    # 62 px of this 128 px detector, whose corner is 91 px away): the same bins, the same
    # probabilities to the bit
    reach = float(model.recipe.ria_edges_px(sim.scan.geometry)[-1])
    nb = own.ria.shape[-1]
    assert reach <= own.ria_radii_px[-1] + 0.5 < reach + 3 and nb < done.ria.shape[-1]
    np.testing.assert_array_equal(own.ria, done.ria[..., :nb])
    np.testing.assert_array_equal(own.probabilities, again.probabilities)
    # a model whose own parameters stop the profile short of its reach on this detector (40 px,
    # where it reads to 62 px): the profile goes as far as the model reads, the same probabilities
    short_model = replace(model, preprocess={**model.preprocess, "ria_r_max_px": 40.0})
    assert params_for_model(short_model, sim.scan.geometry).ria_r_max_px >= reach
    np.testing.assert_array_equal(predict_scan(short_model, sim.scan, flatfield=ff, name="s5").probabilities,
                                  own.probabilities)
    fitted = preprocess(sim.scan, PreprocessParams(centring="fitted"), flatfield=ff)
    with pytest.raises(IncompatibleModelError, match=r"centring = 'fitted' \(model: 'per_frame'\)"):
        predict_scan(model, sim.scan, result=fitted)
    short = preprocess(sim.scan, PreprocessParams(ria_r_max_px=40), flatfield=ff)
    need = 0.6 * sim.scan.geometry.lambda_L_over_p
    with pytest.raises(IncompatibleModelError, match=f"RIA stops at 40 px, the model reads it to {need:.0f} px"):
        predict_scan(model, sim.scan, result=short)


def test_metrics_with_no_labeled_point_and_absent_classes():
    from napari_sedclassify.models.metrics import confusion_matrix, evaluate

    m = evaluate(np.zeros((3, 3), int), np.ones((3, 3), int))  # nothing labeled: zeros, not an error
    assert m["n"] == 0 and m["n_excluded"] == 9 and m["accuracy"] == 0.0 and m["weighted"]["f1"] == 0.0
    assert m["confusion"] == [[0] * 4] * 4
    truth = np.array([1, 1, 2, 2, 0])
    pred = np.array([1, 2, 2, 2, 3])
    m = evaluate(truth, pred)
    assert m["per_class"]["crystalline_ice"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "jaccard": 0.0,
                                                 "support": 0}
    assert m["macro"]["recall"] == pytest.approx((0.5 + 1.0) / 2)  # over the classes present only
    assert confusion_matrix([1, 2, 9], [1, 1, 1], [1, 2]).tolist() == [[1, 0], [1, 0]]  # 9: not a class, left out


def test_training_names_rare_classes_and_assumed_values(tiny):
    """A class with few labeled frames (the simulated scans' crystalline ice) and calibration values
    nobody stated for the training scans are said with the trained model; scans whose values the
    files state and classes all labeled at length say nothing."""
    from dataclasses import replace

    from napari_sedclassify.geometry import Geometry
    from napari_sedclassify.models.training import MIN_CLASS_FRAMES, training_warnings

    feats, truths = tiny
    model = train_model(feats, truths, "svm")
    counts = model.training["class_counts"]
    rare = [name for name, n in counts.items() if n < MIN_CLASS_FRAMES]
    assert rare  # 16x16 scans: crystalline ice and mixed are a few frames each
    assert model.training["warnings"] == training_warnings(counts, feats[:3])
    assert model.training["warnings"][0].startswith("few labeled frames for ")
    assert all(f"{name} ({counts[name]})" in model.training["warnings"][0] for name in rare)
    assert training_warnings({"carbon": 500, "amorphous_ice": 400}, feats[:3]) == []
    bare = [replace(f, geometry=Geometry(detector_shape=f.geometry.detector_shape)) for f in feats[:3]]
    (text,) = training_warnings({"carbon": 500, "amorphous_ice": 400}, bare)
    assert text.startswith("pixel size 55 µm, camera length 900 mm, voltage 200 kV assumed for the training scans")


def test_a_region_of_interest_detector_is_read_as_far_as_its_arcs_reach(tiny):
    """A model trained on full 128 px frames, applied to a 128 x 64 region of interest of the same
    detector (Merlin's ROI read-out): the profile beyond the shorter side's half is measured on
    arcs along the long side (a third of a circle at 60 px), so the model applies and classifies
    about as on the full frames; it was refused ("the detector reaches 32 px")."""
    from napari_sedclassify.geometry import reach_px
    from napari_sedclassify.models.training import ScanFeatures
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.processing import FlatField
    from napari_sedclassify.scan import Scan

    assert reach_px((128, 128)) > 64 and reach_px((128, 64)) == pytest.approx(reach_px((64, 128)))
    feats, truths = tiny
    model = train_model(feats, truths, "svm")
    sim = tiny_simulated([3])[0]
    full = ScanFeatures.from_preprocess(preprocess(sim.scan, None, FlatField.from_flood(sim.flatfield)),
                                        sim.scan.geometry, "full")
    roi_geometry = sim.scan.geometry.replace(detector_shape=(128, 64))
    roi = Scan(np.asarray(sim.scan.data)[:, :, :, 32:96], roi_geometry, sim.scan.missing)
    flat = FlatField.from_flood(np.asarray(sim.flatfield)[..., 32:96])
    cut = ScanFeatures.from_preprocess(preprocess(roi, None, flat), roi_geometry, "roi")
    from napari_sedclassify.models.inference import predict_scan

    a, b = predict_scan(model, full).class_map, predict_scan(model, cut).class_map
    truth = sim.truth
    acc = lambda m: float(((m == truth) & (truth > 0)).sum() / (truth > 0).sum())  # noqa: E731
    assert acc(b) > acc(a) - 0.1, (acc(a), acc(b))
