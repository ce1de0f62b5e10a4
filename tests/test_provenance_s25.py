"""Session 25: what a prediction says of its preprocessing, and the dose augmentation in blocks.

``sedclassify predict`` and ``propose`` wrote class maps without the preprocessing plan that made
them: which direct-beam radius (stated with --beam-radius, or measured), the saturation level, the
bad pixels found, the calibration window, the chip-edge pixel width, the q axis and the flat-field.
``sedclassify preprocess`` recorded the plan, but its parameters said ``beam_radius_px: None`` when
--beam-radius gave the radius. Now every prediction's ``<scan>_probabilities.json`` (and the
``--json`` summary), every proposal's ``<scan>_proposal.json`` and a preprocessing file's
provenance say the radius used and whether it was stated or measured, with the plan.

The dose augmentation's counting noise (``dose_range``, the session-robust recipe) was drawn over
all of a scan's training frames at once, so training made those frames' inputs in one block: its
memory grew with the scan. Now each block of frames gets its rows of the same draw, so the
inputs, and the model, are those of one draw, whatever the block size.

Simulated scans (napari_sedclassify.simulate), the real CLI, preprocessing and scikit-learn."""

from __future__ import annotations

import json
import tracemalloc
from dataclasses import replace

import h5py
import numpy as np
import pytest

from napari_sedclassify.cli import main
from napari_sedclassify.simulate import simulate_scan

STATED_RADIUS_PX = 4.0


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    """A simulated 16 x 16 scan of 128 px frames, on disk."""
    path = tmp_path_factory.mktemp("provenance") / "scan.npy"
    simulate_scan(path, scan_shape=(16, 16), detector_px=128, session="A", seed=0)
    return path


def _radius_args(stated: bool) -> list[str]:
    return ["--beam-radius", str(STATED_RADIUS_PX)] if stated else []


def _check_radius(record: dict, stated: bool) -> None:
    """A preprocessing record (``preprocess.preprocessing_record``) states the radius its plan used,
    and where it came from."""
    radius = record["beam_radius"]
    assert radius["origin"] == ("stated" if stated else "measured")
    assert radius["beam_radius_px"] == record["plan"]["beam_radius_px"]
    if stated:
        assert radius["beam_radius_px"] == STATED_RADIUS_PX
    else:  # the simulated beam's own radius, measured on the calibration sample
        assert 1.0 < radius["beam_radius_px"] < 20.0 and radius["beam_radius_px"] != STATED_RADIUS_PX
    plan = record["plan"]
    for key in ("saturation_counts", "bad_pixels", "calibration_start", "calibration_frames", "edge_pixel_width"):
        assert key in plan
    assert record["geometry"]["camera_length_mm"] > 0 and "origins" in record["geometry"]


@pytest.mark.parametrize("stated", [True, False], ids=["beam_radius_stated", "beam_radius_measured"])
def test_predict_outputs_say_the_beam_radius_and_where_it_came_from(scan_file, tmp_path, capsys, stated):
    out = tmp_path / "out"
    assert main(["predict", "builtin", str(scan_file), "-o", str(out), "--json"] + _radius_args(stated)) == 0
    (printed,) = json.loads(capsys.readouterr().out)
    written = json.loads((out / "scan_probabilities.json").read_text())
    assert written["axis_2_class_names"][0] == "carbon"
    for record in (written["preprocessing"], printed["preprocessing"]):
        _check_radius(record, stated)


def test_predict_to_files_says_the_preprocessing(scan_file, tmp_path):
    from napari_sedclassify.pipeline.predict import predict_to_files

    (entry,) = predict_to_files("builtin", [scan_file], tmp_path)
    _check_radius(entry["preprocessing"], stated=False)
    written = json.loads((tmp_path / "scan_probabilities.json").read_text())
    assert written["preprocessing"] == entry["preprocessing"]


def test_proposal_says_the_beam_radius_it_was_made_with(scan_file, tmp_path):
    assert main(["propose", str(scan_file), "-o", str(tmp_path)] + _radius_args(True)) == 0
    _check_radius(json.loads((tmp_path / "scan_proposal.json").read_text())["preprocessing"], stated=True)


@pytest.mark.parametrize("stated", [True, False], ids=["beam_radius_stated", "beam_radius_measured"])
def test_preprocess_records_the_stated_beam_radius(scan_file, tmp_path, stated):
    out = tmp_path / "scan.h5"
    assert main(["preprocess", str(scan_file), "-o", str(out)] + _radius_args(stated)) == 0
    with h5py.File(out, "r") as f:
        provenance = json.loads(f.attrs["provenance"])
    radius = provenance["beam_radius"]
    assert radius == {"beam_radius_px": provenance["plan"]["beam_radius_px"],
                      "origin": "stated" if stated else "measured"}
    assert provenance["parameters"]["beam_radius_px"] == (STATED_RADIUS_PX if stated else None)


def test_a_reduced_file_says_the_preprocessing_its_class_map_was_made_with(scan_file, tmp_path):
    """`reduce --model` keeps the frames the model chose: its file's provenance now holds the plan
    the frames were classified with (it held the model, not how the frames were preprocessed)."""
    out = tmp_path / "kept.h5"
    assert main(["reduce", str(scan_file), "--model", "builtin", "--classes", "amorphous_ice,carbon",
                 "-o", str(out)] + _radius_args(True)) == 0
    with h5py.File(out, "r") as f:
        provenance = json.loads(f.attrs["provenance"])
    _check_radius(provenance["preprocessing"], stated=True)


# ---- the dose augmentation, a block of frames at a time ------------------------------------------


@pytest.fixture(scope="module")
def robust_scan():
    """ScanFeatures of a simulated 32 x 32 scan tiled to 64 x 64 (4096 frames), with its truth."""
    from models_helpers import tiny_features

    sim = simulate_scan(None, scan_shape=(32, 32), detector_px=128, session="A", seed=0)
    (feats,) = tiny_features([sim], kinds=("fcnn",))

    def tile(a):
        return np.ascontiguousarray(np.tile(a, (2, 2) + (1,) * (a.ndim - 2)))

    return replace(feats, missing=tile(feats.missing), ria=tile(feats.ria), crops=None), tile(sim.truth)


def _train_traced(robust_scan, block_frames: int):
    """The session-robust FCNN (dose augmentation) trained with inputs made ``block_frames`` frames
    at a time, under tracemalloc once the scan's cached references are made: (peak traced bytes,
    probabilities on the scan's first 256 frames, training inputs)."""
    from napari_sedclassify.models import training
    from napari_sedclassify.models.features import session_robust_recipe

    feats, truth = robust_scan
    recipe, params = session_robust_recipe(), {"max_epochs": 2}
    before = training.INPUT_BLOCK_FRAMES
    training.INPUT_BLOCK_FRAMES = block_frames
    try:
        training.train([feats], [truth], kind="fcnn", recipe=recipe, params=params, seed=1)  # the caches
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        model = training.train([feats], [truth], kind="fcnn", recipe=recipe, params=params, seed=0)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    finally:
        training.INPUT_BLOCK_FRAMES = before
    return peak, model.predict_proba(feats.inputs(model.recipe, np.arange(256))), model.training["n_train_inputs"]


def test_dose_augmentation_in_blocks_is_the_one_draw_in_less_memory(robust_scan):
    peak, proba, n = _train_traced(robust_scan, 64)
    whole_peak, whole_proba, whole_n = _train_traced(robust_scan, 2**40)  # one block: the draw over all frames
    assert n == whole_n > 2 * 2500  # the labeled frames and their augmented copies
    np.testing.assert_array_equal(proba, whole_proba)  # the same noise, so the same network
    # one block: the noise, its spread and the blurred profiles of all 4096 frames at once (float64)
    feats, _ = robust_scan
    assert whole_peak > 4 * feats.ria.size * 8
    assert peak < 0.5 * whole_peak, (peak / 2**20, whole_peak / 2**20)


def test_noise_rows_continue_one_draw_and_repeat_a_block():
    """A block's rows are those of the one draw; drawn again (a crop model's neighbour channel), the same."""
    from napari_sedclassify.models.features import NoiseStream

    whole = np.random.default_rng(7).standard_normal((100, 5, 3))  # the draw over all rows at once
    stream = NoiseStream(7)
    first = stream.rows(0).normal((37, 5, 3))
    second = stream.rows(37).normal((63, 5, 3))
    np.testing.assert_array_equal(np.concatenate([first, second]), whole)
    np.testing.assert_array_equal(stream.rows(37).normal((63, 5, 3)), second)
