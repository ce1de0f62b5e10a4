"""Long jobs off the UI thread: a napari thread_worker, a progress bar, a Cancel button.

The engine reports progress through plain callables called from the worker thread
(``report(done, total, info=None)``) and polls ``cancelled()``; a QTimer on the UI thread
picks the reports up every ``UPDATE_MS`` (0.5 s), so the engine never touches Qt and the UI is
updated at a bounded rate however often the engine reports. The rate matters: on a
software-rendered desktop (Mesa llvmpipe: Xvfb, VNC, remote desktops) any change of a widget in
napari's window re-composes the whole window with the OpenGL canvas, 50-150 ms of the event
loop (benchmarks/bench_napari_session.py); at 10 updates a second the viewer would be busy most
of the time.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import traceback

from magicgui.widgets import Container, Label, ProgressBar, PushButton
# at import (with the widgets), not at the first job: importing it then took ~60 ms of the event loop
from napari.qt.threading import create_worker

from .interpreter import quick_switches


#: How often a running job's progress reaches the UI (progress bar, live plots), in ms.
UPDATE_MS = 500
#: A job that no widget shows (the reader's integrated image) gets napari's progress bar once it
#: has run this long (s). Creating that bar re-lays out napari's activity dialog, and every update
#: re-composes the window: 130-250 ms of the event loop each (benchmarks/bench_napari_session.py);
#: jobs started from a widget show their progress in the widget's own bar instead.
NAPARI_BAR_AFTER_S = 2.0
#: How much lower than the viewer's the jobs' threads run (Linux nice increment; threads a job
#: starts inherit it). On 2 cores, the event loop, Mesa's rendering threads and a job's 2
#: compute threads competed as equals: the viewer's first paint of a new layer took 120-220 ms
#: instead of 45-65 ms while the integrated image was computed (benchmarks/bench_napari_session.py).
#: An idle machine still gives the job all of its cores. 5, as for the training children
#: (``model_jobs.CHILD_NICE``): at 10 a job got too little while the canvas redrew continuously.
BACKGROUND_NICE = 5

_running_lock = threading.Lock()
_running = 0


def jobs_running() -> int:
    """How many BackgroundJobs are doing their work now (any viewer): guesses made ahead of the
    user (the diffraction view's prefetch) wait for them."""
    return _running


def _count_running(step: int) -> None:
    global _running
    with _running_lock:
        _running += step


def still_activity_indicator(viewer=None) -> bool:
    """Stop the animation of napari's "in progress" indicator (status bar) while our jobs run; it
    stays shown, still. napari plays an animated GIF there while any progress bar exists: on a
    software-rendered desktop each of its frames re-composes the whole window with the OpenGL
    canvas (about 100 ms), which kept the event loop busy most of the time a job ran (stalls of
    85-175 ms, several a second; benchmarks/bench_napari_session.py). Returns True when stopped.
    Uses napari's private window attributes, so it does nothing where they are not there."""
    import napari

    viewer = viewer or napari.current_viewer()
    try:
        movie = viewer.window._qt_window._activity_dialog._toggleButton._inProgressIndicator.movie()
        movie.stop()
    except (AttributeError, RuntimeError):  # another napari, a headless ViewerModel, a closed window
        return False
    return True


def lower_thread_priority(increment: int) -> bool:
    """Lower the calling thread's scheduling priority by ``increment`` (nice; threads it starts
    inherit it). Linux only: nice is per thread there; elsewhere nothing is changed. Returns
    True when lowered."""
    import os

    if not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + increment))
    except OSError:
        return False
    return True


#: What ``models.tf_process`` appends to the message of an error raised in a child process,
#: before the child's traceback: the traceback is for the log, never for a status or notification.
CHILD_TRACEBACK_MARK = "--- in the worker process ---"


def short_message(exc) -> str:
    """The message of ``exc`` for a status line or a notification: without the child process's
    traceback that a WorkerProcessError carries (that goes to the log), and without the blank lines
    around it; its command-line advice put as the widgets that do the same (``wording``)."""
    from .wording import in_napari_words

    text = str(exc)
    if CHILD_TRACEBACK_MARK in text:
        text = text.split(CHILD_TRACEBACK_MARK, 1)[0]
    return in_napari_words(text.strip())


def _ignore_progress(done, total):
    """``show_progress`` of a job whose widget is gone: its progress is dropped (no napari bar)."""


class BackgroundJob:
    """Run ``work(report, cancelled)`` in a thread worker with progress and cancellation.

    on_returned(result) runs on the UI thread when the job ends normally; on_progress(items)
    with the new (done, total, info) reports; on_finished() always, last. A job that raises
    shows a napari error notification naming ``description``; a cancelled one an info.
    """

    def __init__(self, description, work, *, on_returned=None, on_progress=None, on_finished=None):
        from qtpy.QtCore import QTimer

        self.description = description
        self.cancel_event = threading.Event()
        self.worker = None
        self.error = None
        self.traceback = None  # of the error, logged (the notification gives the message)
        self.done = False  # True once finished, whatever the outcome
        self.outcome = None  # "done", "cancelled" or "failed"
        self._work = work
        self._on_returned = on_returned
        self._on_progress = on_progress
        self._on_finished = on_finished
        self._pending = []
        self._lock = threading.Lock()
        self._counted = False  # in jobs_running(): from start() to the end of the work
        self._bar = None
        self._started = None
        self.show_progress = None  # (done, total) -> None on the UI thread; None: napari's bar
        self.orphaned = False  # its widget was closed: it is cancelled and says nothing more
        self._timer = QTimer()
        self._timer.setInterval(UPDATE_MS)
        self._timer.timeout.connect(self._tick)

    # worker thread -------------------------------------------------------------------
    def _run(self):
        """In napari's worker (a thread of Qt's shared pool): the work runs in a thread of its own
        at background priority (a pool thread, once lowered, could not be raised back without
        privileges, and napari's own workers share that pool)."""
        outcome = []
        thread = threading.Thread(target=self._run_low, args=(outcome,), daemon=True,
                                  name=f"sedclassify job: {self.description}")
        thread.start()
        thread.join()
        return outcome[0]

    def _run_low(self, outcome):
        lower_thread_priority(BACKGROUND_NICE)
        # Errors come back as a value: shown once, by us, as a clear notification (napari's
        # worker would otherwise also relay the raw traceback and re-raise it in the event loop).
        try:
            with quick_switches():  # the event loop and the job's threads get the GIL back within 1 ms
                outcome.append((True, self._work(self._report, self.cancel_event.is_set)))
        except BaseException as exc:
            self.traceback = traceback.format_exc()
            outcome.append((False, exc))
        finally:
            self._uncount()
        # The cyclic garbage the work left is collected here, before its result is shown: the
        # collector's full pass (25-80 ms holding the interpreter lock, measured with
        # bench_napari_session.py --trace-stalls) otherwise tended to start in the turn of the
        # event loop that adds the result's layers, adding up with them to one stall.
        gc.collect()

    def _uncount(self):
        """Out of jobs_running(), once: when the work ends (its thread), or at the latest when the
        job finishes on the UI thread (a worker that never ran)."""
        with self._lock:
            counted, self._counted = self._counted, False
        if counted:
            _count_running(-1)

    def _report(self, done, total=None, info=None):
        with self._lock:
            self._pending.append((done, total, info))

    # UI thread -----------------------------------------------------------------------
    def start(self):
        self.worker = create_worker(self._run, _start_thread=False)
        self.worker.returned.connect(self._returned)
        self.worker.finished.connect(self._finished)
        self._started = time.perf_counter()
        with self._lock:  # counted from now: what waits for jobs must not slip in before the thread starts
            self._counted = True
        _count_running(1)
        self._timer.start()
        self.worker.start()
        return self.worker

    def cancel(self):
        self.cancel_event.set()

    def orphan(self):
        """Its widget was closed (with its viewer): cancel it, and drop its progress, its result
        and its messages silently (no napari bar, no notification, no callback into the widget)."""
        self.orphaned = True
        self.show_progress = _ignore_progress
        self._on_progress = self._on_returned = None
        self.cancel()

    def _tick(self):
        """Every UPDATE_MS while the job runs: progress to ``show_progress``, or, for a job that has
        run NAPARI_BAR_AFTER_S without one, to napari's progress bar (created then)."""
        if (self._bar is None and self.show_progress is None
                and time.perf_counter() - self._started >= NAPARI_BAR_AFTER_S):
            from napari.utils import progress

            self._bar = progress(total=0, desc=self.description)
            still_activity_indicator()  # napari starts its GIF for every new progress bar
        self._poll()

    def _poll(self):
        with self._lock:
            items, self._pending = self._pending, []
        if not items:
            return
        done, total, _ = items[-1]
        if self.show_progress is not None:
            try:
                self.show_progress(done, total)
            except RuntimeError:  # its widget was closed (with its viewer) while the job ran
                self.orphan()
                return
        elif self._bar is not None:
            if total is not None and self._bar.total != total:
                self._bar.total = int(total)
            self._bar.n = int(done)
            self._bar.refresh()
        if self._on_progress is not None:
            try:
                self._on_progress(items)
            except RuntimeError:  # the widget drawing it was closed (with its viewer) while the job ran
                self.orphan()

    def _returned(self, returned):
        from napari.utils.notifications import show_info

        ok, result = returned
        self._poll()
        if not ok:
            self._failed(result)
            return
        if self.cancel_event.is_set():
            self.outcome = "cancelled"
            if not self.orphaned:
                show_info(f"{self.description}: cancelled")
            return
        self.outcome = "done"
        if self._on_returned is None:
            return
        try:
            self._on_returned(result)
        except Exception as exc:  # showing a result must not take the viewer down
            self.traceback = traceback.format_exc()
            self._failed(exc)

    def _failed(self, exc):
        from napari.utils.notifications import show_error, show_info

        self.error = exc
        if self.cancel_event.is_set():
            self.outcome = "cancelled"
            if not self.orphaned:
                show_info(f"{self.description}: cancelled")
        else:
            self.outcome = "failed"
            # the whole text (a child process's traceback too) to the log; the one-line reason shown
            logging.getLogger("napari_sedclassify").warning("%s failed: %s\n%s", self.description, exc,
                                                           self.traceback)
            if not self.orphaned:
                show_error(f"{self.description}: {short_message(exc)}")

    def _finished(self):
        if self.outcome is None:  # ended without a result: napari quit its worker (the viewer closed)
            self.cancel_event.set()  # the work itself (its thread, a child process) stops too
            self.outcome = "cancelled"
        self._uncount()
        self._timer.stop()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.done = True
        if self._on_finished is not None:
            self._on_finished()


def wrapped_label(value: str = "") -> Label:
    """A magicgui Label whose text wraps to the dock's width and whose height follows its text
    (Qt does not re-measure a wrapped label nested in magicgui containers by itself)."""
    from qtpy.QtCore import QEvent, QObject, QTimer

    class _FitHeight(QObject):
        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.Resize:
                obj.setMinimumHeight(max(0, obj.heightForWidth(event.size().width())))
            return False

    label = Label(value=value)
    native = label.native
    native.setWordWrap(True)
    label._fit_height = _FitHeight(native)
    native.installEventFilter(label._fit_height)

    def fit():
        try:
            native.setMinimumHeight(max(0, native.heightForWidth(max(native.width(), 50))))
        except RuntimeError:  # deleted with its viewer meanwhile
            pass

    def refit(_value=None):
        QTimer.singleShot(0, fit)

    label.changed.connect(refit)
    return label


class JobButtons(Container):
    """A Run button, a Cancel button and a status line for one kind of job: one job at a time.

    A job launched while another runs (a setting changed mid-run) cancels the running one and
    starts once it has stopped (the latest such job; those it replaced never start): Run stays
    disabled and the status says so until no job of this step runs. Closing the widget (with its
    viewer) cancels the job and drops its progress and messages silently."""

    def __init__(self, run_text: str, on_run):
        super().__init__(layout="vertical", labels=False)
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = wrapped_label()
        # the job's progress, here rather than in napari's activity dialog (see NAPARI_BAR_AFTER_S)
        self.bar = ProgressBar(value=0, min=0, max=1, visible=False)
        self.run_button.changed.connect(lambda _=None: on_run())
        self.cancel_button.changed.connect(lambda _=None: self.cancel())
        row = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        row.margins = (0, 0, 0, 0)
        self.extend([row, self.bar, self.status])
        self.margins = (0, 0, 0, 0)
        self.job = None
        self.queued = None  # the job that starts once the running one has stopped
        self.closed = False
        self.native.destroyed.connect(lambda *_: self._closed())

    @property
    def running(self) -> bool:
        """Whether a job of this step runs (or waits to start)."""
        return (self.job is not None and not self.job.done) or self.queued is not None

    def launch(self, job: BackgroundJob) -> BackgroundJob:
        """Start ``job``, disabling Run and enabling Cancel until it finishes; while another job of
        this step runs, that one is cancelled and ``job`` starts when it has stopped."""
        if self.closed:
            job.orphan()
            return job
        if self.job is not None and not self.job.done:
            if self.queued is not None:  # replaced before it started: it never runs
                self.queued.outcome, self.queued.done = "cancelled", True
            self.queued = job
            self.job.cancel()
            self.status.value = f"restarting: {job.description} once the running job has stopped…"
            return job
        return self._start(job)

    def _start(self, job: BackgroundJob) -> BackgroundJob:
        user_finished = job._on_finished

        def finished():
            if self.closed:
                return
            try:
                if self.queued is not None and self.job is job:  # the job that replaces it starts now
                    queued, self.queued = self.queued, None
                    if user_finished is not None:
                        user_finished()
                    self._start(queued)
                    return
                self.run_button.enabled = True
                self.cancel_button.enabled = False
                self.bar.visible = False
                reason = short_message(job.error) if job.error is not None else "unknown error"
                self.status.value = {"done": f"done: {job.description}", "cancelled": "cancelled"}.get(
                    job.outcome, f"failed: {job.description}: {reason}"
                )
            except RuntimeError:  # the widget was closed (with its viewer) while the job ran
                return
            if user_finished is not None:
                user_finished()

        job._on_finished = finished
        job.show_progress = self._show_progress
        self.job = job
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.bar.max, self.bar.value, self.bar.visible = 1, 0, True
        self.status.value = f"{job.description}…"
        job.start()
        return job

    def _closed(self):
        """The widget was deleted (its viewer closed): its jobs stop, silently."""
        self.closed = True
        for job in (self.job, self.queued):
            if job is not None and not job.done:
                job.orphan()
        self.queued = None

    def _show_progress(self, done, total):
        if total:
            self.bar.max = max(1, int(total))
            self.bar.value = min(int(done), self.bar.max)

    def cancel(self):
        if self.queued is not None:  # the restart waiting for the running job: it never starts
            self.queued.outcome, self.queued.done = "cancelled", True
            self.queued = None
        if self.job is not None and not self.job.done:
            self.job.cancel()
            self.status.value = "cancelling…"
