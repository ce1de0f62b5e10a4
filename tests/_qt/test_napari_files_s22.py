"""Session 22 in napari: the Flat-field widget chooses the dataset of a flat-field file that holds
several (an HDF5 file of a flood and a dark stack, a DECTRIS master file of a flood acquisition),
listed in a box filled off the event loop with none chosen and the engine's one-line refusal in
place; a damaged file says so in one line. The RIA step's "Fit camera length" shows
``CalibrationResult.warnings`` (a chip-edge pixel width the frames contradict) as napari
warnings and under the fitted value."""

from __future__ import annotations

import json
from dataclasses import replace

import h5py
import numpy as np
import pytest

from napari_sedclassify._napari.layers import find_scan
from napari_sedclassify._napari.state import FLATFIELD_KEY, flatfield_of, set_state
from napari_sedclassify._napari.wording import in_napari_words
from napari_sedclassify.processing import load_flatfield

simulate = pytest.importorskip("napari_sedclassify.simulate")

PLUGIN = "napari-sedclassify"
SPECIFIC = "entry/instrument/detector/detectorSpecific"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny scan (8 x 8 points, 128 px), its session's flood (20 frames) and that flood written
    into an HDF5 file beside a dark stack (4 frames of zeros)."""
    folder = tmp_path_factory.mktemp("files")
    sim = simulate.simulate_scan(folder / "scan.npy", scan_shape=(8, 8), detector_px=128, seed=2)
    flood = np.load(sim.flatfield_path)
    with h5py.File(folder / "flat.h5", "w") as f:
        f["entry/flood"] = flood
        f["entry/dark"] = np.zeros_like(flood[:4])
    return sim, flood, folder / "flat.h5"


def open_scan_layer(viewer, path):
    (layer,) = [lay for lay in viewer.open(str(path), plugin=PLUGIN) if find_scan(lay) is not None]
    return layer


def on_show(widget) -> bool:
    """Whether the widget is shown in its dock (the viewer itself stays off screen)."""
    return not widget.native.isHidden()


def flatfield_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Flat-field")
    return widget


def choose_file(qtbot, widget, path):
    """Choose ``path`` as the flat-field file and wait for its datasets to be listed."""
    widget._path.value = path
    job = widget._listing
    if job is not None:
        qtbot.waitUntil(lambda: job.done, timeout=30000)
        assert job.outcome == "done", job.error


def load(qtbot, widget):
    job = widget.run()
    assert job is not None
    qtbot.waitUntil(lambda: job.done, timeout=60000)
    return job


def dectris_flood_master(path, flood):
    """A DECTRIS NeXus master file of a flood acquisition: its frames in a data file that
    entry/data/data_000001 links to, and the detector's own flat-field (the factors it multiplies
    counts by) and pixel mask (nonzero = bad)."""
    response = flood.mean(axis=0)
    factors = np.where(response > 0, response.mean() / np.where(response > 0, response, 1), 0.0)
    data_name = path.name.replace("_master.h5", "_data_000001.h5")
    with h5py.File(path.parent / data_name, "w") as d:
        d["entry/data/data"] = flood.astype(np.uint32)
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.create_group("data").attrs["NX_class"] = "NXdata"
        det = entry.create_group("instrument/detector")
        det.attrs["NX_class"] = "NXdetector"
        det["description"] = b"Dectris ARINA CZT"
        det["x_pixel_size"] = det["y_pixel_size"] = 1e-4
        det["detectorSpecific/flatfield"] = factors.astype(np.float32)
        det["detectorSpecific/pixel_mask"] = np.zeros(response.shape, np.uint32)
        entry["data/data_000001"] = h5py.ExternalLink(data_name, "entry/data/data")
    return path


def test_the_dataset_of_an_hdf5_flatfield_is_chosen_in_a_box(make_napari_viewer, qtbot, tiny, notifications):
    """Flood and dark in one file: both listed (name, shape), none chosen, the engine's refusal in
    place; Load without a choice is refused at once; the flood loads when chosen; the dark (no
    response) fails in one line, the flood kept; a .npy needs no choice."""
    sim, flood, flat = tiny
    viewer = make_napari_viewer()
    layer = open_scan_layer(viewer, sim.scan.source)
    widget = flatfield_widget(viewer)

    choose_file(qtbot, widget, flat)
    assert on_show(widget._dataset) and widget._dataset.value is None
    assert widget._dataset.choices == (None, "entry/dark", "entry/flood")
    assert [widget._dataset.native.itemText(i) for i in range(1, 3)] == [
        "entry/dark: 4 frames of 128 x 128 px", "entry/flood: 20 frames of 128 x 128 px"]
    with pytest.raises(ValueError) as refused:  # what the engine says of the file, shown as it says it
        load_flatfield(flat)
    assert on_show(widget._datasets_note) and widget._datasets_note.value == in_napari_words(str(refused.value))
    assert "the Flat-field widget's dataset box" in widget._datasets_note.value

    assert widget.run() is None and flatfield_of(layer) is None
    assert any("choose its dataset" in n and "several datasets" in n for n in notifications)

    widget._dataset.value = "entry/flood"
    assert load(qtbot, widget).outcome == "done"
    ff = flatfield_of(layer)
    assert ff.source == f"{flat}:/entry/flood" and not on_show(widget._datasets_note)
    assert widget._summary.value.startswith("flat.h5:/entry/flood: gain")
    np.testing.assert_array_equal(ff.gain, load_flatfield(sim.flatfield_path).gain)

    widget._dataset.value = "entry/dark"
    job = load(qtbot, widget)
    assert job.outcome == "failed" and flatfield_of(layer) is ff
    (shown,) = [n for n in notifications if "entry/dark" in n and "no positive response" in n]
    assert "\n" not in shown and "Traceback" not in shown
    assert widget._jobs.status.value.startswith("failed: ") and "Traceback" not in widget._jobs.status.value

    choose_file(qtbot, widget, sim.flatfield_path)  # one flood stack: nothing to choose
    assert widget._listing is None and not on_show(widget._dataset) and not on_show(widget._datasets_note)
    assert load(qtbot, widget).outcome == "done" and flatfield_of(layer).source == str(sim.flatfield_path)


def test_a_dectris_master_of_a_flood_offers_its_frames_and_the_detectors_flatfield(
        make_napari_viewer, qtbot, tiny, tmp_path):
    """The master file of a flood acquisition holds the flood's frames (read through its data
    file as entry/data) and the detector's own flat-field: both offered (the pixel mask is not a
    flat-field); either, chosen, corrects the same pixels alike."""
    sim, flood, _ = tiny
    master = dectris_flood_master(tmp_path / "flood_master.h5", flood)
    viewer = make_napari_viewer()
    layer = open_scan_layer(viewer, sim.scan.source)
    widget = flatfield_widget(viewer)

    choose_file(qtbot, widget, master)
    names = widget._dataset.choices[1:]
    assert names == ("entry/data", f"{SPECIFIC}/flatfield") and widget._dataset.value is None
    assert widget._dataset.native.itemText(1) == "entry/data: 20 frames of 128 x 128 px"
    assert widget._dataset.native.itemText(2) == f"{SPECIFIC}/flatfield: 128 x 128 px image"
    assert "several datasets" in widget._datasets_note.value

    loaded = {}
    for name in names:
        widget._dataset.value = name
        assert load(qtbot, widget).outcome == "done"
        loaded[name] = flatfield_of(layer)
        assert loaded[name].source == f"{master}:/{name}"
    frames, image = loaded.values()
    np.testing.assert_array_equal(frames.mask, image.mask)
    np.testing.assert_allclose(frames.gain, image.gain, rtol=1e-5)


def test_a_damaged_flatfield_file_says_so_in_one_line(make_napari_viewer, qtbot, tiny, tmp_path, notifications):
    """A text file named .h5: the listing says in place that it cannot be read, Load fails with the
    engine's one line, nothing is loaded and the viewer goes on."""
    sim, _, _ = tiny
    bad = tmp_path / "flood.h5"
    bad.write_text("flood frames: see the lab notebook\n")
    viewer = make_napari_viewer()
    layer = open_scan_layer(viewer, sim.scan.source)
    widget = flatfield_widget(viewer)

    choose_file(qtbot, widget, bad)
    note = widget._datasets_note.value
    assert not on_show(widget._dataset) and note.startswith(f"{bad}: cannot list its datasets") and "\n" not in note
    job = load(qtbot, widget)
    assert job.outcome == "failed" and flatfield_of(layer) is None
    (shown,) = [n for n in notifications if str(bad) in n]
    assert "not an HDF5 file" in shown and "\n" not in shown and "Traceback" not in shown


def test_fit_camera_length_shows_the_calibrations_warnings(make_napari_viewer, qtbot, tmp_path, notifications):
    """A 512 px Medipix3 quad whose wide chip-edge pixels are 3 pitches, its file stating 1: the
    fitted camera length comes with the engine's warning, as a napari warning and under the value."""
    from napari_sedclassify._napari.state import calibration_of
    from napari_sedclassify._napari.widgets.ria import RIAWidget

    sess = replace(simulate.session_params("A"), edge_pixel_width=3.0)
    sim = simulate.simulate_scan(tmp_path / "quad.npy", scan_shape=(10, 10), detector_px=512, session=sess, seed=6)
    stated = tmp_path / "quad.json"
    metadata = json.loads(stated.read_text())
    metadata["edge_pixel_width"] = 1.0  # what the file says; the frames show 3
    stated.write_text(json.dumps(metadata))
    viewer = make_napari_viewer()
    layer = open_scan_layer(viewer, sim.scan.source)
    set_state(layer, FLATFIELD_KEY, load_flatfield(sim.flatfield_path))
    ria = RIAWidget(viewer)
    viewer.window.add_dock_widget(ria)

    job = ria.calibrate()
    qtbot.waitUntil(lambda: job.done, timeout=180000)
    assert job.outcome == "done", job.error
    (warning,) = calibration_of(layer).warnings
    assert warning.startswith(f"{sim.scan.source}: the chip-edge pixels were taken as 1 pitches wide (file)")
    shown = in_napari_words(warning)  # the engine's --edge-pixel-width advice in the widgets' words
    assert "--edge-pixel-width" not in shown and "chip-edge pixel width (Scan geometry" in shown
    assert f"Camera length: {shown}" in notifications
    info = ria.calibration_info.value
    assert "fitted from" in info and info.endswith(f"<br><b>warning</b>: {shown}")
