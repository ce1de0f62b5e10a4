"""The wide chip-edge pixels of a Medipix3 quad, measured from the frames when the file does not
say them (a plain ``.npy``, a Merlin ``.mib``), and given on the command line.

Found by trying a model on a simulated 512 px quad scan saved as a plain ``.npy`` (no metadata):
with its session's flat-field it scored a weighted F1 of 0.75 against 0.92 with the metadata,
since every pixel beyond the chip cross sat 1.5 pitches away from where it is.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_sedclassify import Scan
from napari_sedclassify.cli import main
from napari_sedclassify.io import open_scan
from napari_sedclassify.pipeline.preprocess import PreprocessResult, preprocess
from napari_sedclassify.processing import FlatField
from napari_sedclassify.processing.pixels import measure_edge_pixel_width

simulate = pytest.importorskip("napari_sedclassify.simulate")


@pytest.fixture(scope="module")
def quad():
    """A simulated 512 px quad (chip-edge pixels 2.5 pitches wide), 12 x 12 scan points."""
    return simulate.simulate_scan(scan_shape=(12, 12), detector_px=512, session="C", seed=3)


def _bare(sim) -> Scan:
    """The scan as a reader gives a file without metadata: frames and nothing else."""
    return Scan(np.asarray(sim.scan.data), source="bare.npy")


def _binned(sim) -> np.ndarray:
    d = np.asarray(sim.scan.data, np.uint32)
    sy, sx, ky, kx = d.shape
    return d.reshape(sy, sx, ky // 2, 2, kx // 2, 2).sum((3, 5))


def test_measured_on_quads_binned_quads_floods_and_single_chips(quad):
    frames = np.asarray(quad.scan.data).reshape(-1, 512, 512)[:48]
    width, (rows, cols) = measure_edge_pixel_width(frames)
    assert width == pytest.approx(2.5, abs=0.2) and rows > 2 and cols > 2
    flood, _ = measure_edge_pixel_width(quad.flatfield)
    assert flood == pytest.approx(2.5, abs=0.02)
    binned, _ = measure_edge_pixel_width(_binned(quad).reshape(-1, 256, 256)[:48])
    assert binned == pytest.approx(1.75, abs=0.1)  # (1 + 2.5) / 2 binned pitches
    uniform = simulate.simulate_scan(scan_shape=(8, 8), detector_px=256, seed=5,
                                     session=replace(simulate.session_params("C"), edge_pixel_width=1.0))
    assert measure_edge_pixel_width(np.asarray(uniform.scan.data).reshape(-1, 256, 256))[0] == 1.0


def test_real_merlin_frames(realdata):
    """The single-chip Merlin scan with a beam: no wide pixels. A quad test pattern (no diffraction,
    a few random hits beside the middle rows): undecided, so not taken as wide."""
    single = open_scan(realdata / "merlin" / "001_4x2_6bit.mib")
    assert measure_edge_pixel_width(np.asarray(single.data).reshape(-1, 256, 256))[0] == 1.0
    pattern = open_scan(realdata / "merlin" / "Quad_9_Frame_CounterDepth_6_Rows_256.mib")
    assert measure_edge_pixel_width(np.asarray(pattern.data).reshape(-1, 512, 512))[0] is None
    res = preprocess(single)
    assert res.resolved["edge_pixel_width"] == 1.0 and res.resolved["edge_pixel_width_origin"] == "measured"


@pytest.mark.parametrize("with_flatfield", [False, True])
def test_a_quad_without_metadata_is_processed_as_with_it(quad, with_flatfield):
    """Centres and RIAs of the bare frames match those of the scan with its metadata; the pixel
    grid's width is what the frames (or the flood, when given) show."""
    ff = FlatField.from_flood(quad.flatfield) if with_flatfield else None
    told = preprocess(quad.scan, None, ff)
    assert told.resolved["edge_pixel_width_origin"] == "file"
    bare = preprocess(_bare(quad), None, ff)
    assert bare.resolved["edge_pixel_width_origin"] == "measured"
    assert bare.resolved["edge_pixel_width"] == pytest.approx(2.5, abs=0.02 if with_flatfield else 0.2)
    both = told.beam_found & bare.beam_found
    assert both.mean() > 0.95
    # mean distance from the true centres: 0.11 px with the metadata, 0.31 taking the pixels as equal
    error = {name: np.abs(r.centres[both] - quad.centres[both]).mean() for name, r in (("told", told), ("bare", bare))}
    assert error["bare"] < 1.2 * error["told"] + 0.01, error
    told_mean = np.nanmean(told.ria[both], axis=0)
    bare_mean = np.nanmean(bare.ria[both], axis=0)
    ring = slice(20, 250)
    assert np.nanmax(np.abs(bare_mean[ring] / told_mean[ring] - 1)) < 0.03


def test_given_on_the_command_line(quad, tmp_path, capsys):
    path = tmp_path / "bare.npy"
    np.save(path, np.asarray(quad.scan.data))
    assert main(["preprocess", str(path), "-o", str(tmp_path / "r.h5")]) == 0
    assert "chip-edge pixels 2." in capsys.readouterr().out
    measured = PreprocessResult.load(tmp_path / "r.h5").resolved
    assert measured["edge_pixel_width_origin"] == "measured"
    assert main(["preprocess", str(path), "-o", str(tmp_path / "g.h5"), "--edge-pixel-width", "1"]) == 0
    given = PreprocessResult.load(tmp_path / "g.h5").resolved
    assert (given["edge_pixel_width"], given["edge_pixel_width_origin"]) == (1.0, "given")
    assert main(["preprocess", str(path), "-o", str(tmp_path / "b.h5"), "--edge-pixel-width", "0.5"]) == 2
    assert "--edge-pixel-width must be at least 1 pitch, got 0.5" in capsys.readouterr().err
    assert not (tmp_path / "b.h5").exists()
