"""Training widget: labeled scans (open layers or files) -> a trained model, with live loss
curves, the validation metrics and confusion matrix, and a model file to save.

Every model trains in a spawned child process (see ``_napari/model_jobs.py``): TensorFlow must
not load next to napari's OpenGL canvas, and scikit-learn's training would hold the interpreter
lock of the viewer's process for long stretches. Progress (loss curves) and Cancel cross over.
"""

from __future__ import annotations

from functools import partial

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    PushButton,
    Select,
    SpinBox,
)
from napari.utils.notifications import show_error, show_warning

from ..jobs import BackgroundJob, JobButtons, short_message, wrapped_label
from ..layers import find_scan, scan_layers
from ..model_jobs import features_for, prepare, run, train_features_to_file
from ..plots import FigureView, form, insert_before
from ..state import labels_layers_for, preprocess_of, session_of

MODEL_CHOICES = [("FCNN on RIAs", "fcnn"), ("SVM on RIAs", "svm"), ("CNN on central crops", "cnn")]


@dataclass
class LabeledScan:
    """One training scan: its name, Scan, class map, flat-field and (when open) its layer."""

    name: str
    scan: object
    class_map: np.ndarray
    flatfield: object = None
    layer: object = None


def check_classes(data) -> None:
    """Raise ValueError (one line, with the fix) unless the class maps of the LabeledScans ``data``
    hold at least two classes between them (0 = unlabeled): training needs two."""
    from ...classes import ClassTable

    ids = set()
    for item in data:
        ids.update(int(v) for v in np.unique(np.asarray(item.class_map)) if v > 0)
    if not ids:
        raise ValueError("no point of the chosen scans is labeled (the labels layer is all 0): "
                         "label at least two classes (e.g. carbon and amorphous ice) to train a model")
    if len(ids) < 2:
        (only,) = ids
        name = ClassTable.default().names.get(only, f"class {only}").replace("_", " ")
        raise ValueError(f"the labels of the chosen scans hold one class only ({name}); "
                         "label at least two classes to train a model")


def metrics_html(metrics: dict) -> str:
    """Per-class precision / recall / F1 / Jaccard and support as an HTML table."""
    head = "<tr><th align=left>class</th><th>precision</th><th>recall</th><th>F1</th><th>Jaccard</th><th>n</th></tr>"
    rows = []
    for name, m in metrics["per_class"].items():
        if not m["support"]:
            continue
        rows.append(
            f"<tr><td>{name.replace('_', ' ')}</td><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>"
            f"<td>{m['f1']:.3f}</td><td>{m['jaccard']:.3f}</td><td>{m['support']}</td></tr>"
        )
    w = metrics["weighted"]
    rows.append(
        f"<tr><td><b>weighted</b></td><td>{w['precision']:.3f}</td><td>{w['recall']:.3f}</td>"
        f"<td><b>{w['f1']:.3f}</b></td><td>{w['jaccard']:.3f}</td><td>{metrics['n']}</td></tr>"
    )
    return f"<table cellspacing=4>{head}{''.join(rows)}</table>accuracy {metrics['accuracy']:.3f}"


class TrainingWidget(Container):
    """Pick labeled scans, a model type and its main settings; train in the background."""

    def __init__(self, napari_viewer):
        from qtpy.QtCore import Qt

        super().__init__(labels=False)
        self._viewer = napari_viewer
        self._files = []  # LabeledScan read from files
        self._data = Select(label="labeled scans", choices=self._data_choices)
        self._data.native.setMaximumHeight(90)
        self._data.native.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self._data.native.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._scan_file = FileEdit(label="scan file", mode="r")
        self._labels_file = FileEdit(label="its labels", mode="r", filter="*.npy *.tif *.tiff")
        self._add = PushButton(text="Add scan file + labels")
        self._model = ComboBox(label="model", choices=MODEL_CHOICES, value="fcnn")
        # main settings of each model type
        self._hidden = SpinBox(label="hidden units", value=30, min=2, max=1024)
        self._epochs = SpinBox(label="max epochs", value=200, min=1, max=5000)
        self._rate = FloatSpinBox(label="learning rate", value=1e-3, min=1e-6, max=1.0, step=1e-4)
        self._patience = SpinBox(label="early-stop patience", value=10, min=1, max=500)
        self._C = FloatSpinBox(label="C", value=10.0, min=1e-3, max=1e6)
        self._gamma = LineEdit(label="gamma", value="scale", tooltip="RBF width: 'scale', 'auto' or a number")
        self._search = CheckBox(text="search C and gamma (slower)", value=False)
        self._batch = SpinBox(label="batch size", value=128, min=1, max=4096)
        self._crop = SpinBox(label="crop size (px)", value=48, min=8, max=256)
        self._val = FloatSpinBox(label="validation fraction", value=0.1, min=0.0, max=0.5, step=0.05)
        self._augment = SpinBox(label="augmented copies", value=1, min=0, max=10,
                                tooltip="copies of every training frame with centre jitter, dose and radial scaling")
        self._seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self._jobs = JobButtons("Train", self.run)
        self._metrics = wrapped_label()
        self._save_path = FileEdit(label="save model as", mode="w", filter="*.sedmodel")
        self._save = PushButton(text="Save model")
        self.extend(
            [
                form(self._data, self._scan_file, self._labels_file), self._add,
                form(self._model, self._hidden, self._epochs, self._rate, self._patience, self._C, self._gamma,
                     self._batch, self._crop, self._val, self._augment, self._seed),
                self._search, self._jobs, self._metrics, form(self._save_path), self._save,
            ]
        )
        self.canvas = FigureView(4.0, 4.6, min_height=400)
        insert_before(self, self._metrics, self.canvas)
        self._ax_loss = self._ax_cm = None
        self.history = []
        self.result = None  # {"path", "kind", "training", "metrics"} of the last model trained
        self.on_trained = []  # callables(model path) run after each training
        self._tmpdir = tempfile.mkdtemp(prefix="sedclassify-models-")
        self.native.destroyed.connect(lambda *_: shutil.rmtree(self._tmpdir, ignore_errors=True))
        self._add.changed.connect(lambda _=None: self.add_files())
        self._save.changed.connect(lambda _=None: self.save_model())
        self._model.changed.connect(self._model_changed)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(lambda _e=None: self._refresh_data())
        self._model_changed(self._model.value)
        self._draw_curves()

    # data ----------------------------------------------------------------------------
    def _layer_sources(self):
        out = {}
        for layer in scan_layers(self._viewer):
            labels = labels_layers_for(self._viewer, layer)
            if labels:
                out[f"{layer.name}  +  {labels[0].name}"] = (layer, labels[0])
        return out

    def _data_choices(self, _w=None):
        return list(self._layer_sources()) + [f"file: {s.name}" for s in self._files]

    def _refresh_data(self):
        before = set(self._data.choices)
        self._data.reset_choices()
        new = [c for c in self._data.choices if c not in before]
        self._data.value = [c for c in self._data.value if c in self._data.choices] + new

    def add_files(self):
        """Open the chosen scan file and labels file as one more training scan."""
        from ...io import open_scan
        from .labeling import read_class_map

        scan_path, labels_path = self._scan_file.value, self._labels_file.value
        try:
            if str(scan_path) in ("", ".") or str(labels_path) in ("", "."):
                raise ValueError("choose a scan file and its labels file")
            scan = open_scan(scan_path)
            class_map, note = read_class_map(labels_path, scan.scan_shape)
        except (OSError, ValueError) as exc:
            show_error(f"Training data: {short_message(exc)}")
            return None
        if note:  # a 0-based labels file, shifted: say so (Labels > Load labels reads it as stored on request)
            self._jobs.status.value = note
            show_warning(f"Training data: {note}")
        item = LabeledScan(Path(scan_path).stem, scan, class_map)
        self._files.append(item)
        self._refresh_data()
        return item

    def labeled_scans(self) -> list[LabeledScan]:
        """The scans chosen for training, each with its class map."""
        layers = self._layer_sources()
        out = []
        for key in self._data.value:
            if key in layers:
                layer, labels = layers[key]
                out.append(
                    LabeledScan(layer.name, find_scan(layer), np.asarray(labels.data), session_of(layer).flatfield, layer)
                )
            elif key.startswith("file: "):
                out.extend(s for s in self._files if f"file: {s.name}" == key)
        return out

    # settings ------------------------------------------------------------------------
    def _model_changed(self, kind):
        shown = {
            "fcnn": (self._hidden, self._epochs, self._rate, self._patience),
            "svm": (self._C, self._gamma, self._search),
            "cnn": (self._epochs, self._rate, self._patience, self._batch, self._crop),
        }[kind]
        for w in (self._hidden, self._epochs, self._rate, self._patience, self._C, self._gamma, self._search,
                  self._batch, self._crop):
            w.visible = w in shown
        from ...optional import cnn_available, cnn_message

        hint = cnn_message()
        if kind == "cnn" and not cnn_available():  # say it when chosen, not after preprocessing
            self._metrics.value = hint
        elif self._metrics.value == hint:
            self._metrics.value = ""
        if kind == "cnn" and self._epochs.value > 100:
            self._epochs.value, self._patience.value = 40, 5
        elif kind == "fcnn" and self._epochs.value < 100:
            self._epochs.value, self._patience.value = 200, 10

    def estimator_params(self) -> dict:
        kind = self._model.value
        if kind == "fcnn":
            return {"hidden_units": int(self._hidden.value), "max_epochs": int(self._epochs.value),
                    "learning_rate": float(self._rate.value), "patience": int(self._patience.value)}
        if kind == "svm":
            text = self._gamma.value.strip()
            refused = ValueError(f"gamma must be 'scale', 'auto' or a positive number, not {text!r}")
            try:
                gamma = float(text)
            except ValueError:
                if text not in ("scale", "auto"):
                    raise refused from None
                gamma = text
            if isinstance(gamma, float) and not gamma > 0:  # nan, 0 and below: an RBF width it cannot have
                raise refused
            return {"C": float(self._C.value), "gamma": gamma, "search": bool(self._search.value)}
        return {"max_epochs": int(self._epochs.value), "learning_rate": float(self._rate.value),
                "patience": int(self._patience.value), "batch_size": int(self._batch.value)}

    def recipe(self):
        from dataclasses import replace

        from ...pipeline.train import default_recipe

        recipe = default_recipe(self._model.value)
        changes = {"augmentation": replace(recipe.augmentation, copies=int(self._augment.value))}
        if self._model.value == "cnn":
            changes["crop_size"] = int(self._crop.value)
        return recipe.replace(**changes)

    # training ------------------------------------------------------------------------
    def run(self):
        """Train on the chosen scans in the background; returns the job (None on bad input)."""
        from ...pipeline.train import preprocess_params_for
        from ...processing import PreprocessParams

        data = self.labeled_scans()
        try:
            if not data:
                raise ValueError("choose at least one labeled scan (a scan with a Labels layer, or files)")
            check_classes(data)  # here, at once: not in the child after preprocessing every scan
            kind, recipe, params = self._model.value, self.recipe(), self.estimator_params()
            if kind == "cnn":
                from ...optional import require_cnn

                require_cnn()
        except (ValueError, ImportError) as exc:  # ImportError: the CNN's libraries missing (pip command)
            self._jobs.status.value = f"refused: {short_message(exc)}"
            show_error(f"Training: {short_message(exc)}")
            return None
        val_fraction, seed = float(self._val.value), int(self._seed.value)
        out = Path(self._tmpdir) / f"{kind}-{len(list(Path(self._tmpdir).iterdir())) + 1}.sedmodel"
        self.history = []
        self.result = None
        self._draw_curves()
        jobs = []
        for item in data:  # the parameters of the user's last preprocessing, what the recipe needs on top
            session = session_of(item.layer)
            latest = preprocess_of(item.layer) if session is not None else None
            pp = preprocess_params_for([recipe], item.scan.geometry, latest.params if latest else PreprocessParams(),
                                       training=True)
            jobs.append((item, pp, None if session is None else session.result_for(pp)))
        made = []  # (layer, result, ...) of new preprocessing passes: kept in the scans' sessions for reuse
        geometries = [item.scan.geometry for item in data]  # what the passes use (the flat-fields: item.flatfield)

        def work(report, cancelled):
            prepare(kind)  # the child imports scikit-learn (TensorFlow) while the scans are preprocessed
            feats, maps = [], []
            for k, (item, pp, previous) in enumerate(jobs):
                n = item.scan.n_frames

                def frames(done, total, k=k):
                    report(k * n + done, len(jobs) * n)

                f, result = features_for(previous, item.scan, item.name, item.flatfield, pp, frames, cancelled)
                if item.layer is not None and result is not previous:
                    made.append((item.layer, result, item.flatfield, geometries[k]))
                feats.append(f)
                maps.append(item.class_map)

            def epoch(done, logs):
                report(done, int(logs.get("max_epochs", done)), dict(logs))

            return run(kind, train_features_to_file, feats, maps, str(out), kind=kind, recipe=recipe,
                       params=params, val_fraction=val_fraction, seed=seed,
                       preprocess=jobs[0][1].to_dict(), progress=epoch, cancel=cancelled, child=True)

        def trained(result):
            for layer, made_result, flatfield, geometry in made:
                session_of(layer).store_result(made_result, flatfield=flatfield, geometry=geometry, latest=False)
            for item in data:
                if item.layer is not None:
                    session_of(item.layer).set_model(result["path"])
            self._trained(result)

        job = BackgroundJob(f"Training a {kind.upper()} model", work, on_returned=trained,
                            on_progress=self._progress)
        return self._jobs.launch(job)

    #: Live loss curves are redrawn at most this often (s): a matplotlib redraw is 0.1-0.4 s of the
    #: event loop on a software-rendered desktop (benchmarks/bench_napari_session.py).
    CURVES_EVERY_S = 2.0

    def _progress(self, items):
        import time

        new = [info for _, _, info in items if info is not None]
        if new:
            self.history.extend(new)
            now = time.monotonic()
            if now - getattr(self, "_drawn_at", 0.0) >= self.CURVES_EVERY_S:
                self._drawn_at = now
                self._draw_curves()

    def _trained(self, result):
        self.result = result
        self._draw_curves(result.get("metrics", {}).get("validation"))
        validation = result.get("metrics", {}).get("validation")
        epochs = result.get("training", {}).get("epochs", len(self.history))
        text = f"trained {result['kind'].upper()} in {epochs} epoch(s)"
        if validation:
            text += f"; validation ({validation['n']} points):<br>" + metrics_html(validation)
        self._metrics.value = text
        for callback in self.on_trained:
            callback(result["path"])

    def _draw_curves(self, validation=None):
        """Loss curves so far (and the validation confusion matrix when given), drawn in a thread."""
        self.canvas.render(partial(training_figure, [dict(h) for h in self.history], validation))

    # saving --------------------------------------------------------------------------
    def save_model(self):
        """Copy the last trained model to the chosen file (atomically); returns its path."""
        from ...io.atomic import atomic_output

        if self.result is None:
            show_error("Training: train a model before saving it.")
            return None
        path = Path(self._save_path.value)
        if str(path) in ("", "."):
            show_error("Training: choose a file to save the model to (.sedmodel).")
            return None
        if path.suffix != ".sedmodel":
            path = path.with_name(path.name + ".sedmodel")
        try:
            with atomic_output(path, force=True) as tmp:
                shutil.copyfile(self.result["path"], tmp)
        except OSError as exc:
            show_error(f"Training: could not save the model to {path}: {exc}")
            return None
        self._jobs.status.value = f"saved {path.name}"
        return path


def training_figure(history, validation, figure) -> None:
    ax = figure.add_subplot(2, 1, 1) if validation else figure.add_subplot(1, 1, 1)
    epochs = np.arange(1, len(history) + 1)
    for key, style in (("loss", "-"), ("val_loss", "--")):
        values = [h.get(key, np.nan) for h in history]
        if np.isfinite(values).any():
            ax.plot(epochs, values, style, label=key.replace("_", " "), color="#3b8beb")
    acc = [h.get("val_accuracy", np.nan) for h in history]
    if np.isfinite(acc).any():
        ax2 = ax.twinx()
        ax2.plot(epochs, acc, ":", color="#d9534f", label="val accuracy")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("val accuracy", fontsize=7, color="#d9534f")
        ax2.tick_params(labelsize=6)
    ax.set_xlabel("epoch", fontsize=7)
    ax.set_ylabel("loss", fontsize=7)
    ax.tick_params(labelsize=6)
    if ax.get_legend_handles_labels()[0]:  # an SVM has no loss curves: no empty legend (and its warning)
        ax.legend(fontsize=6, frameon=False, loc="upper right")
    elif not history:
        ax.set_title("loss curves appear here during training", fontsize=7)
    if validation:
        _draw_confusion(figure.add_subplot(2, 1, 2), validation)


def _draw_confusion(ax, metrics) -> None:
    names = [c["name"].replace("_", "\n") for c in metrics["classes"]]
    cm = np.asarray(metrics["confusion"])
    norm = np.asarray(metrics["confusion_normalised"])
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_xlabel("predicted", fontsize=7)
    ax.set_ylabel("true", fontsize=7)
    ax.set_title("validation confusion matrix", fontsize=7)
