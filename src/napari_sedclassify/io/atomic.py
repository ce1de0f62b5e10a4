"""Atomic outputs: write to a temporary file beside the target, then ``os.replace``.

Readers of the target see the old file or the complete new one, never a half-written one: an
exception or Ctrl-C removes the temporary file, and a process killed outright (SIGKILL, power
loss) leaves only a hidden ``.<name>.<pid>-<random>.part<suffix>`` file that the next run for the
same target removes (:func:`remove_stale`), since the process that wrote it no longer exists.
Existing targets are replaced only with ``force=True`` (the CLI's ``--force``). After the rename
the folder is flushed too (where the platform allows), so the new name survives a power loss.

The package's one atomic writer: model files, figures, class maps, reports and live outputs all
go through :func:`atomic_output` (or :func:`atomic_path` / :func:`write_text` / :func:`write_json`
/ :func:`write_npy`, which replace an existing file).
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_PART = ".part"


def check_target(path, force: bool = False) -> Path:
    """``path`` as a Path; raises FileExistsError when it exists and ``force`` is False."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path}: exists; not overwritten (use --force to replace it)")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not an output file")
    return path


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}{_PART}{path.suffix}")


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists. psutil asks the system without signalling it: on Windows
    ``os.kill(pid, 0)`` would terminate the process."""
    import psutil

    return psutil.pid_exists(pid)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def remove_stale(path) -> list[Path]:
    """Remove temporary files of ``path`` left by killed runs (their process is gone)."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(f".{path.name}.*{_PART}{path.suffix}"):
        tag = tmp.name[len(path.name) + 2:].split(_PART)[0]
        pid = tag.split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextmanager
def atomic_output(path, *, force: bool = False):
    """Yield a temporary path in the target's folder; on success it replaces ``path``.

    Refuses an existing ``path`` unless ``force``. The data are flushed to disk (fsync) before
    the rename, and the folder after it. On any exception (KeyboardInterrupt included) the
    temporary file is removed and ``path`` is untouched.
    """
    path = check_target(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"{path}: nothing was written")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if path.exists() and not force:  # appeared while we were writing
            raise FileExistsError(f"{path}: appeared while writing; not overwritten (use --force)")
        os.replace(tmp, path)
        fsync_folder(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_path(path):
    """:func:`atomic_output` that replaces an existing ``path`` (``force=True``): yields a temporary
    path in the target's folder that replaces ``path`` on success."""
    return atomic_output(path, force=True)


def write_text(path, text: str, *, force: bool = True) -> Path:
    """Write ``text`` atomically."""
    with atomic_output(path, force=force) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path, obj, *, force: bool = True) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_output(path, force=force) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
    return Path(path)


def write_npy(path, array, *, force: bool = True) -> Path:
    """Write ``array`` as a .npy file atomically."""
    with atomic_output(path, force=force) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)
    return Path(path)
