"""Five gaps a microscopist met in session 22, each closed:

1. `sedclassify calibrate --edge-pixel-width 1` on a Medipix3 quad whose chip-edge pixels are 3
   pitches wide fitted a camera length off by the misplaced pixels and said nothing (preprocess,
   predict and evaluate warned).
2. `sedclassify evaluate` (and predict) never said that the model had seen few labeled frames of
   a class, even for a model file written before training stored its warnings.
3. A file written by `sedclassify reduce --pixel-size 60` read back with the pixel size marked
   "user", as if the person opening it had typed it.
4. An HDF5 flat-field holding several datasets could not be used: --dataset chooses the scan's.
5. Ctrl-C while the console script imported the CLI module (argparse, ~10 ms) printed a traceback.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from dataclasses import replace

import h5py
import numpy as np
import pytest

from models_helpers import write_tiny_scans
from napari_sedclassify.cli import main
from napari_sedclassify.io import open_scan

simulate = pytest.importorskip("napari_sedclassify.simulate")


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- 1. calibrate warns of a chip-edge width the frames contradict ---------------------------------


def test_calibrate_warns_when_the_frames_contradict_the_chip_edge_width(tmp_path, capsys):
    """A 512 px quad whose wide pixels are 3 pitches (as its file says) calibrated with
    --edge-pixel-width 1: one `warning:` line on stderr and the same text in the JSON; left to the
    file's width, no warning."""
    sess = replace(simulate.session_params("A"), edge_pixel_width=3.0)
    sim = simulate.simulate_scan(tmp_path / "quad.npy", scan_shape=(10, 10), detector_px=512, session=sess, seed=6)
    scan, flat = sim.scan.source, sim.flatfield_path
    code, out, err = _run(capsys, "calibrate", scan, "--flatfield", flat, "--edge-pixel-width", "1", "--json")
    assert code == 0, err
    (warning,) = json.loads(out)["warnings"]
    assert warning.startswith(f"{scan}: the chip-edge pixels were taken as 1 pitches wide (given)")
    assert float(re.search(r"the frames show ([0-9.]+)", warning).group(1)) == pytest.approx(3.0, abs=0.1)
    assert f"warning: {warning}" in err.splitlines()
    code, out, err = _run(capsys, "calibrate", scan, "--flatfield", flat)
    assert code == 0, err
    assert "warning:" not in err and "edge pixels 3 pitches (file)" in out
    # no ring found (the simulated grid shows no gold): the error says the width too, the one line
    code, _, err = _run(capsys, "calibrate", scan, "--flatfield", flat, "--edge-pixel-width", "1", "--ring", "gold")
    (line,) = [x for x in err.splitlines() if "error" in x]
    assert code == 2 and "gold rings" in line and line.endswith(f"; and {warning}")


# ---- 2. evaluate and predict name the classes a model saw few frames of -----------------------------


@pytest.fixture(scope="module")
def rare_class_model(tmp_path_factory):
    """An SVM trained on two tiny scans (crystalline ice and mixed: a few frames each), as written
    now and as written before training stored its warnings (no ``training["warnings"]``)."""
    folder = tmp_path_factory.mktemp("rare")
    entries = write_tiny_scans(folder, [0, 1, 2])
    new = folder / "new.sedmodel"
    assert main(["train", "--scans", *[str(e[0]) for e in entries[:2]], "--labels", *[str(e[1]) for e in entries[:2]],
                 "--model", "svm", "--flatfield", str(entries[0][2]), "--out", str(new)]) == 0
    old = folder / "old.sedmodel"
    with zipfile.ZipFile(new) as src, zipfile.ZipFile(old, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "model.json":
                meta = json.loads(data)
                assert meta["training"].pop("warnings")[0].startswith("few labeled frames for ")
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    return new, old, entries


@pytest.mark.parametrize("which", ["old", "new"])
def test_evaluate_and_predict_name_rare_classes_of_the_model(rare_class_model, which, tmp_path, capsys):
    from napari_sedclassify.models.persistence import load_model
    from napari_sedclassify.models.training import MIN_CLASS_FRAMES

    new, old, entries = rare_class_model
    model = new if which == "new" else old
    counts = load_model(model).training["class_counts"]
    rare = [name for name, n in counts.items() if n < MIN_CLASS_FRAMES]
    assert rare
    scan, labels, flat = entries[2]
    code, out, err = _run(capsys, "evaluate", model, "--scans", scan, "--labels", labels, "--flatfield", flat, "--json")
    assert code == 0, err
    said = [w for w in json.loads(out)["warnings"] if w.startswith(f"model {model}: few labeled frames for ")]
    assert len(said) == 1 and all(f"{name} ({counts[name]})" in said[0] for name in rare)
    assert f"warning: {said[0]}" in err.splitlines()
    code, _, err = _run(capsys, "predict", model, scan, "--flatfield", flat, "--out", tmp_path / "pred")
    assert code == 0, err
    assert f"warning: {said[0]}" in err.splitlines()


def test_the_builtin_model_names_no_rare_class():
    """The built-in model saw hundreds of frames of every class: nothing to say on each prediction."""
    from napari_sedclassify.models.persistence import BUILTIN, model_from_metadata, read_metadata
    from napari_sedclassify.models.training import MIN_CLASS_FRAMES, model_file_warnings

    card = model_from_metadata(read_metadata(BUILTIN), BUILTIN)
    assert min(card.training["class_counts"].values()) >= MIN_CLASS_FRAMES
    assert model_file_warnings(card) == []


# ---- 3. values given to reduce read back as the reduced file's -----------------------------------------


def test_values_given_to_reduce_read_back_as_the_files(tmp_path, capsys):
    sim = simulate.simulate_scan(tmp_path / "scan.npy", scan_shape=(8, 8), detector_px=128, seed=1)
    truth = tmp_path / "scan_truth.npy"
    out = tmp_path / "ice.h5"
    code, _, err = _run(capsys, "reduce", sim.scan.source, "--labels", truth, "--pixel-size", "60",
                        "--camera-length", "870", "-o", out)
    assert code == 0, err
    scan = open_scan(out)
    g = scan.geometry
    assert (g.pixel_size_um, g.origin("pixel_size_um")) == (60.0, "file")
    assert (g.camera_length_mm, g.origin("camera_length_mm")) == (870.0, "file")
    assert g.origin("voltage_kv") == "file"  # the input's file stated it
    assert scan.metadata["calibration_given_when_written"] == {"camera_length_mm": 870.0, "pixel_size_um": 60.0}
    code, out_text, _ = _run(capsys, "info", out)
    assert code == 0 and "pixel 60 µm (file)" in out_text and "(user)" not in out_text
    # given now, on the reduced file: the user's
    assert open_scan(out, geometry={"voltage_kv": 300.0}).geometry.origin("voltage_kv") == "user"
    # a scan whose file states nothing: what nobody gave stays assumed
    np.save(tmp_path / "bare.npy", np.asarray(sim.scan.data))
    code, _, err = _run(capsys, "reduce", tmp_path / "bare.npy", "--labels", truth, "--pixel-size", "60",
                        "-o", tmp_path / "bare_ice.h5")
    assert code == 0, err
    bare = open_scan(tmp_path / "bare_ice.h5").geometry
    assert [bare.origin(n) for n in ("pixel_size_um", "camera_length_mm", "voltage_kv")] == ["file", "assumed",
                                                                                             "assumed"]


# ---- 4. the dataset of an HDF5 flat-field -------------------------------------------------------------


@pytest.fixture
def two_dataset_flat(tmp_path):
    """A tiny scan and its session's flood written into an HDF5 file beside a second stack."""
    sim = simulate.simulate_scan(tmp_path / "scan.npy", scan_shape=(8, 8), detector_px=128, seed=2)
    flood = np.load(sim.flatfield_path)
    path = tmp_path / "flat.h5"
    with h5py.File(path, "w") as f:
        f["entry/flood"] = flood
        f["entry/dark"] = np.zeros_like(flood[:4])
    return sim, path


def test_the_flatfield_dataset_is_chosen_and_a_missing_choice_names_them(two_dataset_flat, tmp_path, capsys):
    from napari_sedclassify.pipeline.preprocess import PreprocessResult

    sim, flat = two_dataset_flat
    scan = sim.scan.source
    code, _, err = _run(capsys, "preprocess", scan, "--flatfield", flat, "-o", tmp_path / "none.h5")
    assert code == 2 and not (tmp_path / "none.h5").exists()
    (line,) = err.splitlines()
    assert line.startswith(f"sedclassify preprocess: error: {flat}: the flat-field file holds several datasets")
    assert "--flatfield-dataset" in line and "entry/dark 4x128x128" in line and "entry/flood 20x128x128" in line
    code, _, err = _run(capsys, "preprocess", scan, "--flatfield", flat, "--flatfield-dataset", "/entry/flood",
                        "-o", tmp_path / "h5.h5")
    assert code == 0, err
    code, _, err = _run(capsys, "preprocess", scan, "--flatfield", sim.flatfield_path, "-o", tmp_path / "npy.h5")
    assert code == 0, err
    chosen, plain = PreprocessResult.load(tmp_path / "h5.h5"), PreprocessResult.load(tmp_path / "npy.h5")
    np.testing.assert_array_equal(chosen.ria, plain.ria)
    assert chosen.provenance["flatfield"]["source"] == f"{flat}:/entry/flood"
    code, _, err = _run(capsys, "preprocess", scan, "--flatfield", flat, "--flatfield-dataset", "entry/nope",
                        "-o", tmp_path / "nope.h5")
    assert code == 2 and str(flat) in err and "entry/nope" in err and "entry/flood" in err
    code, _, err = _run(capsys, "preprocess", scan, "--flatfield", sim.flatfield_path, "--flatfield-dataset",
                        "entry/flood", "-o", tmp_path / "npy2.h5")
    assert code == 2 and "applies to HDF5, MATLAB and zarr files, not to .npy files" in err


def test_every_flatfield_command_takes_the_dataset(two_dataset_flat, rare_class_model, tmp_path, capsys):
    """`predict` takes it; and `watch` reads the flat-field before it waits for
    frames, so a file whose dataset is not chosen is said at once (an empty folder, a 60 s timeout)."""
    sim, flat = two_dataset_flat
    model = rare_class_model[0]
    code, _, err = _run(capsys, "predict", model, sim.scan.source, "--flatfield", flat,
                        "--flatfield-dataset", "entry/flood", "--out", tmp_path / "p")
    assert code == 0, err
    (tmp_path / "frames").mkdir()
    code, _, err = _run(capsys, "watch", model, "--input", tmp_path / "frames", "--scan-shape", 8, 8,
                        "--flatfield", flat, "--timeout", 60)
    assert code == 2 and "the flat-field file holds several datasets" in err


# ---- 5. Ctrl-C while the console script starts -------------------------------------------------------


def test_the_console_script_imports_nothing_before_it_can_catch_ctrl_c():
    """The console script runs ``from napari_sedclassify.cli import entry`` before ``entry()``
    can turn Ctrl-C into one line: that import now loads no module beyond the package and the CLI
    module (argparse and the optional-dependency module took ~10 ms there, where a Ctrl-C printed
    a traceback), and the command still runs."""
    code = ("import sys\n"
            "before = set(sys.modules)\n"
            "import napari_sedclassify.cli\n"
            "print(sorted(set(sys.modules) - before - {'__future__'}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "['napari_sedclassify', 'napari_sedclassify.cli']", proc.stderr
    proc = subprocess.run([sys.executable, "-m", "napari_sedclassify.cli", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("sedclassify "), proc.stderr
