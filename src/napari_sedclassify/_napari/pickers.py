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


def scan_picker(viewer, label: str = "scan") -> ComboBox:
    """A combobox of the layers that carry a scan (every widget has one: it also puts units in the
    viewer's status bar over scans)."""
    from .status import install_status_units

    combo = ComboBox(label=label, choices=lambda _w=None: [(layer.name, layer) for layer in scan_layers(viewer)])
    follow_layers(viewer, combo)
    install_status_units(viewer)
    return combo
