"""The child process of :func:`napari_sedclassify.models.tf_process.run_in_process`.

Started as ``python -m napari_sedclassify.models._tf_child``: a fresh interpreter whose
``__main__`` is this module, so the script that started napari is never imported again.

Options: ``--preload a,b`` imports modules before anything is read (a spare child, started
ahead of its job); ``--nice-at-least N`` lowers its priority to niceness N at once.

Protocol (every message one frame: 8-byte big-endian length, then a pickle):
- stdin, from the parent: a header {"sys_path", "cwd", "nice", "arrays"}, then (func, args, kwargs)
  pickled with protocol 5, whose out-of-band buffers are the files "arrays" lists, in order (mapped
  copy-on-write here: the job may write to its arrays, the files stay as they are); afterwards
  one byte ``C`` asks to cancel, and the end of stdin (the parent went away) cancels too;
- the original stdout, to the parent: ("progress", n, dict), then one of ("result", value),
  ("cancelled", message) or ("error", message, traceback). Anything the job prints goes to
  stderr, so it cannot corrupt the messages.

:func:`quiet_tensorflow_start` (also used by ``cnn.import_keras`` in any process) keeps the notices
TensorFlow's C++ code prints while it loads off stderr.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import pickle
import re
import struct
import sys
import threading
import traceback

_LEN = struct.Struct(">Q")
#: What TensorFlow's C++ code writes to stderr while it loads, whatever TF_CPP_MIN_LOG_LEVEL says
#: (absl writes its records there until it is initialised): absl's notice about that, and its INFO
#: and WARNING records (e.g. "I0000 00:00:17... port.cc:153] oneDNN custom operations are on").
#: Errors (E, F) and everything else pass; a notice that follows a progress bar's text on its line
#: is cut from it.
_START_UP_NOTICE = re.compile(rb"(?:WARNING: All log messages before absl::InitializeLog\(\) is called"
                              rb"|[IW]\d{4} [\d:.]+ +\d+ [\w.-]+:\d+\] )[^\r\n]*\r?\n")
_LINE_END = re.compile(rb"(?<=\n)|(?<=\r)(?!\n)")


def write_frame(stream, obj, lock=None) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    with lock or contextlib.nullcontext():
        stream.write(_LEN.pack(len(data)) + data)
        stream.flush()


def read_frame_bytes(stream) -> bytes | None:
    """The bytes of the next frame, or None at the end of the stream (a buffered stream, whose
    read(n) returns n bytes unless the stream ends first)."""
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    n = _LEN.unpack(head)[0]
    data = stream.read(n)
    return data if len(data) == n else None


def _forward_kept_lines(read_fd: int, out_fd: int) -> None:
    """Thread: copy the lines read from ``read_fd`` (ended by \\n or \\r, as a progress bar's)
    to ``out_fd``, less TensorFlow's start-up notices, until the pipe's end."""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe, os.fdopen(out_fd, "wb", closefd=False) as out:
        pending = b""
        while chunk := pipe.read(1 << 16):
            *lines, pending = _LINE_END.split(pending + chunk)
            out.write(_START_UP_NOTICE.sub(b"", b"".join(lines)))
            out.flush()
        out.write(pending)


@contextlib.contextmanager
def quiet_tensorflow_start():
    """Import TensorFlow within this: TF_CPP_MIN_LOG_LEVEL=2 unless set, and stderr (file
    descriptor 2, where C++ code writes) passes through a filter that drops the start-up notices
    that variable does not reach (:data:`_START_UP_NOTICE`); anything else written meanwhile
    (errors, progress bars) reaches stderr as it is."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    stderr_fd = os.dup(2)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    forward = threading.Thread(target=_forward_kept_lines, args=(read_fd, stderr_fd), daemon=True,
                               name="stderr without TensorFlow's notices")
    forward.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(stderr_fd, 2)  # the pipe's last write end closes: the thread forwards the rest and ends
        forward.join()
        os.close(stderr_fd)


def _mapped(paths) -> list:
    """The files of a job's out-of-band buffers, mapped copy-on-write (pages are read as used)."""
    maps = []
    for path in paths:
        with open(path, "rb") as f:
            maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY))
    return maps


def _nice_to(target: int) -> None:
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):  # lower priority: the parent's UI keeps the CPU it needs to draw
            os.nice(max(0, int(target) - os.nice(0)))


def _preload(argv) -> None:
    """Apply --nice-at-least, then import --preload's modules (a spare waiting for its job)."""
    import importlib

    for flag, value in zip(argv, argv[1:]):
        if flag == "--nice-at-least":
            _nice_to(int(value))
    names = [name for flag, value in zip(argv, argv[1:]) if flag == "--preload"
             for name in filter(None, value.split(","))]
    if not names:
        return
    with quiet_tensorflow_start():  # e.g. keras
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as exc:  # the job will import it again and report what fails
                print(f"preloading {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def main(argv=()) -> int:
    _preload(list(argv))
    messages = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # prints (ours, TensorFlow's, C code's) -> stderr
    sys.stdout = sys.stderr
    send = functools.partial(write_frame, messages, lock=threading.Lock())
    commands = sys.stdin.buffer
    header = read_frame_bytes(commands)
    if header is None:
        return 2
    header = pickle.loads(header)
    sys.path[:0] = [p for p in header.get("sys_path", []) if p not in sys.path]  # the parent's modules
    if header.get("cwd"):
        with contextlib.suppress(OSError):  # relative paths as in the parent when the job was given
            os.chdir(header["cwd"])
    if header.get("nice"):
        target = header.get("nice_at_least")
        # the parent's main thread's niceness + "nice", whatever the (possibly niced) thread that
        # started this process passed on
        _nice_to(os.nice(0) + int(header["nice"]) if target is None else target)
    stop = threading.Event()

    def error(exc, what=""):
        send(("error", f"{what}{type(exc).__name__}: {exc}", traceback.format_exc()))

    try:
        job = read_frame_bytes(commands)
        if job is None:
            return 2
        func, args, kwargs = pickle.loads(job, buffers=_mapped(header.get("arrays", ())))
    except BaseException as exc:
        error(exc)
        return 1

    def watch_parent():
        while True:
            byte = commands.read(1)
            if not byte or byte == b"C":
                stop.set()
            if not byte:
                return

    threading.Thread(target=watch_parent, daemon=True, name="cancel watch").start()

    def progress(n, logs=None):
        send(("progress", n, dict(logs or {})))

    from ..errors import Cancelled

    try:
        result = func(*args, progress=progress, cancel=stop.is_set, **kwargs)
    except Cancelled as exc:
        send(("cancelled", str(exc)))
    except BaseException as exc:  # everything goes back to the parent
        error(exc)
    else:
        try:
            send(("result", result))
        except Exception as exc:  # a result that does not pickle
            error(exc, "the result could not be sent back: ")
    messages.close()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    # No interpreter finalization: the cancel-watch thread is blocked reading stdin, and finalizing
    # under it ends in "Fatal Python error: could not acquire lock for <stdin>" on stderr.
    os._exit(code)
