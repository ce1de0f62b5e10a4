"""The package's one atomic writer (``io/atomic.py``): temporary file beside the target, fsync,
rename, fsync of the folder; leftovers of killed writers are removed, live writers' are kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from napari_sedclassify.io import atomic


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path, monkeypatch):
    import psutil

    dead_pid = _dead_pid()
    asked = []
    real = psutil.pid_exists
    # psutil, not os.kill(pid, 0) here: on Windows that call terminates the process
    monkeypatch.setattr(psutil, "pid_exists", lambda pid: (asked.append(pid), real(pid))[1])
    target = tmp_path / "out.npy"
    dead = tmp_path / f".out.npy.{dead_pid}-abc123.part.npy"
    alive = tmp_path / f".out.npy.{os.getpid()}-def456.part.npy"
    other = tmp_path / ".other.npy.1-aaaaaa.part.npy"
    for p in (dead, alive, other):
        p.write_bytes(b"partial")
    assert atomic.remove_stale(target) == [dead]
    assert sorted(asked) == sorted([dead_pid, os.getpid()])
    assert not dead.exists() and alive.exists() and other.exists()
    atomic.write_npy(target, [1, 2, 3])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name, "out.npy"])


def test_rename_then_folder_fsync(tmp_path, monkeypatch):
    calls = []
    real_replace, realfsync_folder = os.replace, atomic.fsync_folder
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b)))
    monkeypatch.setattr(atomic, "fsync_folder", lambda d: (calls.append(("fsync folder", d)), realfsync_folder(d)))
    path = atomic.write_text(tmp_path / "a" / "note.txt", "hello")
    assert path.read_text() == "hello"
    assert calls == ["replace", ("fsync folder", tmp_path / "a")]


def test_failures_leave_the_target_untouched(tmp_path):
    target = tmp_path / "report.json"
    atomic.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text().strip() == '{\n  "a": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with pytest.raises(FileExistsError, match="--force"):
        atomic.write_text(target, "x", force=False)


def test_errors_name_the_target_not_the_temporary_file(tmp_path):
    """An error while writing (a read-only folder, a full disk) named the hidden temporary file
    ('.r.h5.25292-65d290.part.h5'), not the path asked for."""
    target = tmp_path / "r.h5"
    with pytest.raises(PermissionError) as exc:
        with atomic.atomic_output(target) as tmp:
            raise PermissionError(13, "Permission denied", str(tmp))
    assert str(exc.value) == f"{target}: cannot be written (Permission denied)"
    assert exc.value.errno == 13
    with pytest.raises(OSError, match=f"{target.name}: cannot be written") as exc:
        with atomic.atomic_output(target) as tmp:
            raise OSError(f"Unable to synchronously create file (unable to open file: name = '{tmp}')")
    assert ".part" not in str(exc.value)
    assert not target.exists() and list(tmp_path.iterdir()) == []
