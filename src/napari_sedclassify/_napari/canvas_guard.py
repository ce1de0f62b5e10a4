"""Keep napari's viewer alive when layers are removed.

On Mesa's software OpenGL (llvmpipe: Xvfb, VNC, many remote desktops; Mesa 22.3 measured), the
shader programs of a removed layer are deleted by vispy in the turn napari drops the layer's
visual, and the next draw can then segfault the whole viewer in ``glDrawArrays`` (napari 0.9.2,
vispy 0.17; reproduced with napari alone: a Shapes layer, or a Points layer showing text, added
and removed over an image, then any layer added; with the plugin: an integrated image removed
beside its Labels layer). Not deleting those programs (the visual kept) made every such sequence
run; deleting them later, in a quiet turn, did too in the cases measured, but when that is safe
is not known. So the visuals of removed layers are kept for the life of the viewer: their GPU
copies (for the plugin's scan-space layers, 2 kB to 1 MB each; a removed 4096 x 4096 overview
image would keep 64 MB) against a crash that loses the user's work.
"""

from __future__ import annotations

import weakref

_guarded = weakref.WeakSet()


def keep_removed_visuals(viewer) -> bool:
    """From now on, keep the vispy visual of every layer removed from ``viewer`` until the viewer
    closes (once per viewer). Returns False where there is nothing to guard (a headless
    ViewerModel, a napari whose canvas keeps its visuals elsewhere: ``layer_to_visual`` is
    napari's own)."""
    real = getattr(viewer, "__wrapped__", viewer)  # napari hands plugins a proxy of the viewer
    try:
        canvas = real.window._qt_viewer.canvas
        visuals = canvas.layer_to_visual
    except (AttributeError, RuntimeError):
        return False
    if real in _guarded:
        return True
    _guarded.add(real)
    kept = []
    canvas.sedclassify_removed_visuals = kept  # freed with the canvas, when the viewer closes
    layers = real.layers

    def removing(event):
        try:
            layer = layers[event.index]
        except (IndexError, TypeError):
            return
        if layer in visuals:
            kept.append(visuals[layer])

    layers.events.removing.connect(removing)
    return True
