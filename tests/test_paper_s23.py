"""The paper's evaluation and labels (Matinyan et al. 2023, sections 2.2.4 and 2.6) on real
predictions: metrics equal to scikit-learn's, labels outside the class table, and the automatic
mixed border on every side of a region, at scan edges and on tiny scans."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from napari_sedclassify.classes import AMORPHOUS_ICE, CARBON, MIXED
from napari_sedclassify.labels import Region, class_map_from_regions

IDS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """A simulated session-A scan (20x20 points, 128 px), its true classes in a labels file, and
    the built-in model's evaluation of it through ``sedclassify evaluate``'s function."""
    from napari_sedclassify.pipeline.evaluate import evaluate_model
    from napari_sedclassify.simulate import simulate_scan

    sim = simulate_scan(scan_shape=(20, 20), detector_px=128, session="A", seed=23)
    labels = tmp_path_factory.mktemp("labels") / "truth.npy"
    np.save(labels, sim.truth)
    ev = evaluate_model("builtin", [sim.scan], [str(labels)], flatfield=sim.flatfield)
    return sim, labels, ev


def test_evaluation_numbers_are_scikit_learns_to_the_bit(predicted):
    _, _, ev = predicted
    (p,) = ev.predictions
    truth, pred = ev.truths[0].ravel(), p.class_map.ravel()
    keep = (truth > 0) & (pred > 0)
    t, y = truth[keep], pred[keep]
    assert len(set(t.tolist())) >= 3  # carbon, ice and mixed at least: a real test of the weighting
    m = ev.per_scan[p.name]
    for average in ("weighted", None):
        prec, rec, f1, support = skm.precision_recall_fscore_support(t, y, labels=IDS, average=average,
                                                                     zero_division=0)
        jac = skm.jaccard_score(t, y, labels=IDS, average=average, zero_division=0)
        if average:
            assert [m["weighted"][k] for k in ("precision", "recall", "f1", "jaccard")] == [prec, rec, f1, jac]
        else:
            per = [m["per_class"][c] for c in m["per_class"]]
            assert [r["precision"] for r in per] == prec.tolist() and [r["recall"] for r in per] == rec.tolist()
            assert [r["f1"] for r in per] == f1.tolist() and [r["jaccard"] for r in per] == jac.tolist()
            assert [r["support"] for r in per] == support.tolist()
    assert m["accuracy"] == m["weighted"]["accuracy"] == skm.accuracy_score(t, y)
    assert m["accuracy"] == pytest.approx(m["weighted"]["recall"], abs=1e-12)  # the paper's Table 1 accuracy
    assert m["confusion"] == skm.confusion_matrix(t, y, labels=IDS).tolist()
    # the paper's confusion matrices are normalised by true class: scikit-learn's normalize="true"
    assert m["confusion_normalised"] == skm.confusion_matrix(t, y, labels=IDS, normalize="true").tolist()


def test_class_ids_outside_the_table_leave_every_number_on_the_confusion_matrix(predicted):
    from napari_sedclassify.models.metrics import evaluate

    _, _, ev = predicted
    truth = ev.truths[0].copy()
    truth[:3] = 5  # a class the model's table does not have
    m = evaluate(truth, ev.predictions[0].class_map)
    cm = np.asarray(m["confusion"])
    assert m["n"] == cm.sum() == truth.size - 3 * truth.shape[1]
    assert m["n_excluded"] == 3 * truth.shape[1]
    assert m["accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-12)
    assert m["accuracy"] == pytest.approx(m["weighted"]["recall"], abs=1e-12)
    precision = [m["per_class"][c]["precision"] for c in m["per_class"]]
    column = cm.sum(axis=0)
    np.testing.assert_allclose(precision, np.divide(np.diag(cm), column, out=np.zeros(4), where=column > 0))


def test_evaluate_refuses_labels_with_unknown_class_ids_naming_the_file(predicted, tmp_path):
    from napari_sedclassify.pipeline.evaluate import evaluate_model

    sim, labels, _ = predicted
    bad = tmp_path / "painted.npy"
    truth = np.load(labels)
    truth[0, :4] = 7
    np.save(bad, truth)
    with pytest.raises(ValueError, match=r"painted\.npy: unknown class ids \[7\]"):
        evaluate_model("builtin", [sim.scan], [str(bad)], flatfield=sim.flatfield)
    with pytest.raises(ValueError, match=r"labels 1: labels shape \(20, 19\)"):
        evaluate_model("builtin", [sim.scan], [truth[:, :19]], flatfield=sim.flatfield)


def square(r0, c0, r1, c1, cid=AMORPHOUS_ICE):
    return Region(cid, [[r0, c0], [r0, c1], [r1, c1], [r1, c0]])


def outline_distance(shape, r0, c0, r1, c1):
    """Distance of every scan point to the square's outline."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    out = np.hypot(np.maximum.reduce([r0 - yy, yy - r1, 0 * yy]), np.maximum.reduce([c0 - xx, xx - c1, 0 * xx]))
    inside = np.minimum.reduce([yy - r0, r1 - yy, xx - c0, c1 - xx])
    return np.where(out > 0, out, inside)


@pytest.mark.parametrize("border", [1.0, 2.0, 3.0])
def test_mixed_border_along_pixel_edges_is_the_same_on_every_side(border):
    """An outline on the edges between scan points' pixels (x.5, where napari draws them) lies
    half a step from the points on both sides: mixed exactly where it is nearer than border / 2,
    on the top and left as on the bottom and right."""
    box = (4.5, 5.5, 12.5, 15.5)  # centred on the (18, 22) scan
    cm = class_map_from_regions([square(*box)], (18, 22), beam_diameter=1.0, border=border)
    d = outline_distance((18, 22), *box)
    np.testing.assert_array_equal(cm == MIXED, d < border / 2)
    np.testing.assert_array_equal(cm, cm[::-1, ::-1])  # the same band above and below, left and right


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (2, 2), (3, 1), (6, 6)])
def test_a_region_over_the_whole_scan_image_has_no_border_at_the_scan_edges(shape):
    """A region drawn along the integrated image's outer edges covers every point; a one-step
    border (the beam as wide as the step) marks none of them mixed, on tiny scans too."""
    sy, sx = shape
    whole = square(-0.5, -0.5, sy - 0.5, sx - 0.5)
    cm = class_map_from_regions([whole], shape, beam_diameter=1.0, border=1.0)
    np.testing.assert_array_equal(cm, np.full(shape, AMORPHOUS_ICE))
    # a wider border: the outer ring is mixed on all four sides alike (the carbon beyond the outline)
    cm = class_map_from_regions([whole], shape, beam_diameter=1.0, border=2.0)
    ring = outline_distance(shape, -0.5, -0.5, sy - 0.5, sx - 0.5) < 1.0
    np.testing.assert_array_equal(cm, np.where(ring, MIXED, AMORPHOUS_ICE))


def test_ice_points_drawn_as_their_pixels_come_back_as_ice():
    """The amorphous-ice points of a simulated scan's true classes drawn as their pixels on the
    integrated image (squares along pixel edges): with a beam and border of one step the class
    map gives back exactly those points as ice and the others as carbon, none of them mixed."""
    from napari_sedclassify.simulate import simulate_scan

    truth = simulate_scan(scan_shape=(12, 12), detector_px=128, session="A", seed=5).truth
    regions = [square(iy - 0.5, ix - 0.5, iy + 0.5, ix + 0.5) for iy, ix in np.argwhere(truth == AMORPHOUS_ICE)]
    cm = class_map_from_regions(regions, truth.shape, beam_diameter=1.0, border=1.0)
    np.testing.assert_array_equal(cm == AMORPHOUS_ICE, truth == AMORPHOUS_ICE)
    assert np.all(cm[truth != AMORPHOUS_ICE] == CARBON)
