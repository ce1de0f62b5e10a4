"""Write frames as a DECTRIS zmq stream dump, the file LiberTEM-live's DECTRIS simulator replays.

``libertem-live-dectris-sim DUMP --port P --zmqport Z`` (LiberTEM-live, with flask) serves the
SIMPLON REST API on port P and, once the detector is armed there
(``PUT /detector/api/1.8.0/command/arm``), replays the dump's messages on a zmq PUSH socket on
port Z, as a DECTRIS DCU (ARINA, QUADRO, EIGER2) streams an acquisition. Nothing documents how
to make such a file; its layout, read from the simulator's source (crate ``libertem-dectris``,
``sim_data_source.rs``, ``sim.rs``, ``sim_gen.rs``, ``decoder.rs``), is:

- a sequence of messages, each an 8-byte little-endian signed length followed by that many bytes
  (one zmq message part each);
- the series header, in the DECTRIS stream v1 sequence ("header_detail": "basic"):
  ``{"htype": "dheader-1.0", "header_detail": "basic", "series": S}``, then the detector
  configuration (JSON; the receiver needs ``ntrigger``, ``nimages``, ``trigger_mode``,
  ``x_pixels_in_detector``, ``y_pixels_in_detector``, ``bit_depth_image``);
- per frame, four parts sent as one multipart message: ``{"htype": "dimage-1.0", "series": S,
  "frame": k, "hash": md5 of the data}`` (k from 0, consecutive: LiberTEM's receiver stops an
  acquisition whose frame numbers skip), ``{"htype": "dimage_d-1.0", "shape": [width, height],
  "type": "uint16", "encoding": ..., "size": bytes}``, the pixel data, and
  ``{"htype": "dconfig-1.0", "start_time", "stop_time", "real_time"}`` (ns);
- the series end, ``{"htype": "dseries_end-1.0", "series": S}`` (the simulator sends its own).

Encodings LiberTEM's receiver decodes (``decoder.rs``): ``"bs16-lz4<"`` (``bs8``/``bs32`` by
pixel size): Bitshuffle-LZ4 with its 12-byte header (total size, block size; big-endian), the
layout of an HDF5 Bitshuffle chunk, which is what a DCU sends; ``"lz4<"``: one raw LZ4 block.
Uncompressed data is not decoded by the receiver, so it is not offered. Frames are row-major,
x fastest; ``shape`` is [width, height] as DECTRIS writes it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

#: Encodings LiberTEM's DECTRIS receiver decodes.
ENCODINGS = ("bslz4", "lz4")
_TYPES = {1: "uint8", 2: "uint16", 4: "uint32"}


def _message(payload: bytes) -> bytes:
    return struct.pack("<q", len(payload)) + payload


def _json(obj) -> bytes:
    return _message(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def bslz4_frames(frames) -> list[bytes]:
    """Bitshuffle-LZ4 of each frame as a DECTRIS detector sends it (and an HDF5 Bitshuffle chunk
    holds it): 8-byte total size and 4-byte block size (big-endian), then the compressed blocks.
    Made by hdf5plugin's Bitshuffle filter in an in-memory HDF5 file, one frame per chunk."""
    import h5py
    import hdf5plugin

    frames = np.ascontiguousarray(frames)
    with h5py.File("dectris-dump.h5", "w", driver="core", backing_store=False) as f:
        ds = f.create_dataset("frames", data=frames, chunks=(1,) + frames.shape[1:],
                              **hdf5plugin.Bitshuffle(cname="lz4"))
        return [bytes(ds.id.read_direct_chunk((k, 0, 0))[1]) for k in range(len(frames))]


def lz4_frame(frame) -> bytes:
    """One raw LZ4 block of a frame's bytes (numcodecs' LZ4 without its 4-byte size prefix)."""
    from numcodecs import LZ4

    return bytes(LZ4().encode(np.ascontiguousarray(frame)))[4:]


def write_dectris_dump(frames, path, *, encoding: str = "bslz4", series: int = 1,
                       frame_numbers=None, frame_time_s: float = 0.001, pixel_size_um: float = 100.0,
                       description: str = "napari-sedclassify simulated DECTRIS detector") -> Path:
    """Write ``frames`` (n, ky, kx), unsigned integers of 8, 16 or 32 bits, as a DECTRIS zmq stream
    dump at ``path`` for ``libertem-live-dectris-sim``.

    encoding: "bslz4" ("bs16-lz4<" for uint16 frames, as DCUs send by default) or "lz4" ("lz4<").
    series: the series id of the acquisition. frame_numbers: the number each frame carries in its
    ``dimage-1.0`` part (default 0..n-1; numbers that skip make a stream with a lost frame,
    which LiberTEM's receiver refuses). The detector configuration announces ``len(frames)``
    frames (trigger mode "exte": one frame per trigger, ``ntrigger`` frames), the detector size
    and the bit depth. Returns the path.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (n, ky, kx), got shape {frames.shape}")
    if frames.dtype.kind != "u" or frames.dtype.itemsize not in _TYPES:
        raise ValueError(f"DECTRIS frames are uint8, uint16 or uint32, not {frames.dtype}")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS} (LiberTEM's receiver decodes no other), "
                         f"not {encoding!r}")
    frames = frames.astype(frames.dtype.newbyteorder("<"), copy=False)
    n, ky, kx = frames.shape
    numbers = list(range(n)) if frame_numbers is None else [int(k) for k in frame_numbers]
    if len(numbers) != n:
        raise ValueError(f"{len(numbers)} frame numbers for {n} frames")
    bits = 8 * frames.dtype.itemsize
    config = {
        "auto_summation": True, "bit_depth_image": bits, "bit_depth_readout": bits,
        "compression": "bslz4" if encoding == "bslz4" else "lz4", "count_time": frame_time_s * 0.9999,
        "countrate_correction_applied": False, "description": description, "detector_number": "SIM-0001",
        "flatfield_correction_applied": False, "frame_time": frame_time_s, "nimages": 1, "ntrigger": n,
        "pixel_mask_applied": False, "roi_mode": "", "software_version": "1.8.0", "trigger_mode": "exte",
        "x_pixel_size": pixel_size_um * 1e-6, "y_pixel_size": pixel_size_um * 1e-6,
        "x_pixels_in_detector": int(kx), "y_pixels_in_detector": int(ky),
    }
    if encoding == "bslz4":
        data = bslz4_frames(frames)
        enc = f"bs{bits}-lz4<"
    else:
        data = [lz4_frame(frame) for frame in frames]
        enc = "lz4<"
    period_ns = int(round(frame_time_s * 1e9))
    path = Path(path)
    with open(path, "wb") as f:
        f.write(_json({"htype": "dheader-1.0", "header_detail": "basic", "series": int(series)}))
        f.write(_json(config))
        for k, (number, payload) in enumerate(zip(numbers, data)):
            f.write(_json({"htype": "dimage-1.0", "series": int(series), "frame": number,
                           "hash": hashlib.md5(payload).hexdigest()}))
            f.write(_json({"htype": "dimage_d-1.0", "shape": [int(kx), int(ky)], "type": _TYPES[frames.dtype.itemsize],
                           "encoding": enc, "size": len(payload)}))
            f.write(_message(payload))
            start = k * period_ns
            f.write(_json({"htype": "dconfig-1.0", "start_time": start, "stop_time": start + int(period_ns * 0.9999),
                           "real_time": int(period_ns * 0.9999)}))
        f.write(_json({"htype": "dseries_end-1.0", "series": int(series)}))
    return path
