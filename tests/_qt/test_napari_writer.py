"""The class-map writer contribution (a Labels layer -> .tif/.npy + <stem>.classes.json) and the
menu contributions besides the Plugins menu (Layers > Classify > SED classify, Layers > Annotate,
Layers > Visualize), in the manifest and in a real viewer."""

from __future__ import annotations

import json
from importlib.resources import files

import numpy as np
import pytest
import yaml

from napari_sedclassify._napari.writer import CLASSES_KEY, class_table_path, read_class_table, write_class_map
from napari_sedclassify.labels import load_class_map

PLUGIN = "napari-sedclassify"


@pytest.fixture
def class_map():
    cm = np.random.default_rng(0).integers(0, 5, size=(6, 7)).astype(np.uint8)
    cm[0, 0] = 0
    return cm


def _manifest():
    return yaml.safe_load((files("napari_sedclassify") / "napari.yaml").read_text())


@pytest.mark.parametrize("suffix", [".tif", ".npy"])
def test_writer_function_writes_map_and_class_table(tmp_path, class_map, suffix):
    path = tmp_path / f"map{suffix}"
    meta = {"name": "scan_A classes", "scale": (50.0, 50.0), "translate": (0.0, 0.0), "units": ("nm", "nm"),
            "metadata": {}}
    written = write_class_map(str(path), class_map, meta)
    assert written == [str(path), str(tmp_path / "map.classes.json")]
    np.testing.assert_array_equal(load_class_map(path), class_map)
    side = read_class_table(path)
    assert side["format"] == "napari-sedclassify/class-map" and side["file"] == path.name
    assert side["classes"]["names"] == {"1": "carbon", "2": "amorphous_ice", "3": "crystalline_ice", "4": "mixed"}
    assert side["classes"]["colours"]["2"] == "#3b8bebff"
    assert side["present"]["0"] == "unlabeled" and side["scale"] == [50.0, 50.0] and side["units"] == ["nm", "nm"]
    assert not list(tmp_path.glob(".*part*"))


def test_writer_uses_a_class_table_from_the_layer_and_refuses_3d(tmp_path, class_map):
    from napari_sedclassify.classes import ClassTable

    table = ClassTable({1: "carbon", 2: "vitreous"}, {1: "#000000ff", 2: "#0000ffff"})
    path = tmp_path / "custom"
    written = write_class_map(str(path), class_map[None].clip(0, 2), {"metadata": {CLASSES_KEY: table.to_dict()}})
    assert written[0].endswith("custom.tif")
    assert read_class_table(written[0])["classes"]["names"] == {"1": "carbon", "2": "vitreous"}
    with pytest.raises(ValueError, match="2D"):
        write_class_map(str(tmp_path / "stack.tif"), np.zeros((2, 3, 4), np.uint8), {})
    with pytest.raises(ValueError, match=r"\.tif, \.tiff or \.npy"):
        write_class_map(str(tmp_path / "map.png"), class_map, {})


def test_manifest_declares_writer_and_menus():
    c = _manifest()["contributions"]
    (writer,) = c["writers"]
    assert writer["layer_types"] == ["labels"] and set(writer["filename_extensions"]) == {".tif", ".tiff", ".npy"}
    commands = {cmd["id"] for cmd in c["commands"]}
    assert writer["command"] in commands
    assert {"submenu": "napari-sedclassify.menu"} in c["menus"]["napari/layers/classify"]
    widgets = {w["command"] for w in c["widgets"]}
    in_submenu = {item["command"] for item in c["menus"]["napari-sedclassify.menu"]}
    assert in_submenu == widgets  # every widget, also under Layers > Classify > SED classify
    from napari._app_model.constants._menus import is_menu_contributable

    assert all(is_menu_contributable(key) for key in c["menus"])


def test_viewer_saves_labels_with_the_plugin_and_shows_the_menus(make_napari_viewer, tmp_path, class_map):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(class_map, name="scan_A classes", scale=(55.0, 55.0))
    try:
        layer.units = ("nm", "nm")
    except (AttributeError, ValueError):  # a napari without layer units
        pass
    path = tmp_path / "saved.tif"
    written = layer.save(str(path), plugin=PLUGIN)
    assert str(path) in written and class_table_path(path).exists()
    np.testing.assert_array_equal(load_class_map(path), class_map)
    side = json.loads(class_table_path(path).read_text())
    assert side["layer"] == "scan_A classes" and side["scale"] == [55.0, 55.0]
    if getattr(layer, "units", None) is not None:
        assert side["units"] == ["nm", "nm"]

    from napari._app_model import get_app_model
    from app_model.types import SubmenuItem

    app = get_app_model()
    classify = app.menus.get_menu("napari/layers/classify")
    subs = [item for item in classify if isinstance(item, SubmenuItem) and item.submenu == "napari-sedclassify.menu"]
    assert subs and subs[0].title == "SED classify"
    ours = {getattr(item, "command", None) and item.command.id for item in app.menus.get_menu("napari-sedclassify.menu")}
    assert "napari-sedclassify.workflow_widget" in ours and "napari-sedclassify.live_widget" in ours
    annotate = {getattr(item, "command", None) and item.command.id for item in app.menus.get_menu("napari/layers/annotate")}
    assert "napari-sedclassify.labeling_widget" in annotate
