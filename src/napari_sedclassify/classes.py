"""The class table: ids, names and colours shared by simulator, labels, models and napari.

Class maps are 2D integer images on the scan grid; 0 means unlabeled / unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

UNLABELED = 0
CARBON = 1
AMORPHOUS_ICE = 2
CRYSTALLINE_ICE = 3
MIXED = 4

#: id -> name, the defaults of the paper (its four classes).
DEFAULT_CLASS_NAMES = {
    CARBON: "carbon",
    AMORPHOUS_ICE: "amorphous_ice",
    CRYSTALLINE_ICE: "crystalline_ice",
    MIXED: "mixed",
}

#: id -> RGBA hex; a fixed palette so every view of a class map looks the same.
DEFAULT_CLASS_COLOURS = {
    UNLABELED: "#00000000",
    CARBON: "#4d4d4dff",  # dark grey, like carbon in the overview
    AMORPHOUS_ICE: "#3b8bebff",  # blue: the frames worth keeping
    CRYSTALLINE_ICE: "#f2c12eff",  # yellow
    MIXED: "#d9534fff",  # red-ish
}


@dataclass(frozen=True)
class ClassTable:
    """Class ids (1..n), their names and colours."""

    names: dict
    colours: dict

    @classmethod
    def default(cls) -> "ClassTable":
        return cls(dict(DEFAULT_CLASS_NAMES), dict(DEFAULT_CLASS_COLOURS))

    @property
    def ids(self) -> list[int]:
        return sorted(self.names)

    def id_of(self, name: str) -> int:
        for k, v in self.names.items():
            if v == name:
                return k
        raise KeyError(f"unknown class '{name}' (known: {', '.join(self.names.values())})")

    def to_dict(self) -> dict:
        return {"names": {str(k): v for k, v in self.names.items()},
                "colours": {str(k): v for k, v in self.colours.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassTable":
        return cls({int(k): v for k, v in d["names"].items()}, {int(k): v for k, v in d.get("colours", {}).items()})
