"""Polygons -> class map: beam-disc membership, mixed border, drawing order, overview affine, files."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sedclassify.classes import AMORPHOUS_ICE, CARBON, CRYSTALLINE_ICE, MIXED, UNLABELED
from napari_sedclassify.labels import (
    Region,
    affine_from_landmarks,
    class_map_from_regions,
    length_in_steps,
    load_class_map,
    overview_to_scan,
    save_class_map,
)


def square(r0, c0, r1, c1, cid=AMORPHOUS_ICE):
    return Region(cid, [[r0, c0], [r0, c1], [r1, c1], [r1, c0]])


def distance_to_square(shape, r0, c0, r1, c1):
    """Exact Euclidean distance of every scan point centre to the square's outline."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    dy_out = np.maximum.reduce([r0 - yy, yy - r1, np.zeros_like(yy)])
    dx_out = np.maximum.reduce([c0 - xx, xx - c1, np.zeros_like(xx)])
    outside = np.hypot(dy_out, dx_out)
    inside = np.minimum.reduce([yy - r0, r1 - yy, xx - c0, c1 - xx])
    return np.where(outside > 0, outside, inside)


def test_centre_rule_labels_exactly_the_points_inside():
    cm = class_map_from_regions([square(4.5, 4.5, 12.5, 12.5)], (20, 20), beam_diameter=0, border=0)
    expected = np.full((20, 20), CARBON, np.uint8)
    expected[5:13, 5:13] = AMORPHOUS_ICE
    np.testing.assert_array_equal(cm, expected)


def test_beam_disc_decides_thin_regions():
    """A strip narrower than half the beam holds < 50 % of the disc: carbon by beam, ice by centre."""
    thin = Region(AMORPHOUS_ICE, [[9.7, 2.5], [9.7, 17.5], [10.3, 17.5], [10.3, 2.5]])
    by_centre = class_map_from_regions([thin], (20, 20), beam_diameter=0, border=0)
    by_beam = class_map_from_regions([thin], (20, 20), beam_diameter=2.0, border=0)
    assert np.all(by_centre[10, 3:18] == AMORPHOUS_ICE)
    assert np.all(by_beam == CARBON)  # ~37 % of a 2-step disc lies in a 0.6-step strip
    wide = Region(AMORPHOUS_ICE, [[9.2, 2.5], [9.2, 17.5], [10.8, 17.5], [10.8, 2.5]])
    by_beam = class_map_from_regions([wide], (20, 20), beam_diameter=2.0, border=0)
    assert np.all(by_beam[10, 4:17] == AMORPHOUS_ICE)  # ~70 % of the disc
    assert np.all(by_beam[[9, 11]] == CARBON)


@pytest.mark.parametrize("border", [2.0, 3.6, 4.6])  # half-widths away from point distances
def test_mixed_border_is_the_band_within_half_its_width_of_the_outline(border):
    box = (4.5, 5.5, 15.5, 17.5)
    cm = class_map_from_regions([square(*box)], (22, 24), beam_diameter=1.8, border=border)
    d = distance_to_square((22, 24), *box)
    np.testing.assert_array_equal(cm == MIXED, d < border / 2)
    yy, xx = np.mgrid[:22, :24]
    inside = (yy > box[0]) & (yy < box[2]) & (xx > box[1]) & (xx < box[3])
    assert np.all(cm[inside & (d >= border / 2)] == AMORPHOUS_ICE)
    assert np.all(cm[~inside & (d >= border / 2)] == CARBON)


def test_later_regions_lie_on_top_and_get_their_own_border():
    hole = square(3.5, 3.5, 16.5, 16.5, AMORPHOUS_ICE)
    crystal = square(8.5, 8.5, 11.5, 11.5, CRYSTALLINE_ICE)
    cm = class_map_from_regions([hole, crystal], (20, 20), beam_diameter=0, border=1.4)
    core = np.zeros((3, 3), bool)
    core[1, 1] = True  # 1.5 steps from the crystal's edges; its 8 neighbours are 0.5 from one
    np.testing.assert_array_equal(cm[9:12, 9:12], np.where(core, CRYSTALLINE_ICE, MIXED))
    assert np.all(cm[[3, 4, 16, 17], 5:15] == MIXED) and np.all(cm[6, 6:14] == AMORPHOUS_ICE)
    cm = class_map_from_regions([hole, crystal], (20, 20), beam_diameter=0, border=0)
    assert np.all(cm[9:12, 9:12] == CRYSTALLINE_ICE)
    assert (cm == AMORPHOUS_ICE).sum() == 13 * 13 - 9
    hidden = class_map_from_regions([crystal, hole], (20, 20), beam_diameter=0, border=0)
    assert not np.any(hidden == CRYSTALLINE_ICE)


def test_rest_can_stay_unlabeled_and_regions_may_leave_the_scan():
    big = square(-5, -5, 8.5, 30)
    cm = class_map_from_regions([big], (12, 12), beam_diameter=1.0, border=1.4, rest=UNLABELED)
    assert np.all(cm[:8] == AMORPHOUS_ICE)
    assert np.all(cm[8:10] == MIXED)
    assert np.all(cm[10:] == UNLABELED)


def test_overview_polygons_map_through_the_affine():
    """An overview 4x finer than the scan, offset by (-8, -12) overview px."""
    affine = np.array([[0.25, 0, 2.0], [0, 0.25, 3.0], [0, 0, 1]])
    scan_poly = np.array([[4.5, 5.5], [4.5, 14.5], [12.5, 14.5], [12.5, 5.5]])
    overview_poly = (scan_poly - [2.0, 3.0]) * 4
    np.testing.assert_allclose(overview_to_scan(overview_poly, affine), scan_poly)
    a = class_map_from_regions([Region(2, overview_to_scan(overview_poly, affine))], (16, 16))
    b = class_map_from_regions([Region(2, scan_poly)], (16, 16))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="3x3"):
        overview_to_scan(overview_poly, np.eye(2))


def test_landmark_pairs_give_the_overview_to_scan_affine():
    """Clicked landmarks are off by a fraction of a pixel: the least-squares affine from 8 pairs
    lands the overview within a tenth of a scan step of the true one over the whole overview, the
    residual says how far the clicks were off, and 2 pairs give scale, rotation and shift."""
    rng = np.random.default_rng(3)
    angle = np.deg2rad(7.0)
    rot = 0.24 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    true = np.eye(3)
    true[:2, :2], true[:2, 2] = rot, [-1.5, 2.25]
    overview = rng.uniform(0, 72, (8, 2))
    clicked = overview_to_scan(overview, true) + rng.normal(0, 0.1, (8, 2))  # 0.1-step clicks
    fit = affine_from_landmarks(overview, clicked)
    assert fit.kind == "affine"
    corners = np.array([[0, 0], [0, 71], [71, 0], [71, 71]], float)
    assert np.abs(overview_to_scan(corners, fit.affine) - overview_to_scan(corners, true)).max() < 0.1
    np.testing.assert_allclose(fit.residuals_steps,
                               np.linalg.norm(overview_to_scan(overview, fit.affine) - clicked, axis=1))
    assert 0.03 < fit.rms_steps < 0.2 and "residual RMS" in fit.describe()

    exact = overview_to_scan(overview, true)
    two = affine_from_landmarks(overview[:2], exact[:2])
    assert two.kind == "similarity"
    np.testing.assert_allclose(two.affine, true, atol=1e-9)
    three = affine_from_landmarks(overview[:3], exact[:3])
    np.testing.assert_allclose(three.affine, true, atol=1e-9)
    assert "exact" in three.describe()


@pytest.mark.parametrize("ov, sc, message", [
    ([[0, 0], [10, 5], [3, 8]], [[0, 0], [1, 1]], "3 landmarks on the overview but 2 on the scan"),
    ([[0, 0]], [[1, 1]], "at least 2"),
    ([[0, 0], [10, 10], [20, 20.0000001]], [[0, 0], [1, 1], [3, 0]], "overview landmarks lie on one line"),
    ([[4, 4], [4, 4]], [[0, 0], [1, 1]], "all sit on one point"),
    ([[0, 0], [1, np.nan]], [[0, 0], [1, 1]], "non-finite"),
    ([[0, 0, 0], [1, 1, 1]], [[0, 0], [1, 1]], "(row, col) pairs"),
])
def test_unusable_landmarks_are_refused_with_the_reason(ov, sc, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        affine_from_landmarks(ov, sc)


def test_lengths_in_nm_need_the_scan_step():
    assert length_in_steps(60.0, "nm", 30.0) == 2.0
    assert length_in_steps(1.5, "steps", None) == 1.5
    with pytest.raises(ValueError, match="scan step"):
        length_in_steps(60.0, "nm", None)
    with pytest.raises(ValueError, match="unit"):
        length_in_steps(1.0, "um", 30.0)


def test_bad_regions_are_refused():
    with pytest.raises(ValueError, match="vertices"):
        Region(2, [[0, 0], [1, 1]])
    with pytest.raises(ValueError, match=">= 0"):
        class_map_from_regions([square(1, 1, 3, 3)], (5, 5), border=-1)


@pytest.mark.parametrize("suffix", [".npy", ".tif"])
def test_save_load_round_trip_is_atomic(tmp_path, suffix):
    cm = class_map_from_regions([square(2.5, 2.5, 7.5, 9.5)], (10, 12), beam_diameter=1.8, border=1.8)
    path = save_class_map(tmp_path / f"labels{suffix}", cm)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"labels{suffix}"]  # no temp file left
    back = load_class_map(path, scan_shape=(10, 12))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, cm)
    save_class_map(path, np.zeros((10, 12), np.uint8))  # replaces it
    assert load_class_map(path).max() == 0


def test_bad_label_files_name_the_file_and_the_problem(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.ones((4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"good\.npy.*\(4, 5\).*\(6, 6\)"):
        load_class_map(good, scan_shape=(6, 6))
    cube = tmp_path / "cube.npy"
    np.save(cube, np.ones((2, 4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"cube\.npy.*2D"):
        load_class_map(cube)
    frac = tmp_path / "frac.npy"
    np.save(frac, np.full((4, 5), 0.5))
    with pytest.raises(ValueError, match=r"frac\.npy.*integer"):
        load_class_map(frac)
    neg = tmp_path / "neg.npy"
    np.save(neg, -np.ones((4, 5), np.int16))
    with pytest.raises(ValueError, match=r"neg\.npy.*0\.\.255"):
        load_class_map(neg)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match=r"junk\.tif.*not a readable"):
        load_class_map(junk)
    with pytest.raises(ValueError, match=r"labels\.png.*\.npy or \.tif"):
        (tmp_path / "labels.png").write_bytes(b"x")
        load_class_map(tmp_path / "labels.png")
    with pytest.raises(FileNotFoundError, match="nothere"):
        load_class_map(tmp_path / "nothere.npy")
    with pytest.raises(ValueError, match=r"out\.png"):
        save_class_map(tmp_path / "out.png", np.zeros((3, 3)))


def test_zero_based_class_maps_are_recognised_and_shifted():
    from napari_sedclassify.labels import from_zero_based, looks_zero_based

    zero_based = np.array([[0, 0, 1], [3, 2, 0]])  # 0 = carbon ... 3 = mixed
    assert looks_zero_based(zero_based)
    np.testing.assert_array_equal(from_zero_based(zero_based), zero_based + 1)
    assert from_zero_based(zero_based).dtype == np.uint8
    assert not looks_zero_based(np.array([[1, 2], [4, 3]]))  # 1-based with mixed
    assert not looks_zero_based(np.array([[1, 2], [3, 1]]))  # 1-based, fully labeled: no 0
    assert not looks_zero_based(np.zeros((2, 2), np.uint8))  # all unlabeled: nothing to shift
    assert not looks_zero_based(np.array([[0, 5]]))
