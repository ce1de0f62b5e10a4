"""Scan-neighbour features (issue 18): where a frame and its 3x3 scan neighbourhood lie between
its scan's carbon and ice ends. Checked on scans made by the simulator (the hardest session of the
benchmark grid: thick ice at a third of the dose, a convergent beam, a camera length 8 % off),
preprocessed as a user would: the hole-edge (mixed) points have a carbon neighbour, the thick
amorphous ice inside the holes does not, whatever its own profile looks like. (The simulator also
marks the edges of crystalline patches mixed; those have no carbon neighbour.)"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from napari_sedclassify.classes import AMORPHOUS_ICE, CARBON
from napari_sedclassify.models.features import FeatureRecipe, end_positions, neighbour_context, session_robust_recipe

MIXED = 4


def _thick_ice(tmp_path_factory, folder, recipes):
    """The hardest session's 20x20 scan (128 px), preprocessed for ``recipes`` as a user would."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.models.training import ScanFeatures
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.pipeline.train import preprocess_params_for
    from napari_sedclassify.processing import load_flatfield
    from napari_sedclassify.simulate import load_simulated, session_grid, simulate_scan

    (session,) = session_grid("A", convergence=(0.3,), ice=(1.6,), dose=(0.3,), camera=(0.92,), descan=(1.2,))
    path = tmp_path_factory.mktemp(folder) / "thick.npy"
    simulate_scan(path, scan_shape=(20, 20), detector_px=128, session=session, seed=1107)
    sim = load_simulated(path)
    scan = open_scan(path)
    r = preprocess(scan, preprocess_params_for(recipes, scan.geometry), flatfield=load_flatfield(sim.flatfield_path))
    return ScanFeatures.from_preprocess(r, scan.geometry, "thick"), np.asarray(sim.truth)


@pytest.fixture(scope="module")
def thick_ice_scan(tmp_path_factory):
    from napari_sedclassify.pipeline.train import default_recipe

    return _thick_ice(tmp_path_factory, "neighbours", [default_recipe("fcnn")])


def test_end_positions_are_scale_free_and_fill_what_is_not_valid():
    score = np.array([2.0, 1.9, 2.1, -1.0, -1.1, -0.9, 0.5, np.nan])
    valid = np.array([True] * 7 + [False])
    p = end_positions(score, valid, 0.3)
    assert p[:3].max() < 0.1 and p[3:6].min() > 0.9 and 0.4 < p[6] < 0.6
    assert p[7] == pytest.approx(np.median(p[:7]))  # not valid: the median position, never NaN
    # a dose or thickness that shifts every frame's score and stretches it leaves the positions
    assert np.allclose(end_positions(3.0 * score + 7.0, valid, 0.3), p)
    assert np.all(end_positions(np.ones(8), valid, 0.3) == 0.0)  # one kind of frame: no NaN


def test_neighbour_context_sees_a_carbon_neighbour():
    position = np.ones((5, 5))
    position[:, 0] = 0.0  # a carbon column on the left
    ctx = neighbour_context(position).reshape(5, 5, 3)
    assert np.all(ctx[:, 1, 1] == 0.0) and np.all(ctx[:, 2, 1] == 1.0)  # next to carbon, and one further
    assert np.all(ctx[..., 0] == position) and np.all(ctx[:, 0, 2] == 1.0)


def test_mixed_points_have_a_carbon_neighbour_thick_hole_ice_has_none(thick_ice_scan):
    feats, truth = thick_ice_scan
    recipe = session_robust_recipe()
    ctx = feats.neighbours(recipe).reshape(truth.shape + (3,))
    own, lowest = ctx[..., 0], ctx[..., 1]
    carbon_steps = distance_transform_edt(truth != CARBON)
    mixed = (truth == MIXED) & (carbon_steps == 1)  # the hole's edge (mixed also marks crystal edges)
    inner_ice = (truth == AMORPHOUS_ICE) & (carbon_steps >= 2)
    assert mixed.sum() >= 5 and inner_ice.sum() >= 20
    assert np.median(own[truth == CARBON]) < 0.2 and np.median(own[inner_ice]) > 0.8
    # the neighbourhood tells the two apart far better than the frame's own position does
    assert np.median(lowest[mixed]) < 0.3 < 0.7 < np.median(lowest[inner_ice])
    assert (lowest[mixed] < 0.5).mean() > 0.8 and (lowest[inner_ice] > 0.5).mean() > 0.8


def test_model_inputs_carry_the_neighbour_columns_and_need_a_whole_scan(thick_ice_scan):
    from napari_sedclassify.errors import IncompatibleModelError
    from napari_sedclassify.models.features import Augmentation
    from napari_sedclassify.models.inference import MIN_CONTEXT_FRAMES, predict_scan
    from napari_sedclassify.models.training import ScanFeatures, train

    feats, truth = thick_ice_scan
    recipe = session_robust_recipe()
    x = feats.inputs(recipe)
    plain = feats.inputs(recipe.replace(scan_neighbours=False))
    k = recipe.neighbour_copies
    assert x.shape == (truth.size, plain.shape[1] + 3 * k)
    assert np.allclose(x[:, :plain.shape[1]], plain, equal_nan=True)
    side = x[:, plain.shape[1]:]
    assert np.allclose(side, np.tile(feats.neighbours(recipe), (1, k)))
    with pytest.raises(ValueError, match="neighbour_copies"):
        FeatureRecipe(scan_neighbours=True, neighbour_copies=0)
    model = train([feats], [truth], kind="svm", recipe=recipe.replace(augmentation=Augmentation(copies=0)))
    assert predict_scan(model, feats).class_map.shape == truth.shape
    row = ScanFeatures("live row", feats.geometry, np.zeros((1, MIN_CONTEXT_FRAMES - 1), bool),
                       np.asarray(feats.ria).reshape(1, truth.size, -1)[:, :MIN_CONTEXT_FRAMES - 1], feats.radii_px)
    with pytest.raises(IncompatibleModelError, match="whole scan"):
        predict_scan(model, row)


def test_neighbour_extremes_pick_the_most_carbon_and_ice_like_neighbour():
    from napari_sedclassify.models.features import neighbour_extremes

    score = np.zeros((4, 5))
    score[:, 0] = 2.0  # a carbon column on the left
    score[2, 3] = -1.0  # one very ice-like point
    score[0, 4] = np.nan  # not recorded: never chosen
    ends = neighbour_extremes(score).reshape(4, 5, 2)
    assert ends[1, 1, 0] in (5, 10, 0) and score.ravel()[ends[1, 1, 0]] == 2.0  # a carbon neighbour
    assert ends[1, 3, 0] == 1 * 5 + 3  # no carbon within reach: itself (ties keep the frame's own)
    assert ends[1, 4, 1] == 2 * 5 + 3 and ends[3, 2, 1] == 2 * 5 + 3  # the ice-like point, diagonally too
    assert ends[0, 3, 0] == 3 and ends[0, 4, 1] != 4  # the unrecorded frame is no one's extreme
    assert np.isfinite(score.ravel()[ends[..., 1].ravel()]).all()


@pytest.fixture(scope="module")
def thick_ice_crops(tmp_path_factory):
    from napari_sedclassify.models.features import session_robust_crop_recipe

    return _thick_ice(tmp_path_factory, "neighbour_crops", [session_robust_crop_recipe()])


def test_cnn_sees_its_most_carbon_like_neighbour_as_an_image(thick_ice_crops):
    """The CNN's session-robust crops carry a fourth channel: the carbon-context channel (log crop /
    carbon end) of the most carbon-like frame of the point's 3x3 neighbourhood, augmented like the
    point's own crop. At a hole edge that neighbour is carbon, so the channel sits near 0; inside
    thick hole ice it is ice against carbon, far from 0."""
    from napari_sedclassify.models.features import session_robust_crop_recipe

    feats, truth = thick_ice_crops
    recipe = session_robust_crop_recipe()
    assert recipe.scan_neighbours and recipe.crop_context == "ends"
    x = feats.inputs(recipe)
    own = feats.inputs(recipe.replace(scan_neighbours=False))
    assert x.shape == own.shape[:3] + (4,) and np.array_equal(x[..., :3], own)
    ends = feats.neighbour_ends(recipe)
    assert np.array_equal(x[..., 3], own[ends[:, 0], ..., 1])
    carbon_steps = distance_transform_edt(truth != CARBON).ravel()
    edge = (truth.ravel() == MIXED) & (carbon_steps == 1)
    inner_ice = (truth.ravel() == AMORPHOUS_ICE) & (carbon_steps >= 2)
    assert edge.sum() >= 5 and inner_ice.sum() >= 20
    assert (truth.ravel()[ends[edge, 0]] == CARBON).mean() > 0.8  # the edge's chosen neighbour is carbon
    level = np.abs(x[..., 3]).mean(axis=(1, 2))
    assert np.median(level[edge]) < 0.5 * np.median(level[inner_ice])
    # augmentation reaches the neighbour's channel too (the same draw as the point's own)
    aug = recipe.augmentation.draw(truth.size, np.random.default_rng(0))
    xa = feats.inputs(recipe, None, aug)
    assert not np.allclose(xa[..., 3], x[..., 3])


def test_scan_neighbours_on_crops_need_the_scan_context_channels():
    from napari_sedclassify.models.features import session_robust_crop_recipe

    with pytest.raises(ValueError, match="crop_context"):
        FeatureRecipe(kind="crop", scan_neighbours=True)
    assert session_robust_recipe().scan_neighbours and session_robust_crop_recipe().scan_neighbours
    assert not session_robust_crop_recipe(crop_context="none").scan_neighbours  # bare crops: no neighbour
