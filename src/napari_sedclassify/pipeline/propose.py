"""Class proposals before any label: cluster the frames' radial profiles, name the clusters by
their physics.

Each frame's RIA is resampled on the q axis and normalised (log of the profile over its own
median, which removes dose and gain: ``models.features``). A Gaussian mixture on the leading
principal components groups the frames (the number of groups chosen by BIC); each group is
then named from what it shows, not from its index:

- the amorphous-ice ring at d = 3.7 Å (q = 0.27 Å⁻¹): its height over the profile's median
  separates vitreous ice (a strong ring) from carbon (a weak, broad one) and from the mixed
  border in between;
- Bragg spots: a crystal puts sharp spikes into the profile between 0.2 and 0.6 Å⁻¹ that no
  amorphous material gives; frames with such spikes are proposed as crystalline ice whatever
  their group.

The result is a class map the user checks and corrects (in napari, a Labels layer), then
trains from. ``sedclassify propose SCAN --out DIR`` runs it headless.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..classes import ClassTable

#: q (Å⁻¹) of the amorphous-ice ring (d = 3.7 Å).
ICE_RING_Q_INVA = 1 / 3.7
#: Range (Å⁻¹) searched for Bragg-spot spikes.
SPOT_RANGE_Q_INVA = (0.2, 0.6)
#: Spread of the clusters' ice-ring heights (log units) above which they are named relative to
#: each other; below it the scan shows one material, named by the ring's height alone.
RING_CONTRAST = 0.6
#: Where a cluster's ice-ring height lies between the lowest (0) and the highest (1) cluster's:
#: below the first value it is named carbon, above the second amorphous ice, between them mixed.
CARBON_BELOW, ICE_ABOVE = 0.3, 0.75
#: Ice-ring height (log units over the profile's median) above which a scan of one material is
#: proposed as amorphous ice, else carbon.
ONE_MATERIAL_ICE_HEIGHT = 1.8
#: Fewest frames with a beam that can be clustered.
MIN_FRAMES = 4


@dataclass
class Proposal:
    """class_map: uint8 (sy, sx) with the class table's ids (0 = no frame / no beam).
    clusters: int (sy, sx) group of every frame (-1 = none). groups: per group, its size, mean
    ice-ring height and the class it was named. ring_height, spikiness: per-frame scores."""

    class_map: np.ndarray
    clusters: np.ndarray
    groups: list
    ring_height: np.ndarray
    spikiness: np.ndarray
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"groups": self.groups, **self.details}


def ring_and_spike_scores(feats: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ring height at 0.27 Å⁻¹, largest one-bin spike within the spot range) per frame."""
    k = int(np.argmin(np.abs(q - ICE_RING_Q_INVA)))
    ring = feats[:, max(0, k - 1):k + 2].mean(axis=1)
    lo, hi = SPOT_RANGE_Q_INVA
    sel = np.flatnonzero((q >= lo) & (q <= hi))
    sel = sel[(sel > 0) & (sel < len(q) - 1)]
    if sel.size == 0:
        return ring, np.zeros(len(feats))
    spike = feats[:, sel] - 0.5 * (feats[:, sel - 1] + feats[:, sel + 1])
    return ring, spike.max(axis=1)


def propose_from_features(feats: np.ndarray, q_invA: np.ndarray, valid: np.ndarray, *, classes: ClassTable | None = None,
                          max_groups: int = 6, seed: int = 0,
                          source=None) -> tuple[np.ndarray, np.ndarray, list, np.ndarray, np.ndarray]:
    """Cluster normalised q-axis profiles ``feats`` (n, nb) of the frames where ``valid``; returns
    (class ids (n,), group (n,), groups, ring height (n,), spikiness (n,)). source: the scan's name
    in the error for too few frames."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    classes = classes or ClassTable.default()
    cid = {classes.names[i]: i for i in classes.ids}
    n = len(feats)
    out = np.zeros(n, dtype=np.uint8)
    group = np.full(n, -1, dtype=int)
    valid = valid & np.isfinite(feats).all(axis=1)
    ring, spike = ring_and_spike_scores(np.nan_to_num(feats), q_invA)
    idx = np.flatnonzero(valid)
    if idx.size < MIN_FRAMES:
        where = f"{source}: " if source is not None else ""
        raise ValueError(f"{where}only {idx.size} of {n} scan positions have a frame with a direct beam and a radial "
                         f"profile: too few to propose classes (at least {MIN_FRAMES} needed)")
    X = feats[idx]
    X = PCA(n_components=min(5, X.shape[1], len(X) - 1), whiten=True, random_state=seed).fit_transform(X)
    best = min((GaussianMixture(k, covariance_type="full", random_state=seed, reg_covar=1e-3).fit(X)
                for k in range(1, min(max_groups, len(idx) // 5) + 1)), key=lambda gm: gm.bic(X))  # by BIC
    group[idx] = best.predict(X)
    heights = np.array([ring[idx][group[idx] == g].mean() for g in range(best.n_components)])
    lo, hi = heights.min(), heights.max()
    # a clear ring/no-ring contrast between groups: name them relative to each other; otherwise
    # every group is one material, named by the ring's absolute height (log units over the median)
    spread = hi - lo
    groups = []
    for g in range(best.n_components):
        h = heights[g]
        if spread >= RING_CONTRAST:
            t = (h - lo) / spread
            name = "carbon" if t < CARBON_BELOW else ("amorphous_ice" if t > ICE_ABOVE else "mixed")
        else:
            name = "amorphous_ice" if h > ONE_MATERIAL_ICE_HEIGHT else "carbon"
        out[idx[group[idx] == g]] = cid[name]
        groups.append({"group": g, "frames": int((group[idx] == g).sum()), "ice_ring_height": round(float(h), 3),
                       "class": name})
    # Bragg spikes: far above what the amorphous frames show
    s = spike[idx]
    med = np.median(s)
    mad = np.median(np.abs(s - med)) * 1.4826 + 1e-6
    crystal = idx[(s > med + 8 * mad) & (s > 0.25)]
    out[crystal] = cid["crystalline_ice"]
    return out, group, groups, ring, spike


def propose(result, geometry, *, classes: ClassTable | None = None, seed: int = 0, source=None) -> Proposal:
    """Class proposal for a preprocessed scan (a ``PreprocessResult``) with its ``geometry``;
    ``details["warnings"]`` says when the names cannot be trusted (source: the scan's name there),
    ``details["preprocessing"]`` how the frames were preprocessed (``preprocess.preprocessing_record``:
    the plan, the direct-beam radius and whether it was stated or measured, the q axis, the flat-field)."""
    from ..models.features import FeatureRecipe, ria_features
    from .preprocess import preprocessing_record

    sy, sx = result.scan_shape
    n = sy * sx
    check_ring_recorded(geometry, source)
    recipe = FeatureRecipe(kind="ria", axis="q").for_geometries([geometry])
    feats = ria_features(result.ria.reshape(n, -1), result.radii_px, recipe, geometry)
    edges = recipe.axis_edges()
    q = 0.5 * (edges[1:] + edges[:-1])
    valid = (np.asarray(result.beam_found).ravel() & ~np.asarray(result.missing).ravel())
    ids, group, groups, ring, spike = propose_from_features(feats, q, valid, classes=classes, seed=seed,
                                                             source=source)
    details = {"q_range_invA": [recipe.q_min_invA, recipe.q_max_invA], "frames": int(valid.sum()),
               "geometry": geometry.describe(), "preprocessing": preprocessing_record(result, geometry)}
    warnings = _warnings(result, geometry, groups, source) + _one_class_warning(ids[ids > 0], classes, groups, source)
    if warnings:
        details["warnings"] = warnings
    return Proposal(class_map=ids.reshape(sy, sx), clusters=group.reshape(sy, sx), groups=groups,
                    ring_height=ring.reshape(sy, sx), spikiness=spike.reshape(sy, sx), details=details)


def check_ring_recorded(geometry, source=None) -> None:
    """Raise ValueError (one line naming ``source`` and the geometry) when a scan of ``geometry``
    stops short of the amorphous-ice ring the clusters are named by, and of the bin either side of
    it that its height is read from: every cluster would be named from the profile's last bins.
    Needs only the geometry: commands check it before preprocessing."""
    from ..models.features import FeatureRecipe

    edges = FeatureRecipe(kind="ria", axis="q").for_geometries([geometry]).axis_edges()
    if edges[-1] >= ICE_RING_Q_INVA + 2 * (edges[1] - edges[0]):
        return
    where = f"{source}: " if source is not None else ""
    raise ValueError(f"{where}cannot propose classes: they are named by the amorphous-ice ring at 3.7 Å "
                     f"(q = {ICE_RING_Q_INVA:.2f} Å⁻¹), but this detector reaches q = {edges[-1]:.3f} Å⁻¹ "
                     f"(d = {1 / edges[-1]:.1f} Å) with {geometry.describe()}; if a value is wrong, give the true "
                     "one (--pixel-size, --camera-length, --voltage), else record the scan at a shorter camera length")


def _warnings(result, geometry, groups, source) -> list[str]:
    """What the user must know before taking the proposal as labels: the ice ring away from where
    the q axis puts it (``calibrate.q_axis_warning``), or no cluster showing it at all while
    calibration values were assumed (every cluster then named by a q axis nobody stated)."""
    from .calibrate import preprocessed_q_axis_warning

    ring = preprocessed_q_axis_warning(result, geometry, str(source) if source is not None else None)
    if ring:
        return [ring]
    if groups and all(g["ice_ring_height"] <= 0 for g in groups) and geometry.assumed():
        assumed = geometry.assumed()
        return [f"no cluster shows the amorphous-ice ring (3.7 Å) where the q axis puts it, and the "
                f"{geometry.values_text(assumed)} {'was' if len(assumed) == 1 else 'were'} assumed: if the scan "
                "shows vitreous ice, the q axis is wrong and so are the names; give the true values "
                "(--pixel-size, --camera-length, --voltage) or run `sedclassify calibrate`"]
    return []


def _one_class_warning(ids, classes, groups, source) -> list[str]:
    """The warning for a proposal that puts every frame with a beam in one class: the clusters
    showed no ring contrast, so they were named by the ice ring's height alone; a model needs
    labels of two classes or more."""
    found = np.unique(ids)
    if len(found) != 1:
        return []
    name = (classes or ClassTable.default()).names[int(found[0])]
    heights = [g["ice_ring_height"] for g in groups]
    where = f"{source}: " if source is not None else ""
    return [f"{where}all {len(ids)} frames proposed as {name}: the clusters' ice-ring heights "
            f"({min(heights):.2f}-{max(heights):.2f}) show one material, named by that height alone "
            f"(amorphous ice above {ONE_MATERIAL_ICE_HEIGHT:g}); check a few frames before using it as labels, and "
            "label the other classes on another scan: a model needs two classes or more"]
