"""Diffraction view: the detector frame at the scan point under the cursor (or clicked), its
centre, its masked pixels and its RIA, in a dock with its own canvas.

Scan-space layers share the main canvas; the frame lives here, so the two spaces never fight.
The view follows the scan under the cursor (the topmost visible scan layer there), so with
several scans open it always shows a frame of the scan the cursor is on. Frames are read from
the lazy scan and prepared (gain, centre, RIA, colours) in one background thread, never on the
UI thread: the point under the cursor first (the latest request wins, so a fast sweep does not
queue up reads), then, while the cursor rests, the points around it, the way the cursor is
going first (``prefetch_radius``). Prepared frames are kept (``CACHE_SIZE``): a point already
prepared shows at once, in the mouse-move callback itself.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
from magicgui.widgets import CheckBox, Container
from napari.utils.notifications import show_error

from ..frame_info import frame_details
from ..jobs import BACKGROUND_NICE, jobs_running, lower_thread_priority
from ..layers import find_scan
from ..palette import display_name
from ..pickers import scan_picker
from ..reader import INTEGRATING
from ..light_plots import CurvePlot, FrameImage, TextLines, frame_rgba
from ..state import (
    calibration_of,
    active_scan_layer,
    clicked_point,
    flatfield_of,
    labels_layers_for,
    preprocess_of,
    scan_layer_at,
)

MARKER_LAYER = "diffraction point"
#: Frames kept ready for display (an RGBA image and the mask: 1.3 MB each at 512x512).
CACHE_SIZE = 96
#: Points around the one shown that are prepared ahead (Chebyshev distance, in scan steps).
PREFETCH_RADIUS = 2
#: While a background job runs (the integrated image of a scan just opened, preprocessing,
#: training), the prefetch thread waits, looking again this often (s): prefetched frames are a
#: guess, and on open their preprocessing (one frame at a time) competed with the integrated
#: image and the layer's first paint for the interpreter and the 2 cores. Requested frames (the
#: point under the cursor) never wait; the first point of a scan just opened (nobody pointed at
#: it) waits for the scan's integrated image: it held that image back by 0.25-0.4 s (the frame's
#: calibration sample and centring on the same 2 cores).
JOB_POLL_S = 0.05
#: The longest that first point waits for the integrated image (s).
INTEGRATION_WAIT_S = 5.0


def prepared_frame(layer, iy: int, ix: int):
    """(FrameDetails, RGBA image) of scan point (iy, ix): all the work of showing a frame, done
    off the UI thread while the cursor moves (reading the frame, centring, RIA, log colour scale)."""
    details = frame_details(layer, iy, ix)
    frame = details.frame
    finite = frame[np.isfinite(frame)]
    vmax = float(np.log1p(np.percentile(finite, 99.9))) if finite.size else 1.0
    with np.errstate(invalid="ignore"):
        image = np.log1p(np.clip(frame, 0, None))
    rgba = frame_rgba(image, max(vmax, 1e-6), details.mask)
    return replace(details, frame=None), rgba  # the counts are drawn into rgba: not kept in the cache


class FrameLoader:
    """Two daemon threads that prepare frames (:func:`prepared_frame`): one for the latest ``want``
    (an older one not yet started is dropped), one for the ``prefetch`` list, in order, at
    background priority: prefetching is a guess, it must not take the cores from the viewer
    when it builds layers or paints (on open, 24 frames prefetched around the first one
    competed with its first paint).
    Results come back on the UI thread through the Qt signal ``relay.ready`` as
    (item, urgent, prepared, error)."""

    def __init__(self):
        from qtpy.QtCore import QObject, Signal

        class Relay(QObject):
            ready = Signal(object)

        self.relay = Relay()
        self._cond = threading.Condition()
        self._wanted = None
        self._wanted_waits = None
        self._prefetch = []
        self._busy = False
        self._prefetching = False
        self._closed = False
        self._threads = None

    def _start(self):
        if self._threads is None:
            self._threads = [threading.Thread(target=self._loop, args=(urgent,), daemon=True,
                                              name=f"diffraction view frames ({kind})")
                             for urgent, kind in ((True, "requested"), (False, "prefetch"))]
            for thread in self._threads:
                thread.start()

    def want(self, item, wait_while=None):
        """Prepare ``item`` = (layer, iy, ix, state, snapshot) next; drops the prefetch list.
        ``wait_while() -> bool``: not before it says False (looked at every JOB_POLL_S s); a
        later ``want`` replaces the item and its wait."""
        with self._cond:
            self._wanted, self._wanted_waits, self._prefetch = item, wait_while, []
            self._start()
            self._cond.notify_all()

    def prefetch(self, items):
        with self._cond:
            self._prefetch = list(items)
            if self._prefetch:
                self._start()
                self._cond.notify_all()

    @property
    def busy(self) -> bool:
        """A requested (not prefetched) frame is waiting or being prepared."""
        with self._cond:
            return self._wanted is not None or self._busy

    @property
    def idle(self) -> bool:
        """Nothing requested, nothing to prefetch, nothing being prepared."""
        with self._cond:
            return self._wanted is None and not self._prefetch and not self._busy and not self._prefetching

    def close(self):
        with self._cond:
            self._closed = True
            self._wanted, self._prefetch = None, []
            self._cond.notify_all()

    def _next(self, urgent: bool):
        """The next item for the requested (``urgent``) or the prefetch thread; None once closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                if urgent and self._wanted is not None:
                    if self._wanted_waits is not None and self._wanted_waits():
                        self._cond.wait(JOB_POLL_S)
                        continue
                    item, self._wanted, self._busy = self._wanted, None, True
                    return item
                if not urgent and self._prefetch:
                    if jobs_running():  # a job (the integrated image, preprocessing) goes first
                        self._cond.wait(JOB_POLL_S)
                        continue
                    self._prefetching = True
                    return self._prefetch.pop(0)
                self._cond.wait()

    def _loop(self, urgent: bool):
        if not urgent:
            lower_thread_priority(BACKGROUND_NICE)
        while True:
            item = self._next(urgent)
            if item is None:
                return
            _layer, iy, ix, _state, snapshot = item
            try:
                prepared, error = prepared_frame(snapshot, iy, ix), None
            except Exception as exc:  # shown for a requested point; a failed prefetch is forgotten
                prepared, error = None, exc
            try:
                self.relay.ready.emit((item, urgent, prepared, error))
            except RuntimeError:  # the view was deleted meanwhile
                return
            finally:
                with self._cond:
                    if urgent:
                        self._busy = False
                    else:
                        self._prefetching = False
                    self._cond.notify_all()


class DiffractionView(Container):
    """Frame + centre marker + masked pixels, and its radial intensity average (RIA)."""

    def __init__(self, napari_viewer):
        super().__init__(layout="horizontal", labels=False)
        self._viewer = napari_viewer
        self._scan = scan_picker(napari_viewer, label="shown", follow_selection=False)  # follows the cursor
        self._scan.tooltip = "the scan shown: the one under the cursor (or clicked)"
        self._follow = CheckBox(text="follow the cursor", value=True)
        self._log = CheckBox(text="log scale RIA", value=True)
        self._info = TextLines("Move over or click the integrated image.")
        controls = Container(widgets=[self._scan, self._follow, self._log], labels=False)
        controls.native.layout().addWidget(self._info)
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
        self._pending = None  # (scan layer, iy, ix, mark) waiting to be shown
        self._previous = None  # the point shown before self.point (the way the cursor goes)
        self.prefetch_radius = PREFETCH_RADIUS
        self._loader = FrameLoader()
        self._loader.relay.ready.connect(self._prepared)
        self._log.changed.connect(lambda _=None: self.redraw())
        self._scan.changed.connect(self._picked)
        for layer in napari_viewer.layers:
            layer.events.metadata.connect(self._on_state)
        napari_viewer.layers.events.inserted.connect(lambda e: e.value.events.metadata.connect(self._on_state))
        napari_viewer.mouse_move_callbacks.append(self._on_move)
        napari_viewer.mouse_drag_callbacks.append(self._on_press)
        self.native.destroyed.connect(self._disconnect)

    @property
    def loading(self) -> bool:
        """A requested frame is still being read and prepared."""
        return self._pending is not None or self._loader.busy

    def _disconnect(self, *_):
        self._loader.close()
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
                self.request(*self.point)
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
            self.request(layer, min(iy, sy - 1), min(ix, sx - 1), after_integration=True)

    def _layer(self):
        return self._scan.value or active_scan_layer(self._viewer)

    # mouse ---------------------------------------------------------------------------
    def _on_move(self, viewer, event):
        """On every mouse move: find the scan point under the cursor; show it now when its frame
        is prepared, else ask the loader thread for it (nothing is read here)."""
        if not self._follow.value:
            return
        layer, index = scan_layer_at(self._viewer, event.position)
        if layer is None:
            return
        wanted = (layer, *index)
        if self._pending is not None and self._same(self._pending[:3], wanted):
            return
        if self._pending is None and self.point is not None and self._same(self.point, wanted):
            return
        self.request(*wanted)

    @staticmethod
    def _same(a, b):
        return a[0] == b[0] and tuple(a[1:]) == tuple(b[1:])

    def _on_press(self, viewer, event):
        """A click (press and release without dragging) pins the frame of that point."""
        layer, _ = scan_layer_at(self._viewer, event.position)
        layer = layer or self._layer()
        index = yield from clicked_point(layer, event)
        if index is not None:
            self.request(layer, *index, mark=True)

    def request(self, layer, iy: int, ix: int, mark: bool = False, after_integration: bool = False):
        """Show scan point (iy, ix) of ``layer``: at once when its frame is prepared, else as soon
        as the loader thread has prepared it (a later request replaces this one); with
        ``after_integration``, not before the scan's integrated image is in its layer."""
        if find_scan(layer) is None or not self._in_viewer(layer):
            return
        iy, ix = int(iy), int(ix)
        ready = self._cached(layer, iy, ix)
        if ready is not None:
            self._pending = None
            self._show(layer, iy, ix, ready)
            if mark:
                self._mark(layer, iy, ix)
            self._prefetch_around(layer, iy, ix)
            return
        self._pending = (layer, iy, ix, mark)
        waits = None
        if after_integration and INTEGRATING in layer.metadata:  # a dict lookup from the loader thread
            until = time.monotonic() + INTEGRATION_WAIT_S
            waits = lambda: INTEGRATING in layer.metadata and time.monotonic() < until  # noqa: E731
        self._loader.want(self._item(layer, iy, ix), waits)

    @classmethod
    def _item(cls, layer, iy, ix):
        snapshot = SimpleNamespace(metadata=dict(layer.metadata))  # the thread never touches the layer
        return (layer, iy, ix, cls._state(layer), snapshot)

    def _prepared(self, payload):
        """UI thread: a frame came back from the loader thread."""
        (layer, iy, ix, state, _), urgent, prepared, error = payload
        pending = self._pending
        is_pending = pending is not None and self._same(pending[:3], (layer, iy, ix))
        if not self._in_viewer(layer):  # its scan layer was removed meanwhile: dropped
            if is_pending:
                self._pending = None
            return
        if error is not None:
            if is_pending:
                self._pending = None
                self._info.value = f"could not read point ({iy}, {ix}) of {layer.name}: {error}"
            return
        if any(a is not b for a, b in zip(state, self._state(layer))):  # the scan's state changed meanwhile
            if is_pending:
                self._loader.want(self._item(layer, iy, ix))
            return
        self._remember(layer, iy, ix, state, prepared)
        if is_pending:
            self._pending = None
            try:
                self._show(layer, iy, ix, prepared)
            except RuntimeError:  # deleted with its viewer
                return
            if pending[3]:
                self._mark(layer, iy, ix)
            self._prefetch_around(layer, iy, ix)

    def _prefetch_around(self, layer, iy, ix):
        """Queue the points around (iy, ix) not yet prepared, those the cursor heads for first."""
        r = int(self.prefetch_radius)
        scan = find_scan(layer)
        if r <= 0 or scan is None:
            return
        sy, sx = scan.scan_shape
        dy = dx = 0
        if self._previous is not None and self._previous[0] == layer:
            dy, dx = int(np.sign(iy - self._previous[1])), int(np.sign(ix - self._previous[2]))
        around = [(iy + a, ix + b) for a in range(-r, r + 1) for b in range(-r, r + 1) if (a, b) != (0, 0)]
        # ahead first (along the last move), then the nearest
        around.sort(key=lambda p: (-((p[0] - iy) * dy + (p[1] - ix) * dx), max(abs(p[0] - iy), abs(p[1] - ix))))
        items = [self._item(layer, y, x) for y, x in around
                 if 0 <= y < sy and 0 <= x < sx and self._cached(layer, y, x, touch=False) is None]
        self._loader.prefetch(items[: CACHE_SIZE // 2])

    # frames kept ready ---------------------------------------------------------------
    @staticmethod
    def _state(layer):
        """What a prepared frame depends on besides the point: scan (and geometry), flat-field, results."""
        scan = find_scan(layer)
        return scan, getattr(scan, "geometry", None), flatfield_of(layer), preprocess_of(layer)

    def _cached(self, layer, iy, ix, touch: bool = True):
        state = self._state(layer)
        item = self._cache.get((id(state[0]), iy, ix))
        if item is None or any(a is not b for a, b in zip(item[0], state)):
            return None
        if touch:
            self._cache.move_to_end((id(state[0]), iy, ix))
        return item[1]

    def _remember(self, layer, iy, ix, state, prepared):
        self._cache[(id(state[0]), iy, ix)] = (state, prepared)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    # drawing -------------------------------------------------------------------------
    def show_point(self, layer, iy: int, ix: int, mark: bool = False):
        """Show the frame of scan point (iy, ix) of ``layer`` now; ``mark`` also marks it on the scan."""
        if find_scan(layer) is None or not self._in_viewer(layer):
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

    def _in_viewer(self, layer) -> bool:
        """Whether ``layer`` is still one of the viewer's layers (False too once the viewer is gone)."""
        try:
            return any(item == layer for item in self._viewer.layers)  # == sees through plugin proxies
        except RuntimeError:
            return False

    def _show(self, layer, iy, ix, prepared):
        if self.point is not None and not self._same(self.point, (layer, iy, ix)):
            self._previous = self.point
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
            self.request(*self.point)

    def _draw(self, prepared):
        details, rgba = prepared
        layer, iy, ix = self.point
        scan = find_scan(layer)
        calibration = calibration_of(layer)
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
