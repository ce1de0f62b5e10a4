"""Training from labeled scans: scan-level hold-out, 90/10 train/validation split, class
weights, augmentation, a seed, progress and cancellation. Works on arrays (:class:`ScanFeatures`
and class maps, 0 = unlabeled), so it runs the same in the CLI, napari and a child process.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..classes import ClassTable
from ..geometry import FLAGS, Geometry
from . import MODEL_KINDS, check_kind, make_estimator
from ._common import check_cancel
from .features import (
    Augmentation,
    FeatureRecipe,
    NoiseStream,
    carbon_ice_score,
    crop_features,
    crop_score,
    end_positions,
    end_rows,
    neighbour_context,
    neighbour_extremes,
    ria_features,
    scan_reference,
)

@dataclass
class ScanFeatures:
    """Raw per-frame features of one scan, as preprocessing produced them.

    name: shown in messages and summaries. geometry: the scan's detector geometry.
    missing: bool (sy, sx), frames not recorded. ria: (sy, sx, nb) mean intensity per radial
    bin (NaN where empty) with radii_px (nb,) the bin centres (px). crops: (sy, sx, h, w)
    centred crops reaching crop_radius_px detector px from the centre to the crop's edge.
    """

    name: str
    geometry: Geometry
    missing: np.ndarray
    ria: np.ndarray | None = None
    radii_px: np.ndarray | None = None
    crops: np.ndarray | None = None
    crop_radius_px: float | None = None
    _references: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def scan_shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.missing.shape)

    @classmethod
    def from_preprocess(cls, result, geometry: Geometry, name: str, crop_radius_px: float | None = None):
        """From a ``PreprocessResult`` (``.ria``, ``.radii_px``, ``.crops``, ``.missing``; the crop
        radius defaults to the half size preprocessing resolved)."""
        if crop_radius_px is None and result.crops is not None:
            crop_radius_px = result.resolved.get("crop_half_px")
        return cls(name=name, geometry=geometry, missing=np.asarray(result.missing, dtype=bool),
                   ria=result.ria, radii_px=result.radii_px, crops=result.crops, crop_radius_px=crop_radius_px)

    def reference(self, recipe: FeatureRecipe):
        """The scan's reference profile for ``recipe.scan_context`` (median over its recorded
        frames; computed once per recipe), its two end crops for ``recipe.crop_context``, or None
        when the recipe does not use one."""
        crops = recipe.kind == "crop" and recipe.crop_context != "none"
        if not crops and (recipe.kind != "ria" or not recipe.scan_context):
            return None
        key = (recipe.replace(augmentation=Augmentation(copies=0)), repr(self.geometry))
        if key in self._references:
            return self._references[key]
        valid = ~np.asarray(self.missing, bool).ravel()
        if not crops:
            self._references[key] = scan_reference(self.ria, self.radii_px, recipe, self.geometry, valid=valid)
            return self._references[key]
        from .inference import MIN_CONTEXT_FRAMES

        if valid.sum() < MIN_CONTEXT_FRAMES:
            raise ValueError(
                f"{self.name}: this model compares every crop with its scan's two ends (crop_context), which "
                f"needs a whole scan (at least {MIN_CONTEXT_FRAMES} frames), not {valid.sum()}: classify "
                "whole scans (sedclassify predict), not frame by frame")
        self._references[key] = self._crop_ranking(recipe)[1]
        return self._references[key]

    def neighbours(self, recipe: FeatureRecipe) -> np.ndarray:
        """(n frames, 3) for ``recipe.scan_neighbours`` (:func:`~.features.neighbour_context`): each
        frame's position between the scan's carbon and ice ends, and the lowest and highest in its
        3x3 neighbourhood; computed once per recipe, from the frames as recorded (no augmentation)."""
        key = ("neighbours", recipe.replace(augmentation=Augmentation(copies=0)), repr(self.geometry))
        if key in self._references:
            return self._references[key]
        from .inference import MIN_CONTEXT_FRAMES

        valid = ~np.asarray(self.missing, bool).ravel()
        if valid.sum() < MIN_CONTEXT_FRAMES:
            raise ValueError(
                f"{self.name}: this model looks at every frame's scan neighbours (scan_neighbours), which needs a "
                f"whole scan (at least {MIN_CONTEXT_FRAMES} frames), not {valid.sum()}: classify whole scans "
                "(sedclassify predict), not frame by frame")
        plain = recipe.replace(scan_neighbours=False, scan_context=0, normalise=False, background="none",
                               standardise=False, augmentation=Augmentation(copies=0))
        with np.errstate(all="ignore"):
            score = carbon_ice_score(self.inputs(plain).astype(np.float64), recipe, self.geometry)
        position = end_positions(score, valid, recipe.context_end_fraction).reshape(self.scan_shape)
        self._references[key] = neighbour_context(position)
        return self._references[key]

    def inputs(self, recipe: FeatureRecipe, index=None, aug: dict | None = None) -> np.ndarray:
        """Model inputs for the frames at flat ``index`` (all frames when None)."""
        n = self.missing.size
        index = np.arange(n) if index is None else np.asarray(index)
        if recipe.kind == "ria":
            if self.ria is None:
                raise ValueError(f"{self.name}: no RIAs were computed, but the model works on RIAs")
            self._check_profile_reach(recipe)
            ria = np.asarray(self.ria).reshape(n, -1)[index]
            out = ria_features(ria, self.radii_px, recipe, self.geometry, aug, reference=self.reference(recipe))
            if recipe.scan_neighbours:
                side = np.tile(self.neighbours(recipe)[index], (1, int(recipe.neighbour_copies)))
                out = np.concatenate([out, np.where(np.isnan(out[:, :1]), np.nan, side)], axis=1)
            return out
        if self.crops is None:
            raise ValueError(f"{self.name}: no crops were computed, but the model works on central crops")
        crops = np.asarray(self.crops)
        crops = crops.reshape((n,) + crops.shape[2:])

        def features(sel):
            return crop_features(crops[sel], self.crop_radius_px, recipe, aug,
                                 wanted_radius_px=self._wanted_crop_px(recipe), q_per_px=self.crop_q_per_px(recipe),
                                 reference=self.reference(recipe))

        out = features(index)
        if recipe.scan_neighbours:  # the carbon-context channel of the most carbon-like neighbour
            ends = self.neighbour_ends(recipe)[index]
            out = np.concatenate([out, features(ends[:, 0])[..., 1:2]], axis=-1)
        return out

    def _check_profile_reach(self, recipe: FeatureRecipe) -> None:
        """Refuse a radial profile cut short of where ``recipe`` reads it on this geometry: its
        outer feature bins would read an empty profile, silently (a camera length fitted, longer,
        after a pass cut for the nominal one: docs/results.md, session 24)."""
        from ..processing import default_ria_r_max_px

        radii = np.asarray(self.radii_px, dtype=np.float64)
        if radii.size < 2 or not self.geometry.calibrated:
            return
        width = float(radii[1] - radii[0])
        edge = float(radii[-1]) + width / 2
        if edge >= default_ria_r_max_px(self.geometry.detector_shape) - width:
            return  # the whole profile, to the frame's corner: nothing beyond it was left out
        reach = recipe.ria_reach_px(self.geometry)
        if reach > edge:
            raise ValueError(
                f"{self.name}: its radial profile was cut at {edge:.1f} px, but the model reads it to {reach:.1f} px "
                f"on this geometry (camera length {self.geometry.camera_length_mm:.1f} mm): preprocess the scan "
                "again with this geometry (a camera length set after preprocessing moves the rings outward)")

    def neighbour_ends(self, recipe: FeatureRecipe) -> np.ndarray:
        """(n frames, 2) flat indices, for crop recipes with ``scan_neighbours``: the most carbon-like
        and the most ice-like frame of each frame's 3x3 scan neighbourhood (itself included; by
        :func:`~.features.crop_score` of the recorded crops)."""
        key = ("neighbour_ends", recipe.replace(augmentation=Augmentation(copies=0)), repr(self.geometry))
        if key in self._references:
            return self._references[key]
        self.reference(recipe)  # refuses parts of scans
        valid = ~np.asarray(self.missing, bool).ravel()
        score = self._crop_ranking(recipe)[0]
        score = np.where(valid & np.isfinite(score), score, np.nan).reshape(self.scan_shape)
        self._references[key] = neighbour_extremes(score)
        return self._references[key]

    def _crop_ranking(self, recipe: FeatureRecipe) -> tuple[np.ndarray, np.ndarray]:
        """(every frame's :func:`~.features.crop_score` (n,), the scan's two ends as
        :func:`~.features.crop_reference` gives them (2, S, S)), from the crops resampled as
        ``recipe`` asks before normalisation, context and mask; computed once per recipe.

        One pass of ``RANK_BLOCK_FRAMES`` frames at a time: the resampled crops wait in a scratch
        store (a temporary memory-mapped file over ``RANK_IN_MEMORY_BYTES``) and the ends' pixel-wise
        medians are taken a few pixels at a time, so the memory this takes does not grow with the
        scan (it held every crop twice: 2.1 GB for a 256 x 256 scan; docs/performance.md)."""
        plain = recipe.replace(normalise=False, crop_context="none", crop_mask_q_invA=0.0, scan_neighbours=False,
                               augmentation=Augmentation(copies=0))
        key = ("crop_ranking", plain, repr(self.geometry))
        if key in self._references:
            return self._references[key]
        n, size = self.missing.size, plain.crop_size
        raw = _scratch((n, size * size))
        score, finite = np.empty(n), np.empty(n, bool)
        q_per_px = self.crop_q_per_px(recipe)
        for start in range(0, n, RANK_BLOCK_FRAMES):
            sel = slice(start, min(start + RANK_BLOCK_FRAMES, n))
            block = self.inputs(plain, np.arange(n)[sel]).reshape(-1, size * size)
            raw[sel] = block
            finite[sel] = np.isfinite(block).all(axis=1)
            with np.errstate(all="ignore"):
                score[sel] = crop_score(block.reshape(-1, size, size), q_per_px)
        rows = np.flatnonzero(~np.asarray(self.missing, bool).ravel() & finite)
        if len(rows):
            ends = [_pixel_median(raw, np.sort(r)) for r in end_rows(rows, score[rows], recipe.context_end_fraction)]
            reference = np.stack(ends).reshape(2, size, size).astype(np.float32)
        else:
            reference = np.full((2, size, size), np.nan, dtype=np.float32)
        self._references[key] = (score, reference)
        return self._references[key]

    def _wanted_crop_px(self, recipe: FeatureRecipe) -> float | None:
        rescaled = recipe.crop_rescale and recipe.crop_radius_px is None and self.geometry.calibrated
        if rescaled or recipe.crop_cut_margin != 1.0:  # (a wider cut than the crop: the crop is inside it)
            return recipe.wanted_crop_radius_px(self.geometry)
        return None

    def crop_q_per_px(self, recipe: FeatureRecipe) -> float | None:
        """q (Å⁻¹) per px of the model's crops on this scan: from the geometry when calibrated, else
        from the recipe's crop radius in Å (nominally), else None."""
        if self.geometry.calibrated and self.crop_radius_px:
            span = self._wanted_crop_px(recipe) or float(self.crop_radius_px)
            return float(self.geometry.radius_px_to_q_invA(span)) / (recipe.crop_size / 2.0)
        if recipe.crop_radius_A:
            return (1.0 / float(recipe.crop_radius_A)) / (recipe.crop_size / 2.0)
        return None


#: Frames resampled at once when a crop recipe ranks a scan's frames (its two ends, each frame's
#: neighbours): about 10 MB of crops (48 x 48 float32) per block.
RANK_BLOCK_FRAMES = 1024
#: A scan's resampled crops (and training inputs) wait in memory up to this size, beyond it in a
#: temporary memory-mapped file; the ends' medians read at most this much of them at a time.
RANK_IN_MEMORY_BYTES = 64 * 2**20


def _scratch(shape, dtype=np.float32) -> np.ndarray:
    """An empty array of ``shape``: in memory when small, else over a temporary file (removed
    when the array goes), so that its pages are the file's, not the process's memory."""
    from ..processing.runner import file_backed_empty

    if int(np.prod(shape)) * np.dtype(dtype).itemsize <= RANK_IN_MEMORY_BYTES:
        return np.empty(shape, dtype)
    return file_backed_empty(shape, dtype)


#: Training frames whose inputs are made at once: for CNN crops about 9 MB of 48 x 48 float32,
#: and the scan's raw crops they are resampled from.
INPUT_BLOCK_FRAMES = 1024


def _input_blocks(frames: np.ndarray, aug: dict | None):
    """``frames`` with their augmentation draw ``aug`` (per-frame arrays, or None), in blocks of
    INPUT_BLOCK_FRAMES. Counting noise (``noise_seed``): each block's rows of the one draw over all
    the frames (``features.NoiseStream``), so the inputs do not depend on the block size."""
    noise = NoiseStream(aug["noise_seed"]) if aug is not None and "noise_seed" in aug else None
    step = INPUT_BLOCK_FRAMES
    for start in range(0, len(frames), max(step, 1)):
        part = slice(start, start + step)
        block = None if aug is None else {k: v[part] if np.ndim(v) else v for k, v in aug.items()}
        if noise is not None:
            block["noise_seed"] = noise.rows(start)
        yield frames[part], block


class _InputRows:
    """Model inputs gathered block by block into one array of at most ``n`` rows, made at the first
    block (:func:`_scratch`: over a temporary file when large) instead of concatenated copies; rows
    with a non-finite value are left out."""

    def __init__(self, n: int):
        self.n, self.count, self.rows, self.frames = n, 0, None, []

    def add(self, X: np.ndarray, frames: np.ndarray) -> None:
        ok = np.isfinite(X.reshape(len(X), -1)).all(axis=1)
        if self.rows is None:
            self.rows = _scratch((self.n,) + X.shape[1:], X.dtype)
        k = int(ok.sum())
        self.rows[self.count:self.count + k] = X[ok]
        self.count += k
        self.frames.append(frames[ok])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The inputs (count, ...) and the frame each row is of."""
        return self.rows[:self.count], np.concatenate(self.frames)


def _pixel_median(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The median over ``rows`` of every column of ``values`` (n, m): as ``np.median(values[rows],
    axis=0)``, a block of columns at a time (at most ``RANK_IN_MEMORY_BYTES`` read at once)."""
    step = max(1, RANK_IN_MEMORY_BYTES // (4 * len(rows)))
    return np.concatenate([np.median(values[rows, c:c + step], axis=0) for c in range(0, values.shape[1], step)])


def check_class_map(class_map, scan: ScanFeatures, classes: ClassTable, what: str = "labels") -> np.ndarray:
    """The class map as an int array, after checking its shape and class ids."""
    cm = np.asarray(class_map)
    if cm.ndim != 2 or tuple(cm.shape) != scan.scan_shape:
        raise ValueError(f"{what} for {scan.name}: shape {tuple(cm.shape)} does not match the scan grid "
                         f"{scan.scan_shape[0]}x{scan.scan_shape[1]}; labels must be a 2D image on the scan grid")
    if not np.issubdtype(cm.dtype, np.integer):
        if np.issubdtype(cm.dtype, np.floating) and np.all(np.isfinite(cm)) and np.all(cm == np.round(cm)):
            cm = cm.astype(np.int64)
        else:
            raise ValueError(f"{what} for {scan.name}: class ids must be integers, got {cm.dtype}")
    unknown = sorted(set(np.unique(cm).tolist()) - set(classes.ids) - {0})
    if unknown:
        raise ValueError(f"{what} for {scan.name}: unknown class ids {unknown} (known: 0 = unlabeled, "
                         + ", ".join(f"{i} = {classes.names[i]}" for i in classes.ids) + ")")
    return cm.astype(np.int64)


def _recipe_for_training(recipe: FeatureRecipe, scans: Sequence[ScanFeatures]) -> FeatureRecipe:
    """The same geometry checks as prediction, between the scans of one training run, and the
    recipe narrowed to the RIA range every scan reaches (recorded in the model)."""
    from .persistence import IncompatibleModelError, assumed_problems

    first = scans[0]
    for s in scans[1:]:
        problems = assumed_problems(first.geometry, s.geometry, what=f"the first training scan {first.name} has")
        if problems:
            raise IncompatibleModelError(f"training scan {s.name}: " + "; ".join(problems))
    try:
        return recipe.for_geometries([s.geometry for s in scans])
    except ValueError as exc:
        raise ValueError(f"training scans {', '.join(s.name for s in scans)}: {exc}") from None


def check_training_inputs(scans: Sequence[ScanFeatures], class_maps: Sequence, *, kind: str = "fcnn",
                          recipe: FeatureRecipe | None = None, params: dict | None = None,
                          classes: ClassTable | None = None, holdout: Sequence[int] = (),
                          val_fraction: float = 0.1) -> list[np.ndarray]:
    """Refuse what :func:`train` cannot train on, before any work: the model kind, its recipe and
    ensemble size, the validation fraction, the hold-out scans, the label images (one per scan, on
    its grid, known class ids, at least two classes among the training scans' recorded frames; for
    the SVM at least two frames of each). ``scans`` need only their name and missing frames (a
    ScanFeatures without features: ``pipeline.train.train_model`` checks this before it
    preprocesses). Returns the class maps as int arrays."""
    kind = check_kind(kind)
    classes = classes or ClassTable.default()
    if recipe is not None and recipe.kind != MODEL_KINDS[kind]:
        raise ValueError(f"a {kind} model needs '{MODEL_KINDS[kind]}' features, the recipe makes '{recipe.kind}'")
    _ensemble_size((params or {}).get("ensemble", 1))
    if not 0 <= val_fraction < 1:
        v = f"{val_fraction:g}"
        raise ValueError(f"validation fraction {v} (val_fraction={v}, --val-fraction {v}) must be at least 0 and less "
                         "than 1: the share of each class's labeled frames held out for validation")
    if len(scans) != len(class_maps):
        raise ValueError(f"{len(scans)} scans but {len(class_maps)} label images: give one label image per scan")
    maps = [check_class_map(cm, s, classes) for s, cm in zip(scans, class_maps)]
    _, train_ids = _training_scans(len(scans), holdout)
    _, owners, y = _labeled_frames(scans, maps, train_ids)
    if len(np.unique(y)) < 2:
        raise ValueError("the labels of the training scans contain fewer than two classes; label at least two")
    if kind == "svm":
        _check_svm_classes(y, owners, scans, classes)
    return maps


def _ensemble_size(ensemble) -> int:
    ensemble = int(ensemble)
    if ensemble < 1:
        raise ValueError(f"ensemble must be at least 1, got {ensemble}")
    return ensemble


def _training_scans(n_scans: int, holdout: Sequence[int]) -> tuple[list[int], list[int]]:
    """The hold-out scans' indices, sorted, and the training scans' (a ValueError when out of range
    or when none is left for training)."""
    holdout = sorted({int(i) for i in holdout})
    if any(i < 0 or i >= n_scans for i in holdout):
        raise ValueError(f"hold-out scan indices {holdout} out of range for {n_scans} scans")
    train_ids = [i for i in range(n_scans) if i not in holdout]
    if not train_ids:
        raise ValueError("no scans left for training after the hold-out")
    return holdout, train_ids


def _labeled_frames(scans, maps, train_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labeled, recorded frames of the training scans: their flat indices in their scan, the
    scan each is of, their class ids."""
    index = [np.flatnonzero((maps[i].ravel() > 0) & ~np.asarray(scans[i].missing).ravel()) for i in train_ids]
    owners = np.concatenate([np.full(len(ok), i) for i, ok in zip(train_ids, index)])
    y = np.concatenate([maps[i].ravel()[ok] for i, ok in zip(train_ids, index)])
    return np.concatenate(index), owners, y


def _split(y: np.ndarray, val_fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train / validation indices (at least one validation point per class of >= 2)."""
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(val_fraction * len(idx)))
        if val_fraction > 0 and len(idx) >= 2:
            k = max(1, k)
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


#: The SVM calibrates its probabilities on labeled frames held out from its fit (the validation
#: frames, or cross-validation folds): every class needs one there and one in the fit.
SVM_MIN_CLASS_FRAMES = 2


def _check_svm_classes(y, owners, scans, classes: ClassTable) -> None:
    """Refuse, naming the class, its frames and the scans whose labels hold it, a class too rare for
    the SVM's probability calibration."""
    ids, counts = np.unique(y, return_counts=True)
    for c, n in zip(ids.tolist(), counts.tolist()):
        if n < SVM_MIN_CLASS_FRAMES:
            where = ", ".join(scans[i].name for i in np.unique(owners[y == c]))
            raise ValueError(
                f"{classes.names[c]}: {n} labeled frame in the labels of {where}, too few for the SVM, which "
                f"calibrates its probabilities on labeled frames held out from its training: label at least "
                f"{SVM_MIN_CLASS_FRAMES} frames of every class ({MIN_CLASS_FRAMES} or more to learn it well), "
                f"or erase that class's labels")


def train(
    scans: Sequence[ScanFeatures],
    class_maps: Sequence,
    *,
    kind: str = "fcnn",
    recipe: FeatureRecipe | None = None,
    params: dict | None = None,
    classes: ClassTable | None = None,
    holdout: Sequence[int] = (),
    groups: Sequence | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    preprocess: dict | None = None,
    progress: Callable | None = None,
    cancel: Callable | None = None,
):
    """Train a model of ``kind`` on labeled scans and return a :class:`~.persistence.SedModel`.

    scans, class_maps: one class map per scan (0 = unlabeled). holdout: indices of scans kept
    out of training and evaluated at the end. val_fraction: frames of the training scans held out
    (stratified) for early stopping and calibration. recipe: features (default: RIA for
    fcnn/svm, crops for cnn). params: estimator settings, and "ensemble": train this many
    members, each on its own augmentation draw and seed (the SVM: its own subsample), on the same
    split, and average their (FCNN, SVM: calibrated) probabilities (one estimator to save and apply;
    docs/results.md: it takes out most of the seed-to-seed spread on sessions unlike the training
    ones). seed: split, augmentation and estimator initialisation. preprocess: the
    PreprocessParams dict, kept in the model. groups: one label per scan (e.g. its session) for the
    SVM's ``search="groups"``. progress(epoch, logs), cancel() -> bool as in the estimators.
    """
    from .inference import predict_scan
    from .metrics import evaluate
    from .persistence import SedModel, library_versions

    kind = check_kind(kind)  # before any work
    maps = check_training_inputs(scans, class_maps, kind=kind, recipe=recipe, params=params, classes=classes,
                                 holdout=holdout, val_fraction=val_fraction)
    settings = dict(params or {})
    ensemble = _ensemble_size(settings.pop("ensemble", 1))
    classes = classes or ClassTable.default()
    recipe = recipe or FeatureRecipe(kind=MODEL_KINDS[kind])
    holdout, train_ids = _training_scans(len(scans), holdout)
    recipe = _recipe_for_training(recipe, [scans[i] for i in train_ids] + [scans[i] for i in holdout])
    rng = np.random.default_rng(seed)

    # labeled, recorded frames of the training scans
    index, owners, y = _labeled_frames(scans, maps, train_ids)
    tr, va = _split(y, val_fraction, rng)

    def inputs(sel, draws=(None,)):
        """Inputs, labels and scan indices of the frames ``sel``, once per entry of ``draws`` (None:
        as recorded, the augmentation rng: an augmented copy), made a block of frames at a time into
        one array (over a temporary file when large: :class:`_InputRows`); frames with a non-finite
        input left out."""
        rows = _InputRows(len(sel) * len(draws))
        for aug_rng in draws:
            for i in np.unique(owners[sel]):
                s = sel[owners[sel] == i]
                aug = recipe.augmentation.draw(len(s), aug_rng) if aug_rng is not None else None
                for block, block_aug in _input_blocks(s, aug):
                    check_cancel(cancel)
                    rows.add(scans[i].inputs(recipe, index[block], block_aug), block)
        X, order = rows.result()
        return X, y[order], owners[order]

    if groups is not None and len(groups) != len(scans):
        raise ValueError(f"{len(scans)} scans but {len(groups)} groups: give one group per scan")
    X_va, y_va = inputs(va)[:2] if len(va) else (None, None)
    settings.setdefault("random_state", seed)
    members, t_features, t_fit = [], 0.0, 0.0
    for member in range(ensemble):
        t1 = time.perf_counter()
        # the frames, then their augmented copies
        X_tr, y_tr, o_tr = inputs(tr, (None,) + (rng,) * recipe.augmentation.copies)
        t2 = time.perf_counter()
        estimator = make_estimator(kind, **{**settings, "random_state": settings["random_state"] + member})
        fit_extra = {}
        if groups is not None and "groups" in inspect.signature(estimator.fit).parameters:
            fit_extra["groups"] = np.asarray([str(groups[i]) for i in o_tr])
        told = progress if progress is None or ensemble == 1 else (  # which member the epochs are of
            lambda epoch, logs, m=member: progress(epoch, {**logs, "member": m + 1, "members": ensemble}))
        estimator.fit(X_tr, y_tr, validation_data=(X_va, y_va) if X_va is not None else None,
                      progress=told, cancel=cancel, **fit_extra)
        members.append(estimator)
        t_features, t_fit = t_features + t2 - t1, t_fit + time.perf_counter() - t2
    if ensemble > 1 and kind == "cnn":
        from .cnn import averaged

        estimator = averaged(members)
    elif ensemble > 1:
        from ._common import soft_vote

        estimator = soft_vote(members, y_tr)

    geometry = scans[train_ids[0]].geometry
    summary = {
        "kind": kind,
        "seed": int(seed),
        "scans": [{"name": scans[i].name, "scan_shape": list(scans[i].scan_shape), "role": "train",
                   "labeled": {classes.names[c]: int((maps[i] == c).sum()) for c in classes.ids},
                   **_optics(scans[i].geometry)}
                  for i in train_ids]
        + [{"name": scans[i].name, "scan_shape": list(scans[i].scan_shape), "role": "holdout"} for i in holdout],
        "n_train_frames": int(len(tr)),
        "n_validation_frames": int(len(va)),
        "n_train_inputs": int(len(X_tr)),
        "augmented_copies": int(recipe.augmentation.copies),
        "ensemble": ensemble,
        "val_fraction": float(val_fraction),
        "class_counts": {classes.names[int(c)]: int(n) for c, n in zip(*np.unique(y[tr], return_counts=True))},
        "class_weight": estimator.get_params().get("class_weight"),
        "params": estimator.get_params(),
        "history": getattr(estimator, "history_", []),
        "epochs": len(getattr(estimator, "history_", [])),
        "feature_time_s": round(t_features, 3),
        "fit_time_s": round(t_fit, 3),
    }
    for key in ("search_results_", "best_params_"):
        if hasattr(estimator, key):
            summary[key.rstrip("_")] = getattr(estimator, key)
    warnings = training_warnings(summary["class_counts"], [scans[i] for i in train_ids])
    if warnings:
        summary["warnings"] = warnings
    model = SedModel(kind=kind, estimator=estimator, recipe=recipe, preprocess=dict(preprocess or {}),
                     classes=classes, geometry=geometry, training=summary, versions=library_versions(kind))
    metrics = {}
    if X_va is not None:
        metrics["validation"] = evaluate(y_va, estimator.predict(X_va), classes)
    for i in holdout:
        check_cancel(cancel)
        pred = predict_scan(model, scans[i])
        metrics.setdefault("holdout", {})[scans[i].name] = evaluate(maps[i], pred.class_map, classes)
    model.metrics = metrics
    return model


def _optics(geometry: Geometry) -> dict:
    """A training scan's camera length (mm) and voltage (kV) for the model card, when both are known:
    the range of the training scans' λL that ``persistence.camera_length_warning`` compares with."""
    if not geometry.calibrated:
        return {}
    return {"camera_length_mm": float(geometry.camera_length_mm), "voltage_kv": float(geometry.voltage_kv)}


#: A class with fewer labeled training frames than this is learnt poorly (a warning says so).
MIN_CLASS_FRAMES = 40


def rare_class_warnings(class_counts: dict) -> list[str]:
    """The warning for classes with fewer than MIN_CLASS_FRAMES labeled training frames
    (``class_counts``: {class name: frames}, as a model's ``training["class_counts"]`` stores
    them), [] when there are none."""
    few = {name: int(n) for name, n in (class_counts or {}).items() if n < MIN_CLASS_FRAMES}
    if not few:
        return []
    return ["few labeled frames for " + ", ".join(f"{name} ({n})" for name, n in few.items())
            + f": the model will recognise {'it' if len(few) == 1 else 'them'} poorly; label at least "
            f"{MIN_CLASS_FRAMES} frames of each class, from more than one scan if you can"]


def model_file_warnings(model) -> list[str]:
    """What a user applying ``model`` (a SedModel, or the card of a model file) must know of its
    training: classes it saw few labeled frames of, named with the model. Derived from the class
    counts every model file stores, so a file written before training stored its warnings says
    it too."""
    return [f"model {model.name}: {w}" for w in rare_class_warnings((model.training or {}).get("class_counts"))]


def training_warnings(class_counts: dict, scans) -> list[str]:
    """What a user must know about a model just trained: classes with few labeled frames, and
    calibration values of the training scans that nobody stated (the model's q axis rests on
    them)."""
    out = rare_class_warnings(class_counts)
    assumed = sorted({n for s in scans for n in s.geometry.assumed()}, key=list(FLAGS).index)
    if assumed:
        g = next(s.geometry for s in scans if s.geometry.assumed())
        out.append(f"{g.values_text(assumed)} assumed for the training scans "
                   "(neither the files nor the command line give them): the model reads its radial profiles on the "
                   "q axis they set, and scans it is applied to must match them; give the true values "
                   "(--pixel-size, --camera-length, --voltage) or fit the camera length (`sedclassify calibrate`)")
    return out
