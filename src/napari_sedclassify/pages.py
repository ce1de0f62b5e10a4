"""Fresh memory for frame blocks: ordinary pages for short runs, numpy's huge-page advice for long ones.

numpy advises the kernel to back every array of 4 MB or more with transparent huge pages
(``madvise(MADV_HUGEPAGE)``). Where the kernel's THP ``defrag`` setting is ``madvise`` (the
default of many distributions), the first touch of such memory may stop the thread while the
kernel compacts memory to find 2 MB of contiguous pages: the blocks of frames a run reads (40
frames of 512 x 512 uint16: 21 MB) are fresh memory in every new process. On the project's 2-core
machine the first two blocks of a run took 31-229 ms to read instead of 3-6 ms, and the first
integrated image of a 40 x 40 x 512² scan in a process took 343-637 ms with the advice, 237-313
ms without. Once granted, huge pages pay back over a long run (fewer address translations on a
virtual machine): preprocessing a 128 x 128 x 512² scan (8.6 GB) took 8.2-13.0 s (median 9.1)
with the advice, 10.8-12.0 s (11.1) without. Hence the rule: the advice off for runs that stream
less than ``LONG_RUN_BYTES``, numpy's default for longer ones (docs/performance.md, session 12).
"""

from __future__ import annotations

import os

#: numpy's own switch for the advice, read when numpy is imported; when set, it is left alone.
NUMPY_ENV = "NUMPY_MADVISE_HUGEPAGE"
#: Runs streaming at least this much data keep numpy's huge-page advice.
LONG_RUN_BYTES = 2 << 30


def _switch():
    try:
        from numpy._core.multiarray import _set_madvise_hugepage  # numpy >= 2
    except ImportError:  # numpy 1.x
        try:
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:
            return None
    return _set_madvise_hugepage


def small_pages(stream_bytes: int | None = None) -> bool:
    """Set numpy's huge-page advice for the arrays it allocates from now on in this process, for
    a run that streams ``stream_bytes`` of frames: off below ``LONG_RUN_BYTES`` (or when unknown),
    on (numpy's default) from there. A ``NUMPY_MADVISE_HUGEPAGE`` the user set wins. Returns True
    when the advice is now off.

    For processes whose work is streaming frames (the ``sedclassify`` command, the napari
    plugin's viewer): numpy's runtime switch for what its environment variable sets at import."""
    if NUMPY_ENV in os.environ:  # the user's choice, applied by numpy at import
        return os.environ[NUMPY_ENV] == "0"
    switch = _switch()
    if switch is None:
        return False
    small = stream_bytes is None or stream_bytes < LONG_RUN_BYTES
    switch(not small)
    return small


def input_bytes(paths) -> int:
    """Total size of the files among ``paths`` (what a command is about to read; other
    arguments, and files that cannot be read, count 0)."""
    total = 0
    for path in paths:
        try:
            if os.path.isfile(path):
                total += os.path.getsize(path)
        except (OSError, ValueError, TypeError):
            pass
    return total
