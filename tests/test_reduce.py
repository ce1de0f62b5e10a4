"""Data reduction: only the frames of chosen classes, lossless, atomic, read back by open_scan."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_sedclassify.classes import AMORPHOUS_ICE, CARBON, CRYSTALLINE_ICE
from napari_sedclassify.cli import main
from napari_sedclassify.errors import Cancelled
from napari_sedclassify.io import format_of, open_scan
from napari_sedclassify.io import reduced as reduced_mod
from napari_sedclassify.io.reduced import read_kept
from napari_sedclassify.pipeline.reduce import reduce_scan, write_keep_list


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from napari_sedclassify.simulate import simulate_scan

    d = tmp_path_factory.mktemp("reduce")
    s = simulate_scan(d / "scan.npy", scan_shape=(8, 8), detector_px=128, seed=3)
    assert (s.truth == AMORPHOUS_ICE).any() and (s.truth == CRYSTALLINE_ICE).any()
    return s


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("compression", ["bslz4", "terse", "none"])
def test_round_trip_is_exact(sim, tmp_path, compression):
    out = tmp_path / f"ice_{compression}.h5"
    report = reduce_scan(sim.scan, sim.truth, out, classes=["amorphous_ice", "crystalline_ice"],
                         compression=compression)
    keep = np.isin(sim.truth, [AMORPHOUS_ICE, CRYSTALLINE_ICE])
    assert report.n_kept == keep.sum() and report.n_frames == 64
    assert report.bytes_file == os.path.getsize(out)
    assert report.size_ratio == pytest.approx(report.bytes_scan / report.bytes_file)
    if compression == "none":
        assert report.compression_ratio == pytest.approx(1.0)
    else:  # Poisson frames with a bright beam compress several-fold
        assert report.compression_ratio > 2.0

    assert format_of(out) == "reduced"
    back = open_scan(out)
    full = np.asarray(sim.scan.data)
    got = np.asarray(back.data)
    assert back.scan_shape == sim.scan.scan_shape and back.dtype == sim.scan.dtype
    assert np.array_equal(back.missing, ~keep)
    assert np.array_equal(got[keep], full[keep])  # bit-exact
    assert not got[~keep].any()
    assert np.array_equal(back.metadata["class_map"], sim.truth)
    assert back.metadata["kept_classes"] == {2: "amorphous_ice", 3: "crystalline_ice"}
    assert back.metadata["provenance"]["compression"]["name"] == compression
    assert back.metadata["provenance"]["input"]["source"] == sim.scan.source
    assert back.geometry == sim.scan.geometry
    frames, positions = read_kept(out)
    assert np.array_equal(positions, np.argwhere(keep))
    assert np.array_equal(np.asarray(frames), full[keep])


def test_keep_list_csv(tmp_path):
    from napari_sedclassify.classes import ClassTable

    class_map = np.array([[AMORPHOUS_ICE, CARBON, 0], [CRYSTALLINE_ICE, AMORPHOUS_ICE, CARBON]], np.uint8)
    confidence = np.full(class_map.shape, 0.5)
    confidence[1, 1] = 0.875
    path = tmp_path / "keep.csv"
    n = write_keep_list(path, class_map, confidence, [AMORPHOUS_ICE, CRYSTALLINE_ICE], ClassTable.default(), 30.0)
    rows = path.read_text().splitlines()
    assert n == 3 and len(rows) == 4
    assert rows[0] == "frame_index,row,col,y_nm,x_nm,class_id,class,confidence"
    assert rows[1] == f"0,0,0,0,0,{AMORPHOUS_ICE},amorphous_ice,0.5000"
    assert rows[3] == f"4,1,1,30,30,{AMORPHOUS_ICE},amorphous_ice,0.8750"


def test_refuses_to_overwrite_without_force(sim, tmp_path):
    out = tmp_path / "r.h5"
    reduce_scan(sim.scan, sim.truth, out, classes=["carbon"])
    before = _sha(out)
    with pytest.raises(FileExistsError, match="--force"):
        reduce_scan(sim.scan, sim.truth, out, classes=["amorphous_ice"])
    assert _sha(out) == before
    reduce_scan(sim.scan, sim.truth, out, classes=["amorphous_ice"], force=True)
    assert open_scan(out).metadata["n_kept"] == int((sim.truth == AMORPHOUS_ICE).sum())


def test_cancel_leaves_no_file(sim, tmp_path):
    out = tmp_path / "r.h5"
    scan = open_scan(sim.scan.source, chunk_frames=4)
    calls = []
    with pytest.raises(Cancelled):
        reduce_scan(scan, sim.truth, out, classes=["carbon"], progress=lambda d, t: calls.append(d),
                    cancel=lambda: len(calls) > 2)
    assert os.listdir(tmp_path) == []


def test_terse_round_trip_is_verified(sim, tmp_path, monkeypatch):
    real = reduced_mod.terse_decode

    def lossy(blob, shape, dtype):  # a decoder that loses one pixel, as pyterse's default mode does
        frame = real(blob, shape, dtype).copy()
        frame[-1, -1] += 1
        return frame

    monkeypatch.setattr(reduced_mod, "terse_decode", lossy)
    with pytest.raises(ValueError, match="round trip failed"):
        reduce_scan(sim.scan, sim.truth, tmp_path / "t.h5", classes=["carbon"], compression="terse")
    assert os.listdir(tmp_path) == []


_SLOW_REDUCE = """
import sys, time
from napari_sedclassify.io import open_scan
from napari_sedclassify.labels import load_class_map
from napari_sedclassify.pipeline.reduce import reduce_scan
scan = open_scan(sys.argv[1], chunk_frames=2)
reduce_scan(scan, load_class_map(sys.argv[2]), sys.argv[3], classes=["carbon", "mixed"], force=True,
            progress=lambda d, t: time.sleep(0.05))  # a slow disk
"""


def test_killed_run_leaves_previous_output_intact_and_reruns(sim, tmp_path):
    out = tmp_path / "r.h5"
    reduce_scan(sim.scan, sim.truth, out, classes=["amorphous_ice"])
    before = _sha(out)
    truth = sim.scan.source.replace(".npy", "_truth.npy")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_REDUCE, sim.scan.source, truth, str(out)])
    try:
        deadline = time.time() + 60
        while not any(n.endswith(".part.h5") for n in os.listdir(tmp_path)):
            assert proc.poll() is None, "the reduction ended before it was killed"
            assert time.time() < deadline
            time.sleep(0.005)
        time.sleep(0.2)  # mid-write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert _sha(out) == before  # the previous output is untouched
    stale = [n for n in os.listdir(tmp_path) if n.endswith(".part.h5")]
    assert len(stale) == 1
    assert np.array_equal(open_scan(out).missing, sim.truth != AMORPHOUS_ICE)

    report = reduce_scan(sim.scan, sim.truth, out, classes=["carbon", "mixed"], force=True)  # the rerun
    assert sorted(os.listdir(tmp_path)) == ["r.h5"]  # the killed run's temporary file is gone
    assert report.n_kept == int(np.isin(sim.truth, [CARBON, 4]).sum())
    assert np.array_equal(open_scan(out).missing, ~np.isin(sim.truth, [CARBON, 4]))


def test_cli_reduce_with_labels(sim, tmp_path, capsys):
    out = tmp_path / "ice.h5"
    truth = sim.scan.source.replace(".npy", "_truth.npy")
    assert main(["reduce", sim.scan.source, "--labels", truth, "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_kept"] == int((sim.truth == AMORPHOUS_ICE).sum())
    assert report["size_ratio"] == pytest.approx(report["bytes_scan"] / os.path.getsize(out), rel=1e-3)
    assert main(["reduce", sim.scan.source, "--labels", truth, "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["reduce", sim.scan.source, "--labels", truth, "--out", str(tmp_path / "x.h5"),
                 "--classes", "ice"]) == 2
    assert "unknown class 'ice'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_reduce_with_model_keeps_predicted_ice(sim, tmp_path, capsys):
    from napari_sedclassify.models.persistence import load_model, save_model
    from napari_sedclassify.pipeline.predict import predict_scan
    from napari_sedclassify.pipeline.train import train_model
    from napari_sedclassify.simulate import simulate_scan

    train = [simulate_scan(tmp_path / f"t{i}.npy", scan_shape=(8, 8), detector_px=128, seed=10 + i) for i in (0, 1)]
    flat = str(train[0].flatfield_path)
    model = train_model([t.scan.source for t in train], [t.truth for t in train], model="fcnn", flatfield=flat)
    save_model(model, tmp_path / "m.sedmodel")
    out = tmp_path / "ice.h5"
    assert main(["reduce", sim.scan.source, "--model", str(tmp_path / "m.sedmodel"), "--flatfield", flat,
                 "--out", str(out), "--compression", "terse", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    pred = predict_scan(load_model(tmp_path / "m.sedmodel"), sim.scan.source, flatfield=flat)  # as the command
    keep = pred.class_map == AMORPHOUS_ICE
    back = open_scan(out)
    assert report["n_kept"] == keep.sum() > 0
    assert np.array_equal(back.missing, ~keep)
    assert np.array_equal(back.metadata["probabilities"], pred.probabilities, equal_nan=True)
    assert back.metadata["provenance"]["class_map_from"] == "model"
    assert np.array_equal(np.asarray(back.data)[keep], np.asarray(sim.scan.data)[keep])


def test_the_reduced_scan_keeps_what_its_detector_was(sim, tmp_path, realdata):
    """The wide chip-edge pixels and the counter's depth travel with the kept frames, so the reduced
    scan is preprocessed as its input was (before, the reader gave a reduced file no such
    metadata: a quad's kept frames were taken as equal pixels, a 6-bit counter's full value was
    guessed from the frames)."""
    from napari_sedclassify.pipeline.preprocess import preprocess

    out = tmp_path / "ice.h5"
    reduce_scan(sim.scan, sim.truth, out, classes=["amorphous_ice"])
    back = open_scan(out)
    assert back.metadata["edge_pixel_width"] == sim.scan.metadata["edge_pixel_width"]
    assert back.metadata["counter_max"] == 4095
    kept = ~back.missing
    source, reduced = preprocess(sim.scan), preprocess(back)
    assert reduced.resolved["edge_pixel_width_origin"] == "file"
    assert reduced.resolved["edge_pixel_width"] == source.resolved["edge_pixel_width"]
    assert reduced.resolved["saturation_counts"] == 4095
    assert np.abs(reduced.centres[kept] - source.centres[kept]).max() < 0.05
    mib = open_scan(realdata / "merlin" / "001_4x2_6bit.mib")
    reduce_scan(mib, np.full(mib.scan_shape, AMORPHOUS_ICE, np.uint8), tmp_path / "mib.h5")
    six = open_scan(tmp_path / "mib.h5")
    assert six.metadata["counter_depth"] == 6
    assert preprocess(six).resolved["saturation_counts"] == 63
