"""Comboboxes that follow the viewer's layers: scans, Labels layers."""

from __future__ import annotations

from magicgui.widgets import ComboBox

from .layers import scan_layers


def follow_layers(viewer, *combos) -> None:
    """Refresh the choices of ``combos`` whenever layers are added, removed or renamed."""

    def refresh(_event=None):
        for combo in combos:
            try:
                combo.reset_choices()
            except RuntimeError:  # the widget was deleted with its viewer
                pass

    viewer.layers.events.inserted.connect(refresh)
    viewer.layers.events.removed.connect(refresh)
    viewer.layers.events.moved.connect(refresh)
    for layer in viewer.layers:
        layer.events.name.connect(refresh)
    viewer.layers.events.inserted.connect(lambda e: e.value.events.name.connect(refresh))


def scan_picker(viewer, label: str = "scan", follow_selection: bool = True) -> ComboBox:
    """A combobox of the layers that carry a scan (every widget has one: it also puts units in the
    viewer's status bar over scans). With ``follow_selection`` it takes the scan the user works on:
    a scan layer just opened, or selected in the layer list; when its scan layer is removed, the
    selected scan (never silently the first in the list when another is selected)."""
    from .canvas_guard import keep_removed_visuals
    from .status import install_status_units

    combo = ComboBox(label=label, choices=lambda _w=None: [(layer.name, layer) for layer in scan_layers(viewer)])
    if follow_selection:  # before follow_layers: on a removal, it sees the value before the refresh
        _follow_the_users_scan(viewer, combo)
    follow_layers(viewer, combo)
    install_status_units(viewer)
    keep_removed_visuals(viewer)  # a layer removed must not take the viewer down (canvas_guard.py)
    return combo


def _follow_the_users_scan(viewer, combo) -> None:
    from .layers import find_scan

    def take(layer):
        try:
            combo.reset_choices()
            if layer is not None and find_scan(layer) is not None and combo.value is not layer:
                combo.value = layer
        except (RuntimeError, ValueError):  # the widget was deleted with its viewer; not a choice (yet)
            pass

    def inserted(event):
        take(event.value)  # a scan just opened is the one to work on

    def removed(event):
        try:
            if combo.value is not event.value:
                return
        except RuntimeError:
            return
        active = viewer.layers.selection.active  # its scan layer went: the selected scan, if any
        take(active if active is not event.value and active in viewer.layers else None)

    def selected(event=None):
        take(viewer.layers.selection.active)

    viewer.layers.events.inserted.connect(inserted)
    viewer.layers.events.removed.connect(removed)
    viewer.layers.selection.events.active.connect(selected)
