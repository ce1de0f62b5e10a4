"""The built-in model shipped inside the package (issue 17): it loads safely, states its training
domain, refuses scans outside it, and classifies a fresh simulated scan of a session it never saw,
from the command line, with no labels and no training."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from napari_sedclassify.errors import IncompatibleModelError
from napari_sedclassify.geometry import Geometry
from napari_sedclassify.models.persistence import (
    BUILTIN,
    TRUSTED_TYPES,
    builtin_model_path,
    load_model,
    read_metadata,
)

#: A session none of the training sessions has (scripts/train_builtin.py draws those with seed
#: 17017): convergence 0.5 mrad, ice 1.4x, dose 0.7x, true camera length 4 % short of the nominal
#: 900 mm the file states, descan 1.2x, its own gain map and alignment.
UNSEEN = dict(convergence=(0.5,), ice=(1.4,), dose=(0.7,), camera=(0.96,), descan=(1.2,))


def _geometry(**kw):
    base = dict(detector_shape=(256, 256), pixel_size_um=110.0, camera_length_mm=900.0, voltage_kv=200.0)
    base.update(kw)
    return Geometry(**base)


def test_the_builtin_model_is_small_safe_and_states_its_domain():
    import skops.io as sio

    path = builtin_model_path()
    assert path.exists(), "run scripts/train_builtin.py"
    assert path.stat().st_size < 400_000  # a few hundred kB at most
    with zipfile.ZipFile(path) as zf:
        data = zf.read("estimator.skops")
    assert set(sio.get_untrusted_types(data=data)) <= set(TRUSTED_TYPES)  # nothing outside the reviewed list
    meta = read_metadata(BUILTIN)
    assert meta["kind"] in ("fcnn", "svm")
    domain = meta["domain"]
    assert domain["q_range_invA"] == [0.06, 0.3] and domain["voltage_kv"] == [200.0, 200.0]
    assert "description" in domain and domain["training_sessions"] >= 10
    model = load_model("builtin")
    assert model.recipe.kind == "ria" and model.recipe.axis == "q" and model.recipe.q_max_invA <= 0.3 + 1e-9
    assert "built-in" in model.name
    assert load_model("BuiltIn").recipe == model.recipe


def test_the_builtin_model_refuses_scans_outside_its_domain():
    model = load_model(BUILTIN)
    model.check_geometry(_geometry().marked("file"))  # a simulated 256 px scan: inside
    model.check_geometry(_geometry(detector_shape=(256, 256), pixel_size_um=55.0).marked("user"))  # one Medipix chip
    with pytest.raises(IncompatibleModelError, match="camera length is assumed.*calibrate"):
        model.check_geometry(_geometry().marked("file", "pixel_size_um", "voltage_kv"))
    with pytest.raises(IncompatibleModelError, match="300 kV"):
        model.check_geometry(_geometry(voltage_kv=300.0).marked("file"))
    with pytest.raises(IncompatibleModelError, match="q up to 0.3"):  # a 128 px chip of 55 µm reaches 0.16 Å⁻¹
        model.check_geometry(_geometry(detector_shape=(128, 128), pixel_size_um=55.0).marked("file"))
    with pytest.raises(IncompatibleModelError, match="radial sampling"):
        model.check_geometry(_geometry(camera_length_mm=4000.0, detector_shape=(512, 512), pixel_size_um=55.0)
                             .marked("file"))
    with pytest.raises(IncompatibleModelError, match="detector has 1024x1024"):
        model.check_geometry(_geometry(detector_shape=(1024, 1024), pixel_size_um=27.5).marked("file"))


def test_predict_builtin_classifies_a_scan_of_an_unseen_session(tmp_path, capsys):
    from napari_sedclassify.cli import main
    from napari_sedclassify.models.metrics import evaluate
    from napari_sedclassify.simulate import session_grid, simulate_scan
    from napari_sedclassify.simulate.simulation import flatfield_name

    (session,) = session_grid("A", **UNSEEN)
    path = tmp_path / "unseen.npy"
    sim = simulate_scan(path, scan_shape=(20, 20), detector_px=128, session=session, seed=4242)
    out = tmp_path / "pred"
    code = main(["predict", "builtin", str(path), "--flatfield", str(tmp_path / flatfield_name(session.name)),
                 "--out", str(out), "--uncertain-below", "0.0"])
    err = capsys.readouterr().err
    assert code == 0, err
    class_map = np.load(out / "unseen_classes.npy")
    assert (class_map > 0).mean() > 0.98
    m = evaluate(sim.truth, class_map)
    assert m["per_class"]["amorphous_ice"]["f1"] >= 0.9, m["per_class"]
    assert m["weighted"]["f1"] >= 0.85, m["weighted"]
    assert not np.load(out / "unseen_uncertain.npy").any()  # threshold 0: nothing is uncertain


def test_builtin_name_in_evaluate_and_missing_model_messages(tmp_path, capsys):
    from napari_sedclassify.cli import main

    code = main(["predict", str(tmp_path / "nothing.sedmodel"), str(tmp_path / "x.npy"), "--out", str(tmp_path)])
    assert code == 2 and "no such file" in capsys.readouterr().err
