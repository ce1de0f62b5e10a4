"""Applying a trained model to the features of one scan: class map and probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import check_cancel


#: Fewest recorded frames a scan-context model (``FeatureRecipe.scan_context``) classifies at once.
MIN_CONTEXT_FRAMES = 64


@dataclass
class Prediction:
    """class_map: uint8 (sy, sx) class ids, 0 where a frame is missing or could not be
    classified. probabilities: float32 (sy, sx, k) for the class ids ``class_ids`` (the model's
    class table, in order), NaN where not classified."""

    class_map: np.ndarray
    probabilities: np.ndarray
    class_ids: list


#: Frames classified at once: a radial profile is a few hundred bytes, a crop model's input (48 x 48
#: px, up to 4 channels, and its context's intermediates) 40-150 kB, so crops go in smaller blocks
#: (a multiple of the network's own batch, ``arrays.ArrayPipeline.NETWORK_BATCH``).
BATCH_FRAMES = {"ria": 4096, "crop": 512}


def predict_scan(model, scan_features, batch_frames: int | None = None, cancel=None, progress=None) -> Prediction:
    """Classify every recorded frame of ``scan_features`` (a ``ScanFeatures``) with ``model``
    (a ``SedModel``), ``batch_frames`` frames at a time (default: ``BATCH_FRAMES`` of the model's
    input kind), so its working memory does not grow with the scan. ``progress(done, total)``:
    frames classified of the recorded frames, at the start (0) and after each block; ``cancel()``
    is checked before each block (raises ``errors.Cancelled``)."""
    model.check_geometry(scan_features.geometry, scan_features.name)
    whole_scan = model.recipe.scan_context or model.recipe.scan_neighbours
    if model.recipe.kind == "ria" and whole_scan and (~scan_features.missing).sum() < MIN_CONTEXT_FRAMES:
        from ..errors import IncompatibleModelError

        raise IncompatibleModelError(
            f"model {model.name} compares every frame with its scan (scan context, scan neighbours), which needs a "
            f"whole scan (at least {MIN_CONTEXT_FRAMES} frames); {scan_features.name} has "
            f"{int((~scan_features.missing).sum())}: classify whole scans (sedclassify predict), not frame by frame")
    sy, sx = scan_features.scan_shape
    ids = list(model.classes.ids)
    proba = np.full((sy * sx, len(ids)), np.nan, dtype=np.float32)
    todo = np.flatnonzero(~scan_features.missing.ravel())
    batch_frames = int(batch_frames or BATCH_FRAMES[model.recipe.kind])
    cols = [ids.index(int(c)) for c in model.estimator.classes_]
    for start in range(0, len(todo), batch_frames):
        if progress is not None:
            progress(start, len(todo))
        check_cancel(cancel)
        sel = todo[start:start + batch_frames]
        X = scan_features.inputs(model.recipe, sel)
        ok = np.isfinite(X.reshape(len(X), -1)).all(axis=1)
        if ok.any():
            p = np.zeros((int(ok.sum()), len(ids)), dtype=np.float32)
            p[:, cols] = model.predict_proba(X[ok])
            proba[sel[ok]] = p
    if progress is not None and len(todo):
        progress(len(todo), len(todo))
    class_map = np.zeros(sy * sx, dtype=np.uint8)
    done = np.isfinite(proba).all(axis=1)
    class_map[done] = np.asarray(ids, dtype=np.uint8)[np.argmax(proba[done], axis=1)]
    return Prediction(class_map.reshape(sy, sx), proba.reshape(sy, sx, len(ids)), ids)


def uncertain_mask(probabilities, threshold: float) -> np.ndarray:
    """bool (sy, sx): classified frames whose most probable class has a probability below
    ``threshold`` (0-1). Frames not classified (NaN probabilities) are not marked."""
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the uncertainty threshold is a probability between 0 and 1, got {threshold}")
    p = np.asarray(probabilities, dtype=np.float32)
    done = np.isfinite(p).all(axis=-1)
    return done & (np.max(np.where(done[..., None], p, np.inf), axis=-1) < threshold)


def mark_uncertain(class_map, probabilities, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(class map with the :func:`uncertain_mask` frames set to 0 = "not classified", the mask): they
    drop out of every keep-list and reduction made from it (recall traded for precision)."""
    mask = uncertain_mask(probabilities, threshold)
    out = np.array(class_map, copy=True)
    out[mask] = 0
    return out, mask
