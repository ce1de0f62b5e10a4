"""Virtual image widget: bright field / annular dark field / total intensity of a scan."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, PushButton
from napari.utils.notifications import show_error

from ..layers import find_scan, scan_layers
from ..state import DERIVED_KEY


class VirtualImageWidget(Container):
    """Compute a virtual image of the selected scan in the background and add it as a layer."""

    def __init__(self, napari_viewer):
        super().__init__()
        self._viewer = napari_viewer
        self._scan = ComboBox(label="scan", choices=self._scan_choices)
        self._inner = FloatSpinBox(label="inner radius (px)", value=0.0, min=0.0, max=4096.0)
        self._outer = FloatSpinBox(label="outer radius (px, 0 = all)", value=0.0, min=0.0, max=4096.0)
        self._run = PushButton(text="Compute virtual image")
        self._run.changed.connect(self.run)
        self.extend([self._scan, self._inner, self._outer, self._run])
        self._viewer.layers.events.inserted.connect(lambda e: self._scan.reset_choices())
        self._viewer.layers.events.removed.connect(lambda e: self._scan.reset_choices())
        self.worker = None

    def _scan_choices(self, _widget=None):
        return [(layer.name, layer) for layer in scan_layers(self._viewer)]

    def run(self, _=None):
        """Start the computation in a thread worker; returns the worker."""
        from napari.qt.threading import thread_worker
        from ...processing.virtual import virtual_image

        layer = self._scan.value
        scan = find_scan(layer)
        if scan is None:
            show_error("Virtual image: open a scan first (File > Open or File > Open Sample).")
            return None
        inner = float(self._inner.value)
        outer = float(self._outer.value) or None
        name = f"{layer.name} virtual [{inner:g}, {outer or 'inf'}) px"

        @thread_worker
        def compute():
            return np.asarray(virtual_image(scan, inner, outer))

        def done(img):
            self._viewer.add_image(img, name=name, scale=layer.scale, translate=layer.translate, units=layer.units,
                                   colormap="gray", metadata={DERIVED_KEY: layer.name})

        worker = compute()
        worker.returned.connect(done)
        worker.errored.connect(lambda e: show_error(f"Virtual image of {layer.name}: {e}"))
        worker.start()
        self.worker = worker
        return worker
