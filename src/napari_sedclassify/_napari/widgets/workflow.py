"""The whole workflow in one dock: numbered tabs in the order of the work, plus the
diffraction view docked beside the canvas."""

from __future__ import annotations

from magicgui.widgets import CheckBox, Container, FileEdit, PushButton
from napari.utils.notifications import show_error

from ...io import can_open
from ..jobs import short_message, wrapped_label
from ..plots import form
from .centring import CentringWidget
from .diffraction_view import DiffractionView
from .flatfield import FlatFieldWidget
from .geometry import GeometryWidget
from .labeling import LabelingWidget
from .pcc import PCCWidget
from .prediction import PredictionWidget
from .ria import RIAWidget
from .training import TrainingWidget

INTRO = (
    "Open a scan (here, File > Open, or File > Open Sample > SED classify), check its geometry (tab 0), "
    "then go through the tabs from left to right. Hover or click the integrated image to see a frame in "
    "the diffraction view."
)


class WorkflowWidget(Container):
    """Flat-field -> centring -> RIA -> PCC -> labels -> training -> prediction, as tabs."""

    def __init__(self, napari_viewer):
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QScrollArea, QTabWidget

        super().__init__(labels=False)
        self._viewer = napari_viewer
        self.geometry = GeometryWidget(napari_viewer)
        self.flatfield = FlatFieldWidget(napari_viewer)
        self.centring = CentringWidget(napari_viewer)
        self.ria = RIAWidget(napari_viewer)
        self.pcc = PCCWidget(napari_viewer)
        self.labeling = LabelingWidget(napari_viewer)
        self.training = TrainingWidget(napari_viewer)
        self.prediction = PredictionWidget(napari_viewer)
        self.training.on_trained.append(self.prediction.use_model)
        self.append(wrapped_label(INTRO))
        self._scan_file = FileEdit(label="scan file", mode="r")
        open_button = PushButton(text="Open scan")
        open_button.changed.connect(lambda _=None: self.open_scan())
        from ..reader import prefer_this_reader, this_reader_preferred, warm_up

        warm_up()  # napari's unit registry and the kernels, before the first scan is opened

        prefer_this_reader(True)  # file patterns without a preference: no "Choose reader" on each File > Open
        self._prefer = CheckBox(
            text="File > Open reads .npy/.tif/.h5/.zarr scans with SED classify", value=this_reader_preferred(),
            tooltip="napari's reader preference for these file types (Preferences > Plugins); plain images "
            "in them still open as images. Untick to give the choice back to napari.",
        )
        self._prefer.changed.connect(lambda on: prefer_this_reader(bool(on)))
        self.extend([form(self._scan_file), open_button, self._prefer])
        self.tabs = QTabWidget()
        steps = [
            ("0 Scan", self.geometry),
            ("1 Flat-field", self.flatfield),
            ("2 Centring", self.centring),
            ("3 RIA", self.ria),
            ("4 PCC", self.pcc),
            ("5 Labels", self.labeling),
            ("6 Train", self.training),
            ("7 Predict", self.prediction),
        ]
        for title, widget in steps:
            widget.native.layout().addStretch(1)  # controls at the top, not spread out
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            scroll.setWidget(widget.native)
            self.tabs.addTab(scroll, title)
        self.native.layout().addWidget(self.tabs)
        self.native.setMinimumWidth(max(440, self.tabs.tabBar().sizeHint().width() + 12))
        self.diffraction = DiffractionView(napari_viewer)
        window = getattr(napari_viewer, "window", None)
        if window is not None:
            window.add_dock_widget(self.diffraction, name="Diffraction view", area="bottom")
        napari_viewer.layers.events.inserted.connect(self._inserted)

    def _inserted(self, event):
        """A scan whose geometry the file does not fully state: bring its fields (tab 0) forward."""
        from ...geometry import CALIBRATION_FIELDS
        from ..layers import find_scan

        scan = find_scan(event.value)
        if scan is not None and (scan.geometry.assumed(CALIBRATION_FIELDS) or not scan.geometry.scan_step_nm):
            try:
                self.show_step(0)
            except RuntimeError:  # deleted with its viewer
                pass

    def open_scan(self, path=None):
        """Open a scan file with this plugin's reader (its integrated image becomes a layer);
        returns the new layers. A folder works for formats stored as folders (zarr)."""
        path = path or self._scan_file.value
        if str(path) in ("", "."):
            show_error("Open scan: choose a scan file first.")
            return []
        try:
            if not can_open(path):  # napari's open gives the reader's reasons
                return self._viewer.open(str(path), plugin="napari-sedclassify")
            return self._add_scan_layers(path)
        except Exception as exc:  # the reader names the file and the problem
            show_error(f"Open scan: {short_message(exc)}")
            return []

    def _add_scan_layers(self, path):
        """The reader's layers, added as napari's open would, without its "Opening Files"
        progress bar (creating and updating it took about 250 ms of the event loop), over three
        turns of the event loop, each a stall of its own on a software-rendered desktop: the layer
        goes in hidden (napari builds its controls and visual: 100-180 ms), is shown in the next
        turn (its first paint compiles the shaders and uploads the texture: about 110 ms), and is
        selected in the turn after (selecting swaps the layer controls and resizes the canvas)."""
        from napari.layers import Layer
        from qtpy.QtCore import QTimer

        from ..reader import read_scan
        from ..state import selection_kept

        layers = self._viewer.layers
        added = []
        for data, kwargs, kind in (item for item in read_scan(str(path)) if item[0] is not None):
            with selection_kept(layers, True):
                added.append(self._viewer.add_layer(Layer.create(data, {**kwargs, "visible": False}, kind)))

        def select():
            if added and added[-1] in layers:
                layers.selection.active = added[-1]

        def show():
            for layer in added:
                layer.visible = True
            QTimer.singleShot(30, select)

        QTimer.singleShot(30, show)
        return added

    def show_step(self, index: int):
        """Bring tab ``index`` (0 = scan geometry, 1 = flat-field ... 7 = prediction) to the front."""
        self.tabs.setCurrentIndex(index)
