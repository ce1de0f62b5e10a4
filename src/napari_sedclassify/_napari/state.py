"""Workflow state of a scan in napari, kept in its integrated-image layer's metadata.

The scan layer (see ``layers.py``) carries the Scan; the widgets add what they computed for it:
the flat-field and the preprocessing result (centres, descan fit, RIAs, crops; its parameters
say whether per-frame or fitted centres were used). Labels layers made for a scan remember
its layer name.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .layers import find_scan, scan_layers

FLATFIELD_KEY = "sedclassify_flatfield"
PREPROCESS_KEY = "sedclassify_preprocess"
LABELS_OF_KEY = "sedclassify_labels_of"  # on a Labels layer: the name of its scan layer
PREDICTION_OF_KEY = "sedclassify_prediction_of"  # on a predicted class map: the name of its scan layer
DERIVED_KEY = "sedclassify_derived_from"  # on a layer computed from a scan (centres, PCC...): its scan layer name
CALIBRATION_KEY = "sedclassify_calibration"  # the fitted camera length (pipeline.calibrate.CalibrationResult)
FLOOD_KEY = "sedclassify_flood"  # flood frames (N, ky, kx) that came with a scan (sample data)


SESSION_KEY = "sedclassify_session"  # the scan's ScanSession (pipeline/session.py)


def session_of(layer):
    """The Qt-free ScanSession of the scan ``layer`` carries (made on first use), or None."""
    if layer is None:
        return None
    session = layer.metadata.get(SESSION_KEY)
    if session is None:
        scan = find_scan(layer)
        if scan is None:
            return None
        from ..pipeline.session import ScanSession

        session = ScanSession(scan)
        layer.metadata[SESSION_KEY] = session
    return session


def announce(layer) -> None:
    """Tell napari's listeners of the layer (layer.events.metadata: the diffraction view...) that
    its scan's state changed."""
    layer.metadata = dict(layer.metadata)


def set_state(layer, key: str, value) -> None:
    """Record ``value`` for the scan of ``layer``: the flat-field, a preprocessing result and the
    calibration go to its ScanSession; anything else to the layer's metadata; then announce it."""
    session = session_of(layer)
    if session is not None and key == FLATFIELD_KEY:
        session.set_flatfield(value)
    elif session is not None and key == PREPROCESS_KEY:
        session.store_result(value)
    elif session is not None and key == CALIBRATION_KEY:
        session.set_calibration(value)
    else:
        layer.metadata[key] = value
    announce(layer)


def flatfield_of(layer):
    session = session_of(layer)
    return None if session is None else session.flatfield


def calibration_of(layer):
    session = session_of(layer)
    return None if session is None else session.calibration


def preprocess_of(layer):
    """The preprocessing result stored last for the scan of ``layer`` (None before any)."""
    session = session_of(layer)
    return None if session is None else session.latest_result


def preprocess_current(layer, params=None):
    """The stored preprocessing result of ``layer`` when it still holds: made from the scan's current
    flat-field and geometry and, when ``params`` (PreprocessParams) is given, with those parameters;
    else None."""
    session = session_of(layer)
    return None if session is None else session.result(params)


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


def clicked_point(layer, event):
    """For a napari mouse-drag callback (``index = yield from clicked_point(layer, event)``): the
    scan point (iy, ix) of ``layer`` under a click, None when the mouse was dragged or off the scan."""
    index = scan_index_at(layer, event.position)
    yield
    while event.type == "mouse_move":
        index = None
        yield
    return index


def labels_layers_for(viewer, scan_layer, predictions: bool = False):
    """Labels layers on the scan grid of ``scan_layer``: those made for it first, then untagged ones
    of its shape (e.g. a class map opened from a file). Layers made for another scan (its labels,
    its predictions) are left out; predicted class maps only when ``predictions``."""
    import napari

    scan = find_scan(scan_layer)
    if scan is None:
        return []
    tagged, untagged = [], []
    for layer in viewer.layers:
        if not isinstance(layer, napari.layers.Labels) or tuple(layer.data.shape) != tuple(scan.scan_shape):
            continue
        owner = layer.metadata.get(LABELS_OF_KEY)
        predicted_for = layer.metadata.get(PREDICTION_OF_KEY)
        if predicted_for is not None:
            if predictions and predicted_for == scan_layer.name:
                tagged.append(layer)
        elif owner == scan_layer.name:
            tagged.append(layer)
        elif owner is None:
            untagged.append(layer)
    return tagged + untagged


def scan_layer_at(viewer, world_position):
    """(scan layer, (iy, ix)) of the topmost visible scan layer under ``world_position``, or
    (None, None) when the cursor is over no scan."""
    if world_position is None:
        return None, None
    for layer in reversed(list(scan_layers(viewer))):
        if not layer.visible:
            continue
        index = scan_index_at(layer, world_position)
        if index is not None:
            return layer, index
    return None, None


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


def set_layer(viewer, name: str, data, kind: str = "image", like=None, select: bool = False, then=None,
              **kwargs):
    """Update the data of layer ``name`` if it exists (same kind), else add it on the grid of ``like``.

    A new layer is selected only with ``select`` (e.g. labels to paint on), in the next turn of
    the event loop: otherwise the selection stays where the user left it (the scan the widgets work
    on). Selecting swaps the layer controls, which resizes the canvas (about half of the 100-250 ms
    that adding a layer costs on a software-rendered desktop), so it never shares the turn that
    adds the layer. What a new Labels layer builds later (its editing overlays, :func:`one_per_turn`)
    follows, then ``then`` (e.g. the next layer to add) in a turn of its own; ``then`` is called
    at once when nothing was added."""
    import napari

    if like is not None:  # remember which scan it was computed from (e.g. not an overview candidate)
        kwargs["metadata"] = {DERIVED_KEY: like.name, **(kwargs.get("metadata") or {})}
    existing = viewer.layers[name] if name in viewer.layers else None
    if existing is not None and isinstance(existing, getattr(napari.layers, kind.capitalize())):
        existing.data = data
        for key in ("colormap", "contrast_limits", "metadata"):
            # an unchanged class colormap is not set again: a Labels layer given new data and a new
            # colormap in one turn aborted the viewer when another layer was removed in that turn
            # (vispy: "Could not find texture"; napari 0.9.2)
            if key in kwargs and not (key == "colormap" and same_label_colours(existing.colormap, kwargs[key])):
                setattr(existing, key, kwargs[key])
        if then is not None:
            then()
        return existing
    if like is not None:
        kwargs = {**scan_layer_spatial(like), **kwargs}
    from napari.layers import Layer

    layer = Layer.create(data, {**kwargs, "name": name}, kind)
    hidden = hide_editing_overlays(layer)
    with selection_kept(viewer.layers, True):
        viewer.add_layer(layer)
    steps = [lambda: _select(viewer.layers, layer)] if select else []
    steps += [lambda overlay=overlay: setattr(overlay, "visible", True) for overlay in hidden]
    one_per_turn(steps + ([then] if then is not None else []))
    return layer


def same_label_colours(current, colormap) -> bool:
    """Whether two direct Labels colormaps give every label the same colour (napari's own
    comparison of colormaps raises on their arrays)."""
    a, b = getattr(current, "color_dict", None), getattr(colormap, "color_dict", None)
    if a is None or b is None or a.keys() != b.keys():
        return False
    return all(np.allclose(a[k], b[k]) for k in b)


def _select(layers, layer) -> None:
    if layer in layers:  # not removed meanwhile
        layers.selection.active = layer


#: The overlays napari gives every Labels layer for editing it (the polygon being drawn, the brush
#: outline). Their visuals cost more than the layer's own: 40-70 ms of the 100-200 ms that adding a
#: Labels layer takes on a software-rendered desktop (profiled under Xvfb).
EDITING_OVERLAYS = ("polygon", "brush_stroke")


def hide_editing_overlays(layer) -> list:
    """Hide the editing overlays of a Labels ``layer`` that is not in a viewer yet, so that adding
    it builds none of their visuals (napari's canvas builds an overlay's visual when it is first
    visible); returns those hidden, to show in later turns (:func:`one_per_turn`). Nothing for
    other layers, or for a napari whose layers keep their overlays elsewhere (``_overlays`` is
    napari's own)."""
    overlays = getattr(layer, "_overlays", None)
    hidden = []
    for key in EDITING_OVERLAYS if overlays is not None else ():
        overlay = overlays.get(key)
        if overlay is not None and getattr(overlay, "visible", False):
            overlay.visible = False
            hidden.append(overlay)
    return hidden


def one_per_turn(steps: list, delay_ms: int = 20) -> None:
    """Call ``steps`` one per turn of the event loop, ``delay_ms`` apart, each timer started when
    the step before has run (two overdue timers would fire in the same turn: one stall of both).
    For a Labels layer's editing overlays, made visible again: each then gets its visual (15-50
    ms) in a turn of its own; until then, painting works and only the brush outline is not drawn."""
    if not steps:
        return
    from qtpy.QtCore import QTimer

    def run():
        try:
            steps[0]()
        except RuntimeError:  # the viewer closed meanwhile
            return
        one_per_turn(steps[1:], delay_ms)

    QTimer.singleShot(delay_ms, run)


@contextmanager
def selection_kept(layers, keep: bool = True):
    """Insert layers without changing the selection. napari selects every inserted layer, which
    swaps the layer controls and resizes the canvas; with the selection's events blocked while
    the layers go in and the selection is put back as it was, nothing changes for anyone
    listening (public API: napari offers no switch for it)."""
    if not keep:
        yield
        return
    selection = layers.selection
    before, active = list(selection), selection.active
    with selection.events.blocker_all():
        try:
            yield
        finally:
            if active is not None:
                selection.active = active
            else:
                selection.clear()
            selection.update([layer for layer in before if layer in layers])
