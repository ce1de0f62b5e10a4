"""Workflow state of a scan in napari, kept in its integrated-image layer's metadata.

The scan layer (see ``layers.py``) carries the Scan; the widgets add what they computed for it:
the flat-field and the preprocessing result (centres, descan fit, RIAs, crops; its parameters
say whether per-frame or fitted centres were used). Labels layers made for a scan remember
its layer name.
"""

from __future__ import annotations

import numpy as np

from .layers import find_scan, scan_layers

FLATFIELD_KEY = "sedclassify_flatfield"
PREPROCESS_KEY = "sedclassify_preprocess"
LABELS_OF_KEY = "sedclassify_labels_of"  # on a Labels layer: the name of its scan layer
FLOOD_KEY = "sedclassify_flood"  # flood frames (N, ky, kx) that came with a scan (sample data)


def set_state(layer, key: str, value) -> None:
    """Keep ``value`` under ``key`` in the layer's metadata, announcing it (layer.events.metadata)
    so that views of the scan (e.g. the diffraction view) refresh."""
    layer.metadata = {**layer.metadata, key: value}


def flatfield_of(layer):
    return None if layer is None else layer.metadata.get(FLATFIELD_KEY)


def preprocess_of(layer):
    return None if layer is None else layer.metadata.get(PREPROCESS_KEY)


def centres_of(layer):
    """(scan_y, scan_x, 2) centres (cy, cx) px the RIAs were computed about (per-frame or
    fitted, as chosen in the centring widget), or None before centring."""
    result = preprocess_of(layer)
    return None if result is None else np.asarray(result.centres_used)


def scan_index_at(layer, world_position):
    """(iy, ix) of the scan point nearest a world position, or None outside the scan."""
    if layer is None or world_position is None:
        return None
    scan = find_scan(layer)
    pos = np.asarray(layer.world_to_data(world_position))[-2:]
    iy, ix = (int(round(float(p))) for p in pos)
    sy, sx = scan.scan_shape if scan is not None else layer.data.shape[-2:]
    if 0 <= iy < sy and 0 <= ix < sx:
        return iy, ix
    return None


def labels_layers_for(viewer, scan_layer):
    """Labels layers on the scan grid of ``scan_layer``: those made for it first, then any of its shape."""
    import napari

    scan = find_scan(scan_layer)
    if scan is None:
        return []
    same = [
        layer
        for layer in viewer.layers
        if isinstance(layer, napari.layers.Labels) and tuple(layer.data.shape) == tuple(scan.scan_shape)
    ]
    tagged = [layer for layer in same if layer.metadata.get(LABELS_OF_KEY) == scan_layer.name]
    return tagged + [layer for layer in same if layer not in tagged]


def scan_layer_spatial(layer) -> dict:
    """scale/translate/units keyword arguments that put a new layer on the grid of ``layer``."""
    kwargs = {"scale": tuple(layer.scale[-2:]), "translate": tuple(layer.translate[-2:])}
    units = getattr(layer, "units", None)
    if units is not None:
        kwargs["units"] = tuple(str(u) for u in units[-2:])
    return kwargs


def active_scan_layer(viewer):
    """The selected layer if it carries a scan, else the first scan layer, else None."""
    active = viewer.layers.selection.active
    if find_scan(active) is not None:
        return active
    layers = scan_layers(viewer)
    return layers[0] if layers else None


def set_layer(viewer, name: str, data, kind: str = "image", like=None, **kwargs):
    """Update the data of layer ``name`` if it exists (same kind), else add it on the grid of ``like``."""
    import napari

    existing = viewer.layers[name] if name in viewer.layers else None
    if existing is not None and isinstance(existing, getattr(napari.layers, kind.capitalize())):
        existing.data = data
        for key in ("colormap", "contrast_limits", "metadata"):
            if key in kwargs:
                setattr(existing, key, kwargs[key])
        return existing
    if like is not None:
        kwargs = {**scan_layer_spatial(like), **kwargs}
    return getattr(viewer, f"add_{kind}")(data, name=name, **kwargs)
