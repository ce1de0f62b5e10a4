"""``median``: numpy's median without numpy.ma.

``np.median`` checks its result for masked arrays, and that check imports numpy.ma (6-19 ms, on
one core, before a command's first frame; ``np.unique`` does the same). The plan and the descan
fit take their medians here instead.
"""

from __future__ import annotations

import numpy as np


def median(a):
    """``np.median(a)`` over all elements, to the bit: the same partition, then the mean of the
    middle element or two (a numpy scalar of the same dtype as numpy's); NaN when any element is
    NaN."""
    a = np.asarray(a).ravel()
    n = a.size
    if n == 0:
        return np.median(a)  # numpy's warning and NaN
    k = n // 2
    kth = [k - 1, k] if n % 2 == 0 else [k]
    nans = a.dtype.kind in "fc"
    part = np.partition(a, kth + [-1] if nans else kth)
    result = np.mean(part[k - 1 : k + 1] if n % 2 == 0 else part[k : k + 1])
    if nans and np.isnan(part[-1]):
        return part[-1]
    return result
