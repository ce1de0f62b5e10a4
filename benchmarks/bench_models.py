"""Classifiers on the demo set: prediction speed per 1600 frames and the session-robustness
ablation (feature normalisation and training-time augmentation on or off).

The demo set (16 scans of session A, 1 of session B; 40x40 points, 256x256 px by default) is
simulated once into --workdir and preprocessed once (RIAs and crops cached there as .npz).
Models train on scan_A_00..14 and are tested on scan_A_15 (same session) and scan_B_00
(other session: camera length 2-4 % off while the geometry still reports the nominal value,
dose, descan and gain map differ).

Speed: ``predict_proba`` on the 1600 inputs of scan_A_15, median of 7 calls after a warm-up,
wall time and this process's CPU time (meaningful on a shared machine). The baseline, run in
the same process, is an SVM fitted on all training frames (no subsampling), which is what makes
a kernel SVM slow to predict (its cost grows with the support vectors).

    python benchmarks/bench_models.py [--workdir DIR] [--detector 256] [--speed] [--ablation]
                                      [--ablation-models fcnn,svm,cnn] [--variants N]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from napari_sedclassify.geometry import Geometry
from napari_sedclassify.models.features import Augmentation, FeatureRecipe
from napari_sedclassify.models.training import ScanFeatures, train

PAPER_PREDICT_S = {"fcnn": 0.017, "svm": 9.92, "cnn": 1.06}
TARGET_S = {"fcnn": 0.010, "svm": 0.5, "cnn": 2.0}
TEST = ("scan_A_15", "scan_B_00")


def load_features(workdir: Path, detector_px: int):
    """ScanFeatures and truths of the demo set, preprocessed once and cached as .npz."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.demo import ensure_dataset
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.pipeline.train import default_recipe, preprocess_params_for
    from napari_sedclassify.processing import load_flatfield

    data = workdir / f"demo_40x40_{detector_px}px_seed0"
    ds = ensure_dataset(data, (40, 40), detector_px, 0, log=print)
    feats, truths, flats = [], [], {}
    for e in ds["scans"]:
        cache = workdir / f"features_v2_{detector_px}" / f"{e['name']}.npz"  # v2: the training pass's reach
        if not cache.exists():
            scan = open_scan(e["scan"])
            ff = flats.setdefault(str(e["flatfield"]), load_flatfield(e["flatfield"]))
            params = preprocess_params_for([default_recipe("fcnn"), default_recipe("cnn")], scan.geometry, training=True)
            r = preprocess(scan, params, flatfield=ff)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, ria=r.ria, radii_px=r.radii_px, crops=r.crops, missing=r.missing,
                     crop_radius_px=r.resolved["crop_half_px"], geometry=json.dumps(scan.geometry.to_dict()))
        z = np.load(cache)
        feats.append(ScanFeatures(e["name"], Geometry.from_dict(json.loads(str(z["geometry"]))), z["missing"],
                                  z["ria"], z["radii_px"], z["crops"], float(z["crop_radius_px"])))
        truths.append(np.load(e["truth"]))
    return feats, truths


def fit(feats, truths, kind, recipe=None, params=None):
    names = [f.name for f in feats]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train(feats, truths, kind=kind, recipe=recipe, params=params,
                     holdout=[names.index(TEST[0]), names.index(TEST[1])], seed=0)


def timed(fn, repeats: int = 7):
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


def speed(feats, truths, kinds):
    names = [f.name for f in feats]
    test = feats[names.index(TEST[0])]
    print("\nprediction of 1600 frames from features (median of 7)")
    print(f"{'model':<26}{'wall':>10}{'CPU':>10}{'target':>9}{'paper':>9}  F1 same / other session")
    rows = {}
    for kind in kinds:
        model = fit(feats, truths, kind)
        X = test.inputs(model.recipe)
        wall, cpu = timed(lambda: model.predict_proba(X))
        f1 = [model.metrics["holdout"][n]["weighted"]["f1"] for n in TEST]
        rows[kind] = (wall, model.training["history"][-1].get("n_support"))
        print(f"{kind:<26}{wall * 1e3:>8.2f}ms{cpu * 1e3:>8.2f}ms{TARGET_S[kind]:>8}s{PAPER_PREDICT_S[kind]:>8}s"
              f"  {f1[0]:.3f} / {f1[1]:.3f}")
    base = fit(feats, truths, "svm", params={"max_train_samples": None})
    X = test.inputs(base.recipe)
    wall, cpu = timed(lambda: base.predict_proba(X), repeats=3)
    print(f"{'baseline: svm, all frames':<26}{wall * 1e3:>8.2f}ms{cpu * 1e3:>8.2f}ms{'':>9}{'':>9}  "
          + " / ".join(f"{base.metrics['holdout'][n]['weighted']['f1']:.3f}" for n in TEST))
    if "svm" in rows:
        print(f"svm fitted on a 6000-frame subsample ({rows['svm'][1]} support vectors) predicts "
              f"{wall / rows['svm'][0]:.1f}x faster than the baseline "
              f"({base.training['history'][-1]['n_support']} support vectors)")


VARIANTS = {
    "normalise + augment (default)": {},
    "normalise, no augmentation": {"augmentation": Augmentation(copies=0)},
    "augment, no normalisation": {"normalise": False},
    "neither": {"normalise": False, "augmentation": Augmentation(copies=0)},
    "augment: radial scaling only": {"augmentation": Augmentation(centre_jitter_px=0.0, intensity_range=(1.0, 1.0))},
    "augment: no radial scaling": {"augmentation": Augmentation(radial_scale=0.0)},
}


def ablation(feats, truths, kinds, n_variants=None):
    print("\nsession robustness: weighted F1 on scan_A_15 (same session) / scan_B_00 (other session)")
    print(f"{'variant':<34}" + "".join(f"{k.upper():>22}" for k in kinds))
    for name, changes in list(VARIANTS.items())[:n_variants]:
        cells = []
        for kind in kinds:
            recipe = FeatureRecipe(kind="crop" if kind == "cnn" else "ria", **changes)
            m = fit(feats, truths, kind, recipe=recipe)
            a, b = (m.metrics["holdout"][n]["weighted"]["f1"] for n in TEST)
            cells.append(f"{a:.3f} / {b:.3f} ({100 * (b - a):+.1f})")
        print(f"{name:<34}" + "".join(f"{c:>22}" for c in cells), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/sedclassify-bench-models")
    ap.add_argument("--detector", type=int, default=256)
    ap.add_argument("--speed", action="store_true", help="prediction speed (default when nothing is chosen)")
    ap.add_argument("--ablation", action="store_true", help="normalisation / augmentation ablation")
    ap.add_argument("--models", default="fcnn,svm,cnn", help="models for the speed table")
    ap.add_argument("--ablation-models", default="fcnn,svm", help="models for the ablation (cnn: minutes each)")
    ap.add_argument("--variants", type=int, help="only the first N ablation variants (4: the 2x2 design)")
    args = ap.parse_args()
    feats, truths = load_features(Path(args.workdir), args.detector)
    if args.speed or not args.ablation:
        speed(feats, truths, args.models.split(","))
    if args.ablation:
        ablation(feats, truths, args.ablation_models.split(","), args.variants)


if __name__ == "__main__":
    main()
