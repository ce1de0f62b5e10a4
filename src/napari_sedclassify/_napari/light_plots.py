"""Light Qt views for what must redraw on every mouse move: a detector frame, one curve, text.

A matplotlib figure redraw (layout, ticks, text) takes 0.1-0.3 s on a software-rendered desktop,
far too slow to follow the cursor. These widgets paint with QPainter: the frame is an RGBA image
made beforehand (off the UI thread, :func:`frame_rgba`) and scaled to fit; the curve is one
polyline with a few ticks. A repaint takes a few milliseconds.
"""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QImage, QPainter, QPalette, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

MASK_RGBA = (0, 255, 51, 255)  # masked pixels: green
_LUTS = {}


def _lut(name: str) -> np.ndarray:
    if name not in _LUTS:
        from matplotlib import colormaps

        _LUTS[name] = colormaps[name](np.linspace(0.0, 1.0, 256), bytes=True).astype(np.uint8)
    return _LUTS[name]


def frame_rgba(image, vmax: float, mask=None, cmap: str = "magma") -> np.ndarray:
    """(ky, kx, 4) uint8: ``image`` scaled 0..vmax through the colour map, masked pixels green,
    other non-finite pixels black. Plain numpy: fine in a worker thread."""
    image = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(image)
    scaled = np.where(finite, image, 0.0) * (255.0 / max(float(vmax), 1e-12))
    index = np.clip(scaled, 0, 255).astype(np.uint8)
    rgba = _lut(cmap)[index]
    rgba[~finite] = (0, 0, 0, 255)
    if mask is not None:
        rgba[np.asarray(mask, bool)] = MASK_RGBA
    return np.ascontiguousarray(rgba)


def _nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round values between lo and hi."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


class FrameImage(QWidget):
    """A frame (RGBA) scaled to fit with its aspect kept, a centre cross and a title."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumSize(160, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.rgba = None
        self.centre = None  # (cy, cx) px or None
        self.rings_px = ()  # radii (px) of rings drawn about the centre (e.g. the fitted ice ring)
        self.title = ""
        self._qimage = None

    def set_frame(self, rgba, centre=None, title: str = "", rings_px=()):
        self.rgba = np.ascontiguousarray(rgba, dtype=np.uint8)
        h, w = self.rgba.shape[:2]
        self._qimage = QImage(self.rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888)
        self.centre = None if centre is None else (float(centre[0]), float(centre[1]))
        self.title = title
        self.rings_px = tuple(float(r) for r in rings_px)
        self.update()

    def image_rect(self) -> QRectF:
        """Where the frame is drawn in the widget (below the title)."""
        if self.rgba is None:
            return QRectF()
        h, w = self.rgba.shape[:2]
        top = 16.0
        avail_w, avail_h = max(1.0, self.width() - 4.0), max(1.0, self.height() - top - 2.0)
        s = min(avail_w / w, avail_h / h)
        return QRectF((self.width() - w * s) / 2, top, w * s, h * s)

    def paintEvent(self, _event):
        painter = QPainter(self)
        try:
            painter.fillRect(self.rect(), QColor(38, 41, 48))
            painter.setPen(QColor(220, 220, 220))
            font = QFont(painter.font())
            font.setPointSizeF(8.5)
            painter.setFont(font)
            painter.drawText(QRectF(0, 0, self.width(), 15), int(Qt.AlignmentFlag.AlignCenter), self.title)
            if self._qimage is None:
                return
            rect = self.image_rect()
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
            painter.drawImage(rect, self._qimage)
            if self.centre is not None:
                h, w = self.rgba.shape[:2]
                x = rect.left() + (self.centre[1] + 0.5) * rect.width() / w
                y = rect.top() + (self.centre[0] + 0.5) * rect.height() / h
                painter.setPen(QPen(QColor(0, 229, 255), 2))
                painter.drawLine(QPointF(x - 7, y), QPointF(x + 7, y))
                painter.drawLine(QPointF(x, y - 7), QPointF(x, y + 7))
                painter.setPen(QPen(QColor(120, 255, 120), 1, Qt.PenStyle.DashLine))
                for r in self.rings_px:
                    rx, ry = r * rect.width() / w, r * rect.height() / h
                    painter.drawEllipse(QPointF(x, y), rx, ry)
        finally:
            painter.end()


class CurvePlot(QWidget):
    """One curve y(x) with a box, a few ticks and axis labels; log10 y when ``log``; or a message."""

    def __init__(self, parent=None, colour: str = "#3b8beb"):
        super().__init__(parent)
        self.setMinimumSize(200, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.colour = QColor(colour)
        self.x = self.y = None
        self.log = False
        self.xlabel = self.ylabel = ""
        self.message = ""

    def set_curve(self, x, y, *, log: bool = False, xlabel: str = "", ylabel: str = ""):
        self.x, self.y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        self.log, self.xlabel, self.ylabel, self.message = bool(log), xlabel, ylabel, ""
        self.update()

    def set_message(self, text: str):
        self.x = self.y = None
        self.message = text
        self.update()

    def plotted(self):
        """(x, y as drawn: log10 of y when log), finite points only."""
        if self.x is None:
            return np.empty(0), np.empty(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.log10(np.where(self.y > 0, self.y, np.nan)) if self.log else self.y
        ok = np.isfinite(self.x) & np.isfinite(y)
        return self.x[ok], y[ok]

    def paintEvent(self, _event):
        painter = QPainter(self)
        try:
            painter.fillRect(self.rect(), QColor(255, 255, 255))
            font = QFont(painter.font())
            font.setPointSizeF(7.5)
            painter.setFont(font)
            painter.setPen(QColor(40, 40, 40))
            if self.x is None:
                painter.drawText(QRectF(self.rect()), int(Qt.AlignmentFlag.AlignCenter), self.message)
                return
            x, y = self.plotted()
            left, right, top, bottom = 46.0, 8.0, 8.0, 30.0
            box = QRectF(left, top, max(1.0, self.width() - left - right), max(1.0, self.height() - top - bottom))
            painter.drawRect(box)
            if x.size < 2:
                painter.drawText(box, int(Qt.AlignmentFlag.AlignCenter), "no finite values")
                return
            x0, x1 = float(x.min()), float(x.max())
            y0, y1 = float(y.min()), float(y.max())
            if y1 <= y0:
                y0, y1 = y0 - 0.5, y1 + 0.5
            pad = 0.05 * (y1 - y0)
            y0, y1 = y0 - pad, y1 + pad
            x1 = x1 if x1 > x0 else x0 + 1.0

            def px(xv, yv):
                return QPointF(box.left() + (xv - x0) / (x1 - x0) * box.width(),
                               box.bottom() - (yv - y0) / (y1 - y0) * box.height())

            metrics = painter.fontMetrics()
            for t in _nice_ticks(x0, x1):
                p = px(t, y0)
                painter.drawLine(QPointF(p.x(), box.bottom()), QPointF(p.x(), box.bottom() + 3))
                label = _fmt(t)
                painter.drawText(QPointF(p.x() - metrics.horizontalAdvance(label) / 2, box.bottom() + 13), label)
            for t in _nice_ticks(y0, y1):
                p = px(x0, t)
                painter.drawLine(QPointF(box.left() - 3, p.y()), QPointF(box.left(), p.y()))
                label = f"1e{t:g}" if self.log and float(t).is_integer() else _fmt(10**t if self.log else t)
                painter.drawText(QPointF(box.left() - 5 - metrics.horizontalAdvance(label), p.y() + 3), label)
            painter.drawText(QRectF(box.left(), box.bottom() + 15, box.width(), 14),
                             int(Qt.AlignmentFlag.AlignCenter), self.xlabel)
            painter.save()
            painter.translate(10, box.center().y())
            painter.rotate(-90)
            painter.drawText(QRectF(-box.height() / 2, -8, box.height(), 14), int(Qt.AlignmentFlag.AlignCenter),
                             self.ylabel + (" (log)" if self.log else ""))
            painter.restore()
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            painter.setPen(QPen(self.colour, 1.3))
            painter.setClipRect(box)
            painter.drawPolyline(QPolygonF([px(a, b) for a, b in zip(x.tolist(), y.tolist())]))
        finally:
            painter.end()


class TextLines(QWidget):
    """Plain text (lines separated by "<br>" or newlines, wrapped to the width) painted with
    QPainter in a fixed height: a new ``value`` repaints this widget only. A QLabel's new text
    re-lays out its dock: 25-30 ms of the event loop per mouse move on a software-rendered desktop
    (benchmarks/bench_napari_session.py)."""

    def __init__(self, value: str = "", lines: int = 9, parent=None):
        super().__init__(parent)
        self._value = str(value)
        self.setFixedHeight(lines * self.fontMetrics().lineSpacing() + 4)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)

    @property
    def value(self) -> str:
        return self._value

    @value.setter
    def value(self, text) -> None:
        if str(text) != self._value:
            self._value = str(text)
            self.update()

    def paintEvent(self, _event):
        painter = QPainter(self)
        try:
            painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
            flags = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop | Qt.TextFlag.TextWordWrap
            painter.drawText(QRectF(self.rect()).adjusted(2, 2, -2, -2), int(flags), self._value.replace("<br>", "\n"))
        finally:
            painter.end()
