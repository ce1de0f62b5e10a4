"""Shapes drawn in napari -> label regions in scan coordinates."""

from __future__ import annotations

import numpy as np

from ..labels import Region

#: Shape types that enclose an area; lines and paths are ignored.
AREA_SHAPES = ("polygon", "rectangle", "ellipse")
CLASS_FEATURE = "class"


def _ellipse_polygon(corners: np.ndarray, n: int = 64) -> np.ndarray:
    """Polygon through an ellipse given, as napari stores it, by its 4 bounding-box corners."""
    centre = corners.mean(axis=0)
    a = (corners[1] - corners[0]) / 2
    b = (corners[3] - corners[0]) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
    return centre + np.cos(t) * a + np.sin(t) * b


def regions_from_shapes(shapes_layer, scan_layer, default_class: int) -> list[Region]:
    """Regions (scan coordinates, steps) of the area shapes in ``shapes_layer``, in drawing order.

    Vertices go through world coordinates, so shapes drawn over an overview registered with an
    affine, or on a layer with another scale, land on the right scan points.
    """
    classes = (
        shapes_layer.features[CLASS_FEATURE].to_numpy()
        if CLASS_FEATURE in shapes_layer.features
        else np.full(len(shapes_layer.data), default_class)
    )
    regions = []
    for verts, kind, cid in zip(shapes_layer.data, shapes_layer.shape_type, classes):
        if kind not in AREA_SHAPES:
            continue
        verts = np.asarray(verts, dtype=np.float64)[:, -2:]
        if kind == "ellipse":
            verts = _ellipse_polygon(verts)
        world = [shapes_layer.data_to_world(v) for v in verts]
        scan_xy = np.array([np.asarray(scan_layer.world_to_data(w))[-2:] for w in world])
        regions.append(Region(int(cid), scan_xy))
    return regions
