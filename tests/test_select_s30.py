"""The centring's selection (``_kernels._select``, a quickselect without branches on its comparisons)
and the medians built on it: the k-th smallest value and a partition around it, for any k, on the
values it meets (a window border's Poisson counts with many repeats, flat-field-corrected floats,
an edge's distances in float64, all equal, sorted, reversed), and numba's ``np.median`` to the bit."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from napari_sedclassify.processing._kernels import _median_in_place, _select


@njit
def _numba_median(a):
    return np.median(a)


def _cases():
    rng = np.random.default_rng(30)
    for m in (1, 2, 3, 7, 50, 51, 119, 120, 130):
        yield "poisson 0.5", rng.poisson(0.5, m).astype(np.float32)
        yield "poisson 30", rng.poisson(30.0, m).astype(np.float32)
        yield "corrected", (rng.poisson(8.0, m) * rng.uniform(0.8, 1.2, m)).astype(np.float32)
        yield "distances", np.abs(rng.normal(0.0, 0.3, m))
        yield "equal", np.full(m, 3.0, np.float32)
        yield "sorted", np.sort(rng.uniform(0, 5, m)).astype(np.float32)
        yield "reversed", np.sort(rng.uniform(0, 5, m))[::-1].copy()


@pytest.mark.parametrize("name,values", list(_cases()), ids=lambda v: v if isinstance(v, str) else str(len(v)))
def test_select_finds_the_kth_value_and_partitions_around_it(name, values):
    m = len(values)
    ordered = np.sort(values)
    for k in sorted({0, m // 2, max(0, m // 2 - 1), m - 1, m // 3}):
        buf = values.copy()
        got = _select(buf, m, k)
        assert got == ordered[k], (name, k)
        assert buf[k] == got and (buf[:k] <= got).all() and (buf[k + 1:] >= got).all(), (name, k)
        np.testing.assert_array_equal(np.sort(buf), ordered)  # the same values, reordered
    padded = np.concatenate([values, np.full(5, -1.0, values.dtype)])  # only buf[:m] is looked at
    assert _select(padded, m, m // 2) == ordered[m // 2]
    assert (padded[m:] == -1.0).all()


@pytest.mark.parametrize("name,values", list(_cases()), ids=lambda v: v if isinstance(v, str) else str(len(v)))
def test_the_median_in_place_is_numbas_np_median_to_the_bit(name, values):
    expected = _numba_median(values)
    got = _median_in_place(values.copy(), len(values))
    assert got == expected and type(got) is type(expected), (name, got, expected)
