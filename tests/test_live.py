"""Live mode: frames classified as a background writer produces them; the final class map equals
the batch result on the finished file."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from napari_sedclassify.cli import main
from napari_sedclassify.errors import ScanFormatError
from napari_sedclassify.io import open_scan
from napari_sedclassify.pipeline.acquisition import Acquisition, mib_frame_bytes
from napari_sedclassify.pipeline.live import LiveClassMap, MibSource, watch
from napari_sedclassify.pipeline.predict import predict_scan

RATE_HZ = 250.0  # frames per second of the simulated detector


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 10x10 scan to acquire (128 px detector) and an FCNN trained on two other scans of the session,
    with the default preprocessing: nothing pinned (beam radius, saturation and bad pixels come from
    the calibration sample, the first frames, in live and batch runs alike)."""
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.train import train_model
    from napari_sedclassify.simulate import simulate_scan

    d = tmp_path_factory.mktemp("live")
    train = [simulate_scan(d / f"t{i}.npy", scan_shape=(8, 8), detector_px=128, seed=40 + i) for i in (0, 1)]
    sim = simulate_scan(d / "acq.npy", scan_shape=(10, 10), detector_px=128, seed=42)
    flat = str(sim.flatfield_path)
    model = train_model([t.scan.source for t in train], [t.truth for t in train], model="fcnn", flatfield=flat)
    save_model(model, d / "fcnn.sedmodel")
    return {"dir": d, "sim": sim, "flat": flat, "model": model, "model_path": str(d / "fcnn.sedmodel")}


def _batch(setup, path):
    """The batch result on the same frames, with the simulated detector's calibration (the frame
    files do not carry it) and no more metadata than the live frames have."""
    scan = open_scan(path, (10, 10))
    scan.geometry = setup["sim"].geometry
    scan.metadata.pop("edge_pixel_width", None)
    return predict_scan(setup["model"], scan, flatfield=setup["flat"])


@pytest.mark.parametrize("kind", ["mib", "folder"])
def test_live_keeps_up_and_ends_with_the_batch_class_map(setup, tmp_path, kind):
    sim = setup["sim"]
    target = tmp_path / ("acq.mib" if kind == "mib" else "frames")
    state = LiveClassMap(sim.scan.scan_shape, setup["model"].classes.ids, [2], setup["model"].classes.names)
    updates = []
    state.subscribe(lambda s: updates.append((time.perf_counter(), s.n_done)))
    # frames 60.. wait until live mode has classified some: classification happens mid-acquisition
    writer = Acquisition(sim.scan, target, rate_hz=RATE_HZ, kind=kind, hold=lambda k: k >= 60 and state.n_done == 0)
    writer.start()
    result = watch(setup["model"], target, scan_shape=(10, 10), out_dir=tmp_path / "out", flatfield=setup["flat"],
                   geometry=sim.geometry, state=state, timeout_s=20)
    writer.join()
    assert writer.error is None and writer.written == 100
    assert result.status == "complete" and state.n_done == 100
    # live: frames were classified while the file was still being written
    first_classified = next(t for t, n in updates if n > 0)
    assert first_classified < writer.finished_at
    assert updates[-1][1] == 100
    batch = _batch(setup, target if kind == "mib" else sim.scan.source)
    assert np.array_equal(state.class_map(), batch.class_map)
    # Every frame is processed as in the batch run: same plan (from the same first frames), same
    # processors, and a centre searched from that frame's own coarse maximum, a function of the
    # frame alone, not of the chunk it arrives in: the same features to the bit. The estimator's
    # float32 matrix products round differently with the number of frames classified together
    # (a few 1e-7, sklearn/OpenBLAS), so probabilities agree to that rounding.
    np.testing.assert_allclose(state.probabilities(), batch.probabilities, rtol=0, atol=2e-6)
    # files: running class map and keep-list
    out = result.files
    assert np.array_equal(np.load(out["class_map"]), batch.class_map)
    keep = json.loads(open(out["keep"]).read())
    assert keep["status"] == "complete" and keep["frames_done"] == 100
    assert keep["kept_positions"] == np.argwhere(batch.class_map == 2).tolist()
    import csv

    with open(out["keep_list"]) as fh:  # the keep-list: the CSV of `sedclassify predict`
        rows = list(csv.DictReader(fh))
    assert [[int(r["row"]), int(r["col"])] for r in rows] == keep["kept_positions"]
    lat = result.to_dict()["latency"]
    assert lat["frames"] == 100 and lat["calibration_frames"] >= 48  # frames that waited for the plan
    assert 0 < lat["median_ms"] <= lat["max_ms"]


def test_stops_on_timeout_with_a_partial_class_map(setup, tmp_path):
    sim = setup["sim"]
    target = tmp_path / "acq.mib"
    writer = Acquisition(sim.scan, target, rate_hz=RATE_HZ)
    writer.start()
    while writer.written < 60:
        time.sleep(0.005)
    writer.stop()  # the acquisition is interrupted after 60+ frames
    writer.join()
    n = writer.written
    result = watch(setup["model_path"], target, out_dir=tmp_path, flatfield=setup["flat"], geometry=sim.geometry,
                   timeout_s=0.5)
    assert result.status == "timeout"
    assert result.state.n_done == n and (result.state.class_map().ravel()[n:] == 0).all()
    assert (result.state.class_map().ravel()[:n] > 0).all()
    keep = json.loads((tmp_path / "acq_keep.json").read_text())
    assert keep["status"] == "timeout" and keep["frames_done"] == n
    with pytest.raises(FileExistsError, match="--force"):  # outputs of a run are not overwritten silently
        watch(setup["model_path"], target, out_dir=tmp_path, timeout_s=0.5)


def test_mib_source_reads_only_whole_frames(setup, tmp_path):
    frames = np.asarray(setup["sim"].scan.frames()[:3])
    path = tmp_path / "a.mib"
    src = MibSource(path, scan_shape=(1, 3))
    assert src.poll() is None  # nothing written yet
    blobs = [mib_frame_bytes(f, i + 1) for i, f in enumerate(frames)]
    with open(path, "wb") as f:
        f.write(blobs[0][:200])  # part of the header
        f.flush()
        assert src.poll() is None
        f.write(blobs[0][200:-10])  # all but the last pixels
        f.flush()
        assert src.poll() is None
        f.write(blobs[0][-10:] + blobs[1])
        f.flush()
        got = src.poll()
        assert got.index.tolist() == [0, 1] and np.array_equal(got.frames, frames[:2])
        f.write(b"XQ1," + blobs[2][4:])  # a damaged frame header
        f.flush()
        with pytest.raises(ScanFormatError, match="frame 2"):
            src.poll()


def test_state_is_safe_to_read_while_updated(setup):
    state = LiveClassMap((10, 10), [1, 2, 3, 4], [2])
    seen = []
    unsubscribe = state.subscribe(lambda s: seen.append(s.version))

    def writer():
        for k in range(100):
            state.update([k], [1 + k % 4], np.eye(4, dtype=np.float32)[k % 4][None], [0.001])

    t = threading.Thread(target=writer)
    t.start()
    while t.is_alive():
        snap = state.snapshot()
        # a snapshot is consistent: exactly the done positions have a class
        assert np.array_equal(snap["done"], snap["class_map"] > 0)
    t.join()
    unsubscribe()
    state.update([0], [3], np.zeros((1, 4), np.float32), [0.001])
    assert len(seen) == 100
    assert state.n_done == 100 and state.keep().sum() == 25
    assert state.keep_positions().tolist() == np.argwhere(state.class_map() == 2).tolist()


def test_cli_watch(setup, tmp_path, capsys):
    sim = setup["sim"]
    target = tmp_path / "acq.mib"
    writer = Acquisition(sim.scan, target, rate_hz=RATE_HZ)
    writer.start()
    code = main(["watch", setup["model_path"], "--input", str(target), "--out", str(tmp_path / "out"),
                 "--flatfield", setup["flat"], "--calibration", sim.scan.source, "--timeout", "20", "--json"])
    writer.join()
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "complete" and summary["frames"] == 100
    scan = open_scan(target)  # scan shape from the .hdr, as watch found it
    scan.geometry = sim.geometry
    scan.metadata["edge_pixel_width"] = sim.scan.metadata["edge_pixel_width"]
    batch = predict_scan(setup["model"], scan, flatfield=setup["flat"])
    assert np.array_equal(np.load(tmp_path / "out" / "acq_live_classes.npy"), batch.class_map)
    assert summary["kept"] == int((batch.class_map == 2).sum())


def test_a_scan_that_starts_without_a_beam(setup, tmp_path):
    """The first 60 frames without a beam (a scan that starts on a grid bar, or before the beam was
    unblanked): batch and live both build the plan from the next window of 48 frames, the first
    that shows the beam, and agree; a scan with no beam at all names how far it looked. Before,
    both refused the scan: "no direct beam found in the first frames"."""
    from napari_sedclassify import Scan
    from napari_sedclassify.pipeline.preprocess import preprocess

    sim = setup["sim"]
    data = np.asarray(sim.scan.data).copy()
    data.reshape(-1, *data.shape[2:])[:60] = np.random.default_rng(1).poisson(0.02, (60,) + data.shape[2:])
    dark_start = Scan(data, sim.geometry, source="dark_start")
    res = preprocess(dark_start, None, setup["flat"])
    assert res.provenance["plan"]["calibration_start"] == 48 and res.provenance["plan"]["calibration_frames"] == 48
    assert not res.beam_found.ravel()[:60].any() and res.beam_found.ravel()[60:].all()
    target = tmp_path / "dark_start.mib"
    writer = Acquisition(dark_start, target, rate_hz=1000.0)
    writer.start()
    result = watch(setup["model"], target, scan_shape=(10, 10), flatfield=setup["flat"], geometry=sim.geometry,
                   timeout_s=20)
    writer.join()
    assert result.status == "complete" and result.state.n_done == 100
    assert result.to_dict()["plan"]["calibration_start"] == 48
    batch = _batch(setup, target)
    assert np.array_equal(result.state.class_map(), batch.class_map)
    data[:] = np.random.default_rng(2).poisson(0.02, data.shape)
    with pytest.raises(ValueError, match="no direct beam found in the first 100 recorded frames"):
        preprocess(Scan(data, sim.geometry, source="no_beam"))


def test_cli_watch_a_folder_of_frames_not_512_px(setup, tmp_path, capsys):
    """`watch --input FOLDER` with 128 px frames and the calibration on the command line: it took
    the geometry before any frame had arrived, when the folder source knew no detector shape and
    gave the default 512 x 512, and then refused every frame ("no direct beam found in the first
    64 recorded frames"). Now the detector shape is the first frames'; the class map is
    `predict`'s of the same frame files."""
    import tifffile

    sim = setup["sim"]
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(np.asarray(sim.scan.data).reshape(-1, 128, 128)):
        tifffile.imwrite(folder / f"frame_{i}.tif", frame)
    g = sim.geometry
    calibration = ["--pixel-size", g.pixel_size_um, "--camera-length", g.camera_length_mm, "--voltage", g.voltage_kv]
    argv = ["watch", setup["model_path"], "--input", folder, "--scan-shape", 10, 10, "--out", tmp_path / "live",
            "--flatfield", setup["flat"], "--timeout", 5, "--json", *calibration]
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["status"] == "complete" and summary["frames"] == 100
    code = main([str(a) for a in ["predict", setup["model_path"], folder, "--scan-shape", 10, 10, "--out",
                                  tmp_path / "batch", "--flatfield", setup["flat"], *calibration]])
    assert code == 0, capsys.readouterr().err
    live = np.load(tmp_path / "live" / "frames_live_classes.npy")
    np.testing.assert_array_equal(live, np.load(tmp_path / "batch" / "frames_classes.npy"))
    assert (live > 0).all()


def test_live_run_warns_when_the_ice_ring_says_the_camera_length_is_off(setup, tmp_path):
    """The geometry given to a live run states a camera length 8 % longer than the true one: at the
    end the run says what the ice ring of the frames it saw shows, as a batch prediction of the same
    frames does (same camera length, within its uncertainty), in its result and its keep.json."""
    import json

    sim = setup["sim"]
    wrong = sim.geometry.with_values("user", camera_length_mm=sim.geometry.camera_length_mm * 1.08)
    target = tmp_path / "acq.mib"
    writer = Acquisition(sim.scan, target, rate_hz=1000.0)
    writer.start()
    result = watch(setup["model"], target, scan_shape=(10, 10), out_dir=tmp_path / "out", flatfield=setup["flat"],
                   geometry=wrong, timeout_s=20)
    writer.join()
    assert result.status == "complete"
    (text,) = result.warnings
    assert text.startswith(f"{target}: its amorphous-ice ring") and "further in" in text
    live_mm = float(text.split("effective camera length is ")[1].split(" ")[0])
    scan = open_scan(target, (10, 10))
    scan.geometry = wrong
    scan.metadata.pop("edge_pixel_width", None)
    batch = predict_scan(setup["model"], scan, flatfield=setup["flat"])
    batch_mm = float(batch.warnings[-1].split("effective camera length is ")[1].split(" ")[0])
    assert live_mm == pytest.approx(sim.geometry.camera_length_mm, rel=0.01)
    assert live_mm == pytest.approx(batch_mm, rel=0.002)
    assert json.loads((tmp_path / "out" / "acq_keep.json").read_text())["warnings"] == [text]
    # said while the acquisition went on too, once a quarter of the frames was in (RING_CHECK_AFTER)
    (early,) = result.state.warnings
    assert early.startswith("after ") and f"of 100 frames: {target}: its amorphous-ice ring" in early
    assert 25 <= int(early.split()[1]) < 100


def test_a_folder_created_while_the_source_is_opened_is_a_folder(tmp_path, monkeypatch):
    """The acquisition creates its frame folder while the live run opens its source: the folder
    appears between the two questions the source asks of the path. It was refused as "live input
    must be a folder of frame files or a Merlin .mib file" (seen once in CI)."""
    from pathlib import Path

    from napari_sedclassify.pipeline.live import FolderSource, open_source

    target = tmp_path / "frames"
    real_is_dir = Path.is_dir

    def created_meanwhile(self):
        answer = real_is_dir(self)
        if self == target and not answer:
            target.mkdir()  # the writer's mkdir lands right after this question
        return answer

    monkeypatch.setattr(Path, "is_dir", created_meanwhile)
    assert isinstance(open_source(target, (2, 2)), FolderSource)


def test_a_live_mib_whose_hdr_gives_no_scan_shape_says_so(realdata):
    """The real `001_4x2_6bit.mib` has a .hdr that does not give the scan shape (no ScanX/ScanY):
    a live run on it said "no .hdr giving it yet", which sent the user looking for a missing file."""
    from napari_sedclassify.pipeline.live import MibSource

    src = MibSource(realdata / "merlin" / "001_4x2_6bit.mib")
    with pytest.raises(ValueError, match=r"its \.hdr does not give it \(no ScanX/ScanY\).*--scan-shape SY SX"):
        src.scan_shape
