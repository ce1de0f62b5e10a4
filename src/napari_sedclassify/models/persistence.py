"""Model files: one ``.sedmodel`` zip per trained model, written atomically, loaded without running stored code.

It holds ``model.json`` (format and version, kind, estimator parameters and classes, recipe,
preprocessing, class table, training geometry, training summary, metrics, library versions) and
the estimator in its own library's form: ``estimator.skops`` (FCNN, SVM: the scikit-learn
pipeline, loaded by skops with a reviewed list of trusted types; never pickle) or
``estimator.keras`` (CNN: loaded with ``safe_mode=True``, which refuses stored Python code); and
``estimator.npz``, the same estimator as plain arrays (see ``arrays``): what applying the model
reads, with numpy alone, no pickled objects. Importing this module imports neither scikit-learn
nor TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..classes import ClassTable
from ..errors import IncompatibleModelError, ModelFileError
from ..geometry import FLAGS, Q_FIELDS, Geometry, electron_wavelength_A, reach_px
from ..io.atomic import atomic_path
from ..jsonutil import jsonable
from .features import FeatureRecipe

FORMAT = "napari-sedclassify-model"
FORMAT_VERSION = 1
#: What reading a member of a damaged zip raises: a bad CRC, compressed data cut or altered.
DAMAGED_ZIP = (zipfile.BadZipFile, zlib.error, EOFError)

#: Types beyond skops' defaults (which cover scikit-learn estimators and numpy) that a model
#: file may contain. Reviewed: each is a plain scikit-learn state container whose loading runs
#: no user code: Adam/SGD optimiser state of MLPClassifier, the per-class sigmoid
#: calibrators of CalibratedClassifierCV (SVM) and its temperature scaling (FCNN: one float),
#: and the dict of named members of an ensemble's VotingClassifier (a ``dict`` subclass with
#: attribute access, restored from its items).
TRUSTED_TYPES = [
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.calibration._TemperatureScaling",
    "sklearn.utils._bunch.Bunch",
]


@dataclass
class SedModel:
    """A trained model: estimator + everything needed to apply it again the same way.

    kind: "fcnn", "svm" or "cnn". estimator: fitted, scikit-learn contract. recipe: how the
    features are made. preprocess: PreprocessParams as a dict. classes: class table. geometry:
    of the training scans. training: summary. metrics: evaluation results. versions: library
    versions at training time. source: the file it was loaded from. domain: the model card's
    training domain (the built-in model's voltage, radial sampling, detector sizes, calibration
    origins), outside which :meth:`check_geometry` refuses scans; empty for users' models.
    """

    kind: str
    estimator: object
    recipe: FeatureRecipe
    preprocess: dict
    classes: ClassTable
    geometry: Geometry
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    source: str | None = None
    domain: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.source and (is_builtin(self.source) or Path(self.source) == builtin_model_path()):
            return f"'{BUILTIN}' (the built-in model)"
        return self.source or f"(unsaved {self.kind} model)"

    def predict_proba(self, X) -> np.ndarray:
        return self.estimator.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        return self.estimator.predict(X)

    def check_geometry(self, geometry: Geometry, scan_name: str = "the scan") -> None:
        """Raise :class:`IncompatibleModelError` when the recipe cannot run on ``geometry``."""
        problems = _domain_problems(self.domain, geometry) or _geometry_problems(self.recipe, self.geometry, geometry)
        if problems:
            message = "; ".join(problems)
            raise IncompatibleModelError(f"model {self.name} cannot be applied to {scan_name}: {message}"
                                         + _in_python(message))


def check_calibration(model: SedModel, geometry: Geometry, scan_name: str = "the scan") -> None:
    """The refusals of :meth:`SedModel.check_geometry` that the calibration values alone decide (the
    model card's voltage, radial sampling and the origins it accepts; a q axis or crop in Å that
    needs the camera length and voltage), whatever ``geometry``'s detector shape: a live run says
    them before the detector is armed, before its first frame gives the detector shape. Raises
    :class:`IncompatibleModelError` with the wording of ``check_geometry``."""
    domain = {k: v for k, v in model.domain.items() if k != "detector_px"}
    problems = _domain_problems(domain, geometry) or _calibration_problems(model.recipe, geometry)
    if problems:
        message = "; ".join(problems)
        raise IncompatibleModelError(f"model {model.name} cannot be applied to {scan_name}: {message}"
                                     + _in_python(message))


#: Largest factors by which the scan's camera length (λL: the voltage counts too) may be shorter
#: (CAMERA_LENGTH_FACTOR_MAX) or longer (CAMERA_LENGTH_LONGER_MAX) than the training scans' for a
#: model that reads each frame on its own to be applied without a warning. What the detector adds to
#: every frame (the direct beam's disc, halo and point spread, the stray counts) is fixed in detector
#: µm, so in q it spans 1/(λL). Simulated scans (SVM/FCNN, docs/results.md, session 25): 1.5x shorter
#: lost 0.02 accuracy, 2.25x shorter 0.27, 4.5x shorter 0.87 (512 px); longer costs more sooner:
#: 1.17x longer 0.02-0.03, 1.33x 0.06, 1.5x 0.15-0.28 (128 and 512 px).
CAMERA_LENGTH_FACTOR_MAX = 1.4
CAMERA_LENGTH_LONGER_MAX = 1.25


def camera_length_warning(model: SedModel, geometry: Geometry, where: str = "the scan") -> str | None:
    """The warning for a scan recorded at a camera length (λL) more than
    :data:`CAMERA_LENGTH_FACTOR_MAX` times shorter or :data:`CAMERA_LENGTH_LONGER_MAX` times longer than the range of ``model``'s training
    scans (:func:`training_optics`), for a model that reads each frame on its own; None when within
    it, when either camera length is unknown, or for a model that reads every frame against its
    scan's own frames (``scan_context``, ``crop_context``), which cancels what the detector adds."""
    recipe, optics = model.recipe, training_optics(model)
    if recipe.scan_context or recipe.crop_context != "none" or not (optics and geometry.calibrated):
        return None
    here = geometry.wavelength_A * geometry.camera_length_mm
    lo, hi = _span(electron_wavelength_A(kv) * mm for mm, kv in optics)
    factor = lo / here if here < lo else hi / here if here > hi else 1.0
    if factor <= CAMERA_LENGTH_FACTOR_MAX and 1 / factor <= CAMERA_LENGTH_LONGER_MAX:
        return None
    how = f"{factor:.1f}x shorter" if factor > 1 else f"{1 / factor:.1f}x longer"
    return (f"{where}: recorded at a camera length of {_rounded(geometry.camera_length_mm):g} mm ({geometry.voltage_kv:g} kV), "
            f"{how} than the training scans of model {model.name} ({_optics_text(optics)}): what the detector adds "
            f"to every frame (the direct beam's disc, halo and point spread, the stray counts) is fixed in detector "
            f"µm, so here it spans {max(factor, 1 / factor):.1f}x {'more' if factor > 1 else 'less'} q than in "
            f"training and moves what the model reads "
            f"out of the range it learned, and its class map can be wrong. Train a model on labeled scans recorded "
            f"at this camera length, or one with `train --session-robust`, which reads every frame against its "
            f"scan's own frames")


def training_optics(model: SedModel) -> list[tuple[float, float]]:
    """(camera length mm, voltage kV) of every training scan of ``model`` whose card lists them
    (``training["scans"]``, since session 25); of the card's geometry, the first training scan's,
    for model files written before; [] when unknown."""
    scans = (model.training or {}).get("scans") or []
    optics = [(float(s["camera_length_mm"]), float(s["voltage_kv"])) for s in scans
              if s.get("role") == "train" and s.get("camera_length_mm") and s.get("voltage_kv")]
    if optics or not model.geometry.calibrated:
        return optics
    return [(float(model.geometry.camera_length_mm), float(model.geometry.voltage_kv))]


def _span(values) -> tuple[float, float]:
    values = list(values)
    return min(values), max(values)


def _rounded(value: float) -> float:
    """``value`` to 4 significant digits: a fitted camera length of 915.1334793 mm reads 915.1 mm."""
    return float(f"{value:.4g}")


def _optics_text(optics) -> str:
    """"600-900 mm, 200 kV" for the (camera length mm, voltage kV) pairs ``optics``."""
    out = []
    for values, unit in (([mm for mm, _ in optics], "mm"), ([kv for _, kv in optics], "kV")):
        lo, hi = (_rounded(v) for v in _span(values))
        out.append(f"{lo:g} {unit}" if lo == hi else f"{lo:g}-{hi:g} {unit}")
    return ", ".join(out)


#: The name that stands for the model shipped inside the package (``sedclassify predict builtin``).
BUILTIN = "builtin"


def builtin_model_path() -> Path:
    """The built-in model's file inside the package (``scripts/train_builtin.py`` writes it)."""
    return Path(__file__).resolve().parent / "data" / "builtin.sedmodel"


def is_builtin(name) -> bool:
    """True for the name of the built-in model ("builtin", any case)."""
    return isinstance(name, str) and name.strip().lower() == BUILTIN


def resolve_model_path(path) -> Path:
    """The file of a model name: "builtin" is the built-in model's file, anything else a path."""
    return builtin_model_path() if is_builtin(path) else Path(path)


def _domain_problems(domain: dict, scan: Geometry) -> list[str]:
    """Why ``scan`` lies outside a model card's training ``domain`` (empty when inside or when the
    model states no domain): calibration values that were assumed, or not from an accepted origin,
    a voltage or radial sampling (λL/p, px per Å⁻¹) or detector size it was not trained on."""
    if not domain:
        return []
    out = []
    origins = domain.get("calibration_origins")
    for name, label in (("camera_length_mm", "camera length"), ("voltage_kv", "voltage"),
                        ("pixel_size_um", "pixel size")):
        origin = scan.origin(name)
        if origin in ("assumed", "unknown") or (origins and origin not in origins):
            out.append(f"the scan's {label} is {origin} ({getattr(scan, name)}); this model only reads scans whose "
                       f"{label} is known: give it ({_flag(name)})"
                       + (" or fit it with `sedclassify calibrate`" if name == "camera_length_mm" else ""))
    if out:
        return out
    lo, hi = domain.get("voltage_kv", (None, None))
    if lo is not None and not (lo - 1.0 <= scan.voltage_kv <= hi + 1.0):
        out.append(f"the scan was recorded at {scan.voltage_kv:g} kV but the model was trained on "
                   f"{lo:g}{'' if lo == hi else f'-{hi:g}'} kV data only")
    lo, hi = domain.get("lambda_L_over_p_px_A", (None, None))
    if lo is not None and not lo <= scan.lambda_L_over_p <= hi:
        out.append(f"the radial sampling λL/p of this scan is {scan.lambda_L_over_p:.0f} px·Å (px per Å⁻¹), "
                   f"outside the {lo:g}-{hi:g} px·Å the model was trained on (camera length, pixel size and "
                   "voltage set it)")
    lo, hi = domain.get("detector_px", (None, None))
    if lo is not None and not lo <= min(scan.detector_shape) <= max(scan.detector_shape) <= hi:
        out.append(f"the detector has {_px(scan)} px, outside the {lo}-{hi} px the model was trained on")
    if out:
        out[-1] += "; train a model on labeled scans of this session instead (sedclassify train)"
    return out


def _flag(name: str) -> str:
    """The command line flag that sets a calibration value, with its unit: "--pixel-size UM"."""
    return f"{FLAGS[name][0]} {FLAGS[name][1].replace('µ', 'U').upper()}"


def _in_python(message: str) -> str:
    """The Python form of the command line flags ``message`` names: " (in Python: open_scan(path,
    geometry={"camera_length_mm": ...}))", "" when it names none."""
    named = [n for n in Q_FIELDS if FLAGS[n][0] in message]
    if not named:
        return ""
    return " (in Python: open_scan(path, geometry={" + ", ".join(f'"{n}": ...' for n in named) + "}))"


def _px(g: Geometry) -> str:
    return f"{g.detector_shape[0]}x{g.detector_shape[1]}"


def _same_optics(a: Geometry, b: Geometry) -> list[str]:
    out = []
    if tuple(a.detector_shape) != tuple(b.detector_shape):
        out.append(f"detector {_px(b)} px, model trained on {_px(a)} px")
    if abs(a.pixel_size_um - b.pixel_size_um) > 1e-6 * a.pixel_size_um:
        out.append(f"pixel size {b.pixel_size_um} µm, model trained with {a.pixel_size_um} µm")
    if a.camera_length_mm and b.camera_length_mm and abs(b.camera_length_mm / a.camera_length_mm - 1) > 0.01:
        out.append(f"camera length {b.camera_length_mm} mm, model trained at {a.camera_length_mm} mm")
    return out


def assumed_problems(trained: Geometry, scan: Geometry, what: str = "the model's training scans had") -> list[str]:
    """Why ``scan``'s q axis cannot be matched to ``trained``'s when values were assumed: an
    assumed value (a default nobody stated) must equal the other side's, and an assumed pixel size
    only holds for the same detector size. Empty when they can be matched."""
    bad = []
    for name in Q_FIELDS:
        if "assumed" not in (trained.origin(name), scan.origin(name)):
            continue
        a, b = getattr(trained, name), getattr(scan, name)
        differ = a is None or b is None or abs(a - b) > 1e-6 * abs(a)
        if name == "pixel_size_um":
            differ = differ or tuple(trained.detector_shape) != tuple(scan.detector_shape)
        if differ:
            bad.append(name)
    if not bad:
        return []
    return [f"the q axes cannot be matched: this scan has {_geometry_text(scan)} on a {_px(scan)} px detector, "
            f"{what} {_geometry_text(trained)} on {_px(trained)} px; values marked assumed were not in the files. "
            f"Give the true values ({', '.join(_flag(n) for n in bad)}) when training and here"
            + ("; the camera length can be fitted with `sedclassify calibrate`" if "camera_length_mm" in bad else "")]


def _geometry_text(g: Geometry) -> str:
    labels = {"pixel_size_um": "pixel", "camera_length_mm": "camera length", "voltage_kv": "voltage"}
    return ", ".join(f"{labels[n]} {getattr(g, n):g} {FLAGS[n][1]} ({g.origin(n)})" for n in Q_FIELDS
                     if getattr(g, n) is not None)


def _geometry_problems(recipe: FeatureRecipe, trained: Geometry, scan: Geometry) -> list[str]:
    assumed = assumed_problems(trained, scan)
    if assumed:
        return assumed
    uncalibrated = _calibration_problems(recipe, scan)
    if uncalibrated:
        return uncalibrated
    reach = reach_px(scan.detector_shape)
    if recipe.kind == "ria" and recipe.axis == "q":
        need = scan.q_invA_to_radius_px(recipe.q_max_invA)
        if need > 1.02 * reach:
            return [f"the model needs q up to {recipe.q_max_invA} Å⁻¹, {need:.0f} px from the centre on this "
                    f"detector, but the detector reaches {reach:.0f} px ({scan.radius_px_to_q_invA(reach):.3f} Å⁻¹ "
                    f"with {_geometry_text(scan)}); if a value is wrong, set it "
                    f"({', '.join(FLAGS[n][0] for n in Q_FIELDS)}); if they are right, train the model with a scan "
                    "of this detector among its training scans (a model reads q only as far as every training "
                    "scan's detector reaches)"]
        return []
    if recipe.kind == "ria" or recipe.crop_radius_px is not None:  # on the px axis
        return _same_optics(trained, scan)
    d_trained = trained.radius_px_to_d_A(recipe.crop_layout(trained)[0])
    d_scan = scan.radius_px_to_d_A(recipe.crop_layout(scan)[0])
    if abs(d_scan / d_trained - 1) > 0.05:
        return [_crop_problem(recipe, trained, scan, d_trained, d_scan)]
    return []


def _calibration_problems(recipe: FeatureRecipe, scan: Geometry) -> list[str]:
    """The recipe reads q (Å⁻¹) or crops in Å, and ``scan``'s camera length or voltage is unknown."""
    if scan.calibrated:
        return []
    if recipe.kind == "ria" and recipe.axis == "q":
        return ["the model's RIA axis is q (Å⁻¹) but the scan's camera length or voltage is unknown"]
    if recipe.kind != "ria" and recipe.crop_radius_px is None:
        return [f"the model's crop is set as {recipe.crop_radius_A} Å but the scan's camera length or voltage is "
                "unknown"]
    return []


def _crop_problem(recipe: FeatureRecipe, trained: Geometry, scan: Geometry, d_trained: float, d_scan: float) -> str:
    """Why a CNN's crops (reaching ``d_trained`` Å) cannot be cut from ``scan``'s frames (reaching
    ``d_scan`` Å), and what to change."""
    text = (f"the model's crops reach {d_trained:.2f} Å but on this detector ({_px(scan)} px, {_geometry_text(scan)}) "
            f"they reach {d_scan:.2f} Å")
    if d_scan > d_trained:  # this detector's frame is too small for the model's crop
        widest = math.ceil(recipe.widest_crop_d_A(scan) * 10) / 10
        return (text + f" at most; if a value is wrong, set it ({', '.join(FLAGS[n][0] for n in Q_FIELDS)}); if they "
                f"are right, train the CNN with crops this detector holds (--crop-radius-A {widest:g} or more)")
    widest = math.ceil(recipe.widest_crop_d_A(trained) * 10) / 10
    return (text + f": the model's training detector ({_px(trained)} px) cut its crops short; if a value is wrong, set "
            f"it ({', '.join(FLAGS[n][0] for n in Q_FIELDS)}); if they are right, train the CNN with "
            f"--crop-radius-A {widest:g} or more")


def library_versions(kind: str) -> dict:
    """Versions of the libraries a model of ``kind`` depends on."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    out = {"napari-sedclassify": __version__, "python": platform.python_version(), "numpy": np.__version__}
    names = ["scikit-learn", "skops"] + (["keras", "tensorflow", "tensorflow-cpu"] if kind == "cnn" else [])
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def save_model(model: SedModel, path) -> Path:
    """Write ``model`` to ``path`` (a ``.sedmodel`` zip) atomically; returns the path."""
    path = Path(path)
    est = model.estimator
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "estimator": {"params": jsonable(est.get_params()), "classes": jsonable(est.classes_)},
        "recipe": model.recipe.to_dict(),
        "preprocess": jsonable(model.preprocess),
        "classes": model.classes.to_dict(),
        "geometry": model.geometry.to_dict(),
        "training": jsonable(model.training),
        "metrics": jsonable(model.metrics),
        "versions": model.versions or library_versions(model.kind),
    }
    if model.domain:
        meta["domain"] = jsonable(model.domain)
    native_bytes, description, arrays = _estimator_forms(model.kind, est)
    if description is not None:
        meta["estimator"]["arrays"] = description
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.json", json.dumps(meta, indent=2))
        zf.writestr(native_member(model.kind), native_bytes)
        if arrays is not None:
            zf.writestr("estimator.npz", arrays)
    return path


def needs_tensorflow(meta: dict) -> bool:
    """Whether applying the model of this ``model.json`` needs TensorFlow: a CNN without arrays
    (a file written before them, or one whose network the arrays cannot hold)."""
    return meta.get("kind") == "cnn" and "arrays" not in meta.get("estimator", {})


def native_member(kind: str) -> str:
    """The member of a model file holding the estimator in its own library's form."""
    return "estimator.keras" if kind == "cnn" else "estimator.skops"


def _native_bytes(kind: str, est) -> bytes:
    if kind == "cnn":
        with tempfile.TemporaryDirectory() as d:
            keras_path = Path(d) / "estimator.keras"
            est.model_.save(keras_path)
            return keras_path.read_bytes()
    import skops.io as sio

    return sio.dumps(est.pipeline_)


def _estimator_forms(kind: str, est) -> tuple[bytes, dict | None, bytes | None]:
    """(native bytes: skops or Keras, arrays description, npz bytes) of a fitted estimator, or of
    one loaded from a file; the arrays only where they give the estimator's own probabilities on
    probe inputs (to :data:`arrays.AGREEMENT_ATOL`; networks :data:`arrays.NETWORK_AGREEMENT_ATOL`),
    else (bytes, None, None): the file is then applied through scikit-learn or Keras."""
    from . import arrays as arr
    from . import arrays_export as export

    if isinstance(est, arr.ArrayClassifier):
        return est.native_bytes, est.pipeline.description, arr.to_bytes(est.pipeline.arrays)
    data = _native_bytes(kind, est)
    try:
        if kind == "cnn":
            description, arrays = export.keras_to_arrays(est.model_)
            probe = export.probe_crops(description, arrays, est.model_.input_shape[1:])
            atol = arr.NETWORK_AGREEMENT_ATOL
        else:
            description, arrays = export.to_arrays(est.pipeline_)
            probe = export.probe_inputs(description, arrays)
            atol = arr.AGREEMENT_ATOL
        expected = est.predict_proba(probe)
        got = arr.ArrayPipeline(description, arrays).predict_proba(probe)
    except arr.UnsupportedEstimator:
        return data, None, None
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=0.0, atol=atol):
        return data, None, None
    return data, description, arr.to_bytes(arrays)


def read_metadata(path) -> dict:
    """The ``model.json`` of a model file (no estimator loaded, nothing heavy imported); "builtin"
    reads the built-in model's."""
    path = resolve_model_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    if path.is_dir():
        raise ModelFileError(f"{path}: a folder, not a model file (.sedmodel)")
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("model.json"))
    except (*DAMAGED_ZIP, KeyError, ValueError) as exc:  # ValueError: not JSON, not UTF-8
        raise ModelFileError(f"{path}: not a napari-sedclassify model file, or a damaged one ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelFileError(f"{path}: not a napari-sedclassify model file (format {found!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: model format version {meta['format_version']} is newer than this "
                             f"napari-sedclassify reads ({FORMAT_VERSION}); update napari-sedclassify")
    _check_card(meta, path)
    return meta


#: The entries of a model file's model.json that applying it reads, and their JSON types.
CARD_ENTRIES = {"kind": str, "estimator": dict, "recipe": dict, "classes": dict, "geometry": dict}


def _check_card(meta: dict, path: Path) -> None:
    """Raise :class:`ModelFileError` naming ``path`` when its model.json lacks an entry applying the
    model reads, holds one of another type, or names a model kind this version does not know."""
    from . import MODEL_KINDS

    bad = [k for k, t in CARD_ENTRIES.items() if not isinstance(meta.get(k), t)]
    if bad:
        raise ModelFileError(f"{path}: damaged model file: model.json has no valid {', '.join(bad)}")
    if meta["kind"] not in MODEL_KINDS:
        raise ModelFileError(f"{path}: damaged model file: unknown model kind {meta['kind']!r} (this version "
                             f"reads {', '.join(MODEL_KINDS)})")


def model_from_metadata(meta: dict, path, estimator=None) -> SedModel:
    """A SedModel from a model file's metadata; estimator None gives a description only (no
    TensorFlow or scikit-learn is imported): kind, recipe, preprocessing, classes, geometry, metrics.
    Raises :class:`ModelFileError` naming ``path`` when an entry cannot be read."""
    try:
        return _model_from_metadata(meta, path, estimator)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a damaged or hand-edited model.json
        raise ModelFileError(f"{path}: damaged model file: model.json cannot be read "
                             f"({type(exc).__name__}: {exc})") from exc


def _model_from_metadata(meta: dict, path, estimator) -> SedModel:
    return SedModel(kind=meta["kind"], estimator=estimator, recipe=FeatureRecipe.from_dict(meta["recipe"]),
                    classes=ClassTable.from_dict(meta["classes"]), geometry=Geometry.from_dict(meta["geometry"]),
                    source=str(path),
                    **{k: meta.get(k, {}) for k in ("preprocess", "training", "metrics", "versions", "domain")})


def _load_skops(path: Path, data: bytes):
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # a damaged archive inside the archive
        raise ModelFileError(f"{path}: the estimator in the model file cannot be read ({exc})") from exc
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise ModelFileError(f"{path}: refused to load: the estimator contains types that are not on the reviewed "
                             f"trusted list: {', '.join(refused)}")
    return sio.loads(data, trusted=[t for t in untrusted if t in TRUSTED_TYPES])


def _load_arrays(path: Path, meta: dict):
    from .arrays import ArrayClassifier, ArrayPipeline, from_bytes

    try:
        with zipfile.ZipFile(path) as zf:
            missing = {"estimator.npz", native_member(meta["kind"])} - set(zf.namelist())
            if missing:
                raise ModelFileError(f"{path}: the model file has no {', '.join(sorted(missing))}")
            arrays = from_bytes(zf.read("estimator.npz"))
            native_bytes = zf.read(native_member(meta["kind"]))
    except ModelFileError:
        raise
    except (ValueError, OSError, *DAMAGED_ZIP) as exc:  # not an npz, one holding pickled objects, a damaged zip
        raise ModelFileError(f"{path}: the estimator's arrays in the model file cannot be read ({exc})") from exc
    est = meta["estimator"]
    try:
        pipeline = ArrayPipeline(est["arrays"], arrays)
    except (TypeError, KeyError) as exc:  # UnsupportedEstimator is a TypeError
        raise ModelFileError(f"{path}: the estimator's arrays in the model file cannot be applied ({exc})") from exc
    return ArrayClassifier(meta["kind"], est["params"], est["classes"], pipeline, native_bytes)


def _load_keras(path: Path, data: bytes):
    from .cnn import import_keras

    keras = import_keras()
    with tempfile.TemporaryDirectory() as d:
        keras_path = Path(d) / "estimator.keras"
        keras_path.write_bytes(data)
        try:
            return keras.saving.load_model(keras_path, safe_mode=True, compile=False)
        except Exception as exc:
            raise ModelFileError(f"{path}: the Keras network in the model file was refused or cannot be read "
                                 f"in safe mode ({exc})") from exc


def load_model(path, *, native: bool = False) -> SedModel:
    """Read a model file written by :func:`save_model` ("builtin": the built-in model); raises
    :class:`ModelFileError` for anything else or content outside the trusted list.

    A file with arrays (``estimator.npz``) gives an :class:`~.arrays.ArrayClassifier` (applied
    with numpy: nothing of scikit-learn, skops or TensorFlow imported); ``native=True``, or a file
    without them, gives the estimator in its own library's form: scikit-learn's pipeline loaded by
    skops, or the Keras network loaded in safe mode."""
    path = resolve_model_path(path)
    meta = read_metadata(path)
    kind = meta["kind"]
    if not native and "arrays" in meta["estimator"]:
        return model_from_metadata(meta, path, _load_arrays(path, meta))
    from . import make_estimator

    params = dict(meta["estimator"]["params"])
    if isinstance(params.get("class_weight"), dict):
        params["class_weight"] = {int(k): v for k, v in params["class_weight"].items()}
    if "filters" in params:
        params["filters"] = tuple(params["filters"])
    estimator = make_estimator(kind, **params)
    estimator.classes_ = np.asarray(meta["estimator"]["classes"])
    member = native_member(kind)
    try:
        with zipfile.ZipFile(path) as zf:
            data = zf.read(member)
    except KeyError as exc:
        raise ModelFileError(f"{path}: the model file has no {member}") from exc
    except DAMAGED_ZIP as exc:
        raise ModelFileError(f"{path}: damaged model file: {member} cannot be read ({exc})") from exc
    if kind == "cnn":
        estimator.model_ = _load_keras(path, data)
    else:
        estimator.pipeline_ = _load_skops(path, data)
    return model_from_metadata(meta, path, estimator)
