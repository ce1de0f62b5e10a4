"""Modules a command will need later, imported in a thread while its main thread works."""

from __future__ import annotations


def import_in_background(*modules: str) -> None:
    """Import ``modules`` in a daemon thread, beside what the main thread does (a model and scans
    being opened, frames being processed), instead of on the way of the work that needs them
    (:func:`importing_when_called` starts it when a pass over the frames begins). Python's import lock makes an
    import of the same module in the main thread wait for this one, never import it twice; a
    module that cannot be imported is left to fail where it is needed, with its message."""
    import importlib
    import threading

    def work():
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - reported where the module is needed
                pass

    threading.Thread(target=work, name="sedclassify-imports", daemon=True).start()


def importing_when_called(progress, *modules: str):
    """``progress(done, total)`` that first starts importing ``modules`` in the background
    (:func:`import_in_background`), at its first call: a pass over the frames reports its start
    once the worker threads have their first frames, and from then on the cores run the kernels,
    which do not hold the interpreter lock, so the import takes a little of their time instead of
    the lock the single-threaded start (opening the scan, the calibration sample, the plan) needs
    all the time (h5py: 23 ms of Python; measured in docs/performance.md, session 29)."""
    started = []

    def report(done, total):
        if not started:
            started.append(True)
            import_in_background(*modules)
        progress(done, total)

    return report
