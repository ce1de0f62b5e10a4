"""``median``: numpy's median without numpy.ma.

``np.median`` checks its result for masked arrays, and that check imports numpy.ma (6-19 ms, on
one core, before a command's first frame or between its frames and its classes; ``np.unique``
does the same). The plan, the descan fit, the flat-field and the RIA features take their medians
here instead.
"""

from __future__ import annotations

import numpy as np


def median(a, axis: int | None = None):
    """``np.median(a, axis)`` to the bit: the same partition, then the mean of the middle element
    or two (numpy's dtype: a numpy scalar, or an array over the other axes); NaN wherever a NaN
    was among the values."""
    a = np.asarray(a)
    if axis is None:
        a, axis = a.ravel(), 0
    axis %= a.ndim
    n = a.shape[axis]
    if n == 0:
        return np.median(a, axis=axis)  # numpy's warning and NaN
    k = n // 2
    kth = [k - 1, k] if n % 2 == 0 else [k]
    nans = a.dtype.kind in "fc"
    part = np.partition(a, kth + [-1] if nans else kth, axis=axis)
    middle = [slice(None)] * a.ndim
    middle[axis] = slice(k - 1, k + 1) if n % 2 == 0 else slice(k, k + 1)
    result = np.mean(part[tuple(middle)], axis=axis)
    if nans:
        last = np.take(part, -1, axis=axis)  # a NaN sorts last
        bad = np.isnan(last)
        if bad.any():
            if np.ndim(result) == 0:
                return last
            np.copyto(result, last, where=bad)
    return result
