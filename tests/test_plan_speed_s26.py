"""Session 26: the calibration plan built faster, frames converted faster, the same results
(docs/performance.md "Session 26").

- The bad-pixel search's medians (each pixel's over the sample's frames, and the 5 x 5 median of
  those) come from selection networks applied to a whole detector row at once: the networks are
  held against np.partition for every sample size a user may set, ties and zeros included, and the
  kernel writes only the rows it is given (the threads split the detector by rows).
- The sample's centring is run once when the bad-pixel search found nothing new and the pixels are
  uniform (it ran twice: for the beam's path, then for its radius; a real Merlin file), and still
  twice when new bad pixels or wide chip-edge pixels change what the second one sees (a simulated
  Medipix quad without its flat-field: hot pixels and the wide cross).
- The command sets ``OPENBLAS_THREAD_TIMEOUT`` (its BLAS threads stop spinning), unless the user did.
- Frames without a flat-field or dark level are converted to float32 with NaN where masked, not
  corrected against a map of ones: the same values, for every integer dtype and on a real file.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from napari_sedclassify.processing.selection import selection_network


@pytest.mark.parametrize("m", [*range(1, 70), 96, 100, 129, 200])
def test_a_selection_network_puts_the_kth_smallest_in_place_k(m):
    rng = np.random.default_rng(m)
    values = np.concatenate([
        rng.poisson(0.8, (60, m)).astype(np.float32),  # counts: ties and zeros
        rng.normal(size=(20, m)).astype(np.float32),   # no ties
        np.sort(rng.random((10, m)), axis=1)[:, ::-1].astype(np.float32),  # reversed
    ])
    for k in sorted({0, m // 2, m - 1, (m - 1) // 3}):
        pairs = selection_network(m, k)
        assert pairs.ndim == 2 and pairs.shape[1] == 2 and not pairs.flags.writeable
        assert (pairs[:, 0] < pairs[:, 1]).all() and (pairs < m).all()
        rows = values.T.copy()  # (m, columns): one comparator orders every column at once
        for a, b in pairs:
            lo, hi = np.minimum(rows[a], rows[b]), np.maximum(rows[a], rows[b])
            rows[a], rows[b] = lo, hi
        np.testing.assert_array_equal(rows[k], np.partition(values, k, axis=1)[:, k])


def test_a_selection_network_refuses_a_place_outside_the_values():
    with pytest.raises(ValueError, match="place 5 is not among 5 values"):
        selection_network(5, 5)


def test_pixel_statistics_writes_only_the_rows_asked_for():
    """The bad-pixel search splits the detector's rows between threads over the same output arrays."""
    from napari_sedclassify.processing.kernels import pixel_statistics

    rng = np.random.default_rng(3)
    sample = rng.poisson(2.0, (9, 20, 13)).astype(np.uint16)
    one, zero = np.ones((20, 13), np.float32), np.zeros((20, 13), np.float32)
    med = np.full((20, 13), -7.0, np.float32)
    mean = np.full((20, 13), -7.0, np.float32)
    counted, all_nan = np.zeros((20, 13), bool), np.ones((20, 13), bool)
    pixel_statistics(sample, one, zero, False, np.inf, selection_network(9, 4), 5, 11, med, mean, counted, all_nan)
    np.testing.assert_array_equal(med[5:11], np.partition(sample[:, 5:11], 4, axis=0)[4])
    np.testing.assert_allclose(mean[5:11], sample[:, 5:11].mean(axis=0), rtol=1e-6)
    assert (med[:5] == -7).all() and (med[11:] == -7).all() and (mean[11:] == -7).all()
    assert all_nan[:5].all() and not all_nan[5:11].any() and not counted[11:].any()


def _centrings(monkeypatch, scan, flatfield=None):
    """The plan of ``scan`` and how many times it centred the calibration sample."""
    from napari_sedclassify.processing import PreprocessParams
    from napari_sedclassify.processing import plan as plan_module
    from napari_sedclassify.processing.plan import PreprocessPlan, calibration_sample_index

    calls = []
    real = plan_module._centred

    def counted(*args, **kwargs):
        calls.append(args[2])  # the grid
        return real(*args, **kwargs)

    monkeypatch.setattr(plan_module, "_centred", counted)
    params = PreprocessParams()
    idx = calibration_sample_index(np.asarray(scan.missing, bool), params.bad_pixel_sample)
    plan = PreprocessPlan.build(params, scan.geometry, scan.metadata, scan.read(idx), flatfield)
    return plan, calls


def test_the_sample_is_centred_once_when_nothing_changes_between_its_two_uses(monkeypatch, realdata):
    """The real 6-bit Merlin frames (one 256 x 256 chip, no bad pixel in its 8 frames): one
    centring, and the beam radius it measures (its wide, saturated beam: about 25.7 px)."""
    from napari_sedclassify.io import open_scan

    plan, calls = _centrings(monkeypatch, open_scan(realdata / "merlin" / "001_4x2_6bit.mib"))
    assert not plan.bad_pixels and plan.edge_pixel_width == 1.0
    assert len(calls) == 1
    assert 24.0 < plan.beam_radius_px < 27.0


def test_new_bad_pixels_or_wide_pixels_centre_the_sample_again_and_give_the_plan_of_a_full_rebuild(monkeypatch):
    """A Medipix quad without its flat-field: its hot pixels are found in the sample and its wide
    chip-edge pixels measured, so the radius comes from a second centring on that grid, and equals
    what the centring of a plan built without the shortcut gives (the second centring run by hand)."""
    from napari_sedclassify.processing.flatfield import FlatField
    from napari_sedclassify.processing.plan import _centred
    from napari_sedclassify.processing.stats import median
    from napari_sedclassify.simulate import simulate_scan

    sim = simulate_scan(None, scan_shape=(8, 8), detector_px=256, session="A", seed=2)
    plan, calls = _centrings(monkeypatch, sim.scan)
    assert plan.bad_pixels and plan.edge_pixel_width > 1.0
    assert len(calls) == 2 and calls[0] is None and calls[1].edge_pixel_width == plan.edge_pixel_width
    ff = plan.corrections(None)
    sample = sim.scan.read(np.arange(plan.calibration_frames))
    again = _centred(sample, ff, plan.grid, plan.saturation_counts, plan.centre_floor_counts)
    assert plan.beam_radius_px == float(median(again["beam_radius_px"][again["beam_found"]]))
    assert isinstance(ff, FlatField)


def _entry_env(extra_env: dict) -> str:
    code = ("import atexit, os, sys; sys.argv = ['sedclassify', '--version'];"
            "atexit.register(lambda: print('BLAS', os.environ.get('OPENBLAS_THREAD_TIMEOUT')));"
            "from napari_sedclassify.cli import entry; entry()")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    env.update(extra_env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    return out.stdout


def test_the_command_lets_blas_threads_sleep_unless_the_user_chose():
    assert "BLAS 4" in _entry_env({})
    assert "BLAS 12" in _entry_env({"OPENBLAS_THREAD_TIMEOUT": "12"})


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "int16", "int32", "int64"])
def test_frames_without_a_flatfield_are_converted_without_reading_a_correction_map(dtype):
    """No flat-field and no dark level (counts): the correction of every unmasked pixel is 1, so the
    frames are only converted to float32 with NaN where masked, the same to the bit as the full
    correction (saturated and extreme values included)."""
    from napari_sedclassify.processing.kernels import convert_frames, correct_frames

    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    raw = rng.integers(max(info.min, -5000), min(info.max, 2**40), (5, 17, 23), dtype=dtype, endpoint=True)
    raw[0, 0, :3] = [info.min, info.max, 0]
    corr = np.ones((17, 23), np.float32)
    corr[rng.random((17, 23)) < 0.05] = np.nan
    corr[0, 1] = np.nan
    full = np.empty((5, 17, 23), np.float32)
    full_totals, quick_totals = np.empty(5), np.empty(5)
    correct_frames(raw, corr, np.zeros_like(corr), False, float(min(info.max, 4095)), full, full_totals)
    quick = np.empty_like(full)
    convert_frames(raw, np.flatnonzero(np.isnan(corr)), quick, quick_totals)
    np.testing.assert_array_equal(quick, full)  # NaN where NaN
    np.testing.assert_array_equal(quick_totals, full_totals)
    # the frames' totals: their finite pixels' sums (float32 row sums, as the integrated image had them)
    np.testing.assert_allclose(full_totals, np.nansum(full.astype(np.float64), axis=(1, 2)), rtol=1e-6)


def test_a_scan_without_a_flatfield_takes_the_conversion_and_gives_the_same_results(monkeypatch, realdata):
    """The real 12-bit Merlin frames (its plan masks pixels of its own): the runner converts them
    (no flat-field, no dark level), and every output equals the full correction's, forced by a
    flat-field of ones with a dark frame of zeros (the kernel then subtracts 0)."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.processing import PreprocessParams
    from napari_sedclassify.processing import kernels
    from napari_sedclassify.processing.flatfield import FlatField
    from napari_sedclassify.processing.plan import PreprocessPlan
    from napari_sedclassify.processing.runner import FrameRunner

    scan = open_scan(realdata / "merlin" / "Single_9_Frame_CounterDepth_12_Rows_256.mib")
    frames = scan.read(np.arange(scan.n_frames))
    plan = PreprocessPlan.build(PreprocessParams(), scan.geometry, scan.metadata, frames)
    assert plan.bad_pixels and plan.dark_level == "none"
    calls = []
    real = kernels.convert_frames
    monkeypatch.setattr(kernels, "convert_frames", lambda *a: calls.append(1) or real(*a))
    ff = plan.corrections(None)
    quick = FrameRunner(plan.processors(), ff, plan.centre_finder()).run_chunk(frames).values
    converted = len(calls)
    assert converted > 0
    zero_dark = FlatField(ff.gain, ff.mask, dark=np.zeros(ff.shape, np.float32), saturation=ff.saturation)
    full = FrameRunner(plan.processors(), zero_dark, plan.centre_finder()).run_chunk(frames).values
    assert len(calls) == converted  # a dark frame given: corrected, not converted
    assert set(quick) == set(full)
    for name in quick:
        np.testing.assert_array_equal(quick[name], full[name], err_msg=name)


def test_building_the_kernels_keeps_the_modules_of_other_installations(tmp_path):
    """Two checkouts (or virtual environments) share the kernels' cache folder: a build for one
    removed the other's module, whose commands then compiled just in time (this session's CI run
    beside a rebuild). Now the three most recent other modules stay; older ones go."""
    import os

    from napari_sedclassify.processing.kernels import prune_modules

    names = [f"sedclassify_kernels_{k:016x}.cpython-311-x86_64-linux-gnu.so" for k in range(6)]
    for age, name in enumerate(names):  # names[0] the newest
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (1e9 - age * 100, 1e9 - age * 100))
    (tmp_path / "notes.txt").write_text("kept")
    built = tmp_path / "sedclassify_kernels_ffffffffffffffff.cpython-311-x86_64-linux-gnu.so"
    built.write_bytes(b"")
    removed = prune_modules(str(built))
    assert sorted(removed) == sorted(str(tmp_path / n) for n in names[3:])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([built.name, "notes.txt", *names[:3]])
