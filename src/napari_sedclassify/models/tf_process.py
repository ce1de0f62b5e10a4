"""Run a job (training any model, CNN prediction) in a child process: :func:`run_in_process`.

Importing TensorFlow in a process that renders a napari canvas on software OpenGL segfaults
(notes: napari-headless.md), and scikit-learn training holds the interpreter lock for long
stretches (the viewer's event loop would freeze), so the napari widgets run such jobs in a fresh
interpreter (no Qt, no OpenGL, no inherited threads) started as ``python -m
napari_sedclassify.models._tf_child``. Unlike ``multiprocessing``'s spawn, this never imports the
parent's ``__main__``: a script that starts napari without an ``if __name__ == "__main__":``
guard is not run a second time, and notebooks and the napari console work alike.

Starting that interpreter and importing what a job needs (scikit-learn: 2-3 s here; TensorFlow:
5-10 s) used to come before every job. :func:`prestart` starts a **spare** child ahead of time,
which imports given modules and then waits for its job; :func:`run_in_process` with the same
``warm`` modules takes it (a fresh child is started when there is none, or it has died). A spare
ends when its parent closes its stdin or goes away.

A job's large arrays (a scan's crops: GBs for a 256 x 256 scan) do not go through the pipe: the
job is pickled with protocol 5's out-of-band buffers, each array of :data:`FILE_ARRAY_BYTES` or
more is written to a file in a temporary folder (:data:`WRITE_BLOCK_BYTES` at a time, straight from
the array's memory), and the child maps the files (copy-on-write) instead of receiving a copy. The
message stays small and neither process holds a pickled copy of the scan; the folder is removed
when the job ends, however it ends.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import queue as queue_module
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ..errors import Cancelled

#: Arrays of this many bytes or more reach the child through a file it maps, not the message pipe.
FILE_ARRAY_BYTES = 1 << 20
#: Bytes of such an array written at a time (cancel() is checked between blocks).
WRITE_BLOCK_BYTES = 64 << 20


class WorkerProcessError(RuntimeError):
    """The child raised (the message carries its traceback) or died without a result."""


def _child_env() -> dict:
    """The parent's environment, with this package importable in the child whatever the install."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds napari_sedclassify
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


def _read_messages(stream, out: queue_module.Queue) -> None:
    """Thread: frames from the child's message pipe into ``out``; ("eof",) at its end."""
    from ._tf_child import read_frame_bytes

    try:
        while True:
            data = read_frame_bytes(stream)
            if data is None:
                break
            try:
                out.put(pickle.loads(data))
            except Exception as exc:  # e.g. a result of a class this process cannot import
                out.put(("error", f"the child's message could not be read: {type(exc).__name__}: {exc}", ""))
    finally:
        out.put(("eof",))


def _process_nice() -> int:
    """This process's niceness (its main thread's on Linux, where a thread can be niced on its own)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, os.getpid())
    except (AttributeError, OSError):
        return 0


_spares: dict[tuple, subprocess.Popen] = {}
_spares_lock = threading.Lock()


def _start_child(warm=(), child_nice: int = 0) -> subprocess.Popen:
    argv = [sys.executable, "-m", "napari_sedclassify.models._tf_child"]
    if warm:
        argv += ["--preload", ",".join(warm)]
    if child_nice:  # niced from its first instruction: a spare's imports must not take the viewer's CPU
        argv += ["--nice-at-least", str(_process_nice() + int(child_nice))]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_child_env(), cwd=os.getcwd())


def prestart(warm=(), child_nice: int = 0) -> None:
    """Start a spare child now, unless one for the same ``warm`` modules and ``child_nice`` is
    waiting: it imports ``warm`` (module names) and waits for the next :func:`run_in_process`
    given the same ``warm`` and ``child_nice``."""
    key = (tuple(warm), int(child_nice))
    with _spares_lock:
        spare = _spares.get(key)
        if spare is None or spare.poll() is not None:
            _spares[key] = _start_child(warm, child_nice)


def _take_spare(warm, child_nice: int) -> subprocess.Popen | None:
    with _spares_lock:
        spare = _spares.pop((tuple(warm), int(child_nice)), None)
    return spare if spare is not None and spare.poll() is None else None


def stop_spares() -> None:
    """End every spare child (closing its stdin ends it); also run at exit."""
    with _spares_lock:
        spares = list(_spares.values())
        _spares.clear()
    for spare in spares:
        with contextlib.suppress(OSError):
            spare.stdin.close()
        try:
            spare.wait(timeout=5)
        except subprocess.TimeoutExpired:
            spare.kill()
        with contextlib.suppress(OSError):
            spare.stdout.close()


def _pickle_job(func, args, kwargs) -> tuple[bytes, list]:
    """(the pickle of the job, its out-of-band buffers in order): the data of every contiguous array
    of :data:`FILE_ARRAY_BYTES` or more is left out of the pickle (pickle protocol 5)."""
    arrays = []

    def in_band(buffer) -> bool:
        view = memoryview(buffer)
        if view.nbytes < FILE_ARRAY_BYTES or not view.contiguous:
            return True
        arrays.append(buffer)
        return False

    return pickle.dumps((func, args, kwargs), protocol=5, buffer_callback=in_band), arrays


def _write_arrays(arrays, folder, cancel, name) -> list[str]:
    """Write each buffer to its own file in ``folder``, :data:`WRITE_BLOCK_BYTES` at a time and
    without a copy; raises Cancelled when ``cancel()`` turns True meanwhile. Returns the paths."""
    paths = []
    for i, buffer in enumerate(arrays):
        path = os.path.join(folder, f"array{i}.bin")
        with buffer.raw() as data, open(path, "wb") as f:
            for start in range(0, data.nbytes, WRITE_BLOCK_BYTES):
                if cancel is not None and cancel():
                    raise Cancelled(f"{name} cancelled before it started")
                f.write(data[start:start + WRITE_BLOCK_BYTES])
        paths.append(path)
    return paths


def run_in_process(func, *args, progress=None, cancel=None, poll_s: float = 0.1, child_nice: int = 0, warm=(),
                   **kwargs):
    """Call ``func(*args, progress=..., cancel=..., **kwargs)`` in a child process and return its
    result. ``func`` must be importable (not defined in ``__main__``); arguments and result must
    pickle (large arrays among the arguments reach the child through temporary files it maps, see
    the module's description). The child's ``progress(epoch, logs)`` calls reach
    ``progress`` in the calling thread; ``cancel()`` is polled and forwarded (the child's
    ``cancel()`` then returns True, as it does when the parent goes away). ``child_nice``: the child
    runs this much nicer than this process's main thread, whichever thread starts it (lower CPU priority, so that the viewer keeps the CPU it needs to draw;
    POSIX only). ``warm``: the modules of a spare child started by :func:`prestart`, taken when
    one is waiting. Raises :class:`~napari_sedclassify.errors.Cancelled` when cancelled, and
    :class:`WorkerProcessError` (with the child's traceback) when the child fails or dies."""
    name = getattr(func, "__name__", func)
    if getattr(func, "__module__", None) == "__main__":
        raise ValueError(f"{name} is defined in __main__: the worker process runs functions it can import; "
                         "define it in a module")
    job, arrays = _pickle_job(func, args, kwargs)  # fails here, not in the child
    with tempfile.TemporaryDirectory(prefix="sedclassify-job-", ignore_cleanup_errors=True) as folder:
        paths = _write_arrays(arrays, folder, cancel, name)
        outcome = _run_job(name, job, paths, progress, cancel, poll_s, child_nice, warm)
    if outcome[0] == "cancelled":
        raise Cancelled(outcome[1])
    if outcome[0] == "error":
        raise WorkerProcessError(f"{outcome[1]}\n--- in the worker process ---\n{outcome[2]}")
    return outcome[1]


def _run_job(name, job: bytes, array_paths, progress, cancel, poll_s, child_nice, warm) -> tuple:
    """Send ``job`` (with the files of its out-of-band buffers) to a child, relay its progress and
    ``cancel``, wait for it to end; returns its last message ("result" | "cancelled" | "error", ...)."""
    from ._tf_child import write_frame

    proc = _take_spare(warm, child_nice) or _start_child((), child_nice)
    messages: queue_module.Queue = queue_module.Queue()
    reader = threading.Thread(target=_read_messages, args=(proc.stdout, messages), daemon=True,
                              name=f"messages of {name}")
    reader.start()
    outcome = None
    cancel_sent = False

    def send_cancel():
        nonlocal cancel_sent
        if not cancel_sent:
            cancel_sent = True
            with contextlib.suppress(OSError):  # the child has gone already
                proc.stdin.write(b"C")
                proc.stdin.flush()

    try:
        with contextlib.suppress(OSError):  # the child died at start; its exit code says more below
            write_frame(proc.stdin, {"sys_path": list(sys.path), "cwd": os.getcwd(), "nice": int(child_nice),
                                     "nice_at_least": _process_nice() + int(child_nice) if child_nice else None,
                                     "arrays": list(array_paths)})
            proc.stdin.write(len(job).to_bytes(8, "big") + job)
            proc.stdin.flush()
        while outcome is None:
            if cancel is not None and cancel():
                send_cancel()
            try:
                msg = messages.get(timeout=poll_s)
            except queue_module.Empty:
                continue
            if msg[0] == "progress":
                if progress is not None:
                    progress(msg[1], msg[2])
            elif msg[0] == "eof":
                try:
                    code = proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    code = None
                raise WorkerProcessError(f"the worker process for {name} died without a result (exit code {code})")
            else:
                outcome = msg
    finally:
        if outcome is None:
            send_cancel()
        with contextlib.suppress(OSError):
            proc.stdin.close()  # the end of stdin also tells the child to stop
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        proc.stdout.close()
    return outcome


atexit.register(stop_spares)
