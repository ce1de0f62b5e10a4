"""HyperSpy interoperability (io/hyperspy.py, the ``formats`` extra): ``.hspy`` files written by
HyperSpy itself open calibrated (scan step from the navigation axes, q per px from the signal axes
in 1/Å or mrad, marked "file"), ``sedclassify info`` shows it, a (lazy) HyperSpy signal becomes a
Scan without being read, files rosettasciio reads (TVIPS here) open through ``open_scan``, and the
class map, probabilities, confidence and RIAs export as HyperSpy signals that load back.

Tests that need HyperSpy skip (with the reason) where it is not installed; the calibration of
``.hspy``/``.zspy`` files written with h5py/zarr in HyperSpy's layout is tested without it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_sedclassify.geometry import Geometry, electron_wavelength_A
from napari_sedclassify.io import format_of, open_scan


def _hs():
    return pytest.importorskip("hyperspy.api", reason="HyperSpy not installed (pip install napari-sedclassify[formats])")


@pytest.fixture
def data():
    return np.random.default_rng(1).poisson(3, (3, 4, 32, 32)).astype(np.uint16)


def _signal(hs, data, *, nav=(25.0, "nm"), sig=(0.012, "1/Å"), beam_energy=300.0, lazy=False):
    s = hs.signals.Signal2D(data)
    for axis, name in zip(s.axes_manager.navigation_axes, ("x", "y")):
        axis.name, axis.scale, axis.units = name, nav[0], nav[1]
    for axis, name in zip(s.axes_manager.signal_axes, ("kx", "ky")):
        axis.name, axis.scale, axis.units, axis.offset = name, sig[0], sig[1], -sig[0] * data.shape[-1] / 2
    if beam_energy:
        s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", beam_energy)
    s.metadata.General.title = "grid square 7"
    return s.as_lazy() if lazy else s


def test_hspy_written_by_hyperspy_opens_calibrated(tmp_path, data, capsys):
    hs = _hs()
    path = tmp_path / "scan.hspy"
    _signal(hs, data).save(path)
    assert format_of(path) == "hdf5"
    scan = open_scan(path)
    assert scan.scan_shape == (3, 4) and scan.detector_shape == (32, 32)
    np.testing.assert_array_equal(np.asarray(scan.data.compute()), data)
    g = scan.geometry
    assert scan.metadata["format"] == "HyperSpy (HDF5)"
    assert g.scan_step_nm == pytest.approx(25.0) and g.origin("scan_step_nm") == "file"
    assert g.voltage_kv == pytest.approx(300.0) and g.origin("voltage_kv") == "file"
    assert g.origin("camera_length_mm") == "file"
    assert g.radius_px_to_q_invA(10.0) == pytest.approx(0.12, rel=1e-9)  # the file's 0.012 1/Å per px

    from napari_sedclassify.cli import main

    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "HyperSpy (HDF5)" and info["scan_shape"] == [3, 4]
    assert info["geometry"]["scan_step_nm"] == pytest.approx(25.0)
    assert info["geometry"]["origins"]["scan_step_nm"] == "file"
    assert info["metadata"]["q_per_px_invA"] == pytest.approx(0.012)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "scan step 25 nm (file)" in out and "voltage 300 kV (file)" in out


def test_hspy_in_mrad_and_user_values_win(tmp_path, data):
    hs = _hs()
    path = tmp_path / "mrad.hspy"
    _signal(hs, data, nav=(0.05, "µm"), sig=(0.1, "mrad"), beam_energy=None).save(path)
    scan = open_scan(path)
    g = scan.geometry
    assert g.scan_step_nm == pytest.approx(50.0)
    # 0.1 mrad per px on a 55 µm pixel: L = p / θ = 550 mm, whatever the (assumed) voltage
    assert g.camera_length_mm == pytest.approx(550.0) and g.origin("camera_length_mm") == "file"
    assert g.origin("voltage_kv") == "assumed"
    assert g.radius_px_to_q_invA(1.0) == pytest.approx(1e-4 / electron_wavelength_A(g.voltage_kv))
    assert scan.metadata["angle_per_px_mrad"] == pytest.approx(0.1)
    user = open_scan(path, geometry={"scan_step_nm": 40.0})
    assert user.geometry.scan_step_nm == 40.0 and user.geometry.origin("scan_step_nm") == "user"


def _hspy_layout(root, data, units):
    """HyperSpy's layout written with h5py or zarr (no HyperSpy): Experiments/<title>/{data, axis-N, metadata}."""
    g = root.create_group("Experiments").create_group("scan")
    if hasattr(g, "create_dataset") and not hasattr(g, "create_array"):
        g.create_dataset("data", data=data)
    else:
        g.create_array("data", shape=data.shape, dtype=data.dtype)[:] = data
    for i, (name, scale, unit) in enumerate(units):
        g.create_group(f"axis-{i}").attrs.update(name=name, scale=scale, offset=0.0, units=unit, size=data.shape[i],
                                                 navigate=i < 2)
    g.create_group("metadata").create_group("Acquisition_instrument").create_group("TEM").attrs.update(
        beam_energy=200.0)


@pytest.mark.parametrize("kind", ["hspy", "zspy"])
def test_hspy_and_zspy_calibration_without_hyperspy(tmp_path, data, kind):
    units = [("y", 3.0, "Å"), ("x", 3.0, "Å"), ("ky", 0.15, "nm^-1"), ("kx", 0.15, "$nm^{-1}$")]
    path = tmp_path / f"scan.{kind}"
    if kind == "hspy":
        import h5py

        with h5py.File(path, "w") as f:
            _hspy_layout(f, data, units)
    else:
        import zarr

        _hspy_layout(zarr.open_group(str(path), mode="w", zarr_format=2), data, units)
    scan = open_scan(path)
    g = scan.geometry
    assert g.scan_step_nm == pytest.approx(0.3) and g.voltage_kv == 200.0
    assert g.radius_px_to_q_invA(1.0) == pytest.approx(0.015)
    assert all(g.origin(n) == "file" for n in ("scan_step_nm", "voltage_kv", "camera_length_mm"))


def test_engine_does_not_import_hyperspy(tmp_path):
    code = ("import sys\nimport napari_sedclassify.io.hyperspy, napari_sedclassify.io, napari_sedclassify.pipeline.batch\n"
            "from napari_sedclassify.io import open_scan\n"
            f"open_scan({str(tmp_path / 'a.npy')!r})\n"
            "bad = [m for m in ('hyperspy', 'rsciio', 'pint', 'traits') if m in sys.modules]\n"
            "assert not bad, bad\n")
    np.save(tmp_path / "a.npy", np.ones((2, 2, 8, 8), np.uint8))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_scan_from_lazy_signal(tmp_path, data):
    hs = _hs()
    from napari_sedclassify.io.hyperspy import scan_from_signal

    path = tmp_path / "scan.hspy"
    _signal(hs, data).save(path)
    lazy = hs.load(path, lazy=True)
    assert lazy._lazy
    scan = scan_from_signal(lazy)
    assert scan.scan_shape == (3, 4) and scan.data.chunks[2:] == ((32,), (32,))
    assert scan.geometry.scan_step_nm == 25.0 and scan.geometry.origin("scan_step_nm") == "file"
    assert scan.metadata["title"] == "grid square 7"
    np.testing.assert_array_equal(scan.frame(2, 3), data[2, 3])
    # an in-memory stack of frames (one navigation axis): shaped by scan_shape, missing at the end
    stack = hs.signals.Signal2D(data.reshape(12, 32, 32)[:10])
    scan = scan_from_signal(stack, (3, 4))
    assert scan.missing.sum() == 2 and scan.missing[2, 2:].all()
    np.testing.assert_array_equal(scan.frame(2, 1), data[2, 1])
    np.testing.assert_array_equal(scan.frame(2, 3), 0)
    from napari_sedclassify.errors import ScanFormatError

    with pytest.raises(ScanFormatError, match="signal dimension"):
        scan_from_signal(hs.signals.Signal1D(np.zeros((4, 8))))


def test_tvips_opens_through_rosettasciio(tmp_path, data):
    hs = _hs()
    s = hs.signals.Signal2D(data.reshape(12, 32, 32))
    s.save(tmp_path / "movie.tvips")
    (written,) = sorted(tmp_path.glob("movie*.tvips"))
    assert format_of(written) == "hyperspy"
    scan = open_scan(written, (3, 4))
    assert scan.scan_shape == (3, 4) and "rosettasciio" in scan.metadata["format"]
    np.testing.assert_array_equal(np.asarray(scan.data.compute()), data)


def _prediction(sy=5, sx=6, nbins=20):
    from napari_sedclassify.pipeline.predict import ScanPrediction

    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(4), size=(sy, sx)).astype(np.float32)
    class_map = (probs.argmax(-1) + 1).astype(np.uint8)
    class_map[0, 0] = 0
    geometry = Geometry(detector_shape=(64, 64), scan_step_nm=55.0).marked("file", "scan_step_nm")
    return ScanPrediction(name="sq7", class_map=class_map, probabilities=probs, class_ids=[1, 2, 3, 4],
                          integrated=rng.random((sy, sx)), geometry=geometry,
                          ria=rng.random((sy, sx, nbins)).astype(np.float32), ria_radii_px=np.arange(nbins) + 0.5)


def test_export_round_trips_class_map(tmp_path):
    hs = _hs()
    from napari_sedclassify.io.hyperspy import export_hyperspy, read_class_map

    pred = _prediction()
    files = export_hyperspy(pred, tmp_path)
    assert sorted(files) == ["hspy_classes", "hspy_confidence", "hspy_probabilities", "hspy_ria"]
    assert not list(tmp_path.glob(".*part*"))  # atomic: no temporary file left
    classes = hs.load(files["hspy_classes"])
    np.testing.assert_array_equal(classes.data, pred.class_map)
    assert classes.data.dtype == np.uint8
    for axis, name in zip(classes.axes_manager.signal_axes, ("x", "y")):
        assert axis.name == name and axis.units == "nm" and axis.scale == 55.0
    meta = classes.metadata.Sedclassify
    assert list(meta.class_names) == ["carbon", "amorphous_ice", "crystalline_ice", "mixed"]
    assert meta.scan_step_origin == "file"
    # read back without HyperSpy (h5py)
    cm, info = read_class_map(files["hspy_classes"])
    np.testing.assert_array_equal(cm, pred.class_map)
    assert info["class_names"][1] == "amorphous_ice" and info["scan_step_nm"] == 55.0
    assert info["class_table"]["names"]["3"] == "crystalline_ice"

    probs = hs.load(files["hspy_probabilities"])
    np.testing.assert_allclose(probs.data, pred.probabilities)
    assert probs.axes_manager.signal_axes[0].name == "class" and probs.axes_manager.navigation_axes[0].units == "nm"
    conf = hs.load(files["hspy_confidence"])
    np.testing.assert_allclose(conf.data, pred.probabilities.max(-1))
    ria = hs.load(files["hspy_ria"])
    np.testing.assert_allclose(ria.data, pred.ria)
    q = ria.axes_manager.signal_axes[0]
    assert q.units == "1/Å" and q.name == "q"
    g = pred.geometry
    assert q.offset == pytest.approx(g.radius_px_to_q_invA(0.5))
    assert q.scale == pytest.approx(g.radius_px_to_q_invA(1.0))
    # existing files are replaced only with force
    with pytest.raises(FileExistsError):
        export_hyperspy(pred, tmp_path, force=False)


def test_export_without_hyperspy_says_the_pip_command(tmp_path, monkeypatch):
    from napari_sedclassify import optional
    from napari_sedclassify.io.hyperspy import export_hyperspy

    real = optional._importable
    monkeypatch.setattr(optional, "_importable", lambda name: False if name == "hyperspy" else real(name))
    with pytest.raises(optional.MissingOptionalDependency, match=r'pip install "napari-sedclassify\[formats\]"'):
        export_hyperspy(_prediction(), tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_predict_writes_hyperspy_signals(tmp_path, capsys):
    hs = _hs()
    from models_helpers import SCAN_SHAPE, write_tiny_scans
    from napari_sedclassify.cli import main

    (s0, t0, flat), (s1, t1, _) = write_tiny_scans(tmp_path, [0, 1])
    model = tmp_path / "svm.sedmodel"
    assert main(["train", "--scans", str(s0), "--labels", str(t0), "--model", "svm", "--out", str(model),
                 "--flatfield", str(flat)]) == 0
    capsys.readouterr()
    out = tmp_path / "pred"
    assert main(["predict", str(model), str(s1), "--out", str(out), "--flatfield", str(flat), "--hspy", "--json"]) == 0
    files = json.loads(capsys.readouterr().out)[0]["files"]
    cm = np.load(files["class_map_npy"])
    classes = hs.load(files["hspy_classes"])
    np.testing.assert_array_equal(classes.data, cm)
    step = open_scan(s1).geometry.scan_step_nm
    assert classes.axes_manager.signal_axes[0].units == ("nm" if step else "")
    ria = hs.load(files["hspy_ria"])
    assert ria.data.shape[:2] == SCAN_SHAPE and ria.axes_manager.signal_axes[0].units == "1/Å"
