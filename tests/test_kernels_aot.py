"""The kernels compiled ahead of time (``processing.kernels``): the same results as numba's
just-in-time kernels on real and simulated scans, used for the signatures they were compiled for
only (anything else goes to numba, never to a crash), the interpreter lock released while they
run, and a command that never imports numba."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_sedclassify.processing import kernels
from napari_sedclassify.processing.kernels import AOT_ENV


@pytest.fixture(scope="module")
def aot(tmp_path_factory):
    """The ahead-of-time module: the one scripts/setup.sh built, else one built here."""
    module = kernels.aot_module()
    if module is None:
        old = os.environ.get("XDG_CACHE_HOME")
        os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
        try:
            kernels._state.clear()
            if kernels.build(verbose=False) is None:
                pytest.skip("no ahead-of-time compilation on this machine (not Linux, or no C compiler)")
            module = kernels.aot_module()
        finally:
            os.environ.pop("XDG_CACHE_HOME") if old is None else os.environ.update(XDG_CACHE_HOME=old)
    assert module is not None
    return module


class _Counting:
    """The module, counting which of its functions were called."""

    def __init__(self, module):
        self.module, self.called = module, set()

    def __getattr__(self, name):
        self.called.add(name.rsplit("_", 1)[0])
        return getattr(self.module, name)


def _both(monkeypatch, aot, run):
    """run() with the ahead-of-time kernels, then with numba's: (result, result, kernels called ahead of time)."""
    counting = _Counting(aot)
    monkeypatch.setitem(kernels._state, "module", counting)
    ahead = run()
    monkeypatch.setitem(kernels._state, "module", None)
    jit = run()
    return ahead, jit, counting.called


def _same(a, b):
    for name in ("centres", "ria", "ria_counts", "beam_radius_px", "crops", "mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for k in a.virtual:
        np.testing.assert_array_equal(a.virtual[k], b.virtual[k], err_msg=k)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "float32", "int16", "int32", "int64", "float64"])
def test_a_simulated_quad_scan_preprocesses_the_same_ahead_of_time(monkeypatch, aot, dtype):
    """Every kernel of a preprocessing pass with a flat-field and crops (a Medipix3 quad's wide
    pixels under the beam), for each raw dtype: identical to numba's just-in-time kernels."""
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.processing import FlatField, PreprocessParams
    from napari_sedclassify.scan import Scan
    from napari_sedclassify.simulate import simulate_scan

    sim = simulate_scan(scan_shape=(6, 6), detector_px=128, seed=7)
    frames = np.asarray(sim.scan.data)
    if dtype == "uint8":
        frames = np.minimum(frames, 255)
    scan = Scan(frames.astype(dtype), geometry=sim.scan.geometry, metadata=sim.scan.metadata)
    params = PreprocessParams(crop_radius_px=20, crop_bin=2, workers=2)
    ff = FlatField.from_flood(sim.flatfield)
    ahead, jit, called = _both(monkeypatch, aot, lambda: preprocess(scan, params, flatfield=ff))
    _same(ahead, jit)
    assert np.isfinite(ahead.centres).all() and ahead.ria.shape[-1] > 50
    assert called == {"correct_frames", "pixel_statistics", "median_5x5", "find_centres", "radial_sums",
                      "annular_sums", "central_crops"}, called
    # the binned frames of the PCC maps
    from napari_sedclassify.processing import FrameRunner
    from napari_sedclassify.processing.crop import FrameBinning

    flat = scan.data.reshape((-1,) + scan.detector_shape)
    ahead, jit, called = _both(monkeypatch, aot, lambda: FrameRunner([FrameBinning(scan.detector_shape, 8)], ff)
                               .run_chunk(flat, centres=np.full((len(flat), 2), np.nan)).values["binned"])
    np.testing.assert_array_equal(ahead, jit)
    assert called == {"correct_frames", "bin_means"} and np.isfinite(ahead).mean() > 0.9


def test_a_real_mib_file_preprocesses_the_same_ahead_of_time(monkeypatch, aot, realdata):
    """The real Merlin quad file (frames read through a strided, read-only memory map)."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.preprocess import preprocess

    from napari_sedclassify.processing import PreprocessParams

    scan = open_scan(realdata / "merlin" / "Quad_9_Frame_CounterDepth_6_Rows_256.mib")
    # a detector test pattern: no blob of it is as compact and bright as a direct beam, so the plan
    # finds no beam radius by itself (processing.plan.BEAM_CONTRAST_MIN) ...
    with pytest.raises(ValueError, match="no direct beam found"):
        preprocess(scan)
    # ... given one, the finder takes one bright blob for the beam in all 9 frames
    ahead, jit, called = _both(monkeypatch, aot, lambda: preprocess(scan, PreprocessParams(beam_radius_px=8)))
    _same(ahead, jit)
    assert int(np.isfinite(ahead.centres[..., 0]).sum()) == 9
    # no flat-field, counts: the frames are converted, not corrected (no correction map to read)
    assert {"convert_frames", "find_centres", "radial_sums"} <= called and "correct_frames" not in called


def test_arguments_outside_the_compiled_signatures_go_to_numba(monkeypatch, aot):
    """float64 or byte-swapped frames, a strided array, an unknown counts dtype: numba's kernel
    (compiled for them) runs, with the right result, instead of a compiled function that would
    read them wrongly or crash."""
    from napari_sedclassify.processing import _kernels

    counting = _Counting(aot)
    monkeypatch.setitem(kernels._state, "module", counting)
    rng = np.random.default_rng(0)
    frames = rng.poisson(4.0, (3, 40, 40)).astype(np.float32)
    centres = np.array([[19.5, 20.2], [20.1, 19.7], [18.9, 21.0]])
    axis = np.arange(40.0)

    def profile(f, counts_dtype=np.int64, call=kernels.radial_sums):
        sums, counts = np.zeros((3, 25)), np.zeros((3, 25), counts_dtype)
        call(f, centres, axis, axis, 0.0, 1.0, sums, counts)
        return sums, counts

    reference = profile(frames, call=_kernels.radial_sums)
    assert counting.called == set()
    for f, counts_dtype in ((frames, np.int64), (frames.astype(np.float64), np.int64),
                            (np.asfortranarray(frames), np.int64), (frames, np.int16)):
        counting.called.clear()
        sums, counts = profile(f, counts_dtype)
        np.testing.assert_array_equal(sums, reference[0])
        np.testing.assert_array_equal(counts, reference[1])
        expected = {"radial_sums"} if (f is frames and counts_dtype is np.int64) else set()
        assert counting.called == expected, (f.dtype, f.flags.c_contiguous, counts_dtype)
    raw = rng.poisson(4.0, (2, 16, 16)).astype(np.uint64)  # a raw dtype not compiled ahead of time
    gain, dark = np.ones((16, 16), np.float32), np.zeros((16, 16), np.float32)
    out = np.empty((2, 16, 16), np.float32)
    counting.called.clear()
    kernels.correct_frames(raw, gain, dark, False, 0.0, out, np.empty(2))
    np.testing.assert_array_equal(out, raw.astype(np.float32))
    assert counting.called == set()
    kernels.correct_frames(raw.astype(np.uint16), gain, dark, False, 0.0, out, np.empty(2))
    assert counting.called == {"correct_frames"}
    # what the checks refuse: big-endian, misaligned, wrong dimensions, a bool for an integer
    spec = ("uint16", 3, "C")
    assert not kernels._matches(raw.astype(">u2"), spec) and not kernels._matches(raw.astype(np.uint16)[0], spec)
    misaligned = np.frombuffer(bytearray(2 * 16 * 16 * 2 + 1), np.uint8)[1:].view(np.uint16).reshape(2, 16, 16)
    assert not misaligned.flags.aligned and not kernels._matches(misaligned, spec)
    assert not kernels._matches(True, "i8") and kernels._matches(np.int32(3), "i8") and kernels._matches(2, "f8")
    readonly = np.zeros((2, 5), np.int64)
    readonly.flags.writeable = False  # an output the compiled function would write regardless
    assert not kernels._matches(readonly, ("int64", 2, "C"))
    frames_readonly = raw.astype(np.uint16)
    frames_readonly.flags.writeable = False  # a raw input, only read: fine
    assert kernels._matches(frames_readonly, ("uint16", 3, "A"))


def test_the_compiled_kernels_release_the_interpreter_lock(aot):
    """While a compiled kernel runs in a thread, Python code runs in another."""
    frames = np.random.default_rng(1).poisson(4.0, (64, 512, 512)).astype(np.float32)
    centres = np.full((64, 2), 255.5)
    axis = np.arange(512.0)
    sums, counts = np.zeros((64, 363)), np.zeros((64, 363), np.int64)
    state = {"running": False, "done": False}
    beside = []

    def work():
        state["running"] = True
        aot.radial_sums_0(frames, centres, axis, axis, 0.0, 1.0, sums, counts)
        state["done"] = True

    thread = threading.Thread(target=work)
    thread.start()
    while not state["running"]:
        pass
    while not state["done"]:
        beside.append(1)
    thread.join()
    assert len(beside) > 1000  # with the lock held by the kernel, the loop could not have run
    assert (counts.sum(axis=1) == 512 * 512).all()  # every pixel binned: the corner is 362 px away


def test_a_command_never_imports_numba(aot, tmp_path):
    """`sedclassify preprocess` and `predict` with the built-in model in a fresh process: no numba
    (its import and code generator cost 0.3-0.5 s before the first frame), the same results file as
    with numba's kernels."""
    from napari_sedclassify.simulate import simulate_scan

    simulate_scan(tmp_path / "s.npy", scan_shape=(8, 8), detector_px=256, seed=3)
    env = {**os.environ, "XDG_CACHE_HOME": str(Path(aot.__file__).parents[1])}  # where the fixture found it
    code = (
        "import sys\n"
        "from napari_sedclassify.cli import main\n"
        "for argv in sys.argv[1:]:\n"
        "    try:\n"
        "        main(argv.split('|'))\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('numba' in sys.modules, file=sys.stderr)\n"
    )
    runs = [f"preprocess|{tmp_path / 's.npy'}|--flatfield|{tmp_path / 'flatfield_A.npy'}|--out|{tmp_path / name}"
            for name in ("p.h5",)] + [f"predict|builtin|{tmp_path / 's.npy'}|--out|{tmp_path / 'pred'}"]
    ahead = subprocess.run([sys.executable, "-c", code, *runs], capture_output=True, text=True, timeout=300, env=env)
    assert ahead.returncode == 0, ahead.stderr[-3000:]
    assert ahead.stderr.strip().splitlines()[-1] == "False", ahead.stderr[-3000:]
    classes = np.load(tmp_path / "pred" / "s_classes.npy")
    runs = [r.replace("p.h5", "q.h5").replace("/pred", "/pred_jit") for r in runs]
    jit = subprocess.run([sys.executable, "-c", code, *runs], capture_output=True, text=True, timeout=300,
                         env={**env, AOT_ENV: "0"})
    assert jit.returncode == 0, jit.stderr[-3000:]
    assert jit.stderr.strip().splitlines()[-1] == "True"
    assert "compiled just in time" not in ahead.stderr + jit.stderr  # built; turned off on purpose
    np.testing.assert_array_equal(np.load(tmp_path / "pred_jit" / "s_classes.npy"), classes)
    # a machine where the module was never built (pip install without the build): the same
    # results, and the command says how to build it
    runs = [r.replace("q.h5", "r.h5").replace("/pred_jit", "/pred_unbuilt") for r in runs]
    unbuilt = subprocess.run([sys.executable, "-c", code, *runs], capture_output=True, text=True, timeout=300,
                             env={**env, "XDG_CACHE_HOME": str(tmp_path / "empty cache")})
    assert unbuilt.returncode == 0, unbuilt.stderr[-3000:]
    hints = [line for line in unbuilt.stderr.splitlines() if "compiled just in time" in line]
    assert len(hints) == 2 and all("python -m napari_sedclassify.processing.kernels" in h for h in hints)
    np.testing.assert_array_equal(np.load(tmp_path / "pred_unbuilt" / "s_classes.npy"), classes)
    from napari_sedclassify.pipeline.preprocess import PreprocessResult

    a, b = PreprocessResult.load(tmp_path / "p.h5"), PreprocessResult.load(tmp_path / "q.h5")
    np.testing.assert_array_equal(a.ria, b.ria)
    np.testing.assert_array_equal(a.centres, b.centres)


class _Symbols(_Counting):
    """The module, recording the names of the compiled functions called (each signature's own)."""

    def __getattr__(self, name):
        self.called.add(name)
        return getattr(self.module, name)


def _correction_forms(monkeypatch, aot):
    """The module in use, recording its calls; and the raw frames' layout code of each compiled
    ``correct_frames`` function by name."""
    symbols = _Symbols(aot)
    monkeypatch.setitem(kernels._state, "module", symbols)
    return symbols, {kernels._symbol("correct_frames", k): sig[0][2]
                     for k, sig in enumerate(kernels.SIGNATURES["correct_frames"])}


def test_read_only_contiguous_frames_run_the_contiguous_compiled_kernel(monkeypatch, aot):
    """Frames read from a file mapped read-only are contiguous but not writeable: the raw-frame
    kernels take them in their contiguous compiled form (10x faster than the any-layout form, which
    runs element by element), with numba's results; a strided stack takes the any-layout form."""
    from napari_sedclassify.processing import _kernels

    symbols, layout = _correction_forms(monkeypatch, aot)
    raw = np.random.default_rng(2).poisson(30.0, (4, 32, 48)).astype(np.uint16)
    read_only = raw.copy()
    read_only.flags.writeable = False
    for frames, form in ((read_only, "CR"), (raw[:, :, ::2], "A")):
        shape = frames.shape[1:]
        gain = np.random.default_rng(3).uniform(0.9, 1.1, shape).astype(np.float32)
        dark = np.zeros(shape, np.float32)
        expected = np.empty(frames.shape, np.float32)
        _kernels.correct_frames(np.ascontiguousarray(frames), gain, dark, False, 4000.0, expected, np.empty(4))
        symbols.called.clear()
        out = np.empty(frames.shape, np.float32)
        kernels.correct_frames(frames, gain, dark, False, 4000.0, out, np.empty(4))
        (called,) = symbols.called
        assert layout[called] == form
        np.testing.assert_array_equal(out, expected)


def test_strided_raw_frames_are_corrected_by_the_contiguous_kernel(monkeypatch, aot, realdata):
    """8-bit Merlin frames, mapped from the file between their headers, are strided: the runner
    copies them batch by batch to run the contiguous compiled kernel, with the same results."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.processing import FlatField, FrameRunner, VirtualDetectors

    symbols, layout = _correction_forms(monkeypatch, aot)
    scan = open_scan(realdata / "merlin" / "Quad_9_Frame_CounterDepth_6_Rows_256.mib")
    block = scan.frame_source[0:3]
    frames = block.reshape((-1,) + block.shape[-2:])
    assert frames.dtype == np.uint8 and not frames.flags.c_contiguous  # the file's own bytes
    ff = FlatField(np.random.default_rng(4).uniform(0.8, 1.2, frames.shape[1:]).astype(np.float32),
                   np.zeros(frames.shape[1:], bool))
    runner = FrameRunner([VirtualDetectors({"bf": (0.0, 10.0), "adf": (10.0, 40.0)})], ff)
    centres = np.full((len(frames), 2), 128.0)
    got = runner.run_chunk(frames, centres=centres).values
    assert {layout[s] for s in symbols.called if s in layout} == {"CR"}
    expected = runner.run_chunk(np.ascontiguousarray(frames), centres=centres).values
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
