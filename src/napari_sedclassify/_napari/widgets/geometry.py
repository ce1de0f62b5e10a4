"""Scan geometry widget: the calibration of the selected scan (camera length, pixel size,
voltage, scan step), prefilled from the file with the values nobody stated marked "assumed";
Apply stores them in the scan (``Geometry.with_values("user", ...)``) so that every later step
uses them. The width of a Medipix3 quad's wide chip-edge pixels is set there too (0: measured
from the frames; ``ScanSession.set_edge_pixel_width``). For scan files, the scan shape, the
dataset and where missing frames lie can be changed too (the file is opened again with them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, PushButton, SpinBox
from napari.utils.notifications import show_error

from ...geometry import CALIBRATION_FIELDS, Q_FIELDS
from ..jobs import BackgroundJob, JobButtons, wrapped_label
from ..layers import SCAN_KEY, find_scan
from ..pickers import scan_picker
from ..plots import form
from ..wording import EDGE_LABEL, EDGE_UNIT
from ..state import (
    DERIVED_KEY,
    LABELS_OF_KEY,
    PREDICTION_OF_KEY,
    SESSION_KEY,
    announce,
    flatfield_of,
    session_of,
    set_state,
)

GEOMETRY_KEY = "sedclassify_geometry"  # layer.metadata: (geometry, origins) last applied, announces changes
#: (field, label, unit, spin box maximum)
FIELDS = [
    ("camera_length_mm", "camera length", "mm", 1e5),
    ("pixel_size_um", "pixel size", "µm", 1e4),
    ("voltage_kv", "voltage", "kV", 3e3),
    ("scan_step_nm", "scan step", "nm", 1e6),
]
ORIGIN_TEXT = {"file": "from the file", "user": "set by you", "fitted": "fitted", "assumed": "ASSUMED",
               "unknown": "unknown", "given": "set by you", "measured": "0 = measured from the frames"}


def _field_label(label, unit, origin):
    return f"{label} ({unit}) · {ORIGIN_TEXT.get(origin, origin)}"


def layers_on_grid(viewer, scan_layer):
    """Layers that live on the grid of ``scan_layer`` and must move with it: those made for it
    (tagged or named after it) and images/labels of its scan shape at its place and scale."""
    import napari

    scan = find_scan(scan_layer)
    out = []
    for layer in viewer.layers:
        if layer == scan_layer:
            continue
        meta = layer.metadata
        tagged = scan_layer.name in (meta.get(DERIVED_KEY), meta.get(LABELS_OF_KEY), meta.get(PREDICTION_OF_KEY))
        named = layer.name.startswith(f"{scan_layer.name} ")
        same_place = np.allclose(layer.scale[-2:], scan_layer.scale[-2:]) and np.allclose(
            layer.translate[-2:], scan_layer.translate[-2:])
        grid = (isinstance(layer, (napari.layers.Image, napari.layers.Labels)) and scan is not None
                and tuple(layer.data.shape[-2:]) == tuple(scan.scan_shape) and same_place)
        if tagged or (named and same_place) or grid:
            out.append(layer)
    return out


def apply_geometry(viewer, scan_layer, geometry) -> str:
    """Give the scan of ``scan_layer`` ``geometry``: the Scan keeps its identity (the reader and the
    widgets find it by it), layers on its grid take the new scan step as their scale (nm), and a
    stored preprocessing result follows (its q axis) or is dropped when its radii were set in Å.
    Announces the change (layer.events.metadata). Returns a sentence saying what changed."""
    scan = find_scan(scan_layer)
    old = scan.geometry
    session = session_of(scan_layer)
    had_result = session.latest_result is not None
    dropped = session.set_geometry(geometry)  # the scan takes it; results follow or are dropped
    notes = []
    step = geometry.scan_step_nm
    if step and step != old.scan_step_nm:
        factor = np.asarray([step, step], float)
        for layer in [scan_layer, *layers_on_grid(viewer, scan_layer)]:
            ratio = factor / np.asarray(scan_layer.scale[-2:], float)
            layer.scale = tuple(np.asarray(layer.scale[-2:], float) * ratio)
            layer.translate = tuple(np.asarray(layer.translate[-2:], float) * ratio)
            try:
                layer.units = ("nm", "nm")
            except Exception:  # an older napari without layer units
                pass
        notes.append(f"the scan's layers are now in nm ({step:g} nm per step)")
    q_changed = any(getattr(old, n) != getattr(geometry, n) for n in Q_FIELDS)
    if had_result and q_changed:
        if dropped:
            notes.append("the centring/RIA results were made for the old q axis: run Find centres again")
        else:
            notes.append("the RIAs (in px) stay; their q axis follows")
    set_state(scan_layer, GEOMETRY_KEY, (geometry, geometry.origins))
    return "; ".join(notes)


def apply_edge_pixel_width(scan_layer, width) -> str:
    """Give the scan of ``scan_layer`` the chip-edge pixel width ``width`` (pitches; None: measured
    from the frames) when it is not the one stated already; results made with another width no
    longer hold (``ScanSession``). Announces the change. Returns a sentence saying what to redo."""
    session = session_of(scan_layer)
    if width == session.edge_pixel_width[0]:
        return ""
    session.set_edge_pixel_width(width)
    announce(scan_layer)
    said = f"{width:g} pitches" if width is not None else "measured from the frames"
    notes = [f"{EDGE_LABEL} {said}"]
    if session.latest_result is not None and session.result() is None:
        notes.append("the centring/RIA results were made with another width: run Find centres again")
    if session.calibration is not None:
        notes.append("the camera length was fitted with the old width: fit it again (RIA step)")
    return "; ".join(notes)


class GeometryWidget(Container):
    """Calibration of the selected scan, with where each value comes from; Apply stores it."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self._viewer = napari_viewer
        self._scan = scan_picker(napari_viewer)
        self._fields = {}
        for name, label, unit, top in FIELDS:
            self._fields[name] = FloatSpinBox(label=_field_label(label, unit, "unknown"), value=0.0, min=0.0,
                                              max=top, step=0.1)
        self._fields["scan_step_nm"].tooltip = "0 = unknown (lengths then count in scan steps)"
        self._shown = {}  # field -> (the scan's value, as the field shows it: rounded to its decimals)
        self._edge = FloatSpinBox(label=_field_label(EDGE_LABEL, EDGE_UNIT, "measured"), value=0.0, min=0.0, max=20.0,
                                  step=0.1)
        self._edge.tooltip = ("width of a Medipix3 quad's wide pixels along its chip boundaries, in pixel pitches "
                              "(1 = all pixels equal; 0 = measure it from the frames, even where the file states one)")
        self._apply = PushButton(text="Apply geometry")
        self._summary = wrapped_label()
        # opening the file again: scan shape, dataset, missing frames
        self._sy = SpinBox(label="scan rows", value=1, min=1, max=100000)
        self._sx = SpinBox(label="scan columns", value=1, min=1, max=100000)
        self._dataset = ComboBox(label="dataset", choices=[], nullable=True)
        self._missing_at = ComboBox(label="missing frames at", choices=[("end (interrupted)", "end"),
                                                                         ("start (lost at start)", "start")])
        self._reopen_box = form(self._sy, self._sx, self._dataset, self._missing_at)
        self._reopen = JobButtons("Open again with this scan shape", self.reopen)
        self._how = wrapped_label()
        self.extend([form(self._scan, *self._fields.values(), self._edge), self._apply, self._summary, self._how,
                     self._reopen_box, self._reopen])
        self._apply.changed.connect(lambda _=None: self.apply())
        self._scan.changed.connect(lambda _=None: self.show_scan())
        for layer in napari_viewer.layers:
            layer.events.metadata.connect(self._on_state)
        napari_viewer.layers.events.inserted.connect(self._inserted)
        self.show_scan()

    def _inserted(self, event):
        event.value.events.metadata.connect(self._on_state)
        if find_scan(event.value) is not None:  # a scan just opened: show its fields
            try:
                self._scan.reset_choices()
                self._scan.value = next(v for v in self._scan.choices if v == event.value)
            except (RuntimeError, ValueError, StopIteration):  # deleted with its viewer; not listed
                pass

    def _on_state(self, event):
        if self._scan.value is not None and event.source == self._scan.value:
            try:
                self.show_scan()
            except RuntimeError:  # deleted with its viewer
                pass

    # showing ----------------------------------------------------------------------------------
    def show_scan(self):
        """Fill the fields from the selected scan's geometry, marking where each value came from."""
        layer = self._scan.value
        scan = find_scan(layer)
        for w in [*self._fields.values(), self._edge]:
            w.enabled = scan is not None
        self._apply.enabled = scan is not None
        if scan is None:
            self._summary.value = "Open a scan (File > Open, or Open scan above)."
            self._reopen_box.visible = self._reopen.visible = False
            self._how.value = ""
            return
        g = scan.geometry
        for name, label, unit, _ in FIELDS:
            w = self._fields[name]
            w.label = _field_label(label, unit, g.origin(name))
            value = getattr(g, name)
            w.value = float(value) if value is not None else 0.0
            self._shown[name] = (value, w.value)
        width, origin = session_of(layer).edge_pixel_width
        self._edge.label = _field_label(EDGE_LABEL, EDGE_UNIT, origin)
        self._edge.value = width or 0.0
        self._shown["edge"] = (width, self._edge.value)
        assumed = [label for name, label, _, _ in FIELDS if g.origin(name) == "assumed"]
        text = f"detector {g.detector_shape[0]}x{g.detector_shape[1]} px"
        if assumed:
            text += (f"; <b>assumed</b> (defaults the file does not state): {', '.join(assumed)}. Check them: "
                     "the q axis of RIAs and every model depend on them. Apply states the values shown.")
        if not g.scan_step_nm:
            text += "<br>scan step unknown: lengths on the scan count in scan steps."
        self._summary.value = text
        self._show_reopen(scan)

    def _show_reopen(self, scan):
        source = Path(str(scan.source)) if scan.source else None
        fileish = source is not None and source.exists()
        self._reopen_box.visible = self._reopen.visible = fileish
        if not fileish:
            self._how.value = ""
            return
        meta = scan.metadata or {}
        self._sy.value, self._sx.value = scan.scan_shape
        datasets = [d for d in [meta.get("dataset"), *meta.get("other_datasets", [])] if d]
        self._dataset.choices = datasets
        self._dataset.visible = bool(datasets)
        if datasets:
            self._dataset.value = datasets[0]
        how = meta.get("scan_shape_from", "")
        missing = int(scan.missing.sum())
        text = f"scan {scan.scan_shape[0]}x{scan.scan_shape[1]}"
        if how:
            text += f" (scan shape from: {how})"
        if missing:
            text += f"; {missing} positions without a frame"
        if how and ("square" in how or "one row" in how):
            text += "<br><b>the file does not say the scan shape</b>: check it, and open again if wrong."
        self._how.value = text

    # applying ---------------------------------------------------------------------------------
    def values(self) -> dict:
        """The values in the fields (None for 0 = unknown); a field left as shown gives the scan's
        own value, not its rounding to the field's decimals (1.375 pitches shows as 1.38)."""
        return {name: self._value(name, w) for name, w in self._fields.items()}

    def _value(self, name, widget):
        value, shown = self._shown.get(name, (None, None))
        return value if shown is not None and widget.value == shown else (float(widget.value) or None)

    def apply(self):
        """Store the values shown in the selected scan: changed ones, and assumed ones (seen and
        applied), become "user" values; values from the file that were left alone keep their
        origin. Returns the new Geometry (None on error)."""
        layer = self._scan.value
        scan = find_scan(layer)
        if scan is None:
            show_error("Scan geometry: open a scan first.")
            return None
        width = self._value("edge", self._edge)
        if width is not None and width < 1:
            self._summary.value = f"{EDGE_LABEL} must be at least 1 pitch (0 = measure it from the frames)"
            show_error(f"Scan geometry: {self._summary.value}, got {width:g}")
            return None
        g = scan.geometry
        given = {}
        for name, value in self.values().items():
            old = getattr(g, name)
            if value is None:
                if old is not None and name in Q_FIELDS:
                    self._summary.value = f"{name.replace('_', ' ')} must be a positive number"
                    return None
                continue
            if old is None or abs(value - old) > 1e-9 * abs(value) or g.origin(name) == "assumed":
                given[name] = value
        try:
            geometry = g.with_values("user", **given)
        except ValueError as exc:
            self._summary.value = str(exc)
            show_error(f"Scan geometry: {exc}")
            return None
        notes = [apply_geometry(self._viewer, layer, geometry), apply_edge_pixel_width(layer, width)]
        note = "; ".join(n for n in notes if n)
        self.show_scan()
        self._summary.value += f"<br>applied: {geometry.describe()}" + (f"; {note}" if note else "")
        return geometry

    # opening again ----------------------------------------------------------------------------
    def reopen(self):
        """Open the scan's file again with the scan shape, dataset and missing-frame side chosen
        (in the background); the layer gets the new scan and its integrated image. Returns the job."""
        from ...io import open_scan

        layer = self._scan.value
        scan = find_scan(layer)
        if scan is None or not scan.source:
            show_error("Scan geometry: this scan did not come from a file.")
            return None
        shape = (int(self._sy.value), int(self._sx.value))
        dataset = self._dataset.value if self._dataset.visible else None
        missing_at = self._missing_at.value
        user = {n: getattr(scan.geometry, n) for n in CALIBRATION_FIELDS if scan.geometry.origin(n) == "user"}
        source = scan.source

        def work(report, cancelled):
            return open_scan(source, shape, dataset=dataset, missing_at=missing_at, geometry=user)

        return self._reopen.launch(BackgroundJob(f"Opening {Path(source).name} again", work,
                                                 on_returned=lambda new: self._replace(layer, new)))

    def _replace(self, layer, new):
        from ..reader import INTEGRATING, integrate_in_background

        old = find_scan(layer)
        flatfield = flatfield_of(layer)
        width, width_origin = session_of(layer).edge_pixel_width
        meta = {k: v for k, v in layer.metadata.items() if k != SESSION_KEY}  # a new scan: a new session
        meta[SCAN_KEY] = new
        meta[INTEGRATING] = True
        layer.data = np.zeros(new.scan_shape, dtype=np.float32)
        layer.metadata = meta
        if flatfield is not None and tuple(new.detector_shape) == tuple(old.detector_shape):
            session_of(layer).set_flatfield(flatfield)
        if width_origin != "file" and session_of(layer).edge_pixel_width[0] != width:
            session_of(layer).set_edge_pixel_width(width)  # what the user stated (or measured instead), kept
        step = new.geometry.scan_step_nm
        if step:
            layer.scale = (step, step)
        integrate_in_background(new, layer.name)
        self.show_scan()
