"""Readers on the real detector files of ../shared/realdata (MANIFEST.md) and on files written here.

Expected shapes, dtypes and sums are the MANIFEST's (measured independently with numpy/h5py).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil

import numpy as np
import pytest

from napari_sedclassify.errors import ScanFormatError
from napari_sedclassify.io import open_scan

# MANIFEST table: file -> (frames, frame array shape, dtype on disk, sum of all frames, max)
MERLIN = {
    "001_4x2_6bit.mib": (8, (256, 256), ">u1", 3623664, 63),
    "002_4x2_6bit_roi128.mib": (8, (128, 256), ">u1", 3263829, 63),
    "Quad_1_Frame_CounterDepth_1_Rows_256.mib": (1, (512, 512), ">u1", 10331, 1),
    "Quad_1_Frame_CounterDepth_6_Rows_256.mib": (1, (512, 512), ">u1", 115263, 63),
    "Quad_1_Frame_CounterDepth_12_Rows_256.mib": (1, (512, 512), ">u2", 845907, 4093),
    "Quad_1_Frame_CounterDepth_24_Rows_256.mib": (1, (512, 512), ">u4", 778764, 4095),
    "Quad_9_Frame_CounterDepth_1_Rows_256.mib": (9, (512, 512), ">u1", 92639, 1),
    "Quad_9_Frame_CounterDepth_6_Rows_256.mib": (9, (512, 512), ">u1", 1032369, 63),
    "Single_1_Frame_CounterDepth_1_Rows_256.mib": (1, (256, 256), ">u1", 2398, 1),
    "Single_1_Frame_CounterDepth_6_Rows_256.mib": (1, (256, 256), ">u1", 24336, 63),
    "Single_1_Frame_CounterDepth_12_Rows_256.mib": (1, (256, 256), ">u2", 28911, 2239),
    "Single_1_Frame_CounterDepth_24_Rows_256.mib": (1, (256, 256), ">u4", 29416, 2255),
    "Single_9_Frame_CounterDepth_1_Rows_256.mib": (9, (256, 256), ">u1", 21614, 1),
    "Single_9_Frame_CounterDepth_6_Rows_256.mib": (9, (256, 256), ">u1", 217684, 63),
    "Single_9_Frame_CounterDepth_12_Rows_256.mib": (9, (256, 256), ">u2", 260753, 2216),
    "Single_9_Frame_CounterDepth_24_Rows_256.mib": (9, (256, 256), ">u4", 258156, 2074),
}
RAW = ["Single_1", "Single_9", "Quad_1", "Quad_9"]


def _frames(scan) -> np.ndarray:
    """All recorded frames (n, y, x) in scan order."""
    return np.asarray(scan.frames().compute())[~scan.missing.ravel()]


def _file_state(path):
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(MERLIN))
def test_merlin_files_match_manifest(realdata, name):
    frames, shape, disk, total, top = MERLIN[name]
    scan = open_scan(realdata / "merlin" / name)
    assert scan.n_frames == frames and not scan.missing.any()
    assert scan.detector_shape == shape
    assert np.dtype(scan.metadata["dtype_on_disk"]) == np.dtype(disk)
    assert scan.dtype == np.dtype(disk).newbyteorder("=")
    data = _frames(scan)
    assert int(data.sum(dtype=np.int64)) == total
    assert int(data.max()) == top
    chunk = tuple(c[0] for c in scan.data.chunks)
    assert chunk[2:] == shape  # whole frames per chunk


@pytest.mark.parametrize("stem", RAW)
def test_raw_files_decode_to_the_processed_test_pattern(realdata, stem):
    """RAW (R64, bit-packed) decodes to 0/1 frames of the processed files' shape. They are separate
    acquisitions of the same test pattern (their timestamps differ, the random hits differ a
    little), so the frames agree on all but a few hundred pixels, and on every chip of a quad."""
    raw = open_scan(realdata / "merlin" / f"{stem}_Frame_CounterDepth_1_Rows_256RAW.mib")
    ref = open_scan(realdata / "merlin" / f"{stem}_Frame_CounterDepth_1_Rows_256.mib")
    assert raw.metadata["dtype_on_disk"].startswith("R64")
    assert raw.scan_shape == ref.scan_shape and raw.detector_shape == ref.detector_shape
    a, b = _frames(raw), _frames(ref)
    assert set(np.unique(a)) <= {0, 1}
    assert raw.metadata["timestamp_first"] != ref.metadata["timestamp_first"]
    assert not np.array_equal(a, b)
    k = a.shape[-1] // 2 if a.shape[-1] == 512 else a.shape[-1]
    for y in range(0, a.shape[-2], k):
        for x in range(0, a.shape[-1], k):
            agree = np.mean(a[:, y : y + k, x : x + k] == b[:, y : y + k, x : x + k])
            assert agree > 0.995, (y, x, agree)
    if a.shape[-1] == 512:  # a naive reshape of the 1024x256 read-out does not match
        bits = np.unpackbits(
            np.fromfile(raw.source, np.uint8)[768 : 768 + 32768].reshape(-1, 8)[:, ::-1].ravel(),
            bitorder="little",
        )
        assert np.mean(bits.reshape(512, 512)[::-1] == b[0]) < 0.98


def test_001_opens_as_4x2_with_and_without_hdr(realdata, tmp_path):
    """4 positions per row (a longer gap between frames 4 and 5: the line flyback), 2 rows."""
    with_hdr = open_scan(realdata / "merlin" / "001_4x2_6bit.mib")
    shutil.copy(realdata / "merlin" / "001_4x2_6bit.mib", tmp_path)
    alone = open_scan(tmp_path / "001_4x2_6bit.mib")
    for scan in (with_hdr, alone):
        assert scan.scan_shape == (2, 4) and scan.detector_shape == (256, 256)
        assert scan.metadata["scan_shape_from"].startswith("frame timestamps")
        assert scan.metadata["exposure_s"] == pytest.approx(0.1)
        assert scan.metadata["timestamp_first"] == "2021-05-07T16:51:10.905800928Z"
    assert with_hdr.metadata["hdr"]["Frames in Acquisition (Number)"] == "8"
    assert "hdr" not in alone.metadata
    np.testing.assert_array_equal(with_hdr.data.compute(), alone.data.compute())
    # The saturated beam near the left edge: MANIFEST centroid row 126 (file order), col 42;
    # frames are shown with rows flipped (as Merlin displays them), so row 255 - 126.
    frame = with_hdr.frame(0, 0).astype(float)
    yy, xx = np.indices(frame.shape)
    cy, cx = (frame * yy).sum() / frame.sum(), (frame * xx).sum() / frame.sum()
    assert abs(cy - (255 - 126)) < 3 and abs(cx - 42) < 3


def test_roi_frames_are_width_by_height(realdata):
    scan = open_scan(realdata / "merlin" / "002_4x2_6bit_roi128.mib")
    assert scan.detector_shape == (128, 256)
    assert scan.scan_shape == (2, 4)


@pytest.mark.parametrize(
    "scan_shape, missing_at, missing_flat",
    [((3, 4), "end", [9, 10, 11]), ((4, 3), "end", [9, 10, 11]), ((3, 4), "start", [0, 1, 2])],
)
def test_interrupted_single_9_marks_missing_positions(realdata, scan_shape, missing_at, missing_flat):
    path = realdata / "merlin" / "Single_9_Frame_CounterDepth_1_Rows_256.mib"
    full = _frames(open_scan(path))
    scan = open_scan(path, scan_shape, missing_at=missing_at)
    assert scan.scan_shape == scan_shape
    assert np.flatnonzero(scan.missing.ravel()).tolist() == missing_flat
    stack = np.asarray(scan.frames().compute())
    assert not stack[missing_flat].any()
    np.testing.assert_array_equal(stack[~scan.missing.ravel()], full)


def test_interrupted_acquisition_from_hdr_and_timestamps(realdata, tmp_path):
    """A file cut after 6 of its 8 frames keeps its 2x4 grid (rows from the flyback gaps), and a
    .hdr saying 4 frames per trigger and 12 frames shapes Single_9 as 3x4 with 3 missing."""
    src = (realdata / "merlin" / "001_4x2_6bit.mib").read_bytes()
    (tmp_path / "cut.mib").write_bytes(src[: 6 * (384 + 256 * 256)])
    cut = open_scan(tmp_path / "cut.mib")
    assert cut.scan_shape == (2, 4)
    assert cut.missing.tolist() == [[False] * 4, [False, False, True, True]]

    shutil.copy(realdata / "merlin" / "Single_9_Frame_CounterDepth_6_Rows_256.mib", tmp_path / "s9.mib")
    hdr = (realdata / "merlin" / "Single_9_Frame_CounterDepth_6_Rows_256.hdr").read_text("latin-1")
    hdr = hdr.replace("Frames in Acquisition (Number):\t9", "Frames in Acquisition (Number):\t12")
    hdr = hdr.replace("Frames per Trigger (Number):\t9", "Frames per Trigger (Number):\t4")
    (tmp_path / "s9.hdr").write_text(hdr, "latin-1")
    scan = open_scan(tmp_path / "s9.hdr")  # opening the .hdr opens its .mib
    assert scan.scan_shape == (3, 4) and scan.metadata["scan_shape_from"].startswith("hdr")
    assert int(scan.missing.sum()) == 3 and scan.missing[2, 1:].all()


def test_blockfile(realdata):
    scan = open_scan(realdata / "blockfile" / "test2.blo")
    data = scan.data.compute()
    assert data.shape == (2, 3, 5, 5) and data.dtype == np.uint8
    assert int(data.sum()) == 2952 and int(data.max()) == 30
    assert data[0, 0, 0].tolist() == [20, 23, 25, 25, 27]
    assert scan.geometry.scan_step_nm == 64.0
    assert scan.geometry.voltage_kv == 200.0
    assert scan.geometry.pixel_size_um == pytest.approx(0.016061676839061997 * 1e4)
    assert scan.metadata["timestamp_first"] == "2015-12-01T15:43:09"


def test_py4dstem_emd(realdata):
    scan = open_scan(realdata / "emd" / "py4DSTEM_size2x3x4x5.h5")
    data = scan.data.compute()
    assert data.shape == (2, 3, 4, 5) and data.dtype == np.float32
    assert float(data.sum(dtype=np.float64)) == pytest.approx(28255.877, rel=1e-6)
    assert data.min() == pytest.approx(-13.12, abs=0.01) and data.max() == pytest.approx(2766.90, abs=0.01)
    assert scan.geometry.scan_step_nm == pytest.approx(0.126796875)
    # the file's reciprocal calibration survives: 1 px is 0.04425 1/Å
    assert scan.geometry.radius_px_to_q_invA(1.0) == pytest.approx(0.044251566616087125, rel=1e-9)


def test_prismatic_emd_chooses_a_datacube(realdata):
    path = realdata / "emd" / "Si100_4D.emd"
    first = open_scan(path)
    assert first.data.shape == (11, 11, 8, 8)
    assert float(first.data.sum(dtype=np.float64).compute()) == pytest.approx(110.668, abs=1e-3)
    other = first.metadata["other_datasets"]
    assert other == ["4DSTEM_simulation/data/datacubes/CBED_array_depth0001/datacube"]
    second = open_scan(path, dataset=other[0])
    assert float(second.data.sum(dtype=np.float64).compute()) == pytest.approx(110.607, abs=1e-3)
    assert first.geometry.voltage_kv == 100.0  # Prismatic's E (kV)


def test_arina_master_and_data_file(realdata):
    scan = open_scan(realdata / "arina" / "test_00_master.h5")
    assert scan.data.shape == (4, 4, 192, 192) and scan.dtype == np.uint32
    assert int(scan.data.sum().compute()) == 0  # the MANIFEST: every pixel is 0
    assert scan.geometry.pixel_size_um == pytest.approx(100.0)
    assert scan.geometry.voltage_kv == pytest.approx(300.0)
    assert scan.metadata["exposure_s"] == pytest.approx(9.95e-05)
    assert scan.metadata["data_files"][0].endswith("test_00_data_000001.h5")


def test_real_files_are_never_modified(realdata):
    files = sorted(p for p in realdata.rglob("*") if p.is_file() and p.suffix != ".md")
    before = {p: _file_state(p) for p in files}
    for p in files:
        if p.suffix in (".mib", ".blo", ".emd") or p.name.endswith("master.h5"):
            open_scan(p).data.sum().compute()
    assert {p: _file_state(p) for p in files} == before


def _file_view(a) -> bool:
    """A view of a read-only mapping of the file (a copy would be a writeable array of its own)."""
    import mmap

    base = a
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    return isinstance(base, mmap.mmap) and not a.flags.writeable


def test_mib_chunks_are_memmap_views_when_the_dtype_allows(realdata):
    """8-bit frames reach dask blocks as views of the file; 16-bit big-endian ones are converted."""
    seen = {}
    for name in ("Quad_9_Frame_CounterDepth_6_Rows_256.mib", "Single_9_Frame_CounterDepth_12_Rows_256.mib"):
        scan = open_scan(realdata / "merlin" / name, chunk_frames=3)
        assert scan.data.chunks[:2] == ((1, 1, 1), (3,))
        views = []

        def keep(block, views=views):
            views.append(_file_view(block))
            return block.sum(axis=(2, 3), keepdims=True)

        scan.data.map_blocks(keep, chunks=(1, 3, 1, 1), meta=np.empty((0,) * 4, int)).compute(scheduler="sync")
        seen[name] = views
    assert all(seen["Quad_9_Frame_CounterDepth_6_Rows_256.mib"])
    assert not any(seen["Single_9_Frame_CounterDepth_12_Rows_256.mib"])


def test_scan_pickles_without_file_handles(realdata):
    scan = open_scan(realdata / "merlin" / "Quad_9_Frame_CounterDepth_6_Rows_256.mib")
    blob = pickle.dumps(scan.data)
    assert len(blob) < 20_000  # the 2.4 MB file is not in it
    np.testing.assert_array_equal(pickle.loads(blob).compute(), scan.data.compute())


# ---- files written here: flat stacks, npy, zarr, TIFF, MATLAB ------------------------------


def _poisson_frames(n, k=12, seed=0, dtype=np.uint16):
    """Frames with a Poisson direct beam on a low background (counts)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:k, :k]
    beam = 50.0 * ((yy - k / 2) ** 2 + (xx - k / 2) ** 2 < 4) + 1.0
    return rng.poisson(beam, size=(n, k, k)).astype(dtype)


def test_flat_stack_with_first_entries_missing(tmp_path):
    """The paper's data set: 40x40 positions, the first 177 entries missing."""
    frames = _poisson_frames(1600 - 177, k=8)
    np.save(tmp_path / "stack.npy", frames)
    scan = open_scan(tmp_path / "stack.npy", (40, 40), missing_at="start")
    assert scan.scan_shape == (40, 40) and int(scan.missing.sum()) == 177
    assert scan.missing.ravel()[:177].all() and not scan.missing.ravel()[177:].any()
    stack = np.asarray(scan.frames().compute())
    assert not stack[:177].any()
    np.testing.assert_array_equal(stack[177:], frames)
    np.testing.assert_array_equal(scan.frame(4, 17), frames[4 * 40 + 17 - 177])


def test_npy_square_inference_sidecar_and_big_endian(tmp_path):
    frames = _poisson_frames(36).astype(">u2")
    np.save(tmp_path / "sq.npy", frames)
    scan = open_scan(tmp_path / "sq.npy")
    assert scan.scan_shape == (6, 6) and scan.metadata["scan_shape_from"] == "square"
    assert scan.dtype == np.uint16 and scan.dtype.isnative
    np.testing.assert_array_equal(_frames(scan), frames)
    np.save(tmp_path / "side.npy", frames[:30])
    (tmp_path / "side.json").write_text(
        json.dumps({"scan_shape": [4, 8], "geometry": {"camera_length_mm": 450.0, "scan_step_nm": 30.0}})
    )
    scan = open_scan(tmp_path / "side.npy")
    assert scan.scan_shape == (4, 8) and int(scan.missing.sum()) == 2
    assert scan.geometry.camera_length_mm == 450.0 and scan.geometry.scan_step_nm == 30.0
    cube = frames.reshape(6, 6, 12, 12).astype(np.float32)
    np.save(tmp_path / "cube.npy", cube)
    scan = open_scan(tmp_path / "cube.npy", chunk_frames=12)
    assert scan.data.chunks[:2] == ((2, 2, 2), (6,))
    np.testing.assert_array_equal(scan.data.compute(), cube)


def test_zarr_array_and_group(tmp_path):
    import zarr

    frames = _poisson_frames(20)
    z = zarr.open_array(tmp_path / "flat.zarr", mode="w", shape=frames.shape, chunks=(3, 12, 12), dtype=frames.dtype)
    z[:] = frames
    z.attrs["scan_shape"] = [4, 5]
    scan = open_scan(tmp_path / "flat.zarr")
    assert scan.scan_shape == (4, 5)
    np.testing.assert_array_equal(_frames(scan), frames)
    g = zarr.open_group(tmp_path / "group.zarr", mode="w")
    g.create_array("scan/data", data=frames.reshape(4, 5, 12, 12))
    g.create_array("reference", data=frames[:3])
    with pytest.raises(ScanFormatError, match="several arrays"):
        open_scan(tmp_path / "group.zarr")
    scan = open_scan(tmp_path / "group.zarr", dataset="scan/data")
    np.testing.assert_array_equal(scan.data.compute(), frames.reshape(4, 5, 12, 12))


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_stack_and_folder(tmp_path, compression):
    import tifffile

    frames = _poisson_frames(12)
    tifffile.imwrite(tmp_path / "stack.tif", frames, compression=compression)
    scan = open_scan(tmp_path / "stack.tif", (3, 4))
    np.testing.assert_array_equal(scan.data.compute().reshape(12, 12, 12), frames)
    tifffile.imwrite(tmp_path / "hyper.tif", frames.reshape(3, 4, 12, 12), imagej=True, metadata={"axes": "TZYX"})
    assert open_scan(tmp_path / "hyper.tif").scan_shape == (3, 4)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):  # natural order: frame_2 before frame_10
        tifffile.imwrite(folder / f"frame_{i}.tif", frame, compression=compression)
    scan = open_scan(folder, (3, 4))
    np.testing.assert_array_equal(scan.data.compute().reshape(12, 12, 12), frames)


def _write_v73(path, name, matlab_array):
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 with a 512-byte header, dimensions reversed."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        ds = f.create_dataset(name, data=np.ascontiguousarray(matlab_array.T))
        ds.attrs["MATLAB_class"] = np.bytes_("uint16")
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")


def test_matlab_v73_lazy_and_v5_in_memory(tmp_path, caplog):
    import scipy.io

    frames = _poisson_frames(30, k=10)[:, :, :8]  # (n, y, x) with y != x
    grid = frames.reshape(5, 6, 10, 8)
    matlab_frames = np.moveaxis(frames, 0, 2)  # frames(y, x, n), the MATLAB idiom
    _write_v73(tmp_path / "v73.mat", "data/frames", matlab_frames)
    scan = open_scan(tmp_path / "v73.mat", (5, 6))
    assert scan.metadata["format"].startswith("MATLAB v7.3") and "in_memory" not in scan.metadata
    assert scan.metadata["dataset"] == "data/frames"
    np.testing.assert_array_equal(scan.data.compute(), grid)
    _write_v73(tmp_path / "v73_4d.mat", "scan", grid.transpose(2, 3, 0, 1))  # scan(y, x, sy, sx)
    scan = open_scan(tmp_path / "v73_4d.mat")
    np.testing.assert_array_equal(scan.data.compute(), grid)
    np.testing.assert_array_equal(scan.frame(4, 5), grid[4, 5])

    scipy.io.savemat(tmp_path / "v5.mat", {"data": {"frames": matlab_frames, "labels": np.ones((5, 6))}})
    with caplog.at_level("WARNING"):
        scan = open_scan(tmp_path / "v5.mat", (5, 6), dataset="data.frames")
    assert scan.metadata["in_memory"] is True and "into memory" in scan.metadata["note"]
    assert "read into memory" in caplog.text
    np.testing.assert_array_equal(scan.data.compute(), grid)


def test_generic_hdf5_dataset_choice(tmp_path):
    import h5py

    frames = _poisson_frames(16)
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["raw/frames"] = frames
        f["dark/frames"] = frames[:4]
    with pytest.raises(ScanFormatError) as err:
        open_scan(tmp_path / "two.h5")
    assert "raw/frames 16x12x12 uint16" in str(err.value) and "dark/frames" in str(err.value)
    scan = open_scan(tmp_path / "two.h5", dataset="raw/frames")
    assert scan.scan_shape == (4, 4)
    np.testing.assert_array_equal(_frames(scan), frames)


def test_cli_info_json_and_text(realdata, capsys):
    from napari_sedclassify.cli import main

    path = realdata / "merlin" / "Single_9_Frame_CounterDepth_1_Rows_256.mib"
    assert main(["info", str(path), "--scan-shape", "3", "4", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["scan_shape"] == [3, 4] and info["detector_shape"] == [256, 256]
    assert info["missing_frames"] == 3 and info["dtype"] == "uint8"
    assert info["chunks"][2:] == [256, 256]
    assert info["metadata"]["counter_depth"] == 1
    assert info["geometry"]["pixel_size_um"] == 55.0
    assert main(["info", str(realdata / "blockfile" / "test2.blo")]) == 0
    text = capsys.readouterr().out
    assert "NanoMegas blockfile" in text and "2 x 3 positions" in text
    assert [line.split()[-1] for line in text.splitlines() if line.startswith("missing frames")] == ["0"]
    assert main(["info", str(realdata / "emd" / "Si100_4D.emd"), "--dataset", "nope"]) == 2
    assert "CBED_array_depth0001" in capsys.readouterr().err


def test_npy_frames_are_mapped_one_read_at_a_time(tmp_path):
    """Reading every frame of a .npy scan through its frame source keeps the file's pages out of
    the process (each read maps just its frames, read-only, and the mapping goes with the array:
    one map of the file would keep each page it touched resident, the whole file for a whole
    pass) and gives the same frames as numpy, big-endian files included (those are copied)."""
    import re

    from napari_sedclassify.io import open_scan

    def rss_file_kb():
        status = open("/proc/self/status").read()
        return int(re.search(r"RssFile:\s+(\d+) kB", status).group(1))

    rng = np.random.default_rng(0)
    data = rng.integers(0, 4096, size=(16, 16, 256, 256), dtype=np.uint16)  # 32 MiB
    path = tmp_path / "scan.npy"
    np.save(path, data)
    scan = open_scan(path)
    before = rss_file_kb()
    total = 0
    for _, rows, cols in scan.frame_source.blocks(chunk_frames=16):
        block = scan.frame_source[rows, cols]
        assert not block.flags.writeable and not block.flags.owndata  # the file's pages, not a copy
        total += int(block.sum(dtype=np.int64))
    del block
    assert total == int(data.sum(dtype=np.int64))
    assert rss_file_kb() - before < 8 * 1024  # kB: far below the 32 MiB read
    import mmap

    def no_mapping(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")  # a process at its limit of mappings

    source = open_scan(path).frame_source
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mmap, "mmap", no_mapping)
        copy = source[3:5]
    assert copy.flags.writeable  # read with preadv instead
    np.testing.assert_array_equal(copy, data[3:5])
    big = tmp_path / "big_endian.npy"
    np.save(big, data[:2, :3].astype(">u2"))
    got = open_scan(big).read([0, 4, 5])
    np.testing.assert_array_equal(got, data[:2, :3].reshape(-1, 256, 256)[[0, 4, 5]])
    assert got.dtype == np.uint16 and got.dtype.isnative


def test_mib_frames_are_mapped_one_read_at_a_time(tmp_path):
    """A whole pass over a Merlin .mib through its frame source keeps the file's pages out of the
    process (one memory map of the file kept every page it touched: 979 MB resident for an 839 MB
    scan), with the frames numpy reads from the file, big-endian 16-bit ones converted."""
    import re

    from napari_sedclassify.io import open_scan

    def rss_file_kb():
        return int(re.search(r"RssFile:\s+(\d+) kB", open("/proc/self/status").read()).group(1))

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 4096, size=(256, 256, 256), dtype=np.uint16)  # 32 MiB of pixels
    head = ("MQ1,{:06d},00384,01,0256,0256,U16,   1x1,01,2024-01-01 00:00:00.000000,0.001000,0,0,0,MQ1A,"
            "2024-01-01T00:00:00.000000000Z,1000000ns,12,")
    path = tmp_path / "scan.mib"
    path.write_bytes(b"".join(head.format(i + 1).encode().ljust(384, b"\x00") + f.astype(">u2").tobytes()
                              for i, f in enumerate(frames)))
    scan = open_scan(path, scan_shape=(16, 16))
    before = rss_file_kb()
    total = 0
    for _, rows, cols in scan.frame_source.blocks(chunk_frames=16):
        total += int(scan.frame_source[rows, cols].sum(dtype=np.int64))
    assert total == int(frames.sum(dtype=np.int64))
    assert rss_file_kb() - before < 8 * 1024  # kB: far below the 32 MiB read
    np.testing.assert_array_equal(scan.read([5, 200]), frames[[5, 200]][:, ::-1])  # display orientation


@pytest.mark.parametrize("index", [[0, 1, 2, 3, 4, 5, 6, 7, 8], [3, 4, 5], [10, 9, 8], [0, 6, 7, 13, 34],
                                   list(range(35)), [12, 12, 13], [20, 14, 15, 16]])
def test_frames_read_at_flat_indices_in_any_order(index):
    """Runs in order (the calibration sample) are copied once; any order, repeats and scattered
    positions give the frames asked for, in that order."""
    from napari_sedclassify.scan import ScanFrames

    frames = np.random.default_rng(0).integers(0, 100, (5, 7, 3, 3)).astype(np.uint16)
    got = ScanFrames(frames, chunks=(1, 7)).read(index)
    np.testing.assert_array_equal(got, frames.reshape(-1, 3, 3)[index])
