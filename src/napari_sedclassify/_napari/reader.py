"""napari reader contribution: opens a scan lazily and shows its integrated image."""

from __future__ import annotations

import numpy as np

from .layers import scan_layer_data


def get_reader(path):
    """Return a reader for ``path`` if it looks like a scan, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return _read


def _read(path):
    from napari.utils.notifications import show_error

    from ..io import open_scan
    from ..processing.virtual import virtual_image

    if isinstance(path, list):
        path = path[0]
    try:
        scan = open_scan(path)
    except Exception as exc:  # shown in napari, never a raw traceback
        show_error(f"Could not open {path}: {exc}")
        return None
    image = np.asarray(virtual_image(scan).compute())
    return [scan_layer_data(scan, image)]
