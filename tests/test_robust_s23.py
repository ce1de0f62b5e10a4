"""`sedclassify train --session-robust` on the scans of one session keeps working on sessions with a
third of the dose or 2.5x thicker ice (session 23). Before, its SVM put most of their amorphous ice
in the mixed or carbon class (amorphous-ice F1 0.45 and 0.17; the ice-agreement check warned): the
normalised profiles of those sessions have their ring valleys filled by counts that do not scale with
the dose (stray counts, plural scattering of thick ice), which the recipe's augmentation never drew.
Its flat-background augmentation draws them; on the training session nothing changes. And its SVM
called most carbon of a session with thinner ice over the carbon film crystalline ice, silently: its
ice-layer augmentation adds or removes part of the scan's ice end. Session 23 added both behind
--one-session, after the leave-one-session-out benchmark's thin-ice session fell 0.84 -> 0.66 with them;
that benchmark had cut its profiles short (session 24), and measured again they move no held-out
session by more than 0.002 (SVM, three seeds), so --session-robust has them now and --one-session is
only accepted."""

from __future__ import annotations

import numpy as np
import pytest

SHAPE = (24, 24)
PX = 128
CARBON, AMORPHOUS = 1, 2


def _scan(folder, name, seed, **grid):
    from napari_sedclassify.simulate import session_grid, simulate_scan

    return simulate_scan(folder / f"{name}.npy", scan_shape=SHAPE, detector_px=PX, session=session_grid("A", **grid)[0],
                         seed=seed)


def _train(folder, sims, name, *options):
    from napari_sedclassify.cli import main

    out = folder / f"{name}.sedmodel"
    code = main(["train", "--scans", *[str(s.scan.source) for s in sims],
                 "--labels", *[str(s.scan.source).replace(".npy", "_truth.npy") for s in sims],
                 "--flatfield", *[str(s.flatfield_path) for s in sims], "--model", "svm", "-o", str(out), *options])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def one_session(tmp_path_factory):
    folder = tmp_path_factory.mktemp("robust")
    train = [_scan(folder, "train_1", 1), _scan(folder, "train_2", 2)]
    return {"plain": _train(folder, train, "plain"), "robust": _train(folder, train, "robust", "--session-robust"),
            "same session": _scan(folder, "same", 11), "ice 2.5x": _scan(folder, "thick", 13, ice=(2.5,)),
            "dose 0.3x": _scan(folder, "low_dose", 14, dose=(0.3,)), "ice 0.6x": _scan(folder, "thin", 12, ice=(0.6,))}


def _class_map(model, sim):
    from napari_sedclassify.pipeline.predict import predict_scan

    pred = predict_scan(str(model), sim.scan.source, flatfield=str(sim.flatfield_path))
    return np.ravel(pred.class_map), pred.warnings


def _predict(model, sim):
    from sklearn.metrics import f1_score

    class_map, warnings = _class_map(model, sim)
    return f1_score(np.ravel(sim.truth) == AMORPHOUS, class_map == AMORPHOUS), warnings


@pytest.mark.parametrize("session", ["ice 2.5x", "dose 0.3x"])
def test_a_one_session_robust_svm_holds_on_thick_ice_and_low_dose(one_session, session):
    plain_f1, plain_warnings = _predict(one_session["plain"], one_session[session])
    robust_f1, robust_warnings = _predict(one_session["robust"], one_session[session])
    assert plain_f1 < 0.6 and plain_warnings  # the plain model fails there, and says so
    assert robust_f1 > 0.75 and robust_f1 > plain_f1 + 0.3, (plain_f1, robust_f1)
    assert robust_warnings == [], robust_warnings  # its ice agrees with the scan's 3.7 Å ring


def test_the_robust_svm_loses_nothing_on_its_training_session(one_session):
    plain_f1, _ = _predict(one_session["plain"], one_session["same session"])
    robust_f1, warnings = _predict(one_session["robust"], one_session["same session"])
    assert robust_f1 >= plain_f1 - 0.02, (plain_f1, robust_f1)
    assert warnings == []


def test_carbon_under_thinner_ice_stays_carbon(one_session):
    """The training scans' carbon film carries its ice layer's 3.7 Å ring; a scan with 0.6x the ice
    has much less of it, and the plain SVM called that carbon crystalline ice."""
    sim = one_session["ice 0.6x"]
    carbon = np.ravel(sim.truth) == CARBON
    plain, _ = _class_map(one_session["plain"], sim)
    robust, _ = _class_map(one_session["robust"], sim)
    assert (robust[carbon] == CARBON).mean() > 0.9
    assert (robust[carbon] == CARBON).mean() > (plain[carbon] == CARBON).mean() + 0.3


def test_ice_layer_augmentation_adds_part_of_the_scan_ice_end():
    from napari_sedclassify.geometry import Geometry
    from napari_sedclassify.models.features import Augmentation, FeatureRecipe, ria_features, session_robust_recipe

    geom = Geometry(detector_shape=(256, 256), pixel_size_um=110.0, camera_length_mm=900.0, voltage_kv=200.0)
    radii = np.arange(181) + 0.5
    carbon = np.exp(-0.5 * ((radii - geom.q_invA_to_radius_px(0.47)) / 3.0) ** 2) + 0.1
    ice = np.exp(-0.5 * ((radii - geom.q_invA_to_radius_px(0.27)) / 3.0) ** 2) + 0.1
    recipe = FeatureRecipe(scan_context=6, context_reference="ends", normalise=False)
    plain = recipe.replace(scan_context=0)
    reference = np.stack([ria_features(p[None], radii, plain, geom)[0] for p in (carbon, ice)])
    base = {"scale": np.ones(3), "jitter": np.zeros(3), "angle": np.zeros(3), "intensity": np.ones(3)}
    layer = np.array([0.0, 0.2, -0.2])
    out = ria_features(np.stack([carbon] * 3), radii, recipe, geom, dict(base, ice_layer=layer),
                       reference=reference)[:, :recipe.n_bins]
    np.testing.assert_allclose(out[1] - out[0], 0.2 * reference[1], atol=1e-5)  # more ice over the film
    assert (out[2] >= 0.1 * out[0] - 1e-6).all() and (out[2] < out[0]).any()  # less, never below a tenth
    d = Augmentation(ice_layer=0.3).draw(2000, np.random.default_rng(0))
    assert d["ice_layer"].min() < 0 < d["ice_layer"].max() and np.abs(d["ice_layer"]).max() <= 0.3
    assert "ice_layer" not in Augmentation().draw(3, np.random.default_rng(0))
    assert session_robust_recipe().augmentation.ice_layer > 0
    assert session_robust_recipe(context_reference="median").augmentation.ice_layer == 0  # no ice end to add from
    assert session_robust_recipe(background_and_ice_layer=False).augmentation.ice_layer == 0
    with pytest.raises(ValueError, match="ice_layer"):
        FeatureRecipe(augmentation=Augmentation(ice_layer=0.2))


def test_flat_background_augmentation_fills_the_valleys_between_rings():
    """The augmentation adds a flat level (a drawn fraction of the profile's median) after the scan
    context: the rings' contrast falls, the context against the scan's ends stays; off by default,
    so older recipes draw the same numbers; RIA recipes only."""
    from napari_sedclassify.geometry import Geometry
    from napari_sedclassify.models.features import Augmentation, FeatureRecipe, ria_features, session_robust_recipe

    geom = Geometry(detector_shape=(256, 256), pixel_size_um=110.0, camera_length_mm=900.0, voltage_kv=200.0)
    radii = np.arange(181) + 0.5
    ring = np.exp(-0.5 * ((radii - geom.q_invA_to_radius_px(0.27)) / 3.0) ** 2) + 0.05 * np.exp(-radii / 60)
    ria = np.stack([ring, ring])
    recipe = FeatureRecipe(scan_context=6, context_reference="ends")
    reference = np.stack([ria_features(ria[:1], radii, recipe.replace(normalise=False, scan_context=0), geom)[0]] * 2)
    base = {"scale": np.ones(2), "jitter": np.zeros(2), "angle": np.zeros(2), "intensity": np.ones(2)}
    out = ria_features(ria, radii, recipe, geom, dict(base, background=np.array([0.0, 0.15])), reference=reference)
    profile, context = out[:, :recipe.n_bins], out[:, recipe.n_bins:]
    assert np.ptp(profile[1]) < np.ptp(profile[0])  # the ring stands less above the filled valleys
    assert profile[1].min() > profile[0].min() + 0.1
    np.testing.assert_allclose(context[0], context[1])
    assert "background" not in Augmentation().draw(3, np.random.default_rng(0))
    d = Augmentation(flat_background=0.15).draw(2000, np.random.default_rng(0))
    assert 0 <= d["background"].min() and d["background"].max() <= 0.15
    np.testing.assert_allclose(Augmentation().draw(5, np.random.default_rng(3))["intensity"],
                               Augmentation(flat_background=0.15).draw(5, np.random.default_rng(3))["intensity"])
    assert session_robust_recipe().augmentation.flat_background > 0
    assert session_robust_recipe(background_and_ice_layer=False).augmentation.flat_background == 0
    with pytest.raises(ValueError, match="flat_background"):
        FeatureRecipe(kind="crop", augmentation=Augmentation(flat_background=0.1))


@pytest.mark.parametrize("options, said", [
    (["--one-session"], "--one-session goes with --session-robust"),
    (["--model", "cnn", "--session-robust", "--one-session"], "--one-session applies to fcnn and svm"),
])
def test_one_session_is_refused_where_it_would_do_nothing(one_session, tmp_path, capsys, options, said):
    from napari_sedclassify.cli import main

    sim = one_session["same session"]
    argv = ["train", "--scans", str(sim.scan.source), "--labels", str(sim.scan.source).replace(".npy", "_truth.npy"),
            "-o", str(tmp_path / "m.sedmodel"), *options]
    assert main(argv) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "m.sedmodel").exists()


def test_one_session_is_still_accepted_and_trains_the_same_recipe(one_session, tmp_path):
    """Scripts written for session 23 keep working: --one-session beside --session-robust is accepted
    and gives the model --session-robust gives (the same recipe in the model file)."""
    import json
    import zipfile

    sim = one_session["same session"]
    alias = _train(tmp_path, [sim], "alias", "--session-robust", "--one-session", "--ensemble", "1")
    plain = _train(tmp_path, [sim], "plain", "--session-robust", "--ensemble", "1")

    def recipe(path):
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read("model.json"))["recipe"]

    assert recipe(alias) == recipe(plain)
    assert recipe(plain)["augmentation"]["flat_background"] > 0
