"""RIA widget: radial intensity averages of picked points or of each labeled class (mean ±
spread), like the paper's Fig. 5; optionally the smoothed logarithm (its Fig. 5c)."""

from __future__ import annotations

from functools import partial

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, RadioButtons, SpinBox
from napari.utils.notifications import show_error, show_warning

from ...classes import ClassTable
from ...processing.ria import class_statistics, moving_average
from ..jobs import JobButtons, wrapped_label
from ..layers import find_scan
from ..palette import display_name
from ..pickers import follow_layers, scan_picker
from ..plots import FigureView, form
from ..preprocessing import preprocess_job
from ..state import calibration_of, labels_layers_for, preprocess_current, preprocess_of, scan_layer_spatial

POINTS = "points"
CLASSES = "classes"


def points_layer_name(scan_layer) -> str:
    return f"{scan_layer.name} RIA points"


def _warn(warnings) -> None:
    """What the user must know before trusting a fitted camera length (``CalibrationResult.warnings``):
    each a napari warning."""
    from ..wording import in_napari_words

    for w in warnings:
        show_warning(f"Camera length: {in_napari_words(w)}")


def calibration_text(result, note: str = "") -> str:
    """The fitted camera length ``result`` of a scan, with what applying it changed (``note``) and
    its warnings, for the widget."""
    import html

    from ..wording import in_napari_words

    return (f"Camera length {result.camera_length_mm:.1f} ± {result.camera_length_sd_mm:.1f} mm (fitted from "
            f"{result.frames_used} ice frames; was {result.nominal_camera_length_mm:g} mm, {result.nominal_origin})."
            + (f" {note}." if note else "")
            + "".join(f"<br><b>warning</b>: {html.escape(in_napari_words(w), quote=False)}" for w in result.warnings))


class RIAWidget(Container):
    """Plot RIAs: of points picked on the scan, or per labeled class (mean ± standard deviation)."""

    def __init__(self, napari_viewer, table: ClassTable | None = None):
        super().__init__(labels=False)
        self._viewer = napari_viewer
        self.table = table or ClassTable.default()
        self._scan = scan_picker(napari_viewer)
        self._jobs = JobButtons("Compute RIAs", self.run)
        self._mode = RadioButtons(
            label="plot", choices=[("picked points", POINTS), ("each labeled class", CLASSES)], value=CLASSES
        )
        self._pick = PushButton(text="Pick points on the scan")
        self._labels = ComboBox(label="labels", choices=self._labels_choices, nullable=True)
        self._log = CheckBox(text="log scale (log10 RIA)", value=True)
        self._smooth = SpinBox(label="moving average (bins)", value=1, min=1, max=51)
        self._axis = ComboBox(label="x axis", choices=[("radius (px)", "px"), ("q (1/Å)", "q")], value="px")
        self._summary = wrapped_label()
        self._calibrate = JobButtons("Fit camera length (ice ring at 3.7 Å)", self.calibrate)
        self.calibration_info = wrapped_label()
        self.extend(
            [form(self._scan), self._jobs, self._calibrate, self.calibration_info, form(self._mode), self._pick,
             form(self._labels, self._smooth, self._axis), self._log, self._summary]
        )
        self.canvas = FigureView(4.0, 3.2, min_height=280)
        self.native.layout().addWidget(self.canvas)
        follow_layers(napari_viewer, self._labels)
        for w in (self._scan, self._mode, self._labels, self._log, self._smooth, self._axis):
            w.changed.connect(lambda _=None: self.plot())
        self._pick.changed.connect(lambda _=None: self.points_layer())
        self._scan.changed.connect(lambda _=None: self._show_calibration())
        self._viewer.layers.events.inserted.connect(self._watch_points)

    def _show_calibration(self):
        """The camera length fitted for the chosen scan, if any."""
        try:
            result = calibration_of(self._scan.value)
            self.calibration_info.value = "" if result is None else calibration_text(result)
        except RuntimeError:  # deleted with its viewer
            pass

    def calibrate(self):
        """Fit the effective camera length from the amorphous-ice ring (``pipeline.calibrate``) in
        the background; the scan's geometry takes it (marked fitted) and the diffraction view
        draws the fitted ring."""
        from ..jobs import BackgroundJob
        from ..state import CALIBRATION_KEY, flatfield_of, set_state
        from .geometry import apply_geometry

        layer = self._scan.value
        if layer is None:
            self._calibrate.status.value = "Open a scan first."
            return None
        scan = find_scan(layer)
        flatfield = flatfield_of(layer)

        def work(report, cancelled):
            from ...pipeline.calibrate import calibrate

            return calibrate(scan, "ice", flatfield, progress=report, cancel=cancelled)

        def done(result):
            note = apply_geometry(self._viewer, layer, result.geometry)
            set_state(layer, CALIBRATION_KEY, result)
            _warn(result.warnings)
            if self._scan.value is layer:  # never under another scan's name (choosing it again shows it)
                self.calibration_info.value = calibration_text(result, note)
            self.plot()

        return self._calibrate.launch(BackgroundJob(f"Fitting the camera length of {layer.name}", work,
                                                    on_returned=done))

    def _labels_choices(self, _w=None):
        layer = self._scan.value
        if layer is None:
            return []
        return [(lab.name, lab) for lab in labels_layers_for(self._viewer, layer, predictions=True)]

    def run(self):
        """Compute RIAs (one preprocessing pass) of the selected scan; returns the job, or the
        stored result when the centring step already made it from the same flat-field and
        geometry (nothing is recomputed then)."""
        from ...processing import PreprocessParams

        layer = self._scan.value
        if find_scan(layer) is None:
            show_error("RIA: open a scan first (File > Open or File > Open Sample).")
            return None
        current = preprocess_current(layer)
        if current is not None:
            self.plot()
            self._jobs.status.value = "RIAs of the centring pass (same flat-field and geometry): nothing to recompute"
            return current
        previous = preprocess_of(layer)
        params = previous.params if previous is not None else PreprocessParams()
        return self._jobs.launch(preprocess_job(layer, params, on_done=lambda _r: self.plot()))

    # points --------------------------------------------------------------------------
    def points_layer(self):
        """The Points layer where RIA points are picked (made on first use), in add mode."""
        layer = self._scan.value
        if layer is None:
            return None
        name = points_layer_name(layer)
        if name not in self._viewer.layers:
            self._viewer.add_points(
                np.empty((0, 2)), name=name, size=0.6, face_color="#ffffff", border_color="#000000",
                **scan_layer_spatial(layer),
            )
        points = self._viewer.layers[name]
        self._viewer.layers.selection.active = points
        points.mode = "add"
        self._mode.value = POINTS
        return points

    def _watch_points(self, event):
        layer = event.value
        if self._scan.value is not None and layer.name == points_layer_name(self._scan.value):
            layer.events.data.connect(lambda _e=None: self.plot())

    def picked_points(self):
        """(iy, ix) of the picked points inside the scan, in picking order."""
        layer = self._scan.value
        name = points_layer_name(layer) if layer is not None else None
        if name not in self._viewer.layers:
            return []
        scan = find_scan(layer)
        points = self._viewer.layers[name]
        out = []
        for p in points.data:
            iy, ix = (int(round(float(c))) for c in layer.world_to_data(points.data_to_world(p))[-2:])
            if 0 <= iy < scan.scan_shape[0] and 0 <= ix < scan.scan_shape[1]:
                out.append((iy, ix))
        return out

    # plot ----------------------------------------------------------------------------
    def plot(self):
        """Redraw the plot for the current choices (laid out and drawn in a thread); returns the
        number of curves drawn."""
        layer = self._scan.value
        result = preprocess_of(layer)
        curves, xlabel, x = [], "", None
        log = self._log.value
        if result is None:
            self._summary.value = "Compute RIAs first (here or in the Centring widget)."
        else:
            x, xlabel = self._x_axis(result)
            smooth = int(self._smooth.value)
            usable = result.beam_found & ~result.missing
            if self._mode.value == CLASSES:
                curves = self._class_curves(result, usable, log, smooth)
            else:
                curves = self._point_curves(result, log, smooth)
        ylabel = "log10 RIA (counts/px)" if log else "RIA (counts/px)"
        self.canvas.render(partial(_draw_curves, x, curves, xlabel, ylabel))
        return len(curves)

    def _x_axis(self, result):
        if self._axis.value == "q" and result.q_invA is not None:
            return np.asarray(result.q_invA), "q (1/Å)"
        if self._axis.value == "q":
            self._axis.value = "px"  # uncalibrated geometry: no q axis
        return np.asarray(result.radii_px), "radius (px)"

    def _class_curves(self, result, usable, log, smooth) -> list:
        labels = self._labels.value
        if labels is None:
            self._summary.value = "Choose a Labels layer on this scan (make one in the Labels widget)."
            return []
        stats = class_statistics(np.asarray(result.ria), np.asarray(labels.data), usable, log, smooth)
        self._summary.value = f"mean ± standard deviation per class of {labels.name}"
        return [(mean, spread, self.table.colours.get(cid, "#888888ff")[:7],
                 f"{display_name(self.table.names.get(cid, str(cid)))} ({count})")
                for cid, (mean, spread, count) in stats.items()]

    def _point_curves(self, result, log, smooth) -> list:
        points = self.picked_points()
        labels = self._labels.value
        curves = []
        for k, (iy, ix) in enumerate(points):
            ria = np.asarray(result.ria[iy, ix], dtype=np.float64)
            y = np.log10(np.where(ria > 0, ria, np.nan)) if log else ria
            colour = f"C{k % 10}"
            label = f"({iy}, {ix})"
            if labels is not None:
                cid = int(labels.data[iy, ix])
                colour = self.table.colours.get(cid, "#888888ff")[:7] if cid else colour
                label += f" {display_name(self.table.names.get(cid, ''))}"
            curves.append((moving_average(y, smooth), None, colour, label))
        self._summary.value = (
            f"{len(points)} picked points" if points else "Pick points on the scan ('Pick points on the scan')."
        )
        return curves


def _draw_curves(x, curves, xlabel, ylabel, figure) -> None:
    """The RIA plot: one line per curve (with its ± spread band when given) and a legend."""
    ax = figure.add_subplot(1, 1, 1)
    for y, spread, colour, label in curves:
        ax.plot(x, y, color=colour, lw=1.2 if spread is not None else 1, label=label)
        if spread is not None:
            ax.fill_between(x, y - spread, y + spread, color=colour, alpha=0.2, lw=0)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if curves:
        ax.legend(fontsize=7, frameon=False)
