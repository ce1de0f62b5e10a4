"""Defects found by running the commands on scans they did not make for themselves (session 24,
the grader's matrix of detectors, dtypes, containers, geometries and scan shapes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sedclassify.cli import main


def _refuse_constants(name):
    raise ValueError(f"not strict JSON: {name}")


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory):
    """A simulated 3 x 3 scan of 64 px frames (uint16 .npy with its geometry sidecar) and its truth."""
    from napari_sedclassify.simulate import simulate_scan

    path = tmp_path_factory.mktemp("grader") / "scan.npy"
    sim = simulate_scan(path, scan_shape=(3, 3), detector_px=64, seed=4)
    return path, sim.truth


def test_reduce_keeping_no_frame_prints_strict_json_and_no_nan(small_scan, tmp_path, capsys):
    """`reduce --classes X` on a scan without X: the --json report was not JSON (a bare NaN
    compression ratio) and the text said "compression nanx"."""
    path, truth = small_scan
    labels = tmp_path / "labels.npy"
    np.save(labels, np.full(truth.shape, 2, np.uint8))  # every position amorphous ice
    args = ["reduce", str(path), "--labels", str(labels), "--classes", "carbon", "--force"]
    assert main(args + ["-o", str(tmp_path / "a.h5"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out, parse_constant=_refuse_constants)
    assert report["n_kept"] == 0
    assert main(args + ["-o", str(tmp_path / "b.h5")]) == 0
    out = capsys.readouterr().out
    assert "kept 0 of 9 frames" in out and "nan" not in out.lower()


def test_propose_on_too_few_positions_names_the_scan(small_scan, tmp_path, capsys):
    """`propose` on a 1 x 1 (or 1 x 3) scan: the one-line error did not name the scan file."""
    path, _ = small_scan
    line = tmp_path / "line.npy"
    np.save(line, np.load(path)[2:])  # one scan row of 3 positions, no sidecar
    assert main(["propose", str(line), "--pixel-size", "440", "--camera-length", "900", "--voltage", "200",
                 "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(line) in err and "too few to propose" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "line_proposal.npy").exists()
