"""The package's one atomic writer: write to a temporary file beside the target, then ``os.replace``.

Readers see the old file or the complete new one. An exception or Ctrl-C removes the temporary
file; a process killed outright leaves a hidden ``.<name>.<pid>-<random>.part<suffix>`` file that
the next run for the same target removes (:func:`remove_stale`). Existing targets are replaced
only with ``force=True`` (the CLI's ``--force``). The folder is flushed after the rename.
:func:`staged_files` does the same for a set of files that belong together.
"""

from __future__ import annotations

import json
import os
import shutil
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


def _process_exists(pid: int) -> bool:
    """Whether process ``pid`` is running, asked without signalling it (on Windows os.kill(pid, 0)
    would terminate it). psutil is imported only here, when a leftover file names a process: not
    on every command's way out (7 ms)."""
    import psutil

    return psutil.pid_exists(pid)


def remove_stale(path) -> list[Path]:
    """Remove temporary files (or folders: a zarr store) of ``path`` left by killed runs (their
    process is gone)."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*{_PART}{path.suffix}"):
        pid = tmp.name[len(path.name) + 2:].split("-")[0]  # .<name>.<pid>-<random>.part<suffix>
        if pid.isdigit() and not _process_exists(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def temporary_path(path) -> Path:
    """A hidden path beside ``path`` for writing it (or moving it aside), named so that
    :func:`remove_stale` removes it once this process is gone: ``.<name>.<pid>-<random>.part<suffix>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(3).hex()}{_PART}{path.suffix}")


@contextmanager
def atomic_output(path, *, force: bool = False):
    """Yield a temporary path in the target's folder; on success it replaces ``path`` (refused when it
    exists, unless ``force``), flushed to disk before the rename and the folder after it. On any
    exception (KeyboardInterrupt included) the temporary file is removed, ``path`` is untouched."""
    path = check_target(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = temporary_path(path)
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
    except OSError as exc:
        if tmp.name not in str(exc):
            raise
        raise _naming(exc, path) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` (about the hidden temporary file) as the same kind of error about ``path``, the
    file the caller asked for: "out/r.h5: cannot be written (Permission denied)"."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc).split(" (")[0]
    try:
        new = type(exc)(f"{path}: cannot be written ({reason})")
    except TypeError:  # a subclass with a constructor of its own
        new = OSError(f"{path}: cannot be written ({reason})")
    new.errno = exc.errno
    return new


@contextmanager
def staged_files(folder, *, force: bool = False):
    """Yield a hidden staging folder inside ``folder`` for a set of outputs that belong together (a
    scan's class map, probabilities, keep-list...). When the block ends without error its files move
    into ``folder`` together, each by a rename (existing ones only with ``force``), so a run stopped
    while writing (Ctrl-C, an error) leaves the previous set, never part of a new one beside part of
    the old. On an exception the staging folder is removed; one left by a killed run is removed by
    the next run that stages into ``folder``. Returns nothing; the files keep their names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(folder)
    staging = folder / f"{_STAGING}{os.getpid()}-{os.urandom(3).hex()}{_PART}"
    staging.mkdir()
    try:
        yield staging
        names = sorted(f.name for f in staging.iterdir())
        for name in names:
            check_target(folder / name, force)
        for name in names:
            os.replace(staging / name, folder / name)
        fsync_folder(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


#: The start of a staging folder's name: ``.staging.<pid>-<random>.part``.
_STAGING = ".staging."


def _remove_stale_staging(folder: Path) -> None:
    for old in folder.glob(f"{_STAGING}*{_PART}"):
        pid = old.name[len(_STAGING):].split("-")[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def atomic_path(path):
    """:func:`atomic_output` that replaces an existing ``path`` (``force=True``)."""
    return atomic_output(path, force=True)


def write_text(path, text: str, *, force: bool = True) -> Path:
    """Write ``text`` atomically."""
    with atomic_output(path, force=force) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path, obj, *, force: bool = True) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return write_text(path, json.dumps(obj, indent=2) + "\n", force=force)


def write_npy(path, array, *, force: bool = True) -> Path:
    """Write ``array`` as a .npy file atomically."""
    with atomic_output(path, force=force) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)
    return Path(path)
