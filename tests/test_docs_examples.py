"""The README's and docs/'s examples work as written, so the docs cannot rot unnoticed.

- Every ```python block of the pages (docs/performance.md and docs/results.md are transcripts, left
  out) is listed in EXAMPLES, found by a line it contains. Blocks of one page run in order in one
  namespace, in a folder that holds the files they name: small simulated scans (16 x 16 points,
  128 px detector) with their flat-field and labels, and real detector files from
  ../shared/realdata. Full-size numbers a block gives (40 x 40 scans of 512 px) are made small by
  exact text replacements, each of which must still match the page.
- Blocks that start a dask cluster or follow a detector stream are not run; like every block, they
  must parse, their imports must resolve to documented names (a docstring each), and the
  attributes and keywords they use on imported names must exist, and every name they read must
  be defined by the page's examples.
- Every `sedclassify COMMAND --flag` the pages show (code blocks and inline code) names a
  subcommand and options its parser has, and every `python -m napari_sedclassify...` a module.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import importlib.util
import inspect
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import REALDATA, REPO

TRANSCRIPTS = ("performance.md", "results.md")
PAGES = ["README.md"] + sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md") if p.name not in TRANSCRIPTS)


@dataclass(frozen=True)
class Example:
    page: str
    marker: str                   # a line of the block, which identifies it
    shrink: tuple = ()            # (text in the page, text run instead): smaller sizes
    not_run: str = ""             # why the block is checked without running it (empty: it runs)


EXAMPLES = [
    Example("docs/formats.md", 'scan = open_scan("scan.mib")'),
    Example("docs/preprocessing.md", "result = preprocess(scan, PreprocessParams(",
            shrink=(("crop_radius_px=150", "crop_radius_px=50"),)),  # 150 px: for 512 px frames
    Example("docs/preprocessing.md", "class MaxPixel(FrameProcessor):"),
    Example("docs/models.md", "model = train_model("),
    Example("docs/models.md", "geometry = Geometry(frames.shape[2:]"),
    Example("docs/simulation.md", "small = sample_scan()",
            shrink=(("scan_shape=(40, 40), detector_px=512", "scan_shape=(8, 8), detector_px=128"),
                    ('demo_dataset("demo/")', 'demo_dataset("demo/", scan_shape=(2, 2), detector_px=64)'))),
    Example("docs/simulation.md", "thick = SessionParams(",
            shrink=(("scan_shape=(16, 16), detector_px=256", "scan_shape=(8, 8), detector_px=128"),
                    ("n_scans=3, scan_shape=(20, 20), detector_px=256",
                     "n_scans=1, scan_shape=(2, 2), detector_px=64"))),
    Example("docs/user-guide.md", "hole = Region("),
    Example("docs/live-and-reduce.md", "results = batch_predict(",
            not_run="starts a dask LocalCluster of 4 worker processes"),
    Example("docs/live-and-reduce.md", "state = LiveClassMap(",
            not_run="follows a .mib being written and a Merlin TCP stream"),
]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def match_examples(page: str, text: str) -> list[tuple[str, Example]]:
    """Each Python block of ``page`` with its entry of EXAMPLES; fails on a block no entry
    describes and on an entry whose block is gone."""
    listed = [e for e in EXAMPLES if e.page == page]
    pairs = []
    for i, block in enumerate(python_blocks(text)):
        found = [e for e in listed if e.marker in block]
        assert len(found) == 1, (f"{page}: Python block {i + 1} (starting {block[:60]!r}) is matched by "
                                 f"{len(found)} entries of EXAMPLES in {Path(__file__).name}: list how to run it")
        pairs.append((block, found[0]))
    for e in listed:
        assert any(e is f for _, f in pairs), f"{page}: no Python block contains {e.marker!r} any more"
    return pairs


def imported_names(tree: ast.AST, where: str) -> dict:
    """The objects a block imports, by the name it binds; fails naming a missing module or name."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"
                names[alias.asname or alias.name] = getattr(module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = importlib.import_module(
                    alias.name if alias.asname else alias.name.split(".")[0])
    return names


def accepts(obj, keyword: str) -> bool:
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return True
    return keyword in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def check_names(block: str, where: str) -> None:
    """A block parses; what it imports exists (our names with a docstring); attributes and keyword
    arguments used on imported names exist."""
    tree = ast.parse(block, filename=where)
    names = imported_names(tree, where)
    for name, obj in names.items():
        if getattr(obj, "__module__", getattr(obj, "__name__", "")).startswith("napari_sedclassify"):
            assert inspect.getdoc(obj), f"{where}: {name} has no docstring (help({name}) says nothing)"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names:
            assert hasattr(names[node.value.id], node.attr), f"{where}: {node.value.id} has no {node.attr}"
        if isinstance(node, ast.Call):
            func = node.func
            target = (names.get(func.id) if isinstance(func, ast.Name) else
                      getattr(names.get(func.value.id), func.attr, None)
                      if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None)
            if target is None:
                continue
            for kw in node.keywords:
                assert kw.arg is None or accepts(target, kw.arg), \
                    f"{where}: {ast.unparse(func)}() takes no keyword {kw.arg!r}"


def undefined_names(blocks: list[str]) -> set[str]:
    """Names the blocks of a page read that none of them binds (they run in one namespace)."""
    bound, read = set(dir(builtins)), set()
    for tree in map(ast.parse, blocks):
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                bound |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
    return read - bound


def shrunk(block: str, example: Example) -> str:
    for old, new in example.shrink:
        assert old in block, f"{example.page}: the block of {example.marker!r} no longer says {old!r}"
        block = block.replace(old, new)
    return block


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """The files the examples name, as a user has them: scans written by the simulator (with their
    geometry sidecars), the session's flat-field, the true class maps as labels."""
    from napari_sedclassify.simulate import simulate_scan

    d = tmp_path_factory.mktemp("sim")
    files = {}
    for stem, seed in (("a", 0), ("b", 1), ("e", 2)):
        sim = simulate_scan(d / f"{stem}.npy", scan_shape=(16, 16), detector_px=128, session="A", seed=seed)
        np.save(d / f"{stem}_labels.npy", sim.truth)
        files.update({f"{stem}.npy": d / f"{stem}.npy", f"{stem}.json": d / f"{stem}.json",
                      f"{stem}_labels.npy": d / f"{stem}_labels.npy"})
    files.update({"scan.npy": d / "a.npy", "scan.json": d / "a.json", "flatfield.npy": d / "flatfield_A.npy",
                  "flatfield_A.npy": d / "flatfield_A.npy"})
    stack = np.zeros((40 * 40 - 177, 16, 16), np.uint16)  # the paper's data set: the first 177 frames missing
    stack[:, 7:9, 7:9] = 1000
    np.save(d / "stack.npy", stack)
    files["stack.npy"] = d / "stack.npy"
    if REALDATA.is_dir():
        files.update({"scan.mib": REALDATA / "merlin" / "001_4x2_6bit.mib",
                      "scan.hdr": REALDATA / "merlin" / "001_4x2_6bit.hdr",
                      "sim.emd": REALDATA / "emd" / "Si100_4D.emd"})
    return files


def run_page(page: str, folder: Path, files: dict) -> None:
    for name, target in files.items():
        (folder / name).symlink_to(target)
    namespace = {"__name__": "__main__"}
    for i, (block, example) in enumerate(match_examples(page, (REPO / page).read_text())):
        if not example.not_run:
            exec(compile(shrunk(block, example), f"{page} example {i + 1}", "exec"), namespace)


@pytest.mark.parametrize("page", sorted({e.page for e in EXAMPLES if not e.not_run}))
def test_examples_run_as_written(page, user_files, tmp_path, monkeypatch):
    if page == "docs/formats.md" and not REALDATA.is_dir():
        pytest.skip(f"real detector files not found at {REALDATA}")
    monkeypatch.chdir(tmp_path)
    run_page(page, tmp_path, user_files)


@pytest.mark.parametrize("page", PAGES)
def test_examples_name_what_exists(page):
    pairs = match_examples(page, (REPO / page).read_text())
    for i, (block, example) in enumerate(pairs):
        check_names(block, f"{page} example {i + 1}")
    missing = undefined_names([block for block, _ in pairs])
    assert not missing, f"{page}: the examples use {sorted(missing)} without defining them"


def command_lines(text: str) -> list[str]:
    """`sedclassify ...` and `python -m ...` as the page shows them: in code blocks (continuation
    lines joined, comments cut) and in inline code."""
    lines = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M):
        lines += [line.split(" #")[0] for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return lines + re.findall(r"`([^`\n]+)`", prose)


def command_help(command: str) -> str | None:
    """What `sedclassify COMMAND --help` prints, or None when there is no such command."""
    from napari_sedclassify.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main([command, "--help"])
        except SystemExit as exc:
            if exc.code:
                return None
    return out.getvalue()


def check_command_lines(text: str, where: str) -> None:
    helps = {}
    for line in command_lines(text):
        for cmd, rest in re.findall(r"(?<![\w-])sedclassify ([a-z]\w*)((?:(?!sedclassify ).)*)", line):
            if cmd not in helps:
                helps[cmd] = command_help(cmd)
            assert helps[cmd] is not None, f"{where}: `sedclassify {cmd}` is not a command: {line.strip()}"
            for flag in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", rest):
                assert re.search(rf"(?<![\w-]){flag}(?![\w-])", helps[cmd]), \
                    f"{where}: `sedclassify {cmd}` has no option {flag}: {line.strip()}"
        for module in re.findall(r"python -m (napari_sedclassify[\w.]*)", line):
            assert importlib.util.find_spec(module), f"{where}: no module {module}: {line.strip()}"


@pytest.mark.parametrize("page", PAGES)
def test_command_lines_name_what_exists(page):
    check_command_lines((REPO / page).read_text(), page)
