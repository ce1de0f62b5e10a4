"""Classify before labeling: a class proposal from clustering (no labels needed), then training
that follows the brush.

"Propose classes" clusters the scan's q-axis RIAs and names the clusters by their physics
(``pipeline.propose``); the result is an editable Labels layer ("<scan> proposal"). With "train
as I paint" on, every edit of that layer (brush, fill, eraser) retrains a fast model (SVM or FCNN)
on the cached features in the background, at most about once a second, and refreshes the
"<scan> quick prediction" layer; the viewer never waits for it. The cached features hold while the
scan's flat-field, geometry and chip-edge pixel width do; after a change the next retraining
makes them again (the brushed labels stay). "Save model" writes the last
model (a .sedmodel file the CLI and the Predict step apply).
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton

from ...classes import ClassTable
from ...geometry import NAMES
from ..jobs import BackgroundJob, short_message, wrapped_label
from ..layers import find_scan
from ..palette import class_colormap
from ..pickers import scan_picker
from ..plots import form
from ..state import flatfield_of, preprocess_current, session_of, set_layer

#: Wait this long (ms) after the last edit before retraining: strokes come in bursts.
RETRAIN_DELAY_MS = 600


def proposal_layer_name(scan_layer) -> str:
    return f"{scan_layer.name} proposal"


def quick_prediction_layer_name(scan_layer) -> str:
    return f"{scan_layer.name} quick prediction"


def inputs_of(layer) -> tuple:
    """What features of the scan of ``layer`` are made from: its session (a scan opened again has
    another), flat-field, geometry and chip-edge pixel width."""
    session = session_of(layer)
    return id(session), id(session.flatfield), session.scan.geometry, session.edge_pixel_width[0]


def feature_work(layer):
    """``work(report, cancelled) -> (preprocessing result, ScanFeatures)`` for a worker thread: the
    q-axis RIAs of the scan of ``layer`` from its stored preprocessing when that still holds, else
    from a new pass with its flat-field (inputs taken now, on the UI thread)."""
    scan, flatfield, stored = find_scan(layer), flatfield_of(layer), preprocess_current(layer)
    geometry, name = scan.geometry, layer.name

    def work(report, cancelled):
        from ...models.training import ScanFeatures
        from ...pipeline.preprocess import preprocess

        result = stored if stored is not None else preprocess(scan, None, flatfield, progress=report,
                                                               cancel=cancelled)
        return result, ScanFeatures.from_preprocess(result, geometry, name)

    return work


#: Said instead of training when the labels hold one class (a proposal of one cluster, say).
ONE_CLASS = " The quick prediction needs at least two classes: brush a second one."


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
        self.closed = False  # its Qt widgets deleted (docked away, viewer closed): edits no longer retrain
        self.native.destroyed.connect(lambda *_: self._close())
        self.job = None  # the running background job (proposal or training)
        self.model = None  # the last trained SedModel
        self._model_from = None  # (scan layer, inputs_of(it)) the last model was trained from
        self._sessions = set()  # ids of the ScanSessions whose input changes are followed
        self.trainings = 0  # finished retrainings (for tests and the status line)
        self._features = {}  # scan layer name -> (ScanFeatures (RIAs on the q axis), inputs_of(layer) they came from)
        self._dirty = False
        self._watched = set()  # ids of the proposal layers whose edits retrain
        self._target = None  # (scan layer, its proposal layer) the next retraining learns from

    # ---- proposal ----------------------------------------------------------------------------------

    def propose(self):
        layer = self._scan.value
        if layer is None:
            self.status.value = "Open a scan first (File > Open, or File > Open Sample)."
            return None
        scan = find_scan(layer)
        features, inputs = feature_work(layer), inputs_of(layer)

        def work(report, cancelled):
            from ...pipeline.propose import propose

            result, feats = features(report, cancelled)
            return propose(result, scan.geometry), feats

        def done(out):
            prop, feats = out
            self._features[layer.name] = (feats, inputs)
            labels = set_layer(self._viewer, proposal_layer_name(layer), prop.class_map.astype(np.uint8),
                               kind="labels", like=layer, colormap=class_colormap(self.table), opacity=0.5,
                               select=True)  # to brush corrections on
            self._watch(layer, labels)
            counts = ", ".join(f"{self.table.names[i].replace('_', ' ')} {int((prop.class_map == i).sum())}"
                               for i in self.table.ids)
            note = ""
            if scan.geometry.assumed():
                assumed = ", ".join(NAMES[name] for name in scan.geometry.assumed())
                note = (f" Note: {assumed} assumed; the names rely on the q axis "
                        "(set the geometry or calibrate).")
            self.status.value = (f"Proposal from {len(prop.groups)} clusters: {counts}. Correct it with the brush; "
                                 "the quick prediction follows." + note)
            self.show_warnings(prop.details.get("warnings", []))
            self._target = (layer, labels)  # what the next retraining learns from
            if self._follow.value:
                self.schedule()

        def finished():  # no proposal of another scan left on show beside the reason
            if job.outcome == "failed":
                self.status.value = f"No proposal for {layer.name}: {short_message(job.error)}"

        job = BackgroundJob(f"Proposing classes for {layer.name}", work, on_returned=done, on_finished=finished)
        return self._start(job)

    def show_warnings(self, warnings):
        """Each warning of the proposal (its names resting on a q axis the ring contradicts, one
        class for every frame) as a napari warning, and in the status line, in the widgets' words."""
        from napari.utils.notifications import show_warning

        from ..wording import in_napari_words

        for w in (in_napari_words(w) for w in warnings):
            show_warning(f"Proposal: {w}")
            self.status.value += f" Warning: {w}"

    # ---- training that follows the brush ---------------------------------------------------------------

    def _watch(self, layer, labels):
        """Edits of ``labels`` (the proposal of the scan of ``layer``) retrain on that scan, whichever
        scan the widget's box shows then."""
        if id(labels) in self._watched:
            return
        self._watched.add(id(labels))
        for name in ("paint", "data", "labels_update"):
            event = getattr(labels.events, name, None)
            if event is not None:
                event.connect(lambda _e=None: self.schedule(layer, labels))

    def _close(self):
        self.closed = True
        self._timer.stop()

    def schedule(self, layer=None, labels=None):
        """Retrain after the edits settle (restarts the short timer on every edit); on the scan of
        ``layer`` with its proposal ``labels`` when given, else on the scan edited last."""
        if layer is not None:
            self._target = (layer, labels)
        if not self.closed and self._follow.value:
            self._timer.start()

    def retrain(self):
        if self.closed:  # a timer that fired as the widget went
            return None
        layer, labels = self._target or (None, None)
        if layer is None or layer not in self._viewer.layers or labels not in self._viewer.layers \
                or layer.name not in self._features:
            return None
        if self.job is not None and not self.job.done:
            self._dirty = True  # retrain once more when this one ends
            return None
        feats, made_from = self._features[layer.name]
        inputs = inputs_of(layer)
        again = None if made_from == inputs else feature_work(layer)  # flat-field or geometry changed since
        class_map = np.asarray(labels.data).copy()
        if len(np.unique(class_map[class_map > 0])) < 2:  # nothing to tell apart: no training, no error
            if ONE_CLASS not in self.status.value:
                self.status.value += ONE_CLASS
            return None
        kind = self._kind.value
        rare = self._too_rare_for(kind, class_map)
        if rare:  # a class brushed on one point (or proposed for one frame): say it, train nothing
            if rare not in self.status.value:
                self.status.value += f" {rare}"
            return None

        def work(report, cancelled):
            from ...models.features import Augmentation, FeatureRecipe
            from ...models.inference import predict_scan
            from ...models.training import train

            made = feats if again is None else again(report, cancelled)[1]
            recipe = FeatureRecipe(kind="ria", augmentation=Augmentation(copies=0))
            model = train([made], [class_map], kind=kind, recipe=recipe, val_fraction=0.0, cancel=cancelled)
            return model, predict_scan(model, made), made

        def done(out):
            model, pred, made = out
            self._features[layer.name] = (made, inputs)
            self.model, self._model_from = model, (layer, inputs)
            self._follow_inputs(layer)
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

    def _follow_inputs(self, layer):
        session = session_of(layer)
        if id(session) not in self._sessions:
            self._sessions.add(id(session))
            session.subscribe(lambda what: self._inputs_changed(layer, what))

    def _model_is_stale(self) -> bool:
        """Whether the flat-field, geometry or chip-edge pixel width of the scan the last model
        learned from changed since (its features, so its model and quick prediction, no longer hold)."""
        return self._model_from is not None and inputs_of(self._model_from[0]) != self._model_from[1]

    def _inputs_changed(self, layer, what):
        """The scan of the last model got another flat-field, geometry or chip-edge pixel width: its
        quick prediction is retrained when following the brush, else said to be out of date."""
        if self.closed or what not in ("flatfield", "geometry", "edge_pixel_width") or self._model_from is None \
                or self._model_from[0] is not layer or not self._model_is_stale():
            return
        try:
            self.status.value = (f"The quick model and prediction of {layer.name} were made before its "
                                 f"{what.replace('_', ' ')} changed: "
                                 + ("retraining." if self._follow.value else "retrain before using them."))
        except RuntimeError:  # deleted with its viewer
            return
        name = proposal_layer_name(layer)
        if self._follow.value and name in self._viewer.layers:
            self.schedule(layer, self._viewer.layers[name])

    def _too_rare_for(self, kind: str, class_map) -> str:
        """What to brush when a class of ``class_map`` has too few points for the ``kind`` model
        (the SVM calibrates its probabilities on labeled frames it holds out), else ""."""
        from ...models.training import SVM_MIN_CLASS_FRAMES

        ids, counts = np.unique(class_map[class_map > 0], return_counts=True)
        rare = [self.table.names.get(int(c), str(c)).replace("_", " ") for c, n in zip(ids, counts)
                if kind == "svm" and n < SVM_MIN_CLASS_FRAMES]
        if not rare:
            return ""
        return (f"Not retrained: {', '.join(rare)} labeled on fewer than {SVM_MIN_CLASS_FRAMES} points, too few "
                f"for the SVM; brush at least {SVM_MIN_CLASS_FRAMES} points of every class, or erase that class.")

    def save(self):
        from pathlib import Path

        from ...models.persistence import save_model

        if self.model is None:
            self.status.value = "Nothing to save yet: propose classes or paint labels first."
            return None
        if self._model_is_stale():
            self.status.value = (f"Not saved: the model was trained before the flat-field, geometry or chip-edge "
                                 f"pixel width of {self._model_from[0].name} changed; retrain it (edit the proposal) "
                                 "and save again.")
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
