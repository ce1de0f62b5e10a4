"""napari reader contribution: opens a scan lazily and shows its integrated image.

Opening never reads the scan: the reader returns one image layer in scan space holding a
placeholder (zeros) and carrying the lazy Scan. Once napari has added the layer (the next turn
of the Qt event loop), a thread worker computes the total-intensity image chunk by chunk with
a progress bar; when it is done, the layer (found in the current viewer by the identity of its
Scan) gets the image and its contrast limits, and loses the ``INTEGRATING`` mark in its
metadata. Errors become napari notifications.
"""

from __future__ import annotations

import os
from functools import partial

import numpy as np

from .layers import SCAN_KEY, scan_layer_data

#: layer.metadata key, True while the integrated image is still being computed.
INTEGRATING = "sedclassify_integrating"
_workers: set = set()


def get_reader(path):
    """Return a reader for ``path`` if it looks like a scan, else None (napari tries others)."""
    from ..io import can_open

    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return read_scan if can_open(path) else None


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
    data, kwargs, kind = scan_layer_data(scan, np.zeros(scan.scan_shape, dtype=np.float32))
    kwargs["metadata"][INTEGRATING] = True
    kwargs["contrast_limits"] = (0.0, 1.0)
    # starts when control is back in the event loop: after napari has added the layer
    QTimer.singleShot(0, partial(integrate_in_background, scan, kwargs["name"]))
    return [(data, kwargs, kind)]


def integrate_in_background(scan, name: str):
    """Start a thread worker computing the total-intensity image of ``scan``; returns the worker.

    The image is computed a few dask chunks at a time (one progress step per chunk); the
    layer carrying ``scan`` receives it on the UI thread.
    """
    from napari.qt.threading import create_worker
    from napari.utils.notifications import show_error

    from ..processing.virtual import virtual_image

    image = virtual_image(scan)
    blocks = list(np.ndindex(*image.numblocks))
    per_batch = 2 * (os.cpu_count() or 1)
    edges = [np.cumsum((0,) + c) for c in image.chunks]

    def work():
        import dask

        out = np.full(image.shape, np.nan)
        for start in range(0, len(blocks), per_batch):
            batch = blocks[start : start + per_batch]
            for (i, j), part in zip(batch, dask.compute(*[image.blocks[b] for b in batch], scheduler="threads")):
                out[edges[0][i] : edges[0][i + 1], edges[1][j] : edges[1][j + 1]] = part
                yield
        return out

    worker = create_worker(work, _progress={"total": len(blocks), "desc": f"Integrating {name}"})
    worker.returned.connect(partial(_fill_layer, scan))
    worker.errored.connect(lambda exc: show_error(f"{scan.source}: integrated image failed: {exc}"))
    _workers.add(worker)
    worker.finished.connect(lambda: _workers.discard(worker))
    worker.start()
    return worker


def _fill_layer(scan, image, tries: int = 20):
    """Put ``image`` into the layer carrying ``scan``.

    The layer is normally in the viewer by now (the worker starts after napari adds it); if
    it is not yet, look again a few times (every 100 ms); a layer removed meanwhile gets nothing.
    """
    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.current_viewer()
    layers = viewer.layers if viewer is not None else []
    layer = next((ly for ly in layers if ly.metadata.get(SCAN_KEY) is scan), None)
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
