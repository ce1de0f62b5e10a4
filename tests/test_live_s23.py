"""Live classification from detector streams, as a microscopist uses it (session 23 sweep): real Merlin
files of every counter depth served by LiberTEM-live's Merlin simulator on loopback, live and batch
agreeing without a pinned plan on simulated sessions of other counter depths, and streams that break
(a receiver that cannot parse what the data port sends, the simulator's --cached MEM replay after a
client disconnected mid-acquisition). Skipped, saying why, without the live extra."""

from __future__ import annotations

import time

import numpy as np
import pytest
from stream_sims import MerlinSim, simulator

from napari_sedclassify.optional import live_available

pytestmark = pytest.mark.skipif(
    not live_available("merlin") or simulator("libertem-live-mib-sim") is None,
    reason='the live extra is not installed (pip install "napari-sedclassify[live]"): no libertem_qd_mpx '
           "receiver or libertem-live-mib-sim simulator")


def _receive(src, limit_s: float = 120.0) -> dict:
    """{scan position: frame} of everything the stream source hands over until its acquisition ends."""
    got, t0 = {}, time.monotonic()
    try:
        while not src.finished:
            assert time.monotonic() - t0 < limit_s, "the stream did not end"
            b = src.poll(64) if src.ready() else None
            if b is None:
                time.sleep(0.01)
                continue
            got.update({int(i): np.array(f) for i, f in zip(b.index, b.frames)})
    finally:
        src.close()
    return got


def test_a_1_bit_raw_stream_has_the_counter_depth_its_frame_headers_state(realdata, tmp_path):
    """A real 1-bit RAW Merlin file (9 frames, 256 px) served without the control port: its frames
    arrive bit-identical to the .mib reader's, and the counter depth is 1, as the frame headers and
    the batch reader say (it was taken from the decoded bytes: 6 bits, so the plan's saturation
    level was 63 counts where batch set 1)."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.live import MerlinStreamSource

    hdr = realdata / "merlin" / "Single_9_Frame_CounterDepth_1_Rows_256RAW.hdr"
    ref = open_scan(hdr.with_suffix(".mib"))
    frames = np.asarray(ref.frames()).reshape((-1,) + ref.detector_shape)
    with MerlinSim(hdr, (3, 3), tmp_path / "sim.log") as sim:
        src = MerlinStreamSource("127.0.0.1", sim.data, (3, 3))
        got = _receive(src)
    assert sorted(got) == list(range(9))
    assert all(np.array_equal(got[k], frames[k]) for k in range(9))
    assert src.metadata["counter_depth"] == ref.metadata["counter_depth"] == 1


def test_a_stream_the_receiver_cannot_parse_ends_at_once_and_says_why(realdata, tmp_path):
    """A real 1-bit Merlin file stored as bytes (U08, not RAW): LiberTEM's receiver cannot parse the
    stream and gives it up before the first frame. The run ends at once, ``incomplete``, saying that
    the data port sent bytes that are not Merlin frames and why (it waited for the whole --timeout
    and said "no new frame for 60 s")."""
    from napari_sedclassify.pipeline.live import MerlinStreamSource, watch
    from napari_sedclassify.pipeline.predict import as_model

    hdr = realdata / "merlin" / "Single_9_Frame_CounterDepth_1_Rows_256.hdr"
    with MerlinSim(hdr, (3, 3), tmp_path / "sim.log") as sim:
        src = MerlinStreamSource("127.0.0.1", sim.data, (3, 3), control_port=sim.control)
        # the stream states no camera length or voltage: given, as the model's check asks
        geometry = src.known_geometry().with_values("user", camera_length_mm=900, voltage_kv=200)
        result = watch(as_model("builtin"), src, out_dir=tmp_path / "out", timeout_s=60, geometry=geometry)
    assert result.status == "incomplete", result.state.message
    msg = result.state.message
    assert "0 of 9 positions received" in msg and "not Merlin frames" in msg
    assert "1-bit frames stored as bytes (U08, not RAW)" in msg  # the control port said 1 bit
    assert result.source_stats["frames_dropped"] == 9


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """Two 16x16 scans of 256 px frames from two simulated sessions (A, B) and an FCNN trained on
    two other scans of session A with the default preprocessing: nothing pinned (saturation, bad
    pixels and beam radius come from the first frames, live and batch alike)."""
    from napari_sedclassify.pipeline.train import train_model
    from napari_sedclassify.simulate import simulate_scan

    d = tmp_path_factory.mktemp("s23")
    train = [simulate_scan(d / f"t{i}.npy", scan_shape=(8, 8), detector_px=256, seed=40 + i) for i in (0, 1)]
    model = train_model([t.scan.source for t in train], [t.truth for t in train], model="fcnn",
                        flatfield=str(train[0].flatfield_path))
    scans = {s: simulate_scan(d / f"{s}.npy", scan_shape=(16, 16), detector_px=256, session=s, seed=seed)
             for s, seed in (("A", 43), ("B", 7))}
    return {"dir": d, "model": model, "scans": scans}


def _frames(scan, counter_depth: int):
    """The scan's frames in scan order, as a counter of ``counter_depth`` bits records them (it
    saturates)."""
    top = 2 ** counter_depth - 1
    for iy in range(scan.scan_shape[0]):
        yield from np.minimum(np.asarray(scan.frame_source[iy]).astype(np.uint32), top)


@pytest.mark.parametrize("session,counter_depth", [("A", 6), ("B", 24)])
def test_live_from_the_merlin_stream_equals_batch_without_a_pinned_plan(sessions, tmp_path, session, counter_depth):
    """A 6-bit (U08) and a 24-bit (U32) acquisition of two sessions, written as .mib + .hdr and served
    by the Merlin simulator: ``watch`` (no control port: the counter depth from the frame headers)
    sets the plan batch ``predict`` sets on the .mib file, and its class map equals batch's."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.acquisition import write_mib
    from napari_sedclassify.pipeline.live import MerlinStreamSource, watch
    from napari_sedclassify.pipeline.predict import params_for_model, predict_scan
    from napari_sedclassify.pipeline.preprocess import preprocess

    sim = sessions["scans"][session]
    model, flat = sessions["model"], str(sim.flatfield_path)
    mib = write_mib(tmp_path / "acq.mib", _frames(sim.scan, counter_depth), (16, 16), counter_depth=counter_depth)
    batch_scan = open_scan(mib)
    batch_scan.geometry = sim.geometry
    assert batch_scan.metadata["counter_depth"] == counter_depth
    with MerlinSim(mib.with_suffix(".hdr"), (16, 16), tmp_path / "sim.log") as server:
        src = MerlinStreamSource("127.0.0.1", server.data, name="acq")
        live = watch(model, src, flatfield=flat, geometry=sim.geometry, timeout_s=120)
    batch = predict_scan(model, batch_scan, flatfield=flat)
    plan = preprocess(batch_scan, params_for_model(model, sim.geometry), flatfield=flat).resolved
    assert live.status == "complete", live.state.message
    assert src.metadata["counter_depth"] == counter_depth
    for key in ("saturation_counts", "beam_radius_px", "bf_radius_px", "adf_inner_px"):
        assert live.plan[key] == plan[key], key
    assert np.array_equal(live.state.class_map(), batch.class_map)
    assert len(np.unique(batch.class_map)) >= 2  # a real mix of classes


def test_a_broken_replay_after_a_disconnect_is_said(sessions, tmp_path):
    """LiberTEM-live's Merlin simulator with --cached MEM keeps the part of the acquisition it sent
    to a client that disconnected mid-acquisition, and replays it to the next client followed by
    zeros. The next run ends ``incomplete`` with the frames that came classified, and says that the
    data port sent bytes that are not Merlin frames and the known cause (only the receiver's
    "expected 'MPX,', got [0, 0, 0, 0]" was said)."""
    from napari_sedclassify.pipeline.acquisition import write_mib
    from napari_sedclassify.pipeline.live import MerlinStreamSource, wait_ready, watch

    sim = sessions["scans"]["A"]
    mib = write_mib(tmp_path / "acq.mib", _frames(sim.scan, 12), (16, 16))
    with MerlinSim(mib.with_suffix(".hdr"), (16, 16), tmp_path / "sim.log") as server:  # --cached MEM
        # a first client that reads a few frames and leaves: its small buffers hold the stream back (the
        # 33 MB acquisition is more than loopback's socket buffers hold: the simulator's cache stays partial)
        first = MerlinStreamSource("127.0.0.1", server.data, (16, 16), frame_stack_size=4, num_slots=2,
                                   max_buffered_frames=8)
        wait_ready(first, 120)
        t0 = time.monotonic()
        while first.stats()["frames_received"] < 8:
            assert time.monotonic() - t0 < 120, "the first client received nothing"
            time.sleep(0.01)
        first.close()
        src = MerlinStreamSource("127.0.0.1", server.data, (16, 16), name="acq")
        result = watch(sessions["model"], src, out_dir=tmp_path / "out", flatfield=str(sim.flatfield_path),
                       geometry=sim.geometry, timeout_s=120)
    st = result.source_stats
    assert result.status == "incomplete", result.state.message
    # how much of the cached part comes before the zeros depends on how far the first client read
    # (none on a loaded machine)
    assert st["frames_received"] < 256 and st["frames_received"] + st["frames_dropped"] == 256
    assert result.state.n_done == st["frames_received"]
    assert "not Merlin frames" in st["stream_error"] and "--cached MEM" in result.state.message


def test_two_receivers_on_one_dectris_stream_are_told_why(tmp_path):
    """Two receivers connected to one DECTRIS zmq stream (a second ``watch`` started on the same
    HOST:PORT): zmq deals the series' messages out between them, so one sees messages out of order
    or frame numbers that skip, the other no header at all. Each says that another receiver may be
    connected (they said "deserialization failed: missing field `ntrigger`", and "the detector was
    not armed ... arm the acquisition")."""
    import importlib.util

    from stream_sims import DectrisSim

    from napari_sedclassify.pipeline.live import DectrisStreamSource, wait_ready
    from napari_sedclassify.simulate.dectris_dump import write_dectris_dump

    if not live_available("dectris") or simulator("libertem-live-dectris-sim") is None \
            or importlib.util.find_spec("flask") is None:
        pytest.skip('the live extra is not installed (pip install "napari-sedclassify[live]"): no DECTRIS '
                    "receiver or simulator")
    frames = np.random.default_rng(5).integers(0, 4096, size=(64, 48, 64), dtype=np.uint16)
    dump = write_dectris_dump(frames, tmp_path / "acq.dump", series=3)
    said = []
    with DectrisSim(dump, tmp_path / "sim.log", dwell_us=5000) as sim:
        sources = [DectrisStreamSource("127.0.0.1", sim.zmq, (8, 8)) for _ in range(2)]
        for src in sources:
            assert not src.ready()  # both connected, waiting for the series header
        time.sleep(0.5)  # zmq has seen both connections: it deals messages out between them
        sim.arm()
        for src in sources:
            try:
                wait_ready(src, 10)
            except (TimeoutError, ConnectionError) as exc:
                said.append(str(exc))
                continue
            _receive(src)
            said.append(src.stats().get("stream_error", ""))
    assert len(said) == 2
    for text in said:
        assert "is another one (a second watch, LiberTEM) connected to this stream?" in text, text
