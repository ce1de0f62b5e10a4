"""Labeling widget: draw class regions, get a class map with an automatic mixed border."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton
from napari.utils.notifications import show_error, show_warning

from ...classes import CARBON, MIXED, ClassTable
from ...labels import (
    affine_from_landmarks,
    class_map_from_regions,
    from_zero_based,
    length_in_steps,
    load_class_map,
    looks_zero_based,
    save_class_map,
)
from ..jobs import wrapped_label
from ..layers import find_scan
from ..palette import class_colormap, display_name, legend_html
from ..pickers import follow_layers, scan_picker
from ..plots import form
from ..regions import CLASS_FEATURE, regions_from_shapes
from ..state import DERIVED_KEY, LABELS_OF_KEY, PREDICTION_OF_KEY, scan_layer_spatial, session_of, set_layer

#: Default beam diameter (nm) when the scan does not say it: the paper's 50-60 nm beam.
DEFAULT_BEAM_NM = 55.0
#: Beam diameter and border (scan steps) when the scan step is unknown: one step, the usual layout
#: of a narrow-beam scan (beam about as wide as the step).
DEFAULT_BEAM_STEPS = 1.0
#: How class ids in a labels file are read.
ID_CHOICES = [
    ("auto (0-based files detected)", "auto"),
    ("1-based: 0 = unlabeled, 1 = carbon", "one"),
    ("0-based: 0 = carbon", "zero"),
]


def read_class_map(path, scan_shape=None, ids: str = "auto"):
    """(class map in this package's ids, note): a labels file read as ``ids`` says ("one": as
    stored; "zero": shifted by one; "auto": shifted when it looks 0-based). ``note`` says what was
    concluded and how to choose otherwise ("" when the file was read as stored without doubt)."""
    from pathlib import Path

    from ...classes import ClassTable

    class_map = load_class_map(path, scan_shape)
    if ids == "one":
        return class_map, ""
    name = Path(str(path)).name
    names = ClassTable.default().names
    order = ", ".join(f"{k - 1} = {display_name(names[k])}" for k in sorted(names) if k)
    if ids == "zero":
        return from_zero_based(class_map), f"{name}: read as 0-based ({order}) and shifted by one."
    if looks_zero_based(class_map):
        return from_zero_based(class_map), (
            f"{name} holds class ids {int(class_map.min())}..{int(class_map.max())} and no 4 (mixed): read as "
            f"0-based ({order}) and shifted by one. If 0 means 'unlabeled' in this file, choose "
            "'class ids in file: 1-based' and load it again."
        )
    return class_map, ""


def regions_layer_name(scan_layer) -> str:
    return f"{scan_layer.name} regions"


def labels_layer_name(scan_layer) -> str:
    return f"{scan_layer.name} labels"


def landmarks_layer_name(layer) -> str:
    return f"{layer.name} landmarks"


#: Colours of the landmarks placed on the overview and on the integrated image.
LANDMARK_COLOURS = ("#ffd400", "#00e5ff")


class LabelingWidget(Container):
    """Polygons per class on the integrated image (or a registered overview) -> class map.

    One Shapes layer per scan holds the regions; each shape has a ``class`` feature (the class
    chosen when it was drawn). "Make class map" paints them (later shapes on top), adds the
    mixed border and fills the rest with carbon, as a Labels layer with the fixed class colours.
    """

    def __init__(self, napari_viewer, table: ClassTable | None = None):
        super().__init__(labels=False)
        self._viewer = napari_viewer
        self.table = table or ClassTable.default()
        self._scan = scan_picker(napari_viewer)
        drawable = [(display_name(self.table.names[c]), c) for c in self.table.ids if c != CARBON]
        drawable.append((display_name(self.table.names[CARBON]), CARBON))
        self._class = ComboBox(label="class to draw", choices=drawable)
        self._draw = PushButton(text="Draw regions")
        self._unit = ComboBox(label="lengths in", choices=["nm", "steps"], value="nm")
        self._beam = FloatSpinBox(label="beam diameter", value=DEFAULT_BEAM_NM, min=0.0, max=1e6, step=1.0)
        self._border = FloatSpinBox(label="mixed border width", value=DEFAULT_BEAM_NM, min=0.0, max=1e6, step=1.0)
        self._make = PushButton(text="Make class map")
        self._legend = Label(value=legend_html(self.table))
        self._save_path = FileEdit(label="save to", mode="w", filter="*.npy *.tif *.tiff")
        self._save = PushButton(text="Save labels")
        self._load_path = FileEdit(label="load from", mode="r", filter="*.npy *.tif *.tiff")
        self._ids = ComboBox(label="class ids in file", choices=ID_CHOICES, value="auto")
        self._load = PushButton(text="Load labels")
        self._overview = ComboBox(label="overview image", choices=self._overview_choices, nullable=True)
        self._affine_path = FileEdit(label="overview -> scan affine", mode="r", filter="*.npy *.txt *.csv")
        self._register = PushButton(text="Register overview onto the scan")
        self._place = PushButton(text="Place landmarks (point pairs)")
        self._fit = PushButton(text="Register from landmarks")
        self._status = wrapped_label("")
        self.extend(
            [
                form(self._scan, self._class),
                self._draw,
                form(self._unit, self._beam, self._border),
                self._make,
                self._legend,
                form(self._save_path),
                self._save,
                form(self._load_path, self._ids),
                self._load,
                form(self._overview, self._affine_path),
                self._register,
                self._place,
                self._fit,
                self._status,
            ]
        )
        follow_layers(napari_viewer, self._overview)
        self._register.changed.connect(lambda _=None: self.register_overview())
        self._place.changed.connect(lambda _=None: self.landmark_layers())
        self._fit.changed.connect(lambda _=None: self.register_from_landmarks())
        self._class.changed.connect(self._class_changed)
        self._draw.changed.connect(lambda _=None: self.regions_layer())
        self._make.changed.connect(lambda _=None: self.make_class_map())
        self._save.changed.connect(lambda _=None: self.save_labels())
        self._load.changed.connect(lambda _=None: self.load_labels())
        self._scan.changed.connect(self._scan_changed)
        self._unit_prev = self._unit.value
        self._unit.changed.connect(self._unit_changed)
        self._steps_by_default = False  # lengths put in steps because the step was unknown
        self._landmarks = ()  # (on the overview, on the scan) once placed
        for layer in napari_viewer.layers:
            layer.events.metadata.connect(self._scan_state)
        napari_viewer.layers.events.inserted.connect(lambda e: e.value.events.metadata.connect(self._scan_state))
        self._scan_changed()

    # lengths -------------------------------------------------------------------------
    def _step_nm(self):
        scan = find_scan(self._scan.value)
        return scan.geometry.scan_step_nm if scan is not None else None

    def _scan_changed(self, _=None):
        scan = find_scan(self._scan.value)
        if scan is None:
            return
        beam_nm = scan.metadata.get("beam_diameter_nm", DEFAULT_BEAM_NM) if scan.metadata else DEFAULT_BEAM_NM
        step = scan.geometry.scan_step_nm
        if not step:
            if self._unit.value == "nm":  # nm needs a known step; 55 nm must not become 55 steps
                self._unit.value = "steps"
                self._beam.value = self._border.value = DEFAULT_BEAM_STEPS
            self._status.value = (
                f"The scan step of {self._scan.value.name} is unknown, so lengths are in scan steps (beam "
                f"diameter and border {DEFAULT_BEAM_STEPS:g} step unless you change them). To give them in nm "
                "(beam about 55 nm), set the scan step under 'Scan geometry' and Apply."
            )
        elif self._unit.value == "nm" or self._steps_by_default:
            if self._unit.value != "nm":
                self._unit.value = "nm"
            self._beam.value = self._border.value = float(beam_nm)
            if self._status.value.startswith("The scan step of"):
                self._status.value = ""
        self._steps_by_default = not step

    def _scan_state(self, event):
        """The scan's layer changed state: when its scan step became known (or unknown), the
        lengths follow (values the user typed are left alone otherwise)."""
        if self._scan.value is None or event.source != self._scan.value:
            return
        scan = find_scan(self._scan.value)
        if scan is not None and (not scan.geometry.scan_step_nm) != self._steps_by_default:
            try:
                self._scan_changed()
            except RuntimeError:  # deleted with its viewer
                pass

    def _unit_changed(self, unit):
        step = self._step_nm()
        if unit == "nm" and not step:
            show_warning("The scan step (nm) is unknown: lengths stay in scan steps.")
            self._unit.value = "steps"
            return
        if step and unit != self._unit_prev:
            factor = step if unit == "nm" else 1.0 / step
            self._beam.value = self._beam.value * factor
            self._border.value = self._border.value * factor
        self._unit_prev = unit

    def lengths_in_steps(self) -> tuple[float, float]:
        """(beam diameter, border width) in scan steps."""
        step = self._step_nm()
        unit = self._unit.value
        return (
            length_in_steps(self._beam.value, unit, step),
            length_in_steps(self._border.value, unit, step),
        )

    # regions -------------------------------------------------------------------------
    def _colours(self, cid):
        rgba = self.table.colours.get(cid, "#888888ff")
        return rgba[:7] + "66", rgba[:7] + "ff"

    def regions_layer(self):
        """The Shapes layer of the selected scan (made on first use), selected, in polygon mode."""
        import pandas as pd

        scan_layer = self._scan.value
        if scan_layer is None:
            self._notify("Labels: open a scan first (File > Open or File > Open Sample).")
            return None
        name = regions_layer_name(scan_layer)
        if name in self._viewer.layers:
            layer = self._viewer.layers[name]
        else:
            face, edge = self._colours(self._class.value)
            layer = self._viewer.add_shapes(
                name=name,
                features=pd.DataFrame({CLASS_FEATURE: pd.Series([], dtype=int)}),
                face_color=face,
                edge_color=edge,
                edge_width=0.15,
                **scan_layer_spatial(scan_layer),
            )
        self._class_changed(self._class.value, layer)
        self._viewer.layers.selection.active = layer
        layer.mode = "add_polygon"
        return layer

    def _class_changed(self, cid, layer=None):
        if layer is None:
            scan_layer = self._scan.value
            name = regions_layer_name(scan_layer) if scan_layer is not None else None
            if name not in self._viewer.layers:
                return
            layer = self._viewer.layers[name]
        selected = sorted(layer.selected_data)
        if selected:  # recolour and reclassify the selected shapes, like napari does for colours
            layer.features.loc[selected, CLASS_FEATURE] = cid
        layer.feature_defaults[CLASS_FEATURE] = cid
        face, edge = self._colours(cid)
        layer.current_face_color = face
        layer.current_edge_color = edge

    # class map -----------------------------------------------------------------------
    def make_class_map(self):
        """Rasterise the regions of the selected scan into its Labels layer; returns the layer."""
        scan_layer = self._scan.value
        scan = find_scan(scan_layer)
        if scan is None:
            self._notify("Labels: open a scan first (File > Open or File > Open Sample).")
            return None
        name = regions_layer_name(scan_layer)
        if name not in self._viewer.layers:
            self._notify(f"Labels: draw regions first ('Draw regions' makes the layer '{name}').")
            return None
        if len(self._viewer.layers[name].data) == 0:  # everything would be carbon: one class, nothing to train on
            self._notify(f"Labels: the regions layer '{name}' is empty: draw at least one region on it "
                         "(points outside the regions are carbon), then Make class map.")
            return None
        try:
            beam, border = self.lengths_in_steps()
            regions = regions_from_shapes(self._viewer.layers[name], scan_layer, self._class.value)
            class_map = class_map_from_regions(
                regions, scan.scan_shape, beam_diameter=beam, border=border, rest=CARBON, mixed=MIXED
            )
        except ValueError as exc:
            self._notify(f"Labels: {exc}")
            return None
        layer = self.show_class_map(scan_layer, class_map)
        self._status.value = f"{len(regions)} regions, beam {beam:.2f} steps, border {border:.2f} steps"
        return layer

    def show_class_map(self, scan_layer, class_map):
        layer = set_layer(
            self._viewer,
            labels_layer_name(scan_layer),
            np.asarray(class_map, dtype=np.uint8),
            kind="labels",
            like=scan_layer,
            select=True,  # to paint on
            colormap=class_colormap(self.table),
            opacity=0.6,
            metadata={LABELS_OF_KEY: scan_layer.name},
        )
        session_of(scan_layer).set_labels(layer.data)
        counts = dict(zip(*np.unique(layer.data, return_counts=True)))
        self._legend.value = legend_html(self.table, {c: counts.get(c, 0) for c in self.table.ids})
        return layer

    # files ---------------------------------------------------------------------------
    def save_labels(self):
        scan_layer = self._scan.value
        name = labels_layer_name(scan_layer) if scan_layer is not None else None
        if name is None or name not in self._viewer.layers:
            self._notify("Labels: make or load a class map before saving it.")
            return None
        path = self._save_path.value
        if not str(path) or str(path) == ".":
            self._notify("Labels: choose a file to save to (.npy or .tif).")
            return None
        try:
            out = save_class_map(path, self._viewer.layers[name].data)
        except (OSError, ValueError) as exc:
            self._notify(f"Labels: could not save: {exc}")
            return None
        self._status.value = f"saved {out.name}"
        return out

    def load_labels(self):
        scan_layer = self._scan.value
        scan = find_scan(scan_layer)
        if scan is None:
            self._notify("Labels: open the scan the labels belong to first.")
            return None
        try:
            class_map, note = read_class_map(self._load_path.value, scan.scan_shape, self._ids.value)
        except (OSError, ValueError) as exc:
            self._notify(f"Labels: {exc}")
            return None
        layer = self.show_class_map(scan_layer, class_map)
        self._status.value = note or f"loaded {self._load_path.value.name}"
        if note:
            show_warning(f"Labels: {note}")
        return layer

    # overview --------------------------------------------------------------------------
    def _overview_choices(self, _w=None):
        import napari

        scans = [find_scan(layer) for layer in self._viewer.layers]
        grids = {tuple(scan.scan_shape) for scan in scans if scan is not None}
        out = []
        for layer in self._viewer.layers:
            if not isinstance(layer, napari.layers.Image) or layer.ndim != 2 or find_scan(layer) is not None:
                continue
            meta = layer.metadata
            if any(key in meta for key in (DERIVED_KEY, LABELS_OF_KEY, PREDICTION_OF_KEY)) or "pcc_point" in meta:
                continue  # centre, residual, PCC, confidence, virtual images: made from a scan
            linear = np.asarray(layer.affine.affine_matrix)[:-1, :-1]
            if tuple(layer.data.shape[-2:]) in grids and np.allclose(linear, np.diag(np.diag(linear))):
                continue  # an image on a scan's own grid, not an image-mode overview to register
            out.append((layer.name, layer))
        return out

    def register_overview(self, affine=None):
        """Place the chosen overview image on the scan grid with a 3x3 overview -> scan affine
        (acting on (row, col, 1); from the file chosen, or given), so that regions can be drawn
        over it. Returns the overview layer."""
        scan_layer, overview = self._scan.value, self._overview.value
        try:
            if scan_layer is None or overview is None:
                raise ValueError("choose a scan and an overview image layer")
            if affine is None:
                path = self._affine_path.value
                if str(path) in ("", "."):
                    raise ValueError("choose the file of the overview -> scan affine (3x3, .npy or text)")
                suffix = str(path).lower().rsplit(".", 1)[-1]
                if suffix == "npy":
                    affine = np.load(path)
                else:
                    affine = np.loadtxt(path, delimiter="," if suffix == "csv" else None)
            affine = np.asarray(affine, dtype=np.float64)
            if affine.shape != (3, 3):
                raise ValueError(f"the overview -> scan affine must be 3x3, got shape {affine.shape}")
        except (OSError, ValueError) as exc:
            self._notify(f"Overview: {exc}")
            return None
        scan_to_world = np.eye(3)
        scan_to_world[[0, 1], [0, 1]] = scan_layer.scale[-2:]
        scan_to_world[:2, 2] = scan_layer.translate[-2:]
        overview.scale = (1.0, 1.0)
        overview.translate = (0.0, 0.0)
        overview.affine = scan_to_world @ affine
        _same_units(overview, scan_layer)
        overview.metadata = {**overview.metadata, "overview_to_scan_affine": affine.tolist(),
                             "registered_onto": scan_layer.name}
        self._landmarks_follow(overview)
        self._status.value = f"{overview.name} registered onto {scan_layer.name}"
        return overview

    # landmarks -------------------------------------------------------------------------
    def landmark_layers(self):
        """Two Points layers, one on the chosen overview and one on the scan's integrated image
        (made on first use): the user clicks a feature on the overview, then the same feature on
        the integrated image, and so on (the layer to click next is selected after each point).
        An overview not registered yet is shown beside the integrated image, at its size, so that
        both can be seen. Returns (overview landmarks, scan landmarks)."""
        scan_layer, overview = self._scan.value, self._overview.value
        if scan_layer is None or overview is None:
            self._notify("Landmarks: choose a scan and an overview image layer first (open the overview "
                         "with File > Open).")
            return None
        if "overview_to_scan_affine" not in overview.metadata and _untransformed(overview):
            _beside(overview, scan_layer)
        layers = []
        for image, colour in zip((overview, scan_layer), LANDMARK_COLOURS):
            name = landmarks_layer_name(image)
            if name in self._viewer.layers:
                layers.append(self._viewer.layers[name])
                continue
            size = max(image.data.shape[:2]) / 30.0
            points = self._viewer.add_points(
                np.empty((0, 2)), name=name, face_color=colour, border_color="black", size=size,
                features={"pair": np.empty(0, int)}, feature_defaults={"pair": 0},
                text={"string": "{pair}", "color": colour, "size": 11, "anchor": "upper_left",
                      "translation": (-0.7 * size, 0.7 * size)},
                affine=np.asarray(image.affine.affine_matrix), scale=tuple(image.scale[-2:]),
                translate=tuple(image.translate[-2:]), metadata={"landmarks_of": image.name},
                units=tuple(str(u) for u in image.units[-2:]),
            )
            points.events.data.connect(lambda _e=None: self._landmark_added())
            layers.append(points)
        self._landmarks = tuple(layers)
        self._landmark_added()
        return self._landmarks

    def _landmarks_follow(self, overview):
        """The overview's landmarks stay on its features when it moves (registration)."""
        name = landmarks_layer_name(overview)
        if name in self._viewer.layers:
            points = self._viewer.layers[name]
            points.scale, points.translate = tuple(overview.scale[-2:]), tuple(overview.translate[-2:])
            points.affine = np.asarray(overview.affine.affine_matrix)

    def _landmark_added(self):
        """Select the landmarks layer where the next point goes, in add mode, and say which."""
        layers = self._landmarks
        if not layers or any(layer not in self._viewer.layers for layer in layers):
            return
        on_overview, on_scan = layers
        n_ov, n_sc = len(on_overview.data), len(on_scan.data)
        for points in layers:  # pair numbers, in placing order
            if len(points.features) == len(points.data) and not np.array_equal(
                    points.features["pair"], np.arange(1, len(points.data) + 1)):
                points.features = {"pair": np.arange(1, len(points.data) + 1)}
        target, image = (on_scan, on_scan.metadata["landmarks_of"]) if n_ov > n_sc else \
            (on_overview, on_overview.metadata["landmarks_of"])
        if self._viewer.layers.selection.active is not target:
            self._viewer.layers.selection.active = target
        target.mode = "add"
        pairs = min(n_ov, n_sc)
        ready = "; 'Register from landmarks' fits them" if pairs >= 2 and n_ov == n_sc else ""
        self._status.value = (f"Landmarks: {pairs} pair(s). Click a feature on {image} "
                              f"(pair {max(n_ov, n_sc) if n_ov != n_sc else pairs + 1}){ready}.")

    def register_from_landmarks(self):
        """Fit the overview -> scan affine to the landmark pairs (2 pairs: scale, rotation and
        shift; 3 or more: general affine) and register the overview with it. Returns the fit."""
        scan_layer, overview = self._scan.value, self._overview.value
        if scan_layer is None or overview is None:
            self._notify("Landmarks: choose a scan and an overview image layer first.")
            return None
        names = (landmarks_layer_name(overview), landmarks_layer_name(scan_layer))
        if any(name not in self._viewer.layers for name in names):
            self._notify("Landmarks: place landmark pairs first ('Place landmarks').")
            return None
        on_overview, on_scan = (self._viewer.layers[name] for name in names)
        try:
            fit = affine_from_landmarks(on_overview.data, on_scan.data)
        except ValueError as exc:
            self._notify(f"Landmarks: {exc}")
            return None
        if self.register_overview(affine=fit.affine) is None:
            return None
        self._status.value = f"{overview.name} registered onto {scan_layer.name}: {fit.describe()}"
        return fit

    def _notify(self, message):
        self._status.value = message
        show_error(message)


def _untransformed(layer) -> bool:
    """Whether ``layer`` still sits where napari opened it (pixel grid at the origin)."""
    return (np.allclose(layer.scale[-2:], 1.0) and np.allclose(layer.translate[-2:], 0.0)
            and np.allclose(layer.affine.affine_matrix, np.eye(layer.affine.affine_matrix.shape[0])))


def _beside(overview, scan_layer) -> None:
    """Show ``overview`` to the right of ``scan_layer``'s image, as tall as it (to place landmarks
    on both without one covering the other)."""
    rows, cols = scan_layer.data.shape[-2:]
    step_r, step_c = scan_layer.scale[-2:]
    top, left = scan_layer.translate[-2:]
    height, width = rows * step_r, cols * step_c
    factor = height / overview.data.shape[0]
    overview.scale = (factor, factor)
    overview.translate = (top - 0.5 * step_r + 0.5 * factor, left + width * 1.1)
    _same_units(overview, scan_layer)


def _same_units(overview, scan_layer) -> None:
    """The overview's world lengths are now the scan's (nm, or scan steps)."""
    units = getattr(scan_layer, "units", None)
    if units is not None:
        overview.units = tuple(str(u) for u in units[-2:])
