"""A matplotlib figure embedded in a dock widget (Agg drawing, no pyplot state)."""

from __future__ import annotations


def plot_canvas(width: float = 4.0, height: float = 3.0, min_height: int = 220):
    """(figure, canvas): a matplotlib Figure and its Qt canvas widget."""
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=90, layout="constrained")
    canvas = FigureCanvasQTAgg(figure)
    canvas.setMinimumHeight(min_height)
    return figure, canvas


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
