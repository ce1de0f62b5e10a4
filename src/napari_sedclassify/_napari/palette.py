"""Class colours in napari: a fixed Labels colormap and a legend, from the class table."""

from __future__ import annotations

from ..classes import ClassTable


def class_colormap(table: ClassTable | None = None):
    """A napari DirectLabelColormap giving every class id its fixed colour (0 transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    table = table or ClassTable.default()
    colours = {None: "transparent", 0: "transparent"}
    colours.update({k: v for k, v in table.colours.items() if k != 0})
    return DirectLabelColormap(color_dict=colours)


def display_name(name: str) -> str:
    """'amorphous_ice' -> 'amorphous ice'."""
    return name.replace("_", " ")


def legend_html(table: ClassTable | None = None, counts: dict | None = None) -> str:
    """Rich-text legend: a colour swatch and the name of each class (with counts when given)."""
    table = table or ClassTable.default()
    rows = []
    for cid in table.ids:
        colour = table.colours.get(cid, "#888888ff")[:7]
        text = display_name(table.names[cid])
        if counts is not None:
            n = int(counts.get(cid, 0))
            total = max(1, sum(int(c) for c in counts.values()))
            text += f": {n} ({100 * n / total:.0f} %)"
        rows.append(
            f'<span style="background-color:{colour}; color:{colour}">&#9632;&#9632;</span>&nbsp;{text}'
        )
    return "<br>".join(rows)
