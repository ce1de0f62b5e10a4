"""Memory that stays bounded whatever the scan's size (session 24: scans of 8.6 GB), and
a scan opened by a relative path in Python read by dask workers working in another folder.

`sedclassify predict` on a 256 x 256 scan of 256 x 256 frames peaked at 563 MB, 350 MB over its
preprocessing: the check that the amorphous-ice frames are the ring frames (a prediction's
warnings) scored every frame's radial profile at once, in several float64 copies of the whole
scan's profiles, a cost that grew with the scan (about 1.4 GB more for 512 x 512 positions). These
tests check the mechanism on a small simulated scan whose profiles are tiled to a larger grid:
the warnings score the profiles block by block, allocating a fraction of the profiles' own size,
and give each frame the scores it gets alone.
"""

from __future__ import annotations

import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

TILES = (12, 12)  # 24 x 24 positions tiled to 288 x 288: 82,944 frames' profiles


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """(built-in model card, scan, its PreprocessResult, class map, the simulation) of a simulated
    24 x 24 scan."""
    from napari_sedclassify.pipeline.predict import card_of, loading, params_for_model, predict_scan
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.simulate import simulate_scan

    sim = simulate_scan(tmp_path_factory.mktemp("scale") / "scan.npy", scan_shape=(24, 24), detector_px=128, seed=3)
    card = card_of(loading("builtin"))
    result = preprocess(sim.scan, params_for_model(card, sim.scan.geometry), flatfield=str(sim.flatfield_path))
    pred = predict_scan("builtin", sim.scan, result=result)
    return card, sim.scan, result, pred.class_map, sim


def _tiled(result, class_map):
    """The result and class map of a scan TILES times larger, made of the same frames."""
    def tile(a):
        a = np.asarray(a)
        return np.tile(a, TILES + (1,) * (a.ndim - 2))

    big = replace(result, **{k: tile(getattr(result, k)) for k in ("ria", "ria_counts", "beam_found",
                                                                    "beam_radius_px", "missing", "centres")})
    return big, tile(class_map)


def test_prediction_warnings_score_the_profiles_block_by_block(predicted):
    from napari_sedclassify.pipeline.ice_agreement import SCORE_BLOCK_BYTES
    from napari_sedclassify.pipeline.predict import prediction_warnings

    card, scan, result, class_map, _ = predicted
    big, big_map = _tiled(result, class_map)
    profiles = np.asarray(big.ria).nbytes
    assert profiles > 8 * SCORE_BLOCK_BYTES  # many blocks: the check is not one block by chance
    tracemalloc.start()
    try:
        warnings = prediction_warnings(card, scan, big, "tiled", class_map=big_map)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < profiles, f"{peak / 1e6:.0f} MB allocated for {profiles / 1e6:.0f} MB of profiles"
    assert warnings == prediction_warnings(card, scan, result, "tiled", class_map=class_map)


def test_block_scores_are_each_frames_own(predicted):
    """Scored in blocks or all at once, a frame gets the same ring height and Bragg spike."""
    from napari_sedclassify.pipeline import ice_agreement
    from napari_sedclassify.pipeline.ice_agreement import frame_scores

    card, scan, result, class_map, _ = predicted
    big, _ = _tiled(result, class_map)
    alone = frame_scores(result.ria, result.radii_px, scan.geometry)  # one block
    assert np.asarray(result.ria).nbytes < ice_agreement.SCORE_BLOCK_BYTES
    blocks = frame_scores(big.ria, big.radii_px, scan.geometry)
    for whole, blocked in zip(alone, blocks):
        expected = np.tile(whole.reshape(result.ria.shape[:2]), TILES).ravel()
        np.testing.assert_allclose(blocked, expected, rtol=1e-12, equal_nan=True)


@pytest.mark.timeout(300)
def test_a_scan_opened_by_a_relative_path_is_read_by_workers_elsewhere(predicted, tmp_path, monkeypatch):
    """`preprocess(open_scan("scan.npy"), client=...)` from the scan's folder, on workers working in
    another folder: they were sent the relative path ("No such file or directory: 'scan.npy'" from
    a worker); the frames now travel with the absolute path, and the scan still says "scan.npy"."""
    from distributed import Client, LocalCluster

    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.preprocess import preprocess

    *_, sim = predicted
    monkeypatch.chdir(tmp_path)  # the workers start here
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        monkeypatch.chdir(Path(sim.scan.source).parent)
        scan = open_scan(Path(sim.scan.source).name)
        assert scan.source == "scan.npy"
        there = preprocess(scan, flatfield=str(sim.flatfield_path), client=client)
    here = preprocess(scan, flatfield=str(sim.flatfield_path))
    for name in ("centres", "ria", "beam_found", "mask"):
        assert np.array_equal(getattr(here, name), getattr(there, name), equal_nan=True), name


def test_outputs_over_the_in_memory_limit_live_in_a_temporary_file(monkeypatch):
    """Crops of a 256 x 256 scan (1.07 GB at 32 px) were held in the process's memory (the limit was
    1 GiB: the command peaked at 1.3 GB). An output over IN_MEMORY_STORE_BYTES is a memory map of
    an unlinked temporary file; smaller ones stay in memory; both hold the outputs' fill values."""
    from napari_sedclassify.processing import runner as runner_module
    from napari_sedclassify.processing.centre import CentreFinder
    from napari_sedclassify.processing.crop import CentralCrop
    from napari_sedclassify.processing.ria import RadialProfile
    from napari_sedclassify.processing.runner import FrameRunner

    assert runner_module.IN_MEMORY_STORE_BYTES <= 256 * 2**20  # crops of a 256 x 256 scan go to a file
    runner = FrameRunner([RadialProfile(40), CentralCrop(16)], None, CentreFinder())
    crop_bytes = 100 * 32 * 32 * 4
    monkeypatch.setattr(runner_module, "IN_MEMORY_STORE_BYTES", crop_bytes - 1)
    store = runner.allocate(100)
    assert isinstance(store["crop"], np.memmap) and not isinstance(store["ria"], np.memmap)
    assert np.isnan(store["ria"]).all()
    monkeypatch.setattr(runner_module, "IN_MEMORY_STORE_BYTES", crop_bytes)
    assert not isinstance(runner.allocate(100)["crop"], np.memmap)
