"""Units in napari's status bar over a scan: napari shows layer (array) coordinates; over a scan
layer this adds the scan point and its position in nm (or says the scan step is unknown)."""

from __future__ import annotations

import weakref

from .layers import find_scan
from .state import scan_layer_at

_installed = weakref.WeakSet()
MARK = " | scan point"


def install_status_units(viewer) -> None:
    """Add scan-point coordinates with units to the status bar of ``viewer`` (once per viewer)."""
    if viewer is None:
        return
    real = getattr(viewer, "__wrapped__", viewer)  # napari hands plugins a proxy of the viewer
    if real in _installed:
        return
    _installed.add(real)
    ref = weakref.ref(real)

    def on_status(_event=None):
        v = ref()
        if v is not None:
            add_units(v)

    real.events.status.connect(on_status)


def scan_status_text(viewer) -> str | None:
    """"scan point (iy, ix) at y .. nm, x .. nm" for the scan under the cursor, or None."""
    layer, index = scan_layer_at(viewer, viewer.cursor.position)
    if layer is None:
        return None
    iy, ix = index
    step = find_scan(layer).geometry.scan_step_nm
    if step:
        return f"{MARK} ({iy}, {ix}) of {layer.name} at y {iy * step:g} nm, x {ix * step:g} nm"
    return f"{MARK} ({iy}, {ix}) of {layer.name} (scan step unknown: set it under Scan geometry for nm)"


def add_units(viewer) -> None:
    status = viewer.status
    if not isinstance(status, dict) or MARK in str(status.get("coordinates", "")):
        return
    try:
        extra = scan_status_text(viewer)
    except Exception:  # a layer half-removed: leave napari's status alone
        return
    if extra:
        viewer.status = {**status, "coordinates": f"{status.get('coordinates', '')}{extra}"}
