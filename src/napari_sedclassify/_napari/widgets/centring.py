"""Centring widget: direct-beam centre of every frame, the descan fit and its residuals."""

from __future__ import annotations

from functools import partial

import numpy as np
from magicgui.widgets import Container, FloatSpinBox, PushButton, RadioButtons, SpinBox
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

from ..jobs import JobButtons, wrapped_label
from ..layers import find_scan
from ..pickers import scan_picker
from ..plots import FigureView, form
from ..preprocessing import preprocess_job
from ..state import preprocess_of, set_layer

CHOICES = [("per-frame centres", "per_frame"), ("fitted descan centres", "fitted")]


class CentringWidget(Container):
    """Find the centres in the background; show the centre x / centre y / descan residual maps
    (in the widget's figure, and as layers on request); choose whether RIAs and crops use
    per-frame or fitted centres."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self._viewer = napari_viewer
        self._scan = scan_picker(napari_viewer)
        self._centring = RadioButtons(label="use", choices=CHOICES, value="per_frame")
        self._beam = FloatSpinBox(label="beam radius (px, 0 = measure)", value=0.0, min=0.0, max=4096.0)
        self._degree = SpinBox(label="descan fit degree", value=3, min=1, max=6)
        self._jobs = JobButtons("Find centres", self.run)
        self._summary = wrapped_label("")
        self.extend([form(self._scan, self._centring, self._beam, self._degree), self._jobs, self._summary])
        self.canvas = FigureView(4.0, 1.9, min_height=170)
        self._maps_generation = 0  # the map layers of older results stop being added
        self.native.layout().addWidget(self.canvas)
        # the maps as layers only when asked: napari takes 130-300 ms of the event loop to add each
        # one on a software-rendered desktop (its layer controls), and the figure above shows them
        self._maps_button = PushButton(text="Show the maps as layers")
        self._maps_button.changed.connect(lambda _=None: self.show_result(as_layers=True))
        self._maps_button.visible = False
        self.append(self._maps_button)
        self._centring.changed.connect(self._centring_changed)
        self._scan.changed.connect(lambda _=None: self.show_result())
        self.show_result()

    def params(self):
        from ...processing import PreprocessParams

        return PreprocessParams(
            centring=self._centring.value,
            beam_radius_px=self._beam.value or None,
            descan_degree=int(self._degree.value),
        )

    def run(self):
        """Preprocess the selected scan in a thread worker; returns the job."""
        layer = self._scan.value
        if find_scan(layer) is None:
            show_error("Centring: open a scan first (File > Open or File > Open Sample).")
            return None
        job = preprocess_job(layer, self.params(), on_done=lambda result: self._done(layer))
        return self._jobs.launch(job)

    def _done(self, layer):
        """The pass of ``layer`` ended: its result is shown when that scan is still the one chosen
        here (never under another scan's name; choosing it again shows it)."""
        try:
            if self._scan.value is layer:
                self.show_result(layer)
        except RuntimeError:  # deleted with its viewer
            pass

    def _centring_changed(self, value):
        result = preprocess_of(self._scan.value)
        if result is not None and result.params.centring != value:
            self.run()  # RIAs and crops follow the chosen centres

    @staticmethod
    def maps(layer, result) -> dict:
        """{layer name: (map, colormap)}: centre x, centre y and descan residual (px) of the centring
        ``result`` of the scan ``layer``."""
        centres = np.asarray(result.centres)
        residual = (
            np.hypot(*np.moveaxis(np.asarray(result.descan.residuals), -1, 0))
            if result.descan is not None
            else np.full(centres.shape[:2], np.nan)
        )
        return {
            f"{layer.name} centre x (px)": (centres[..., 1], "viridis"),
            f"{layer.name} centre y (px)": (centres[..., 0], "viridis"),
            f"{layer.name} descan residual (px)": (residual, "magma"),
        }

    def _show_maps(self, layer, items, generation=None):
        """Add or update the map layers, hidden and below the integrated image (they must not cover
        it; tick them to look), one per turn of the event loop: napari takes about 250 ms to add a
        layer on a software-rendered desktop, and the viewer draws in between."""
        if generation is None:
            self._maps_generation = generation = self._maps_generation + 1
        if generation != self._maps_generation:  # a newer result is being shown
            return
        try:
            if layer not in self._viewer.layers:  # its scan was removed meanwhile: no maps of a scan gone
                return
        except RuntimeError:  # the viewer closed meanwhile
            return
        (name, (data, cmap)), rest = items[0], items[1:]
        finite = data[np.isfinite(data)]
        limits = (float(finite.min()), float(finite.max()) + 1e-6) if finite.size else (0.0, 1.0)
        try:
            layers = self._viewer.layers
            existed = name in layers
            new = set_layer(self._viewer, name, data, like=layer, colormap=cmap, contrast_limits=limits, visible=False)
            if not existed:
                layers.move(layers.index(new), layers.index(layer))
            layers.selection.active = layer
        except (KeyError, ValueError, RuntimeError):  # the scan layer or the viewer went meanwhile
            return
        if rest:
            QTimer.singleShot(20, lambda: self._show_maps(layer, rest, generation))

    def show_result(self, layer=None, as_layers: bool = False):
        """The small overview figure of the centring result of ``layer``; its maps as layers with
        ``as_layers``, or when they are layers already (then updated)."""
        layer = layer or self._scan.value
        result = preprocess_of(layer)
        self.canvas.setVisible(result is not None)
        self._maps_button.visible = result is not None
        if result is None:
            self._summary.value = ""
            return
        maps = self.maps(layer, result)
        if as_layers or any(name in self._viewer.layers for name in maps):
            # the layers from the next turn of the event loop on, one per turn
            QTimer.singleShot(20, partial(self._show_maps, layer, list(maps.items())))
        self.canvas.render(partial(_draw_maps, {title.replace(f"{layer.name} ", ""): m for title, m in maps.items()}))
        found = int(result.beam_found.sum())
        rms = f"{result.descan.residual_rms_px:.2f} px" if result.descan is not None else "no fit"
        used = "fitted descan" if result.params.centring == "fitted" else "per-frame"
        width = result.resolved.get("edge_pixel_width", 1.0)
        wide = (f"; chip-edge pixels {width:g} pitches wide ({result.resolved.get('edge_pixel_width_origin', 'file')})"
                if width != 1 else "")
        self._summary.value = (
            f"beam found in {found} of {result.beam_found.size} frames; descan residual RMS {rms}; "
            f"RIAs use {used} centres{wide}"
        )
        if not self._jobs.running:  # never "done" while a pass of this step runs (its end says so)
            self._jobs.status.value = f"done: centres of {layer.name}"


def _draw_maps(maps, figure) -> None:
    """The centring maps side by side, each with its colour bar."""
    for ax_i, (title, (data, cmap)) in enumerate(maps.items()):
        ax = figure.add_subplot(1, len(maps), ax_i + 1)
        im = ax.imshow(data, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        figure.colorbar(im, ax=ax, shrink=0.7).ax.tick_params(labelsize=6)
