"""Session 29: each frame's centre search starts where the plan's calibration sample showed the beam
(docs/performance.md "Session 29"), and keeps what it finds there only when it is the beam."""

from __future__ import annotations

import dataclasses

import numpy as np

from napari_sedclassify.geometry import Geometry
from napari_sedclassify.processing import FrameRunner, PreprocessParams, PreprocessPlan

SHAPE = (128, 128)
RADIUS = 4.0
PEAK = 3000.0


def disc_frame(rng, discs, shape=SHAPE, bg=1.0):
    """Poisson counts of flat discs [(cy, cx, radius, counts per px)] (soft 1 px edge) on ``bg``."""
    yy, xx = np.indices(shape, dtype=np.float64)
    lam = np.full(shape, bg)
    for cy, cx, radius, peak in discs:
        lam += peak * np.clip(radius + 0.5 - np.hypot(yy - cy, xx - cx), 0.0, 1.0)
    return np.minimum(rng.poisson(lam), 4095).astype(np.uint16)


def plan_and_sample(seed=0):
    rng = np.random.default_rng(seed)
    sample = np.array([disc_frame(rng, [(40 + rng.normal(0, 0.7), 40 + rng.normal(0, 0.7), RADIUS, PEAK)])
                       for _ in range(48)])
    return PreprocessPlan.build(PreprocessParams(), Geometry(detector_shape=SHAPE), {}, sample), rng


def centres(plan, frames, expected=True):
    finder = plan.centre_finder()
    if not expected:
        finder.expected_centre_px = None  # the coarse search over the whole frame, as before
    values = FrameRunner([], plan.corrections(), finder).run_chunk(frames).values
    return values["centre"], values["beam_found"]


def test_the_plan_holds_where_the_sample_showed_the_beam_and_how_bright():
    plan, _ = plan_and_sample()
    np.testing.assert_allclose(plan.beam_centre_px, (40, 40), atol=0.5)
    # the 9th largest count of a 3000-count disc: a little above 3000 (Poisson)
    assert PEAK <= plan.beam_peak_counts <= PEAK + 4 * np.sqrt(PEAK)
    again = PreprocessPlan.from_dict(plan.to_dict())
    assert again == plan
    old = plan.to_dict()
    del old["beam_centre_px"], old["beam_peak_counts"]  # a results file of an earlier version
    older = PreprocessPlan.from_dict(old)
    assert older.beam_centre_px is None and older.beam_peak_counts is None
    assert np.isnan(older.centre_finder()._expected()).all()


def test_a_search_from_the_expected_beam_finds_what_the_coarse_search_finds():
    """Beams near the expected position, far from it, and far from it with a Bragg spot of 30 %
    of the beam's height sitting where the beam was expected: the beam each time, the same
    centres to the bit as the search that starts from the whole frame's coarse maximum. Without
    the peak check the search stays on the spot (the same size as the beam, standing far out of
    its window's background)."""
    plan, rng = plan_and_sample()
    beams = [(41.3, 39.6), (38.2, 42.4), (95.2, 88.7), (17.6, 110.3), (95.2, 88.7), (100.4, 20.9)]
    spot = [(), (), (), (), (40.0, 40.0), (40.4, 39.7)]
    frames = np.array([disc_frame(rng, [(cy, cx, RADIUS, PEAK)] + ([(*s, RADIUS, 0.3 * PEAK)] if s else []))
                       for (cy, cx), s in zip(beams, spot)])
    got, found = centres(plan, frames)
    cold, cold_found = centres(plan, frames, expected=False)
    assert found.all() and cold_found.all()
    np.testing.assert_allclose(got, beams, atol=0.15)
    np.testing.assert_array_equal(got, cold)
    # the guard matters: a plan that expects a beam as faint as the spot keeps the spot
    faint = dataclasses.replace(plan, beam_peak_counts=0.3 * PEAK)
    on_spot, _ = centres(faint, frames[4:])
    np.testing.assert_allclose(on_spot, [(40.0, 40.0), (40.4, 39.7)], atol=0.15)


def test_frames_without_a_beam_and_a_wide_disc_fall_back_to_the_coarse_search():
    """No beam at all (blank frame), and a disc 1.6 times the beam's radius (2.6 times its area) at
    the expected position beside the beam: the first is no beam, the second the wide disc, which
    the coarse search finds too (it carries the most electrons), so its size is measured, not
    assumed."""
    plan, rng = plan_and_sample(1)
    blank = disc_frame(rng, [])
    wide = disc_frame(rng, [(40.2, 40.1, 1.6 * RADIUS, PEAK), (90.0, 90.0, RADIUS, 0.8 * PEAK)])
    got, found = centres(plan, np.array([blank, wide]))
    cold, cold_found = centres(plan, np.array([blank, wide]), expected=False)
    assert not found[0] and not cold_found[0] and np.isnan(got[0]).all()
    assert found[1]
    np.testing.assert_array_equal(got[1], cold[1])
    np.testing.assert_allclose(got[1], (40.2, 40.1), atol=0.15)


def test_the_last_blocks_are_cut_finer_and_every_frame_is_read_once():
    """``ScanFrames.blocks(finer_tail=k)``: the last k blocks come in up to TAIL_PIECES pieces (rows
    of whole-row blocks, columns of a part of one row), every frame exactly once, in order; the
    threaded pass over a file with them gives the results of whole blocks to the bit."""
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.scan import TAIL_PIECES, ScanFrames

    for shape, chunk, tail in (((40, 40, 8, 8), 160, 2), ((6, 300, 8, 8), 100, 3), ((5, 5, 8, 8), None, 2)):
        frames = ScanFrames(np.zeros(shape, np.uint16))
        whole = list(frames.blocks(chunk))
        cut = list(frames.blocks(chunk, finer_tail=tail))
        flat = np.concatenate([index for index, _, _ in cut])
        np.testing.assert_array_equal(flat, np.arange(shape[0] * shape[1]))
        for index, rows, cols in cut:
            expect = (np.arange(rows.start, rows.stop)[:, None] * shape[1] + np.arange(cols.start, cols.stop)).ravel()
            np.testing.assert_array_equal(index, expect)
        kept = len(whole) - min(tail, len(whole))
        assert [len(i) for i, _, _ in cut[:kept]] == [len(i) for i, _, _ in whole[:kept]]
        assert kept < len(cut) <= kept + TAIL_PIECES * (len(whole) - kept)
        assert max(len(i) for i, _, _ in cut[kept:]) <= -(-len(whole[-1][0]) // 2)
    rng = np.random.default_rng(4)
    scan = np.array([[disc_frame(rng, [(40 + rng.normal(0, 2), 40 + rng.normal(0, 2), RADIUS, PEAK)])
                      for _ in range(12)] for _ in range(10)])
    one = preprocess(scan, {"workers": 1})
    two = preprocess(scan, {"workers": 2})
    np.testing.assert_array_equal(one.centres, two.centres)
    np.testing.assert_array_equal(one.ria, two.ria)
