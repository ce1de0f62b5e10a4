"""Does a class map call amorphous ice where the frames show the amorphous-ice ring?

A model trained on one session can be confidently wrong on a session with thicker ice, another
dose or a more convergent beam: its features move out of the range it learned, and it puts the
frames in the wrong class with high probability. Its inputs alone do not tell (a convergent beam
moves the features as much as thick ice, and the model still holds there). What does tell is
physics the model was not asked about: vitreous ice gives the 3.7 Å ring (q = 0.27 Å⁻¹), carbon
a weak broad one. Over a scan with a hole edge the frames' ring heights (log of the profile over
its own median at the ring, as ``propose`` scores them) fall into two groups; the strong-ring
group is the ice. Frames with Bragg spikes (crystals) are left out.

The check compares the frames the model calls amorphous ice with the strong-ring group (Jaccard
index). On simulated sessions (docs/models.md) a model whose weighted F1 stayed at 0.79 or more
agreed 0.51-0.95, one that fell to 0.65 or less agreed 0.00-0.45. The check says nothing when it
cannot judge: too few frames, no clear two groups (a scan all in ice or all on carbon), or a
model without an amorphous-ice class. Numpy only, a few ms on 1,600 frames.
"""

from __future__ import annotations

import numpy as np

#: Below this Jaccard index between the model's amorphous-ice frames and the strong-ring frames,
#: the class map is reported as not trustworthy.
AGREEMENT_MIN = 0.5
#: The ring heights must split in two: Otsu's between-group variance over the total variance
#: (2/π = 0.64 for one Gaussian group).
TWO_GROUPS_MIN = 0.8
#: Least frames judged, and least share of them on either side of the split.
MIN_FRAMES = 100
MIN_SIDE_SHARE = 0.1
#: A profile whose largest one-bin spike (log units over its neighbours) exceeds this shows a
#: Bragg spot: amorphous frames stay below about 0.15, crystalline ones above 0.3.
SPIKE_MIN = 0.3
#: The profile must reach this far (Å⁻¹) for the ring and the background around it.
Q_NEEDED_INVA = 0.4


def two_groups(values: np.ndarray) -> tuple[float, float]:
    """(threshold, between-group variance share) of Otsu's split of ``values`` (1D)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    k = np.arange(1, n)
    c = np.cumsum(x)[:-1]
    m0 = c / k
    m1 = (x.sum() - c) / (n - k)
    between = (k / n) * (1 - k / n) * (m0 - m1) ** 2
    i = int(np.argmax(between))
    total = x.var()
    return 0.5 * (x[i] + x[i + 1]), float(between[i] / total) if total > 0 else 0.0


#: Bytes of float64 radial profiles scored at a time: the features take several copies of what
#: they read, so a whole scan's profiles at once cost hundreds of MB (65,536 frames: 350 MB more
#: than the preprocessing, session 24) and grew with the scan.
SCORE_BLOCK_BYTES = 2**20


def frame_scores(ria, radii_px, geometry) -> tuple[np.ndarray, np.ndarray] | None:
    """(ring height, largest Bragg spike) per frame of ``ria`` (..., nb), flat, NaN where a frame's
    profile is not finite; None when the profiles stop short of the ring and its background. Scored
    :data:`SCORE_BLOCK_BYTES` of profiles at a time, as a live run scores its chunks: each frame's
    scores are its own, and memory holds one block's features whatever the scan's size."""
    from ..models.features import FeatureRecipe

    radii_px = np.asarray(radii_px, dtype=np.float64)
    reach = float(geometry.radius_px_to_q_invA(radii_px[-1]))
    if reach < Q_NEEDED_INVA:
        return None
    recipe = FeatureRecipe(kind="ria", axis="q", q_max_invA=min(0.6, reach)).for_geometries([geometry])
    flat = np.asarray(ria).reshape(-1, np.shape(ria)[-1])
    rows = max(1, SCORE_BLOCK_BYTES // (8 * flat.shape[1]))
    ring, spike = np.empty(len(flat)), np.empty(len(flat))
    for start in range(0, len(flat), rows):
        ring[start:start + rows], spike[start:start + rows] = _block_scores(flat[start:start + rows], radii_px,
                                                                            recipe, geometry)
    return ring, spike


def _block_scores(ria, radii_px, recipe, geometry) -> tuple[np.ndarray, np.ndarray]:
    from ..models.features import ria_features
    from .propose import ring_and_spike_scores

    feats = ria_features(ria, radii_px, recipe, geometry)
    edges = recipe.axis_edges()
    ring, spike = ring_and_spike_scores(np.nan_to_num(feats), 0.5 * (edges[1:] + edges[:-1]))
    bad = ~np.isfinite(feats).all(axis=1)
    ring[bad] = spike[bad] = np.nan
    return ring, spike


def split_by_ring(ring, valid) -> tuple[np.ndarray, np.ndarray] | None:
    """(strong, judged), bool like ``ring``: the frames judged (``valid`` with a finite ring height)
    and those of them in the strong-ice-ring group; None when the scan does not split into two
    groups by its ring, or has too few frames to tell."""
    ring = np.asarray(ring, dtype=np.float64)
    judged = np.asarray(valid, bool) & np.isfinite(ring)
    if judged.sum() < MIN_FRAMES:
        return None
    threshold, share = two_groups(ring[judged])
    strong = judged & (ring > threshold)
    side = strong.sum() / judged.sum()
    if share < TWO_GROUPS_MIN or not MIN_SIDE_SHARE <= side <= 1 - MIN_SIDE_SHARE:
        return None
    return strong, judged


def _next_to(mask: np.ndarray) -> np.ndarray:
    """Bool (sy, sx): points with a ``mask`` point in their 3 x 3 scan neighbourhood."""
    padded = np.pad(mask, 1)
    sy, sx = mask.shape
    return np.any([padded[dy:dy + sy, dx:dx + sx] for dy in range(3) for dx in range(3)], axis=0)


def ice_agreement(class_map, classes, ria, radii_px, geometry) -> float | None:
    """Jaccard index between the frames ``class_map`` (sy, sx) calls amorphous ice and the
    strong-ring frames of ``ria`` (:func:`agreement_of_scores`); None when it cannot judge."""
    labels = np.atleast_2d(np.asarray(class_map))
    scores = frame_scores(ria, radii_px, geometry)
    if scores is None:
        return None
    ring, spike = (a.reshape(labels.shape) for a in scores)
    return agreement_of_scores(labels, classes, ring, spike)


def agreement_of_scores(class_map, classes, ring, spike) -> float | None:
    """Jaccard index between the frames ``class_map`` (sy, sx) calls amorphous ice and the frames
    of the strong group of ``ring`` heights (sy, sx; NaN: not scored), over the frames judged;
    None when it cannot judge. Strong-ring frames the model calls crystalline or mixed and whose
    ``spike`` shows a Bragg spot, or that it calls mixed next to a weak-ring (carbon) point, are
    left out: those classes are plausible there."""
    labels = np.atleast_2d(np.asarray(class_map))
    ids = {classes.names[i]: i for i in classes.ids}
    if "amorphous_ice" not in ids:
        return None
    found = split_by_ring(np.asarray(ring).reshape(labels.shape), labels > 0)
    if found is None:
        return None
    strong, judged = found
    spiky = judged & (np.asarray(spike).reshape(labels.shape) > SPIKE_MIN)
    crystal = labels == ids.get("crystalline_ice", -1)
    mixed = labels == ids.get("mixed", -1)
    plausible = strong & (((crystal | mixed) & spiky) | (mixed & _next_to(judged & ~strong)))
    compared = judged & ~plausible
    called = compared & (labels == ids["amorphous_ice"])
    ring_group = compared & strong
    union = (called | ring_group).sum()
    return float((called & ring_group).sum() / union) if union >= MIN_FRAMES // 2 else None


def agreement_warning(where: str, model_name: str, agreement: float | None) -> str | None:
    """The warning for an ``agreement`` below :data:`AGREEMENT_MIN`; None otherwise."""
    if agreement is None or agreement >= AGREEMENT_MIN:
        return None
    return (f"{where}: the frames model {model_name} calls amorphous ice and the frames that show the "
            f"3.7 Å ice ring agree on only {agreement:.0%} (Jaccard index; {AGREEMENT_MIN:.0%} or more where "
            f"models held on simulated sessions): this scan is unlike the model's training scans (thicker "
            f"ice, another dose or beam?) and its class map is likely wrong; compare it with `sedclassify "
            f"propose`, or label a few frames of this session and train again (`train --session-robust` "
            f"on scans of several sessions holds better)")
