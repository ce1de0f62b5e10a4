"""Applying a trained model to the features of one scan: class map and probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import check_cancel


@dataclass
class Prediction:
    """class_map: uint8 (sy, sx) class ids, 0 where a frame is missing or could not be
    classified. probabilities: float32 (sy, sx, k) for the class ids ``class_ids`` (the model's
    class table, in order), NaN where not classified."""

    class_map: np.ndarray
    probabilities: np.ndarray
    class_ids: list


def predict_scan(model, scan_features, batch_frames: int = 4096, cancel=None) -> Prediction:
    """Classify every recorded frame of ``scan_features`` (a ``ScanFeatures``) with ``model``
    (a ``SedModel``), ``batch_frames`` frames at a time."""
    model.check_geometry(scan_features.geometry, scan_features.name)
    sy, sx = scan_features.scan_shape
    ids = list(model.classes.ids)
    proba = np.full((sy * sx, len(ids)), np.nan, dtype=np.float32)
    todo = np.flatnonzero(~scan_features.missing.ravel())
    cols = [ids.index(int(c)) for c in model.estimator.classes_]
    for start in range(0, len(todo), batch_frames):
        check_cancel(cancel)
        sel = todo[start:start + batch_frames]
        X = scan_features.inputs(model.recipe, sel)
        ok = np.isfinite(X.reshape(len(X), -1)).all(axis=1)
        if ok.any():
            p = np.zeros((int(ok.sum()), len(ids)), dtype=np.float32)
            p[:, cols] = model.predict_proba(X[ok])
            proba[sel[ok]] = p
    class_map = np.zeros(sy * sx, dtype=np.uint8)
    done = np.isfinite(proba).all(axis=1)
    class_map[done] = np.asarray(ids, dtype=np.uint8)[np.argmax(proba[done], axis=1)]
    return Prediction(class_map.reshape(sy, sx), proba.reshape(sy, sx, len(ids)), ids)
