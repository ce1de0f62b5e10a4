"""Diffraction view: the detector frame at the scan point under the cursor (or clicked), its
centre, its masked pixels and its RIA, in a dock with its own canvas.

Scan-space layers share the main canvas; the frame lives here, so the two spaces never fight.
Only the one frame shown is read from the lazy scan.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, Container

from ..frame_info import frame_details
from ..jobs import wrapped_label
from ..layers import find_scan
from ..palette import display_name
from ..pickers import scan_picker
from ..plots import plot_canvas
from ..state import active_scan_layer, flatfield_of, labels_layers_for, scan_index_at

MARKER_LAYER = "diffraction point"


class DiffractionView(Container):
    """Frame + centre marker + masked pixels, and its radial intensity average (RIA)."""

    def __init__(self, napari_viewer):
        from qtpy.QtCore import QTimer

        super().__init__(layout="horizontal", labels=False)
        self._viewer = napari_viewer
        self._scan = scan_picker(napari_viewer)
        self._follow = CheckBox(text="follow the cursor", value=True)
        self._log = CheckBox(text="log scale RIA", value=True)
        self._info = wrapped_label("Move over or click the integrated image.")
        controls = Container(widgets=[self._scan, self._follow, self._log, self._info], labels=False)
        controls.native.setMaximumWidth(260)
        controls.native.layout().addStretch(1)
        self.append(controls)
        self.figure, self.canvas = plot_canvas(7.0, 2.8, min_height=240)
        self.native.layout().addWidget(self.canvas, 1)
        self._ax_frame = self.figure.add_subplot(1, 2, 1)
        self._ax_ria = self.figure.add_subplot(1, 2, 2)
        self.point = None  # (scan layer, iy, ix) on display
        self._pending = None
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(40)  # frames are read at most every 40 ms while the cursor moves
        self._timer.timeout.connect(self._show_pending)
        self._log.changed.connect(lambda _=None: self.redraw())
        for layer in napari_viewer.layers:
            layer.events.metadata.connect(self._on_state)
        napari_viewer.layers.events.inserted.connect(lambda e: e.value.events.metadata.connect(self._on_state))
        napari_viewer.mouse_move_callbacks.append(self._on_move)
        napari_viewer.mouse_drag_callbacks.append(self._on_press)
        self.native.destroyed.connect(self._disconnect)

    def _disconnect(self, *_):
        for callbacks, cb in (
            (self._viewer.mouse_move_callbacks, self._on_move),
            (self._viewer.mouse_drag_callbacks, self._on_press),
        ):
            if cb in callbacks:
                callbacks.remove(cb)

    def _on_state(self, event):
        """A flat-field or centring result arrived for the scan on display: show it."""
        if self.point is not None and event.source == self.point[0]:  # == sees through napari's plugin proxies
            try:
                self.show_point(*self.point)
            except RuntimeError:  # this view was deleted with its viewer
                pass

    def _layer(self):
        return self._scan.value or active_scan_layer(self._viewer)

    # mouse ---------------------------------------------------------------------------
    def _on_move(self, viewer, event):
        if not self._follow.value:
            return
        layer = self._layer()
        index = scan_index_at(layer, event.position)
        if index is None or (self.point is not None and self.point[1:] == index):
            return
        self._pending = (layer, *index)
        if not self._timer.isActive():
            self._timer.start()

    def _on_press(self, viewer, event):
        """A click (press and release without dragging) pins the frame of that point."""
        layer = self._layer()
        index = scan_index_at(layer, event.position)
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        if index is not None and not dragged:
            self.show_point(layer, *index, mark=True)

    def _show_pending(self):
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.show_point(*pending)

    # drawing -------------------------------------------------------------------------
    def show_point(self, layer, iy: int, ix: int, mark: bool = False):
        """Show the frame of scan point (iy, ix) of ``layer``; ``mark`` also marks it on the scan."""
        from napari.utils.notifications import show_error

        scan = find_scan(layer)
        if scan is None:
            return
        self.point = (layer, int(iy), int(ix))
        try:
            self.redraw()
        except Exception as exc:  # a damaged frame must not take the viewer down
            show_error(f"Diffraction view: could not show point ({iy}, {ix}) of {layer.name}: {exc}")
            return
        if mark:
            self._mark(layer, iy, ix)

    def _mark(self, layer, iy, ix):
        from ..state import scan_layer_spatial

        if MARKER_LAYER in self._viewer.layers:
            self._viewer.layers[MARKER_LAYER].data = np.array([[iy, ix]], dtype=float)
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

        for labels in labels_layers_for(self._viewer, layer):
            cid = int(labels.data[iy, ix])
            names = ClassTable.default().names
            if cid in names:
                return f"{labels.name}: {display_name(names[cid])}"
        return None

    def redraw(self):
        if self.point is None:
            return
        layer, iy, ix = self.point
        scan = find_scan(layer)
        details = frame_details(layer, iy, ix)
        frame = details.frame
        ax = self._ax_frame
        ax.clear()
        finite = frame[np.isfinite(frame)]
        vmax = np.log1p(np.percentile(finite, 99.9)) if finite.size else 1.0
        ax.imshow(np.log1p(np.clip(frame, 0, None)), cmap="magma", vmin=0, vmax=max(vmax, 1e-6))
        if details.mask is not None and details.mask.any():
            overlay = np.zeros(details.mask.shape + (4,))
            overlay[details.mask] = (0.0, 1.0, 0.2, 1.0)
            ax.imshow(overlay, interpolation="nearest")
        if details.centre is not None:
            ax.plot(details.centre[1], details.centre[0], "+", color="#00e5ff", ms=14, mew=2)
        ax.set_title(f"{layer.name} ({iy}, {ix})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax = self._ax_ria
        ax.clear()
        if details.ria is not None:
            ax.plot(details.radii, details.ria, color="#3b8beb", lw=1)
            if self._log.value:
                ax.set_yscale("log")
            ax.set_xlabel("radius (px)", fontsize=8)
            ax.set_ylabel("RIA (counts/px)", fontsize=8)
            ax.tick_params(labelsize=7)
        else:
            ax.text(0.5, 0.5, "no beam found in this frame", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        self.canvas.draw_idle()
        parts = [f"point ({iy}, {ix})"]
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
