"""Apply a trained model to scans: preprocess with the model's own recipe, classify every
frame, write the class map (.npy, .tif), the per-class probabilities (.npy) and a PNG overlay.

:func:`predict_to_files` takes and returns only paths and small dicts, so the napari widget
can run it in a spawned child (``models.tf_process.run_in_process``) for CNN models.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .scans import flatfields_for, is_path, open_scans, scan_name, scan_report
from .train import preprocess_params_for


@dataclass
class ScanPrediction:
    """The result for one scan. class_map: uint8 (sy, sx), 0 = missing / not classified.
    probabilities: float32 (sy, sx, k) for ``class_ids``. integrated: (sy, sx) total counts.
    timings: seconds for preprocessing (features) and for the model's prediction.
    uncertain: None, or bool (sy, sx) frames left out of the class map (set to 0) because their
    most probable class was below a probability threshold (:func:`with_uncertain`).
    geometry: the scan's Geometry (scan step, q axis); ria: (sy, sx, nbins) float32 radial
    intensity averages with ria_radii_px (nbins,) their bin centres: what the HyperSpy export
    (``io.hyperspy.export_hyperspy``) writes besides the class map. warnings: what the user must
    know before trusting the class map (:func:`prediction_warnings`), one sentence each.
    preprocessing: how the frames were preprocessed (``preprocess.preprocessing_record``: the plan,
    the direct-beam radius and whether it was stated or measured, the q axis, the flat-field)."""

    name: str
    class_map: np.ndarray
    probabilities: np.ndarray
    class_ids: list
    integrated: np.ndarray
    timings: dict = field(default_factory=dict)
    source: str | None = None
    uncertain: np.ndarray | None = None
    geometry: object | None = None
    ria: np.ndarray | None = None
    ria_radii_px: np.ndarray | None = None
    warnings: list = field(default_factory=list)
    preprocessing: dict | None = None


def with_uncertain(pred: ScanPrediction, threshold: float | None) -> ScanPrediction:
    """``pred`` with the frames whose most probable class is below ``threshold`` marked uncertain:
    0 ("not classified") in the class map, so no keep-list or reduction made from it keeps them,
    and listed in ``uncertain``. None: ``pred`` unchanged."""
    if threshold is None:
        return pred
    from ..models.inference import mark_uncertain

    class_map, mask = mark_uncertain(pred.class_map, pred.probabilities, threshold)
    return replace(pred, class_map=class_map, uncertain=mask)


def prediction_entry(pred: ScanPrediction, files: dict, classes) -> dict:
    """The summary of one written prediction: name, source, files, counts per class, frames not
    classified (and of those, uncertain ones when marked), timings, and how the frames were
    preprocessed (``preprocessing``: see :class:`ScanPrediction`)."""
    entry = {"name": pred.name, "source": pred.source, "files": files,
             "counts": {classes.names[c]: int((pred.class_map == c).sum()) for c in pred.class_ids},
             "unclassified": int((pred.class_map == 0).sum()), "timings": pred.timings}
    if pred.uncertain is not None:
        entry["uncertain"] = int(pred.uncertain.sum())
    if pred.warnings:
        entry["warnings"] = list(pred.warnings)
    if pred.preprocessing is not None:
        entry["preprocessing"] = pred.preprocessing
    return entry


class ModelLoading:
    """A model file loading in a thread: its ``card`` (model.json: recipe, preprocessing, classes,
    geometry; nothing heavy imported) at once, the SedModel from :meth:`model`. An FCNN or SVM file
    with arrays loads in milliseconds; a CNN imports TensorFlow, and an older FCNN or SVM file
    scikit-learn and skops (1-3 s here): a prediction preprocesses the scan meanwhile."""

    def __init__(self, path):
        from concurrent.futures import ThreadPoolExecutor

        from ..models.persistence import load_model, model_from_metadata, read_metadata, resolve_model_path

        self.card = model_from_metadata(read_metadata(path), resolve_model_path(path))
        pool = ThreadPoolExecutor(1, thread_name_prefix="sedclassify-load-model")
        self._future = pool.submit(load_model, path)
        pool.shutdown(wait=False)

    def model(self):
        """The loaded SedModel (waits for it; raises what loading raised)."""
        return self._future.result()


def loading(model):
    """A SedModel as it is; a model file as a :class:`ModelLoading`, started now."""
    return ModelLoading(model) if is_path(model) else model


def as_model(model):
    """A SedModel from a SedModel, a :class:`ModelLoading` or a model file path."""
    if isinstance(model, ModelLoading):
        return model.model()
    if is_path(model):
        from ..models.persistence import load_model

        return load_model(model)
    return model


def card_of(model):
    """What is known of ``model`` (SedModel or ModelLoading) without waiting: recipe, classes..."""
    return model.card if isinstance(model, ModelLoading) else model


def check_model_libraries(model) -> None:
    """Raise :class:`~napari_sedclassify.optional.MissingOptionalDependency` (its message gives the
    pip command) when ``model`` (SedModel or model file) needs libraries that are not installed (a
    CNN file without arrays, without TensorFlow). Reads the file's model.json only: call it before
    starting work."""
    from ..models.arrays import ArrayClassifier
    from ..models.persistence import needs_tensorflow, read_metadata

    if (needs_tensorflow(read_metadata(model)) if is_path(model)
            else model.kind == "cnn" and not isinstance(model.estimator, ArrayClassifier)):
        from ..optional import require_cnn

        require_cnn(f"The CNN model {model if is_path(model) else model.name}")


def check_preprocess(model, result, geometry) -> None:
    """Raise IncompatibleModelError when a precomputed PreprocessResult cannot give ``model``
    its features as in training: other centring or RIA bins, a profile that stops short of the
    model's q range, or crops missing or laid out differently."""
    from ..errors import IncompatibleModelError

    trained = model.preprocess or {}
    given = result.params.to_dict()
    problems = [f"{k} = {given.get(k)!r} (model: {trained[k]!r})"
                for k in ("centring", "ria_bin_px", "ria_r_min_px", "use_flatfield")
                if k in trained and given.get(k) != trained[k]]
    recipe = model.recipe
    if recipe.kind == "ria":
        need = float(recipe.ria_edges_px(geometry)[-1])
        have = float(result.radii_px[-1]) + 0.5 * result.resolved.get("ria_bin_px", 1.0) if len(result.radii_px) else 0.0
        if have < need:
            problems.append(f"RIA stops at {have:.0f} px, the model reads it to {need:.0f} px")
    else:
        half, b = recipe.crop_layout(geometry)
        got = (result.resolved.get("crop_half_px"), result.resolved.get("crop_bin"))
        if result.crops is None or got != (half, b):
            problems.append(f"crops (half size, binning) = {got}, the model needs ({half}, {b})")
    if problems:
        raise IncompatibleModelError(f"model {model.name}: the preprocessing result differs from the model's "
                                     "recipe: " + "; ".join(problems))


def preprocess_passes(model) -> int:
    """How many times preprocessing reads each frame for ``model`` (SedModel or card): 2 with
    fitted centring (centres, then the profiles around the fitted ones), else 1."""
    return 2 if (model.preprocess or {}).get("centring") == "fitted" else 1


def check_scans(model, scans, names=None) -> None:
    """Raise IncompatibleModelError (naming the scan's file) for the first of ``scans`` (opened
    Scans) whose geometry ``model`` (SedModel or card) cannot read: a batch says it before its first
    scan is preprocessed, not after the scans before that one (``names``: the in-memory scans')."""
    for i, scan in enumerate(scans):
        model.check_geometry(scan.geometry, str(scan.source) if scan.source is not None
                             else (names[i] if names else scan_name(scan)))


def predict_scan(model, scan, *, flatfield=None, name=None, result=None, progress: Callable | None = None,
                 classify_progress: Callable | None = None, cancel: Callable | None = None, client=None,
                 chunk_frames: int | None = None) -> ScanPrediction:
    """Classify every frame of ``scan`` (Scan or path) with ``model`` (SedModel, path or
    :class:`ModelLoading`: a model file's estimator loads while the scan is preprocessed).

    result: a PreprocessResult of this scan made earlier (e.g. by ``sedclassify preprocess``),
    used instead of preprocessing again after :func:`check_preprocess`. Raises
    IncompatibleModelError (naming the model file and the mismatch) before any work when the
    scan's geometry does not suit the model. Two stages, each with its progress: preprocessing,
    progress(done, total) over the scan's frames, then the model's, classify_progress(done,
    total) over the recorded frames, after each block the model classifies (``cancel()`` is
    checked between blocks). client: a
    dask.distributed Client for the per-frame work (None: threads here); chunk_frames: frames per
    task. The CLI, batch runs, napari and evaluation all classify through here.
    """
    from ..models.inference import predict_scan as predict_features
    from ..models.training import ScanFeatures
    from .preprocess import preprocess, preprocessing_record

    model = loading(model)
    card = card_of(model)
    (scan,) = open_scans([scan])
    name = name or scan_name(scan)
    check_scans(card, [scan], [name])
    t0 = time.perf_counter()
    if result is None:
        params = params_for_model(card, scan.geometry)
        if chunk_frames is not None:
            params = replace(params, chunk_frames=int(chunk_frames))
        result = preprocess(scan, params, flatfield=flatfields_for(flatfield, 1)[0], progress=progress, cancel=cancel,
                            client=client)
    else:
        check_preprocess(card, result, scan.geometry)
    model = as_model(model)
    feats = ScanFeatures.from_preprocess(result, scan.geometry, name, crop_radius_px=result.resolved.get("crop_half_px"))
    t1 = time.perf_counter()
    pred = predict_features(model, feats, cancel=cancel, progress=classify_progress)
    t2 = time.perf_counter()
    return ScanPrediction(name=name, class_map=pred.class_map, probabilities=pred.probabilities,
                          class_ids=pred.class_ids, integrated=result.virtual["total"],
                          timings={"preprocess_s": t1 - t0, "predict_s": t2 - t1}, source=scan.source,
                          geometry=scan.geometry, ria=result.ria, ria_radii_px=result.radii_px,
                          warnings=prediction_warnings(card, scan, result, name, class_map=pred.class_map),
                          preprocessing=preprocessing_record(result, scan.geometry))


def prediction_warnings(model, scan, result, name=None, *, class_map=None) -> list[str]:
    """What a user must know before trusting a class map that ``model`` (SedModel or card) made
    from ``result`` (the scan's PreprocessResult): calibration values nobody stated (the model
    was let through because they equal its training scans', which may be chance), and an
    amorphous-ice ring that lies away from where the scan's camera length puts it
    (``calibrate.q_axis_warning``: the q axis the model read is off), and a chip-edge pixel width
    given or read from the file that the frames contradict (``processing.plan.edge_width_warning``),
    and, given the ``class_map`` the model made, amorphous-ice frames that are not the frames
    showing the ice ring (``ice_agreement``: a session unlike the model's training scans), and
    recorded frames without a direct beam found, left unclassified, when there are many, and a
    camera length far from the training scans' for a model that reads each frame on its own
    (``models.persistence.camera_length_warning``)."""
    from ..geometry import FLAGS
    from ..models.persistence import camera_length_warning
    from ..processing.plan import edge_width_warning
    from .calibrate import preprocessed_q_axis_warning
    from .ice_agreement import agreement_warning, ice_agreement

    g = scan.geometry
    where = str(scan.source) if scan.source is not None else (name or "the scan")
    out = []
    assumed = g.assumed()
    if assumed:
        out.append(f"{where}: {g.values_text(assumed)} assumed "
                   f"(neither the file nor the command line gives {'it' if len(assumed) == 1 else 'them'}); model "
                   f"{model.name} reads the radial profiles on the q axis they set, so if they are not this scan's "
                   f"the classes are wrong: give {', '.join(FLAGS[n][0] for n in assumed)}"
                   + (" (`sedclassify calibrate` fits the camera length)" if "camera_length_mm" in assumed else ""))
    camera = camera_length_warning(model, g, where)
    if camera:
        out.append(camera)
    seen = result.resolved.get("edge_pixel_width_measured")
    if seen is not None:
        out.append(edge_width_warning(where, result.resolved))
    ring = preprocessed_q_axis_warning(result, g, where)
    if ring:  # the ring is not where the q axis puts it: the agreement check would read the wrong place
        out.append(ring)
    elif class_map is not None and result.ria is not None:
        disagree = agreement_warning(where, model.name,
                                     ice_agreement(class_map, model.classes, result.ria, result.radii_px, g))
        if disagree:
            out.append(disagree)
    no_beam = _no_beam_warning(where, result)
    if no_beam:
        out.append(no_beam)
    return out


#: A prediction says how many frames had no direct beam found (left as class 0) when more than
#: this fraction of its recorded frames had none.
NO_BEAM_FRACTION = 0.05


def _no_beam_warning(where, result) -> str | None:
    """The warning for a scan where more than NO_BEAM_FRACTION of the recorded frames had no direct
    beam found (nothing to centre their radial profiles on, so no class), None otherwise."""
    recorded = ~np.asarray(result.missing, bool)
    lost = int((recorded & ~np.asarray(result.beam_found, bool)).sum())
    total = int(recorded.sum())
    if not total or lost <= NO_BEAM_FRACTION * total:
        return None
    return (f"{where}: {lost} of {total} frames: no direct beam found; they are left unclassified (class 0). "
            "The beam may be blanked, behind a beam stop or off the detector in those frames, or too dim over "
            "the background to stand out (a very low dose); look at one in napari's frame view")


def params_for_model(model, geometry):
    """The one place where a model's preprocessing is set for a scan: the model's own parameters
    (centring, RIA bins, bad pixels...) with crops laid out for this detector when it reads crops,
    and the radial profile stopped where the model stops reading it on this detector
    (``train.preprocess_params_for``; a radius set for the scans it was trained on is replaced),
    or where the q axis check needs it (``calibrate.Q_AXIS_CHECK_Q_INVA``, the ice ring and the
    background beyond it), whichever is farther: the built-in model reads to 0.3 Å⁻¹, just past
    the ring, and its predictions could not be checked. ``model``: a SedModel or a model card
    (anything with ``.preprocess`` and ``.recipe``)."""
    from ..processing.params import default_ria_r_max_px
    from .calibrate import Q_AXIS_CHECK_Q_INVA

    own = {k: v for k, v in (model.preprocess or {}).items() if k not in ("crop_radius_px", "crop_d_A", "crop_bin")}
    params = preprocess_params_for([model.recipe], geometry, own)
    if params.ria_r_max_px is None or params.ria_q_max_invA is not None or not geometry.calibrated:
        return params
    check = float(geometry.q_invA_to_radius_px(Q_AXIS_CHECK_Q_INVA)) + 2 * params.ria_bin_px
    if check <= params.ria_r_max_px:
        return params
    return replace(params, ria_r_max_px=check if check < default_ria_r_max_px(geometry.detector_shape) else None)


def write_prediction(pred: ScanPrediction, out_dir, classes, keep=("amorphous_ice",)) -> dict:
    """Write into ``out_dir``, atomically: ``<name>_classes.npy`` and ``.tif`` (uint8 class map),
    ``<name>_probabilities.npy`` (sy, sx, k float32) with ``<name>_probabilities.json`` (the class
    ids and names of its last axis, and ``preprocessing``: how the frames were preprocessed,
    :class:`ScanPrediction`), ``<name>_overlay.png`` and ``<name>_keep.csv``, the keep-list
    of the classes in ``keep`` (names or ids; the format ``watch`` and the napari export write,
    ``pipeline.reduce.write_keep_list``); with frames marked uncertain
    (:func:`with_uncertain`) also ``<name>_uncertain.npy`` (bool (sy, sx), True = left out of the
    class map as uncertain); returns {kind: path}."""
    from ..io.atomic import atomic_path, write_npy, write_text
    from ..jsonutil import jsonable
    from ..models.metrics import plot_overlay

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / pred.name
    paths = {"class_map_npy": write_npy(f"{stem}_classes.npy", pred.class_map.astype(np.uint8)),
             "class_map_tif": Path(f"{stem}_classes.tif"),
             "probabilities": write_npy(f"{stem}_probabilities.npy", pred.probabilities.astype(np.float32))}
    # Pillow draws the overlay too (tifffile's import alone took 130 ms of the command); its TIFF
    # plugin imported by name, else saving a TIFF imports every image plugin Pillow has (60 ms)
    from PIL import Image, TiffImagePlugin  # noqa: F401

    with atomic_path(paths["class_map_tif"]) as tmp:
        Image.fromarray(np.ascontiguousarray(pred.class_map, dtype=np.uint8)).save(tmp, format="TIFF")
    paths["probabilities_classes"] = write_text(
        f"{stem}_probabilities.json",
        json.dumps(jsonable({"axis_2_class_ids": pred.class_ids,
                             "axis_2_class_names": [classes.names[i] for i in pred.class_ids],
                             "preprocessing": pred.preprocessing}), indent=2))
    counts = {classes.names[i]: int((pred.class_map == i).sum()) for i in pred.class_ids}
    plot_overlay(pred.integrated, pred.class_map, f"{stem}_overlay.png", classes,
                 title=f"{pred.name}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()))
    paths["overlay"] = Path(f"{stem}_overlay.png")
    from .reduce import class_ids, write_keep_list

    known = {str(i) for i in classes.ids} | set(classes.names.values())
    keep = [k for k in ([keep] if isinstance(keep, (str, int)) else keep) if str(k) in known or "," in str(k)]
    if keep:  # a model whose classes have none of them (a custom class table) gets no keep-list
        paths["keep_list"] = Path(f"{stem}_keep.csv")
        with np.errstate(invalid="ignore"):
            confidence = np.nan_to_num(np.nanmax(pred.probabilities, axis=-1, initial=0.0), nan=0.0)
        write_keep_list(paths["keep_list"], pred.class_map, confidence, class_ids(keep, classes), classes,
                        pred.geometry.scan_step_nm if pred.geometry is not None else None)
    if pred.uncertain is not None:
        paths["uncertain"] = write_npy(f"{stem}_uncertain.npy", np.asarray(pred.uncertain, dtype=bool))
    return {k: str(v) for k, v in paths.items()}


def predict_to_files(model, scans, out_dir, *, flatfield=None, progress=None, cancel=None,
                     scan_progress: Callable | None = None, classify_progress: Callable | None = None,
                     uncertain_below: float | None = None) -> list[dict]:
    """Predict every scan (paths or Scans) and write its outputs into ``out_dir``; returns one
    dict per scan: name, files, class counts, timings. progress(epoch-like scan index, logs)
    after each scan; scan_progress(i, n, done, total) while scan i of n is preprocessed, then
    classify_progress(i, n, done, total) while the model classifies its recorded frames.
    uncertain_below: mark frames whose most probable class is below this probability as
    uncertain (class 0 and ``<name>_uncertain.npy``, see :func:`with_uncertain`)."""
    model = loading(model)
    classes = card_of(model).classes
    scans = open_scans(list(scans))
    check_scans(card_of(model), scans)
    ffs = flatfields_for(flatfield, len(scans))
    out = []
    for i, (scan, ff) in enumerate(zip(scans, ffs)):
        pred = predict_scan(model, scan, flatfield=ff, progress=scan_report(scan_progress, i, len(scans)),
                            classify_progress=scan_report(classify_progress, i, len(scans)), cancel=cancel)
        pred = with_uncertain(pred, uncertain_below)
        out.append(prediction_entry(pred, write_prediction(pred, out_dir, classes), classes))
        if progress is not None:
            progress(i + 1, {"scan": pred.name, "max_epochs": len(scans)})
    return out

