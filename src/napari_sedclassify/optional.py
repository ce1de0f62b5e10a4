"""Optional dependencies (extras): are they installed, and what to say when one is missing.

The CNN needs TensorFlow and Keras 3, installed by the ``cnn`` extra
(``pip install "napari-sedclassify[cnn]"``; ``all`` includes it). Without them the plugin,
FCNN and SVM work fully; choosing the CNN raises :class:`MissingOptionalDependency` whose
message names the pip command. Checking imports nothing (``importlib.util.find_spec`` and
package metadata only), so it is safe in napari's process, where TensorFlow must never load.
"""

from __future__ import annotations

import importlib.util
import os

#: pip command that installs the CNN's libraries.
CNN_INSTALL = 'pip install "napari-sedclassify[cnn]"'


class MissingOptionalDependency(ImportError):
    """A feature needs a library of an extra that is not installed; the message says how to
    install it (shown as is by the CLI and the napari widgets, never as a traceback)."""


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package blocked, or sys.modules[name] is None
        return False


def installed_version(package: str) -> str | None:
    """The version of an installed package, from the name of its ``.dist-info`` folder beside it,
    without importing it (numba: 0.25 s) or ``importlib.metadata`` (its imports and its scan of
    every path entry: 20-30 ms of every process); None where it is not installed as a
    distribution beside its package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    site = os.path.dirname(next(iter(spec.submodule_search_locations)))
    prefix = package.lower() + "-"
    try:
        entries = os.listdir(site)
    except OSError:
        return None
    for entry in entries:
        if entry.lower().startswith(prefix) and entry.endswith(".dist-info"):
            return entry[len(prefix):-len(".dist-info")]
    return None


def _major_version(dist: str) -> int | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version(dist).split(".")[0])
    except (PackageNotFoundError, ValueError):
        return None


def cnn_problem() -> str | None:
    """Why the CNN cannot run here (None when TensorFlow and Keras 3 are installed)."""
    missing = [name for name in ("tensorflow", "keras") if not _importable(name)]
    if missing:
        return f"{' and '.join(missing)} not installed"
    major = _major_version("keras")
    if major is not None and major < 3:
        return f"Keras {major} installed; the CNN needs Keras 3"
    return None


def cnn_available() -> bool:
    """True when the CNN's libraries (TensorFlow, Keras 3) are installed; imports neither."""
    return cnn_problem() is None


def cnn_message(what: str = "The CNN") -> str:
    """One line for the user: why ``what`` cannot run and the pip command that fixes it."""
    return (f"{what} needs TensorFlow and Keras 3 ({cnn_problem() or 'not installed'}): install them with "
            f"{CNN_INSTALL}; FCNN and SVM work without them")


def require_cnn(what: str = "The CNN") -> None:
    """Raise :class:`MissingOptionalDependency` when the CNN's libraries are not installed."""
    if not cnn_available():
        raise MissingOptionalDependency(cnn_message(what))


# ---- live detector streams (the ``live`` extra) --------------------------------------------------
#: pip command that installs the receivers of the detectors' network streams.
LIVE_INSTALL = 'pip install "napari-sedclassify[live]"'
#: Import name of the receiver of each stream kind.
LIVE_MODULES = {"merlin": "libertem_qd_mpx", "dectris": "libertem_dectris"}


def live_problem(kind: str = "merlin") -> str | None:
    """Why the ``kind`` ("merlin", "dectris") stream receiver cannot run here (None when installed)."""
    module = LIVE_MODULES[kind]
    return None if _importable(module) else f"{module} not installed"


def live_available(kind: str = "merlin") -> bool:
    """True when the receiver of the ``kind`` stream is installed; imports nothing."""
    return live_problem(kind) is None


def require_live(kind: str = "merlin", what: str | None = None) -> None:
    """Raise :class:`MissingOptionalDependency` (its message is the pip command) when the receiver
    of the ``kind`` stream is not installed."""
    problem = live_problem(kind)
    if problem:
        what = what or f"Live classification from the {kind.capitalize()} stream"
        raise MissingOptionalDependency(f"{what} needs LiberTEM-live's receiver ({problem}): install it with "
                                        f"{LIVE_INSTALL}; following a .mib file or a folder works without it")


# ---- HyperSpy and rosettasciio (the ``formats`` extra) -------------------------------------------
#: pip command that installs HyperSpy and rosettasciio (both GPL-3.0, hence optional).
FORMATS_INSTALL = 'pip install "napari-sedclassify[formats]"'


def formats_problem(module: str = "hyperspy") -> str | None:
    """Why ``module`` ("hyperspy" or "rsciio", rosettasciio's import name) cannot be used here
    (None when it is installed); imports nothing."""
    return None if _importable(module) else f"{'rosettasciio' if module == 'rsciio' else module} not installed"


def require_formats(what: str, module: str = "hyperspy") -> None:
    """Raise :class:`MissingOptionalDependency` (its message is the pip command) when ``module``
    ("hyperspy" or "rsciio") is not installed."""
    problem = formats_problem(module)
    if problem:
        name = "rosettasciio" if module == "rsciio" else "HyperSpy"
        raise MissingOptionalDependency(f"{what} needs {name} ({problem}): install it with {FORMATS_INSTALL}; "
                                        ".hspy and .zspy files open without it")
