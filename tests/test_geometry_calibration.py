"""Geometry you can trust on anyone's data (issue 12): values marked file / user / fitted /
assumed, command-line overrides, models trained on plain .npy scans (no metadata, 256 and 512 px)
that apply to scans of the same kind, refusals that say which values were assumed, and a
2x2-binned scan classified by the unbinned model once its pixel size is given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_sedclassify.cli import main
from napari_sedclassify.geometry import Geometry
from napari_sedclassify.io import open_scan

SHAPE = (16, 16)


def _plain_scans(folder: Path, detector_px: int, n: int = 3, binned: bool = False):
    """Simulated scans saved as bare .npy arrays (no sidecar: nothing says the geometry), their
    true class maps, and for 512 px their 2x2-binned copies."""
    from napari_sedclassify.simulate import simulate_scan

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in range(n):
        sim = simulate_scan(None, scan_shape=SHAPE, detector_px=detector_px, session="A", seed=seed)
        data = np.asarray(sim.scan.data)
        scan = folder / f"plain{detector_px}_{seed}.npy"
        labels = folder / f"labels{detector_px}_{seed}.npy"
        np.save(scan, data)
        np.save(labels, sim.truth.astype(np.uint8))
        entry = {"scan": scan, "labels": labels}
        if binned:
            k = detector_px // 2
            entry["binned"] = folder / f"binned{k}_{seed}.npy"
            np.save(entry["binned"], data.reshape(SHAPE + (k, 2, k, 2)).sum(axis=(3, 5)).astype(np.uint32))
        out.append(entry)
    return out


@pytest.fixture(scope="module")
def plain256(tmp_path_factory):
    return _plain_scans(tmp_path_factory.mktemp("plain256"), 256)


@pytest.fixture(scope="module")
def plain512(tmp_path_factory):
    return _plain_scans(tmp_path_factory.mktemp("plain512"), 512, binned=True)


def _weighted_f1(capsys, args) -> float:
    capsys.readouterr()
    assert main(["evaluate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)["pooled"]["weighted"]["f1"]


# ---- values and where they came from -----------------------------------------------------------


def test_origins_round_trip_and_overrides():
    g = Geometry(detector_shape=(256, 256))
    assert g.assumed() == ["pixel_size_um", "camera_length_mm", "voltage_kv"]
    assert g.origin("scan_step_nm") == "unknown"
    g2 = g.with_values("user", pixel_size_um=110, scan_step_nm=30).with_values("fitted", camera_length_mm=871.5)
    assert (g2.origin("pixel_size_um"), g2.origin("camera_length_mm"), g2.origin("scan_step_nm")) == \
        ("user", "fitted", "user")
    back = Geometry.from_dict(json.loads(json.dumps(g2.to_dict())))
    assert back == g2 and back.origins == g2.origins
    assert "camera length 871.5 mm (fitted)" in g2.describe() and "voltage 200 kV (assumed)" in g2.describe()
    # a geometry dict from before origins existed: its stated values came from a file
    legacy = {"detector_shape": [512, 512], "pixel_size_um": 55.0, "camera_length_mm": 900.0, "voltage_kv": 200.0}
    assert Geometry.from_dict(legacy).assumed() == []
    with pytest.raises(ValueError, match="camera length must be a positive number"):
        g.with_values("user", camera_length_mm=-3)


def test_info_says_where_each_value_came_from(plain256, capsys):
    path = str(plain256[0]["scan"])
    assert main(["info", path, "--json"]) == 0
    origins = json.loads(capsys.readouterr().out)["geometry"]["origins"]
    assert origins == {"pixel_size_um": "assumed", "camera_length_mm": "assumed", "voltage_kv": "assumed"}
    assert main(["info", path, "--camera-length", "1200", "--pixel-size", "110", "--scan-step", "25"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("geometry"))
    assert "pixel 110 µm (user)" in line and "camera length 1200 mm (user)" in line
    assert "voltage 200 kV (assumed)" in line and "scan step 25 nm (user)" in line


def test_real_merlin_file_states_only_its_pixel(realdata):
    scan = open_scan(realdata / "merlin" / "001_4x2_6bit.mib")
    assert scan.geometry.origin("pixel_size_um") == "file"
    assert scan.geometry.assumed() == ["camera_length_mm", "voltage_kv"]
    scan = open_scan(realdata / "merlin" / "001_4x2_6bit.mib", geometry={"voltage_kv": 300})
    assert scan.geometry.voltage_kv == 300 and scan.geometry.origin("voltage_kv") == "user"


def test_calibration_sidecar_is_picked_up_and_user_wins(plain256):
    from napari_sedclassify.io.sidecar import calibration_path, write_calibration

    path = plain256[1]["scan"]
    side = write_calibration(path, {"camera_length_mm": 912.3}, {"camera_length_sd_mm": 2.1})
    try:
        assert side == calibration_path(path) and side.is_file()
        g = open_scan(path).geometry
        assert g.camera_length_mm == pytest.approx(912.3) and g.origin("camera_length_mm") == "fitted"
        g = open_scan(path, geometry={"camera_length_mm": 880}).geometry
        assert g.camera_length_mm == 880 and g.origin("camera_length_mm") == "user"
    finally:
        side.unlink()


# ---- models on plain .npy scans ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fcnn", "svm"])
@pytest.mark.parametrize("size", [256, 512])
def test_no_metadata_train_evaluate_predict(size, kind, plain256, plain512, tmp_path, capsys):
    scans = plain256 if size == 256 else plain512
    model = tmp_path / f"{kind}.sedmodel"
    assert main(["train", "--scans", str(scans[0]["scan"]), str(scans[1]["scan"]),
                 "--labels", str(scans[0]["labels"]), str(scans[1]["labels"]),
                 "--model", kind, "--out", str(model)]) == 0
    f1 = _weighted_f1(capsys, [str(model), "--scans", str(scans[2]["scan"]), "--labels", str(scans[2]["labels"])])
    assert f1 > 0.85
    assert main(["predict", str(model), str(scans[2]["scan"]), "--out", str(tmp_path / "pred")]) == 0
    classes = np.load(tmp_path / "pred" / f"{scans[2]['scan'].stem}_classes.npy")
    truth = np.load(scans[2]["labels"])
    assert classes.shape == SHAPE and np.mean(classes == truth) > 0.85
    # the model records the q range its training detectors reach, never more
    from napari_sedclassify.models.persistence import load_model

    m = load_model(model)
    reach_q = Geometry(detector_shape=(size, size)).radius_px_to_q_invA(size / 2)
    assert m.recipe.q_max_invA <= reach_q + 1e-9
    assert m.geometry.assumed() == ["pixel_size_um", "camera_length_mm", "voltage_kv"]


def test_cnn_no_metadata_train_evaluate_predict(plain256, plain512, tmp_path):
    """The CNN the same way, through the command in a child process (TensorFlow stays out of the
    test process, which also hosts napari viewers)."""
    exe = Path(sys.executable).with_name("sedclassify")
    for size, scans in ((256, plain256), (512, plain512)):
        model = tmp_path / f"cnn{size}.sedmodel"
        steps = [  # (evaluate applies the model as predict does: its score is computed here from predict's map)
            ["train", "--scans", scans[0]["scan"], scans[1]["scan"], "--labels", scans[0]["labels"],
             scans[1]["labels"], "--model", "cnn", "--epochs", "3", "--out", model],
            ["predict", model, scans[2]["scan"], "--out", tmp_path / f"pred{size}"],
        ]
        for step in steps:
            r = subprocess.run([str(exe), *map(str, step)], capture_output=True, text=True, timeout=600,
                               env={**os.environ, "MPLBACKEND": "Agg"})
            assert r.returncode == 0, r.stderr[-2000:]
        from sklearn.metrics import f1_score

        predicted = np.load(tmp_path / f"pred{size}" / f"{scans[2]['scan'].stem}_classes.npy")
        truth = np.load(scans[2]["labels"])
        assert predicted.shape == SHAPE
        labeled = truth > 0
        assert f1_score(truth[labeled], predicted[labeled], average="weighted") > 0.6


def test_model_from_assumed_256_refused_on_512_with_the_reason(plain256, plain512, tmp_path, capsys):
    model = tmp_path / "m256.sedmodel"
    assert main(["train", "--scans", str(plain256[0]["scan"]), "--labels", str(plain256[0]["labels"]),
                 "--model", "svm", "--out", str(model)]) == 0
    capsys.readouterr()
    assert main(["predict", str(model), str(plain512[2]["scan"]), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "pixel 55 µm (assumed)" in err and "--pixel-size" in err and "512x512" in err
    assert not (tmp_path / "p" / f"{plain512[2]['scan'].stem}_classes.npy").exists()
    # training on both kinds at once is refused the same way, before any work
    assert main(["train", "--scans", str(plain256[0]["scan"]), str(plain512[0]["scan"]),
                 "--labels", str(plain256[0]["labels"]), str(plain512[0]["labels"]),
                 "--model", "svm", "--out", str(tmp_path / "mixed.sedmodel")]) == 2
    assert "q axes cannot be matched" in capsys.readouterr().err


def test_binned_scan_classified_by_the_unbinned_model(plain512, tmp_path, capsys):
    model = tmp_path / "m512.sedmodel"
    assert main(["train", "--scans", str(plain512[0]["scan"]), str(plain512[1]["scan"]),
                 "--labels", str(plain512[0]["labels"]), str(plain512[1]["labels"]),
                 "--model", "fcnn", "--pixel-size", "55", "--out", str(model)]) == 0
    labels = str(plain512[2]["labels"])
    f1 = _weighted_f1(capsys, [str(model), "--scans", str(plain512[2]["scan"]), "--labels", labels,
                               "--pixel-size", "55"])
    f1_binned = _weighted_f1(capsys, [str(model), "--scans", str(plain512[2]["binned"]), "--labels", labels,
                                      "--pixel-size", "110"])
    assert f1 > 0.85 and abs(f1_binned - f1) <= 0.03, (f1, f1_binned)
    # without the pixel size the binned scan is refused, naming the assumed value
    assert main(["evaluate", str(model), "--scans", str(plain512[2]["binned"]), "--labels", labels]) == 2
    assert "pixel 55 µm (assumed)" in capsys.readouterr().err
