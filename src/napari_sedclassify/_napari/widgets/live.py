"""Live widget: follow an acquisition (a growing Merlin .mib file or a folder of frame files, a
Merlin detector's TCP data stream, or a DECTRIS detector's zmq stream: the sources of
``sedclassify watch``), classify each frame as it arrives and show the running class map as a
Labels layer.

FCNN and SVM models classify in the worker thread; a CNN model (TensorFlow) classifies in a
spawned child process (``_napari/model_jobs.watch_in_child``) whose running state is relayed to
this process, so TensorFlow never loads next to napari's canvas.

``pipeline.live.watch`` runs in a thread worker and fills a ``LiveClassMap``; a QTimer on the
UI thread redraws the layer when the state has changed (at most every ``REFRESH_MS``), so the
acquisition rate never sets the redraw rate.
"""

from __future__ import annotations

import math
import os

from magicgui.widgets import ComboBox, Container, FileEdit, LineEdit, Select, SpinBox

from ...classes import ClassTable
from ..jobs import BackgroundJob, JobButtons, wrapped_label
from ..palette import class_colormap, display_name, legend_html

#: Redraw interval of the live layer (ms).
REFRESH_MS = 200
LAYER_NAME = "live classes"
#: Sources of frames, as ``sedclassify watch`` offers them: (label, kind).
SOURCES = [("file or folder (--input)", "file"), ("Merlin TCP stream (--merlin)", "merlin"),
           ("DECTRIS zmq stream (--dectris)", "dectris")]
#: A file or folder to follow that is not there yet (the detector software has not started writing it)
#: is waited for this long (s), as ``sedclassify watch --timeout``'s default; a stream, until Stop.
FILE_WAIT_S = 30.0
#: Where a live run's geometry comes from, said where the engine's advice names the Scan geometry
#: widget (which sets the geometry of opened scans, not of live frames).
#: The Live widget's field for the outputs' folder (the command's --out).
_OUT_LABEL = "write to folder"
LIVE_GEOMETRY = "(Live: choose a 'geometry of scan' file that records it, or run sedclassify watch with it)"
_INPUT_LABELS = {"file": "input (.mib or folder)", "merlin": "data host:port (6342)",
                 "dectris": "stream host:port (9999)"}


class LiveWidget(Container):
    """Start / stop live classification and show its running class map."""

    def __init__(self, napari_viewer):
        super().__init__()
        self._viewer = napari_viewer
        self._model_path = FileEdit(label="model file", mode="r", filter="*.sedmodel")
        self._source = ComboBox(label="source", choices=SOURCES, value="file")
        self._input = LineEdit(label=_INPUT_LABELS["file"])
        self._control_port = SpinBox(label="Merlin control port (0: none)", min=0, max=65535, value=0)
        self._control_port.tooltip = "Merlin's control port (6341): the counter depth and frame size are read from it"
        self._control_port.visible = False
        self._source.changed.connect(self._source_changed)
        self._rows = SpinBox(label="scan rows (0: from .hdr)", min=0, max=100000, value=0)
        self._cols = SpinBox(label="scan columns", min=0, max=100000, value=0)
        self._flatfield = FileEdit(label="flat-field", mode="r", filter="*.npy *.npz *.h5 *.mib")
        self._calibration = FileEdit(label="geometry of scan", mode="r")
        self._calibration.tooltip = ("a scan file whose geometry (pixel size, camera length, voltage) applies to the "
                                     "live frames; empty: what the live file says")
        table = ClassTable.default()
        self._keep = Select(label="keep classes", choices=[(display_name(table.names[i]), i) for i in table.ids],
                            value=[2])
        self._keep.native.setMaximumHeight(80)
        self._out = FileEdit(label=_OUT_LABEL, mode="d")
        self._jobs = JobButtons("Start watching", self.start)
        self._jobs.cancel_button.text = "Stop"
        self._summary = wrapped_label()
        self.extend([self._model_path, self._source, self._input, self._control_port, self._rows, self._cols,
                     self._flatfield, self._calibration, self._keep, self._out, self._jobs, self._summary])
        self.state = None  # the LiveClassMap of the current run, set from the worker thread
        self.result = None
        self._notified: set[str] = set()
        self.layer = None
        self._shown_version = -1
        from qtpy.QtCore import QTimer

        self._timer = QTimer()
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self.refresh)

    def _source_changed(self, kind=None):
        kind = kind or self._source.value
        self._input.label = _INPUT_LABELS[kind]
        self._control_port.visible = kind == "merlin"
        self._rows.label = "scan rows (0: from .hdr)" if kind == "file" else (
            "scan rows (0: from the header)" if kind == "merlin" else "scan rows (needed)")

    def _make_source(self, kind: str, text: str, shape):
        """The frame source the widget's fields describe (raises ValueError, ImportError with the
        pip command, as the command line does)."""
        from ...pipeline.live import DectrisStreamSource, MerlinStreamSource, open_source, parse_host_port

        if kind == "merlin":
            host, port = parse_host_port(text, 6342)
            return MerlinStreamSource(host, port, shape, control_port=self._control_port.value or None)
        if kind == "dectris":
            host, port = parse_host_port(text, 9999)
            return DectrisStreamSource(host, port, shape)
        return open_source(text, shape)

    def start(self):
        from ...pipeline.live import LiveClassMap, LiveResult, check_model_before_frames, wait_ready, watch
        from ...pipeline.predict import as_model
        from ...models.persistence import needs_tensorflow, read_metadata
        from ..model_jobs import model_card

        model_path = str(self._model_path.value or "")
        if not model_path.endswith(".sedmodel"):
            self._jobs.status.value = "choose a model file (.sedmodel)"
            return
        try:  # model.json only: a CNN model's network (TensorFlow) never loads in napari's process
            card = model_card(model_path)
            in_child = needs_tensorflow(read_metadata(model_path))  # a CNN file without arrays
            if in_child:
                from ...optional import require_cnn

                require_cnn(f"The CNN model {model_path}")
        except (OSError, ValueError, ImportError) as exc:
            self._jobs.status.value = str(exc)
            return
        kind = self._source.value
        source_path = self._input.value.strip()
        if not source_path:
            self._jobs.status.value = ("give the .mib file or folder to follow" if kind == "file" else
                                       "give the stream's host:port")
            return
        shape = (self._rows.value, self._cols.value) if self._rows.value and self._cols.value else None
        if kind != "file" and in_child:
            self._jobs.status.value = ("a CNN model classifies in a child process, which follows files and folders "
                                       "only: use an FCNN or SVM model for a detector stream, or sedclassify watch")
            return
        flat, calibration, out = (_path(w) for w in (self._flatfield, self._calibration, self._out))
        geometry, metadata = None, None
        try:  # missing receiver (pip command), no scan shape for DECTRIS, no such folder: said before starting
            src = self._make_source(kind, source_path, shape)
        except (ValueError, ImportError) as exc:
            self._jobs.status.value = str(exc)
            return
        try:
            if calibration:
                from ...io import open_scan

                ref = open_scan(calibration)
                geometry = ref.geometry
                metadata = {k: ref.metadata[k] for k in ("edge_pixel_width",) if k in ref.metadata}
            # a model that needs a camera length not given: said here at once (watch checks it again
            # before it waits, and locks the outputs against another run writing the same files)
            check_model_before_frames(card, src, geometry)
        except (OSError, ValueError) as exc:
            self._jobs.status.value = live_words(str(exc))
            return
        keep = list(self._keep.value)
        self.state, self.result, self._shown_version = None, None, -1
        wait_s = FILE_WAIT_S if kind == "file" else math.inf
        # not the counts of the run before while this one waits for its frames; a file not there yet, said
        self._summary.value = ("" if kind != "file" or os.path.exists(source_path) else
                               f"waiting for {source_path} to be written (not there yet): stops after "
                               f"{FILE_WAIT_S:g} s without it")

        def work(report, cancelled):
            from ...errors import IncompatibleModelError

            def shown(state):  # the run's state from its first change (made by watch once the source is ready)
                self.state = state
                report(state.n_done, state.n_positions)

            options = dict(out_dir=out, keep=keep, flatfield=flat, geometry=geometry, metadata=metadata,
                           force=True, timeout_s=30.0)
            try:  # a stream: until the detector is armed (or Stop); a file: FILE_WAIT_S
                if not in_child:
                    return watch(as_model(model_path), src, cancel=cancelled, on_update=shown,
                                 ready_timeout_s=wait_s, **options)
                wait_ready(src, wait_s, cancelled)
            except TimeoutError:
                if cancelled():
                    return None
                raise
            except IncompatibleModelError as exc:  # the frames' detector: advice in this widget's words
                raise IncompatibleModelError(live_words(str(exc))) from exc
            except ValueError as exc:  # the outputs' lock (another run): advice in this widget's words
                raise ValueError(live_words(str(exc))) from exc
            state = LiveClassMap(src.scan_shape, card.classes.ids, keep, card.classes.names)
            state.subscribe(lambda s: report(s.n_done, s.n_positions))
            self.state = state
            # TensorFlow model: classify in a spawned child; its state changes update ours
            from ...models.tf_process import run_in_process
            from ..model_jobs import live_relay, watch_in_child

            out_ = run_in_process(watch_in_child, model_path, source_path, state.scan_shape,
                                  progress=live_relay(state), cancel=cancelled, **options)
            return LiveResult(out_["status"], state, out_["files"], out_["plan"], out_["seconds"],
                              warnings=out_.get("warnings", []))

        def returned(result):
            self.result = result
            self._shown_version = -1  # its warnings join the summary
            self.refresh()
            self.notify_warnings(result.warnings)

        def finished():
            self._timer.stop()
            self.refresh()

        self._timer.start()
        return self._jobs.launch(BackgroundJob("live classification", work, on_returned=returned,
                                               on_finished=finished))

    def notify_warnings(self, warnings):
        """Each warning not said yet (the ice ring says the camera length is off: during the run,
        and again at its end) as a napari warning."""
        from napari.utils.notifications import show_warning

        for w in warnings:
            if w not in self._notified:
                self._notified.add(w)
                show_warning(f"Live: {live_words(w)}")

    def _warnings_html(self) -> str:
        import html

        shown = list(self.state.warnings) if self.state is not None else []
        if self.result is not None:
            shown += [w for w in self.result.warnings if w not in shown]
        return "".join(f"<br><b>warning</b>: {html.escape(live_words(w), quote=False)}" for w in shown)

    def refresh(self):
        """Redraw the live layer and the summary if the state changed since the last redraw."""
        state = self.state
        if state is None or state.version == self._shown_version:
            return
        snap = state.snapshot()
        self._shown_version = snap["version"]
        table = ClassTable(state.class_names, ClassTable.default().colours) if state.class_names else None
        if self.layer is None or self.layer not in self._viewer.layers:
            self.layer = self._viewer.add_labels(snap["class_map"], name=LAYER_NAME, opacity=0.6)
            self.layer.colormap = class_colormap(table)
        else:
            self.layer.data = snap["class_map"]
        counts = {c: int((snap["class_map"] == c).sum()) for c in state.class_ids}
        lat = snap["latency"]
        line = f"{snap['status']}: {lat.get('frames', 0)} of {state.n_positions} frames, kept {int(snap['keep'].sum())}"
        if "median_ms" in lat:
            line += f", latency {lat['median_ms']:.1f} ms (p95 {lat['p95_ms']:.1f})"
        self._summary.value = line + "<br>" + legend_html(table, counts) + self._warnings_html()
        self.notify_warnings(snap["warnings"])  # said while the acquisition goes on: it can be stopped


def live_words(text: str) -> str:
    """An engine message in the plugin's words (``in_napari_words``), its geometry advice pointing
    to where a live run takes its geometry (:data:`LIVE_GEOMETRY`), not to the Scan geometry widget."""
    from ..wording import in_napari_words

    text = in_napari_words(text).replace("(Scan geometry)", LIVE_GEOMETRY)
    return text.replace("give another --out folder or --name", f"choose another '{_OUT_LABEL}'").replace(
        "the same --out and --name", f"the same '{_OUT_LABEL}'")


def _path(widget) -> str | None:
    """The path a FileEdit holds, None when empty."""
    value = str(widget.value or "")
    return None if value in ("", ".") else value
