"""Train the built-in model shipped in the package (``sedclassify predict builtin SCAN ...``).

Reproducible: every session, scan and the training itself are seeded. The script

1. draws ``--sessions`` training sessions at random over the domain (beam convergence 0-0.8 mrad,
   ice thickness 0.5-2.5x with plural scattering, dose 0.3-3x, true camera length 0.90-1.10x of the
   nominal 900 mm the files state, descan 0.7-1.5x, detector 128, 256 or 512 px, each session its
   own gain map, beam position and descan direction) and simulates two scans of each;
2. preprocesses every scan with its session's flat-field (RIAs cached in --workdir);
3. fits the camera length of every training scan from its amorphous-ice ring
   (``pipeline.calibrate.calibrate_ria``), so that the training features sit on exact q axes;
4. trains an FCNN on q-axis RIA features from 0.06 to 0.30 Å⁻¹ (a single 256 px Medipix chip at
   about 90 cm reaches 0.31 Å⁻¹) with the session-robust recipe and augmentation (radial scaling
   ±11 %, so that the nominal camera length, up to 10 % off, is enough at prediction; convergent-beam
   blur up to 0.035 Å⁻¹; the counting noise of 0.2-1x the dose; centre jitter) and square-root
   balanced class weights;
5. writes the model with its training domain (model card) to
   ``src/napari_sedclassify/models/data/builtin.sedmodel`` (or --out), and
6. evaluates it on ``--test-sessions`` further sessions it never saw (3 scans each, no labels used,
   nominal camera length as the files state it), printing the table for docs/results.md.

    python scripts/train_builtin.py [--workdir /tmp/sedclassify-builtin] [--out PATH] [--sessions 24]
                                    [--test-sessions 5] [--evaluate-only]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "napari_sedclassify" / "models" / "data" / "builtin.sedmodel"

#: The domain the training sessions are drawn from (uniform; "log" axes log-uniform).
DOMAIN = {
    "convergence_mrad": (0.0, 0.8),
    "ice_thickness_scale": (0.5, 2.5),
    "dose_factor": (0.3, 3.0),
    "camera_length_factor": (0.90, 1.10),
    "descan_factor": (0.7, 1.5),
}
DETECTORS = (128, 256, 512)
SCAN_SHAPE = {128: (20, 20), 256: (20, 20), 512: (14, 14)}
Q_RANGE = (0.06, 0.30)
TRAIN_SEED, TEST_SEED = 17017, 27027


def draw_sessions(n: int, seed: int):
    """[(SessionParams, detector_px)]: ``n`` sessions drawn over :data:`DOMAIN`."""
    from napari_sedclassify.simulate import session_grid

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        c = rng.uniform(*DOMAIN["convergence_mrad"])
        ice = np.exp(rng.uniform(*np.log(DOMAIN["ice_thickness_scale"])))
        dose = np.exp(rng.uniform(*np.log(DOMAIN["dose_factor"])))
        cam = rng.uniform(*DOMAIN["camera_length_factor"])
        descan = rng.uniform(*DOMAIN["descan_factor"])
        (s,) = session_grid("A", convergence=(round(c, 2),), ice=(round(ice, 2),), dose=(round(dose, 2),),
                            camera=(round(cam, 3),), descan=(round(descan, 2),))
        out.append((s, DETECTORS[k % len(DETECTORS)]))
    return out


def scan_features(workdir: Path, sessions, n_scans: int, seed: int, log=print) -> list[dict]:
    """Simulate and preprocess (once, cached as .npz) ``n_scans`` scans per session."""
    from napari_sedclassify.geometry import Geometry
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.models.training import ScanFeatures
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.pipeline.train import default_recipe, preprocess_params_for
    from napari_sedclassify.processing import load_flatfield
    from napari_sedclassify.simulate import load_simulated, simulate_scan

    out = []
    for k, (sess, det) in enumerate(sessions):
        shape = SCAN_SHAPE[det]
        for i in range(n_scans):
            name = f"scan_{sess.name}_{i:02d}"
            cache = workdir / "features" / f"{det}px" / f"{name}.npz"
            if not cache.exists():
                t0 = time.perf_counter()
                path = workdir / "scans" / f"{det}px" / f"{name}.npy"
                if not path.with_suffix(".json").exists() or not path.exists():
                    simulate_scan(path, scan_shape=shape, detector_px=det, session=sess, seed=seed + 100 * k + i)
                sim = load_simulated(path)
                scan = open_scan(path)
                r = preprocess(scan, preprocess_params_for([default_recipe("fcnn")], scan.geometry),
                               flatfield=load_flatfield(sim.flatfield_path))
                radius = r.beam_radius_px[r.beam_found]
                cache.parent.mkdir(parents=True, exist_ok=True)
                np.savez(cache, ria=r.ria, radii_px=r.radii_px, missing=r.missing, truth=sim.truth,
                         beam_radius_px=float(np.median(radius)) if radius.size else np.nan,
                         adf_inner_px=float(r.resolved["adf_inner_px"]),
                         geometry=json.dumps(scan.geometry.to_dict()),
                         true_geometry=json.dumps(sim.metadata["true_geometry"]), session=sim.session)
                path.unlink()  # keep the small sidecars, not the frames
                if log:
                    log(f"  {name} ({det} px, {shape[0]}x{shape[1]}): {time.perf_counter() - t0:.1f} s")
            z = np.load(cache)
            geom = Geometry.from_dict(json.loads(str(z["geometry"])))
            out.append({"name": name, "session": str(z["session"]), "detector_px": det, "truth": z["truth"],
                        "features": ScanFeatures(name, geom, z["missing"], z["ria"], z["radii_px"]),
                        "adf_inner_px": float(z["adf_inner_px"]),
                        "true_geometry": Geometry.from_dict(json.loads(str(z["true_geometry"])))})
    return out


def fit_camera_lengths(scans, log=print) -> list[dict]:
    """The scans with their camera length fitted from the amorphous-ice ring (as ``sedclassify
    calibrate`` does); a scan whose ring cannot be fitted keeps its stated value."""
    from napari_sedclassify.errors import CalibrationError
    from napari_sedclassify.pipeline.calibrate import calibrate_ria

    out = []
    for s in scans:
        f = s["features"]
        valid = ~f.missing & np.isfinite(f.ria).any(axis=-1)
        try:
            cal = calibrate_ria(f.ria, f.radii_px, valid, f.geometry, inner_px=s["adf_inner_px"])
            f = replace(f, geometry=cal.geometry)
        except CalibrationError as exc:
            if log:
                log(f"  {s['name']}: camera length not fitted ({exc}); the stated value is kept")
        out.append(dict(s, features=f))
    return out


def recipe():
    """The built-in model's feature recipe."""
    from napari_sedclassify.models.features import Augmentation, FeatureRecipe

    return FeatureRecipe(
        kind="ria", q_min_invA=Q_RANGE[0], q_max_invA=Q_RANGE[1], n_bins=48,
        augmentation=Augmentation(copies=2, centre_jitter_px=1.0, intensity_range=(0.3, 3.0), radial_scale=0.11,
                                  blur_q_invA=0.035, dose_range=(0.2, 1.0)),
    )


def domain_card(sessions, scans) -> dict:
    """What the model was trained on and what it refuses (stored in the model file)."""
    k = sorted({float(s["features"].geometry.lambda_L_over_p) for s in scans})
    return {
        "description": ("Built-in FCNN of napari-sedclassify, trained on simulated holey-carbon / vitreous-ice scans "
                        f"of {len(sessions)} sessions (scripts/train_builtin.py), no real data. Classes: carbon, "
                        "amorphous ice, crystalline ice, mixed. Use it for a first class map before labeling; "
                        "train your own model on labeled scans of your session for anything that matters."),
        "voltage_kv": [200.0, 200.0],
        "q_range_invA": list(Q_RANGE),
        "lambda_L_over_p_px_A": [round(k[0] * 0.9, 1), round(k[-1] * 1.1, 1)],
        "detector_px": [min(DETECTORS), max(DETECTORS)],
        "camera_length_error": 0.10,
        "calibration_origins": ["file", "user", "fitted"],
        "sessions": {key: list(v) for key, v in DOMAIN.items()},
        "training_sessions": len(sessions),
        "training_scans": len(scans),
        "simulator": "napari_sedclassify.simulate (docs/simulation.md), plural scattering on",
    }


def train_builtin(train_scans, sessions, seed: int = 0):
    from napari_sedclassify.models.training import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = train([s["features"] for s in train_scans], [s["truth"] for s in train_scans], kind="fcnn",
                      recipe=recipe(), params={"hidden_units": 30, "class_weight": "sqrt"}, seed=seed)
    model.domain = domain_card(sessions, train_scans)
    return model


def evaluate(model, test_scans) -> dict:
    """{session: [per-scan metrics]} of ``model`` on ``test_scans`` (their stated geometry)."""
    from napari_sedclassify.models.inference import predict_scan
    from napari_sedclassify.models.metrics import evaluate as metrics

    out = {}
    for s in test_scans:
        pred = predict_scan(model, s["features"])
        m = metrics(s["truth"], pred.class_map, model.classes)
        out.setdefault(s["session"], []).append(
            {"name": s["name"], "detector_px": s["detector_px"], "f1": m["weighted"]["f1"],
             "ice_f1": m["per_class"]["amorphous_ice"]["f1"],
             "ice_precision": m["per_class"]["amorphous_ice"]["precision"]})
    return out


def print_table(result: dict) -> None:
    print("| held-out session (convergence, ice, dose, camera length, descan) | detector | scans | "
          "weighted F1 | amorphous-ice F1 | amorphous-ice precision |")
    print("|---|---|---|---|---|---|")
    allf, alli = [], []
    for sess, rows in result.items():
        f1 = np.array([r["f1"] for r in rows])
        ice = np.array([r["ice_f1"] for r in rows])
        p = np.array([r["ice_precision"] for r in rows])
        allf += list(f1)
        alli += list(ice)
        print(f"| {sess} | {rows[0]['detector_px']} px | {len(rows)} | {f1.mean():.3f} ± {f1.std(ddof=1):.3f} | "
              f"{ice.mean():.3f} ± {ice.std(ddof=1):.3f} | {p.mean():.3f} ± {p.std(ddof=1):.3f} |")
    means = [np.mean([r["f1"] for r in rows]) for rows in result.values()]
    ice_means = [np.mean([r["ice_f1"] for r in rows]) for rows in result.values()]
    print(f"| all {len(allf)} scans | | | {np.mean(allf):.3f} ± {np.std(allf, ddof=1):.3f} (sessions "
          f"{min(means):.3f}-{max(means):.3f}) | {np.mean(alli):.3f} ± {np.std(alli, ddof=1):.3f} (sessions "
          f"{min(ice_means):.3f}-{max(ice_means):.3f}) | |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/sedclassify-builtin")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--sessions", type=int, default=24, help="training sessions (2 scans each)")
    ap.add_argument("--test-sessions", type=int, default=5, help="unseen test sessions (3 scans each)")
    ap.add_argument("--evaluate-only", action="store_true", help="evaluate the model at --out, do not train")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    from napari_sedclassify.models.persistence import load_model, save_model

    if not args.evaluate_only:
        sessions = draw_sessions(args.sessions, TRAIN_SEED)
        print(f"training data: {len(sessions)} sessions x 2 scans", file=sys.stderr)
        train_scans = fit_camera_lengths(scan_features(workdir, sessions, 2, seed=TRAIN_SEED))
        t0 = time.perf_counter()
        model = train_builtin(train_scans, sessions)
        print(f"trained in {time.perf_counter() - t0:.0f} s: {model.training['epochs']} epochs, "
              f"validation F1 {model.metrics['validation']['weighted']['f1']:.3f}", file=sys.stderr)
        path = save_model(model, args.out)
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} kB)", file=sys.stderr)
    model = load_model(args.out)
    test = draw_sessions(args.test_sessions, TEST_SEED)
    print(f"test data: {len(test)} unseen sessions x 3 scans", file=sys.stderr)
    print_table(evaluate(model, scan_features(workdir, test, 3, seed=TEST_SEED)))


if __name__ == "__main__":
    main()
