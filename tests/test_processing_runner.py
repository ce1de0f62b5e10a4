"""The frame runner: one pass, the same results from a frame, a stack, dask, a cluster, a stream."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sedclassify import Geometry, Scan
from napari_sedclassify.errors import Cancelled
from napari_sedclassify.processing import (
    CentralCrop,
    CentreFinder,
    FlatField,
    FrameProcessor,
    FrameRunner,
    Output,
    RadialProfile,
    VirtualDetectors,
)


def beam_stack(n=24, k=96, seed=0):
    """Frames with a saturated beam moving over the detector and a diffuse ring, uint16."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((k, k))
    out = np.empty((n, k, k), np.uint16)
    true = np.empty((n, 2))
    for i in range(n):
        true[i] = 48 + rng.uniform(-8, 8, 2)
        r = np.hypot(yy - true[i, 0], xx - true[i, 1])
        lam = 8000.0 * np.clip(4.5 - r, 0, 1) + 30 * np.exp(-0.5 * ((r - 25) / 4) ** 2) + 1
        out[i] = np.minimum(rng.poisson(lam), 4095)
    return out, true


class BrightestPixel(FrameProcessor):
    """A user's processor: the brightest valid pixel of each frame (needs no centre)."""

    needs_centres = False

    def outputs(self):
        return {"brightest": Output((), "float32", np.nan)}

    def process_chunk(self, frames, centres, mask):
        return {"brightest": np.nanmax(frames.reshape(len(frames), -1), axis=1)}


def make_runner(k=96):
    mask = np.zeros((k, k), bool)
    mask[10:14, 60:70] = True
    ff = FlatField(np.full((k, k), 1.25, np.float32), mask).with_saturation(4095)
    procs = [RadialProfile(60), VirtualDetectors({"bf": (0, 6), "adf": (10, np.inf)}), CentralCrop(16, 2),
             BrightestPixel()]
    return FrameRunner(procs, ff, CentreFinder())


def assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def assert_close(a: dict, b: dict):
    """Chunked differently: the centre search of a frame starts from the centre of the frame before
    it in the same batch, so centres may differ in the last digits, and a pixel at a bin edge may
    change bin."""
    assert set(a) == set(b)
    np.testing.assert_allclose(a["centre"], b["centre"], atol=1e-3)
    np.testing.assert_array_equal(a["beam_found"], b["beam_found"])
    assert np.abs(a["ria_counts"].astype(int) - b["ria_counts"]).max() <= 2
    for k in ("ria", "total", "bf", "adf", "brightest", "beam_radius_px"):
        np.testing.assert_allclose(a[k], b[k], rtol=0.02, err_msg=k)
    assert np.mean(a["crop"] == b["crop"]) > 0.99


def test_one_pass_fuses_processors_and_finds_centres():
    frames, true = beam_stack()
    runner = make_runner()
    out = runner.run(frames)
    assert set(out) == {"centre", "beam_found", "beam_radius_px", "beam_peak_counts", "ria", "ria_counts", "total",
                        "bf", "adf", "crop", "brightest"}
    assert out["beam_found"].all()
    assert (out["beam_peak_counts"] > 1000).all()  # the saturated beams' height, far above the halo
    assert np.hypot(*(out["centre"] - true).T).max() < 0.2
    assert out["ria"].shape == (24, 60) and out["crop"].shape == (24, 16, 16)
    np.testing.assert_allclose(out["brightest"], 4095.0)  # saturated pixels keep the counter value
    corr = runner.flatfield.apply(frames)
    np.testing.assert_allclose(out["total"], np.nansum(corr, axis=(1, 2)), rtol=1e-5)
    assert (out["bf"] + out["adf"] < out["total"]).all()  # 6 <= r < 10 in neither
    # the crop's middle is the frame's centre: its brightest 2x2 block sits there
    mid = out["crop"][:, 7:9, 7:9].mean(axis=(1, 2))
    assert (mid >= out["crop"].max(axis=(1, 2)) * 0.9).all()


def test_same_results_from_frame_stack_dask_and_stream():
    import dask.array as da

    frames, _ = beam_stack()
    runner = make_runner()
    ref = runner.run(frames, workers=1, chunk_frames=6)
    assert_same(ref, runner.run(frames, workers=2, chunk_frames=6))  # threads: the same chunks
    scan4d = frames.reshape(4, 6, 96, 96)
    assert_same(ref, runner.run(Scan(scan4d, Geometry((96, 96)))))  # one scan row per dask block
    odd = da.from_array(scan4d, chunks=(3, 4, 96, 48))  # splits scan rows, columns and the detector
    assert_close(ref, runner.run(odd))
    assert_close(ref, runner.run(frames, chunk_frames=5))
    chunks = [(np.arange(i, min(24, i + 7)), frames[i:i + 7]) for i in (14, 0, 21, 7)]  # any order
    assert_close(ref, runner.run_stream(chunks, n_frames=24))
    one = runner.run_chunk(frames[5])
    assert_close({k: v[5:6] for k, v in ref.items()}, one.values)


def test_merge_is_order_free_and_idempotent():
    frames, _ = beam_stack(n=12)
    runner = make_runner()
    parts = [runner.run_chunk(frames[i:i + 4], np.arange(i, i + 4)) for i in (8, 0, 4)]
    store = runner.allocate(12)
    assert np.isnan(store["ria"]).all() and not store["beam_found"].any()
    for p in parts + parts[:1]:
        runner.merge(store, p)
    assert_same(store, runner.run(frames, chunk_frames=4))


def test_given_centres_replace_the_finder():
    frames, true = beam_stack(n=6)
    runner = FrameRunner([RadialProfile(60)], None, CentreFinder())
    out = runner.run(frames, centres=true)
    assert set(out) == {"ria", "ria_counts"}
    ref = FrameRunner([RadialProfile(60)]).run_chunk(frames, centres=true)
    np.testing.assert_array_equal(out["ria"], ref.values["ria"])
    with pytest.raises(ValueError, match="no centres"):
        FrameRunner([RadialProfile(60)]).run_chunk(frames)


def test_progress_and_cancel():
    frames, _ = beam_stack()
    runner = make_runner()
    seen = []
    runner.run(frames, chunk_frames=4, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (24, 24) and all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))
    with pytest.raises(Cancelled):
        runner.run(frames, chunk_frames=4, workers=1, cancel=lambda: True)


def test_batches_grow_for_small_frames_and_change_no_result(monkeypatch):
    """512 x 512 frames go 8 at a time (the cache), smaller ones more (up to 64); every output is
    the same to the bit whatever the batch (the centre finder's start within a batch included)."""
    from napari_sedclassify.processing import runner as runner_module

    assert [runner_module.batch_frames(s) for s in ((512, 512), (256, 256), (192, 192), (96, 96), (1024, 1024))] \
        == [8, 32, 56, 64, 8]
    frames, _ = beam_stack(n=40)
    big = make_runner().run_chunk(frames)
    monkeypatch.setattr(runner_module, "BATCH_BYTES", 1)  # 8 at a time
    assert runner_module.batch_frames(frames.shape[1:]) == 8
    small = make_runner().run_chunk(frames)
    assert big.values.keys() == small.values.keys()
    for name in big.values:
        np.testing.assert_array_equal(big.values[name], small.values[name], err_msg=name)


def test_the_first_progress_report_does_not_hold_the_frames_back():
    """A command's progress bar is imported and drawn at the first report (0 of n): the workers
    already have frames then, so that time overlaps theirs (the report waits here until a worker
    has read a block; reported before the first tasks, it would wait in vain)."""
    import threading

    from napari_sedclassify.scan import ScanFrames

    frames, _ = beam_stack()
    read = threading.Event()

    class Reader:  # a file reader's interface: shape, dtype, frames by scan position
        shape, dtype = (4, 6) + frames.shape[1:], frames.dtype

        def __getitem__(self, key):
            read.set()
            return frames.reshape(self.shape)[key]

    seen = []

    def progress(done, total):
        if not seen:
            seen.append(read.wait(10))
        seen.append((done, total))

    result = make_runner().run(ScanFrames(Reader(), chunks=(1, 6)), workers=2, progress=progress)
    assert seen[0] is True and seen[1] == (0, 24) and seen[-1] == (24, 24)
    assert np.isfinite(result["centre"]).all()


def test_dask_distributed_workers_read_their_own_frames(tmp_path):
    """On a LocalCluster of two worker processes, reading the .npy through the project's reader."""
    distributed = pytest.importorskip("distributed")
    from napari_sedclassify.io import open_scan

    frames, _ = beam_stack()
    np.save(tmp_path / "scan.npy", frames.reshape(4, 6, 96, 96))
    scan = open_scan(tmp_path / "scan.npy", chunk_frames=6)
    runner = make_runner()
    ref = runner.run(scan)  # threads here, the same blocks
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        out = runner.run(scan, client=client)
        assert len(client.scheduler_info()["workers"]) == 2
    assert_same(ref, out)


def test_one_worker_runs_in_the_calling_thread_even_as_the_interpreter_exits():
    """workers=1 processes the blocks in the calling thread, with the same results, progress and
    cancel as a pool. A thread pool refuses work once the interpreter exits, which the viewer's
    warm-up thread (a tiny integrated image) met when napari was closed right after it opened:
    a traceback on the terminal. Run from an exit handler here, as that warm-up was."""
    import subprocess
    import sys
    import threading

    frames, _ = beam_stack(n=24)
    threads = set()

    class Where(BrightestPixel):
        def process_chunk(self, frames, centres, mask):
            threads.add(threading.get_ident())
            return super().process_chunk(frames, centres, mask)

    seen = []
    runner = make_runner()
    runner_one = FrameRunner(runner.processors[:-1] + [Where()], runner.flatfield, CentreFinder())
    one = runner_one.run(frames, workers=1, chunk_frames=5, progress=lambda d, t: seen.append(d))
    assert threads == {threading.get_ident()}
    assert seen[0] == 0 and seen[-1] == 24 and len(seen) == 1 + 5
    assert_same(one, make_runner().run(frames, workers=2, chunk_frames=5))
    with pytest.raises(Cancelled):
        runner_one.run(frames, workers=1, chunk_frames=5, cancel=lambda: True)
    code = ("import atexit, numpy as np\n"
            "from napari_sedclassify.scan import Scan\n"
            "from napari_sedclassify.processing.virtual import virtual_image\n"
            "atexit.register(lambda: print('total', virtual_image(Scan(np.ones((2, 2, 16, 16), np.uint16)), "
            "workers=1).sum()))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "total 1024.0"


@pytest.mark.parametrize("with_flatfield", [False, True])
def test_the_frames_totals_come_from_the_correction_and_equal_the_virtual_detectors_own(with_flatfield):
    """The correction adds up each frame's finite pixels as it writes them (``takes_totals``): the
    integrated image and the annuli that reach past the frame are the same to the bit as the sums
    ``VirtualDetectors`` makes on its own over the corrected frames, masked pixels, saturated
    pixels and a NaN-valued flat-field pixel excluded alike, and close to numpy's sums."""
    frames, true = beam_stack(n=70)
    k = frames.shape[-1]
    mask = np.zeros((k, k), bool)
    mask[10:14, 60:70] = True
    mask[0, :] = True
    gain = np.random.default_rng(4).uniform(0.8, 1.2, (k, k)).astype(np.float32) if with_flatfield \
        else np.ones((k, k), np.float32)
    ff = FlatField(gain, mask).with_saturation(4095)
    seen = []

    class Virtual(VirtualDetectors):
        def process_chunk(self, frames, centres, mask=None, totals=None):
            seen.append(totals is not None)
            return super().process_chunk(frames, centres, mask, totals)

    annuli = {"bf": (0, 6), "adf": (10, np.inf)}
    out = FrameRunner([Virtual(annuli)], ff).run(frames, centres=true, chunk_frames=70)
    assert seen and all(seen)
    corrected = ff.apply(frames)
    own = VirtualDetectors(annuli).process_chunk(corrected, true)
    for name in ("total", "bf", "adf"):
        np.testing.assert_array_equal(out[name], own[name], err_msg=name)
    np.testing.assert_allclose(out["total"], np.nansum(corrected.astype(np.float64), axis=(1, 2)), rtol=1e-6)
    assert np.isnan(corrected[:, mask]).all() and np.isfinite(out["total"]).all()
