"""Leave-one-session-out (LOSO) evaluation on a grid of simulated sessions, the feature ablation
and the reliability diagram (issue 18).

Seven sessions that differ in everything a real session changes at once: beam convergence
(0-0.8 mrad), ice thickness (0.6-2.2x, with plural scattering), dose (0.3-3x), the true camera
length (0.90-1.10x while the files keep reporting the nominal 900 mm), descan strength, detector
size (128 or 256 px), and each its own gain map, beam position and descan direction. Every
session holds ``--scans`` scans (20x20 points, other sample areas in every session). Scans are
simulated once into --workdir and preprocessed once (RIAs cached as .npz); the models then
train on the scans of six sessions and are tested on every scan of the seventh, for each
session in turn. Reported per held-out session: weighted F1 and amorphous-ice precision, mean ±
sd over its scans; and the mean ± sd over sessions and the best-worst spread.

    python benchmarks/bench_sessions.py [--workdir DIR] [--models fcnn,svm,cnn] [--ablation]
                                        [--ablation-models svm,fcnn] [--without-background-and-ice-layer]
                                        [--json FILE]
                                        [--reliability docs/images/sessions_reliability.png]

Camera lengths are fitted per scan from the amorphous-ice ring (``pipeline.calibrate``), as
``sedclassify calibrate`` does; the recipe is ``models.features.session_robust_recipe``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from napari_sedclassify.geometry import Geometry
from napari_sedclassify.models.features import SESSION_ROBUST_ENSEMBLE
from napari_sedclassify.models.features import SESSION_ROBUST_PARAMS as ROBUST_PARAMS
from napari_sedclassify.models.features import (
    Augmentation,
    FeatureRecipe,
    session_robust_crop_recipe,
    session_robust_recipe,
)
from napari_sedclassify.models.training import ScanFeatures

#: (convergence mrad, ice thickness factor, dose factor, true camera length factor, descan factor,
#: detector px) of each session of the grid.
SESSIONS = [
    (0.0, 1.0, 1.0, 1.00, 1.0, 256),
    (0.3, 1.6, 0.3, 0.92, 1.2, 256),
    (0.6, 0.7, 3.0, 1.08, 0.8, 128),
    (0.15, 2.2, 1.5, 1.04, 1.0, 256),
    (0.45, 1.0, 0.5, 0.95, 1.5, 128),
    (0.8, 1.3, 2.0, 0.90, 1.0, 256),
    (0.0, 0.6, 0.7, 1.10, 1.0, 128),
]
SCAN_SHAPE = (20, 20)
AMORPHOUS = 2


def session_list(spec=SESSIONS):
    """[(SessionParams, detector_px)] for the grid rows ``spec``."""
    from napari_sedclassify.simulate import session_grid

    out = []
    for c, ice, dose, cam, descan, det in spec:
        (s,) = session_grid("A", convergence=(c,), ice=(ice,), dose=(dose,), camera=(cam,), descan=(descan,))
        out.append((s, int(det)))
    return out


def _cache_one(path: Path, cache: Path, flats: dict) -> None:
    from dataclasses import replace

    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.pipeline.train import default_recipe, preprocess_params_for
    from napari_sedclassify.processing import load_flatfield
    from napari_sedclassify.simulate import load_simulated

    sim = load_simulated(path)
    scan = open_scan(path)
    ff = flats.setdefault(str(sim.flatfield_path), load_flatfield(sim.flatfield_path))
    # the CNN's crops are cut as its session-robust recipe asks (15 % wider than 2.7 Å on the
    # nominal camera length, so that the fitted one is resampled from recorded pixels); the radial
    # profile runs to the frame's corner: the camera length is fitted after this pass (up to 10 %
    # longer than the nominal one) and the training copies read farther still. Cut where the recipe
    # reads it on the nominal camera length, the outer feature bins of the longer sessions read an
    # empty profile (the thin-ice session fell 0.977 -> 0.638; docs/results.md, session 24).
    params = replace(preprocess_params_for([default_recipe("fcnn"), cnn_recipe()], scan.geometry), ria_r_max_px=None)
    r = preprocess(scan, params, flatfield=ff)
    radius = r.beam_radius_px[r.beam_found]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, ria=r.ria, radii_px=r.radii_px, missing=r.missing, truth=sim.truth,
             crops=r.crops.astype(np.float32), crop_radius_px=float(r.resolved.get("crop_half_px")),
             beam_radius_px=float(np.median(radius)) if radius.size else np.nan,
             geometry=json.dumps(scan.geometry.to_dict()),
             true_geometry=json.dumps(sim.metadata["true_geometry"]), session=sim.session)


def ensure_features(workdir, spec=SESSIONS, n_scans: int = 4, scan_shape=SCAN_SHAPE, seed: int = 1000,
                    log=print) -> list[dict]:
    """Simulate and preprocess (once; cached in ``workdir``) ``n_scans`` scans of every session of
    ``spec``; session k's scan i has seed ``seed + 100 k + i`` (other sample areas in every session).
    Returns one dict per scan: name, session, features (ScanFeatures), truth, beam_radius_px,
    true_geometry."""
    from napari_sedclassify.simulate import simulate_scan

    workdir = Path(workdir)
    out = []
    for k, (sess, det) in enumerate(session_list(spec)):
        for i in range(n_scans):
            name = f"scan_{sess.name}_{i:02d}"
            path = workdir / "scans" / f"{det}px" / f"{name}.npy"
            cache = workdir / "features_v4" / f"{det}px_{scan_shape[0]}x{scan_shape[1]}" / f"{name}.npz"
            if not cache.exists():
                t0 = time.perf_counter()
                if not path.exists():  # (the frames of a scan cached before are gone: simulated again)
                    simulate_scan(path, scan_shape=scan_shape, detector_px=det, session=sess, seed=seed + 100 * k + i)
                _cache_one(path, cache, {})
                path.unlink()  # the frames are not needed again; the sidecars stay
                if log:
                    log(f"  {name} ({det} px): {time.perf_counter() - t0:.1f} s")
            z = np.load(cache)
            geom = Geometry.from_dict(json.loads(str(z["geometry"])))
            feats = ScanFeatures(name, geom, z["missing"], z["ria"], z["radii_px"], crops=z["crops"],
                                 crop_radius_px=float(z["crop_radius_px"]))
            out.append({"name": name, "session": str(z["session"]), "features": feats, "truth": z["truth"],
                        "beam_radius_px": float(z["beam_radius_px"]),
                        "true_geometry": Geometry.from_dict(json.loads(str(z["true_geometry"])))})
    return out


def _train(scans, kind, recipe, params=None, seed=0):
    from napari_sedclassify.models.training import train

    params = dict(params or {})
    # the SVM's search across sessions: the training sessions only (never the held-out one)
    groups = [s["session"] for s in scans] if params.get("search") == "groups" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train([s["features"] for s in scans], [s["truth"] for s in scans], kind=kind, recipe=recipe,
                     params=params, seed=seed, groups=groups)


def _score(model, scan) -> dict:
    from napari_sedclassify.models.inference import predict_scan
    from napari_sedclassify.models.metrics import evaluate

    pred = predict_scan(model, scan["features"])
    m = evaluate(scan["truth"], pred.class_map, model.classes)
    name = model.classes.names[AMORPHOUS]
    return {"f1": m["weighted"]["f1"], "ice_precision": m["per_class"][name]["precision"],
            "ice_f1": m["per_class"][name]["f1"], "proba": pred.probabilities, "class_map": pred.class_map}


def loso(scans, kind, recipe, params=None, seed=0, log=None, held_out=None) -> dict:
    """{held-out session: [per-scan scores]} training on all other sessions each time.
    held_out: only these sessions in turn (names or parts of them; default all)."""
    sessions = list(dict.fromkeys(s["session"] for s in scans))
    if held_out:
        sessions = [s for s in sessions if any(h in s for h in held_out)]
    out = {}
    for held in sessions:
        train_scans = [s for s in scans if s["session"] != held]
        model = _train(train_scans, kind, recipe, params, seed)
        out[held] = [dict(_score(model, s), name=s["name"], truth=s["truth"]) for s in scans if s["session"] == held]
        if log:
            f1 = [r["f1"] for r in out[held]]
            log(f"    {kind} held out {held}: F1 {np.mean(f1):.3f} ± {np.std(f1, ddof=1):.3f}")
    return out


def summarise(result: dict) -> dict:
    """Per session mean ± sd of weighted F1 and amorphous-ice precision, and over sessions."""
    rows = {}
    for s, scores in result.items():
        f1 = np.array([r["f1"] for r in scores])
        p = np.array([r["ice_precision"] for r in scores])
        rows[s] = {"f1": (f1.mean(), f1.std(ddof=1)), "ice_precision": (p.mean(), p.std(ddof=1)), "n": len(f1)}
    means = np.array([r["f1"][0] for r in rows.values()])
    prec = np.array([r["ice_precision"][0] for r in rows.values()])
    return {"sessions": rows, "f1_mean": float(means.mean()), "f1_sd": float(means.std(ddof=1)),
            "f1_min": float(means.min()), "spread": float(means.max() - means.min()),
            "ice_precision_mean": float(prec.mean()), "ice_precision_sd": float(prec.std(ddof=1))}


def with_fitted_camera_length(scans, log=None) -> list[dict]:
    """The scans with their geometry's camera length fitted from the amorphous-ice ring of their own
    RIAs (``pipeline.calibrate.calibrate_ria``, what ``sedclassify calibrate`` does after its
    preprocessing), as a user would after running ``sedclassify calibrate`` on every scan."""
    from dataclasses import replace

    from napari_sedclassify.pipeline.calibrate import calibrate_ria

    out = []
    for s in scans:
        f = s["features"]
        valid = ~f.missing & np.isfinite(f.ria).any(axis=-1)
        cal = calibrate_ria(f.ria, f.radii_px, valid, f.geometry, inner_px=3 * s["beam_radius_px"] + 2)
        if log:
            log(f"  {s['name']}: camera length {cal.camera_length_mm:.1f} mm (true "
                f"{s['true_geometry'].camera_length_mm:.1f})")
        out.append(dict(s, features=replace(f, geometry=cal.geometry), fitted_camera_length_mm=cal.camera_length_mm))
    return out


def replace_aug(recipe: FeatureRecipe, **changes) -> Augmentation:
    from dataclasses import replace

    return replace(recipe.augmentation, **changes)


def robust_recipe(**changes) -> FeatureRecipe:
    """``models.features.session_robust_recipe`` for scans whose camera length was fitted."""
    return session_robust_recipe(camera_length_fitted=True, **changes)


def cnn_recipe(**changes) -> FeatureRecipe:
    """The CNN's session-robust crops (``models.features.session_robust_crop_recipe``): 2.7 Å,
    48x48, resampled on the fitted camera length, direct beam masked below 0.06 Å⁻¹, two scan-context
    channels against the scan's two ends, the most carbon-like neighbour's channel, convergence-blur,
    dose-noise, ice-thickness, centre-jitter, intensity and ±3 % radial-scaling augmentation."""
    return session_robust_crop_recipe(camera_length_fitted=True, **changes)


def previous_cnn_recipe(**changes) -> FeatureRecipe:
    """The CNN recipe of the earlier LOSO run: crops resampled on the fitted camera length, centre
    jitter, intensity and ±3 % radial scaling only."""
    aug = Augmentation(copies=1, centre_jitter_px=1.0, intensity_range=(0.5, 2.0), radial_scale=0.03)
    return FeatureRecipe(kind="crop", crop_rescale=True, augmentation=aug).replace(**changes)


#: A small CNN for the benchmark (2 shared CPU cores): half the channels, at most 8 epochs of 6000 crops in
#: batches of 64 at a learning rate of 2e-3 (sessions 6-8: 3000 crops per epoch, whose single networks'
#: worst sessions moved by up to 0.05 between seeds; results.md, session 9. The first run: 6 epochs,
#: batches of 128 at 5e-4, 141 Adam steps in all, stopped at the epoch cap in every fold inspected).
CNN_PARAMS = {"filters": (4, 8, 16), "dense_units": 16, "max_epochs": 8, "samples_per_epoch": 6000, "patience": 3,
              "class_weight": "sqrt", "learning_rate": 2e-3, "batch_size": 64}
#: The earlier run's training settings (for the ablation row that repeats it).
PREVIOUS_CNN_PARAMS = {"filters": (4, 8, 16), "dense_units": 16, "max_epochs": 6, "samples_per_epoch": 3000,
                       "patience": 3, "class_weight": "sqrt"}


#: The SVM's C and gamma chosen across the training sessions: a grid scored leaving out one training
#: session at a time, the setting whose worst training session scores best (``search="groups"``).
SVM_GROUP_SEARCH = {**ROBUST_PARAMS, "search": "groups"}


#: Ensemble members of the main table (``train(params={"ensemble": ...})``): the FCNN and SVM as
#: ``sedclassify train --session-robust`` makes them; the benchmark's small CNN, three.
ENSEMBLE = {"fcnn": SESSION_ROBUST_ENSEMBLE, "svm": SESSION_ROBUST_ENSEMBLE, "cnn": 3}


def recipe_and_params(kind: str, svm_search: bool = False, ensemble: int | None = None,
                      background_and_ice_layer: bool = True):
    """(recipe, estimator params) of the main table for a model kind; ensemble: members (default
    ``ENSEMBLE``); background_and_ice_layer=False: the RIA recipe without the flat-background and
    ice-layer augmentations (session 23's ``--session-robust``; FCNN and SVM)."""
    members = {"ensemble": ENSEMBLE[kind] if ensemble is None else int(ensemble)}
    if kind == "cnn":
        if not background_and_ice_layer:
            raise ValueError("background_and_ice_layer applies to fcnn and svm (the crop recipe has neither)")
        return cnn_recipe(), {**CNN_PARAMS, **members}
    recipe = robust_recipe(background_and_ice_layer=background_and_ice_layer)
    if kind == "svm" and svm_search:
        return recipe, {**SVM_GROUP_SEARCH, **members}
    return recipe, {**ROBUST_PARAMS, **members}

#: Ablation: (fitted camera length?, recipe, estimator params); each row removes one measure.
ABLATION = {
    "all measures (the session-robust recipe)": (True, robust_recipe(), ROBUST_PARAMS),
    "scan context against the scan's median profile instead of its two ends (the previous recipe)": (
        True, robust_recipe(context_reference="median"), ROBUST_PARAMS),
    "camera length not fitted (nominal), radial scaling ±12 % instead": (
        False, robust_recipe(augmentation=replace_aug(robust_recipe(), radial_scale=0.12)), ROBUST_PARAMS),
    "camera length not fitted, radial scaling ±3 %": (False, robust_recipe(), ROBUST_PARAMS),
    "with background removal (quadratic in log q)": (True, robust_recipe(background="poly"), ROBUST_PARAMS),
    "no scan context": (True, robust_recipe(scan_context=0), ROBUST_PARAMS),
    "no scan neighbours (the previous recipe)": (True, robust_recipe(scan_neighbours=False), ROBUST_PARAMS),
    "no convergence blur augmentation": (True, robust_recipe(augmentation=replace_aug(robust_recipe(), blur_q_invA=0.0)),
                                         ROBUST_PARAMS),
    "no dose-noise augmentation": (True, robust_recipe(augmentation=replace_aug(robust_recipe(), dose_range=(1.0, 1.0))),
                                   ROBUST_PARAMS),
    "balanced class weights instead of their square root": (True, robust_recipe(), {}),
    "none: the default recipe, nominal camera length": (False, FeatureRecipe(), {}),
    "SVM: C and gamma chosen across the training sessions (search=\"groups\")": (True, robust_recipe(),
                                                                                SVM_GROUP_SEARCH),
    "SVM: fitted on up to 12000 training inputs instead of 6000": (True, robust_recipe(),
                                                                  {**ROBUST_PARAMS, "max_train_samples": 12000}),
    "SVM: C, gamma and class weights (square-root balanced or none) chosen across the training sessions": (
        True, robust_recipe(), {**SVM_GROUP_SEARCH, "search_C": (3.0, 10.0, 30.0), "search_gamma": (0.3, 1.0),
                                "search_class_weight": ("sqrt", None)}),
}


#: CNN ablation: (fitted camera length?, recipe, estimator params); each row removes one measure.
CNN_ABLATION = {
    "all measures (session_robust_crop_recipe)": (True, cnn_recipe(), CNN_PARAMS),
    "no scan-context channels": (True, cnn_recipe(crop_context="none"), CNN_PARAMS),
    "no convergence-blur augmentation": (
        True, cnn_recipe(augmentation=replace_aug(cnn_recipe(), blur_q_invA=0.0)), CNN_PARAMS),
    "no dose-noise augmentation": (
        True, cnn_recipe(augmentation=replace_aug(cnn_recipe(), dose_range=(1.0, 1.0))), CNN_PARAMS),
    "no ice-thickness augmentation": (True, cnn_recipe(augmentation=replace_aug(
        cnn_recipe(), thickness_range=(1.0, 1.0), plural_fraction=0.0)), CNN_PARAMS),
    "direct beam not masked": (True, cnn_recipe(crop_mask_q_invA=0.0), CNN_PARAMS),
    "crops not resampled on the fitted camera length": (True, cnn_recipe(crop_rescale=False), CNN_PARAMS),
    "none of the new ones: the previous CNN recipe (rescaled crops, jitter, intensity, ±3 %)": (
        True, previous_cnn_recipe(), CNN_PARAMS),
    "all measures, the earlier training settings (PREVIOUS_CNN_PARAMS)": (True, cnn_recipe(), PREVIOUS_CNN_PARAMS),
}


def describe(spec=SESSIONS) -> dict:
    """{session name: "convergence, ice, dose, camera length, descan, detector" text}."""
    out = {}
    for (sess, det), (c, ice, dose, cam, descan, _) in zip(session_list(spec), spec):
        out[sess.name] = (f"{c:g} mrad, ice {ice:g}x, dose {dose:g}x, camera length {cam:g}x, descan {descan:g}x, "
                          f"{det} px")
    return out


def _cell(mean_sd) -> str:
    return f"{mean_sd[0]:.3f} ± {mean_sd[1]:.3f}"


def main_table(results: dict, log=print) -> None:
    """Markdown: per held-out session, per model, weighted F1 and amorphous-ice precision."""
    kinds = list(results)
    names = describe()
    summ = {k: summarise(results[k]) for k in kinds}
    log("| held-out session | " + " | ".join(f"{k.upper()} weighted F1 | {k.upper()} amorphous-ice precision"
                                           for k in kinds) + " |")
    log("|---|" + "---|---|" * len(kinds))
    for s in results[kinds[0]]:
        log(f"| {names.get(s, s)} | " + " | ".join(
            f"{_cell(summ[k]['sessions'][s]['f1'])} | {_cell(summ[k]['sessions'][s]['ice_precision'])}" for k in kinds)
            + " |")
    log("| mean ± sd over sessions (best - worst) | " + " | ".join(
        f"{summ[k]['f1_mean']:.3f} ± {summ[k]['f1_sd']:.3f} ({summ[k]['spread']:.3f}) | "
        f"{summ[k]['ice_precision_mean']:.3f} ± {summ[k]['ice_precision_sd']:.3f}" for k in kinds) + " |")


def reliability_of(result: dict) -> dict:
    from napari_sedclassify.models.metrics import reliability

    truths = np.concatenate([r["truth"].ravel() for rows in result.values() for r in rows])
    proba = np.concatenate([r["proba"].reshape(-1, r["proba"].shape[-1]) for rows in result.values() for r in rows])
    return reliability(truths, proba, [1, 2, 3, 4])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/sedclassify-bench-sessions")
    ap.add_argument("--scans", type=int, default=4, help="scans per session (default 4)")
    ap.add_argument("--models", default="fcnn,svm,cnn", help="models (default fcnn,svm,cnn; the CNN is small: "
                    "CNN_PARAMS)")
    ap.add_argument("--ablation", action="store_true", help="also the ablation (each measure removed in turn)")
    ap.add_argument("--ablation-models", default="svm", help="models for the ablation (default svm)")
    ap.add_argument("--ablation-rows", help="only these ablation rows (comma-separated indices from 0; of "
                    "CNN_ABLATION for --ablation-models cnn)")
    ap.add_argument("--ablation-held-out", help="ablation: only these held-out sessions (comma-separated parts of "
                    "their names, e.g. c0.8-,i2.2-); default all seven")
    ap.add_argument("--svm-search", action="store_true", help="SVM: choose C and gamma across the training "
                    "sessions (leave one training session out; SVM_GROUP_SEARCH)")
    ap.add_argument("--seeds", default="0", help="main table: train with each of these seeds (comma-separated; "
                    "every held-out session's scores pooled over its scans and the seeds, and each seed's worst "
                    "session and spread printed)")
    ap.add_argument("--without-background-and-ice-layer", action="store_true", help="main table: train FCNN "
                    "and SVM without the flat-background and ice-layer augmentations (session 23's recipe: "
                    "session_robust_recipe(background_and_ice_layer=False))")
    ap.add_argument("--ensemble", type=int, help="main table: members per model (default ENSEMBLE: FCNN, SVM 5, "
                    "CNN 3; 1 = single models)")
    ap.add_argument("--skip-main", action="store_true", help="only the ablation")
    ap.add_argument("--reliability", metavar="PNG", help="write the reliability diagram here")
    ap.add_argument("--json", metavar="FILE", help="write every number as JSON")
    args = ap.parse_args()
    plain = args.without_background_and_ice_layer
    if plain and "cnn" in args.models.split(",") and not args.skip_main:
        ap.error("--without-background-and-ice-layer applies to fcnn and svm (the crop recipe has neither)")
    t0 = time.perf_counter()
    scans = ensure_features(args.workdir, n_scans=args.scans)
    fitted = with_fitted_camera_length(scans, log=print)
    print(f"{len(scans)} scans of {len(SESSIONS)} sessions ready in {time.perf_counter() - t0:.0f} s", flush=True)
    results, per_seed = {}, {}
    seeds = [int(v) for v in args.seeds.split(",")]
    for kind in [] if args.skip_main else args.models.split(","):
        recipe, params = recipe_and_params(kind, args.svm_search, args.ensemble, not plain)
        runs = []
        for seed in seeds:
            print(f"  {kind}, ensemble of {params['ensemble']}, seed {seed}", flush=True)
            runs.append(loso(fitted, kind, recipe, params, seed=seed, log=print))
        results[kind] = {held: [r for run in runs for r in run[held]] for held in runs[0]}
        per_seed[kind] = [summarise(run) for run in runs]
    out = {"sessions": describe(), "seeds": seeds, "background_and_ice_layer": not plain}
    rel = {}
    if results:
        which = "session-robust recipe" + (" without background and ice layer" if plain else "")
        print(f"\nleave-one-session-out, {which}, camera length fitted per scan; seeds {seeds} "
              "(per session: mean ± sd over its scans and the seeds)\n")
        main_table(results)
        print("\neach seed alone: mean over sessions (worst session; best - worst)\n")
        print("| seed | " + " | ".join(k.upper() for k in per_seed) + " |")
        print("|---|" + "---|" * len(per_seed))
        for i, seed in enumerate(seeds):
            print(f"| {seed} | " + " | ".join(f"{v[i]['f1_mean']:.3f} ({v[i]['f1_min']:.3f}; {v[i]['spread']:.3f})"
                                             for v in per_seed.values()) + " |")
        out["main"] = {k: summarise(v) for k, v in results.items()}
        out["per_seed"] = per_seed
        rel = {k.upper(): reliability_of(v) for k, v in results.items()}
        out["reliability"] = rel
    print("\nconfidence (pooled held-out frames): expected calibration error, and what --uncertain-below keeps")
    for k, r in rel.items():
        print(f"{k}: ECE {r['ece']:.3f}, MCE {r['mce']:.3f}")
        def f3(v):
            return "n/a" if v is None else f"{v:.3f}"

        for row in r["curve"]:
            print(f"   below {row['threshold']:.2f} uncertain: kept {f3(row['kept'])}, accuracy {f3(row['accuracy'])}, "
                  f"amorphous-ice precision {f3(row['amorphous_ice_precision'])}, "
                  f"recall {f3(row['amorphous_ice_recall'])}")
    if args.reliability and rel:
        from napari_sedclassify.models.metrics import plot_reliability

        what = {"FCNN": "temperature-scaled FCNN", "SVM": "sigmoid-calibrated SVM", "CNN": "uncalibrated CNN"}
        sizes = {k: recipe_and_params(k.lower(), ensemble=args.ensemble)[1]["ensemble"] for k in rel}
        members = ", ".join(f"{what[k]} (ensemble of {sizes[k]})" for k in rel)
        plot_reliability(rel, args.reliability, title="Held-out sessions (leave-one-session-out, seeds "
                         f"{args.seeds}), {members}")
        print(f"wrote {args.reliability}")
    if args.ablation:
        out["ablation"] = {}
        kinds = args.ablation_models.split(",")
        print("\nablation: mean weighted F1 over held-out sessions ± sd, worst session, best - worst\n")
        print("| variant | " + " | ".join(f"{k.upper()}: mean ± sd (worst; spread)" for k in kinds) + " |")
        print("|---|" + "---|" * len(kinds))
        rows = list((CNN_ABLATION if kinds == ["cnn"] else ABLATION).items())
        if args.ablation_rows:
            rows = [rows[int(i)] for i in args.ablation_rows.split(",")]
        held = args.ablation_held_out.split(",") if args.ablation_held_out else None
        for name, (fit, recipe, params) in rows:
            cells = []
            for kind in kinds:
                s = summarise(loso(fitted if fit else scans, kind, recipe, params, held_out=held, log=print))
                out["ablation"].setdefault(name, {})[kind] = s
                cells.append(f"{s['f1_mean']:.3f} ± {s['f1_sd']:.3f} ({s['f1_min']:.3f}; {s['spread']:.3f})")
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        from napari_sedclassify.jsonutil import jsonable

        Path(args.json).write_text(json.dumps(jsonable(out), indent=1))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
