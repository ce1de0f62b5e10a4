"""Bad input: each broken file gives a ScanFormatError naming the file and the problem, and stays
exactly as it was (same bytes, same modification time)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_sedclassify.errors import ScanFormatError
from napari_sedclassify.io import open_scan


def mib_bytes(frames: np.ndarray, pixel_type: str = "U16", exposure_ns: int = 1_000_000) -> bytes:
    """A Merlin .mib as Merlin writes it: per frame a 384-byte ASCII header, then big-endian pixels."""
    n, h, w = frames.shape
    dtype = {"U08": ">u1", "U16": ">u2", "U32": ">u4"}[pixel_type]
    depth = {"U08": 6, "U16": 12, "U32": 24}[pixel_type]
    out = b""
    for i, frame in enumerate(frames):
        t = f"2024-01-01T00:00:{i * 0.001:09.6f}000Z"
        head = (
            f"MQ1,{i + 1:06d},00384,01,{w:04d},{h:04d},{pixel_type},   1x1,01,2024-01-01 00:00:00.000000,"
            f"{exposure_ns * 1e-9:.6f},0,0,0,MQ1A,{t},{exposure_ns}ns,{depth},"
        ).encode()
        out += head.ljust(384, b"\x00") + frame.astype(dtype).tobytes()
    return out


@pytest.fixture
def frames():
    rng = np.random.default_rng(3)
    return rng.poisson(20.0, size=(6, 16, 16)).astype(np.uint16)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _fails(path, *words, **kwargs):
    """open_scan(path) raises a ScanFormatError naming the file and the problem; the file is untouched."""
    before = (path.stat().st_mtime_ns, path.read_bytes()) if path.is_file() else None
    with pytest.raises(ScanFormatError) as err:
        open_scan(path, **kwargs)
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message, message
    if before is not None:
        assert (path.stat().st_mtime_ns, path.read_bytes()) == before
    return message


def test_a_good_synthetic_mib_opens(tmp_path, frames):
    """The writer below makes valid files: the errors that follow come from the damage alone."""
    scan = open_scan(_write(tmp_path / "ok.mib", mib_bytes(frames)), (2, 3))
    np.testing.assert_array_equal(scan.frames().compute(), frames[:, ::-1])


def test_truncated_last_frame(tmp_path, frames):
    data = mib_bytes(frames)
    _fails(_write(tmp_path / "cut.mib", data[:-100]), "truncated last frame", "5 whole frames")
    _fails(_write(tmp_path / "tiny.mib", data[:200]), "truncated last frame")


def test_corrupted_header(tmp_path, frames):
    data = mib_bytes(frames)
    _fails(_write(tmp_path / "width.mib", data.replace(b",0016,0016,", b",00x6,0016,", 1)), "corrupted frame header", "width")
    _fails(_write(tmp_path / "magic.mib", b"XQ1" + data[3:]), "corrupted frame header")
    last = 5 * (384 + 16 * 16 * 2)
    _fails(_write(tmp_path / "last.mib", data[:last] + b"JUNK" + data[last + 4 :]), "corrupted frame header", "last")


def test_header_disagreeing_with_the_data_size(tmp_path, frames):
    bad = mib_bytes(frames).replace(b",0016,0016,U16", b",0016,0008,U16")
    message = _fails(_write(tmp_path / "size.mib", bad), "header disagrees with the data size", "16x8")
    assert f"at byte {384 + 16 * 16 * 2}" in message  # where the next frame really starts


def test_unknown_dtype(tmp_path, frames):
    _fails(_write(tmp_path / "dtype.mib", mib_bytes(frames).replace(b",U16,", b",X16,")), "unknown pixel dtype", "X16")
    np.save(tmp_path / "complex.npy", np.zeros((4, 8, 8), complex))
    _fails(tmp_path / "complex.npy", "unknown pixel dtype", "complex128")


def test_wrong_scan_shape(tmp_path, frames):
    path = _write(tmp_path / "ok.mib", mib_bytes(frames))
    _fails(path, "wrong scan shape 2x2", "4 positions for 6 frames", scan_shape=(2, 2))
    _fails(path, "wrong scan shape 0x6", scan_shape=(0, 6))
    np.save(tmp_path / "cube.npy", frames.reshape(2, 3, 16, 16))
    _fails(tmp_path / "cube.npy", "wrong scan shape", scan_shape=(3, 2))


@pytest.mark.parametrize("name", ["empty.mib", "empty.npy", "empty.h5", "empty.blo", "empty.mat", "empty.tif"])
def test_empty_file(tmp_path, name):
    _fails(_write(tmp_path / name, b""), "empty file")


def test_directory_that_is_not_a_scan(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a scan")
    _fails(folder, "directory that is not a scan")
    fake = tmp_path / "fake.zarr"
    fake.mkdir()
    _fails(fake, "directory that is not a scan")


def test_nan_only_data(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((3, 3, 8, 8), np.nan, np.float32))
    _fails(tmp_path / "nan.npy", "NaN-only data")


def test_npy_shorter_than_its_header_says(tmp_path, frames):
    np.save(tmp_path / "short.npy", frames)
    data = (tmp_path / "short.npy").read_bytes()
    _fails(_write(tmp_path / "short.npy", data[:-10]), "header disagrees with the data size")
    _fails(_write(tmp_path / "garbage.npy", b"\x93NUMPY\x01\x00garbage" + bytes(64)), "corrupted header")


def test_blockfile_damage(realdata, tmp_path):
    data = (realdata / "blockfile" / "test2.blo").read_bytes()
    _fails(_write(tmp_path / "cut.blo", data[:-3]), "truncated last frame")
    _fails(_write(tmp_path / "magic.blo", b"IMGBLX" + data[6:]), "corrupted header", "IMGBLO")
    _fails(_write(tmp_path / "prefix.blo", data[:0x100C] + b"\0\0" + data[0x100E:]), "corrupted data", "AA 55")
    short = _write(tmp_path / "short.blo", data[:0x100C + 2 * 31])  # an interrupted scan: 2 of 6 patterns
    scan = open_scan(short)
    assert scan.scan_shape == (2, 3) and int(scan.missing.sum()) == 4


def test_raw_with_unsupported_counter_depth(realdata, tmp_path):
    data = (realdata / "merlin" / "Single_1_Frame_CounterDepth_1_Rows_256RAW.mib").read_bytes()
    # 1-, 6- and 12-bit RAW are read (tests/test_mib_raw.py); 24-bit RAW (two 12-bit halves) is not
    _fails(_write(tmp_path / "raw24.mib", data.replace(b"ns,1,", b"ns,24,")), "RAW (R64)", "24-bit")


def test_hdf5_without_a_scan_or_with_a_missing_data_file(realdata, tmp_path):
    import h5py

    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f["image"] = np.zeros((8, 8))
    _fails(tmp_path / "flat.h5", "no 3D or 4D numeric dataset")
    master = tmp_path / "test_00_master.h5"
    shutil.copy(realdata / "arina" / "test_00_master.h5", master)  # without its data file
    _fails(master, "test_00_data_000001.h5", "missing")


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("bad.tif", b"II*\x00" + bytes(60), ("corrupted header",)),
        ("bad.mat", b"MATLAB 5.0 MAT-file" + bytes(200), ("corrupted header",)),
        ("bad.h5", b"\x89HDF\r\n\x1a\n" + bytes(60), ("HDF5",)),
    ],
)
def test_corrupted_headers_of_other_formats(tmp_path, name, content, words):
    _fails(_write(tmp_path / name, content), *words)


def test_broken_zarr_metadata(tmp_path):
    store = tmp_path / "broken.zarr"
    store.mkdir()
    (store / "zarr.json").write_text("{broken")
    _fails(store, "corrupted header")


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        open_scan(tmp_path / "nope.mib")
    _fails(_write(tmp_path / "scan.xyz", b"hello world"), "unknown scan format")


def test_npy_cut_short_after_it_was_opened(tmp_path, frames):
    """The frames are read through a mapping of just their bytes; a file cut short while the scan
    is open (a copy still being written, a disk that filled) is an error naming the file and the
    first frame it lacks, not a crash of the process (a mapping past a file's end would be)."""
    path = tmp_path / "scan.npy"
    np.save(path, frames.reshape(2, 3, 16, 16))
    scan = open_scan(path)
    block = scan.frame_source[0:1]  # a read before the cut
    np.testing.assert_array_equal(block.reshape(-1, 16, 16), frames[:3])
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 16 * 16 * 2 * 2 - 5)  # 3 whole frames and a bit of one
    with pytest.raises(ScanFormatError, match=r"scan\.npy: file ends before frame 3"):
        scan.frame_source[1:2]
    np.testing.assert_array_equal(block.reshape(-1, 16, 16), frames[:3])  # what was read stays readable


def test_mib_cut_short_after_it_was_opened(tmp_path, frames):
    """The same for a Merlin file: the first frame it lacks, named with the file."""
    path = _write(tmp_path / "scan.mib", mib_bytes(frames))
    scan = open_scan(path, scan_shape=(2, 3))
    first = scan.frame_source[0:1]
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - (384 + 16 * 16 * 2) - 7)  # 4 whole frames and most of one
    with pytest.raises(ScanFormatError, match=r"scan\.mib: truncated: the file ends before frame 4"):
        scan.frame_source[1:2]
    np.testing.assert_array_equal(first.reshape(-1, 16, 16), frames[:3, ::-1])  # read before the cut
