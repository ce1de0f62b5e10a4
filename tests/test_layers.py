"""The package's layers, read from the source with ``ast`` (imports inside functions count too):

    classes/geometry/errors/jsonutil/optional < scan < io < labels < processing < models/simulate
    < pipeline < cli/_napari

A module imports only from its own part or from lower layers (never upwards, never sideways
between models and simulate or between cli and _napari), and never a private name (leading
underscore) nor anything from a private module of another part."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_sedclassify

PACKAGE = "napari_sedclassify"
ROOT = Path(napari_sedclassify.__file__).parent

#: Layers, lowest first; the parts are the package's top-level modules and subpackages.
LAYERS = [
    {"classes", "geometry", "errors", "jsonutil", "optional", "pages"},
    {"scan", "__init__"},  # the package's __init__ imports Geometry and Scan
    {"io"},
    {"labels"},
    {"processing"},
    {"models", "simulate"},
    {"pipeline"},
    {"cli", "_napari"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def part_of(module: str) -> str:
    """The top-level part a dotted module name belongs to ("__init__" for the package itself)."""
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else "__init__"


def is_module(dotted: str, root: Path) -> bool:
    rel = Path(*dotted.split(".")[1:])
    return (root / rel).is_dir() or (root / rel).with_suffix(".py").is_file()


def imports(path: Path, root: Path):
    """(line, target module, imported name or None) for every import of the package's own code."""
    module, is_package = module_name(path, root)
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if is_module(sub, root):  # ``from .. import io``: the module itself
                    yield node.lineno, sub, None
                else:
                    yield node.lineno, target, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield node.lineno, alias.name, None


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        module, _ = module_name(path, root)
        part = part_of(module)
        where = f"{path.relative_to(root.parent)}"
        if part not in RANK:
            out.append(f"{where}: part '{part}' has no layer; add it to LAYERS in tests/test_layers.py")
            continue
        for line, target, name in imports(path, root):
            other = part_of(target)
            if other == part:
                continue
            if other not in RANK:
                out.append(f"{where}:{line}: imports {target}, whose part '{other}' has no layer")
            elif RANK[other] > RANK[part]:
                out.append(f"{where}:{line}: imports upwards: {part} -> {target}")
            elif RANK[other] == RANK[part] and "__init__" not in (part, other):
                out.append(f"{where}:{line}: imports sideways: {part} -> {target}")
            if any(private(bit) for bit in target.split(".")[2:]):
                out.append(f"{where}:{line}: imports from private module {target} of another part")
            if name is not None and private(name):
                out.append(f"{where}:{line}: imports private name {target}.{name} of another part")
    return list(dict.fromkeys(out))  # one line per import statement


def test_every_module_keeps_to_its_layer():
    found = violations()
    assert not found, "\n".join(found)


def test_the_check_sees_upward_and_private_imports(tmp_path):
    """The checker itself: a made-up package with upward, private and unplaced imports is refused."""
    pkg = tmp_path / PACKAGE
    for sub in ("io", "pipeline", "processing"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "pipeline" / "reduce.py").write_text("def f(): pass\n")
    (pkg / "processing" / "_kernels.py").write_text("def g(): pass\n")
    (pkg / "io" / "reduced.py").write_text("def h():\n    from ..pipeline.reduce import f\n")
    (pkg / "pipeline" / "x.py").write_text("from ..processing._kernels import g\nfrom ..io.reduced import _y\n")
    (pkg / "misc.py").write_text("")
    found = violations(pkg)
    assert any("imports upwards: io -> napari_sedclassify.pipeline.reduce" in v for v in found)
    assert any("private module napari_sedclassify.processing._kernels" in v for v in found)
    assert any("private name napari_sedclassify.io.reduced._y" in v for v in found)
    assert any("part 'misc' has no layer" in v for v in found)


def test_engine_tests_need_no_viewer():
    """tests/ holds the engine's tests, tests/_qt/ the widgets': no test outside tests/_qt asks for
    a napari viewer, pytest-qt's qtbot or imports the plugin's napari layer at module level."""
    tests = Path(__file__).resolve().parent
    offenders = []
    for path in sorted(tests.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = {a.arg for a in node.args.args}
                if names & {"make_napari_viewer", "qtbot", "make_napari_viewer_proxy"}:
                    offenders.append(f"{path.name}::{node.name}")
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"{PACKAGE}._napari"):
                offenders.append(f"{path.name}: imports {node.module}")
    assert not offenders, "widget tests belong in tests/_qt: " + ", ".join(offenders)
    assert sorted(p.name for p in (tests / "_qt").glob("test_*.py"))
