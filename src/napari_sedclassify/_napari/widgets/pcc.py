"""PCC widget: click a scan point, get its Pearson correlation map with every other point as a
layer (the paper's Fig. 4b), on RIAs or on binned frames."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, SpinBox
from napari.utils.notifications import show_error

from ..jobs import BackgroundJob, JobButtons, short_message, wrapped_label
from ..layers import find_scan
from ..pickers import scan_picker
from ..plots import form
from ..state import clicked_point, flatfield_of, preprocess_of, scan_layer_at, set_layer

RIA = "ria"
FRAMES = "frames"


def pcc_layer_name(scan_layer) -> str:
    return f"{scan_layer.name} PCC"


class PCCWidget(Container):
    """Pearson correlation of one scan point with all others, following clicks on the scan.

    The standardised features of a scan are prepared once (RIAs from preprocessing outside the
    direct beam, or binned frames computed in the background); each click is then one
    matrix-vector product.
    """

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self._viewer = napari_viewer
        self._scan = scan_picker(napari_viewer)
        self._features = ComboBox(
            label="features", choices=[("RIA", RIA), ("binned frames", FRAMES)], value=RIA
        )
        self._bin = SpinBox(label="frame binning (px)", value=8, min=1, max=64)
        self._follow = CheckBox(text="correlate the clicked point", value=True)
        self._jobs = JobButtons("Prepare features", self.prepare)
        self._summary = wrapped_label("Click a point of the integrated image.")
        self.extend([form(self._scan, self._features, self._bin), self._follow, self._jobs, self._summary])
        self._cache = {}  # (layer name, features, bin, result id) -> PCC
        napari_viewer.mouse_drag_callbacks.append(self._on_press)
        self.native.destroyed.connect(self._disconnect)

    def _disconnect(self, *_):
        if self._on_press in self._viewer.mouse_drag_callbacks:
            self._viewer.mouse_drag_callbacks.remove(self._on_press)

    def _key(self, layer):
        """What the prepared features depend on: the scan, the feature kind and its inputs."""
        if self._features.value == RIA:
            return (layer.name, RIA, id(preprocess_of(layer)))
        return (layer.name, FRAMES, int(self._bin.value), id(flatfield_of(layer)))

    def prepare(self):
        """Build the PCC features of the selected scan: at once for RIAs, in the background for
        binned frames. Returns the job (frames), True when ready, or None on error."""
        from ...processing import PCC, frame_features

        layer = self._scan.value
        scan = find_scan(layer)
        if scan is None:
            show_error("PCC: open a scan first (File > Open or File > Open Sample).")
            return None
        key = self._key(layer)
        if key in self._cache:
            return True
        if self._features.value == RIA:
            result = preprocess_of(layer)
            if result is None:
                show_error("PCC on RIAs: compute the RIAs first (Centring or RIA widget), or use binned frames.")
                return None
            try:
                self._cache[key] = result.pcc()
            except ValueError as exc:
                show_error(f"PCC: {short_message(exc)}")
                return None
            self._summary.value = f"RIA features ready ({self._cache[key].n_features} bins); click a point."
            return True
        bin_px = int(self._bin.value)
        flatfield = flatfield_of(layer)

        def work(report, cancelled):
            feats = frame_features(scan, bin=bin_px, flatfield=flatfield, progress=report, cancel=cancelled)
            return PCC(feats, scan.missing)

        def done(pcc):
            self._cache[key] = pcc
            self._summary.value = f"binned-frame features ready ({pcc.n_features} px); click a point."

        return self._jobs.launch(BackgroundJob(f"PCC features of {layer.name}", work, on_returned=done))

    def _on_press(self, viewer, event):
        if not self._follow.value:
            return
        active = viewer.layers.selection.active
        if getattr(active, "mode", "pan_zoom") != "pan_zoom":  # drawing or painting, not picking
            return
        under, _ = scan_layer_at(viewer, event.position)  # the scan clicked on, with several open
        if under is not None and under != self._scan.value:
            try:
                self._scan.value = under
            except ValueError:  # not listed (yet)
                pass
        index = yield from clicked_point(self._scan.value, event)
        if index is not None:
            self.correlate(*index)

    def correlate(self, iy: int, ix: int):
        """PCC map of scan point (iy, ix) as the layer '<scan> PCC'; returns the layer (None when
        the features are not ready yet: RIAs are prepared on the spot, frames in the background)."""
        layer = self._scan.value
        if layer is None:
            return None
        key = self._key(layer)
        if key not in self._cache:
            ready = self.prepare()
            if ready is not True:
                if ready is not None:
                    self._summary.value = "Preparing binned frames… click again when ready."
                return None
        pcc_map = self._cache[key].row((int(iy), int(ix)))
        others = pcc_map.copy()
        others[iy, ix] = np.nan
        finite = others[np.isfinite(others)]
        limits = tuple(float(v) for v in np.percentile(finite, [2, 99.5])) if finite.size else (-1.0, 1.0)
        if limits[1] <= limits[0]:
            limits = (limits[0] - 1e-3, limits[0] + 1e-3)
        out = set_layer(
            self._viewer, pcc_layer_name(layer), pcc_map, like=layer, colormap="viridis", contrast_limits=limits,
            metadata={"pcc_point": (int(iy), int(ix))},
        )
        self._viewer.layers.selection.active = layer  # keep clicks going to the scan
        on = "RIAs" if self._features.value == RIA else "binned frames"
        self._summary.value = (
            f"PCC of point ({iy}, {ix}) on {on}: {np.nanmin(others):.3f} to {np.nanmax(others):.3f} "
            f"(colours {limits[0]:.3f} to {limits[1]:.3f})"
        )
        return out
