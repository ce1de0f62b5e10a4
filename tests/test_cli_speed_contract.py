"""Speed as the user sees it (issue 13), checked without timing anything:

- the commands run their frame work on threads in this process: no dask.distributed cluster or
  client unless asked for (``--scheduler`` / ``--workers``), and ``distributed`` is not even
  imported; nor are TensorFlow, napari or Qt for commands that do not need them;
- every command ends with one line on stderr: its wall time and frames/s;
- the compiled kernels are cached on disk, with a writable cache folder even when the package
  and the home folder are read-only.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from models_helpers import SCAN_SHAPE, write_tiny_scans
from napari_sedclassify.cli import main
from napari_sedclassify.processing.kernels import AOT_ENV

SPEED_LINE = re.compile(r"^sedclassify (\w+): [\d.]+ s, (\d+) frames, \d+ frames/s$", re.M)
HEAVY = ("distributed", "tensorflow", "keras", "napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speed_scans")
    return folder, write_tiny_scans(folder, [0, 1])


@pytest.fixture
def no_cluster(monkeypatch):
    """Records every dask.distributed LocalCluster or Client made while the test runs."""
    distributed = pytest.importorskip("distributed")
    made = []

    def recorder(cls):
        original = cls.__init__

        def init(self, *args, **kwargs):
            made.append(cls.__name__)
            original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", init)

    recorder(distributed.LocalCluster)
    recorder(distributed.Client)
    return made


def _python(code: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (this one's), capturing its output as text."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


def _last_line(code: str, timeout: float = 300) -> str:
    """The last line ``code`` prints in a fresh interpreter, which must exit with status 0."""
    proc = _python(code, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_commands_start_no_cluster_and_print_their_speed(files, tmp_path, capsys, no_cluster):
    folder, entries = files
    (scan0, truth0, flat), (scan1, truth1, _) = entries
    n = SCAN_SHAPE[0] * SCAN_SHAPE[1]

    assert main(["preprocess", str(scan0), "--flatfield", str(flat), "--out", str(tmp_path / "p.h5")]) == 0
    err = capsys.readouterr().err
    assert SPEED_LINE.findall(err) == [("preprocess", str(n))], err

    model = tmp_path / "m.sedmodel"
    assert main(["train", "--scans", str(scan0), str(scan1), "--labels", str(truth0), str(truth1), "--model", "fcnn",
                 "--epochs", "3", "--flatfield", str(flat), "--out", str(model)]) == 0
    assert SPEED_LINE.findall(capsys.readouterr().err) == [("train", str(2 * n))]

    assert main(["predict", str(model), str(scan1), "--flatfield", str(flat), "--out", str(tmp_path / "pred")]) == 0
    assert SPEED_LINE.findall(capsys.readouterr().err) == [("predict", str(n))]

    assert main(["reduce", str(scan1), "--labels", str(truth1), "--out", str(tmp_path / "r.h5")]) == 0
    assert SPEED_LINE.findall(capsys.readouterr().err) == [("reduce", str(n))]

    assert no_cluster == []


def test_workers_zero_and_bad_values(files, tmp_path, capsys, no_cluster):
    folder, entries = files
    scan0, _, flat = entries[0]
    assert main(["preprocess", str(scan0), "--out", str(tmp_path / "p.h5"), "--workers", "0"]) == 0
    assert main(["preprocess", str(scan0), "--out", str(tmp_path / "q.h5"), "--workers", "-1"]) == 2
    assert "--workers must be at least 0" in capsys.readouterr().err
    assert no_cluster == []


def test_a_cluster_only_when_asked_or_large(monkeypatch):
    from napari_sedclassify.cli import CLIError, _executor

    from napari_sedclassify.processing import cores

    args = SimpleNamespace(scheduler=None, workers=None)
    monkeypatch.setattr(cores, "usable_cores", lambda: 2)
    assert _executor.cluster_workers(args, 10**9) == 0  # two cores: threads here, however large
    monkeypatch.setattr(cores, "usable_cores", lambda: 32)
    assert _executor.cluster_workers(args, 1600) == 0
    assert _executor.cluster_workers(args, _executor.AUTO_CLUSTER_FRAMES) == 32
    assert _executor.cluster_workers(SimpleNamespace(scheduler="tcp://x:1", workers=None), 10**9) == 0
    assert _executor.cluster_workers(SimpleNamespace(scheduler=None, workers=3), 1) == 3
    assert _executor.cluster_workers(SimpleNamespace(scheduler=None, workers=0), 10**9) == 0
    with pytest.raises(CLIError):
        _executor.cluster_workers(SimpleNamespace(scheduler=None, workers=-2), 1)


def test_cli_process_imports_nothing_heavy(files, tmp_path):
    """In a fresh process: --help, preprocess, train (FCNN), predict, evaluate, info and reduce never
    import dask.distributed, TensorFlow, napari or Qt."""
    folder, entries = files
    (scan0, truth0, flat), (scan1, truth1, _) = entries
    runs = {
        "help": ["--help"],
        "preprocess": ["preprocess", str(scan0), "--flatfield", str(flat), "--out", str(tmp_path / "p.h5")],
        "train": ["train", "--scans", str(scan0), str(scan1), "--labels", str(truth0), str(truth1), "--model",
                  "fcnn", "--epochs", "2", "--out", str(tmp_path / "m.sedmodel")],
        "predict": ["predict", str(tmp_path / "m.sedmodel"), str(scan1), "--out", str(tmp_path / "pred")],
        "evaluate": ["evaluate", str(tmp_path / "m.sedmodel"), "--scans", str(scan1), "--labels", str(truth1)],
        "info": ["info", str(scan1)],
        "reduce": ["reduce", str(scan1), "--labels", str(truth1), "--out", str(tmp_path / "r.h5")],
    }
    code = (
        "import json, sys, contextlib, io\n"
        "from napari_sedclassify.cli import main\n"
        f"runs = {runs!r}\n"
        f"heavy = {HEAVY!r}\n"
        "out = {}\n"
        "for name, argv in runs.items():\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            rc = main(argv)\n"
        "        except SystemExit as e:\n"
        "            rc = e.code\n"
        "    out[name] = [rc, sorted({m.split('.')[0] for m in sys.modules} & set(heavy))]\n"
        "print(json.dumps(out))\n"
    )
    got = json.loads(_last_line(code, timeout=600))
    assert got == {name: [0, []] for name in runs}, got


def test_preprocess_imports_its_writer_in_a_thread_of_its_own_once_the_frames_run(files, tmp_path):
    """h5py (23 ms of Python) is imported by a thread started when the pass over the frames begins,
    after the plan ran its kernels: there it takes a little of the cores the kernels run on,
    without the interpreter lock, instead of holding that lock while the single-threaded start
    (opening the scan, the calibration sample, the plan) needs it (docs/performance.md, session
    29). numpy.ma (6-19 ms, which np.median and np.unique import) is not imported at all; the
    command's results are whole. A module that cannot be imported fails nothing there."""
    (scan0, _, flat), _ = files[1]
    out = tmp_path / "p.h5"
    code = (
        "import sys, threading\n"
        "seen = []\n"
        "class Spy:  # who first looks for them, in which order\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name in ('tqdm', 'h5py', 'numpy.ma', 'napari_sedclassify.processing.kernels'):\n"
        "            seen.append((name, threading.current_thread().name))\n"
        "sys.meta_path.insert(0, Spy())\n"
        "from napari_sedclassify.cli import main\n"
        "from napari_sedclassify.cli._prefetch import import_in_background\n"
        f"rc = main(['preprocess', {str(scan0)!r}, '--flatfield', {str(flat)!r}, '--out', {str(out)!r}])\n"
        "import_in_background('no_such_module_here')\n"
        "print(rc, seen)\n"
    )
    rc, seen = _last_line(code, timeout=300).split(" ", 1)
    seen = ast.literal_eval(seen)
    names = [name for name, _ in seen]
    assert rc == "0" and dict(seen)["h5py"] == "sedclassify-imports" and "tqdm" in names
    assert names.index("napari_sedclassify.processing.kernels") < names.index("h5py")  # the plan ran first
    assert "numpy.ma" not in names  # the plan's and the descan fit's medians are processing.stats.median
    import h5py

    with h5py.File(out, "r") as f:
        assert np.isfinite(f["ria"][()]).any()


def test_the_command_skips_the_interpreter_teardown_but_not_the_exit_handlers(files, tmp_path):
    """``python -m napari_sedclassify.cli`` (the console script's ``entry``) ends with the
    command's exit status and its outputs complete, after the exit handlers ran, without Python's
    module-by-module teardown (a handler registered with ``atexit`` still runs; a ``__del__``
    left to the teardown does not, which is what tells the two exits apart)."""
    folder, entries = files
    (scan0, _, flat), _ = entries
    out = tmp_path / "p.h5"
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('exit handler ran', flush=True))\n"
        "class Late:\n"
        "    def __del__(self):\n"
        "        print('teardown ran', flush=True)\n"
        "sys.modules['__main__'].late = Late()\n"
        f"sys.argv = ['sedclassify', 'preprocess', {str(scan0)!r}, '--flatfield', {str(flat)!r}, '--out', {str(out)!r}]\n"
        "from napari_sedclassify.cli import entry\n"
        "entry()\n"
        "print('not reached')\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "exit handler ran", proc.stdout
    assert "teardown ran" not in proc.stdout and "not reached" not in proc.stdout
    assert SPEED_LINE.search(proc.stderr)
    import h5py

    with h5py.File(out, "r") as f:
        assert f["ria"].shape[:2] == SCAN_SHAPE and np.isfinite(f["ria"][..., 5:60]).mean() > 0.9
    failed = subprocess.run([sys.executable, "-m", "napari_sedclassify.cli", "info", str(tmp_path / "none.npy")],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and "none.npy" in failed.stderr


def test_the_collector_waits_for_the_command_then_runs_past_the_start_ups_objects(files, tmp_path):
    """The console script's ``entry`` switches the cyclic garbage collector off while numpy and the
    command's module are imported (no collection before the command's parser exists), then on
    again for the command itself, with the start-up's objects frozen out of its collections; a
    ``main()`` called from Python (a test, a notebook) leaves the collector as it found it."""
    scan0 = files[1][0][0]  # no flat-field
    out = tmp_path / "gc.h5"
    code = (
        "import atexit, gc, sys\n"
        "seen = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and seen.append(\n"
        "    ('numpy' in sys.modules, 'napari_sedclassify.cli.preprocess' in sys.modules)))\n"
        "atexit.register(lambda: print('gc', gc.isenabled(), gc.get_freeze_count(), len(seen),\n"
        "                              sum(1 for numpy, parser in seen if not parser), flush=True))\n"
        f"sys.argv = ['sedclassify', 'preprocess', {str(scan0)!r}, '--out', {str(out)!r}]\n"
        "from napari_sedclassify.cli import entry\n"
        "entry()\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    _, enabled, frozen, collections, before_parser = proc.stdout.splitlines()[-1].split()
    assert enabled == "True" and int(frozen) > 20_000, proc.stdout  # numpy's objects and the parser's
    assert int(collections) > 0 and int(before_parser) == 0, proc.stdout
    import gc

    frozen_here = gc.get_freeze_count()
    assert main(["preprocess", str(scan0), "--out", str(tmp_path / "gc2.h5")]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen_here


def test_kernels_are_cached_on_disk():
    from numba.core.caching import FunctionCache
    from numba.core.registry import CPUDispatcher

    from napari_sedclassify.processing import _kernels

    kernels = [v for v in vars(_kernels).values() if isinstance(v, CPUDispatcher)]
    assert len(kernels) > 10
    assert all(isinstance(k._cache, FunctionCache) for k in kernels), [k.__name__ for k in kernels]


def test_kernels_run_without_scipy_linear_algebra_and_leave_it_importable():
    """numba's BLAS probe is skipped (it imported scipy.linalg, 0.1-0.3 s, before every command's
    first frame); scipy.linalg, numba's np.dot and scikit-learn still work afterwards."""
    code = (
        "import sys, numpy as np\n"
        "from napari_sedclassify.processing import FrameRunner, RadialProfile\n"
        "frames = np.random.default_rng(0).poisson(3, (4, 64, 64)).astype(np.uint16)\n"
        "out = FrameRunner([RadialProfile(20)]).run_chunk(frames, centres=np.full((4, 2), 31.5))\n"
        "assert np.isfinite(out.values['ria']).all()\n"
        "print('scipy.linalg' in sys.modules)\n"
        "import scipy.linalg\n"
        "from numba import njit\n"
        "dot = njit(lambda a, b: np.dot(a, b))\n"
        "assert dot(np.ones(3), np.arange(3.0)) == 3.0 and scipy.linalg.inv([[4.0]])[0, 0] == 0.25\n"
        "from sklearn.preprocessing import StandardScaler\n"
        "print(StandardScaler().fit_transform(np.arange(4.0)[:, None]).std())\n"
    )
    out = _python(code, env={**os.environ, AOT_ENV: "0"})  # numba's just-in-time kernels
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.split()
    assert first == "False", "running a kernel imported scipy.linalg"
    assert float(second) == pytest.approx(1.0)


def test_the_blas_probe_is_answered_no_in_its_own_thread_only():
    """The import hook that skips numba's BLAS probe refuses scipy.linalg only in the thread that
    loads the kernels: another thread (napari's UI thread while a warm-up thread loads them)
    imports it as usual, and nothing else is refused."""
    import threading

    from napari_sedclassify.processing._kernels import _NoBlasProbe

    hook = _NoBlasProbe()
    with pytest.raises(ImportError, match="BLAS probe"):
        hook.find_spec("scipy.linalg.cython_blas")
    assert hook.find_spec("scipy.special") is None and hook.find_spec("numpy.linalg") is None
    elsewhere = []
    thread = threading.Thread(target=lambda: elsewhere.append(hook.find_spec("scipy.linalg")))
    thread.start()
    thread.join()
    assert elsewhere == [None]


def test_commands_do_not_load_other_packages_numba_extensions(files, tmp_path):
    """numba imports every installed package's numba extension at its first call (sparse's here);
    a command, a process of its own, skips them (the kernels use none), while any other process
    (napari, a notebook) still loads them."""
    from importlib.metadata import entry_points

    modules = sorted({ep.module for ep in entry_points().select(group="numba_extensions")})
    if not modules:
        pytest.skip("no package with a numba extension is installed")
    code = (
        "import sys, numpy as np\n"
        "from napari_sedclassify.processing import FrameRunner, RadialProfile\n"
        "FrameRunner([RadialProfile(5)]).run_chunk(np.ones((1, 16, 16), np.uint16), centres=np.full((1, 2), 7.5))\n"
        f"print(all(m in sys.modules for m in {modules!r}))\n"
    )
    jit = {**os.environ, AOT_ENV: "0"}  # numba's just-in-time kernels (the ahead-of-time ones import no numba)
    plain = _python(code, env=jit)
    assert plain.stdout.strip() == "True", plain.stderr  # the control: numba loads them by default
    folder, entries = files
    scan, _, flat = entries[0]
    command = subprocess.run([sys.executable, "-X", "importtime", "-m", "napari_sedclassify.cli", "preprocess",
                              str(scan), "--flatfield", str(flat), "--out", str(tmp_path / "p.h5")],
                             capture_output=True, text=True, timeout=300, env=jit)
    assert command.returncode == 0, command.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in command.stderr.splitlines() if line.startswith("import time")}
    assert "napari_sedclassify.processing._kernels" in imported
    assert not imported & set(modules), imported & set(modules)


def test_kernel_cache_folder_when_nothing_is_writable(monkeypatch, tmp_path):
    import numba

    from napari_sedclassify.processing import _kernels

    monkeypatch.setenv("NUMBA_CACHE_DIR", "")  # recorded: restored (unset) afterwards
    monkeypatch.setattr(numba.config, "CACHE_DIR", numba.config.CACHE_DIR)
    monkeypatch.setattr(_kernels.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(_kernels, "_writable", lambda path: False)
    _kernels._ensure_cache_dir()
    folder = str(tmp_path / f"napari-sedclassify-numba-{_kernels.os.getuid()}")
    import os

    assert os.environ["NUMBA_CACHE_DIR"] == folder and numba.config.CACHE_DIR == folder
    monkeypatch.setattr(_kernels, "_writable", lambda path: True)
    monkeypatch.setenv("NUMBA_CACHE_DIR", "")
    _kernels._ensure_cache_dir()
    assert os.environ["NUMBA_CACHE_DIR"] == ""  # numba's own folders are fine: left alone


@pytest.mark.parametrize("order", ["sorted", "scattered"])
def test_sample_is_read_straight_from_the_reader(disk_scan, tmp_path, order):
    """The calibration sample comes straight from the reader, in this thread: the frames asked
    for, exactly, from an in-memory scan and from a file opened with no dask at all."""

    idx = np.array([0, 3, 7, 19]) if order == "sorted" else np.array([19, 2, 3, 11, 0])
    ref = np.asarray(disk_scan.data).reshape((-1,) + disk_scan.detector_shape)[idx]
    np.testing.assert_array_equal(disk_scan.read(idx), ref)
    path = tmp_path / "scan.npy"
    np.save(path, np.asarray(disk_scan.data))
    code = (
        "import sys, numpy as np\n"
        "from napari_sedclassify.io import open_scan\n"
        f"scan = open_scan({str(path)!r})\n"
        f"np.save({str(tmp_path / 'got.npy')!r}, scan.read({idx.tolist()!r}))\n"
        "print('dask' in sys.modules)\n"
    )
    out = _python(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False", "opening a scan and reading frames imported dask"
    np.testing.assert_array_equal(np.load(tmp_path / "got.npy"), ref)


def test_quick_demo_by_default(tmp_path, capsys):
    """`sedclassify demo` runs the quick demo (5 + 1 scans) unless --full: every model asked for,
    the held-out scans of both sessions, and the closing speed line (frames of all 6 scans)."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--scan-shape", "8", "8", "--detector", "64", "--models", "fcnn,svm"]) == 0
    report = json.loads((out / "report.json").read_text())
    s = report["settings"]
    assert s["preset"] == "quick" and len(s["train_scans"]) == 4
    assert (s["test_same_session"], s["test_other_session"]) == ("scan_A_04", "scan_B_00")
    assert set(report["models"]) == {"fcnn", "svm"}
    assert "sedclassify demo --full" in (out / "report.md").read_text()
    assert SPEED_LINE.findall(capsys.readouterr().err) == [("demo", str(6 * 64))]


def _advised_code(call: str | None) -> str:
    """Code printing ``call``'s value (None: nothing called), then whether the kernel was advised
    huge pages (``hg`` in the VmFlags of /proc/self/smaps) for the memory of a fresh 64 MB array."""
    return (
        "import numpy as np\n"
        "from napari_sedclassify.pages import LONG_RUN_BYTES, small_pages\n"
        f"print({call or 'None'})\n"
        "a = np.empty(64 << 20, np.uint8); a[:] = 1\n"
        "addr, inside, advised = a.ctypes.data + a.nbytes // 2, False, None\n"
        "for line in open('/proc/self/smaps'):\n"
        "    head = line.split()[0]\n"
        "    if '-' in head and ':' not in head:\n"
        "        lo, hi = (int(x, 16) for x in head.split('-'))\n"
        "        inside = lo <= addr < hi\n"
        "    elif inside and head == 'VmFlags:':\n"
        "        advised = 'hg' in line.split()[1:]\n"
        "print(advised)\n"
    )


def test_huge_page_advice_only_for_long_runs_in_a_command(files, tmp_path):
    """numpy advises transparent huge pages (``madvise(MADV_HUGEPAGE)``) for arrays of 4 MB or
    more; where the kernel honours the advice by compacting memory at the first touch, the fresh
    blocks of frames of a short run waited for it, while a long run gains from huge pages
    (docs/performance.md, session 12). ``small_pages`` turns the advice off for runs under
    ``LONG_RUN_BYTES`` and leaves numpy's default for longer ones; a command decides from the size
    of the files it is given; a user's ``NUMPY_MADVISE_HUGEPAGE`` is kept."""
    if not Path("/proc/self/smaps").exists():
        pytest.skip("no /proc/self/smaps here")
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}

    def advised(call):
        out = _python(_advised_code(call), timeout=120, env=env)
        return out.stdout.split() or [out.stderr[-2000:]]

    default = advised(None)
    if default == ["None", "False"]:
        pytest.skip("numpy gives no huge-page advice here (no transparent huge pages): nothing to turn off")
    assert default == ["None", "True"]  # the control: numpy's default
    assert advised("small_pages()") == ["True", "False"]
    assert advised("small_pages(LONG_RUN_BYTES - 1)") == ["True", "False"]
    assert advised("small_pages(LONG_RUN_BYTES)") == ["False", "True"]
    # the command's own process: the advice follows the size of its input files
    from napari_sedclassify.pages import LONG_RUN_BYTES

    long_scan = tmp_path / "long.npy"  # a sparse file: 2 GiB of zero frames, no disk used
    np.lib.format.open_memmap(long_scan, mode="w+", dtype=np.uint16, shape=(LONG_RUN_BYTES // (2 * 512 * 512), 1, 512, 512))

    def command_advice(scan, setting=None):
        code = ("import atexit, sys\n"
                "from numpy._core.multiarray import _set_madvise_hugepage as advice\n"
                "atexit.register(lambda: print('advice on:', advice(True)))\n"
                "from napari_sedclassify.cli import entry\n"
                f"sys.argv = ['sedclassify', 'info', {str(scan)!r}]\n"
                "entry()\n")
        run_env = env if setting is None else {**env, "NUMPY_MADVISE_HUGEPAGE": setting}
        out = _python(code, env=run_env)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1]

    short_scan = files[1][0][0]
    assert command_advice(short_scan) == "advice on: False"
    assert command_advice(long_scan) == "advice on: True"
    assert command_advice(short_scan, "1") == "advice on: True"  # the user's choice


def test_predict_writes_its_class_map_tiff_without_importing_tifffile(files, tmp_path):
    """tifffile's import took 130 ms of every ``predict``: the uint8 class-map TIFF is written with
    Pillow (which draws the overlay anyway), importing only its TIFF plugin; tifffile, ImageJ and
    napari read it back as the class map."""
    import tifffile

    folder, entries = files
    (scan0, truth0, _), (scan1, truth1, _) = entries
    code = (
        "import sys, contextlib, io\n"
        "from napari_sedclassify.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['train', '--scans', {str(scan0)!r}, '--labels', {str(truth0)!r}, '--model', 'fcnn',"
        f" '--epochs', '2', '--out', {str(tmp_path / 'm.sedmodel')!r}]) == 0\n"
        "    before = set(sys.modules)\n"
        f"    assert main(['predict', {str(tmp_path / 'm.sedmodel')!r}, {str(scan1)!r}, '--out', {str(tmp_path / 'pred')!r}]) == 0\n"
        "new = set(sys.modules) - before\n"
        "print('tifffile' in sys.modules, sorted(m for m in new if m.startswith('PIL.') and m.endswith('ImagePlugin')))\n"
    )
    proc = _python(code, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tifffile_imported, plugins = proc.stdout.split("\n")[-2].split(" ", 1)
    plugins = ast.literal_eval(plugins)
    # Pillow's own first five (BMP, GIF, JPEG, PNG, PPM) and TIFF; saving a TIFF otherwise imports 40 or more
    assert tifffile_imported == "False" and "PIL.TiffImagePlugin" in plugins and len(plugins) <= 8, proc.stdout
    (tif,) = (tmp_path / "pred").glob("*_classes.tif")
    np.testing.assert_array_equal(tifffile.imread(tif), np.load(str(tif).replace(".tif", ".npy")))


def test_frame_bar_is_drawn_at_tqdms_rate_without_a_process_lock():
    """A command's frame bar is redrawn at most every 0.1 s (and at the end, whole), not at every
    block the workers finish; drawing it makes no multiprocessing lock (tqdm's default: it imports
    multiprocessing and makes a semaphore, 10 ms in the middle of the frames). An epoch bar still
    shows every epoch."""
    code = (
        "import io, sys, time\n"
        "err = io.StringIO(); sys.stderr = err\n"
        "from napari_sedclassify.cli._bars import Bars\n"
        "t0 = time.perf_counter()\n"
        "with Bars() as bars:\n"
        "    for done in range(0, 2001, 5):\n"
        "        bars.frames(done, 2000)\n"
        "took = time.perf_counter() - t0\n"
        "frames_out = err.getvalue()\n"
        "err.seek(0); err.truncate()\n"
        "with Bars() as bars:\n"
        "    for epoch in range(1, 4):\n"
        "        bars.epoch(epoch, {'loss': 1.0 / epoch, 'max_epochs': 3})\n"
        "        time.sleep(0.01)\n"
        "epochs_out = err.getvalue()\n"
        "sys.stderr = sys.__stderr__\n"
        "print(repr((frames_out, took, epochs_out, 'multiprocessing' in sys.modules)))\n"
    )
    frames_out, took, epochs_out, mp = ast.literal_eval(_last_line(code, timeout=120))
    drawings = [d for d in frames_out.split("\r") if "frame" in d]
    assert len(drawings) <= took / 0.1 + 3, (len(drawings), took)  # 401 progress reports
    assert "2000/2000" in drawings[-1]
    assert [f"{e}/3" in epochs_out for e in (1, 2, 3)] == [True, True, True]
    assert not mp


def test_a_frame_bar_in_a_log_file_is_drawn_at_the_log_interval():
    """Written to a file or a pipe (a batch job's log), a frame bar is drawn at its start and, whole,
    at its end, and between only every LOG_INTERVAL_S (10 s): tqdm's carriage returns stay in a file,
    and at its 0.1 s a long run logged thousands of drawings on one line. On a terminal it is still
    redrawn every 0.1 s."""
    code = (
        "import io, sys, time\n"
        "from napari_sedclassify.cli._bars import Bars\n"
        "class Terminal(io.StringIO):\n"
        "    def isatty(self):\n"
        "        return True\n"
        "out = []\n"
        "for stream in (io.StringIO(), Terminal()):\n"
        "    sys.stderr = stream\n"
        "    t0 = time.perf_counter()\n"
        "    with Bars() as bars:\n"
        "        for done in range(0, 2001, 10):\n"
        "            bars.frames(done, 2000)\n"
        "            time.sleep(0.005)\n"
        "    out.append((stream.getvalue(), time.perf_counter() - t0))\n"
        "sys.stderr = sys.__stderr__\n"
        "print(repr(out))\n"
    )
    (logged, took_log), (shown, took_tty) = ast.literal_eval(_last_line(code, timeout=120))
    in_log = [d for d in logged.split("\r") if "frame" in d]
    on_tty = [d for d in shown.split("\r") if "frame" in d]
    assert took_log < 9 and len(in_log) <= 3, (took_log, in_log)  # 201 reports in about 1 s: start and end
    assert "2000/2000" in in_log[-1] and "0/2000" in in_log[0]
    assert len(on_tty) >= took_tty / 0.1 / 2, (took_tty, len(on_tty))  # every 0.1 s on a terminal
    assert "2000/2000" in on_tty[-1]


def test_a_command_builds_only_its_own_parser(realdata):
    """``sedclassify info FILE`` imports the module of ``info`` alone (8-10 ms less before a
    command's work than importing all eleven); ``sedclassify --help`` still lists every command."""
    mib = realdata / "merlin" / "Single_9_Frame_CounterDepth_6_Rows_256.mib"
    code = (
        "import sys\n"
        "from napari_sedclassify.cli import SUBCOMMANDS, main\n"
        f"rc = main(['info', {str(mib)!r}])\n"
        "print(rc, sorted(n for n in SUBCOMMANDS if f'napari_sedclassify.cli.{n}' in sys.modules))\n"
    )
    assert _last_line(code, timeout=120) == "0 ['info']"
    from napari_sedclassify.cli import SUBCOMMANDS

    listing = subprocess.run([sys.executable, "-m", "napari_sedclassify.cli", "--help"], capture_output=True,
                             text=True, timeout=120).stdout
    assert all(f"    {name}" in listing for name in SUBCOMMANDS), listing


def test_psutil_is_imported_only_when_a_leftover_names_a_process(files, tmp_path):
    """Writing an output looks for temporary files left by killed runs beside it; psutil (7 ms on
    every command's way out) is imported only when one is there, to ask whether its process is
    gone. A leftover of a process that has ended is removed; one of a running process is not."""
    (scan0, _, flat), _ = files[1]
    out = tmp_path / "p.h5"
    argv = ["preprocess", str(scan0), "--flatfield", str(flat), "--out", str(out)]
    code = (
        "import sys\n"
        "from napari_sedclassify.cli import main\n"
        f"rc = main({argv!r} + sys.argv[1:])\n"
        "print(rc, 'psutil' in sys.modules)\n"
    )
    r = _python(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "0 False"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone_pid = int(done.stdout)  # a process that has ended
    stale = tmp_path / f".p.h5.{gone_pid}-abc123.part.h5"
    alive = tmp_path / f".p.h5.{os.getpid()}-def456.part.h5"
    stale.write_bytes(b"half")
    alive.write_bytes(b"half")
    r = subprocess.run([sys.executable, "-c", code, "--force"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "0 True"
    assert not stale.exists() and alive.exists()


def test_a_command_imports_tqdm_without_importlib_metadata(files, tmp_path):
    """tqdm asks ``importlib.metadata`` for its own version (its imports and a scan of every path
    entry: 32 of the 39 ms ``import tqdm`` took, in the thread that imports while the command
    starts, holding the interpreter lock the start needs). A command hands tqdm that version read
    from its .dist-info folder instead: `preprocess`, run as the console script runs it, ends with
    tqdm and h5py imported and ``importlib.metadata`` not, and its bar's tqdm reports the version
    pip installed."""
    from importlib.metadata import version

    (scan0, _, flat), _ = files[1]
    argv = ["sedclassify", "preprocess", str(scan0), "--flatfield", str(flat), "--out", str(tmp_path / "p.h5")]
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print(sorted(m for m in ('tqdm', 'h5py', 'importlib.metadata') if m in sys.modules),"
            " sys.modules['tqdm'].__version__, flush=True))\n"
            f"sys.argv = {argv!r}\n"
            "from napari_sedclassify.cli import entry\n"
            "entry()\n")
    assert _last_line(code) == f"['h5py', 'tqdm'] {version('tqdm')}"
