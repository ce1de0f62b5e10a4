"""Session 24: the CNN on big scans. A session-robust crop recipe ranks every frame of a scan (its
two ends, each frame's carbon-like neighbour); that pass held every resampled crop of the scan
twice in memory (2.1 GB of anonymous memory for a 256 x 256 scan). It now streams the crops in
blocks through a scratch store, with the same ends and neighbours. No TensorFlow here: applying a
CNN file is numpy."""

from __future__ import annotations

import sys
import tracemalloc

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiled_features(tmp_path_factory):
    """ScanFeatures of a simulated 16 x 16 scan (128 px detector, Poisson counts, direct beam,
    rings) preprocessed for the session-robust crop recipe, its crops tiled to a 64 x 64 scan."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.models.features import session_robust_crop_recipe
    from napari_sedclassify.models.training import ScanFeatures
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.pipeline.train import preprocess_params_for
    from napari_sedclassify.processing import load_flatfield
    from napari_sedclassify.simulate import load_simulated, simulate_scan

    path = tmp_path_factory.mktemp("scan") / "scan.npy"
    simulate_scan(path, scan_shape=(16, 16), detector_px=128, seed=3)
    recipe = session_robust_crop_recipe()
    scan = open_scan(path)
    result = preprocess(scan, preprocess_params_for([recipe], scan.geometry),
                        flatfield=load_flatfield(load_simulated(path).flatfield_path))
    small = ScanFeatures.from_preprocess(result, scan.geometry, "scan")
    crops = np.tile(np.asarray(small.crops), (4, 4, 1, 1))
    missing = np.tile(small.missing, (4, 4))
    return ScanFeatures("tiled", scan.geometry, missing, crops=crops, crop_radius_px=small.crop_radius_px), recipe


def test_a_scans_ends_and_neighbours_are_ranked_in_blocks_of_bounded_memory(tiled_features, monkeypatch):
    from napari_sedclassify.models import training
    from napari_sedclassify.models.features import Augmentation, crop_reference, crop_score, neighbour_extremes
    from napari_sedclassify.models.training import ScanFeatures

    feats, recipe = tiled_features
    monkeypatch.setattr(training, "RANK_BLOCK_FRAMES", 128)
    monkeypatch.setattr(training, "RANK_IN_MEMORY_BYTES", 2 * 2**20)
    fresh = ScanFeatures(feats.name, feats.geometry, feats.missing, crops=feats.crops,
                         crop_radius_px=feats.crop_radius_px)
    n = feats.missing.size
    crops_bytes = n * recipe.crop_size ** 2 * 4  # the scan's resampled crops, float32
    tracemalloc.start()
    try:
        ends = fresh.neighbour_ends(recipe)  # the scan's two ends first, then every frame's neighbours
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < crops_bytes / 3, (f"ranking the scan took {peak / 2**20:.1f} MiB, "
                                    f"its crops are {crops_bytes / 2**20:.1f}")

    # the same ends and neighbours as every crop of the scan at once (as before)
    plain = recipe.replace(normalise=False, crop_context="none", crop_mask_q_invA=0.0, scan_neighbours=False,
                           augmentation=Augmentation(copies=0))
    raw = feats.inputs(plain)
    valid = ~feats.missing.ravel()
    qpp = feats.crop_q_per_px(recipe)
    np.testing.assert_array_equal(fresh.reference(recipe), crop_reference(raw[valid], recipe, qpp))
    with np.errstate(all="ignore"):
        score = crop_score(raw, qpp)
    score = np.where(valid & np.isfinite(score), score, np.nan).reshape(feats.scan_shape)
    np.testing.assert_array_equal(ends, neighbour_extremes(score))
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules  # crops need no TensorFlow here


def test_the_scratch_store_of_a_big_scan_is_a_file_not_memory(monkeypatch):
    from napari_sedclassify.models import training

    monkeypatch.setattr(training, "RANK_IN_MEMORY_BYTES", 2**20)
    assert isinstance(training._scratch((1024, 2304)), np.memmap)
    assert not isinstance(training._scratch((16, 2304)), np.memmap)
