"""Atomic file writes: write next to the target, then ``os.replace``."""

from __future__ import annotations

from pathlib import Path

from ..io.atomic import atomic_output


def atomic_path(path):
    """Yield a temporary path in the target's folder; on success it replaces ``path``.

    On an error (or Ctrl-C) the temporary file is removed and ``path`` is left untouched.
    """
    return atomic_output(path, force=True)


def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
