"""Run a job (CNN training or prediction) in a spawned child process.

Importing TensorFlow in a process that renders a napari canvas on software OpenGL segfaults
(notes: napari-headless.md), so the napari widgets run TensorFlow work in a child started
with the ``spawn`` method (a fresh interpreter: no Qt, no OpenGL, no inherited threads).
The job is any importable function ``func(*args, progress=..., cancel=..., **kwargs)``; in
the child, ``progress(epoch, logs)`` messages travel back through a queue and are delivered
to the caller's ``progress`` in the calling thread; the caller's ``cancel()`` is polled and
forwarded as an Event the child's ``cancel()`` reads. Arguments and the result must pickle
(arrays, paths, dicts); pass file paths for large data.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import traceback

from . import Cancelled


class WorkerProcessError(RuntimeError):
    """The child raised (the message carries its traceback) or died without a result."""


def _child(func, args, kwargs, messages, stop):
    def progress(epoch, logs=None):
        messages.put(("progress", epoch, dict(logs or {})))

    try:
        result = func(*args, progress=progress, cancel=stop.is_set, **kwargs)
    except Cancelled as exc:
        messages.put(("cancelled", str(exc)))
    except BaseException as exc:  # everything goes back to the parent
        messages.put(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    else:
        messages.put(("result", result))


def run_in_process(func, *args, progress=None, cancel=None, poll_s: float = 0.1, **kwargs):
    """Call ``func(*args, progress=..., cancel=..., **kwargs)`` in a spawned child and return
    its result. Raises :class:`~napari_sedclassify.models.Cancelled` when cancelled, and
    :class:`WorkerProcessError` (with the child's traceback) when the child fails or dies."""
    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_child, args=(func, args, kwargs, messages, stop), daemon=True)
    proc.start()
    outcome = None
    try:
        while outcome is None:
            if cancel is not None and cancel():
                stop.set()
            try:
                msg = messages.get(timeout=poll_s)
            except queue_module.Empty:
                if not proc.is_alive():
                    try:  # a last message may still be in the pipe
                        msg = messages.get(timeout=1.0)
                    except queue_module.Empty:
                        raise WorkerProcessError(
                            f"the worker process for {getattr(func, '__name__', func)} died without a result "
                            f"(exit code {proc.exitcode})"
                        ) from None
                else:
                    continue
            if msg[0] == "progress":
                if progress is not None:
                    progress(msg[1], msg[2])
            else:
                outcome = msg
    finally:
        if outcome is None:
            stop.set()
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()
        messages.close()
    if outcome[0] == "cancelled":
        raise Cancelled(outcome[1])
    if outcome[0] == "error":
        raise WorkerProcessError(f"{outcome[1]}\n--- in the worker process ---\n{outcome[2]}")
    return outcome[1]
