"""One rule for turning results, parameters and metadata into plain JSON values."""

from __future__ import annotations

import math

import numpy as np


def jsonable(value, *, max_array: int | None = None):
    """``value`` as plain JSON types: dict keys as strings, tuples and arrays as lists, numpy
    scalars as Python numbers, bytes decoded (latin-1), inf/NaN as the strings "inf", "-inf",
    "nan" (strict JSON has no such numbers), anything else as its ``str``. max_array: arrays
    with more elements are summarised as "array (shape) dtype" instead."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, max_array=max_array) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        if max_array is not None and value.size > max_array:
            return f"array {value.shape} {value.dtype}"
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [jsonable(v, max_array=max_array) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
