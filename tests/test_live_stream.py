"""Live classification from a Merlin detector's own TCP data stream, with reduction on the fly.

The stream comes from LiberTEM-live's simulator (``libertem-live-mib-sim``, a real Merlin TCP
server) on loopback, replaying ``.mib`` + ``.hdr`` files that the project writes from simulated
scans (12-bit; a single chip 256 px, and a quad 512 px). Frames are received by
``libertem_qd_mpx`` (the ``live`` extra); these tests skip, saying why, where it is not installed.
A DECTRIS stream is not tested: LiberTEM-live's DECTRIS simulator replays recorded zmq dumps, and
it has no tool to make one from the project's frames.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_sedclassify.optional import MissingOptionalDependency, live_available

SIM = shutil.which("libertem-live-mib-sim", path=os.path.dirname(sys.executable)) or shutil.which(
    "libertem-live-mib-sim")
needs_live = pytest.mark.skipif(
    not live_available("merlin") or SIM is None,
    reason='the live extra is not installed (pip install "napari-sedclassify[live]"): no libertem_qd_mpx '
           "receiver or libertem-live-mib-sim simulator")
SCAN = (16, 16)
DWELL_US = 20_000  # the simulated detector sends 50 frames/s: a run lasts about 5 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MerlinSim:
    """``libertem-live-mib-sim HDR`` on loopback, on free ports; started in the background."""

    def __init__(self, hdr, nav_shape, log, dwell_us=None):
        self.data, self.control, self.trigger = _free_port(), _free_port(), _free_port()
        self.log = Path(log)
        cmd = [SIM, str(hdr), "--nav-shape", *map(str, nav_shape), "--host", "127.0.0.1",
               "--data-port", str(self.data), "--control-port", str(self.control),
               "--trigger-port", str(self.trigger)]
        cmd += ["--dwelltime", str(dwell_us)] if dwell_us else ["--cached", "mem"]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def wait_listening(self, timeout_s=240.0):
        """Wait for the three servers to listen (the data server opens its file first)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            text = self.log.read_text(errors="replace")
            if all(f"{s} listening" in text for s in ("DataSocketServer", "ControlSocketServer",
                                                      "TriggerSocketServer")):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Merlin simulator exited: {text[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"the Merlin simulator did not start within {timeout_s} s")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


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
        train = [simulate_scan(d / f"t{i}.npy", scan_shape=(8, 8), detector_px=256, seed=40 + i) for i in (0, 1)]
        flat = str(sim.flatfield_path)
        pinned = PreprocessParams(beam_radius_px=3.5, saturation_counts=4095, detect_bad_pixels=False)
        model = train_model([t.scan.source for t in train], [t.truth for t in train], model="fcnn", flatfield=flat,
                            preprocess_params=pinned)
        save_model(model, d / "fcnn.sedmodel")
        for s in sims.values():
            s.wait_listening()
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
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
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
    assert names == {"libertem-live", "libertem-qd-mpx", "libertem-dectris"}
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
