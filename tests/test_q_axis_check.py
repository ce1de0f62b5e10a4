"""A prediction says when the q axis its model read is off: the amorphous-ice ring of the scan lies
away from where the scan's camera length puts it, or calibration values were assumed. And
calibration does not take vitreous ice's 2.1-Å ring for its 3.7-Å ring (a binned detector's pixel
size left at the default puts the 2.1-Å ring where the 3.7-Å one is expected)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

SHAPE = (20, 20)
PX = 128


def _simulated(folder, name, seed, camera_factor=1.0):
    """A scan of session A's sample and detector whose true (effective) camera length is
    ``camera_factor`` times the 900 mm its file states."""
    from napari_sedclassify.simulate import simulate_scan
    from napari_sedclassify.simulate.params import SessionParams, session_seed

    session = replace(SessionParams(name="A"), name=name, gain_seed=session_seed("A"),
                      camera_length_mm=900.0 * camera_factor)
    return simulate_scan(folder / f"{name}.npy", scan_shape=SHAPE, detector_px=PX, session=session, seed=seed)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from napari_sedclassify.pipeline.train import train_model

    folder = tmp_path_factory.mktemp("qaxis")
    train = _simulated(folder, "train", 1)
    flat = str(train.flatfield_path)  # session A's gain: every scan here shares it
    model = train_model([train.scan.source], [train.truth], model="svm", flatfield=flat)
    return model, flat, folder


def test_prediction_warns_when_the_ice_ring_is_off(trained):
    from napari_sedclassify.pipeline.predict import prediction_entry, predict_scan

    model, flat, folder = trained
    same = predict_scan(model, _simulated(folder, "same", 2).scan.source, flatfield=flat)
    assert same.warnings == []
    off = predict_scan(model, _simulated(folder, "off", 2, camera_factor=0.92).scan.source, flatfield=flat)
    assert len(off.warnings) == 1, off.warnings
    text = off.warnings[0]
    assert "off.npy" in text and "further in" in text and "sedclassify calibrate" in text
    fitted = float(text.split("effective camera length is ")[1].split(" ")[0])
    assert fitted == pytest.approx(828.0, rel=0.01)
    assert prediction_entry(off, {}, model.classes)["warnings"] == off.warnings


def test_prediction_names_assumed_values(trained, tmp_path):
    """Frames saved without metadata, the pixel size given (as on the command line): the camera
    length and voltage are assumed, equal to the training scans' by chance; the prediction runs
    and says so."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.predict import predict_scan

    model, flat, folder = trained
    sim = _simulated(folder, "bare_src", 3)
    np.save(tmp_path / "bare.npy", np.asarray(sim.scan.data))
    scan = open_scan(tmp_path / "bare.npy", geometry={"pixel_size_um": model.geometry.pixel_size_um})
    pred = predict_scan(model, scan, flatfield=flat)
    assert len(pred.warnings) == 1, pred.warnings
    assert "camera length 900 mm, voltage 200 kV assumed" in pred.warnings[0]
    assert "--camera-length, --voltage" in pred.warnings[0]


def test_calibration_refuses_the_second_ice_ring(trained, tmp_path):
    """The frames of a 128 px detector whose pixels are 4x the default 55 µm: with the pixel size
    left assumed, the 3.7-Å ring is expected 4x further out and the 2.1-Å ring sits within the
    search; calibration must say so, not fit it as 3.7 Å. With the pixel size given: the file's
    camera length."""
    from napari_sedclassify.errors import CalibrationError
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.calibrate import calibrate

    model, flat, folder = trained
    sim = _simulated(folder, "second_ring", 4)
    pixel = sim.scan.geometry.pixel_size_um
    # the camera length that puts the 3.7-Å ring's expected radius onto the 2.1-Å ring with 55 µm
    camera = 900.0 * (55.0 / pixel) * (3.70 / 2.115)
    np.save(tmp_path / "binned.npy", np.asarray(sim.scan.data))
    wrong = open_scan(tmp_path / "binned.npy", geometry={"camera_length_mm": camera})
    with pytest.raises(CalibrationError, match=r"not the amorphous-ice ring \(3.7 Å\) but its second ring"):
        calibrate(wrong, flatfield=flat)
    right = open_scan(tmp_path / "binned.npy", geometry={"camera_length_mm": 900.0, "pixel_size_um": pixel})
    assert calibrate(right, flatfield=flat).camera_length_mm == pytest.approx(900.0, rel=0.01)


def test_a_stored_camera_length_follows_the_pixel_size(trained, tmp_path):
    """`calibrate --write` with the pixel size left at the default stores an effective camera
    length for that pixel size; the scan opened later with its true pixel size gets the camera
    length rescaled (λL/p, what the ring measured, kept), so its q axis is right and the
    prediction neither warns nor fails."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.io.sidecar import write_calibration
    from napari_sedclassify.pipeline.calibrate import calibrate
    from napari_sedclassify.pipeline.predict import predict_scan

    model, flat, folder = trained
    sim = _simulated(folder, "stored", 5)
    pixel = sim.scan.geometry.pixel_size_um
    path = tmp_path / "stored.npy"
    np.save(path, np.asarray(sim.scan.data))
    # a start within the search of the 3.7-Å ring with the default 55 µm pixel
    cal = calibrate(open_scan(path, geometry={"camera_length_mm": 900.0 * 55.0 / pixel * 1.05}), flatfield=flat)
    assert cal.camera_length_mm == pytest.approx(900.0 * 55.0 / pixel, rel=0.01)
    write_calibration(path, {"camera_length_mm": cal.camera_length_mm}, cal.sidecar_details())

    assumed = open_scan(path)  # as calibrated: the same default pixel, the same value
    assert assumed.geometry.camera_length_mm == pytest.approx(cal.camera_length_mm)
    scan = open_scan(path, geometry={"pixel_size_um": pixel})
    assert scan.geometry.origin("camera_length_mm") == "fitted"
    assert scan.geometry.camera_length_mm == pytest.approx(900.0, rel=0.01)
    assert scan.geometry.lambda_L_over_p == pytest.approx(assumed.geometry.lambda_L_over_p)
    at_300 = open_scan(path, geometry={"pixel_size_um": pixel, "voltage_kv": 300.0})
    assert at_300.geometry.lambda_L_over_p == pytest.approx(assumed.geometry.lambda_L_over_p)
    pred = predict_scan(model, scan, flatfield=flat)
    assert not [w for w in pred.warnings if "ring" in w], pred.warnings


def test_a_wrong_chip_edge_width_is_named(tmp_path):
    """A Medipix quad (2x2-binned: wide pixels 1.75 pitches, as its file says) preprocessed with
    --edge-pixel-width 1: the plan keeps what the user gave but records what the frames show, and a
    prediction warns."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.processing.plan import edge_width_warning
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.processing import PreprocessParams
    from napari_sedclassify.simulate import simulate_scan

    sim = simulate_scan(tmp_path / "quad.npy", scan_shape=(8, 8), detector_px=256, session="A", seed=6)
    scan = open_scan(tmp_path / "quad.npy")
    assert float(scan.metadata["edge_pixel_width"]) > 1.5
    as_file = preprocess(scan, PreprocessParams(), str(sim.flatfield_path))
    assert "edge_pixel_width_measured" not in as_file.resolved
    wrong = preprocess(scan, PreprocessParams(edge_pixel_width=1.0), str(sim.flatfield_path))
    assert wrong.resolved["edge_pixel_width"] == 1.0
    assert wrong.resolved["edge_pixel_width_measured"] == pytest.approx(scan.metadata["edge_pixel_width"], rel=0.05)
    text = edge_width_warning("quad.npy", wrong.resolved)
    assert "1 pitches wide (given)" in text and "--edge-pixel-width" in text


def test_propose_says_when_its_names_rest_on_a_wrong_q_axis(trained, tmp_path):
    """The proposal names clusters by the ice ring on the q axis: frames without metadata (every
    value assumed, the pixel 4x too small) put the ring beyond the profile's end, and the proposal
    refuses, naming the assumed values, instead of calling the whole scan carbon in silence; a
    camera length 8 % off is named with the value the ring shows; the right geometry gives no
    warning."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.pipeline.propose import propose

    _, flat, folder = trained
    sim = _simulated(folder, "propose_bare", 7)
    np.save(tmp_path / "bare.npy", np.asarray(sim.scan.data))
    bare = open_scan(tmp_path / "bare.npy")
    with pytest.raises(ValueError, match=r"bare.npy: cannot propose classes.*camera length 900 mm \(assumed\)"):
        propose(preprocess(bare, None, flat), bare.geometry, source="bare.npy")
    right = propose(preprocess(sim.scan, None, flat), sim.scan.geometry)
    assert "warnings" not in right.details and (right.class_map == 2).any()
    off = _simulated(folder, "propose_off", 7, camera_factor=0.92)
    prop = propose(preprocess(off.scan, None, flat), off.scan.geometry, source="off.npy")
    assert prop.details["warnings"][0].startswith("off.npy: its amorphous-ice ring")


def test_the_commands_print_the_warnings(tmp_path, capsys):
    """`sedclassify preprocess` with a chip-edge width the frames contradict, and `propose` on a
    scan whose camera length is 8 % off: one `warning:` line each on stderr, kept in the JSON."""
    import json

    from napari_sedclassify.cli import main
    from napari_sedclassify.simulate import simulate_scan

    sim = simulate_scan(tmp_path / "quad.npy", scan_shape=(8, 8), detector_px=256, session="A", seed=6)
    flat = str(sim.flatfield_path)
    assert main(["preprocess", str(sim.scan.source), "--flatfield", flat, "--edge-pixel-width", "1",
                 "-o", str(tmp_path / "p.h5"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "warning: " in err and "taken as 1 pitches wide (given)" in err
    assert "taken as 1 pitches wide" in json.loads(out)["warnings"][0]
    off = _simulated(tmp_path, "off_cli", 8, camera_factor=0.92)
    assert main(["propose", str(off.scan.source), "--flatfield", str(off.flatfield_path),
                 "-o", str(tmp_path / "prop")]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "off_cli.npy: its amorphous-ice ring" in err


@pytest.mark.parametrize("factor", [0.92, 0.82])
def test_the_builtin_models_predictions_are_checked_too(tmp_path, factor):
    """The built-in model reads the profile to 0.3 Å⁻¹, just past the ice ring (0.27): the profile
    of its predictions now reaches as far as the check needs, its wider search included (its
    features are the same), so a scan 8 % or 18 % off is named with it too; before, the check
    could not run and said nothing (and with the narrower search only, 18 % went unsaid)."""
    from napari_sedclassify.models.persistence import load_model
    from napari_sedclassify.pipeline.calibrate import Q_AXIS_CHECK_Q_INVA
    from napari_sedclassify.pipeline.predict import params_for_model, predict_scan
    from napari_sedclassify.pipeline.train import preprocess_params_for
    from napari_sedclassify.simulate import simulate_scan
    from napari_sedclassify.simulate.params import SessionParams, session_seed

    model = load_model("builtin")
    session = replace(SessionParams(name="A"), name="off256", gain_seed=session_seed("A"),
                      camera_length_mm=900.0 * factor)
    sim = simulate_scan(tmp_path / "off256.npy", scan_shape=(16, 16), detector_px=256, session=session, seed=3)
    g = sim.scan.geometry
    own = preprocess_params_for([model.recipe], g, model.preprocess).ria_r_max_px
    checked = params_for_model(model, g).ria_r_max_px
    assert own < g.q_invA_to_radius_px(Q_AXIS_CHECK_Q_INVA) < checked
    pred = predict_scan(model, sim.scan, flatfield=str(sim.flatfield_path))
    assert any("its amorphous-ice ring" in w and "further in" in w for w in pred.warnings), pred.warnings


def test_a_stream_is_told_to_give_the_camera_length_not_to_calibrate_itself(trained):
    """The q-axis warning of a detector stream cannot advise `sedclassify calibrate merlin://...`:
    calibrate reads files. It advises the camera length for the next live run instead."""
    from napari_sedclassify.pipeline.calibrate import preprocessed_q_axis_warning
    from napari_sedclassify.pipeline.predict import params_for_model
    from napari_sedclassify.pipeline.preprocess import preprocess

    model, flat, folder = trained
    off = _simulated(folder, "off_stream", 3, camera_factor=0.92).scan
    result = preprocess(off, params_for_model(model, off.geometry), flatfield=flat)
    stream = preprocessed_q_axis_warning(result, off.geometry, "merlin://127.0.0.1:6342")
    assert "Give --camera-length 8" in stream and "to the next live run" in stream
    assert "sedclassify calibrate merlin://" not in stream
    recorded = preprocessed_q_axis_warning(result, off.geometry, "off_stream.npy")
    assert "`sedclassify calibrate off_stream.npy --write`" in recorded
