"""Classify before labeling: a class proposal from clustering (no labels needed), then training
that follows the brush.

"Propose classes" clusters the scan's q-axis RIAs and names the clusters by their physics
(``pipeline.propose``); the result is an editable Labels layer ("<scan> proposal"). With "train
as I paint" on, every edit of that layer (brush, fill, eraser) retrains a fast model (SVM or FCNN)
on the cached features in the background, at most about once a second, and refreshes the
"<scan> quick prediction" layer; the viewer never waits for it. "Save model" writes the last
model (a .sedmodel file the CLI and the Predict step apply).
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton

from ...classes import ClassTable
from ..jobs import BackgroundJob, wrapped_label
from ..layers import find_scan
from ..palette import class_colormap
from ..pickers import scan_picker
from ..plots import form
from ..state import flatfield_of, preprocess_current, set_layer

#: Wait this long (ms) after the last edit before retraining: strokes come in bursts.
RETRAIN_DELAY_MS = 600


def proposal_layer_name(scan_layer) -> str:
    return f"{scan_layer.name} proposal"


def quick_prediction_layer_name(scan_layer) -> str:
    return f"{scan_layer.name} quick prediction"


class QuickClassifyWidget(Container):
    """Propose classes without labels; retrain a fast model as the proposal is corrected."""

    def __init__(self, napari_viewer, table: ClassTable | None = None):
        super().__init__(labels=False)
        from qtpy.QtCore import QTimer

        self._viewer = napari_viewer
        self.table = table or ClassTable.default()
        self._scan = scan_picker(napari_viewer)
        self._propose = PushButton(text="Propose classes (no labels needed)")
        self._follow = CheckBox(text="train as I paint (retrain on every edit)", value=True)
        self._kind = ComboBox(label="model", choices=[("SVM (fast)", "svm"), ("FCNN", "fcnn")], value="svm")
        self._path = FileEdit(label="save as", mode="w", filter="*.sedmodel")
        self._save = PushButton(text="Save model", enabled=False)
        self.status = wrapped_label()
        self.extend([form(self._scan), self._propose, self._follow, form(self._kind, self._path), self._save,
                     self.status])
        self._propose.changed.connect(lambda _=None: self.propose())
        self._save.changed.connect(lambda _=None: self.save())
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(RETRAIN_DELAY_MS)
        self._timer.timeout.connect(self.retrain)
        self.job = None  # the running background job (proposal or training)
        self.model = None  # the last trained SedModel
        self.trainings = 0  # finished retrainings (for tests and the status line)
        self._features = {}  # scan layer name -> ScanFeatures (RIAs on the q axis)
        self._dirty = False
        self._labels_layer = None

    # ---- proposal ----------------------------------------------------------------------------------

    def propose(self):
        layer = self._scan.value
        if layer is None:
            self.status.value = "Open a scan first (File > Open, or File > Open Sample)."
            return None
        scan = find_scan(layer)
        flatfield = flatfield_of(layer)
        stored = preprocess_current(layer)

        def work(report, cancelled):
            from ...models.training import ScanFeatures
            from ...pipeline.preprocess import preprocess
            from ...pipeline.propose import propose

            result = stored if stored is not None else preprocess(scan, None, flatfield, progress=report,
                                                                   cancel=cancelled)
            feats = ScanFeatures.from_preprocess(result, scan.geometry, layer.name)
            return propose(result, scan.geometry), feats

        def done(out):
            prop, feats = out
            self._features[layer.name] = feats
            labels = set_layer(self._viewer, proposal_layer_name(layer), prop.class_map.astype(np.uint8),
                               kind="labels", like=layer, colormap=class_colormap(self.table), opacity=0.5,
                               select=True)  # to brush corrections on
            self._watch(labels)
            counts = ", ".join(f"{self.table.names[i].replace('_', ' ')} {int((prop.class_map == i).sum())}"
                               for i in self.table.ids)
            note = ""
            if scan.geometry.assumed():
                note = (f" Note: {', '.join(scan.geometry.assumed())} assumed; the names rely on the q axis "
                        "(set the geometry or calibrate).")
            self.status.value = (f"Proposal from {len(prop.groups)} clusters: {counts}. Correct it with the brush; "
                                 "the quick prediction follows." + note)
            if self._follow.value:
                self.schedule()

        return self._start(BackgroundJob(f"Proposing classes for {layer.name}", work, on_returned=done))

    # ---- training that follows the brush ---------------------------------------------------------------

    def _watch(self, labels):
        if self._labels_layer is labels:
            return
        self._labels_layer = labels
        for name in ("paint", "data", "labels_update"):
            event = getattr(labels.events, name, None)
            if event is not None:
                event.connect(lambda _e=None: self.schedule())

    def schedule(self):
        """Retrain after the edits settle (restarts the short timer on every edit)."""
        if self._follow.value:
            self._timer.start()

    def retrain(self):
        layer = self._scan.value
        labels = self._labels_layer
        if layer is None or labels is None or layer.name not in self._features:
            return None
        if self.job is not None and not self.job.done:
            self._dirty = True  # retrain once more when this one ends
            return None
        feats = self._features[layer.name]
        class_map = np.asarray(labels.data).copy()
        kind = self._kind.value

        def work(report, cancelled):
            from ...models.features import Augmentation, FeatureRecipe
            from ...models.inference import predict_scan
            from ...models.training import train

            recipe = FeatureRecipe(kind="ria", augmentation=Augmentation(copies=0))
            model = train([feats], [class_map], kind=kind, recipe=recipe, val_fraction=0.0, cancel=cancelled)
            return model, predict_scan(model, feats)

        def done(out):
            model, pred = out
            self.model = model
            self.trainings += 1
            set_layer(self._viewer, quick_prediction_layer_name(layer), pred.class_map.astype(np.uint8), kind="labels",
                      like=layer, colormap=class_colormap(self.table), opacity=0.6, visible=True)
            self._viewer.layers.selection.active = labels
            self._save.enabled = True
            self.status.value = f"{kind.upper()} retrained on {int((class_map > 0).sum())} labeled points (#{self.trainings})."

        def finished():
            if self._dirty:
                self._dirty = False
                self.schedule()

        return self._start(BackgroundJob(f"Training on {labels.name}", work, on_returned=done, on_finished=finished))

    def save(self):
        from pathlib import Path

        from ...models.persistence import save_model

        if self.model is None:
            self.status.value = "Nothing to save yet: propose classes or paint labels first."
            return None
        path = Path(str(self._path.value))
        if path.suffix != ".sedmodel" or path.name in ("", ".sedmodel"):
            self.status.value = "Give a file name ending in .sedmodel in 'save as'."
            return None
        try:
            written = save_model(self.model, path)
        except (OSError, ValueError) as exc:
            self.status.value = f"Could not save: {exc}"
            return None
        self.status.value = f"Model saved to {written}."
        return written

    def _start(self, job):
        self.job = job
        job.start()
        return job
