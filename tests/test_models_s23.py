"""Model portability and label-free classification, as a microscopist meets them: model files
damaged by hand, refusals that say what to change, and proposals of one class."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest

from models_helpers import write_tiny_scans
from napari_sedclassify.geometry import Geometry
from napari_sedclassify.models.features import FeatureRecipe
from napari_sedclassify.models.persistence import SedModel

# A 256 px Timepix-like detector (55 µm) at 450 mm, and a 192 px detector of 100 µm pixels at 1100 mm
# (an ARINA-like chip): same voltage, a q axis that the smaller frame does not reach as far.
TIMEPIX = Geometry(detector_shape=(256, 256), pixel_size_um=55.0, camera_length_mm=450.0).marked("file")
ARINA = Geometry(detector_shape=(192, 192), pixel_size_um=100.0, camera_length_mm=1100.0).marked("file")


def _card(kind, recipe, geometry):
    """A model card (what model.json holds; no estimator) trained on ``geometry``."""
    from napari_sedclassify.classes import ClassTable

    return SedModel(kind=kind, estimator=None, recipe=recipe, preprocess={}, classes=ClassTable.default(),
                    geometry=geometry, source="m.sedmodel")


def _refusal(card, geometry) -> str:
    from napari_sedclassify.errors import IncompatibleModelError

    with pytest.raises(IncompatibleModelError) as info:
        card.check_geometry(geometry, "scan.npy")
    message = str(info.value)
    assert "\n" not in message and "m.sedmodel" in message and "scan.npy" in message
    return message


def test_cnn_crop_refusal_names_the_detector_and_a_crop_radius_that_fits():
    recipe = FeatureRecipe(kind="crop")  # the default 2.7 Å crop
    message = _refusal(_card("cnn", recipe, TIMEPIX), ARINA)
    assert "192x192 px" in message and "pixel 100 µm" in message and "camera length 1100 mm" in message
    radius = float(re.search(r"--crop-radius-A ([\d.]+) or more", message).group(1))
    # the crop radius it names is one a CNN trained on the first detector applies with on the other
    fitted = FeatureRecipe(kind="crop", crop_radius_A=radius)
    _card("cnn", fitted, TIMEPIX).check_geometry(ARINA, "scan.npy")
    _card("cnn", fitted, ARINA).check_geometry(TIMEPIX, "scan.npy")
    # the other way round: the small detector cut the model's crops short; the same radius fits both
    message = _refusal(_card("cnn", recipe, ARINA), TIMEPIX)
    assert "training detector (192x192 px) cut its crops short" in message
    assert float(re.search(r"--crop-radius-A ([\d.]+) or more", message).group(1)) == radius


def test_q_range_refusal_says_how_to_train_a_model_this_detector_suits():
    recipe = FeatureRecipe(kind="ria", axis="q").for_geometries([TIMEPIX])
    message = _refusal(_card("svm", recipe, TIMEPIX), ARINA)
    assert "train the model with a scan of this detector among its training scans" in message
    # which is what narrows the q range to what both detectors reach
    both = FeatureRecipe(kind="ria", axis="q").for_geometries([TIMEPIX, ARINA])
    _card("svm", both, TIMEPIX).check_geometry(ARINA, "scan.npy")


@pytest.fixture(scope="module")
def svm_file(tmp_path_factory):
    """A real SVM model file trained on a tiny simulated scan, and a scan to apply it to."""
    from napari_sedclassify.cli import main

    folder = tmp_path_factory.mktemp("svm")
    (scan, truth, flat), (scan2, _t2, _f2) = write_tiny_scans(folder, [0, 1])
    model = folder / "svm.sedmodel"
    assert main(["train", "--scans", str(scan), "--labels", str(truth), "--flatfield", str(flat), "--model", "svm",
                 "--out", str(model)]) == 0
    return model, scan2, flat


def _with_card(src, dst, change):
    """A copy of model file ``src`` whose model.json is ``change(meta)`` (a hand-edited card)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "model.json":
                data = json.dumps(change(json.loads(data)))
            zout.writestr(item, data)
    return dst


def _drop(key):
    return lambda meta: {k: v for k, v in meta.items() if k != key}


@pytest.mark.parametrize("name, change, says", [
    ("no_kind", _drop("kind"), "model.json has no valid kind"),
    ("no_recipe", _drop("recipe"), "model.json has no valid recipe"),
    ("foreign_kind", lambda m: {**m, "kind": "evil"}, "unknown model kind 'evil'"),
    ("bad_geometry", lambda m: {**m, "geometry": {"detector_shape": "x"}}, "model.json cannot be read"),
    ("a_list", lambda m: [1, 2], "not a napari-sedclassify model file"),
])
def test_damaged_model_cards_are_refused_in_one_line_naming_the_file(svm_file, tmp_path, capsys, name, change, says):
    from napari_sedclassify.cli import main
    from napari_sedclassify.errors import ModelFileError
    from napari_sedclassify.models.persistence import load_model

    model, scan, flat = svm_file
    bad = _with_card(model, tmp_path / f"{name}.sedmodel", change)
    with pytest.raises(ModelFileError, match=f"{name}.sedmodel: .*{re.escape(says)}"):
        load_model(bad)
    capsys.readouterr()
    assert main(["predict", str(bad), str(scan), "--flatfield", str(flat), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{name}.sedmodel" in err[0] and says in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _one_material_block(sim, class_id, size=6):
    """The scan of a size x size block of ``sim`` whose points are all ``class_id``, or None."""
    from napari_sedclassify.scan import Scan

    sy, sx = sim.truth.shape
    for y in range(sy - size + 1):
        for x in range(sx - size + 1):
            if (sim.truth[y:y + size, x:x + size] == class_id).all():
                frames = np.asarray(sim.scan.frame_source)[y:y + size, x:x + size]
                return Scan(frames, geometry=sim.scan.geometry)
    return None


def test_a_proposal_of_one_class_says_so():
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.pipeline.propose import propose
    from napari_sedclassify.processing import FlatField
    from napari_sedclassify.simulate import simulate_scan

    sim = simulate_scan(None, scan_shape=(16, 16), detector_px=128, seed=0)
    ff = FlatField.from_flood(sim.flatfield)
    block = _one_material_block(sim, 1)  # carbon film only
    assert block is not None
    prop = propose(preprocess(block, flatfield=ff), block.geometry, source="film.npy")
    assert set(np.unique(prop.class_map)) == {1}  # right: every point is carbon...
    warnings = prop.details.get("warnings", [])
    assert any(w.startswith("film.npy: all 36 frames proposed as carbon") and "two classes" in w for w in warnings)
    # ...and a scan showing more than one material gets no such warning
    whole = propose(preprocess(sim.scan, flatfield=ff), sim.scan.geometry, source="scan.npy")
    assert len(np.unique(whole.class_map[whole.class_map > 0])) > 1
    assert not any("frames proposed as" in w for w in whole.details.get("warnings", []))


def test_propose_refuses_a_detector_that_stops_short_of_the_ice_ring(tmp_path, capsys):
    """A 128 px chip of 55 µm at 900 mm records q up to 0.16 Å⁻¹, not the 3.7 Å ring (0.27 Å⁻¹) the
    clusters are named by: every frame was proposed as carbon from the profile's last bins."""
    from napari_sedclassify.cli import main
    from napari_sedclassify.simulate import SessionParams, simulate_scan

    chip = SessionParams(name="chip", pixel_size_um=13.75, edge_pixel_width=1.0)  # 55 µm at 128 px
    scan = tmp_path / "chip.npy"
    sim = simulate_scan(scan, scan_shape=(8, 8), detector_px=128, session=chip, seed=0)
    assert sim.scan.geometry.radius_px_to_q_invA(64) < 0.2 and len(np.unique(sim.truth)) > 1
    capsys.readouterr()
    assert main(["propose", str(scan), "--flatfield", str(tmp_path / "flatfield_chip.npy"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chip.npy" in err[0] and "amorphous-ice ring at 3.7 Å" in err[0]
    assert "camera length 900 mm (file)" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()  # refused from the geometry, before any frame or folder


def _flipped(src, dst, member, offset):
    """A copy of zip ``src`` with one byte of ``member``'s compressed data altered (a damaged copy)."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + offset] ^= 0x55
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("member", ["model.json", "estimator.npz", "estimator.skops"])
def test_damaged_bytes_inside_a_model_file_are_refused_in_one_line(svm_file, tmp_path, capsys, member):
    from napari_sedclassify.cli import main
    from napari_sedclassify.errors import ModelFileError
    from napari_sedclassify.models.persistence import load_model

    model, scan, flat = svm_file
    for offset in (10, 20, 40):
        bad = _flipped(model, tmp_path / f"flip{offset}.sedmodel", member, offset)
        with pytest.raises(ModelFileError, match=f"flip{offset}.sedmodel: "):
            load_model(bad, native=member == "estimator.skops")
        if member == "estimator.skops":
            continue  # applying the model reads its arrays, not this member
        capsys.readouterr()
        assert main(["predict", str(bad), str(scan), "--flatfield", str(flat), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err  # the arrays load while the scan is preprocessed: its progress first
        assert "Traceback" not in err and err.count("error:") == 1
        assert err.strip().splitlines()[-1].startswith(f"sedclassify predict: error: {bad}: ")


def test_a_folder_given_as_a_model_is_named_in_python_too(tmp_path):
    """The CLI said "a folder, not a model file"; the Python API raised the raw IsADirectoryError."""
    from napari_sedclassify.models.persistence import ModelFileError, load_model

    with pytest.raises(ModelFileError, match=r"a folder, not a model file \(\.sedmodel\)"):
        load_model(tmp_path)
