"""napari reader contribution: opens a scan lazily and shows its integrated image.

Opening never reads the scan: the reader returns one image layer in scan space holding a
placeholder (zeros) and carrying the lazy Scan. Once napari has added the layer (the next turn
of the Qt event loop), a thread worker computes the total-intensity image chunk by chunk with
a progress bar; when it is done, the layer (found in the current viewer by the identity of its
Scan) gets the image and its contrast limits, and loses the ``INTEGRATING`` mark in its
metadata. Errors become napari notifications.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .layers import SCAN_KEY, scan_layer_data

#: layer.metadata key, True while the integrated image is still being computed.
INTEGRATING = "sedclassify_integrating"
PLUGIN = "napari-sedclassify"
#: File patterns napari's own reader claims too: for these napari asks "Choose reader" on every
#: File > Open unless a reader preference is set (:func:`prefer_this_reader`).
SHARED_PATTERNS = ("*.npy", "*.tif", "*.tiff", "*.h5", "*.hdf5", "*.hdf", "*.zarr")
_workers: set = set()


def warm_up() -> None:
    """Build, once and in a daemon thread, what the first scan and class-map layers would otherwise
    build in the event loop: napari's unit registry (pint parses its definitions and the scan's
    units: 0.3-0.9 s here), the numba functions napari compiles for the first Labels layer with a
    direct colour map (1-2 s on the UI thread when a prediction was first shown), the engine's
    processing modules (numba's cached kernels) and the module that applies FCNN and SVM model files.

    Also stops numpy advising huge pages for new arrays in the viewer's process (``pages``): the
    first blocks of frames of an integrated image waited for the kernel to compact memory. Each
    scan opened then sets the advice for its size (``read_scan``)."""
    global _warming
    if _warming is None:
        import gc
        import threading

        from ..pages import small_pages

        small_pages()

        def work():
            from napari.layers import Labels

            import napari.components.histogram  # noqa: F401  (a layer's controls import it)

            from .. import io, processing
            from ..classes import ClassTable
            from ..pipeline import session  # noqa: F401
            from ..models import arrays  # noqa: F401  (applies FCNN and SVM model files)
            from .palette import class_colormap

            _install_unit_registry()
            Labels(np.zeros((2, 2), np.uint8), colormap=class_colormap(ClassTable.default()))
            _import_gl_array_handlers()
            _fill_dash_patterns()
            io.warm_up()
            processing.warm_up()

        def warm():
            # napari, Qt and the engine leave ~450,000 long-lived objects that every full
            # collection of the cyclic garbage collector walks: 0.15-0.45 s of the event loop each
            # time (the collector holds the interpreter lock), at unpredictable moments, and the
            # imports here would trigger several (measured under Xvfb). No collection while they
            # run; frozen afterwards, those objects are skipped by every later collection.
            from .interpreter import quick_switches

            gc.disable()
            try:
                with quick_switches():  # the event loop gets the interpreter back within 1 ms
                    work()
            finally:
                gc.freeze()
                gc.enable()

        _warming = threading.Thread(target=warm, name="sedclassify-warm-up", daemon=True)
        _warming.start()


_warming = None


def _install_unit_registry() -> None:
    """Build pint's unit registry apart and make it the application registry (napari's) when
    nothing has used that one yet; else wait until the one in use is whole. pint builds its
    application registry on first use, in place and not thread-safe: built here in place, the event
    loop creating a layer meanwhile read it half built ("'pixel' is not defined in the unit
    registry": File > Open failed), and this thread read the one the event loop was building.
    Built apart, nobody sees it before it is whole; when the event loop started the application
    registry first, that one stays (units of two registries do not mix) and this thread waits for
    it before making its Labels layer. Only the instant between the check and the swap is left open."""
    import time

    import pint
    from pint.registry import LazyRegistry

    application = pint.get_application_registry()
    if isinstance(application.get(), LazyRegistry):  # nobody has used it yet
        registry = pint.UnitRegistry(on_redefinition="raise")  # what pint's lazy registry builds on first use
        registry("nm"), registry("pixel")
        if isinstance(application.get(), LazyRegistry):
            application.set(registry)
            return
    for _ in range(200):  # being built in the event loop: its units come when it is whole (0.3-0.9 s)
        try:
            application.get()("pixel")
            return
        except Exception:  # half built: not all definitions there yet
            time.sleep(0.05)


def _fill_dash_patterns():
    """vispy computes its 13 line-dash patterns (numpy, cached once per process) when the first
    'agg' line visual is built: the polygon overlay of the first Labels layer, 60 ms of a 100 ms
    turn of the event loop (profiled under Xvfb). Computed here instead; no OpenGL involved."""
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas
    except ImportError:  # a vispy that keeps them elsewhere: napari builds them when needed
        return
    DashAtlas()


def _import_gl_array_handlers():
    """PyOpenGL imports its array handlers at the first texture upload (a layer's first paint)."""
    import importlib

    for name in ("ctypesarrays", "ctypespointers", "nones", "strings", "numpymodule"):
        try:
            importlib.import_module(f"OpenGL.arrays.{name}")
        except Exception:  # another PyOpenGL: it imports what it needs when it needs it
            pass


def get_reader(path):
    """The reader for ``path``: this plugin's scan reader when it is a scan; napari's own image
    reader for a plain image in a format both read (a 2D .npy or .tif), so that files still open
    as before when this plugin is the preferred reader; for a file of a scan format that is
    damaged or not a scan (a text file named .npy, an HDF5 file without a 3D/4D dataset), a
    reader that says why and adds nothing; None for anything else (napari tries others)."""
    from pathlib import Path

    from ..io import can_open, format_of

    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    warm_up()
    if can_open(path):
        return read_scan
    try:
        fmt = format_of(path) if Path(path).exists() else None
    except Exception:  # an unreadable path is not ours
        fmt = None
    if fmt is None:
        return None
    reason = why_not_a_scan(path, fmt)
    if reason == PLAIN_IMAGE:
        return _napari_image_reader(path)
    return read_scan if reason is None else partial(refuse, reason)


#: :func:`why_not_a_scan` of a readable file that is a plain image, not a scan.
PLAIN_IMAGE = ""


def why_not_a_scan(path, fmt: str) -> str | None:
    """Why ``path`` (a file of format ``fmt`` whose quick probe failed) cannot be opened as a scan;
    PLAIN_IMAGE ("") when it is a readable plain image (a 2D .npy or TIFF) that napari's own
    reader shows; None when it opens as a scan after all."""
    import numpy as np

    from ..io import open_scan

    if fmt == "npy":
        with open(path, "rb") as f:
            head = f.read(16)
        if not head.startswith(b"\x93NUMPY"):
            text = head and all(32 <= b < 127 or b in (9, 10, 13) for b in head)
            return (f"{path}: not a NumPy .npy file: it begins with {head[:12]!r} instead of the .npy signature"
                    + (" (it looks like a text file renamed .npy)" if text else ""))
        try:
            shape = np.load(path, mmap_mode="r").shape
        except Exception as exc:
            return f"{path}: damaged .npy file ({exc})"
        if len(shape) not in (3, 4):
            return PLAIN_IMAGE  # a plain array: napari's own reader shows it as an image
    if fmt == "tiff":
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                ndim = len(tif.series[0].shape)
        except Exception as exc:
            return f"{path}: damaged TIFF file ({exc})"
        if ndim < 3:
            return PLAIN_IMAGE
    try:
        open_scan(path)
    except Exception as exc:
        message = str(exc)
        return message if str(path) in message else f"{path}: {message}"
    return None


def refuse(reason, path):
    """A reader that adds nothing and says why (a napari error notification)."""
    from napari.utils.notifications import show_error

    show_error(reason)
    return [(None,)]


def _napari_image_reader(path):
    """napari's own image reader for ``path`` (what File > Open would use without this plugin)."""
    try:
        from napari_builtins.io._read import napari_get_reader
    except ImportError:  # a napari without its builtins: napari tries other readers
        return None
    return napari_get_reader(str(path))


def prefer_this_reader(enable: bool = True) -> list[str]:
    """Make File > Open (and ``viewer.open(path)``) use this plugin for the file patterns napari's
    own reader claims too, without asking "Choose reader" each time; plain images in those formats
    still open as before (the plugin hands them to napari's reader). Only patterns without a
    preference are set (a choice the user made stays); ``enable=False`` removes this plugin's.
    Saved in napari's settings. Returns the patterns changed."""
    from napari.settings import get_settings

    settings = get_settings().plugins
    prefs = dict(settings.extension2reader)
    changed = []
    for pattern in SHARED_PATTERNS:
        if enable and pattern not in prefs:
            prefs[pattern] = PLUGIN
            changed.append(pattern)
        elif not enable and prefs.get(pattern) == PLUGIN:
            del prefs[pattern]
            changed.append(pattern)
    if changed:
        settings.extension2reader = prefs
    return changed


def this_reader_preferred() -> bool:
    """True when every shared pattern opens with this plugin (see :func:`prefer_this_reader`)."""
    from napari.settings import get_settings

    prefs = get_settings().plugins.extension2reader
    return all(prefs.get(p) == PLUGIN for p in SHARED_PATTERNS)


def read_scan(path):
    """Open ``path`` lazily: one image layer (placeholder) carrying the Scan; the image follows."""
    from napari.utils.notifications import show_error
    from qtpy.QtCore import QTimer

    from ..io import open_scan

    if isinstance(path, (list, tuple)):
        path = path[0]
    try:
        scan = open_scan(path)
    except Exception as exc:  # shown in napari, never a traceback in the user's face
        message = str(exc)
        show_error(message if str(path) in message else f"{path}: {message}")
        return [(None,)]
    from ..pages import small_pages

    ky, kx = scan.detector_shape  # huge-page advice for the scan's size (pages.py)
    small_pages(scan.n_frames * ky * kx * np.dtype(scan.dtype).itemsize)
    data, kwargs, kind = scan_layer_data(scan, np.zeros(scan.scan_shape, dtype=np.float32))
    kwargs["metadata"][INTEGRATING] = True
    kwargs["contrast_limits"] = (0.0, 1.0)
    # starts when control is back in the event loop: after napari has added the layer
    QTimer.singleShot(0, partial(integrate_in_background, scan, kwargs["name"]))
    QTimer.singleShot(0, partial(show_geometry_fields, scan))
    QTimer.singleShot(0, _status_units)
    return [(data, kwargs, kind)]


def _status_units():
    import napari

    from .canvas_guard import keep_removed_visuals
    from .status import install_status_units

    viewer = napari.current_viewer()
    install_status_units(viewer)
    keep_removed_visuals(viewer)


def show_geometry_fields(scan):
    """When the file leaves calibration values assumed (or the scan step unknown), dock the Scan
    geometry widget, unless it or the Workflow (whose tab 0 it is) is docked already."""
    import napari

    from ..geometry import CALIBRATION_FIELDS

    g = scan.geometry
    if not (g.assumed(CALIBRATION_FIELDS) or not g.scan_step_nm):
        return None
    viewer = napari.current_viewer()
    window = getattr(viewer, "window", None)
    try:
        docked = list(window.dock_widgets.values())
    except Exception:  # no window (headless ViewerModel), or closed meanwhile
        return None
    if any(type(w).__name__ in ("GeometryWidget", "WorkflowWidget") for w in docked):
        return None
    _, widget = window.add_plugin_dock_widget(PLUGIN, "Scan geometry")
    return widget


def integrate_in_background(scan, name: str):
    """Start a background job computing the total-intensity image of ``scan``; returns the job.

    The image is computed by the frame runner (the same executor as preprocessing: blocks read
    straight from the file in worker threads), with progress (shown at most every 0.5 s: see
    ``jobs.BackgroundJob``) and cancel; the layer carrying ``scan`` receives it on the UI thread.
    """
    from ..errors import Cancelled
    from .jobs import BackgroundJob

    def work(report, cancelled):
        # imported here, in the worker: the first import of the processing modules (numba) took
        # up to 2 s of the event loop when done on the UI thread (benchmarks/bench_napari_session.py)
        from ..processing.virtual import virtual_image

        try:
            return virtual_image(scan, progress=report, cancel=cancelled)
        except Cancelled:
            return None
        except Exception as exc:
            raise RuntimeError(f"{scan.source}: integrated image failed: {exc}") from exc

    def returned(image_):
        if image_ is not None:
            _fill_layer(scan, image_)

    def finished():
        _workers.discard(job)
        if job.outcome != "done":  # failed or cancelled: the layer is no longer being integrated
            layer = _scan_layer(scan)
            if layer is not None:
                layer.metadata.pop(INTEGRATING, None)

    job = BackgroundJob(f"Integrating {name}", work, on_returned=returned, on_finished=finished)
    _workers.add(job)
    job.start()
    return job


def _fill_layer(scan, image, tries: int = 20):
    """Put ``image`` into the layer carrying ``scan``.

    The layer is normally in the viewer by now (the worker starts after napari adds it); if
    it is not yet, look again a few times (every 100 ms); a layer removed meanwhile gets nothing.
    """
    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.current_viewer()
    layer = _scan_layer(scan, viewer)
    if layer is None:
        if viewer is not None and tries > 0:
            QTimer.singleShot(100, partial(_fill_layer, scan, image, tries - 1))
        return
    layer.data = image
    finite = image[np.isfinite(image)]
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        layer.contrast_limits = (lo, hi if hi > lo else lo + 1.0)
    layer.metadata.pop(INTEGRATING, None)


def _scan_layer(scan, viewer=None):
    """The layer of ``viewer`` (default: the current one) carrying ``scan``, or None."""
    import napari

    viewer = viewer if viewer is not None else napari.current_viewer()
    layers = viewer.layers if viewer is not None else []
    return next((ly for ly in layers if ly.metadata.get(SCAN_KEY) is scan), None)
