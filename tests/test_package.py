"""The package installs as a napari plugin, imports light, and has a working CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

PY = sys.executable


def _run(code: str) -> str:
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_import_is_light():
    """`import napari_sedclassify` pulls in neither TensorFlow, scikit-learn, napari nor Qt."""
    mods = json.loads(
        _run(
            "import sys, json, napari_sedclassify; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'tensorflow','keras','sklearn','napari','qtpy','PyQt6','PyQt5','magicgui'})))"
        )
    )
    assert mods == []


ENGINE = [
    "napari_sedclassify.geometry",
    "napari_sedclassify.scan",
    "napari_sedclassify.io",
    "napari_sedclassify.processing",
    "napari_sedclassify.processing.virtual",
    "napari_sedclassify.models",
    "napari_sedclassify.simulate",
    "napari_sedclassify.pipeline",
    "napari_sedclassify.cli",
]


def test_engine_imports_without_napari_or_qt():
    """Engine modules import even when napari, Qt and magicgui cannot be imported at all."""
    code = (
        "import sys, importlib, importlib.util\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'napari','qtpy','PyQt6','PyQt5','PySide2','PySide6','magicgui','vispy'}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"mods = {ENGINE!r}\n"
        "for m in mods:\n"
        "    if importlib.util.find_spec(m) is not None:\n"
        "        importlib.import_module(m)\n"
        "print('ok')\n"
    )
    assert _run(code) == "ok"


def test_cli_help_and_version():
    out = subprocess.run([PY, "-m", "napari_sedclassify.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: sedclassify" in out.stdout
    from napari_sedclassify import __version__

    out = subprocess.run([PY, "-m", "napari_sedclassify.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"sedclassify {__version__}"


def _npe2(*args, env=None):
    return subprocess.run(
        [PY, "-m", "npe2", *args], capture_output=True, text=True, env=env
    )


def test_npe2_validate_editable_install():
    res = _npe2("validate", "napari-sedclassify", "--imports")
    assert res.returncode == 0, res.stdout + res.stderr
    res = _npe2("list", "--format", "json")
    assert res.returncode == 0, res.stderr
    names = [p["name"] for p in json.loads(res.stdout)]
    assert "napari-sedclassify" in names


def test_manifest_visible_at_top_level():
    top = REPO / "napari.yaml"
    assert top.exists()
    assert top.resolve() == (REPO / "src" / "napari_sedclassify" / "napari.yaml").resolve()


@pytest.mark.slow
def test_wheel_contains_manifest_and_validates(tmp_path):
    """A built wheel carries napari.yaml inside the package and npe2 validates it from there."""
    import os

    res = subprocess.run(
        [PY, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("napari_sedclassify-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "napari_sedclassify/napari.yaml" in names
    target = tmp_path / "site"
    res = subprocess.run(
        [PY, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    env = dict(os.environ, PYTHONPATH=str(target))
    where = subprocess.run(
        [PY, "-c", "import napari_sedclassify; print(napari_sedclassify.__file__)"],
        capture_output=True, text=True, env=env,
    )
    assert str(target) in where.stdout
    res = _npe2("validate", "napari-sedclassify", "--imports", env=env)
    assert res.returncode == 0, res.stdout + res.stderr


def test_metadata_for_pypi_and_the_napari_hub():
    """One version (the package's __version__, read by setuptools and CITATION.cff); the CNN is an
    extra and TensorFlow no base dependency; one Qt binding; absolute URLs in the README (PyPI and
    the napari hub show it away from the repository); a support URL."""
    import re
    import tomllib
    from importlib.metadata import metadata

    import yaml

    from napari_sedclassify import __version__

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert metadata("napari-sedclassify")["Version"] == __version__
    assert project["requires-python"] == ">=3.11"
    assert not [d for d in project["dependencies"] if re.match(r"(tensorflow|keras)", d)]
    assert any(d.startswith("zarr>=3") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert {re.split(r"[<>=;]", d)[0] for d in extras["cnn"]} == {"tensorflow-cpu", "tensorflow", "keras"}
    assert set(extras["cnn"]) <= set(extras["all"])  # the README's set-up (.[all,testing]) installs the CNN
    qt = [d for d in extras["all"] if d.startswith("napari[")]
    assert qt == ["napari[pyqt6]"]
    assert "User Support" in project["urls"]

    readme = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert targets and all(t.startswith("https://") for t in targets), [t for t in targets if "://" not in t]
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", readme)
    assert images and all(t.startswith("https://raw.githubusercontent.com/") for t in images)

    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["version"] == __version__ and cff["authors"]
    paper = cff["preferred-citation"]
    assert paper["authors"][0]["family-names"] == "Matinyan"
    assert (paper["volume"], paper["start"], paper["end"], paper["year"]) == (79, 360, 368, 2023)
