"""Selection networks: the comparators that put the k-th smallest of m values in place k.

A network is a fixed list of compare-exchange steps (i, j), i < j: the smaller of the two values
goes to i. As the steps do not depend on the values, one step can be applied to many pixels at
once: the bad-pixel search orders a detector row's pixels together, one vectorised pass along
two rows of values per step (``_kernels._compare_exchange_rows``), where a selection per pixel
(quickselect, or counting ranks) branches on every value. A 48-frame sample's median over a
512 x 512 frame: 14 ms against 40 ms, the 5 x 5 median 4.6 ms against 19-32 ms, the same values
to the bit (docs/performance.md, session 26).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def _batcher(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort for n (a power of two) values: its comparators in order."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


@lru_cache(maxsize=16)
def selection_network(m: int, k: int) -> np.ndarray:
    """(p, 2) int64 comparators after which place k holds the k-th smallest (0-based) of m values.

    Batcher's sorting network for the next power of two, less the comparators that reach past m
    (the missing values would be +inf: those comparators never move anything) and those that
    cannot change place k (found walking back from k). Read-only: shared between calls."""
    m, k = int(m), int(k)
    if not 0 <= k < m:
        raise ValueError(f"place {k} is not among {m} values")
    n = 1
    while n < m:
        n *= 2
    needed = {k}
    kept = []
    for a, b in reversed([(a, b) for a, b in _batcher(n) if b < m]):
        if a in needed or b in needed:
            kept.append((a, b))
            needed.update((a, b))
    out = np.array(kept[::-1], np.int64).reshape(-1, 2)
    out.setflags(write=False)
    return out
