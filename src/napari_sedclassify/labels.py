"""Labels: polygons drawn per class -> a class map on the scan grid; class maps on disk.

Coordinates are scan coordinates (row, col) in scan steps: the centre of scan point
(iy, ix) sits at (iy, ix). Polygons drawn on an overview image are brought there with the
overview -> scan affine (:func:`overview_to_scan`).

How a class map is made (:func:`class_map_from_regions`):

1. Regions are painted in the order given (a later region covers an earlier one, as a shape
   drawn later lies on top in napari) onto a supersampled grid whose background is the
   ``rest`` class (carbon by default).
2. Each scan point takes the class covering the largest part of its beam disc
   (``beam_diameter`` in scan steps; 0 means "the class under the point's centre").
3. Mixed border: a point whose disc of diameter ``border`` (scan steps) covers more than
   one class becomes ``mixed``, i.e. a point closer than ``border / 2`` to an outline; a disc
   that only touches an outline (an outline on the edge between two scan points' pixels, at
   half a step) does not make it mixed, on any side of a region. With ``border`` equal to the
   beam diameter this marks exactly the points where the beam straddles two materials; a
   larger border adds a safety margin for imprecisely drawn polygons; 0 gives no automatic border.

No napari or Qt here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .classes import CARBON, MIXED

#: Fine-grid samples per scan step used to rasterise polygons and beam discs.
SUPERSAMPLE = 8


@dataclass(frozen=True)
class Region:
    """A polygon of one class. vertices: (n, 2) float (row, col) in scan steps, n >= 3."""

    class_id: int
    vertices: np.ndarray

    def __post_init__(self):
        v = np.asarray(self.vertices, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != 2 or v.shape[0] < 3:
            raise ValueError(f"a region needs (n >= 3, 2) vertices (row, col), got shape {v.shape}")
        object.__setattr__(self, "vertices", v)
        object.__setattr__(self, "class_id", int(self.class_id))


def overview_to_scan(vertices, affine) -> np.ndarray:
    """Map (n, 2) (row, col) overview-pixel vertices to scan coordinates with a 3x3 affine
    acting on homogeneous (row, col, 1) column vectors (napari's convention)."""
    v = np.asarray(vertices, dtype=np.float64)
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (3, 3):
        raise ValueError(f"overview -> scan affine must be 3x3, got shape {a.shape}")
    return v @ a[:2, :2].T + a[:2, 2]


@dataclass(frozen=True)
class LandmarkFit:
    """An overview -> scan affine fitted to landmark pairs (:func:`affine_from_landmarks`).

    affine: 3x3, acting on (row, col, 1) as :func:`overview_to_scan`; kind: "similarity" (two
    pairs) or "affine"; residuals_steps: for each pair, how far (scan steps) the mapped overview
    landmark lands from its scan landmark."""

    affine: np.ndarray
    kind: str
    residuals_steps: np.ndarray

    @property
    def rms_steps(self) -> float:
        return float(np.sqrt(np.mean(self.residuals_steps ** 2)))

    def describe(self) -> str:
        n = len(self.residuals_steps)
        if self.kind == "affine" and n == 3:
            return "affine through 3 pairs (exact: a 4th pair would show how well they agree)"
        return (f"{self.kind} from {n} pairs, residual RMS {self.rms_steps:.2f} scan steps "
                f"(largest {self.residuals_steps.max():.2f}, pair {int(self.residuals_steps.argmax()) + 1})")


def affine_from_landmarks(overview_points, scan_points) -> LandmarkFit:
    """The overview -> scan affine that best maps landmark ``overview_points[i]`` (row, col in
    overview pixels) onto ``scan_points[i]`` (row, col in scan steps), in the least-squares sense.

    Two pairs give a similarity (scale, rotation and shift, no shear nor mirror: the overview's
    pixels are taken as square); three or more pairs not on one line give a general affine
    (exact through 3 pairs). Raises ValueError naming the problem otherwise."""
    ov = np.asarray(overview_points, dtype=np.float64)
    sc = np.asarray(scan_points, dtype=np.float64)
    for name, pts in (("overview", ov), ("scan", sc)):
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"{name} landmarks must be (row, col) pairs, got shape {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise ValueError(f"{name} landmarks hold a non-finite coordinate")
    if len(ov) != len(sc):
        raise ValueError(f"{len(ov)} landmarks on the overview but {len(sc)} on the scan: "
                         "place them in pairs, in the same order on both")
    if len(ov) < 2:
        raise ValueError(f"{len(ov)} landmark pair(s): place at least 2 (3 or more for a general affine)")
    for name, pts in (("overview", ov), ("scan", sc)):
        centred = pts - pts.mean(axis=0)
        spread = np.linalg.svd(centred, compute_uv=False)
        if spread[0] < 1e-9:
            raise ValueError(f"the {name} landmarks all sit on one point")
        if len(pts) >= 3 and spread[1] < 1e-3 * spread[0]:
            raise ValueError(f"the {name} landmarks lie on one line: an affine needs pairs spread over "
                             "the area (or exactly 2 pairs for scale, rotation and shift)")
    affine = np.eye(3)
    if len(ov) == 2:
        z, w = ov[:, 0] + 1j * ov[:, 1], sc[:, 0] + 1j * sc[:, 1]
        a = (w[1] - w[0]) / (z[1] - z[0])
        b = w[0] - a * z[0]
        affine[:2, :2] = [[a.real, -a.imag], [a.imag, a.real]]
        affine[:2, 2] = [b.real, b.imag]
        kind = "similarity"
    else:
        design = np.column_stack([ov, np.ones(len(ov))])
        coef, *_ = np.linalg.lstsq(design, sc, rcond=None)
        affine[:2, :] = coef.T
        kind = "affine"
    residuals = np.linalg.norm(overview_to_scan(ov, affine) - sc, axis=1)
    return LandmarkFit(affine, kind, residuals)


def length_in_steps(value: float, unit: str, scan_step_nm: float | None) -> float:
    """A length given in 'steps' or 'nm' as scan steps (nm needs the scan step, nm)."""
    if unit == "steps":
        return float(value)
    if unit == "nm":
        if not scan_step_nm:
            raise ValueError("the scan step (nm) is unknown: give the length in scan steps")
        return float(value) / float(scan_step_nm)
    raise ValueError(f"unknown length unit '{unit}' (use 'steps' or 'nm')")


def _fill_polygon(grid: np.ndarray, verts_fine: np.ndarray, value: int) -> None:
    """Set ``grid`` pixels whose centre lies inside the polygon (even-odd rule) to ``value``.

    verts_fine: (n, 2) (row, col) in fine-grid pixel units (pixel centres at integers).
    """
    ny, nx = grid.shape
    y0, x0 = verts_fine[:, 0], verts_fine[:, 1]
    y1, x1 = np.roll(y0, -1), np.roll(x0, -1)
    rows = np.arange(max(0, math.ceil(y0.min())), min(ny - 1, math.floor(y0.max())) + 1)
    for r in rows:
        crosses = (y0 <= r) != (y1 <= r)  # half-open rule: each vertex counted once
        if not crosses.any():
            continue
        ya, yb, xa, xb = y0[crosses], y1[crosses], x0[crosses], x1[crosses]
        xs = np.sort(xa + (r - ya) * (xb - xa) / (yb - ya))
        for left, right in zip(xs[0::2], xs[1::2]):
            c0 = max(0, math.ceil(left))
            c1 = min(nx, math.ceil(right))  # centres in [left, right)
            if c1 > c0:
                grid[r, c0:c1] = value


def _disc_offsets(diameter_steps: float, s: int, open_disc: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Fine-grid (dy, dx) offsets of the pixel centres inside a disc of the given diameter;
    ``open_disc``: only those strictly inside (a disc that touches an outline overlaps nothing there)."""
    rf = diameter_steps / 2 * s
    k = int(math.floor(rf))
    dy, dx = np.mgrid[-k : k + 1, -k : k + 1]
    inside = dy**2 + dx**2 < rf**2 - 1e-9 if open_disc else dy**2 + dx**2 <= rf**2 + 1e-9
    return dy[inside], dx[inside]


def paint_regions(regions, scan_shape, rest: int = CARBON, margin: int = 0, supersample: int = SUPERSAMPLE):
    """The supersampled label grid: ``rest`` everywhere, regions painted in order.

    Fine pixel (j, i) is at scan coordinate (j / s - margin, i / s - margin); returns the
    uint8 grid. ``margin`` (steps) extends the grid beyond the scan on every side.
    """
    sy, sx = scan_shape
    s = int(supersample)
    grid = np.full(((sy - 1 + 2 * margin) * s + 1, (sx - 1 + 2 * margin) * s + 1), rest, dtype=np.uint8)
    for region in regions:
        if not 0 <= region.class_id <= 255:
            raise ValueError(f"class id {region.class_id} is outside 0..255")
        _fill_polygon(grid, (region.vertices + margin) * s, region.class_id)
    return grid


def class_map_from_regions(regions, scan_shape, *, beam_diameter: float = 1.0, border: float = 1.0, rest: int = CARBON,
                           mixed: int = MIXED, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Class map (scan_y, scan_x) uint8 from class regions (see the module docstring).

    regions: iterable of :class:`Region` in scan coordinates (steps), painted in order.
    beam_diameter: beam disc diameter (steps) deciding each point's class by the largest
        covered fraction; 0 = class under the point's centre.
    border: diameter (steps) of the disc that marks a point ``mixed`` when it covers more than
        one class; 0 = no automatic mixed border.
    rest: class of everything outside the regions (carbon; 0 leaves it unlabeled).
    """
    if beam_diameter < 0 or border < 0:
        raise ValueError("beam diameter and border width must be >= 0 scan steps")
    regions = list(regions)
    sy, sx = (int(n) for n in scan_shape)
    s = int(supersample)
    margin = int(math.ceil(max(beam_diameter, border) / 2)) + 1
    grid = paint_regions(regions, (sy, sx), rest=rest, margin=margin, supersample=s)
    out = np.empty((sy, sx), dtype=np.uint8)
    by, bx = _disc_offsets(beam_diameter, s)
    my, mx = _disc_offsets(border, s, open_disc=True) if border > 0 else (None, None)
    flat = grid.ravel()
    width = grid.shape[1]
    ix = (np.arange(sx) + margin) * s
    for iy in range(sy):  # one scan row at a time: bounded memory for any scan size
        cy = (iy + margin) * s
        centre = flat[cy * width + ix]
        labels = flat[(cy + by[None, :]) * width + (ix[:, None] + bx[None, :])]
        idx = (np.arange(sx)[:, None] * 256 + labels).ravel()
        counts = np.bincount(idx, minlength=sx * 256).reshape(sx, 256).astype(np.float64)
        counts[np.arange(sx), centre] += 0.5  # a tie goes to the class under the centre
        row = counts.argmax(axis=1).astype(np.uint8)
        if my is not None:
            near = flat[(cy + my[None, :]) * width + (ix[:, None] + mx[None, :])]
            row[near.min(axis=1) != near.max(axis=1)] = mixed
        out[iy] = row
    return out


def save_class_map(path, class_map) -> Path:
    """Write a 2D class map to ``.npy`` or ``.tif``/``.tiff`` atomically (uint8); returns the path."""
    path = Path(path)
    arr = np.asarray(class_map)
    if arr.ndim != 2:
        raise ValueError(f"{path}: a class map is 2D (scan_y, scan_x), got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"{path}: class ids must lie in 0..255")
    arr = arr.astype(np.uint8)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".tif", ".tiff"):
        raise ValueError(f"{path}: save labels as .npy or .tif")
    from .io.atomic import atomic_output

    with atomic_output(path, force=True) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, arr)
        else:
            import tifffile

            tifffile.imwrite(tmp, arr)
    return path


def looks_zero_based(class_map, n_classes: int = MIXED) -> bool:
    """True when a class map looks written with 0-based class ids (0 = carbon ... n_classes - 1 =
    mixed) rather than this package's 1-based ones (0 = unlabeled, 1 = carbon ... 4 = mixed): it
    holds 0 and at least one other id, and none above n_classes - 1 (no "mixed" = 4). A 1-based map
    that leaves points unlabeled and has no mixed points looks the same, so callers should say
    what they concluded and let the user choose."""
    arr = np.asarray(class_map)
    if arr.size == 0:
        return False
    ids = np.unique(arr)
    return bool(ids[0] == 0 and ids.size >= 2 and ids[-1] <= n_classes - 1)


def from_zero_based(class_map) -> np.ndarray:
    """A 0-based class map (0 = carbon ...) in this package's ids (1 = carbon ...), uint8."""
    arr = np.asarray(class_map)
    if arr.size and int(arr.max()) >= 255:
        raise ValueError("a 0-based class map with ids up to 254 only can be shifted by one")
    return (arr.astype(np.int64) + 1).astype(np.uint8)


def load_class_map(path, scan_shape=None) -> np.ndarray:
    """Read a class map (``.npy`` or ``.tif``) as uint8; checks it is 2D, holds integer class
    ids in 0..255 and, when ``scan_shape`` is given, matches it."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not a labels file (.npy or .tif class map)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such labels file")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".tif", ".tiff"):
        raise ValueError(f"{path}: labels must be a .npy or .tif file")
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            import tifffile

            arr = tifffile.imread(path)
    except Exception as exc:  # tifffile raises its own errors for damaged files
        raise ValueError(f"{path}: not a readable labels file ({exc})") from exc
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{path}: labels must be a 2D class map, got shape {arr.shape}")
    if arr.dtype.kind not in "iub" and not (arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0)):
        raise ValueError(f"{path}: labels must hold integer class ids, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"{path}: class ids must lie in 0..255, got {arr.min():g}..{arr.max():g} "
                         "(an image, not a class map of class ids?)")
    if scan_shape is not None and tuple(arr.shape) != tuple(scan_shape):
        raise ValueError(f"{path}: labels shape {tuple(arr.shape)} does not match the scan shape {tuple(scan_shape)}")
    return arr.astype(np.uint8)
