"""The napari reader in a real viewer: lazy open, one scan-space layer, the integrated image
computed in a thread worker, errors as notifications."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from napari_sedclassify._napari.layers import SCAN_KEY
from napari_sedclassify._napari.reader import INTEGRATING, get_reader, read_scan

PLUGIN = "napari-sedclassify"


def _mib_frame_sums(path, header_bytes, shape, dtype, scan_shape):
    """Total counts per frame straight from the file with numpy (no reader code)."""
    frames = np.memmap(path, dtype=[("h", f"V{header_bytes}"), ("px", dtype, shape)], mode="r")["px"]
    return frames.reshape(len(frames), -1).sum(axis=1, dtype=np.int64).reshape(scan_shape)


def test_get_reader_accepts_scans_and_refuses_the_rest(realdata, tmp_path):
    import tifffile

    assert callable(get_reader(str(realdata / "merlin" / "001_4x2_6bit.mib")))
    assert callable(get_reader(str(realdata / "merlin" / "001_4x2_6bit.hdr")))
    assert callable(get_reader(str(realdata / "blockfile" / "test2.blo")))
    assert callable(get_reader([str(realdata / "emd" / "Si100_4D.emd")]))
    tifffile.imwrite(tmp_path / "photo.tif", np.zeros((32, 32), np.uint8))  # a 2D image: napari's own reader
    (tmp_path / "notes.txt").write_text("hello")
    folder = tmp_path / "folder"
    folder.mkdir()
    import h5py

    with h5py.File(tmp_path / "model.h5", "w") as f:
        f["weights"] = np.zeros((3, 3))
    for path in (tmp_path / "notes.txt", folder):
        assert get_reader(str(path)) is None, path
    # a plain 2D image in a format both read: napari's own image reader (this plugin may be the
    # preferred reader for .tif, and plain images must still open as before)
    layers = get_reader(str(tmp_path / "photo.tif"))(str(tmp_path / "photo.tif"))
    assert layers[0][0].shape == (32, 32) and get_reader(str(tmp_path / "photo.tif")) is not read_scan
    # an HDF5 file that is no scan: a reader that says why (and adds nothing), not a silent None
    refusal = get_reader(str(tmp_path / "model.h5"))
    assert refusal is not None and refusal is not read_scan
    two = [str(realdata / "blockfile" / "test2.blo")] * 2
    assert get_reader(two) is None


def test_open_mib_in_viewer_fills_the_integrated_image_in_the_background(realdata, make_napari_viewer, qtbot):
    path = realdata / "merlin" / "001_4x2_6bit.mib"
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert len(layers) == 1 and len(viewer.layers) == 1
    layer = layers[0]
    scan = layer.metadata[SCAN_KEY]
    assert scan.scan_shape == (2, 4) and layer.data.shape == (2, 4)
    # Right after opening, the layer holds the placeholder: the image is computed off the UI
    # thread and only delivered through the event loop, which has not run yet.
    assert layer.metadata[INTEGRATING] is True
    assert not np.any(layer.data)
    qtbot.waitUntil(lambda: INTEGRATING not in layer.metadata, timeout=30000)
    expected = _mib_frame_sums(path, 384, (256, 256), "u1", (2, 4))
    np.testing.assert_array_equal(layer.data, expected)
    assert layer.contrast_limits == [float(expected.min()), float(expected.max())]


def test_missing_positions_are_nan_in_the_image(make_napari_viewer, qtbot, tmp_path):
    rng = np.random.default_rng(5)
    frames = rng.poisson(3.0, size=(30, 16, 16)).astype(np.uint16)
    np.save(tmp_path / "stack.npy", frames)
    (tmp_path / "stack.json").write_text(json.dumps({"scan_shape": [5, 7], "geometry": {"scan_step_nm": 30.0}}))
    viewer = make_napari_viewer()
    from numpy._core.multiarray import _set_madvise_hugepage as advice

    advice(True)
    (layer,) = viewer.open(str(tmp_path / "stack.npy"), plugin=PLUGIN)
    # a small scan: numpy's huge-page advice off (pages.small_pages), unless the user set it
    assert advice(True) is ("NUMPY_MADVISE_HUGEPAGE" in os.environ)
    qtbot.waitUntil(lambda: INTEGRATING not in layer.metadata, timeout=30000)
    image = np.asarray(layer.data).ravel()
    np.testing.assert_array_equal(image[:30], frames.reshape(30, -1).sum(axis=1))
    assert np.isnan(image[30:]).all()
    np.testing.assert_allclose(layer.scale, (30.0, 30.0))


@pytest.mark.parametrize(
    "name, content, problem",
    [("cut.mib", "cut", "truncated last frame"), ("dtype.mib", "dtype", "unknown pixel dtype")],
)
def test_errors_are_notifications_naming_file_and_problem(realdata, make_napari_viewer, tmp_path, name, content, problem):
    from napari.utils.notifications import notification_manager

    data = (realdata / "merlin" / "Single_9_Frame_CounterDepth_12_Rows_256.mib").read_bytes()
    broken = data[:-100] if content == "cut" else data.replace(b",U16,", b",X16,")
    path = tmp_path / name
    path.write_bytes(broken)
    viewer = make_napari_viewer()
    before = len(notification_manager.records)
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert layers == [] and len(viewer.layers) == 0
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any(str(path) in m and problem in m for m in messages), messages


def test_a_failed_integration_leaves_no_layer_marked_as_integrating(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """The integrated image failed (here: the virtual-image step raises): the layer keeps its
    placeholder, the error is shown, and the layer is no longer marked as being integrated (what
    the diffraction view's first frame waits for)."""
    from napari.utils.notifications import notification_manager

    import threading

    from napari_sedclassify.processing import virtual

    checked = threading.Event()  # the mark is looked at before the job fails: a job that failed at
    # once was over before viewer.open returned on a loaded machine (napari turns the event loop)

    def broken(*args, **kwargs):
        checked.wait(30)
        raise OSError("disk gone")

    monkeypatch.setattr(virtual, "virtual_image", broken)
    np.save(tmp_path / "scan.npy", np.ones((3, 4, 16, 16), np.uint16))
    viewer = make_napari_viewer()
    before = len(notification_manager.records)
    (layer,) = viewer.open(str(tmp_path / "scan.npy"), plugin=PLUGIN)
    assert layer.metadata[INTEGRATING] is True
    checked.set()
    qtbot.waitUntil(lambda: INTEGRATING not in layer.metadata, timeout=30000)
    assert not np.any(layer.data)
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("integrated image failed" in m and "disk gone" in m and "scan.npy" in m for m in messages), messages


def test_a_fresh_viewer_opening_a_scan_raises_nothing_in_the_warm_up_thread(tmp_path):
    """In a new napari process, opening a scan starts the plugin's warm-up thread while the viewer
    builds pint's unit registry in the event loop; the thread read "nm" from the half-built
    registry and died with UndefinedUnitError on almost every start (an unhandled thread
    exception). The scan's units come out in nm all the same."""
    import subprocess
    import sys

    from napari_sedclassify.simulate import simulate_scan

    simulate_scan(tmp_path / "scan.npy", scan_shape=(4, 4), detector_px=32, seed=1)
    script = tmp_path / "open.py"
    script.write_text(
        "import threading, time\n"
        "errors = []\n"
        "threading.excepthook = lambda a: errors.append(repr(a.exc_value))\n"
        "import napari\n"
        "from qtpy.QtWidgets import QApplication\n"
        "viewer = napari.Viewer(show=False)\n"
        f"layers = viewer.open({str(tmp_path / 'scan.npy')!r}, plugin='napari-sedclassify')\n"
        "from napari_sedclassify._napari import reader\n"
        "t0 = time.time()\n"
        "while reader._warming.is_alive() and time.time() - t0 < 60:\n"
        "    QApplication.processEvents(); time.sleep(0.02)\n"
        "print('units', [str(u) for u in layers[0].units])\n"
        "print('errors', errors)\n"
        "viewer.close()\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "units ['nanometer', 'nanometer']" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "errors []" in out.stdout, out.stdout
