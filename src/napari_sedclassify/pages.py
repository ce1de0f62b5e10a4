"""Fresh memory for frame blocks: ordinary pages instead of numpy's transparent-huge-page advice.

numpy advises the kernel to back every array of 4 MB or more with transparent huge pages
(``madvise(MADV_HUGEPAGE)``). Where the kernel's THP ``defrag`` setting is ``madvise`` (the
default of many distributions), each first touch of such memory may then stop the thread while
the kernel compacts memory to find 2 MB of contiguous pages: the blocks of frames a run reads
(40 frames of 512 x 512 uint16: 21 MB) are fresh memory in every new process. On the project's
2-core machine the first two blocks of a run took 31-229 ms to read instead of 3-6 ms, and the
first integrated image of a 40 x 40 x 512² scan in a process took 343-637 ms with the advice,
237-313 ms without (docs/performance.md, session 12). Later runs reuse memory and do not differ.
"""

from __future__ import annotations

import os

#: numpy's own switch for the advice, read when numpy is imported; when set, it is left alone.
NUMPY_ENV = "NUMPY_MADVISE_HUGEPAGE"


def small_pages() -> bool:
    """Stop numpy advising huge pages for the arrays it allocates from now on in this process,
    unless ``NUMPY_MADVISE_HUGEPAGE`` says otherwise. Returns True when the advice is now off.

    For processes whose work is streaming frames (the ``sedclassify`` command, the napari
    plugin's viewer): numpy's runtime switch for what its environment variable sets at import."""
    if NUMPY_ENV in os.environ:  # the user's choice, applied by numpy at import
        return os.environ[NUMPY_ENV] == "0"
    try:
        from numpy._core.multiarray import _set_madvise_hugepage  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        try:
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:
            return False
    _set_madvise_hugepage(False)
    return True
