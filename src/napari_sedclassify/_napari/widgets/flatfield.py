"""Flat-field widget: load a flat-field (gain) acquisition for a scan, see its gain map and
the dead/hot pixels it masks. A file that holds several arrays (HDF5, MATLAB, zarr) lists them
(name, shape) in a dataset box filled in a background thread; none is chosen until the user does."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, PushButton
from napari.utils.notifications import show_error

from ..jobs import BackgroundJob, JobButtons, short_message, wrapped_label
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


def may_hold_several(path) -> bool:
    """Whether ``path`` is a file (or zarr folder) of a format that may hold several arrays."""
    from ...io import format_of
    from ...processing.flatfield import FORMATS_WITH_DATASETS

    path = Path(path)
    return str(path) not in ("", ".") and path.exists() and format_of(path) in FORMATS_WITH_DATASETS


def flatfield_datasets(path) -> list[tuple[str, str]]:
    """(name, shape in words) of each array a flat-field file could be read from
    (``processing.flatfield.flatfield_datasets``); [] for files that hold one."""
    from ...processing.flatfield import flatfield_datasets as engine_datasets

    return [(name, _shape_words(shape)) for name, shape in engine_datasets(path)] if may_hold_several(path) else []


def _shape_words(shape) -> str:
    """"128 x 128 px image", "20 frames of 128 x 128 px", "4x5 frames of 128 x 128 px"."""
    *lead, ky, kx = (int(v) for v in shape)
    return f"{ky} x {kx} px image" if not lead else f"{'x'.join(map(str, lead))} frames of {ky} x {kx} px"


def datasets_and_reason(path) -> tuple[list[tuple[str, str]], str]:
    """(the arrays a flat-field file offers, the one line a load without a choice is refused with,
    or ""): in a worker thread (a MATLAB v5 file is read whole, a DECTRIS master file opens its
    data files). A file that cannot be read gives no arrays and the reason."""
    from ...processing import load_flatfield

    try:
        found = flatfield_datasets(path)
    except Exception as exc:  # h5py, zarr and scipy raise many kinds for a damaged file
        return [], f"{path}: cannot list its datasets ({' '.join(str(exc).split())})"
    if len(found) < 2:
        return found, ""
    try:  # the engine refuses it before reading any frame, naming the candidates: its words
        load_flatfield(path)
    except Exception as exc:
        return found, short_message(exc)
    return found, ""


class FlatFieldWidget(Container):
    """Load a flat-field (a flood stack, one flood frame or a gain map) for the selected scan."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self._viewer = napari_viewer
        self._scan = scan_picker(napari_viewer)
        self._path = FileEdit(label="flat-field file", mode="r",
                              filter="*.npy *.npz *.h5 *.hdf5 *.hdf *.nxs *.emd *.mat *.mib *.tif *.tiff")
        self._dataset = ComboBox(label="dataset", choices=[], nullable=True, visible=False)
        self._dataset.null_string = "(choose the flat-field's dataset)"
        self._datasets_note = wrapped_label()
        self._datasets_note.visible = False
        self._listing = None  # the job listing the chosen file's datasets
        self._listed = None  # the file the dataset box lists
        self._refusal = ""  # why that file is refused while no dataset is chosen
        self._jobs = JobButtons("Load flat-field", self.run)
        self._beside = PushButton(text="Use the scan's own flat-field")
        self._beside.changed.connect(lambda _=None: self.run(use_beside=True))
        self._summary = wrapped_label("No flat-field loaded: frames are used as recorded.")
        self.extend([form(self._scan, self._path, self._dataset), self._datasets_note, self._jobs, self._beside,
                     self._summary])
        self.canvas = FigureView(4.0, 3.4, min_height=260)
        self.native.layout().addWidget(self.canvas)
        self._scan.changed.connect(lambda _=None: self.show_flatfield())
        self._path.changed.connect(lambda _=None: self.list_datasets())
        self._dataset.changed.connect(lambda _=None: self._show_choice())
        self.native.destroyed.connect(lambda *_: self._listing is not None and self._listing.orphan())
        self.show_flatfield()

    def list_datasets(self):
        """List the arrays of the chosen file in the dataset box (none chosen), read in the
        background; a file with one or none needs no choice (box hidden). Returns the job, or
        None when the file's format holds one array."""
        path = self._path.value
        self._listed = None
        self._dataset.choices = []
        self._dataset.visible = False
        if self._listing is not None:
            self._listing.orphan()
            self._listing = None
        text = str(path) if path is not None else ""
        if not may_hold_several(text):
            self._set_note("")
            return None
        self._set_note(f"reading the datasets of {Path(text).name}…")
        self._listing = BackgroundJob(f"Datasets of {Path(text).name}",  # orphaned when another file is chosen
                                      lambda report, cancelled: datasets_and_reason(text),
                                      on_returned=lambda found_reason: self._show_datasets(text, *found_reason))
        self._listing.show_progress = lambda done, total: None  # a quick look: no progress bar
        self._listing.start()
        return self._listing

    def _show_datasets(self, path: str, found, reason: str):
        """Fill the dataset box (several arrays) or hide it (one or none); the reason a load without
        a choice is refused, or why the file cannot be read, in place."""
        self._listed = path if len(found) > 1 else None
        if len(found) > 1:
            self._dataset.choices = [(f"{name}: {words}", name) for name, words in found]
            self._dataset.value = None
            self._dataset.visible = True
        self._refusal = reason
        self._set_note(reason)

    def _show_choice(self):
        """A dataset chosen: the refusal gives way to the choice (back when none is chosen again)."""
        if self._listed is not None:
            self._set_note(self._refusal if self._dataset.value is None else "")

    def _set_note(self, text: str):
        try:
            self._datasets_note.value = text
            self._datasets_note.visible = bool(text)
        except RuntimeError:  # closed with its viewer meanwhile
            pass

    def chosen_dataset(self) -> str | None:
        """The dataset chosen in the box for the file it lists, else None."""
        path = self._path.value
        if self._listed is None or path is None or str(path) != self._listed:
            return None
        return self._dataset.value

    def run(self, use_beside: bool = False):
        """Load the chosen file (or the scan's own flat-field) in the background; returns the job."""
        from ...processing import FlatField, load_flatfield

        layer = self._scan.value
        scan = find_scan(layer)
        if scan is None:
            show_error("Flat-field: open a scan first (File > Open or File > Open Sample).")
            return None
        source = flatfield_beside(layer) if use_beside else self._path.value
        dataset = None if use_beside else self.chosen_dataset()
        if not use_beside and dataset is None and self._listed == str(source):
            show_error(f"Flat-field: choose its dataset. {self._refusal}")
            return None
        if source is None or str(source) in ("", "."):
            show_error(
                "Flat-field: this scan came without a flat-field; choose a flat-field file."
                if use_beside
                else "Flat-field: choose a flat-field file (flood stack, flood frame or gain map)."
            )
            return None

        def work(report, cancelled):
            if isinstance(source, (str, Path)):
                flatfield = load_flatfield(source, dataset=dataset)
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
            f"{_short_source(flatfield.source) if flatfield.source else 'flat-field'}: gain {p5:.2f}-{p95:.2f} "
            f"(5-95 %), {flatfield.n_dead} dead and {flatfield.n_hot} hot pixels masked"
        )


def _short_source(source: str) -> str:
    """The file name of a flat-field's source, with the dataset it was read from ("flat.h5:/entry/flood")."""
    head, sep, dataset = str(source).rpartition(":/")
    return f"{Path(head).name}:/{dataset}" if sep and Path(head).exists() else Path(str(source)).name


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
