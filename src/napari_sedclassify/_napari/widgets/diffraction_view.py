"""Diffraction view: the detector frame at the scan point under the cursor (or clicked), its
centre, its masked pixels and its RIA, in a dock with its own canvas.

Scan-space layers share the main canvas; the frame lives here, so the two spaces never fight.
The view follows the scan under the cursor (the topmost visible scan layer there), so with
several scans open it always shows a frame of the scan the cursor is on. Only the one frame
shown is read from the lazy scan: while the cursor moves, at most one frame every 40 ms, read
and prepared in a worker thread (the event loop never waits for the file); the last frames
shown are kept, so going back to a point costs nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
from magicgui.widgets import CheckBox, Container

from ..frame_info import frame_details
from ..jobs import wrapped_label
from ..layers import find_scan
from ..palette import display_name
from ..pickers import scan_picker
from ..light_plots import CurvePlot, FrameImage, frame_rgba
from ..state import (
    CALIBRATION_KEY,
    active_scan_layer,
    clicked_point,
    flatfield_of,
    labels_layers_for,
    preprocess_of,
    scan_layer_at,
)

MARKER_LAYER = "diffraction point"
#: Frames kept ready for display (a few hundred kB each at 256x256).
CACHE_SIZE = 64


def prepared_frame(layer, iy: int, ix: int):
    """(FrameDetails, RGBA image) of scan point (iy, ix): all the work of showing a frame, done
    off the UI thread while the cursor moves (reading the frame, centring, RIA, log colour scale)."""
    details = frame_details(layer, iy, ix)
    frame = details.frame
    finite = frame[np.isfinite(frame)]
    vmax = float(np.log1p(np.percentile(finite, 99.9))) if finite.size else 1.0
    with np.errstate(invalid="ignore"):
        image = np.log1p(np.clip(frame, 0, None))
    return details, frame_rgba(image, max(vmax, 1e-6), details.mask)


class DiffractionView(Container):
    """Frame + centre marker + masked pixels, and its radial intensity average (RIA)."""

    def __init__(self, napari_viewer):
        from qtpy.QtCore import QTimer

        super().__init__(layout="horizontal", labels=False)
        self._viewer = napari_viewer
        self._scan = scan_picker(napari_viewer, label="shown")
        self._scan.tooltip = "the scan shown: the one under the cursor (or clicked)"
        self._follow = CheckBox(text="follow the cursor", value=True)
        self._log = CheckBox(text="log scale RIA", value=True)
        self._info = wrapped_label("Move over or click the integrated image.")
        controls = Container(widgets=[self._scan, self._follow, self._log, self._info], labels=False)
        controls.native.setMaximumWidth(260)
        controls.native.layout().addStretch(1)
        self.append(controls)
        # painted with QPainter: a matplotlib redraw per mouse move would stall the viewer
        self.frame_view = FrameImage()
        self.ria_view = CurvePlot()
        self.ria_view.set_message("RIA of the frame shown")
        self.native.layout().addWidget(self.frame_view, 1)
        self.native.layout().addWidget(self.ria_view, 2)
        self.native.setMinimumHeight(240)
        self._cache = OrderedDict()  # (scan id, iy, ix) -> (scan, flat-field, result, prepared frame)
        self.point = None  # (scan layer, iy, ix) on display
        self._pending = None  # (scan layer, iy, ix) waiting to be shown
        self._worker = None  # the worker reading a frame, while one runs
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(40)  # frames are read at most every 40 ms while the cursor moves
        self._timer.timeout.connect(self._show_pending)
        self._log.changed.connect(lambda _=None: self.redraw())
        self._scan.changed.connect(self._picked)
        for layer in napari_viewer.layers:
            layer.events.metadata.connect(self._on_state)
        napari_viewer.layers.events.inserted.connect(lambda e: e.value.events.metadata.connect(self._on_state))
        napari_viewer.mouse_move_callbacks.append(self._on_move)
        napari_viewer.mouse_drag_callbacks.append(self._on_press)
        self.native.destroyed.connect(self._disconnect)

    def _disconnect(self, *_):
        try:
            self._timer.stop()
        except RuntimeError:  # already deleted with the application
            pass
        for callbacks, cb in (
            (self._viewer.mouse_move_callbacks, self._on_move),
            (self._viewer.mouse_drag_callbacks, self._on_press),
        ):
            if cb in callbacks:
                callbacks.remove(cb)

    def _on_state(self, event):
        """A flat-field, centring result or geometry arrived for the scan on display: show it."""
        if self.point is not None and event.source == self.point[0]:  # == sees through napari's plugin proxies
            try:
                self.show_point(*self.point)
            except RuntimeError:  # this view was deleted with its viewer
                pass

    def _picked(self, layer):
        """The user chose another scan in the list: show the same point there (or its first)."""
        if layer is None or (self.point is not None and self.point[0] == layer):
            return
        scan = find_scan(layer)
        iy, ix = self.point[1:] if self.point is not None else (0, 0)
        if scan is not None:
            sy, sx = scan.scan_shape
            self.show_point(layer, min(iy, sy - 1), min(ix, sx - 1))

    def _layer(self):
        return self._scan.value or active_scan_layer(self._viewer)

    # mouse ---------------------------------------------------------------------------
    def _on_move(self, viewer, event):
        """Cheap on every mouse move: find the scan point under the cursor and queue it."""
        if not self._follow.value:
            return
        layer, index = scan_layer_at(self._viewer, event.position)
        if layer is None:
            return
        wanted = (layer, *index)
        if self._pending is not None and self._same(self._pending, wanted):
            return
        if self._pending is None and self.point is not None and self._same(self.point, wanted):
            return
        self._pending = wanted
        if not self._timer.isActive():
            self._timer.start()

    @staticmethod
    def _same(a, b):
        return a[0] == b[0] and tuple(a[1:]) == tuple(b[1:])

    def _on_press(self, viewer, event):
        """A click (press and release without dragging) pins the frame of that point."""
        layer, _ = scan_layer_at(self._viewer, event.position)
        layer = layer or self._layer()
        index = yield from clicked_point(layer, event)
        if index is not None:
            self._pending = None
            self.show_point(layer, *index, mark=True)

    def _show_pending(self):
        """Show the queued point: at once when its frame is ready, else read it in a worker."""
        if self._pending is None or self._worker is not None:
            return  # a frame is being read: the latest queued point follows when it is done
        layer, iy, ix = self._pending
        self._pending = None
        if find_scan(layer) is None:
            return
        ready = self._cached(layer, iy, ix)
        if ready is not None:
            self._show(layer, iy, ix, ready)
            return
        self._read_in_worker(layer, iy, ix)

    def _read_in_worker(self, layer, iy, ix):
        from napari.qt.threading import create_worker

        state = self._state(layer)
        snapshot = SimpleNamespace(metadata=dict(layer.metadata))  # the worker never touches the layer
        worker = create_worker(prepared_frame, snapshot, iy, ix, _start_thread=False)

        def returned(prepared):
            self._remember(layer, iy, ix, state, prepared)
            if self._pending is None:  # the cursor has not moved on meanwhile
                self._show(layer, iy, ix, prepared)

        def errored(exc):
            self._info.value = f"could not read point ({iy}, {ix}) of {layer.name}: {exc}"

        def finished():
            self._worker = None
            if self._pending is not None:
                self._timer.start()

        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.finished.connect(finished)
        self._worker = worker
        worker.start()

    # frames kept ready ---------------------------------------------------------------
    @staticmethod
    def _state(layer):
        """What a prepared frame depends on besides the point: scan (and geometry), flat-field, results."""
        scan = find_scan(layer)
        return scan, getattr(scan, "geometry", None), flatfield_of(layer), preprocess_of(layer)

    def _cached(self, layer, iy, ix):
        state = self._state(layer)
        item = self._cache.get((id(state[0]), iy, ix))
        if item is None or any(a is not b for a, b in zip(item[0], state)):
            return None
        self._cache.move_to_end((id(state[0]), iy, ix))
        return item[1]

    def _remember(self, layer, iy, ix, state, prepared):
        self._cache[(id(state[0]), iy, ix)] = (state, prepared)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    # drawing -------------------------------------------------------------------------
    def show_point(self, layer, iy: int, ix: int, mark: bool = False):
        """Show the frame of scan point (iy, ix) of ``layer`` now; ``mark`` also marks it on the scan."""
        from napari.utils.notifications import show_error

        if find_scan(layer) is None:
            return
        iy, ix = int(iy), int(ix)
        try:
            prepared = self._cached(layer, iy, ix)
            if prepared is None:
                state = self._state(layer)
                prepared = prepared_frame(layer, iy, ix)
                self._remember(layer, iy, ix, state, prepared)
            self._show(layer, iy, ix, prepared)
        except Exception as exc:  # a damaged frame must not take the viewer down
            show_error(f"Diffraction view: could not show point ({iy}, {ix}) of {layer.name}: {exc}")
            return
        if mark:
            self._mark(layer, iy, ix)

    def _show(self, layer, iy, ix, prepared):
        self.point = (layer, int(iy), int(ix))
        if self._scan.value != layer:
            with self._scan.changed.blocked():
                self._scan.value = layer
        self._draw(prepared)

    def _mark(self, layer, iy, ix):
        from ..state import scan_layer_spatial

        if MARKER_LAYER in self._viewer.layers:
            marker = self._viewer.layers[MARKER_LAYER]
            marker.data = np.array([[iy, ix]], dtype=float)
            spatial = scan_layer_spatial(layer)
            marker.scale, marker.translate = spatial["scale"], spatial["translate"]
        else:
            self._viewer.add_points(
                np.array([[iy, ix]], dtype=float),
                name=MARKER_LAYER,
                symbol="cross",
                size=0.8,
                face_color="#00e5ffff",
                border_width=0,
                **scan_layer_spatial(layer),
            )
            self._viewer.layers.selection.active = layer

    def _class_at(self, layer, iy, ix):
        from ...classes import ClassTable

        names = ClassTable.default().names
        found = []
        for labels in labels_layers_for(self._viewer, layer, predictions=True):
            cid = int(labels.data[iy, ix])
            if cid in names:
                found.append(f"{labels.name}: {display_name(names[cid])}")
        return "<br>".join(found) or None

    def redraw(self):
        """Draw the point on display again (after a change of options or state)."""
        if self.point is not None:
            self.show_point(*self.point)

    def _draw(self, prepared):
        details, rgba = prepared
        layer, iy, ix = self.point
        scan = find_scan(layer)
        calibration = layer.metadata.get(CALIBRATION_KEY)
        rings = () if calibration is None else [scan.geometry.d_A_to_radius_px(d) for d in calibration.d_A]
        self.frame_view.set_frame(rgba, details.centre, f"{layer.name} ({iy}, {ix})", rings_px=rings)
        if details.ria is not None:
            self.ria_view.set_curve(details.radii, details.ria, log=self._log.value, xlabel="radius (px)",
                                    ylabel="RIA (counts/px)")
        else:
            self.ria_view.set_message("no beam found in this frame")
        parts = [f"{layer.name}", f"point ({iy}, {ix})"]
        step = scan.geometry.scan_step_nm
        if step:
            parts[-1] += f" at ({iy * step:g}, {ix * step:g}) nm"
        if scan.missing[iy, ix]:
            parts.append("missing frame")
        if details.centre is not None:
            parts.append(f"centre ({details.centre[0]:.1f}, {details.centre[1]:.1f}) px [{details.centre_kind}]")
        if details.mask is not None:
            parts.append(f"{int(details.mask.sum())} masked px" + ("" if flatfield_of(layer) else " (no flat-field)"))
        label = self._class_at(layer, iy, ix)
        if label:
            parts.append(label)
        self._info.value = "<br>".join(parts)
