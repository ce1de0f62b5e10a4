"""Model files: one ``.sedmodel`` file per trained model, loaded without running stored code.

A model file is a zip archive holding

- ``model.json``: format name and version, model kind, estimator parameters and classes, the
  feature recipe, the preprocessing parameters, the class table (names, colours), the detector
  geometry of the training scans, the training summary, the metrics and the library versions;
- ``estimator.skops`` (FCNN, SVM: the fitted scikit-learn pipeline, written by skops and loaded
  with an explicit, reviewed list of trusted types; never pickle) or ``estimator.keras``
  (CNN: a Keras 3 file loaded with ``safe_mode=True``, which refuses stored Python code such
  as Lambda layers).

Files are written atomically (a temporary file in the same folder, then ``os.replace``), so
an interrupted save never leaves a half-written model. Importing this module imports neither
scikit-learn nor TensorFlow.
"""

from __future__ import annotations

import json
import platform
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..classes import ClassTable
from ..geometry import Geometry
from ._atomic import atomic_path
from .features import FeatureRecipe

FORMAT = "napari-sedclassify-model"
FORMAT_VERSION = 1
SUFFIX = ".sedmodel"

#: Types beyond skops' defaults (which cover scikit-learn estimators and numpy) that a model
#: file may contain. Reviewed: each is a plain scikit-learn state container whose loading runs
#: no user code: Adam/SGD optimiser state of MLPClassifier, and the per-class sigmoid
#: calibrators of CalibratedClassifierCV.
TRUSTED_TYPES = [
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
]


class ModelFileError(ValueError):
    """A model file that cannot be read or is refused (unknown format, untrusted content)."""


class IncompatibleModelError(ValueError):
    """A model applied to a scan (or features) it was not made for; the message says why."""


@dataclass
class SedModel:
    """A trained model: estimator + everything needed to apply it again the same way.

    kind: "fcnn", "svm" or "cnn". estimator: fitted, scikit-learn contract. recipe: how the
    features are made. preprocess: PreprocessParams as a dict (centring, RIA bins...).
    classes: class table. geometry: detector geometry of the training scans. training: summary
    (scans, counts, split, seed, history, time). metrics: evaluation results. versions:
    library versions at training time. source: the file it was loaded from.
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

    @property
    def name(self) -> str:
        return self.source or f"(unsaved {self.kind} model)"

    def predict_proba(self, X) -> np.ndarray:
        return self.estimator.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        return self.estimator.predict(X)

    def check_geometry(self, geometry: Geometry, scan_name: str = "the scan") -> None:
        """Raise :class:`IncompatibleModelError` when the recipe cannot run on ``geometry``."""
        problems = _geometry_problems(self.recipe, self.geometry, geometry)
        if problems:
            raise IncompatibleModelError(
                f"model {self.name} cannot be applied to {scan_name}: " + "; ".join(problems)
            )


def _same_optics(a: Geometry, b: Geometry) -> list[str]:
    out = []
    if tuple(a.detector_shape) != tuple(b.detector_shape):
        out.append(f"detector {b.detector_shape[0]}x{b.detector_shape[1]} px, model trained on "
                   f"{a.detector_shape[0]}x{a.detector_shape[1]} px")
    if abs(a.pixel_size_um - b.pixel_size_um) > 1e-6 * a.pixel_size_um:
        out.append(f"pixel size {b.pixel_size_um} µm, model trained with {a.pixel_size_um} µm")
    if a.camera_length_mm and b.camera_length_mm and abs(b.camera_length_mm / a.camera_length_mm - 1) > 0.01:
        out.append(f"camera length {b.camera_length_mm} mm, model trained at {a.camera_length_mm} mm")
    return out


def _geometry_problems(recipe: FeatureRecipe, trained: Geometry, scan: Geometry) -> list[str]:
    reach = min(scan.detector_shape) / 2
    if recipe.kind == "ria" and recipe.axis == "q":
        if not scan.calibrated:
            return ["the model's RIA axis is q (Å⁻¹) but the scan's camera length or voltage is unknown"]
        need = scan.q_invA_to_radius_px(recipe.q_max_invA)
        if need > 1.05 * reach:
            return [f"the model needs q up to {recipe.q_max_invA} Å⁻¹, {need:.0f} px from the centre on this "
                    f"detector, but the detector reaches {reach:.0f} px"]
        return []
    if recipe.kind == "ria":
        return _same_optics(trained, scan)
    if recipe.crop_radius_px is not None:
        return _same_optics(trained, scan)
    if not scan.calibrated:
        return [f"the model's crop is set as {recipe.crop_radius_A} Å but the scan's camera length or voltage is "
                "unknown"]
    d_trained = trained.radius_px_to_d_A(recipe.crop_layout(trained)[0])
    d_scan = scan.radius_px_to_d_A(recipe.crop_layout(scan)[0])
    if abs(d_scan / d_trained - 1) > 0.05:
        return [f"the crop reaches {d_scan:.2f} Å on this detector but the model was trained on crops reaching "
                f"{d_trained:.2f} Å"]
    return []


def library_versions(kind: str) -> dict:
    """Versions of the libraries a model of ``kind`` depends on."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    out = {"napari-sedclassify": __version__, "python": platform.python_version(), "numpy": np.__version__}
    names = ["scikit-learn", "skops"] + (["keras", "tensorflow", "tensorflow-cpu"] if kind == "cnn" else [])
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def save_model(model: SedModel, path) -> Path:
    """Write ``model`` to ``path`` (a ``.sedmodel`` zip) atomically; returns the path."""
    path = Path(path)
    est = model.estimator
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "estimator": {"params": _jsonable(est.get_params()), "classes": _jsonable(est.classes_)},
        "recipe": model.recipe.to_dict(),
        "preprocess": _jsonable(model.preprocess),
        "classes": model.classes.to_dict(),
        "geometry": model.geometry.to_dict(),
        "training": _jsonable(model.training),
        "metrics": _jsonable(model.metrics),
        "versions": model.versions or library_versions(model.kind),
    }
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.json", json.dumps(meta, indent=2))
        if model.kind == "cnn":
            with tempfile.TemporaryDirectory() as d:
                keras_path = Path(d) / "estimator.keras"
                est.model_.save(keras_path)
                zf.write(keras_path, "estimator.keras")
        else:
            import skops.io as sio

            zf.writestr("estimator.skops", sio.dumps(est.pipeline_))
    return path


def read_metadata(path) -> dict:
    """The ``model.json`` of a model file (no estimator loaded, nothing heavy imported)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("model.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not a napari-sedclassify model file ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a napari-sedclassify model file (format {meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: model format version {meta['format_version']} is newer than this "
                             f"napari-sedclassify reads ({FORMAT_VERSION}); update napari-sedclassify")
    return meta


def model_from_metadata(meta: dict, path, estimator=None) -> SedModel:
    """A SedModel from a model file's metadata; estimator None gives a description only (no
    TensorFlow or scikit-learn is imported): kind, recipe, preprocessing, classes, geometry, metrics."""
    return SedModel(
        kind=meta["kind"],
        estimator=estimator,
        recipe=FeatureRecipe.from_dict(meta["recipe"]),
        preprocess=meta.get("preprocess", {}),
        classes=ClassTable.from_dict(meta["classes"]),
        geometry=Geometry.from_dict(meta["geometry"]),
        training=meta.get("training", {}),
        metrics=meta.get("metrics", {}),
        versions=meta.get("versions", {}),
        source=str(path),
    )


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


def load_model(path) -> SedModel:
    """Read a model file written by :func:`save_model`; raises :class:`ModelFileError` when the
    file is not a model file or holds content outside the trusted list."""
    from . import make_estimator

    path = Path(path)
    meta = read_metadata(path)
    kind = meta["kind"]
    params = dict(meta["estimator"]["params"])
    if isinstance(params.get("class_weight"), dict):
        params["class_weight"] = {int(k): v for k, v in params["class_weight"].items()}
    if "filters" in params:
        params["filters"] = tuple(params["filters"])
    estimator = make_estimator(kind, **params)
    estimator.classes_ = np.asarray(meta["estimator"]["classes"])
    member = "estimator.keras" if kind == "cnn" else "estimator.skops"
    try:
        with zipfile.ZipFile(path) as zf:
            data = zf.read(member)
    except KeyError as exc:
        raise ModelFileError(f"{path}: the model file has no {member}") from exc
    if kind == "cnn":
        estimator.model_ = _load_keras(path, data)
    else:
        estimator.pipeline_ = _load_skops(path, data)
    return model_from_metadata(meta, path, estimator)
