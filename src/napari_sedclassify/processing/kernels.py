"""The per-frame kernels as the engine calls them: compiled ahead of time where that was done on
this machine, else numba's just-in-time kernels (``_kernels``, cached on disk).

Importing numba and preparing its code generator costs a process 0.3-0.5 s before its first
frame, whatever the scan (docs/performance.md). ``python -m napari_sedclassify.processing.kernels``
(run by ``scripts/setup.sh``) compiles the kernels' common signatures once, for this machine's
CPU, into an extension module (numba's ``pycc``; it needs a C compiler) in a user cache folder.
A process then loads it in about a millisecond and never imports numba unless a call falls
outside those signatures.

The ahead-of-time functions do not check their arguments (a wrong dtype would crash the
process), so every call is checked here first, exactly: each array's dtype, dimensions and
memory layout, each scalar's kind; anything else goes to the just-in-time kernel, which
compiles what it is given. Both are compiled from the same Python source and give the same
results (test). The module is named after everything that shapes its code (the kernels' source,
the versions of numba, llvmlite, numpy and Python, the CPU), so a stale one is never loaded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import threading

import numpy as np

from ..optional import installed_version

#: Set to "0" to run the just-in-time kernels even where the ahead-of-time ones are built.
AOT_ENV = "SEDCLASSIFY_AOT"

# -- the signatures compiled ahead of time ---------------------------------------------------------
# An array: (dtype, ndim, layout); a scalar: "i8", "f8" or "b1". Layouts: "C" contiguous (and
# writeable: outputs among them), "CR" contiguous and only read (raw frames: a read-only memory
# map of a file is welcome), "A" any layout (10x slower than "C" on raw frames: strided code).
_F4_2, _F4_3, _F8_1, _F8_2 = ("float32", 2, "C"), ("float32", 3, "C"), ("float64", 1, "C"), ("float64", 2, "C")
_I8_2R = ("int64", 2, "CR")  # a selection network's comparators (read-only)
_RAW = ("uint8", "uint16", "uint32", "float32", "int16", "int32", "int64", "float64")
SIGNATURES: dict[str, list[tuple]] = {
    "correct_frames": [((d, 3, lay), _F4_2, _F4_2, "b1", "f8", _F4_3, _F8_1) for d in _RAW for lay in ("CR", "A")],
    "convert_frames": [((d, 3, "CR"), ("int64", 1, "CR"), _F4_3, _F8_1) for d in _RAW if d[0] in "ui"],
    "pixel_statistics": [((d, 3, lay), _F4_2, _F4_2, "b1", "f8", _I8_2R, "i8", "i8", _F4_2, _F4_2, ("bool", 2, "C"),
                          ("bool", 2, "C")) for d in _RAW for lay in ("CR", "A")],
    "median_5x5": [(_F4_2, _I8_2R, _F4_2)],
    "find_centres": [(_F4_3, "i8", "i8", "i8", "i8", "i8", "f8", "f8", "f8", _F8_1, _F8_1, _F8_1, _F8_1, _F8_1, _F8_1, _F8_2,
                      ("bool", 1, "C"), ("float32", 1, "C"), ("float32", 1, "C"), "b1", _F8_1)],
    "radial_sums": [(_F4_3, _F8_2, _F8_1, _F8_1, "f8", "f8", _F8_2, (c, 2, "C"))
                    for c in ("int64", "int32", "uint32", "uint16", "float64")],
    "annular_sums": [(_F4_3, _F8_2, _F8_2, _F8_1, _F8_1, _F8_1, _F8_1, _F8_1, _F8_2, "b1")],
    "central_crops": [(_F4_3, _F8_2, "i8", "i8", _F4_3)],
    "bin_means": [(_F4_3, "i8", _F4_3)],
}
_SCALAR_TYPES = {"i8": "int64", "f8": "float64", "b1": "boolean"}


def _numba_type(spec) -> str:
    if isinstance(spec, str):
        return _SCALAR_TYPES[spec]
    dtype, ndim, layout = spec
    name = {"bool": "boolean"}.get(dtype, dtype)
    return f"{name}[{', '.join([':'] * (ndim - 1) + ['::1' if layout in ('C', 'CR') else ':'])}]"


def _symbol(name: str, k: int) -> str:
    return f"{name}_{k}"


# -- where the module lives ------------------------------------------------------------------------
def _source_key() -> str:
    """A digest of everything that shapes the compiled code; "" where no module is built or
    loaded (not Linux, the CPU unknown, numba or llvmlite not installed as distributions)."""
    cpu = _cpu_key() if sys.platform.startswith("linux") else ""
    if not cpu:
        return ""
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for name in ("_kernels.py", "kernels.py"):
        with open(os.path.join(here, name), "rb") as fh:
            h.update(fh.read())
    versions = {name: installed_version(name) for name in ("numba", "llvmlite")}
    if None in versions.values():  # not installed as distributions: no module to trust
        return ""
    h.update(f"numba {versions['numba']} llvmlite {versions['llvmlite']} numpy {np.__version__}".encode())
    h.update(sys.version.encode())
    h.update(_extension_suffix().encode())  # the interpreter's ABI and platform
    h.update(cpu.encode())
    return h.hexdigest()[:16]


def numba_version() -> str:
    """numba's version (for provenance), without importing it."""
    return installed_version("numba") or "unknown"


def _cpu_key() -> str:
    """The CPU's model and instruction sets (Linux); "" elsewhere (no module is built or loaded)."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags"))]
    except OSError:
        return ""
    return "".join(sorted(set(lines)))


def _folder() -> str:
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "napari-sedclassify")


@functools.lru_cache(maxsize=None)
def module_name() -> str | None:
    """The ahead-of-time module's name on this machine (computed once: files and the CPU read)."""
    key = _source_key()
    return f"sedclassify_kernels_{key}" if key else None


def module_path() -> str | None:
    """Where this machine's ahead-of-time module is, or would be built (None: not supported here)."""
    name = module_name()
    if name is None:
        return None
    return os.path.join(_folder(), name + _extension_suffix())


def _extension_suffix() -> str:
    """The file ending of this interpreter's extension modules (".cpython-311-x86_64-linux-gnu.so"),
    without importing ``sysconfig`` (1.5 ms of a command's start)."""
    import importlib.machinery

    return importlib.machinery.EXTENSION_SUFFIXES[0]


# -- loading and dispatch --------------------------------------------------------------------------
_lock = threading.Lock()
_state: dict = {}


def aot_module():
    """The ahead-of-time module when built for this machine (and not turned off), else None."""
    if "module" in _state:
        return _state["module"]
    with _lock:
        if "module" not in _state:
            module = None
            if os.environ.get(AOT_ENV, "1") != "0":
                path = module_path()
                if path is not None and os.path.exists(path):
                    try:
                        spec = importlib.util.spec_from_file_location(module_name(), path)
                        module = importlib.util.module_from_spec(spec)
                        spec.loader.exec_module(module)
                    except (ImportError, OSError):
                        module = None
            _state["module"] = module
    return _state["module"]


def missing_module_hint() -> str | None:
    """One line for the user when this process compiled kernels just in time because this machine's
    ahead-of-time module is not built (a pip install that never ran the build); None otherwise
    (built, turned off with SEDCLASSIFY_AOT=0, or not supported here)."""
    if not _state.get("jit_for_want_of_module") or os.environ.get(AOT_ENV, "1") == "0" or module_path() is None:
        return None
    return ("the frame kernels were compiled just in time (0.3-0.4 s of this command's start): "
            "`python -m napari_sedclassify.processing.kernels` compiles them once for this machine")


def _matches(value, spec) -> bool:
    if isinstance(spec, str):
        if spec == "b1":
            return isinstance(value, (bool, np.bool_))
        if spec == "i8":
            return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) \
                and -(2**63) <= int(value) < 2**63
        return isinstance(value, (float, int, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))
    dtype, ndim, layout = spec
    # "A" and "CR" arrays are the raw frames, only read; "C" ones include outputs: a read-only one
    # goes to numba, which refuses to write it instead of crashing
    return (type(value) is np.ndarray and value.dtype == dtype and value.dtype.isnative
            and value.ndim == ndim and value.flags.aligned
            and (layout == "A" or (value.flags.c_contiguous and (layout == "CR" or value.flags.writeable))))


def _caller(name: str):
    """The kernel ``name``: the ahead-of-time function whose signature the arguments match
    exactly, else numba's just-in-time one. The signature the last call matched is tried first
    (a pass calls each kernel the same way every time: 65 argument checks a batch became 40)."""
    signatures = [tuple(a if isinstance(a, str) else (np.dtype(a[0]), a[1], a[2]) for a in sig)
                  for sig in SIGNATURES[name]]
    last = [0]  # one item, replaced whole: threads may call at once

    def kernel(*args):
        module = aot_module()
        if module is not None:
            first = last[0]
            for k in (first, *range(len(signatures))):
                sig = signatures[k]
                if len(sig) == len(args) and all(_matches(a, s) for a, s in zip(args, sig)):
                    last[0] = k
                    return getattr(module, _symbol(name, k))(*args)
        if module is None:
            _state["jit_for_want_of_module"] = True
        from . import _kernels

        return getattr(_kernels, name)(*args)

    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = f"``_kernels.{name}``, compiled ahead of time where built (see the module docstring)."
    return kernel


correct_frames = _caller("correct_frames")
convert_frames = _caller("convert_frames")
pixel_statistics = _caller("pixel_statistics")
median_5x5 = _caller("median_5x5")
find_centres = _caller("find_centres")
radial_sums = _caller("radial_sums")
annular_sums = _caller("annular_sums")
central_crops = _caller("central_crops")
bin_means = _caller("bin_means")


# -- building --------------------------------------------------------------------------------------
def build(verbose: bool = True) -> str | None:
    """Compile the kernels' SIGNATURES ahead of time for this machine into ``module_path()``
    (written atomically); returns the path, or None where it cannot be done (not Linux, no C
    compiler: the just-in-time kernels are used)."""
    path = module_path()
    if path is None:
        if verbose:
            print("kernels: ahead-of-time compilation is not supported here; numba compiles them when first used")
        return None
    if os.path.exists(path):
        if verbose:
            print(f"kernels: {path} is up to date")
        return path
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba.pycc is "pending deprecation"
        import numba.pycc.compiler as pycc_compiler
        from numba.core.compiler import Flags
        from numba.pycc import CC

    from . import _kernels

    class _ReleaseTheGIL(Flags):  # pycc's wrappers keep the GIL by default; the engine's threads need it free
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.release_gil = True

    import sysconfig
    import tempfile

    os.makedirs(_folder(), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=_folder(), prefix=".build-")
    cc = CC(module_name())
    cc.output_dir = tmp
    cc.target_cpu = "host"
    cc.verbose = False
    for name, signatures in SIGNATURES.items():
        func = getattr(_kernels, name).py_func
        for k, sig in enumerate(signatures):
            cc.export(_symbol(name, k), f"void({', '.join(_numba_type(s) for s in sig)})")(func)
    saved = pycc_compiler.Flags
    pycc_compiler.Flags = _ReleaseTheGIL
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cc.compile()
    except Exception as exc:  # no C compiler or linker: the just-in-time kernels are used
        if verbose:
            print(f"kernels: ahead-of-time compilation failed ({exc}); numba compiles them when first used")
        return None
    finally:
        pycc_compiler.Flags = saved
    built = os.path.join(tmp, module_name() + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))  # pycc's name
    os.replace(built, path)
    prune_modules(path)
    for leftover in os.listdir(tmp):
        os.remove(os.path.join(tmp, leftover))
    os.rmdir(tmp)
    if verbose:
        print(f"kernels: compiled ahead of time into {path}")
    return path


#: Modules kept in the cache folder beside the one just built: those of other sources, versions or
#: CPUs may belong to another installation sharing the folder (two virtual environments, two
#: checkouts), which would otherwise fall back to the just-in-time kernels after every build here.
KEEP_OTHER_MODULES = 3


def prune_modules(path: str, keep: int = KEEP_OTHER_MODULES) -> list[str]:
    """Remove the modules in ``path``'s folder other than ``path`` and the ``keep`` most recently
    built (modified) ones; returns the removed paths."""
    folder = os.path.dirname(path)
    others = []
    for name in os.listdir(folder):
        full = os.path.join(folder, name)
        if name.startswith("sedclassify_kernels_") and full != path:
            try:
                others.append((os.stat(full).st_mtime, full))
            except OSError:  # removed meanwhile
                pass
    removed = [full for _, full in sorted(others, reverse=True)[keep:]]
    for full in removed:
        try:
            os.remove(full)
        except OSError:
            pass
    return removed


if __name__ == "__main__":
    build()
