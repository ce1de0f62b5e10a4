"""Training and prediction work behind the napari widgets, TensorFlow-safe.

Importing TensorFlow in a process whose napari canvas draws with Mesa's software OpenGL
(Xvfb, VNC, many remote desktops) segfaults (notes: napari-headless.md). So the widgets
preprocess scans in their own process (no TensorFlow needed), and anything that imports
TensorFlow (CNN training, loading a CNN model file, CNN prediction) runs in a spawned child
through :func:`napari_sedclassify.models.tf_process.run_in_process`; FCNN and SVM
(scikit-learn) run in the widget's worker thread. The functions here that run in the child
import no napari, Qt or magicgui; arguments and results are arrays, paths and small dicts.
"""

from __future__ import annotations

import numpy as np

#: Model kinds whose estimator imports TensorFlow.
TF_KINDS = ("cnn",)

CROP_KEYS = ("crop_radius_px", "crop_d_A", "crop_bin")


def train_features_to_file(scan_features, class_maps, out, *, progress=None, cancel=None, **kwargs) -> dict:
    """Train on preprocessed ScanFeatures (see ``models.training.train`` for kwargs), save the
    model to ``out``; returns {"path", "kind", "training", "metrics"}."""
    from ..models.persistence import save_model
    from ..models.training import train

    model = train(scan_features, class_maps, progress=progress, cancel=cancel, **kwargs)
    path = save_model(model, out)
    return {"path": str(path), "kind": model.kind, "training": model.training, "metrics": model.metrics}


def predict_features(model_path, scan_features, *, progress=None, cancel=None) -> dict:
    """Classify the frames of one scan's ScanFeatures with the model file ``model_path``;
    returns {"class_map", "probabilities", "class_ids"}."""
    from ..models.inference import predict_scan
    from ..models.persistence import load_model

    model = load_model(model_path)
    pred = predict_scan(model, scan_features, cancel=cancel)
    return {"class_map": pred.class_map, "probabilities": pred.probabilities, "class_ids": list(pred.class_ids)}


def run(model_kind: str, func, /, *args, progress=None, cancel=None, **kwargs):
    """``func(*args, progress=, cancel=, **kwargs)``: in a spawned child for TensorFlow model
    kinds, else right here (the caller's worker thread)."""
    if model_kind in TF_KINDS:
        from ..models.tf_process import run_in_process

        return run_in_process(func, *args, progress=progress, cancel=cancel, **kwargs)
    return func(*args, progress=progress, cancel=cancel, **kwargs)


def model_card(path):
    """A model file's description as a SedModel without its estimator (reads model.json only,
    so no TensorFlow is imported): kind, recipe, preprocessing, classes, geometry, metrics."""
    from ..models.persistence import model_from_metadata, read_metadata

    return model_from_metadata(read_metadata(path), path)


def preprocess_params_for_model(card, geometry):
    """The PreprocessParams that give ``card``'s recipe its features on ``geometry``: the
    model's own preprocessing, with crops laid out for this detector."""
    from ..pipeline.train import preprocess_params_for
    from ..processing import PreprocessParams

    base = PreprocessParams.from_dict({k: v for k, v in (card.preprocess or {}).items() if k not in CROP_KEYS})
    return preprocess_params_for([card.recipe], geometry, base)


def features_for(layer_result, scan, name, flatfield, params, progress=None, cancel=None):
    """ScanFeatures of ``scan`` for ``params``: from ``layer_result`` (a PreprocessResult already
    made with exactly these parameters) or a new preprocessing pass. Returns (features, result)."""
    from ..models.training import ScanFeatures
    from ..pipeline.preprocess import preprocess

    result = layer_result
    if result is None or result.params.to_dict() != params.to_dict():
        result = preprocess(scan, params, flatfield, progress=progress, cancel=cancel)
    feats = ScanFeatures.from_preprocess(result, scan.geometry, name,
                                         crop_radius_px=result.resolved.get("crop_half_px"))
    return feats, result


def confidence_map(probabilities) -> np.ndarray:
    """Probability of the predicted class per point (NaN where not classified)."""
    p = np.asarray(probabilities, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        out = np.nanmax(np.where(np.isfinite(p), p, -np.inf), axis=-1)
    out[~np.isfinite(out)] = np.nan
    return out
