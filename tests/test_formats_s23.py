"""HyperSpy users' files (session 23 sweep): signals whose signal axes are not the last two in the
array, transposed signals (scan as signal, frames as navigation), and what the ``--hspy`` export
tells HyperSpy about the beam. Scans from the simulator, saved by HyperSpy itself (``.hspy``) or laid
out as HyperSpy's ``.zspy`` with zarr (rosettasciio's zspy writer needs zarr 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sedclassify.errors import ScanFormatError
from napari_sedclassify.io import open_scan


def _hs():
    return pytest.importorskip("hyperspy.api", reason="HyperSpy not installed (pip install napari-sedclassify[formats])")


@pytest.fixture(scope="module")
def sim():
    from napari_sedclassify.simulate import simulate_scan

    return simulate_scan(scan_shape=(4, 5), detector_px=128, seed=5)


def _q_per_px(geometry):
    return geometry.radius_px_to_q_invA(1.0) - geometry.radius_px_to_q_invA(0.0)


def _signal(hs, sim):
    """The simulated scan as a HyperSpy user has it: nm scan axes, 1/Å detector axes, beam energy."""
    s = hs.signals.Signal2D(np.asarray(sim.scan.data.compute()))
    for axis, name in zip(s.axes_manager.navigation_axes, "xy"):
        axis.name, axis.units, axis.scale = name, "nm", sim.geometry.scan_step_nm
    for axis, name in zip(s.axes_manager.signal_axes, ("kx", "ky")):
        axis.name, axis.units, axis.scale = name, "1/Å", _q_per_px(sim.geometry)
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", sim.geometry.voltage_kv)
    s.metadata.General.title = "square 3"
    return s


def _signal_axes_inside(hs, sim):
    """The same signal with its data stored as (scan_y, det_y, det_x, scan_x): HyperSpy keeps such a
    layout (a BaseSignal whose axes were marked navigate by hand, a signal from some readers) and
    saves it as it is, each axis marked ``navigate``."""
    frames = np.asarray(sim.scan.data.compute())
    s = hs.signals.BaseSignal(np.ascontiguousarray(np.moveaxis(frames, 1, 3)))
    for axis, navigate, units, scale in zip(s.axes_manager._axes, (True, False, False, True),
                                            ("nm", "1/Å", "1/Å", "nm"),
                                            (30.0, _q_per_px(sim.geometry), _q_per_px(sim.geometry), 30.0)):
        axis.navigate, axis.units, axis.scale = navigate, units, scale
    return s


def test_hspy_with_signal_axes_inside_the_array_is_refused_naming_the_file(tmp_path, sim):
    hs = _hs()
    path = tmp_path / "inside.hspy"
    _signal_axes_inside(hs, sim).save(path)
    assert hs.load(path).axes_manager.signal_shape == (128, 128)  # HyperSpy reads it as a 4D scan of 128 px frames
    with pytest.raises(ScanFormatError, match=r"inside\.hspy: a HyperSpy signal stored with its signal axes at "
                                              r"array positions \[1, 2\], not the last two"):
        open_scan(path)


def test_zspy_with_signal_axes_inside_the_array_is_refused(tmp_path, sim):
    import zarr

    frames = np.ascontiguousarray(np.moveaxis(np.asarray(sim.scan.data.compute()), 1, 3))
    root = zarr.open_group(str(tmp_path / "inside.zspy"), mode="w", zarr_format=2)
    root.attrs.update(file_format="ZSpy", file_format_version="3.3")
    g = root.create_group("Experiments").create_group("__unnamed__")
    g.create_array("data", shape=frames.shape, dtype=frames.dtype, chunks=(1, 128, 128, 5))[:] = frames
    for i, navigate in enumerate((True, False, False, True)):
        g.create_group(f"axis-{i}").attrs.update(size=frames.shape[i], scale=1.0, offset=0.0, units="",
                                                 navigate=navigate)
    with pytest.raises(ScanFormatError, match=r"inside\.zspy: a HyperSpy signal stored with its signal axes"):
        open_scan(tmp_path / "inside.zspy")


@pytest.mark.parametrize("lazy", [False, True])
def test_scan_from_signal_takes_the_frames_from_the_signal_axes(tmp_path, sim, lazy):
    hs = _hs()
    from napari_sedclassify.io.hyperspy import scan_from_signal

    path = tmp_path / "inside.hspy"
    _signal_axes_inside(hs, sim).save(path)
    scan = scan_from_signal(hs.load(path, lazy=lazy))
    assert scan.scan_shape == (4, 5) and tuple(scan.geometry.detector_shape) == (128, 128)
    np.testing.assert_array_equal(np.asarray(scan.data.compute()), np.asarray(sim.scan.data.compute()))
    assert scan.geometry.scan_step_nm == 30.0
    assert _q_per_px(scan.geometry) == pytest.approx(_q_per_px(sim.geometry))


def test_transposed_signal_is_refused(sim):
    hs = _hs()
    from napari_sedclassify.io.hyperspy import scan_from_signal

    s = _signal(hs, sim)
    assert scan_from_signal(s).scan_shape == (4, 5)
    with pytest.raises(ScanFormatError, match=r"square 3: navigation axes in 1/Å, 1/Å and signal axes in nm, nm: "
                                              r"the scan and the frames look swapped"):
        scan_from_signal(s.T)  # 128 x 128 "positions" of 5 x 4 px "frames"


def test_transposed_hspy_file_is_refused(tmp_path, sim):
    hs = _hs()
    path = tmp_path / "transposed.hspy"
    _signal(hs, sim).T.save(path)
    with pytest.raises(ScanFormatError, match=r"transposed\.hspy: navigation axes in 1/Å, 1/Å and signal axes"):
        open_scan(path)


def test_hspy_export_keeps_the_beam_energy_and_the_q_axis(tmp_path, sim, capsys):
    hs = _hs()
    from napari_sedclassify.cli import main

    path = tmp_path / "square3.hspy"
    _signal(hs, sim).save(path)
    np.save(tmp_path / "flat.npy", sim.flatfield)
    out = tmp_path / "pred"
    assert main(["predict", "builtin", str(path), "--flatfield", str(tmp_path / "flat.npy"), "--out", str(out),
                 "--hspy", "--json"]) == 0
    files = json.loads(capsys.readouterr().out)[0]["files"]
    for kind in ("classes", "probabilities", "confidence", "ria"):
        s = hs.load(files[f"hspy_{kind}"])
        assert s.metadata.Acquisition_instrument.TEM.beam_energy == sim.geometry.voltage_kv
    q = hs.load(files["hspy_ria"]).axes_manager.signal_axes[0]
    assert q.units == "1/Å" and q.scale == pytest.approx(_q_per_px(sim.geometry))


def test_hspy_export_states_no_beam_energy_it_assumed(tmp_path, sim, capsys):
    hs = _hs()
    from napari_sedclassify.cli import main

    s = _signal(hs, sim)
    del s.metadata.Acquisition_instrument
    path = tmp_path / "no_energy.hspy"
    s.save(path)
    assert open_scan(path).geometry.origin("voltage_kv") == "assumed"
    flat, truth, model = tmp_path / "flat.npy", tmp_path / "truth.npy", tmp_path / "m.sedmodel"
    np.save(flat, sim.flatfield)
    np.save(truth, sim.truth)
    assert main(["train", "--scans", str(path), "--labels", str(truth), "--model", "svm", "--flatfield", str(flat),
                 "--out", str(model)]) == 0
    capsys.readouterr()
    assert main(["predict", str(model), str(path), "--flatfield", str(flat), "--out", str(tmp_path / "pred"),
                 "--hspy", "--json"]) == 0
    files = json.loads(capsys.readouterr().out)[0]["files"]
    assert "Acquisition_instrument" not in hs.load(files["hspy_classes"]).metadata


def test_a_given_voltage_keeps_the_q_axis_the_file_states(tmp_path, sim):
    """A file whose detector axes are in 1/Å and without a beam energy: the camera length is derived
    for the assumed 200 kV. A user giving --voltage 300 (the microscope's) rescaled the stated q axis
    by the wavelengths' ratio (0.00975 -> 0.0124 Å⁻¹ a px); the stated q per px now holds, for any
    voltage or pixel size given without a camera length, and a given camera length still wins."""
    hs = _hs()
    s = _signal(hs, sim)
    del s.metadata.Acquisition_instrument
    path = tmp_path / "q.hspy"
    s.save(path)
    stated = _q_per_px(sim.geometry)
    for user in ({}, {"voltage_kv": 300.0}, {"pixel_size_um": 110.0}, {"voltage_kv": 120.0, "pixel_size_um": 75.0}):
        g = open_scan(path, geometry=user).geometry
        assert _q_per_px(g) == pytest.approx(stated, rel=1e-6), user
        assert all(getattr(g, k) == v for k, v in user.items())
    g = open_scan(path, geometry={"voltage_kv": 300.0, "camera_length_mm": 500.0}).geometry
    assert g.camera_length_mm == 500.0 and _q_per_px(g) != pytest.approx(stated, rel=1e-3)


def test_a_dataset_given_for_a_single_zarr_array_names_the_option(tmp_path, sim, capsys):
    """It said "dataset='foo' does not apply" (the Python keyword) on the command line."""
    zarr = pytest.importorskip("zarr")
    from napari_sedclassify.cli import main

    path = tmp_path / "scan.zarr"
    zarr.save_array(str(path), np.asarray(sim.scan.data.compute()))
    assert main(["info", str(path), "--dataset", "foo"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: holds a single array; --dataset foo (Python: dataset='foo') does not apply" in err, err


def _write_mrc(path, frames):
    """A minimal MRC2014 file (1024-byte header, mode 6: uint16) of ``frames`` (n, ky, kx), as a
    camera's frame-series export is laid out; 1 Å voxels."""
    n, ky, kx = frames.shape
    header = np.zeros(256, np.int32)
    header[:4] = kx, ky, n, 6
    header[7:10] = kx, ky, n
    header.view(np.float32)[10:13] = kx, ky, n
    header[16:19] = 1, 2, 3
    raw = bytearray(header.tobytes())
    raw[208:216] = b"MAP " + bytes([0x44, 0x44, 0, 0])
    path.write_bytes(bytes(raw) + frames.astype("<u2").tobytes())


def test_an_mrc_frame_series_opens_as_a_scan(tmp_path, sim, capsys):
    """.mrc was an "unknown scan format" although rosettasciio reads it."""
    pytest.importorskip("rsciio")
    from napari_sedclassify.cli import main

    frames = np.asarray(sim.scan.data.compute()).reshape(-1, *sim.scan.detector_shape)
    path = tmp_path / "series.mrc"
    _write_mrc(path, frames)
    scan = open_scan(path, scan_shape=sim.scan.scan_shape)
    assert scan.scan_shape == sim.scan.scan_shape and scan.detector_shape == sim.scan.detector_shape
    np.testing.assert_array_equal(np.asarray(scan.data), np.asarray(sim.scan.data))
    assert main(["info", str(path), "--scan-shape", "4", "5"]) == 0
    assert "4 x 5" in capsys.readouterr().out


def test_an_emd_file_saved_by_hyperspy_is_not_read_transposed(tmp_path, sim, capsys):
    """HyperSpy's EMD writer stores a signal with its axes reversed (data (kx, ky, x, y), dim1 = kx in
    1/Å): it was read as a 128 x 128 scan of 5 x 4 px frames, silently. Now refused naming the file
    and the HyperSpy line that resaves it, and that line gives the scan back."""
    hs = _hs()
    from napari_sedclassify.cli import main

    path = tmp_path / "x.emd"
    _signal(hs, sim).save(path)
    with pytest.raises(ScanFormatError, match=r"x.emd: dataset .* holds its detector axes first"):
        open_scan(path)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert "hs.load('x.emd', lazy=True).as_signal2D((0, 1)).save('x.hspy')" in err and "Traceback" not in err
    hs.load(path, lazy=True).as_signal2D((0, 1)).save(tmp_path / "x.hspy")
    scan = open_scan(tmp_path / "x.hspy")
    assert scan.scan_shape == sim.scan.scan_shape
    np.testing.assert_array_equal(np.asarray(scan.data), np.asarray(sim.scan.data))
