"""Live classification from the detectors' own data streams (Merlin TCP, DECTRIS zmq), with
reduction on the fly.

The Merlin stream comes from LiberTEM-live's simulator (``libertem-live-mib-sim``, a real Merlin TCP
server) on loopback, replaying ``.mib`` + ``.hdr`` files that the project writes from simulated
scans (12-bit; a single chip 256 px, and a quad 512 px); frames are received by
``libertem_qd_mpx``. The DECTRIS stream comes from LiberTEM-live's DECTRIS simulator
(``libertem-live-dectris-sim``: a SIMPLON REST API and a zmq PUSH socket) replaying a zmq dump that
the project writes from the same frames (``simulate.dectris_dump.write_dectris_dump``,
Bitshuffle-LZ4 or LZ4); frames are received by ``libertem_dectris``. Both come with the ``live``
extra; these tests skip, saying why, where it is not installed. Simulators are started and waited
for by ``stream_sims`` (polls until they listen, up to 120 s, with their log on failure).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from stream_sims import DectrisSim, MerlinSim, simulator

from napari_sedclassify.optional import MissingOptionalDependency, live_available

SIM = simulator("libertem-live-mib-sim")
needs_live = pytest.mark.skipif(
    not live_available("merlin") or SIM is None,
    reason='the live extra is not installed (pip install "napari-sedclassify[live]"): no libertem_qd_mpx '
           "receiver or libertem-live-mib-sim simulator")
DECTRIS_SIM = simulator("libertem-live-dectris-sim")
DECTRIS_MISSING = [what for what, ok in (
    ("libertem_dectris (receiver)", live_available("dectris")),
    ("libertem-live-dectris-sim (simulator)", DECTRIS_SIM is not None),
    ("flask (the simulator's REST API)", importlib.util.find_spec("flask") is not None)) if not ok]
needs_dectris = pytest.mark.skipif(
    bool(DECTRIS_MISSING), reason=f"the live extra is not installed (pip install \"napari-sedclassify[live]\"): "
                                  f"missing {', '.join(DECTRIS_MISSING)}")
SCAN = (16, 16)
DWELL_US = 20_000  # the simulated detector sends 50 frames/s: a run lasts about 5 s


def _scan_frames(scan):
    sy, sx = scan.scan_shape
    for iy in range(sy):
        yield from np.asarray(scan.data[iy].compute(scheduler="synchronous"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 16x16 scan (256 px, 12-bit) written as a Merlin .mib + .hdr and served at 50 frames/s; a
    quad (512 px) file with a gap in its frame numbers served as fast as possible; an FCNN trained on
    two other scans of the session with a plan that does not depend on a sample of the scan."""
    if not live_available("merlin") or SIM is None:
        pytest.skip('the live extra is not installed (pip install "napari-sedclassify[live]")')
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.acquisition import mib_frame_bytes, mib_hdr, write_mib
    from napari_sedclassify.pipeline.train import train_model
    from napari_sedclassify.processing import PreprocessParams
    from napari_sedclassify.simulate import simulate_scan

    d = tmp_path_factory.mktemp("stream")
    sim = simulate_scan(d / "acq.npy", scan_shape=SCAN, detector_px=256, seed=42)
    mib = write_mib(d / "acq.mib", _scan_frames(sim.scan), SCAN)
    # quad: 4x4 frames of 512x512, frame number 7 never sent (a frame lost on the way)
    rng = np.random.default_rng(7)
    quad = rng.integers(0, 4096, size=(16, 512, 512), dtype=np.uint16)
    numbers = [k for k in range(1, 18) if k != 7]
    (d / "quad.hdr").write_bytes(mib_hdr(17, 4, chips=4))
    with open(d / "quad.mib", "wb") as f:
        for frame, k in zip(quad, numbers):
            f.write(mib_frame_bytes(frame, k, time.time_ns(), chips=4))
    sims = {"single": MerlinSim(d / "acq.hdr", SCAN, d / "sim_single.log", DWELL_US),
            "quad": MerlinSim(d / "quad.hdr", (4, 4), d / "sim_quad.log")}
    try:
        for s in sims.values():
            s.launch()  # they start up while the model trains
        train = [simulate_scan(d / f"t{i}.npy", scan_shape=(8, 8), detector_px=256, seed=40 + i) for i in (0, 1)]
        flat = str(sim.flatfield_path)
        pinned = PreprocessParams(beam_radius_px=3.5, saturation_counts=4095, detect_bad_pixels=False)
        model = train_model([t.scan.source for t in train], [t.truth for t in train], model="fcnn", flatfield=flat,
                            preprocess_params=pinned)
        save_model(model, d / "fcnn.sedmodel")
        for s in sims.values():
            s.wait()
        yield {"dir": d, "sim": sim, "mib": mib, "flat": flat, "model": model, "model_path": str(d / "fcnn.sedmodel"),
               "sims": sims, "quad": quad, "quad_numbers": numbers}
    finally:
        for s in sims.values():
            s.stop()


@pytest.fixture(scope="module")
def batch(setup):
    """``predict_scan`` on the same .mib file, with the simulated detector's calibration."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.predict import predict_scan

    scan = open_scan(setup["mib"])
    scan.geometry = setup["sim"].geometry
    return predict_scan(setup["model"], scan, flatfield=setup["flat"])


@pytest.fixture(scope="module")
def merlin_run(setup):
    """``watch`` on the simulator's TCP stream, with reduction on the fly to ice.h5."""
    from napari_sedclassify.pipeline.live import MerlinStreamSource, watch

    s = setup["sims"]["single"]
    src = MerlinStreamSource("127.0.0.1", s.data, control_port=s.control, name="acq")
    out = setup["dir"] / "live"
    result = watch(setup["model"], src, out_dir=out, flatfield=setup["flat"], geometry=setup["sim"].geometry,
                   timeout_s=120, reduce_to=out / "ice.h5", keep=("amorphous_ice",))
    return {"result": result, "out": out, "source": src}


@needs_live
def test_class_map_from_the_merlin_stream_equals_batch_predict(setup, batch, merlin_run):
    result = merlin_run["result"]
    assert result.status == "complete"
    state = result.state
    assert np.array_equal(state.class_map(), batch.class_map)
    assert set(np.unique(batch.class_map)) >= {1, 2}  # a real mix of classes, not a trivial map
    # probabilities: the centre finder's starting point depends on chunking (see test_live.py)
    np.testing.assert_allclose(state.probabilities(), batch.probabilities, rtol=0, atol=1e-3)
    stats = result.source_stats
    assert stats["frames_announced"] == 256 and stats["frames_received"] == 256
    assert stats["frames_dropped"] == 0 and stats["frame_numbers_from"] == "frame headers"
    assert merlin_run["source"].metadata["counter_depth"] == 12  # read from the control port
    # the same outputs as following a file
    out = merlin_run["out"]
    assert np.array_equal(np.load(out / "acq_live_classes.npy"), batch.class_map)
    assert np.load(out / "acq_live_probabilities.npy").shape == batch.probabilities.shape
    keep = json.loads((out / "acq_keep.json").read_text())
    assert keep["status"] == "complete" and keep["frames_done"] == 256
    assert keep["kept_positions"] == np.argwhere(batch.class_map == 2).tolist()
    assert keep["stream"]["frames_received"] == 256 and keep["stream"]["frames_dropped"] == 0
    lat = result.to_dict()["latency"]
    assert lat["frames"] == 256 and 0 < lat["median_ms"] <= lat["p95_ms"] <= lat["max_ms"]


@needs_live
def test_reduction_on_the_fly_equals_sedclassify_reduce(setup, batch, merlin_run):
    import h5py

    from napari_sedclassify.cli import main
    from napari_sedclassify.io import open_scan

    live_file = merlin_run["out"] / "ice.h5"
    assert merlin_run["result"].reduced == {"path": str(live_file), "status": "complete",
                                            "kept_frames": int((batch.class_map == 2).sum())}
    assert not (merlin_run["out"] / "ice.partial.h5").exists()
    ref = setup["dir"] / "ref_ice.h5"
    assert main(["reduce", str(setup["mib"]), "--classes", "amorphous_ice", "--model", setup["model_path"],
                 "--flatfield", setup["flat"], "--out", str(ref), "--workers", "0", "--pixel-size", "110",
                 "--camera-length", "900", "--voltage", "200", "--scan-step", "30"]) == 0
    with h5py.File(live_file, "r") as a, h5py.File(ref, "r") as b:
        for key in ("frames", "positions", "index", "class_map", "kept", "missing"):
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key][()], b[key][()]), key
        np.testing.assert_allclose(a["probabilities"][()], b["probabilities"][()], rtol=0, atol=1e-3)
        assert a["frames"].compression_opts == b["frames"].compression_opts  # Bitshuffle-LZ4, as reduce
        assert a["frames"].chunks == b["frames"].chunks
        for key in ("format", "format_version", "scan_shape", "detector_shape", "dtype", "compression",
                    "kept_classes", "class_table"):
            assert np.array_equal(a.attrs[key], b.attrs[key]), key
        ga, gb = json.loads(a.attrs["geometry"]), json.loads(b.attrs["geometry"])
        assert {k: v for k, v in ga.items() if k != "origins"} == {k: v for k, v in gb.items() if k != "origins"}
        prov = json.loads(a.attrs["provenance"])
        assert prov["input"]["source"].startswith("merlin://") and prov["model_kind"] == "fcnn"
    scan = open_scan(live_file)
    assert scan.metadata["status"] == "complete"
    assert scan.metadata["live"]["report"]["stream"]["frames_dropped"] == 0
    kept = np.argwhere(batch.class_map == 2)
    full = open_scan(setup["mib"])
    iy, ix = kept[len(kept) // 2]
    assert np.array_equal(np.asarray(scan.data[iy, ix]), np.asarray(full.data[iy, ix]))


@needs_live
def test_a_killed_live_reduction_leaves_a_readable_partial_file(setup, batch, tmp_path):
    """``sedclassify watch --merlin ... --reduce`` killed with SIGKILL mid-scan: the target is not
    created; the partial file opens with what its last commit held; a rerun refuses it without
    --force and replaces it with --force, ending with the complete file."""
    import h5py

    from napari_sedclassify.io import open_scan

    s = setup["sims"]["single"]
    red = tmp_path / "ice.h5"
    partial = tmp_path / "ice.partial.h5"
    cmd = [sys.executable, "-m", "napari_sedclassify.cli", "watch", setup["model_path"],
           "--merlin", f"127.0.0.1:{s.data}", "--merlin-control", str(s.control), "--scan-shape", *map(str, SCAN),
           "--pixel-size", "110", "--camera-length", "900", "--voltage", "200", "--scan-step", "30",
           "--flatfield", setup["flat"], "--out", str(tmp_path), "--name", "acq", "--reduce", str(red),
           "--timeout", "120"]
    tmp = tmp_path / "tmp"  # the runs' temporary folder: where the receiver's shared-memory handle goes
    tmp.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    committed, t0 = 0, time.monotonic()
    try:
        while time.monotonic() - t0 < 240 and proc.poll() is None:
            if partial.exists():
                try:
                    with h5py.File(partial, "r", swmr=True) as f:
                        committed = int(f["live_committed"][()])
                except (OSError, KeyError):
                    committed = 0
                if committed > 0:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stdout.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(list(tmp.glob("sedclassify-merlin-*"))) == 1  # killed outright: its handle folder is left
    assert not red.exists() and partial.exists()
    scan = open_scan(partial)  # the project's reader opens it, and says it is partial
    assert scan.metadata["status"] == "partial"
    n = scan.metadata["n_kept"]
    assert n >= committed > 0
    full = open_scan(setup["mib"])
    positions = scan.metadata["positions"]
    assert (batch.class_map[tuple(positions.T)] == 2).all()  # only amorphous ice was kept
    for iy, ix in positions[[0, -1]]:
        assert np.array_equal(np.asarray(scan.data[iy, ix]), np.asarray(full.data[iy, ix]))
    assert scan.missing.sum() == SCAN[0] * SCAN[1] - n
    # a rerun does not overwrite the partial file silently; with --force it completes
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode != 0 and "--force" in rerun.stdout + rerun.stderr
    rerun = subprocess.run(cmd + ["--force"], capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert red.exists() and not partial.exists()
    done = open_scan(red)
    assert done.metadata["status"] == "complete" and done.metadata["n_kept"] == int((batch.class_map == 2).sum())
    # the killed run's handle folder was removed by the next run; the reruns removed their own
    assert not list(tmp.glob("sedclassify-*"))


@needs_live
def test_quad_stream_frames_are_bit_identical_and_a_lost_frame_is_counted(setup):
    """A quad (2x2 chips, 512 px, 768-byte headers) file whose frame numbers skip 7: every frame
    arrives bit-identical at the position its number gives; the lost one is counted as dropped;
    the scan shape comes from the acquisition header (17 frames, 4 per trigger)."""
    from napari_sedclassify.pipeline.live import MerlinStreamSource

    s = setup["sims"]["quad"]
    src = MerlinStreamSource("127.0.0.1", s.data)
    t0 = time.monotonic()
    got = {}
    try:
        while not src.ready():
            assert time.monotonic() - t0 < 120, "the detector was not armed"
            time.sleep(0.01)
        assert src.scan_shape == (5, 4)
        while not src.finished:
            assert time.monotonic() - t0 < 120
            b = src.poll(64)
            if b is None:
                time.sleep(0.01)
                continue
            assert b.frames.shape[1:] == (512, 512) and b.frames.dtype == np.uint16
            got.update({int(i): np.array(f) for i, f in zip(b.index, b.frames)})
    finally:
        src.close()
    assert sorted(got) == [k - 1 for k in setup["quad_numbers"]]
    for frame, k in zip(setup["quad"], setup["quad_numbers"]):
        assert np.array_equal(got[k - 1], frame)
    st = src.stats()
    assert st["frames_received"] == 16 and st["frames_dropped"] == 1 and st["frames_announced"] == 17


@needs_live
def test_a_scan_shape_that_contradicts_the_acquisition_header_is_said(setup):
    """--scan-shape 2 x 8 for an acquisition of 17 frames in rows of 4: said once the detector is
    armed (before, the map was filled silently with rows of the wrong length, frames left out)."""
    from napari_sedclassify.pipeline.live import MerlinStreamSource

    src = MerlinStreamSource("127.0.0.1", setup["sims"]["quad"].data, (2, 8))
    t0 = time.monotonic()
    try:
        while not src.ready():
            assert time.monotonic() - t0 < 120, "the detector was not armed"
            time.sleep(0.01)
        said = src.scan_shape_warning()
        while not src.finished:  # the whole acquisition, so that the simulator serves the next client anew
            assert time.monotonic() - t0 < 120
            if src.poll(64) is None:
                time.sleep(0.01)
    finally:
        src.close()
    assert "2 x 8 = 16 positions" in said and "17 frames in rows of 4 frames" in said and "--scan-shape" in said
    assert src.stats()["frames_outside_scan"] == 1  # frame 17
    agree = MerlinStreamSource("127.0.0.1", 1, (5, 4))
    agree.header = {"frames_in_acquisition": 20, "frames_per_trigger": 4}
    assert agree.scan_shape_warning() is None


@needs_live
def test_a_stream_that_starts_late_or_dies_midway(setup, batch, tmp_path):
    """Nothing listening at the data port is said at the timeout and the receiver stops (it retried
    forever, close() waited 5 s and the thread stayed); a detector that starts after ``watch`` is
    received; a detector (its server) killed mid-scan ends the run ``incomplete`` with the frames
    received classified, the lost ones counted as dropped and the receiver's message, and outputs
    that say so (the receiver's raw error ended the run, the outputs still said "running")."""
    from napari_sedclassify.pipeline.live import LiveClassMap, MerlinStreamSource, wait_ready, watch

    sim = MerlinSim(setup["dir"] / "acq.hdr", SCAN, tmp_path / "sim.log", dwell_us=DWELL_US)
    sim.pick_ports()
    alone = MerlinStreamSource("127.0.0.1", sim.data)
    with pytest.raises(TimeoutError, match=f"nothing listened at 127.0.0.1:{sim.data} when watch started"):
        wait_ready(alone, 0.5)
    assert alone.finished  # its receiver stopped
    src = MerlinStreamSource("127.0.0.1", sim.data, name="acq")
    assert not src.ready()  # waiting for the detector, which starts now
    sim.launch(fresh_ports=False)
    try:
        sim.wait()

        def kill_midway(state):
            if state.n_done >= 64 and sim.proc.poll() is None:
                sim.proc.kill()

        wait_ready(src, 120)
        state = LiveClassMap(SCAN, setup["model"].classes.ids, [2], setup["model"].classes.names)
        state.subscribe(kill_midway)
        result = watch(setup["model"], src, out_dir=tmp_path, flatfield=setup["flat"],
                       geometry=setup["sim"].geometry, timeout_s=120, state=state)
    finally:
        sim.stop()
    assert result.status == "incomplete", result.state.message
    st = result.source_stats
    assert 64 <= st["frames_received"] < 256 and st["frames_received"] + st["frames_dropped"] == 256
    assert "EOF" in st["stream_error"]
    done = result.state.snapshot()["done"]
    assert done.sum() == st["frames_received"]
    assert np.array_equal(result.state.class_map()[done], batch.class_map[done])
    keep = json.loads((tmp_path / "acq_keep.json").read_text())
    assert keep["status"] == "incomplete" and "EOF" in keep["message"] and keep["frames_done"] == done.sum()


# ---- DECTRIS zmq stream -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dectris(setup):
    """The same 16x16 scan written as DECTRIS zmq dumps (Bitshuffle-LZ4, and LZ4) and a 60x100
    random-frame dump whose frame numbers skip 30, each replayed by LiberTEM-live's DECTRIS
    simulator on loopback (armed by each test through the simulator's REST API)."""
    if DECTRIS_MISSING:
        pytest.skip(f'the live extra is not installed (pip install "napari-sedclassify[live]"): '
                    f"missing {', '.join(DECTRIS_MISSING)}")
    from napari_sedclassify.simulate.dectris_dump import write_dectris_dump

    d = setup["dir"]
    frames = np.stack(list(_scan_frames(setup["sim"].scan)))  # the frames of the .mib file, in scan order
    write_dectris_dump(frames, d / "acq_bslz4.dump", encoding="bslz4", series=7)
    write_dectris_dump(frames, d / "acq_lz4.dump", encoding="lz4", series=8)
    rng = np.random.default_rng(3)
    odd = rng.integers(0, 4096, size=(63, 60, 100), dtype=np.uint16)
    numbers = [k for k in range(64) if k != 30]
    write_dectris_dump(odd, d / "gap.dump", frame_numbers=numbers, series=9)
    sims = {"bslz4": DectrisSim(d / "acq_bslz4.dump", d / "dsim_bslz4.log", dwell_us=5000),
            "lz4": DectrisSim(d / "acq_lz4.dump", d / "dsim_lz4.log", dwell_us=5000),
            "gap": DectrisSim(d / "gap.dump", d / "dsim_gap.log")}
    try:
        for s in sims.values():
            s.launch()
        for s in sims.values():
            s.wait()
        yield {"sims": sims, "frames": frames, "odd": odd, "odd_numbers": numbers}
    finally:
        for s in sims.values():
            s.stop()


@needs_dectris
def test_class_map_from_the_dectris_stream_equals_batch_predict(setup, batch, dectris):
    """``watch`` on the DECTRIS simulator's zmq stream (Bitshuffle-LZ4 frames, 200 frames/s), with
    reduction on the fly: the class map equals batch ``predict_scan`` on the same frames, with the
    same outputs and counters as the Merlin stream."""
    import h5py

    from napari_sedclassify.pipeline.live import DectrisStreamSource, watch

    sim = dectris["sims"]["bslz4"]
    src = DectrisStreamSource("127.0.0.1", sim.zmq, SCAN, name="acq")
    assert not src.ready()  # connected, waiting for the detector to be armed
    sim.arm()
    out = setup["dir"] / "live_dectris"
    result = watch(setup["model"], src, out_dir=out, flatfield=setup["flat"], geometry=setup["sim"].geometry,
                   timeout_s=120, reduce_to=out / "ice.h5", keep=("amorphous_ice",))
    assert result.status == "complete", result.state.message
    assert np.array_equal(result.state.class_map(), batch.class_map)
    np.testing.assert_allclose(result.state.probabilities(), batch.probabilities, rtol=0, atol=1e-3)
    st = result.source_stats
    assert st["frames_announced"] == 256 and st["frames_received"] == 256 and st["frames_dropped"] == 0
    assert st["frame_numbers_from"] == "frame headers" and "stream_error" not in st
    assert src.header["series"] == 7 and src.metadata["counter_depth"] == 16
    assert np.array_equal(np.load(out / "acq_live_classes.npy"), batch.class_map)
    assert np.load(out / "acq_live_probabilities.npy").shape == batch.probabilities.shape
    keep = json.loads((out / "acq_keep.json").read_text())
    assert keep["status"] == "complete" and keep["kept_positions"] == np.argwhere(batch.class_map == 2).tolist()
    assert keep["stream"]["frames_received"] == 256 and keep["stream"]["frames_dropped"] == 0
    kept = np.argwhere(batch.class_map == 2)
    with h5py.File(out / "ice.h5", "r") as f:
        assert np.array_equal(f["positions"][()], kept)
        assert np.array_equal(f["frames"][()], dectris["frames"][kept[:, 0] * SCAN[1] + kept[:, 1]])
        assert json.loads(f.attrs["provenance"])["input"]["source"].startswith("dectris://")


@needs_dectris
def test_watch_dectris_command_line_equals_batch_predict(setup, batch, dectris, tmp_path):
    """``sedclassify watch MODEL --dectris HOST:PORT --scan-shape ...`` on an LZ4 stream, the detector
    armed while the command waits: the class map file equals batch ``predict_scan``."""
    sim = dectris["sims"]["lz4"]
    cmd = [sys.executable, "-m", "napari_sedclassify.cli", "watch", setup["model_path"],
           "--dectris", f"127.0.0.1:{sim.zmq}", "--scan-shape", *map(str, SCAN),
           "--pixel-size", "110", "--camera-length", "900", "--voltage", "200", "--scan-step", "30",
           "--flatfield", setup["flat"], "--out", str(tmp_path), "--timeout", "120", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sim.arm()  # the simulator holds the series until the receiver has connected
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stdout + stderr
    summary = json.loads(stdout)
    assert summary["status"] == "complete" and summary["stream"]["frames_dropped"] == 0
    assert np.array_equal(np.load(tmp_path / "dectris_live_classes.npy"), batch.class_map)
    keep = json.loads((tmp_path / "dectris_keep.json").read_text())
    assert keep["stream"]["frames_received"] == 256


@needs_dectris
def test_dectris_frames_are_bit_identical_and_a_lost_frame_ends_the_series(dectris):
    """60x100 frames (rows and columns not swapped) arrive bit-identical at the positions their frame
    numbers give; at the frame number that skips, LiberTEM's receiver gives the series up: the
    frames announced that never arrived are counted as dropped, with the receiver's message."""
    from napari_sedclassify.pipeline.live import DectrisStreamSource

    sim = dectris["sims"]["gap"]
    src = DectrisStreamSource("127.0.0.1", sim.zmq, (4, 16))
    src.ready()
    sim.arm()
    got, t0 = {}, time.monotonic()
    try:
        while not src.finished:
            assert time.monotonic() - t0 < 120
            b = src.poll(64)
            if b is None:
                time.sleep(0.01)
                continue
            assert b.frames.shape[1:] == (60, 100) and b.frames.dtype == np.uint16
            got.update({int(i): np.array(f) for i, f in zip(b.index, b.frames)})
    finally:
        src.close()
    st = src.stats()
    assert st["frames_announced"] == 63  # the header announces the frames the dump holds
    assert 0 < st["frames_received"] < 30 and st["frames_received"] == len(got)
    assert st["frames_received"] + st["frames_dropped"] == 63
    assert "mismatch" in st["stream_error"]
    assert sorted(got) == list(range(len(got)))
    for k, frame in got.items():
        assert np.array_equal(frame, dectris["odd"][k])


def test_dectris_source_errors_are_clear(tmp_path, capsys):
    from napari_sedclassify.cli import main
    from napari_sedclassify.simulate.dectris_dump import write_dectris_dump
    from stream_sims import free_ports

    if live_available("dectris"):
        from napari_sedclassify.pipeline.live import DectrisStreamSource

        with pytest.raises(ValueError, match="--scan-shape"):
            DectrisStreamSource("127.0.0.1", 9999)
        (port,) = free_ports(1)  # nothing listens there
        src = DectrisStreamSource("127.0.0.1", port, (2, 2))
        with pytest.raises(ConnectionError, match=f"cannot connect to the DECTRIS stream at 127.0.0.1:{port}"):
            src.ready()
        assert main(["watch", str(tmp_path / "none.sedmodel"), "--dectris", f"127.0.0.1:{port}"]) == 2
        assert "--scan-shape" in capsys.readouterr().err
    with pytest.raises(ValueError, match="uint8, uint16 or uint32"):
        write_dectris_dump(np.zeros((1, 4, 4), np.float32), tmp_path / "x.dump")
    with pytest.raises(ValueError, match="LiberTEM's receiver decodes no other"):
        write_dectris_dump(np.zeros((1, 4, 4), np.uint16), tmp_path / "x.dump", encoding="none")


def test_dectris_dump_layout(tmp_path):
    """The dump: 8-byte little-endian lengths; series header, detector configuration, four parts per
    frame (dimage, dimage_d, data, dconfig), series end; Bitshuffle-LZ4 data with its 12-byte
    big-endian header (total bytes, block bytes)."""
    import struct

    from napari_sedclassify.simulate.dectris_dump import write_dectris_dump

    frames = np.arange(2 * 8 * 12, dtype=np.uint16).reshape(2, 8, 12)
    path = write_dectris_dump(frames, tmp_path / "d.dump", series=5)
    raw, msgs, off = path.read_bytes(), [], 0
    while off < len(raw):
        (n,) = struct.unpack_from("<q", raw, off)
        msgs.append(raw[off + 8:off + 8 + n])
        off += 8 + n
    assert off == len(raw) and len(msgs) == 2 + 4 * 2 + 1
    head, config = json.loads(msgs[0]), json.loads(msgs[1])
    assert head == {"htype": "dheader-1.0", "header_detail": "basic", "series": 5}
    assert (config["ntrigger"], config["nimages"], config["trigger_mode"]) == (2, 1, "exte")
    assert (config["x_pixels_in_detector"], config["y_pixels_in_detector"], config["bit_depth_image"]) == (12, 8, 16)
    for k in range(2):
        dimage, dimaged, data, dconfig = msgs[2 + 4 * k:6 + 4 * k]
        assert json.loads(dimage)["frame"] == k and json.loads(dimage)["series"] == 5
        dd = json.loads(dimaged)
        assert dd["shape"] == [12, 8] and dd["type"] == "uint16" and dd["encoding"] == "bs16-lz4<"
        assert dd["size"] == len(data) and struct.unpack(">QI", data[:12])[0] == frames[k].nbytes
        assert json.loads(dconfig)["htype"] == "dconfig-1.0"
    assert json.loads(msgs[-1]) == {"htype": "dseries_end-1.0", "series": 5}


# ---- without the extra --------------------------------------------------------------------------------------
def test_missing_live_extra_gives_the_pip_command(monkeypatch, tmp_path, capsys):
    import napari_sedclassify.optional as optional
    from napari_sedclassify.cli import main
    from napari_sedclassify.pipeline.live import MerlinStreamSource

    real = optional._importable
    monkeypatch.setattr(optional, "_importable", lambda name: False if name == "libertem_qd_mpx" else real(name))
    with pytest.raises(MissingOptionalDependency, match=r'pip install "napari-sedclassify\[live\]"'):
        MerlinStreamSource("127.0.0.1", 6342)
    # the command line says it before opening the model or connecting
    assert main(["watch", str(tmp_path / "none.sedmodel"), "--merlin", "127.0.0.1:6342"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "napari-sedclassify[live]"' in err and "Traceback" not in err


def test_live_extra_is_in_all():
    """The README's set-up installs .[all,testing]: the live extra must be part of all."""
    import tomllib

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    names = {d.split(">")[0].split("=")[0].split(";")[0].strip() for d in extras["live"]}
    assert names == {"libertem-live", "libertem-qd-mpx", "libertem-dectris", "flask"}
    assert set(extras["live"]) <= set(extras["all"])


def test_stream_helpers_and_no_heavy_import():
    from napari_sedclassify.pipeline.live import _qd_sequences, parse_host_port

    assert parse_host_port("10.0.0.5:7000", 6342) == ("10.0.0.5", 7000)
    assert parse_host_port("merlinpc", 6342) == ("merlinpc", 6342)
    assert parse_host_port(":6400", 6342) == ("127.0.0.1", 6400)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_host_port("host:port", 6342)
    assert _qd_sequences(b"\0" * 10, 1) is None
    code = ("import sys, napari_sedclassify.pipeline.live, napari_sedclassify.pipeline.reduce, "
            "napari_sedclassify.cli.watch; "
            "print([m for m in ('libertem_qd_mpx', 'libertem_live', 'libertem', 'libertem_dectris') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


@needs_live
def test_a_script_ending_while_its_receiver_waits_exits_cleanly_and_leaves_no_folder(tmp_path):
    """A Python script that opens a stream and ends without closing it, its receiver thread still
    waiting for the detector to be armed: the process exits normally (it aborted, 'FATAL: exception
    not rethrown', when Python shut down with the thread inside the receiver) and leaves no
    shared-memory handle folder behind (one per run was left in the temporary folder). The stream
    is a Merlin port where no detector has started yet (the receiver then waits without end; a
    shared simulator could end the wait, and the folder with it, before the script looked)."""
    from stream_sims import free_ports

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (port,) = free_ports(1)
    code = (f"from napari_sedclassify.pipeline.live import MerlinStreamSource\n"
            f"src = MerlinStreamSource('127.0.0.1', {port}, (4, 16))\n"
            f"assert not src.ready()\n"
            f"import os, time\n"
            f"t0 = time.monotonic()\n"
            f"seen = []\n"
            f"while not seen and time.monotonic() - t0 < 60:\n"
            f"    seen = os.listdir({str(tmp)!r}) or time.sleep(0.01) or []\n"
            f"print(seen)\n")  # what was seen: the receiver may end (and remove it) right after
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TMPDIR": str(tmp)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sedclassify-merlin-" in out.stdout  # the receiver had made its folder
    assert not list(tmp.iterdir())
