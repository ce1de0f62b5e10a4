"""Frames the pipeline went through while something records them: the ``sedclassify`` command
prints its wall time and frames/s from this (``cli.main``).

Steps that read a scan's frames call ``report(key, n)`` with the scan's path (or the object) as
key; a scan met twice in one command (preprocessed, then reduced) counts once. ``report`` does
nothing while nobody records, so the napari widgets and library users pay nothing.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

_lock = threading.Lock()
_active: list[dict] = []


@contextmanager
def recording():
    """Collect what ``report`` says while inside; yields a dict key -> frames (sum its values)."""
    seen: dict = {}
    with _lock:
        _active.append(seen)
    try:
        yield seen
    finally:
        with _lock:
            _active.remove(seen)


def report(key, n_frames: int) -> None:
    """``n_frames`` frames of ``key`` (a scan's path, or the scan) went through a pipeline step."""
    if not _active:
        return
    if not isinstance(key, (str, int, float, tuple)):
        key = id(key)
    with _lock:
        for seen in _active:
            seen[key] = max(seen.get(key, 0), int(n_frames))
