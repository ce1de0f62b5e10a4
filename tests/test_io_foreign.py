"""Files other tools write: TIFF written a page at a time or compressed and read by many threads,
`.npy` sidecar JSON of another tool, HDF5 ``scan_shape`` attributes and plugin filters."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from napari_sedclassify.errors import ScanFormatError
from napari_sedclassify.io import open_scan

tifffile = pytest.importorskip("tifffile")


@pytest.fixture
def stack():
    rng = np.random.default_rng(7)
    return rng.poisson(30.0, size=(16, 24, 24)).astype(np.uint16)


def _one_line_error(path, *words, **kwargs):
    with pytest.raises(ScanFormatError) as err:
        open_scan(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert word in message, message
    return message


# ---- TIFF ------------------------------------------------------------------------------------


def test_compressed_tiff_read_by_many_threads_at_once(tmp_path):
    """The reading threads of a run share one source: each needs its own TiffFile (a shared one
    garbles its file position: zlib "incorrect header check", wrong frames)."""
    rng = np.random.default_rng(0)
    frames = rng.poisson(5.0, size=(64, 32, 32)).astype(np.uint16)
    path = tmp_path / "zlib.tif"
    tifffile.imwrite(path, frames, compression="zlib")
    for _ in range(60):
        scan = open_scan(path, (8, 8))
        with ThreadPoolExecutor(8) as pool:
            blocks = list(pool.map(lambda i: scan.read(np.arange(i, i + 2)), range(0, 64, 2)))
        np.testing.assert_array_equal(np.concatenate(blocks), frames)


def test_undecodable_compressed_frame_is_one_line_naming_file_and_frame(tmp_path, stack):
    path = tmp_path / "damaged.tif"
    tifffile.imwrite(path, stack, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[5].dataoffsets[0], tif.pages[5].databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[offset:offset + count] = b"\xff" * count  # frame 5: not a zlib stream (frames 0, 8, 15 are fine)
    path.write_bytes(bytes(raw))
    scan = open_scan(path, (4, 4))
    with pytest.raises(ScanFormatError) as err:
        scan.read(np.arange(4, 8))
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "frame 5" in message, message


def test_tiff_written_one_page_at_a_time_reads_its_pages_as_frames(tmp_path, stack):
    """tifffile's TiffWriter.write() in a loop records a one-page series per page (shaped
    metadata): pages = frames, as for any multi-page file."""
    path = tmp_path / "pagewise.tif"
    with tifffile.TiffWriter(path) as w:
        for frame in stack:
            w.write(frame)
    scan = open_scan(path)
    assert scan.scan_shape == (4, 4) and scan.detector_shape == (24, 24)
    np.testing.assert_array_equal(scan.read(np.arange(16)), stack)


def test_tiff_written_in_blocks_of_pages_reads_all_series(tmp_path, stack):
    path = tmp_path / "blocks.tif"
    with tifffile.TiffWriter(path) as w:
        for i in range(0, 16, 8):  # (not 4: tifffile writes (4, y, x) as one page of 4 samples)
            w.write(stack[i:i + 8], compression="zlib")
    scan = open_scan(path)
    assert scan.scan_shape == (4, 4)
    np.testing.assert_array_equal(scan.read(np.arange(16)), stack)


def test_tiff_pages_of_two_sizes_name_the_odd_page(tmp_path, stack):
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as w:
        for i, frame in enumerate(stack):
            w.write(frame if i != 7 else frame[:12, :12])
    _one_line_error(path, "page 7", "12x12")


def test_garbage_tiff_logs_nothing_besides_the_error(tmp_path, caplog):
    path = tmp_path / "garbage.tif"
    path.write_bytes(b"II*\x00" + np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with caplog.at_level(logging.DEBUG):
        _one_line_error(path)
    assert not [r for r in caplog.records if r.name.startswith("tifffile")], caplog.text


# ---- .npy sidecar JSON of another tool ---------------------------------------------------------


def _npy_with_sidecar(tmp_path, stack, text: str, name: str = "scan"):
    path = tmp_path / f"{name}.npy"
    np.save(path, stack)
    (tmp_path / f"{name}.json").write_bytes(text.encode("utf-8"))
    return path


@pytest.mark.parametrize("doc, words", [
    ([1, 2, 3], ["JSON object", "list"]),
    ({"geometry": [55, 900]}, ["geometry", "object"]),
    ({"scan_shape": "4x4"}, ["scan_shape", "'4x4'"]),
    ({"scan_shape": [4, None]}, ["scan_shape"]),
    ({"scan_shape": [3, 3]}, ["scan_shape", "9 positions for 16 frames"]),
    ({"scan_shape": [0, 16]}, ["scan_shape", "at least 1"]),
    ({"geometry": {"pixel_size_um": "55um", "camera_length_mm": None}}, ["geometry.pixel_size_um", "number", "55um"]),
    ({"geometry": {"pixel_size_um": -55}}, ["geometry.pixel_size_um", "positive"]),
    ({"geometry": {"pixel_size_um": 55, "camera_length_mm": 0}}, ["geometry.camera_length_mm", "positive"]),
    ({"geometry": {"voltage_kv": float("nan")}}, ["geometry.voltage_kv", "positive"]),
])
def test_a_bad_npy_sidecar_is_one_line_naming_it_and_the_field(tmp_path, stack, doc, words):
    path = _npy_with_sidecar(tmp_path, stack, json.dumps(doc))
    sidecar = tmp_path / "scan.json"
    with pytest.raises(ScanFormatError) as err:
        open_scan(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{sidecar}:"), message
    for word in words:
        assert word in message, message


def test_npy_sidecar_values_get_the_command_line_check(tmp_path, stack):
    """The same values on the command line (``geometry=``) are refused with the same words."""
    from napari_sedclassify.geometry import Geometry

    with pytest.raises(ValueError) as flag:
        Geometry().with_values("user", pixel_size_um=-55)
    path = _npy_with_sidecar(tmp_path, stack, json.dumps({"geometry": {"pixel_size_um": -55}}))
    with pytest.raises(ScanFormatError) as side:
        open_scan(path)
    assert str(flag.value) in str(side.value)


def test_npy_sidecar_with_a_utf8_bom_is_read(tmp_path, stack):
    doc = {"scan_shape": [2, 8], "geometry": {"pixel_size_um": 110, "camera_length_mm": 450}}
    path = _npy_with_sidecar(tmp_path, stack, "\ufeff" + json.dumps(doc))
    scan = open_scan(path)
    assert scan.scan_shape == (2, 8)
    assert (scan.geometry.pixel_size_um, scan.geometry.camera_length_mm) == (110, 450)
    assert scan.geometry.origin("pixel_size_um") == "file"


def test_a_given_scan_shape_wins_over_a_bad_sidecar_scan_shape(tmp_path, stack):
    path = _npy_with_sidecar(tmp_path, stack, json.dumps({"scan_shape": "4x4"}))
    assert open_scan(path, (2, 8)).scan_shape == (2, 8)


# ---- HDF5 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("on", ["dataset", "root"])
def test_hdf5_scan_shape_attribute_shapes_a_stack(tmp_path, stack, on):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / f"attr_{on}.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("frames", data=stack)
        (ds if on == "dataset" else f).attrs["scan_shape"] = (2, 8)
    scan = open_scan(path)
    assert scan.scan_shape == (2, 8) and "scan_shape" in scan.metadata["scan_shape_from"]
    np.testing.assert_array_equal(scan.read(np.arange(16)), stack)
    assert open_scan(path, (4, 4)).scan_shape == (4, 4)  # given wins


@pytest.mark.parametrize("value, words", [((3, 3), ["3x3", "9 positions for 16 frames"]),
                                          ("4x4", ["'4x4'", "not a scan shape"])])
def test_hdf5_scan_shape_attribute_without_room_for_the_frames_is_an_error(tmp_path, stack, value, words):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "bad_attr.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("frames", data=stack).attrs["scan_shape"] = value
    _one_line_error(path, "attribute scan_shape", *words)


def test_hdf5_plugin_compression_is_named(tmp_path, stack):
    h5py = pytest.importorskip("h5py")
    hdf5plugin = pytest.importorskip("hdf5plugin")
    path = tmp_path / "zstd.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("zstd", data=stack, chunks=(1, 24, 24), **hdf5plugin.Zstd())
        f.create_dataset("bslz4", data=stack, chunks=(1, 24, 24), **hdf5plugin.Bitshuffle())
        f.create_dataset("gzip", data=stack, chunks=(1, 24, 24), compression="gzip", shuffle=True)
    assert open_scan(path, dataset="zstd").metadata["compression"] == "zstd (HDF5 filter 32015)"
    assert open_scan(path, dataset="bslz4").metadata["compression"] == "bitshuffle-lz4 (HDF5 filter 32008)"
    assert open_scan(path, dataset="gzip").metadata["compression"] == "gzip"


def test_zarr_attributes_get_the_same_checks(tmp_path, stack):
    zarr = pytest.importorskip("zarr")
    path = tmp_path / "neg.zarr"
    z = zarr.open_array(str(path), mode="w", shape=stack.shape, chunks=(4, 24, 24), dtype=stack.dtype)
    z[:] = stack
    z.attrs["geometry"] = {"pixel_size_um": -55}
    _one_line_error(path, "geometry.pixel_size_um", "positive")
    z.attrs.update({"geometry": {"pixel_size_um": 110}, "scan_shape": [3, 3]})
    _one_line_error(path, "zarr attribute scan_shape", "9 positions for 16 frames")
    z.attrs["scan_shape"] = [2, 8]
    assert open_scan(path).scan_shape == (2, 8)
