"""The workflow's state for one scan, with no napari and no Qt: what the widgets observe.

A :class:`ScanSession` holds the scan, its flat-field, its camera-length calibration and the
preprocessing results, each kept under the inputs it was made from (parameters, flat-field,
geometry, the width of a Medipix3 quad's chip-edge pixels): a result stays available while those
inputs hold and is never recomputed for them; a different flat-field, geometry or chip-edge pixel
width makes ``result()`` answer None until the matching result is stored. It also holds the
scan's labels, the model chosen for it and the latest prediction, which goes stale
(``prediction`` None, ``stale_prediction`` kept for the record) as soon as the preprocessing
result it was made from no longer holds. Observers subscribe a callback that receives the name
of what changed ("flatfield", "geometry", "edge_pixel_width", "result", "calibration", "labels",
"model", "prediction"), as napari-animation's ``Animation`` is observed by its Qt widgets.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Callable

from ..jsonutil import jsonable

#: Parameters given in Å or 1/Å: a result made with them follows the q axis, so a geometry
#: change with other camera length, pixel size or voltage makes it stale.
_Q_SUFFIXES = ("_d_A", "_invA")

#: Where a result's chip-edge pixel width came from when nobody stated it (``PreprocessPlan``'s
#: resolved origins): the frames, or the default of 1.
_UNSTATED = ("measured", "assumed")

#: A result made with a chip-edge pixel width its own parameters set: the scan's width does not apply to it.
_OWN_WIDTH = "parameters"

#: Default of ``store_result``/``store_prediction``: the session's current flat-field or geometry.
#: A distinct marker, because None is a real input (a result made WITHOUT a flat-field).
CURRENT = object()


class ScanSession:
    """Everything the workflow knows about one scan (see the module's text)."""

    def __init__(self, scan):
        self.scan = scan
        self.flatfield = None
        self.calibration = None
        self.labels = None  # (scan_y, scan_x) class ids, 0 = unlabeled
        self.model = None  # path of the model file chosen for this scan
        self._prediction = None  # (prediction, the preprocessing result it came from)
        self._results: dict[tuple, object] = {}
        self._latest: tuple | None = None
        self._observers: list[Callable[[str], None]] = []

    # -- observing ----------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """callback(what) after every change; returns the function that unsubscribes it."""
        self._observers.append(callback)
        return lambda: self._observers.remove(callback) if callback in self._observers else None

    def _changed(self, what: str) -> None:
        for callback in list(self._observers):
            callback(what)

    # -- inputs ---------------------------------------------------------------------------------
    def set_flatfield(self, flatfield) -> None:
        self.flatfield = flatfield
        self._changed("flatfield")

    def set_calibration(self, calibration) -> None:
        self.calibration = calibration
        self._changed("calibration")

    @property
    def edge_pixel_width(self) -> tuple[float | None, str]:
        """(width in pitches, where it came from: "file" or "given") of the wide chip-edge pixels
        stated for the scan, as preprocessing reads it from the scan's metadata; (None, "measured")
        when none is stated: preprocessing measures it from the frames."""
        metadata = self.scan.metadata or {}
        width = metadata.get("edge_pixel_width")
        if width is None:
            return None, "measured"
        return float(width), str(metadata.get("edge_pixel_width_origin", "file"))

    def set_edge_pixel_width(self, width: float | None) -> None:
        """State the width (pitches, at least 1) of the scan's wide chip-edge pixels, or None: measure
        it from the frames (even where the file states one). Results made with another width no
        longer hold (``result()`` None; they come back when the width does)."""
        if width is not None and not width >= 1:
            raise ValueError(f"the chip-edge pixel width must be at least 1 pitch, got {width:g}")
        metadata = self.scan.metadata
        for key in ("edge_pixel_width", "edge_pixel_width_origin"):
            metadata.pop(key, None)
        if width is not None:
            metadata.update(edge_pixel_width=float(width), edge_pixel_width_origin="given")
        self._changed("edge_pixel_width")

    def set_geometry(self, geometry) -> list[str]:
        """Give the scan a new geometry. Results in px carry over with the new q axis; results
        with radii in Å or 1/Å are dropped when the q axis changed (what was dropped is returned,
        as the parameter names that made them q-dependent)."""
        old = self.scan.geometry
        self.scan.geometry = geometry
        q_changed = _q_of(old) != _q_of(geometry)
        dropped: list[str] = []
        kept = {}
        for (params_key, ff_id, _, width), result in self._results.items():
            in_q = [f.name for f in dataclasses.fields(result.params)
                    if f.name.endswith(_Q_SUFFIXES) and getattr(result.params, f.name)]
            if q_changed and in_q:
                dropped.extend(in_q)
                continue
            kept[(params_key, ff_id, _geometry_key(geometry), width)] = dataclasses.replace(result, geometry=geometry)
        latest_params = None if self._latest is None else self._latest[:2]
        self._results = kept
        self._latest = next((k for k in kept if k[:2] == latest_params), None)
        self._changed("geometry")
        return sorted(set(dropped))

    # -- results --------------------------------------------------------------------------------
    def store_result(self, result, flatfield=CURRENT, geometry=CURRENT, latest: bool = True) -> None:
        """Keep a preprocessing result, made from ``flatfield`` (None: made without one) and
        ``geometry`` (default: the session's current ones). A job must pass what it actually used:
        the flat-field may have changed while it ran, and the result then belongs to the old one
        (stale now). ``latest=False`` keeps it for reuse only (a model's own pass), and the latest
        result stays the one the user's preprocessing made."""
        key = self._keep(result, flatfield, geometry)
        if latest:
            self._latest = key
        self._changed("result")

    def _keep(self, result, flatfield=CURRENT, geometry=CURRENT) -> tuple:
        flatfield = self.flatfield if flatfield is CURRENT else flatfield
        geometry = self.scan.geometry if geometry is CURRENT or geometry is None else geometry
        key = (_params_key(result.params), id(flatfield) if flatfield is not None else None, _geometry_key(geometry),
               _width_of(result))
        self._results[key] = result
        return key

    def result(self, params=None):
        """The result made from the current flat-field and geometry (and from ``params``, a
        PreprocessParams, when given); the latest such one; None when there is none. Without
        ``params``, a model's own pass whose radial profile stops where the model stops reading it
        (``pipeline.predict.params_for_model``) is not offered unless it is the latest: RIA plots
        and proposals read the whole profile."""
        if params is not None:
            want = _params_key(params)
            return next((r for k, r in self._results.items() if k[0] == want and self._holds(k)), None)
        if self._latest is not None and self._holds(self._latest):
            return self._results[self._latest]
        return next((r for k, r in reversed(self._results.items())
                     if self._holds(k) and r.params.ria_r_max_px is None), None)

    def result_for(self, params):
        """:meth:`result` for ``params``, or else one made with the same parameters but a radial
        profile reaching at least as far (its ``ria_r_max_px`` larger, or None: to the frame's
        corner; the same bins and more), which the pass of a model or of a training
        (``pipeline.train.preprocess_params_for``) takes instead of preprocessing again. The
        exact pass first, then the one reaching least far, then the latest."""
        found = self.result(params)
        if found is not None or params.ria_r_max_px is None:
            return found
        want = _params_key(dataclasses.replace(params, ria_r_max_px=None))
        farther = [r for k, r in reversed(self._results.items())
                   if self._holds(k) and _reaches(r.params, params.ria_r_max_px)
                   and _params_key(dataclasses.replace(r.params, ria_r_max_px=None)) == want]
        return min(farther, key=lambda r: math.inf if r.params.ria_r_max_px is None else r.params.ria_r_max_px,
                   default=None)

    def _holds(self, key: tuple) -> bool:
        """Whether the result kept under ``key`` was made from the current flat-field, geometry and
        chip-edge pixel width."""
        _, ff_id, geometry, width = key
        return (ff_id == (id(self.flatfield) if self.flatfield is not None else None)
                and geometry == _geometry_key(self.scan.geometry)
                and width in (self.edge_pixel_width[0], _OWN_WIDTH))

    @property
    def latest_result(self):
        """The result stored last, whatever it was made from (None before any)."""
        return None if self._latest is None else self._results[self._latest]

    def clear_results(self) -> None:
        self._results.clear()
        self._latest = None
        self._changed("result")

    # -- labels, model, prediction --------------------------------------------------------------
    def set_labels(self, class_map) -> None:
        """The scan's labels (class ids on the scan grid, 0 = unlabeled), painted or loaded."""
        self.labels = class_map
        self._changed("labels")

    def set_model(self, path) -> None:
        """The model file chosen for this scan (the one trained for it, or picked to classify it)."""
        self.model = None if path is None else str(path)
        self._changed("model")

    def store_prediction(self, prediction, model, result, flatfield=CURRENT, geometry=CURRENT) -> None:
        """Keep what the model file ``model`` predicted from the preprocessing ``result`` (kept too, for
        reuse, not as the latest result), made from ``flatfield`` (None: without one) and ``geometry``
        (default: the current ones; a job passes what it used); the model becomes the session's model.
        Made from inputs that changed meanwhile, it is stale at once."""
        self._keep(result, flatfield, geometry)
        self.model = str(model)
        self._prediction = (prediction, result)
        self._changed("prediction")

    @property
    def prediction(self):
        """The latest prediction while the preprocessing result it came from still holds (same
        flat-field and geometry), else None."""
        if self._prediction is None:
            return None
        prediction, result = self._prediction
        return prediction if self.result(result.params) is result else None

    @property
    def stale_prediction(self):
        """The latest prediction when it no longer holds (its inputs changed), else None."""
        if self._prediction is None or self.prediction is not None:
            return None
        return self._prediction[0]

    def clear_prediction(self) -> None:
        self._prediction = None
        self._changed("prediction")


def _reaches(params, r_max_px: float) -> bool:
    """Whether a pass made with ``params`` has a radial profile to at least ``r_max_px``."""
    return params.ria_r_max_px is None or params.ria_r_max_px >= r_max_px


def _width_of(result):
    """The chip-edge pixel width ``result`` was made with, as a session states it: the width given
    or read from the file, None when the frames gave it (or it was assumed), ``_OWN_WIDTH`` when
    the result's own parameters set it."""
    if result.params.edge_pixel_width is not None:
        return _OWN_WIDTH
    resolved = result.resolved or {}
    if resolved.get("edge_pixel_width") is None or resolved.get("edge_pixel_width_origin") in _UNSTATED:
        return None
    return float(resolved["edge_pixel_width"])


def _params_key(params) -> str:
    return json.dumps(jsonable(params.to_dict()), sort_keys=True)


def _geometry_key(geometry) -> str:
    """The geometry's values (not where they came from: a value confirmed by the user is the same value)."""
    values = {f.name: getattr(geometry, f.name) for f in dataclasses.fields(geometry) if f.compare}
    return json.dumps(jsonable(values), sort_keys=True)


def _q_of(geometry) -> tuple:
    from ..geometry import Q_FIELDS

    return tuple(getattr(geometry, name) for name in Q_FIELDS)
