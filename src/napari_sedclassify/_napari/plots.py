"""A matplotlib figure in a dock widget, drawn off the event loop (Agg, no pyplot state)."""

from __future__ import annotations

import atexit
import threading

from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel

DPI = 90
RENDER_DELAY_MS = 150  # a figure is rendered this long after the last request for it
_rendering: set = set()  # threads rendering a figure now


@atexit.register
def _finish_rendering() -> None:
    """Let the figures being rendered finish before the interpreter and Qt are torn down (a
    thread emitting to a Qt object during the teardown crashed the process at exit)."""
    for thread in list(_rendering):
        thread.join(10.0)


class _Relay(QObject):
    rendered = Signal(object)


class FigureView(QLabel):
    """A ``width`` x ``height`` inch matplotlib figure shown as a picture that a thread lays out
    and renders: a figure with constrained layout and colour bars takes 0.3-0.8 s to lay out and
    draw on a software-rendered desktop (benchmarks/bench_napari_session.py), which in a Qt
    canvas stalled the viewer. ``render(build)`` draws the next picture; only the latest request
    is shown, and ``figure`` is the one on show."""

    def __init__(self, width: float = 4.0, height: float = 3.0, min_height: int = 220):
        super().__init__()
        self._size_in = (width, max(height, min_height / DPI))
        self.setMinimumHeight(min_height)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._relay = _Relay()
        self._relay.rendered.connect(self._show)
        self._lock = threading.Lock()
        self._generation = 0
        self._pending = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(RENDER_DELAY_MS)
        self._timer.timeout.connect(self._start)
        self.figure = None

    def render(self, build) -> None:
        """Lay out the next picture with ``build(figure)`` on a blank figure as wide as the widget
        AND render it, both in a thread (adding axes, lines, colour bars and a legend took
        100-300 ms of the event loop). ``build`` must use only the data it was given, no widget.
        The thread starts ``RENDER_DELAY_MS`` after the last request: a new layer or scan makes
        several widgets ask at once, and a thread rendering while napari builds a layer takes
        turns at the interpreter lock with it (the layer's stall grew by half)."""
        width, height = self._size_in
        try:
            if self.isVisible() and self.width() > 100:
                width = self.width() / DPI
        except RuntimeError:  # deleted with its viewer: nothing to draw into
            return
        self._generation += 1
        self._pending = (build, (width, height), self._generation)
        self._timer.start()

    def _start(self) -> None:
        if self._pending is None:
            return
        args, self._pending = self._pending, None
        thread = threading.Thread(target=self._render, args=args, daemon=True, name="sedclassify-figure")
        _rendering.add(thread)
        thread.start()

    def _render(self, build, size, generation):
        try:
            figure = _blank(size)
            build(figure)
            with self._lock:
                figure.canvas.draw()
                w, h = figure.canvas.get_width_height()
                payload = generation, figure, w, h, bytes(figure.canvas.buffer_rgba())
            self._relay.rendered.emit(payload)
        except RuntimeError:  # the widget was deleted meanwhile
            pass
        finally:
            _rendering.discard(threading.current_thread())

    def _show(self, payload):
        generation, figure, w, h, rgba = payload
        if generation == self._generation:
            self.figure = figure
            self.setPixmap(QPixmap.fromImage(QImage(rgba, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()))


def _blank(size):
    """A pyplot-free figure of ``size`` inches with an Agg canvas (safe in any thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def insert_before(container, before, qwidget) -> None:
    """Insert a plain Qt widget (e.g. a plot canvas) into a magicgui ``container`` just above its
    widget ``before`` (all magicgui widgets must already be in the container)."""
    layout = container.native.layout()
    target = before.native
    for i in range(layout.count()):
        w = layout.itemAt(i).widget()
        if w is not None and (w is target or w.isAncestorOf(target)):
            layout.insertWidget(i, qwidget)
            return
    layout.addWidget(qwidget)


def form(*widgets):
    """A labeled group of settings (label column + value column), to sit in a widget whose other
    items (buttons, plots, texts) span the full width."""
    from magicgui.widgets import Container

    group = Container(widgets=list(widgets), labels=True)
    group.margins = (0, 0, 0, 0)
    return group
