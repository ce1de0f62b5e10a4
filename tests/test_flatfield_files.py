"""Flat-field files as other tools and detectors write them: each loads as the flat-field it is, or
is refused in one line naming the file and the problem.

The flood is a simulated session's flat-field acquisition (its detector's gain map, dead, hot and
wide chip-edge pixels, Poisson counts); DECTRIS master files are laid out as the real ARINA file in
``shared/realdata/arina`` (``entry/instrument/detector/detectorSpecific/{flatfield,pixel_mask}``,
``entry/data/data_000001`` an external link to the data file).
"""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
import tifffile

from napari_sedclassify.cli import main
from napari_sedclassify.processing import load_flatfield

simulate = pytest.importorskip("napari_sedclassify.simulate")

SPECIFIC = "entry/instrument/detector/detectorSpecific"


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A tiny scan (8 x 8 points, 128 px) and its session's flood (20 frames, uint16)."""
    folder = tmp_path_factory.mktemp("flat")
    sim = simulate.simulate_scan(folder / "scan.npy", scan_shape=(8, 8), detector_px=128, seed=3)
    return sim.scan.source, np.load(sim.flatfield_path), sim.flatfield_path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _preprocess(capsys, scan, flat, out, *extra):
    return _run(capsys, "preprocess", scan, "--flatfield", flat, *extra, "-o", out)


def _dectris_master(path, *, flatfield=None, pixel_mask=None, frames=None):
    """A DECTRIS NeXus master file: the detector's flat-field (correction factors) and pixel mask,
    and, given frames, a data file its entry/data/data_000001 links to."""
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        det = entry.create_group("instrument/detector")
        det.attrs["NX_class"] = "NXdetector"
        det["description"] = b"Dectris ARINA CZT"
        det["flatfield_correction_applied"] = np.int8(0)
        det["pixel_mask_applied"] = np.int8(0)
        det["x_pixel_size"] = 1e-4
        det["y_pixel_size"] = 1e-4
        det["detectorSpecific/countrate_correction_table"] = np.zeros((8398, 2), np.float32)
        if flatfield is not None:
            det["detectorSpecific/flatfield"] = flatfield.astype(np.float32)
        if pixel_mask is not None:
            det["detectorSpecific/pixel_mask"] = pixel_mask.astype(np.uint32)
        if frames is not None:
            name = path.name.replace("_master.h5", "_data_000001.h5")
            with h5py.File(path.parent / name, "w") as d:
                d["entry/data/data"] = frames
            data["data_000001"] = h5py.ExternalLink(name, "entry/data/data")
    return path


# ---- 2D gain maps in HDF5: a DECTRIS master file's flat-field and pixel mask, a flood image ---------


def test_a_dectris_flatfield_is_a_correction_and_its_pixel_mask_marks_bad_pixels(session, tmp_path, capsys):
    """DECTRIS stores the factors it multiplies counts by (0 at dead pixels): loaded, they
    correct a uniform exposure through the same detector to flat, as the flood they were made
    from does (not to twice the gain spread, as the factors taken for a response would), and
    the pixel mask's nonzero pixels are masked."""
    scan, flood, flood_path = session
    from_flood = load_flatfield(flood_path)
    response = flood.mean(axis=0)
    factors = np.where(response > 0, response.mean() / np.where(response > 0, response, 1), 0.0)
    pixel_mask = np.zeros(response.shape, np.uint32)
    pixel_mask[[10, 40, 90], [20, 70, 5]] = [1, 2, 16]  # gap, dead, noisy (DECTRIS's bits)
    master = _dectris_master(tmp_path / "arina_master.h5", flatfield=factors, pixel_mask=pixel_mask)

    ff = load_flatfield(master)  # the flat-field is the only image: no dataset to choose
    np.testing.assert_array_equal(ff.mask, from_flood.mask | (pixel_mask != 0))
    good = ~ff.mask
    np.testing.assert_allclose(ff.gain[good] / np.mean(ff.gain[good]),
                               from_flood.gain[good] / np.mean(from_flood.gain[good]), rtol=1e-5)
    rng = np.random.default_rng(0)
    exposure = rng.poisson(200.0 * response / response.mean(), (4,) + response.shape).astype(np.uint16)
    corrected = ff.apply(exposure)
    raw_spread = np.std(exposure[:, good].mean(axis=0)) / np.mean(exposure[:, good])
    assert np.std(corrected[:, good].mean(axis=0)) / np.nanmean(corrected) < 0.5 * raw_spread

    code, _, err = _preprocess(capsys, scan, master, tmp_path / "r.h5")
    assert code == 0, err


def test_a_dectris_master_with_frames_asks_which_and_reads_either(session, tmp_path, capsys):
    """A master file of a flood acquisition holds the flood's frames and the detector's own
    flat-field: refused in one line naming both; each is read when chosen."""
    scan, flood, _ = session
    response = flood.mean(axis=0)
    factors = np.where(response > 0, response.mean() / np.where(response > 0, response, 1), 0.0)
    master = _dectris_master(tmp_path / "flood_master.h5", flatfield=factors,
                             pixel_mask=np.zeros(response.shape, np.uint32), frames=flood.astype(np.uint32))
    code, _, err = _preprocess(capsys, scan, master, tmp_path / "none.h5")
    (line,) = err.splitlines()
    assert code == 2 and line.startswith(f"sedclassify preprocess: error: {master}: the flat-field file holds "
                                         "several datasets")
    assert "--flatfield-dataset" in line and "entry/data 20x128x128 uint32" in line
    assert f"{SPECIFIC}/flatfield 128x128 float32" in line and "pixel_mask" not in line
    frames = load_flatfield(master, dataset="entry/data")
    image = load_flatfield(master, dataset=f"/{SPECIFIC}/flatfield")
    np.testing.assert_array_equal(frames.mask, image.mask)
    np.testing.assert_allclose(frames.gain, image.gain, rtol=1e-5)
    assert image.source == f"{master}:/{SPECIFIC}/flatfield"


def test_the_real_arina_master_files_flatfield(realdata):
    """The real ARINA master file: its detector flat-field (every factor 1.0) and empty pixel mask
    give no correction and no masked pixel."""
    pytest.importorskip("hdf5plugin")
    ff = load_flatfield(realdata / "arina" / "test_00_master.h5", dataset=f"{SPECIFIC}/flatfield")
    assert ff.shape == (192, 192) and not ff.mask.any()
    np.testing.assert_array_equal(ff.gain, 1.0)


def test_a_2d_flood_image_in_hdf5_is_the_response(session, tmp_path):
    """A 2D flood image (counts summed over the flood) in an HDF5 file is the response: the same
    flat-field as the stack it was summed from."""
    _, flood, flood_path = session
    path = tmp_path / "flood2d.h5"
    with h5py.File(path, "w") as f:
        f["flood"] = flood.sum(axis=0, dtype=np.uint32)
        f["pixel_mask_of_my_own"] = np.zeros(flood.shape[1:], np.uint8)  # a mask is no candidate
    ff, ref = load_flatfield(path), load_flatfield(flood_path)
    np.testing.assert_array_equal(ff.mask, ref.mask)
    np.testing.assert_allclose(ff.gain, ref.gain, rtol=1e-5)


# ---- a flat-field is not a scan: no scan-shape note, its own option named --------------------------------


def test_a_flood_stack_gets_no_scan_shape_note(session, tmp_path, capsys, caplog):
    """20 flood frames in an HDF5 file or a multi-page TIFF: no "no scan shape ... opened as one
    row" (a flood has no scan shape); the same file opened as a scan still says it."""
    from napari_sedclassify.io import open_scan

    scan, flood, flood_path = session
    h5 = tmp_path / "flat.h5"
    with h5py.File(h5, "w") as f:
        f["flood"] = flood
    tif = tmp_path / "flood.tif"
    tifffile.imwrite(tif, flood)
    ref = load_flatfield(flood_path)
    for path in (h5, tif):
        with caplog.at_level(logging.WARNING):
            ff = load_flatfield(path)
        assert "no scan shape" not in caplog.text
        np.testing.assert_array_equal(ff.gain, ref.gain)
        code, _, err = _preprocess(capsys, scan, path, tmp_path / f"{path.suffix[1:]}.h5")
        assert code == 0 and "no scan shape" not in err, err
    with caplog.at_level(logging.WARNING):
        open_scan(h5)
    assert f"{h5}: 20 frames and no scan shape in the file: opened as one row" in caplog.text


@pytest.mark.parametrize("kind", ["mat", "zarr"])
def test_matlab_and_zarr_flatfields_name_the_flatfield_option(session, tmp_path, capsys, kind):
    """A MATLAB or zarr flat-field holding the flood and a dark stack: refused in one line that
    points to --flatfield-dataset (--dataset chooses the scan's array); read when chosen."""
    scan, flood, flood_path = session
    path = tmp_path / f"flat.{kind}"
    if kind == "mat":
        import scipy.io

        scipy.io.savemat(path, {"flood": flood, "dark": np.zeros_like(flood[:4])})
    else:
        zarr = pytest.importorskip("zarr")
        group = zarr.open_group(str(path), mode="w")
        group.create_array("flood", data=flood)
        group.create_array("dark", data=np.zeros_like(flood[:4]))
    code, _, err = _preprocess(capsys, scan, path, tmp_path / "none.h5")
    (line,) = err.splitlines()
    assert code == 2 and line.startswith(f"sedclassify preprocess: error: {path}: several ")
    assert "could be the flat-field" in line and "--flatfield-dataset NAME (Python: dataset=NAME)" in line
    assert "--dataset NAME" not in line.replace("--flatfield-dataset", "")
    code, _, err = _preprocess(capsys, scan, path, tmp_path / "r.h5", "--flatfield-dataset", "flood")
    assert code == 0, err
    np.testing.assert_array_equal(load_flatfield(path, dataset="flood").gain, load_flatfield(flood_path).gain)
    # what a user (napari's Flat-field widget) is offered to choose from: the names load_flatfield takes
    from napari_sedclassify.processing.flatfield import flatfield_datasets

    assert sorted(flatfield_datasets(path)) == [("dark", (4,) + flood.shape[1:]), ("flood", flood.shape)]
    assert flatfield_datasets(flood_path) == []


# ---- TIFF gain maps, NaNs in a flood, shapes, nothing to read ------------------------------------------


def test_a_single_page_float32_tiff_is_a_gain_map(session, tmp_path):
    _, flood, flood_path = session
    mean = flood.mean(axis=0)
    path = tmp_path / "gain.tif"
    tifffile.imwrite(path, (mean / mean.mean()).astype(np.float32))
    ff, ref = load_flatfield(path), load_flatfield(flood_path)
    np.testing.assert_array_equal(ff.mask, ref.mask)
    np.testing.assert_allclose(ff.gain, ref.gain, rtol=1e-5)


def test_nans_in_some_flood_frames_leave_the_mean_of_the_others(session, tmp_path):
    """A float flood stack with 1 % of its values NaN (a lost readout here and there): each pixel's
    response is the mean of its finite frames; only a pixel NaN in every frame is masked."""
    _, flood, flood_path = session
    rng = np.random.default_rng(1)
    frames = np.where(rng.random(flood.shape) < 0.01, np.nan, flood.astype(np.float32))
    frames[:, 60, 61] = np.nan
    np.save(tmp_path / "nan.npy", frames)
    ff, ref = load_flatfield(tmp_path / "nan.npy"), load_flatfield(flood_path)
    expected = ref.mask.copy()
    expected[60, 61] = True
    np.testing.assert_array_equal(ff.mask, expected)
    good = ~ff.mask
    assert np.max(np.abs(ff.gain[good] / ref.gain[good] - 1)) < 0.05  # 19 or 20 frames of ~500 counts


@pytest.mark.parametrize("factor", [2, 0.5])
def test_a_flatfield_of_another_binning_is_refused_saying_so(session, tmp_path, capsys, factor):
    scan, flood, _ = session
    if factor == 2:  # the scan's detector binned 2x2
        frames = flood.reshape(20, 64, 2, 64, 2).sum(axis=(2, 4))
        said = "the flat-field is the detector binned 2x2"
    else:  # the scan's frames binned 2x2
        frames = np.repeat(np.repeat(flood, 2, axis=1), 2, axis=2)
        said = "the scan's frames are binned 2x2"
    np.save(tmp_path / "binned.npy", frames)
    code, _, err = _preprocess(capsys, scan, tmp_path / "binned.npy", tmp_path / "r.h5")
    (line,) = err.splitlines()
    assert code == 2 and f"flat-field {tmp_path / 'binned.npy'} {frames.shape[1:]}" in line
    assert f"does not match the detector (128, 128) of {scan}: {said}" in line
    np.save(tmp_path / "other.npy", flood[:, :, :100])
    code, _, err = _preprocess(capsys, scan, tmp_path / "other.npy", tmp_path / "r.h5")
    (line,) = err.splitlines()
    assert code == 2 and line.endswith(f"(128, 100) does not match the detector (128, 128) of {scan}")


def test_files_without_a_flatfield_are_refused_in_one_line(session, tmp_path, capsys):
    scan, _, _ = session
    np.save(tmp_path / "zeros.npy", np.zeros((128, 128), np.float32))
    (tmp_path / "empty.h5").touch()
    h5py.File(tmp_path / "no_dataset.h5", "w").close()
    with h5py.File(tmp_path / "nothing.h5", "w") as f:
        f["table"] = np.zeros((500, 2), np.float32)
    nothing = "no dataset that could be a flat-field (a 2D image of at least 8x8 px, or a 3D/4D stack of frames)"
    expected = {
        "zeros.npy": "no positive response in any pixel",
        "empty.h5": "empty file",
        "no_dataset.h5": nothing,
        "nothing.h5": nothing,
    }
    for name, said in expected.items():
        code, _, err = _preprocess(capsys, scan, tmp_path / name, tmp_path / "r.h5")
        (line,) = err.splitlines()
        assert code == 2 and line.startswith(f"sedclassify preprocess: error: {tmp_path / name}: ")
        assert said in line, line


def test_a_merlin_flood_gets_no_scan_shape_note(realdata, tmp_path, caplog):
    """Eight frames of a real Merlin file (Single_9_..., 12-bit, 256 px) cut to a flood stack of 8
    (no square scan): read as a flat-field without the scan reader's "no scan shape" note, which
    the same file opened as a scan still gives."""
    from napari_sedclassify.io import open_scan

    source = realdata / "merlin" / "Single_9_Frame_CounterDepth_12_Rows_256.mib"
    data = source.read_bytes()
    assert len(data) % 9 == 0
    flood = tmp_path / "flood8.mib"
    flood.write_bytes(data[:8 * (len(data) // 9)])
    with caplog.at_level(logging.WARNING):
        ff = load_flatfield(flood)
    assert ff.shape == (256, 256)
    assert "no scan shape" not in caplog.text
    with caplog.at_level(logging.WARNING):
        open_scan(flood)
    assert "no scan shape" in caplog.text
