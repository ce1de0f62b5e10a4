"""How often the interpreter hands the GIL between threads while background work runs next to
napari's event loop."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

#: The switch interval while background work runs (s; Python's default is 0.005). A job's threads
#: hold the GIL only between kernel calls; each time one asked for it while the event loop ran
#: Python (adding a layer, painting) it waited up to the whole interval, and the event loop waited
#: as long for it back from the warm-up's imports. Six alternating runs of opening a 40 x 40 scan
#: (benchmarks/bench_napari_session.py): 0.71-0.97 s with 1 ms, 0.76-1.47 s with 5 ms, leaving out a
#: first run with a cold disk cache (the integrated image is computed while the layer is added and
#: first painted).
QUICK_SWITCH_INTERVAL_S = 0.001

_lock = threading.Lock()
_active = 0
_before = None


@contextmanager
def quick_switches():
    """While any such block runs (in any thread), the interpreter switches threads every
    ``QUICK_SWITCH_INTERVAL_S`` at most; the interval from before the first block is put back when
    the last one ends. Blocks may overlap and end in any order."""
    global _active, _before
    with _lock:
        if _active == 0:
            _before = sys.getswitchinterval()
            sys.setswitchinterval(min(_before, QUICK_SWITCH_INTERVAL_S))
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                sys.setswitchinterval(_before)
