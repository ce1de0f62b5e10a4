"""Train a classifier from labeled scans (files or Scan objects): preprocess each scan the way
the model's features need, then :func:`napari_sedclassify.models.training.train`.

The CLI, the napari training widget and a spawned child process (:func:`train_to_file`, for
the CNN next to a napari canvas) all call these functions.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from ..models import MODEL_KINDS
from ..models.features import FeatureRecipe
from ..models.training import ScanFeatures, check_training_inputs
from .scans import flatfields_for, load_labels, open_scans, scan_name, scan_report


#: Bins the radial profile keeps beyond the radius the features read it to (see
#: :func:`preprocess_params_for`).
RIA_MARGIN_BINS = 2


def preprocess_params_for(recipes: Sequence[FeatureRecipe], geometry, base=None, *, training: bool = False):
    """The PreprocessParams that give every recipe its raw features on this geometry: crops
    (half size and binning from the crop recipe) only when a recipe needs them, and the radial
    profile only as far as the RIA recipes read it.

    RIA features are read only up to the outer edge of their last bin (q = 0.6 Å⁻¹ by default: 246
    px of a 512² frame at 900 mm and 200 kV, where the profile runs to the corner, 362 px); the
    profile stops there, ``RIA_MARGIN_BINS`` bins further, so the pixels beyond it are not visited.
    The bins kept hold the same pixels, so the features are the same to the bit. ``training``: the
    pass a model is trained on, whose augmented copies read farther (radial scale, centre jitter,
    blur: ``FeatureRecipe.ria_reach_px``). A radius ``base`` sets (``ria_r_max_px``: a user's, or
    a model's from the scans it was trained on) is replaced by that reach on this geometry:
    shorter, the features would read an empty profile beyond it."""
    from ..processing import PreprocessParams

    base = base if isinstance(base, PreprocessParams) else PreprocessParams.from_dict(base)
    crop = [r for r in recipes if r.kind == "crop"]
    if not crop:
        params = replace(base, crop_radius_px=None, crop_d_A=None)
    else:
        half, b = crop[0].crop_layout(geometry)
        params = replace(base, crop_radius_px=float(half), crop_d_A=None, crop_bin=int(b))
    return replace(params, ria_r_max_px=_ria_reach_px(recipes, geometry, params, training))


def _ria_reach_px(recipes, geometry, params, training):
    """Where the radial profile can stop for ``recipes`` (px; None: at the frame's corner, when
    that is as near); the ``params``' own radius when no recipe reads the profile, when it is
    binned in q, or when the reach is unknown (a q axis on an uncalibrated geometry: the model's
    or the training's check says so)."""
    from ..processing.params import default_ria_r_max_px

    ria = [r for r in recipes if r.kind == "ria"]
    if not ria or params.ria_q_max_invA is not None or params.ria_q_bin_invA is not None:
        return params.ria_r_max_px
    try:
        need = max(r.ria_reach_px(geometry, augmented=training) for r in ria)
    except ValueError:
        return params.ria_r_max_px
    r_max = need + RIA_MARGIN_BINS * params.ria_bin_px
    return r_max if r_max < default_ria_r_max_px(geometry.detector_shape) else None


def scan_features(scan, recipes, *, name=None, flatfield=None, base_params=None, progress=None,
                  cancel=None) -> tuple[ScanFeatures, object]:
    """Preprocess one scan for ``recipes`` (a FeatureRecipe or a list) and return its
    ScanFeatures and the PreprocessResult. progress(done, total) counts frames."""
    from .preprocess import preprocess

    recipes = [recipes] if isinstance(recipes, FeatureRecipe) else list(recipes)
    params = preprocess_params_for(recipes, scan.geometry, base_params, training=True)
    result = preprocess(scan, params, flatfield=flatfield, progress=progress, cancel=cancel)
    feats = ScanFeatures.from_preprocess(result, scan.geometry, name or scan_name(scan),
                                         crop_radius_px=result.resolved.get("crop_half_px"))
    return feats, result


def default_recipe(kind: str, **changes) -> FeatureRecipe:
    """The default feature recipe of a model kind, with ``changes``."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    return FeatureRecipe(kind=MODEL_KINDS[kind], **changes)


def train_model(scans, labels, *, model: str = "fcnn", recipe: FeatureRecipe | None = None, params: dict | None = None,
                holdout: Sequence[int] = (), val_fraction: float = 0.1, seed: int = 0, flatfield=None,
                preprocess_params=None, classes=None, progress: Callable | None = None,
                preprocess_progress: Callable | None = None, cancel: Callable | None = None):
    """Preprocess ``scans`` (paths or Scans), read ``labels`` (paths or arrays, 0 = unlabeled)
    and train a ``model`` ("fcnn", "svm", "cnn"); returns a SedModel (not saved).

    holdout: indices of scans kept out of training and evaluated at the end. flatfield: None,
    one for all scans, or one per scan (FlatField or path). preprocess_params: base
    PreprocessParams (or dict). progress(epoch, logs) during training; preprocess_progress(i,
    n_scans, done, total) while scans are preprocessed; cancel() -> True stops either.
    """
    if str(model).lower() == "cnn":  # say so before preprocessing, not after
        from ..optional import require_cnn

        require_cnn()
    recipe = recipe or default_recipe(model)
    scans = open_scans(scans)
    maps = load_labels(labels, scans)
    names = [scan_name(scan, i) for i, scan in enumerate(scans)]
    # what training would refuse (hold-out, ensemble, validation fraction, labels), before any frame is read
    check_training_inputs([ScanFeatures(name=name, geometry=scan.geometry, missing=np.asarray(scan.missing, bool))
                           for name, scan in zip(names, scans)], maps, kind=model, recipe=recipe, params=params,
                          classes=classes, holdout=holdout, val_fraction=val_fraction)
    ffs = flatfields_for(flatfield, len(scans))
    feats, pp = [], None
    for i, (scan, ff) in enumerate(zip(scans, ffs)):
        f, result = scan_features(scan, recipe, name=names[i], flatfield=ff, base_params=preprocess_params,
                                  progress=scan_report(preprocess_progress, i, len(scans)), cancel=cancel)
        feats.append(f)
        pp = pp or result.params.to_dict()
    from ..models.training import train

    return train(feats, maps, kind=model, recipe=recipe, params=params, classes=classes, holdout=holdout,
                 val_fraction=val_fraction, seed=seed, preprocess=pp, progress=progress, cancel=cancel)


def train_to_file(scans, labels, out, *, progress=None, cancel=None, **kwargs) -> dict:
    """Train (see :func:`train_model`) and save the model to ``out``; returns a small picklable
    summary {"path", "training", "metrics"}. Suited to ``models.tf_process.run_in_process``."""
    from ..models.persistence import save_model

    model = train_model(scans, labels, progress=progress, cancel=cancel, **kwargs)
    path = save_model(model, out)
    return {"path": str(path), "training": model.training, "metrics": model.metrics}
