"""Prediction widget: apply a model file to a scan; class map + confidence layers over the
integrated image, counts per class, export of the class map and of a keep-list (CSV).

Frames whose most probable class is below the "uncertain below" probability are left out of the
class map (class 0, as ``pipeline.predict.with_uncertain`` does for ``sedclassify predict
--uncertain-below``), so out of the export and the keep-list; the Labels layer shows them in
their own colour (label ``UNCERTAIN_LABEL``, grey) so they are not mistaken for unscanned points.

CNN models are loaded and run in a spawned child process (``_napari/model_jobs.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import Container, FileEdit, FloatSpinBox, PushButton, Select
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer

from ...classes import ClassTable
from ...models.persistence import needs_tensorflow, read_metadata
from ...pipeline.predict import params_for_model, prediction_warnings
from ...pipeline.session import CURRENT
from ..jobs import BackgroundJob, JobButtons, short_message, wrapped_label
from ..layers import find_scan, with_file_note
from ..model_jobs import (
    confidence_map,
    features_for,
    model_card,
    predict_features,
    prepare,
    run,
)
from ..palette import class_colormap, display_name, legend_html
from ..pickers import scan_picker
from ..plots import form
from ..state import PREDICTION_OF_KEY, flatfield_of, session_of, set_layer


#: What a job's report says when it counts the frames the model has classified (its second stage,
#: after preprocessing).
CLASSIFY_STAGE = "classify"
#: Label value of uncertain frames in the predicted-classes layer (its data only: exports hold 0).
UNCERTAIN_LABEL = 255
UNCERTAIN_COLOUR = "#b0b0b0ff"


def classes_layer_name(scan_layer) -> str:
    return f"{scan_layer.name} predicted classes"


def confidence_layer_name(scan_layer) -> str:
    return f"{scan_layer.name} confidence"


def geometry_fix_hint(scan) -> str:
    """How to set the calibration values of ``scan`` that were assumed, or "" when none was."""
    if scan is None:
        return ""
    from ...geometry import FLAGS, Q_FIELDS

    names = {"pixel_size_um": "pixel size", "camera_length_mm": "camera length", "voltage_kv": "voltage"}
    assumed = [n for n in Q_FIELDS if scan.geometry.origin(n) == "assumed"]
    if not assumed:
        return ""
    values = ", ".join(f"{names[n]} {getattr(scan.geometry, n):g} {FLAGS[n][1]}" for n in assumed)
    return (f"{values} assumed (the file does not say); set the true values under 'Scan geometry' "
            "(the Workflow's tab 0 Scan, or Plugins > SED classify > Scan geometry), Apply, and classify again.")


class PredictionWidget(Container):
    """Classify the selected scan with a model file; show and export the result."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self._viewer = napari_viewer
        self.table = ClassTable.default()  # the classes of the last model used
        self._scan = scan_picker(napari_viewer)
        self._model_path = FileEdit(label="model file", mode="r", filter="*.sedmodel")
        self._builtin = PushButton(text="Use the built-in model (no training needed)")
        self._builtin.changed.connect(lambda _=None: self.use_builtin_model())
        self._uncertain = FloatSpinBox(
            label="uncertain below", value=0.0, min=0.0, max=1.0, step=0.05,
            tooltip="frames whose most probable class has a (calibrated) probability below this are marked "
            "uncertain: grey in the class map, class 0 in exports, never in the keep-list (0 = off)")
        self._jobs = JobButtons("Classify scan", self.run)
        self._summary = wrapped_label()
        self._export_path = FileEdit(label="class map to", mode="w", filter="*.npy *.tif *.tiff")
        self._export = PushButton(text="Export class map")
        self._keep = Select(label="keep classes", choices=self._keep_choices)
        self._keep.native.setMaximumHeight(80)
        self._keep_path = FileEdit(label="keep-list to", mode="w", filter="*.csv")
        self._keep_export = PushButton(text="Export keep-list (CSV)")
        self.extend(
            [form(self._scan, self._model_path, self._uncertain), self._builtin, self._jobs, self._summary, form(self._export_path), self._export,
             form(self._keep, self._keep_path), self._keep_export]
        )
        self._shown = None  # the scan layer whose prediction is on show
        self._confidence_due = None  # (scan layer, confidence map, n classes) to show in the next turn
        self._watched = set()  # ids of the ScanSessions observed for stale predictions
        self._export.changed.connect(lambda _=None: self.export_class_map())
        self._uncertain.changed.connect(lambda _=None: self._rethreshold())
        self._scan.changed.connect(lambda _=None: self._show_summary())
        self._keep_export.changed.connect(lambda _=None: self.export_keep_list())

    @property
    def prediction(self):
        """The prediction of the scan chosen in the widget, from its scan's session ({"layer",
        "class_map", "confidence", "table", "uncertain", "threshold", "warnings", "out", "model",
        "result"}); None when it has none or it went stale. What the summary shows and the exports
        write: never the class map of another scan."""
        session = session_of(self._scan.value)
        return None if session is None else session.prediction

    def _session_changed(self, session, what):
        """Mark the prediction on show stale as soon as the flat-field, geometry, chip-edge pixel width
        or preprocessing it was made from changes (its export is refused until the scan is classified again)."""
        if what in ("flatfield", "geometry", "edge_pixel_width", "result") and session is session_of(self._scan.value):
            self._show_summary()

    def _show_summary(self):
        """The counts (and warnings) of the chosen scan's prediction, or why it has none on show."""
        import html

        try:
            session = session_of(self._scan.value)
        except RuntimeError:  # deleted with its viewer
            return
        p = None if session is None else session.prediction
        if p is not None:
            text = self._counts_html(p) + "".join(
                f"<br><b>warning</b>: {html.escape(w, quote=False)}" for w in p.get("warnings", ()))
        elif session is not None and session.stale_prediction is not None:
            text = ("<b>stale</b>: the flat-field, geometry, chip-edge pixel width or preprocessing "
                    "of this scan changed since this class map was made; classify again.")
        else:
            text = ""
        try:
            self._summary.value = text
        except RuntimeError:  # deleted with its viewer
            pass

    @staticmethod
    def _counts_html(p) -> str:
        class_map, uncertain, threshold = p["class_map"], p["uncertain"], p["threshold"]
        counts = {c: int((class_map == c).sum()) for c in p["table"].ids}
        unclassified = int((np.asarray(p["out"]["class_map"]) == 0).sum())
        return legend_html(p["table"], counts) + (
            f"<br>{unclassified} positions not classified (missing or no beam)" if unclassified else ""
        ) + (f'<br><span style="background-color:{UNCERTAIN_COLOUR[:7]}; color:{UNCERTAIN_COLOUR[:7]}">'
             f"&#9632;&#9632;</span>&nbsp;{int(uncertain.sum())} uncertain (probability below {threshold:g}): "
             "left out of the class map and the keep-list" if threshold > 0 else "")

    def _keep_choices(self, _w=None):
        return [(display_name(self.table.names[c]), c) for c in self.table.ids]

    def use_model(self, path):
        """Take ``path`` as the model file (e.g. the model the training widget just made)."""
        self._model_path.value = path

    def use_builtin_model(self):
        """Take the model shipped in the package (trained on simulated sessions; its card says its
        domain, and scans outside it are refused with the reason)."""
        from ...models.persistence import resolve_model_path

        self._model_path.value = resolve_model_path("builtin")
        self._summary.value = ("Built-in model: an FCNN trained on simulated sessions (q 0.06-0.30 1/Å, 128-512 px, "
                               "200 kV); give the scan's real geometry (0 Scan) or it is refused.")

    def run(self):
        """Classify the selected scan in the background; returns the job (None on bad input)."""
        layer = self._scan.value
        scan = find_scan(layer)
        path = self._model_path.value
        try:
            if scan is None:
                raise ValueError("open a scan first (File > Open or File > Open Sample)")
            if str(path) in ("", "."):
                raise ValueError("choose a model file (.sedmodel), e.g. one saved by the Training widget")
            card = model_card(path)
            in_child = needs_tensorflow(read_metadata(path))  # a CNN file without arrays: in a child
            if in_child:
                from ...optional import require_cnn

                require_cnn(f"The CNN model {path}")
            card.check_geometry(scan.geometry, layer.name)
            params = params_for_model(card, scan.geometry)
        except (OSError, ValueError, ImportError) as exc:  # ModelFileError and IncompatibleModelError are
            # ValueErrors; ImportError: a CNN model without TensorFlow installed (the message has the pip command)
            self.refuse(layer, exc)
            show_error(f"Prediction: {short_message(exc)}")
            return None
        flatfield = flatfield_of(layer)
        geometry = scan.geometry  # what the job uses: the prediction is kept under these (stale if they change)
        session = session_of(layer)
        # made with these parameters (or a profile reaching farther), this flat-field and geometry
        previous = session.result_for(params)

        def work(report, cancelled):
            if in_child:
                prepare(card.kind)  # the child imports TensorFlow while the scan is preprocessed
            try:
                feats, result = features_for(previous, scan, layer.name, flatfield, params, report, cancelled)
            except (ValueError, OSError) as exc:  # e.g. a file overwritten since it was opened: say so
                changed = with_file_note(layer, exc)
                if changed is exc:
                    raise
                raise changed from exc
            out = run(card.kind, predict_features, str(path), feats, cancel=cancelled, child=in_child,
                      progress=lambda done, logs: report(done, logs["total"], CLASSIFY_STAGE))
            # what the user must know before trusting it: assumed values, a q axis the ice ring says is off
            return out, result, prediction_warnings(card, scan, result, layer.name, class_map=out["class_map"])

        def done(returned):
            out, result, warnings = returned
            self.show_prediction(layer, out, card.classes, result, path, flatfield=flatfield, geometry=geometry)
            self.show_warnings(warnings, layer)

        job = BackgroundJob(f"Classifying {layer.name} ({card.kind.upper()})", work, on_returned=done,
                            on_progress=self._show_stage)

        def finished():
            if job.outcome == "failed":  # no stale class map next to the reason
                self.refuse(layer, job.error, prefix="failed")

        job._on_finished = finished
        return self._jobs.launch(job)

    def _show_stage(self, items):
        """The model's stage of the running job, once it has started, in the status line: "classifying
        1024 / 4096 frames" (the progress bar then counts the frames classified, block by block)."""
        staged = [(done, total) for done, total, stage in items if stage == CLASSIFY_STAGE]
        job = self._jobs.job
        if staged and not (job is not None and job.cancel_event.is_set()):  # "cancelling…" stays
            done, total = staged[-1]
            self._jobs.status.value = f"classifying {done} / {total} frames"

    def refuse(self, layer, reason, prefix: str = "refused"):
        """Say in place why ``layer`` was not classified (and how to fix it when the scan's
        geometry was assumed), and clear the result shown for it: no "done", no old class map."""
        import html

        from ...errors import IncompatibleModelError

        self.clear_result(layer)
        text = f"<b>{prefix}</b>: {html.escape(short_message(reason), quote=False)}"
        fix = geometry_fix_hint(find_scan(layer)) if isinstance(reason, IncompatibleModelError) else ""
        if fix:
            text += f"<br><b>fix</b>: {html.escape(fix, quote=False)}"
        self._jobs.status.value = text

    def clear_result(self, layer=None):
        """Remove the class map, confidence and counts shown for ``layer`` (any scan when None)."""
        if self._confidence_due is not None and (layer is None or self._confidence_due[0] == layer):
            self._confidence_due = None
        if layer is not None:
            for name in (classes_layer_name(layer), confidence_layer_name(layer)):
                if name in self._viewer.layers:
                    self._viewer.layers.remove(name)
            session_of(layer).clear_prediction()  # an older class map of this scan is not exported instead
        if self._shown is not None and (layer is None or self._shown == layer):
            session_of(self._shown).clear_prediction()
            self._shown = None
        self._show_summary()

    def _show_confidence(self):
        if self._confidence_due is None:  # cleared meanwhile
            return
        (layer, confidence, n), self._confidence_due = self._confidence_due, None
        try:
            set_layer(self._viewer, confidence_layer_name(layer), confidence, like=layer, colormap="inferno",
                      contrast_limits=(1.0 / n, 1.0), visible=False)
        except (KeyError, ValueError, RuntimeError):  # the scan layer or the viewer went meanwhile
            pass

    def show_prediction(self, layer, out, table: ClassTable, result, model, flatfield=CURRENT, geometry=CURRENT):
        """Show what ``model`` predicted for the scan of ``layer`` from the preprocessing ``result``
        (made with ``flatfield`` and ``geometry``; default: the scan's current ones), and keep it in
        the scan's session; stale at once when those changed while it was made."""
        from ...models.inference import mark_uncertain

        predicted = np.asarray(out["class_map"], dtype=np.uint8)
        probabilities = np.asarray(out["probabilities"])
        confidence = confidence_map(probabilities)
        threshold = float(self._uncertain.value)
        uncertain = np.zeros(predicted.shape, bool)
        class_map = predicted
        if threshold > 0:
            class_map, uncertain = mark_uncertain(predicted, probabilities, threshold)
        self.table = table
        shown = np.where(uncertain, UNCERTAIN_LABEL, class_map).astype(np.uint8)
        colormap = class_colormap(table)
        colormap = type(colormap)(color_dict={**colormap.color_dict, UNCERTAIN_LABEL: UNCERTAIN_COLOUR})
        # the confidence map in a turn of the event loop of its own, after the class map and its
        # editing overlays: the viewer draws the class map between (both in one turn: one stall of
        # both layers, 300 ms; with an overlay's visual: 93 ms)
        self._confidence_due = (layer, confidence, max(1, len(out["class_ids"])))
        set_layer(self._viewer, classes_layer_name(layer), shown, kind="labels", like=layer,
                  colormap=colormap, opacity=0.6, metadata={PREDICTION_OF_KEY: layer.name},
                  then=lambda: QTimer.singleShot(30, self._show_confidence))
        self._shown = layer
        session = session_of(layer)
        if id(session) not in self._watched:
            self._watched.add(id(session))
            session.subscribe(lambda what: self._session_changed(session, what))
        kept = session.stale_prediction or session.prediction
        warnings = kept.get("warnings", []) if kept is not None and kept["out"] is out else []  # re-marked: kept
        session.store_prediction(
            {"layer": layer, "class_map": class_map, "confidence": confidence, "table": table,
             "uncertain": uncertain, "threshold": threshold, "warnings": warnings, "out": out, "model": model,
             "result": result}, model, result, flatfield=flatfield, geometry=geometry)
        self._show_summary()  # the chosen scan's: stale at once when its flat-field or geometry changed meanwhile
        self._keep.reset_choices()
        if not self._keep.value:
            self._keep.value = [c for c in table.ids if table.names[c] == "amorphous_ice"]

    def show_warnings(self, warnings, layer=None):
        """Each warning of the prediction of ``layer`` (default: the one on show) as a napari warning,
        and under its counts (kept with it: shown again when its scan is chosen again)."""
        from ..wording import in_napari_words

        warnings = [in_napari_words(w) for w in warnings]
        for w in warnings:
            show_warning(f"Prediction: {w}")
        session = session_of(layer if layer is not None else self._shown)
        p = None if session is None else (session.prediction or session.stale_prediction)
        if p is not None:
            p["warnings"] = warnings
        self._show_summary()

    def _rethreshold(self):
        """The threshold changed: mark the frames of the prediction on show again (no new run)."""
        p = self.prediction
        if p is None:
            return
        try:
            self.show_prediction(p["layer"], p["out"], p["table"], p["result"], p["model"])
        except (KeyError, RuntimeError):  # its layer was removed meanwhile
            self._shown = None

    def _nothing_to_export(self) -> str:
        layer = self._scan.value
        session = session_of(layer)
        if session is not None and session.stale_prediction is not None:
            return (f"the class map of {layer.name} is stale (its flat-field, geometry or preprocessing changed): "
                    "classify again")
        return "classify a scan" if layer is None else f"{layer.name} has no class map yet: classify a scan"

    def export_class_map(self):
        from ...labels import save_class_map

        if self.prediction is None:
            show_error(f"Prediction: {self._nothing_to_export()} before exporting its class map.")
            return None
        try:
            return save_class_map(self._export_path.value, self.prediction["class_map"])
        except (OSError, ValueError) as exc:
            show_error(f"Prediction: could not export the class map: {exc}")
            return None

    def export_keep_list(self):
        from ...pipeline.reduce import write_keep_list

        if self.prediction is None:
            show_error(f"Prediction: {self._nothing_to_export()} before exporting a keep-list.")
            return None
        path = Path(self._keep_path.value)
        if str(path) in ("", ".") or not self._keep.value:
            show_error("Prediction: choose the classes to keep and a .csv file.")
            return None
        step = find_scan(self.prediction["layer"]).geometry.scan_step_nm
        try:
            n = write_keep_list(path, self.prediction["class_map"], self.prediction["confidence"], self._keep.value,
                                self.prediction["table"], step)
        except OSError as exc:
            show_error(f"Prediction: could not write the keep-list {path}: {exc}")
            return None
        self._jobs.status.value = f"keep-list: {n} positions written to {path.name}"
        return path
