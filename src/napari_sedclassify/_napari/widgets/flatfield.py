"""Flat-field widget: load a flat-field (gain) acquisition for a scan, see its gain map and
the dead/hot pixels it masks."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from magicgui.widgets import Container, FileEdit, PushButton
from napari.utils.notifications import show_error

from ..jobs import BackgroundJob, JobButtons, wrapped_label
from ..layers import find_scan
from ..pickers import scan_picker
from ..plots import FigureView, form
from ..state import FLATFIELD_KEY, FLOOD_KEY, flatfield_of, set_state


def flatfield_beside(layer):
    """The flat-field that came with a scan: a flood stack in the layer's metadata (sample
    data), or the file its metadata names next to the scan file (simulated scans on disk)."""
    flood = layer.metadata.get(FLOOD_KEY)
    if flood is not None:
        return flood
    scan = find_scan(layer)
    name = (scan.metadata or {}).get("files", {}).get("flatfield") if scan is not None else None
    if name and scan.source:
        path = Path(scan.source).parent / name
        if path.exists():
            return path
    return None


class FlatFieldWidget(Container):
    """Load a flat-field (a flood stack, one flood frame or a gain map) for the selected scan."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self._viewer = napari_viewer
        self._scan = scan_picker(napari_viewer)
        self._path = FileEdit(label="flat-field file", mode="r", filter="*.npy *.npz *.h5 *.hdf5 *.mib *.tif *.tiff")
        self._jobs = JobButtons("Load flat-field", self.run)
        self._beside = PushButton(text="Use the scan's own flat-field")
        self._beside.changed.connect(lambda _=None: self.run(use_beside=True))
        self._summary = wrapped_label("No flat-field loaded: frames are used as recorded.")
        self.extend([form(self._scan, self._path), self._jobs, self._beside, self._summary])
        self.canvas = FigureView(4.0, 3.4, min_height=260)
        self.native.layout().addWidget(self.canvas)
        self._scan.changed.connect(lambda _=None: self.show_flatfield())
        self.show_flatfield()

    def run(self, use_beside: bool = False):
        """Load the chosen file (or the scan's own flat-field) in the background; returns the job."""
        from ...processing import FlatField, load_flatfield

        layer = self._scan.value
        scan = find_scan(layer)
        if scan is None:
            show_error("Flat-field: open a scan first (File > Open or File > Open Sample).")
            return None
        source = flatfield_beside(layer) if use_beside else self._path.value
        if source is None or str(source) in ("", "."):
            show_error(
                "Flat-field: this scan came without a flat-field; choose a flat-field file."
                if use_beside
                else "Flat-field: choose a flat-field file (flood stack, flood frame or gain map)."
            )
            return None

        def work(report, cancelled):
            if isinstance(source, (str, Path)):
                flatfield = load_flatfield(source)
            else:
                flatfield = FlatField.from_flood(source, source="scan's own flood frames")
            if flatfield.shape != scan.detector_shape:
                name = getattr(flatfield, "source", None) or str(source)
                raise ValueError(
                    f"{name} is {flatfield.shape[0]}x{flatfield.shape[1]} px but the detector of "
                    f"{layer.name} is {scan.detector_shape[0]}x{scan.detector_shape[1]} px"
                )
            return flatfield

        def done(flatfield):
            set_state(layer, FLATFIELD_KEY, flatfield)
            self.show_flatfield()

        return self._jobs.launch(BackgroundJob(f"Flat-field for {layer.name}", work, on_returned=done))

    def show_flatfield(self):
        """Gain map of the selected scan's flat-field with dead (blue) and hot (red) pixels."""
        flatfield = flatfield_of(self._scan.value)
        self.canvas.setVisible(flatfield is not None)
        if flatfield is None:
            self._summary.value = "No flat-field loaded: frames are used as recorded."
            return
        gain = np.asarray(flatfield.gain, dtype=np.float64)
        self.canvas.render(partial(_draw_gain, gain, np.asarray(flatfield.mask)))
        p5, p95 = np.nanpercentile(gain, [5, 95])
        self._summary.value = (
            f"{Path(str(flatfield.source)).name if flatfield.source else 'flat-field'}: gain {p5:.2f}-{p95:.2f} "
            f"(5-95 %), {flatfield.n_dead} dead and {flatfield.n_hot} hot pixels masked"
        )


def _draw_gain(gain, mask, figure) -> None:
    """The gain map with the masked (dead/hot) pixels circled in red."""
    ax = figure.add_subplot(1, 1, 1)
    lo, hi = np.nanpercentile(gain, [1, 99])
    im = ax.imshow(gain, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    figure.colorbar(im, ax=ax, shrink=0.8, label="gain")
    ys, xs = np.nonzero(mask)
    ax.plot(xs, ys, "s", ms=4, mfc="none", mec="#ff3030", mew=0.8)  # circled: single px are tiny
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("gain map; masked (dead/hot) pixels in red", fontsize=8)
