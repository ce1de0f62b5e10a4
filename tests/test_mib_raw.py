"""Merlin RAW (R64) 6- and 12-bit files and folders of .mib files (Merlin's "one file per frame").

No real 6- or 12-bit RAW file exists in shared/realdata (only 1-bit RAW pairs, tested in
test_io.py against their processed twins). So RAW frames are written here from known arrays with
ports of LiberTEM's encoders (``encode_r1``, ``encode_r6``, ``encode_r12`` and its tests'
``encode_quad``, src/libertem/io/dataset/mib.py and tests/io/datasets/test_mib_decoders_quad.py,
MIT), the layout LiberTEM's decoders read, and the reader must give back the arrays: random ones,
and the frames of the real processed 6- and 12-bit files (RAW encodings of the same frames must
open exactly like the processed files do)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_sedclassify.errors import ScanFormatError
from napari_sedclassify.io import can_open, format_of, open_scan


# ---- LiberTEM's encoders, ported to numpy with the same index arithmetic -------------------------
def encode_r1(inp: np.ndarray) -> np.ndarray:
    """out[(stripe + 1) * 8 - (byte + 1)] |= inp[64 * stripe + 8 * byte + bitpos] << bitpos"""
    inp = np.asarray(inp).ravel()
    out = np.zeros(inp.size // 8, np.uint8)
    for stripe in range(inp.size // 64):
        for byte in range(8):
            values = inp[64 * stripe + 8 * byte: 64 * stripe + 8 * byte + 8].astype(np.uint8) & 1
            out[(stripe + 1) * 8 - (byte + 1)] = np.sum(values << np.arange(8, dtype=np.uint8))
    return out


def encode_r6(inp: np.ndarray) -> np.ndarray:
    """out[i] = inp[(i // 8 + 1) * 8 - i % 8 - 1]"""
    inp = np.asarray(inp).ravel()
    i = np.arange(inp.size)
    return inp[(i // 8 + 1) * 8 - i % 8 - 1].astype(np.uint8)


def encode_r12(inp: np.ndarray) -> np.ndarray:
    """out[2i] = high byte, out[2i + 1] = low byte of inp[(i // 4 + 1) * 4 - i % 4 - 1]"""
    inp = np.asarray(inp).ravel().astype(np.uint16)
    i = np.arange(inp.size)
    values = inp[(i // 4 + 1) * 4 - i % 4 - 1]
    out = np.empty(2 * inp.size, np.uint8)
    out[0::2] = (values & 0xFF00) >> 8
    out[1::2] = values & 0xFF
    return out


ENCODERS = {1: encode_r1, 6: encode_r6, 12: encode_r12}
BITS = {1: 1, 6: 8, 12: 16}


def encode_frame(frame: np.ndarray, depth: int) -> bytes:
    """One assembled frame (as LiberTEM decodes it) as RAW bytes; a 512x512 quad frame as read out:
    rows of [chip 4 | chip 3 | chip 2 | chip 1], chips 3 and 4 flipped in y and x (``encode_quad``)."""
    encode = ENCODERS[depth]
    if frame.shape != (512, 512):
        return b"".join(encode(row).tobytes() for row in frame)
    x = 256 * BITS[depth] // 8
    dest = np.zeros((256, 4 * x), np.uint8)
    q1, q2 = frame[:256, :256], frame[:256, 256:]
    q3, q4 = frame[256:, :256][::-1, ::-1], frame[256:, 256:][::-1, ::-1]
    for q, k in ((q1, 3), (q2, 2), (q3, 1), (q4, 0)):
        for y in range(256):
            dest[y, k * x:(k + 1) * x] = encode(q[y])
    return dest.tobytes()


def raw_mib(frames: np.ndarray, depth: int, *, state_depth: bool = True, start: int = 1) -> bytes:
    """A RAW .mib: per frame a header as Merlin writes it (R64, counter depth in the MQ1A part)."""
    quad = frames.shape[-1] == 512
    head_len, chips, layout = (768, 4, "   2x2") if quad else (384, 1, "   1x1")
    w, h = (1024, 256) if quad else (frames.shape[2], frames.shape[1])
    out = b""
    for i, frame in enumerate(frames):
        t = f"2024-01-01T00:00:{i * 0.002:09.6f}000Z"
        head = (f"MQ1,{start + i:06d},{head_len:05d},{chips:02d},{w:04d},{h:04d},R64,{layout},0F,"
                f"2024-01-01 00:00:00.000000,0.001000,0,0,0,MQ1A,{t},1000000ns,"
                + (f"{depth}," if state_depth else "")).encode()
        out += head.ljust(head_len, b"\x00") + encode_frame(frame, depth)
    return out


def _frames(scan) -> np.ndarray:
    return np.asarray(scan.frames().compute())[~scan.missing.ravel()]


@pytest.mark.parametrize("depth", [6, 12, 1])
@pytest.mark.parametrize("detector", [(64, 256), (512, 512)])
def test_raw_round_trips_known_frames(tmp_path, depth, detector):
    rng = np.random.default_rng(depth)
    top = (1 << depth) - 1
    frames = rng.integers(0, top + 1, size=(3,) + detector).astype(np.uint16 if depth == 12 else np.uint8)
    frames.reshape(-1)[0], frames.reshape(-1)[-1] = top, 0
    path = tmp_path / f"raw{depth}.mib"
    path.write_bytes(raw_mib(frames, depth))
    scan = open_scan(path, (1, 3))
    assert scan.detector_shape == detector and scan.metadata["counter_depth"] == depth
    assert scan.metadata["dtype_on_disk"].startswith("R64")
    assert scan.dtype == (np.uint16 if depth == 12 else np.uint8)
    # frames are shown with their rows flipped, as processed frames are (test_io.py)
    np.testing.assert_array_equal(_frames(scan), frames[:, ::-1])


@pytest.mark.parametrize("name", ["Quad_1_Frame_CounterDepth_6_Rows_256", "Quad_1_Frame_CounterDepth_12_Rows_256",
                                  "Single_9_Frame_CounterDepth_6_Rows_256", "Single_9_Frame_CounterDepth_12_Rows_256"])
def test_raw_encoding_of_real_processed_frames_opens_like_the_processed_file(realdata, tmp_path, name):
    """The processed file's frames, as Merlin assembled them (file order, before the display flip),
    written as RAW with the real headers (pixel type R64, quad read-out 1024x256): same frames."""
    processed = open_scan(realdata / "merlin" / f"{name}.mib")
    depth = processed.metadata["counter_depth"]
    assembled = _frames(processed)[:, ::-1]
    raw = tmp_path / f"{name}RAW.mib"
    raw.write_bytes(raw_mib(assembled, depth))
    scan = open_scan(raw)
    assert scan.scan_shape == processed.scan_shape and scan.detector_shape == processed.detector_shape
    np.testing.assert_array_equal(_frames(scan), _frames(processed))


def test_raw_depth_from_the_hdr_when_the_frame_header_lacks_it(realdata, tmp_path):
    frames = np.random.default_rng(0).integers(0, 4096, size=(4, 32, 64)).astype(np.uint16)
    path = tmp_path / "nodepth.mib"
    path.write_bytes(raw_mib(frames, 12, state_depth=False))
    hdr = (realdata / "merlin" / "Single_1_Frame_CounterDepth_12_Rows_256.hdr").read_bytes()
    assert b"Counter Depth (number):\t12" in hdr
    path.with_suffix(".hdr").write_bytes(hdr)
    scan = open_scan(path, (2, 2))
    assert scan.metadata["counter_depth"] == 12
    np.testing.assert_array_equal(_frames(scan), frames[:, ::-1])


def test_raw_24_bit_is_refused_clearly(tmp_path):
    head = ("MQ1,000001,00384,01,0064,0032,R64,   1x1,01,2024-01-01 00:00:00.000000,0.001000,0,0,0,MQ1A,"
            "2024-01-01T00:00:00.000000000Z,1000000ns,24,").encode().ljust(384, b"\x00")
    path = tmp_path / "raw24.mib"
    path.write_bytes(head + bytes(64 * 32 * 4))
    with pytest.raises(ScanFormatError, match="24-bit counter are not supported"):
        open_scan(path)


# ---- folders of .mib files ---------------------------------------------------------------------------
def test_folder_of_single_frame_files_equals_the_file(realdata, tmp_path):
    """001_4x2_6bit.mib split as Merlin's "one file per frame" saving writes it: the same scan,
    its shape (2 rows of 4) from the frame timestamps (the line flyback) as for the single file."""
    src = realdata / "merlin" / "001_4x2_6bit.mib"
    whole = open_scan(src)
    data = src.read_bytes()
    step = len(data) // 8
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(8):
        (folder / f"001_4x2_6bit_{i + 1}.mib").write_bytes(data[i * step:(i + 1) * step])
    assert format_of(folder) == "mib" and can_open(folder)
    scan = open_scan(folder)
    assert scan.scan_shape == whole.scan_shape == (2, 4)
    assert scan.metadata["scan_shape_from"].startswith("frame timestamps")
    assert scan.metadata["n_files"] == 8 and scan.metadata["timestamp_first"] == whole.metadata["timestamp_first"]
    np.testing.assert_array_equal(np.asarray(scan.data.compute()), np.asarray(whole.data.compute()))


def test_folder_natural_order_raw_and_errors(tmp_path):
    frames = np.random.default_rng(5).integers(0, 64, size=(12, 16, 64)).astype(np.uint8)
    folder = tmp_path / "run"
    folder.mkdir()
    for i, frame in enumerate(frames):  # scan_1 ... scan_12: natural order, not scan_1, scan_10, scan_11, scan_2
        (folder / f"scan_{i + 1}.mib").write_bytes(raw_mib(frame[None], 6, start=i + 1))
    (folder / "notes.txt").write_text("not a frame")
    scan = open_scan(folder, (3, 4), chunk_frames=5)
    assert scan.metadata["counter_depth"] == 6 and scan.metadata["last_file"] == "scan_12.mib"
    np.testing.assert_array_equal(_frames(scan), frames[:, ::-1])
    # fewer files than positions: an interrupted acquisition
    short = open_scan(folder, (4, 4))
    assert int(short.missing.sum()) == 4
    # a truncated file is named
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "scan_7.mib").write_bytes((bad / "scan_7.mib").read_bytes()[:-5])
    with pytest.raises(ScanFormatError, match=r"scan_7\.mib: truncated last frame"):
        open_scan(bad, (3, 4))


def test_cli_info_on_a_folder(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    frames = np.random.default_rng(6).integers(0, 4096, size=(4, 16, 64)).astype(np.uint16)
    for i, frame in enumerate(frames):
        (folder / f"f{i}.mib").write_bytes(raw_mib(frame[None], 12, start=i + 1))
    from napari_sedclassify.cli import main

    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "2 x 2 positions (square)" in out and "12-bit counters" in out
