"""FCNN and SVM model files are applied from plain arrays with numpy (models/arrays.py): the same
probabilities as scikit-learn's pipeline on simulated scans, for every form the estimators take
(calibrated or not, two or four classes, ensembles), and `sedclassify predict` with such a file
imports neither scikit-learn nor skops."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest

from models_helpers import predict_in_fresh_process, tiny_features, tiny_simulated, write_tiny_scans


@pytest.fixture(scope="module")
def ria():
    """RIA features and labels of three simulated scans (two to train, one held out)."""
    from napari_sedclassify.pipeline.train import default_recipe

    sims = tiny_simulated([0, 1, 2])
    feats = tiny_features(sims, kinds=("fcnn",))
    recipe = default_recipe("fcnn")
    out = []
    for f, sim in zip(feats, sims):
        X, y = f.inputs(recipe), sim.truth.ravel()
        keep = (y > 0) & np.isfinite(X).all(axis=1)
        out.append((X[keep], y[keep]))
    return out


def _estimators(ria, classes):
    from napari_sedclassify.models._common import soft_vote
    from napari_sedclassify.models.fcnn import FCNNClassifier
    from napari_sedclassify.models.svm import SVMClassifier

    (X0, y0), (X1, y1), _ = ria
    if classes == 2:  # amorphous ice against the rest
        y0, y1 = np.where(y0 == 2, 2, 1), np.where(y1 == 2, 2, 1)
    val = (X1, y1)
    yield "fcnn", FCNNClassifier(max_epochs=20).fit(X0, y0, validation_data=val)
    yield "fcnn, raw softmax", FCNNClassifier(max_epochs=20, calibration=None).fit(X0, y0)
    yield "fcnn, lbfgs", FCNNClassifier(solver="lbfgs", max_epochs=60).fit(X0, y0, validation_data=val)
    yield "svm", SVMClassifier().fit(X0, y0, validation_data=val)
    yield "svm, 3-fold calibration", SVMClassifier().fit(X0, y0)
    yield "fcnn ensemble", soft_vote([FCNNClassifier(max_epochs=10, random_state=s).fit(X0, y0, validation_data=val)
                                      for s in range(3)], y0)
    yield "svm ensemble", soft_vote([SVMClassifier(random_state=s, C=c).fit(X0, y0, validation_data=val)
                                     for s, c in ((0, 3.0), (1, 30.0))], y0)


@pytest.mark.parametrize("classes", [4, 2])
def test_the_arrays_give_scikit_learns_probabilities(ria, classes):
    from napari_sedclassify.models.arrays import ArrayPipeline, from_bytes, to_bytes
    from napari_sedclassify.models.arrays_export import probe_inputs, to_arrays

    X_held_out = ria[2][0]
    for name, est in _estimators(ria, classes):
        description, arrays = to_arrays(est.pipeline_)
        # what a file holds: JSON and an npz
        pipeline = ArrayPipeline(json.loads(json.dumps(description)), from_bytes(to_bytes(arrays)))
        X = np.concatenate([X_held_out, probe_inputs(description, arrays, n=64)])
        expected = est.pipeline_.predict_proba(X)
        got = pipeline.predict_proba(X)
        assert got.shape == expected.shape == (len(X), classes), name
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=name)
        assert (got.argmax(1) == expected.argmax(1)).all(), name
        assert len(np.unique(expected.argmax(1))) > 1, name  # a model that tells classes apart


def test_a_pipeline_the_arrays_cannot_read_is_saved_and_applied_through_scikit_learn(ria, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from napari_sedclassify.models.arrays import ArrayClassifier, UnsupportedEstimator
    from napari_sedclassify.models.arrays_export import to_arrays
    from napari_sedclassify.models.fcnn import FCNNClassifier
    from napari_sedclassify.models.persistence import SedModel, load_model, save_model
    from napari_sedclassify.classes import ClassTable
    from napari_sedclassify.geometry import Geometry
    from napari_sedclassify.pipeline.train import default_recipe

    (X0, y0), _, (X2, _) = ria
    est = FCNNClassifier().set_params(max_epochs=1)
    est.classes_ = np.unique(y0)
    est.pipeline_ = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=500))]).fit(X0, y0)
    with pytest.raises(UnsupportedEstimator, match="LogisticRegression"):
        to_arrays(est.pipeline_)
    model = SedModel(kind="fcnn", estimator=est, recipe=default_recipe("fcnn"), preprocess={},
                     classes=ClassTable.default(), geometry=Geometry(detector_shape=(128, 128)))
    path = save_model(model, tmp_path / "lr.sedmodel")
    assert set(zipfile.ZipFile(path).namelist()) == {"model.json", "estimator.skops"}
    loaded = load_model(path)
    assert not isinstance(loaded.estimator, ArrayClassifier)
    np.testing.assert_array_equal(loaded.predict_proba(X2), est.predict_proba(X2))


def test_a_loaded_model_saved_again_keeps_both_forms(ria, tmp_path):
    from napari_sedclassify.models.arrays import ArrayClassifier
    from napari_sedclassify.models.persistence import load_model, save_model
    from napari_sedclassify.models.training import train
    from napari_sedclassify.pipeline.train import default_recipe

    feats = tiny_features(tiny_simulated([0, 1]), kinds=("fcnn",))
    truths = [s.truth for s in tiny_simulated([0, 1])]
    model = train(feats, truths, kind="svm", holdout=[1], seed=0, recipe=default_recipe("fcnn"))
    first = save_model(model, tmp_path / "first.sedmodel")
    again = save_model(load_model(first), tmp_path / "again.sedmodel")
    a, b = load_model(first), load_model(again)
    assert isinstance(b.estimator, ArrayClassifier)
    X = ria[2][0]
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    with zipfile.ZipFile(first) as za, zipfile.ZipFile(again) as zb:
        assert za.read("estimator.skops") == zb.read("estimator.skops")
    np.testing.assert_array_equal(load_model(again, native=True).predict_proba(X),
                                  model.estimator.predict_proba(X))


def test_predict_with_an_fcnn_file_imports_neither_scikit_learn_nor_skops(tmp_path):
    """In a fresh process, as `sedclassify predict` runs: the model is applied from its arrays."""
    from napari_sedclassify.cli import main

    (scan0, truth0, flat), (scan1, truth1, _) = write_tiny_scans(tmp_path, [0, 1])
    model = tmp_path / "m.sedmodel"
    assert main(["train", "--scans", str(scan0), str(scan1), "--labels", str(truth0), str(truth1), "--model", "fcnn",
                 "--epochs", "5", "--out", str(model)]) == 0
    assert predict_in_fresh_process(model, scan1, tmp_path / "pred", watch={"sklearn", "skops"}) == (0, [])
    classes, truth = np.load(tmp_path / "pred" / f"{scan1.stem}_classes.npy"), np.load(truth1)
    assert classes.shape == truth.shape
    assert set(np.unique(classes)) <= {1, 2, 3, 4} and len(np.unique(classes)) > 1
    assert np.mean(classes[truth > 0] == truth[truth > 0]) > 0.6  # a scan it was trained on


def test_damaged_arrays_are_refused_with_the_file_named(ria, tmp_path):
    import io

    from napari_sedclassify.errors import ModelFileError
    from napari_sedclassify.models.fcnn import FCNNClassifier
    from napari_sedclassify.models.persistence import SedModel, load_model, save_model
    from napari_sedclassify.classes import ClassTable
    from napari_sedclassify.geometry import Geometry
    from napari_sedclassify.pipeline.train import default_recipe

    (X0, y0), (X1, y1), _ = ria
    est = FCNNClassifier(max_epochs=5).fit(X0, y0, validation_data=(X1, y1))
    model = SedModel(kind="fcnn", estimator=est, recipe=default_recipe("fcnn"), preprocess={},
                     classes=ClassTable.default(), geometry=Geometry(detector_shape=(128, 128)))
    good = save_model(model, tmp_path / "good.sedmodel")
    with zipfile.ZipFile(good) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    arrays = dict(np.load(io.BytesIO(members["estimator.npz"])))
    first_weights = re.search(r'"coefs": \[\s*"(a\d+)"', members["model.json"].decode()).group(1)
    arrays[first_weights] = arrays[first_weights][:, :-1]  # one hidden unit short of its bias
    buf = io.BytesIO()
    np.savez(buf, **arrays)

    def write(name, **replace):
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            for member, data in {**members, **replace}.items():
                if data is not None:
                    zf.writestr(member, data)
        return tmp_path / name

    with pytest.raises(ModelFileError, match=r"cut.sedmodel: the estimator's arrays .* cannot be applied .*mlp"):
        load_model(write("cut.sedmodel", **{"estimator.npz": buf.getvalue()}))
    with pytest.raises(ModelFileError, match=r"no_npz.sedmodel: the model file has no estimator.npz"):
        load_model(write("no_npz.sedmodel", **{"estimator.npz": None}))
    with pytest.raises(ModelFileError, match=r"junk_npz.sedmodel: the estimator's arrays .* cannot be read"):
        load_model(write("junk_npz.sedmodel", **{"estimator.npz": b"not an npz"}))


def test_a_description_naming_missing_arrays_is_refused(ria):
    """Every array a step names is checked when the arrays are loaded, a calibrator's and a
    network layer's too, not found missing in the middle of a prediction."""
    from napari_sedclassify.models.arrays import ArrayPipeline, UnsupportedEstimator
    from napari_sedclassify.models.arrays_export import to_arrays
    from napari_sedclassify.models.svm import SVMClassifier

    (X0, y0), (X1, y1), _ = ria
    description, arrays = to_arrays(SVMClassifier().fit(X0, y0, validation_data=(X1, y1)).pipeline_)
    ArrayPipeline(description, arrays)  # whole: accepted
    calibrator = re.search(r"'a': '(a\d+)'", str(description)).group(1)
    with pytest.raises(UnsupportedEstimator, match=f"calibrated names an array '{calibrator}'"):
        ArrayPipeline(description, {k: v for k, v in arrays.items() if k != calibrator})
    network = {"type": "network", "steps": [{"type": "flatten"}, {"type": "dense", "kernel": "k", "bias": "b"}]}
    with pytest.raises(UnsupportedEstimator, match="dense names an array 'k'"):
        ArrayPipeline(network, {"b": np.zeros(3, np.float32)})
    with pytest.raises(UnsupportedEstimator, match="unknown step"):
        ArrayPipeline({"type": "network", "steps": [{"type": "lambda"}]}, {})
