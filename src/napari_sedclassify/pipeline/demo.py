"""The paper's experiment end to end on simulated data (``sedclassify demo``).

Scans of session "A" and 1 of session "B" (the simulator's demo set, generated once and
reused from a cache folder); every scan is preprocessed once (flat-field, centring, RIAs and
central crops in one pass); FCNN, SVM and CNN train on the session-A scans but the last and are
tested on the last one (the paper's data set 1) and on the session-B scan (its data set 2). The
report (Markdown + JSON + PNG figures) sets the results beside the paper's Table 1.

Two sizes (:data:`QUICK`, the default, and :data:`FULL`):

- quick: 5 + 1 scans of 40x40 points on a 128x128 px detector (the simulator keeps the rings'
  relative positions), the CNN trained for 6 short epochs: a few minutes on 2 cores, 0.3 GB;
- full (``full=True``, ``sedclassify demo --full``): the paper's 16 + 1 scans, 256x256 px, the
  CNN trained in full (30 epochs of 8000 crops): 6-20 minutes on 2 cores, 3.5 GB.

``detector_px=512`` is the paper's detector size (about 14 GB for the full set, several times
slower to simulate).
"""

from __future__ import annotations

import json
import time
import timeit
from pathlib import Path
from typing import Callable

import numpy as np

from ..classes import ClassTable
from ..models import MODEL_KINDS
from ..io.atomic import write_text
from .scans import scan_report
from .train import default_recipe, preprocess_params_for, scan_features

#: The default demo: 5 session-A scans (4 to train on, 1 held out) and the session-B scan on a
#: 128 px detector; the CNN trains for 6 epochs of 1500 crops and its prediction time is one
#: call after a warm-up (median of 3 for the others).
QUICK = {"detector_px": 128, "n_session_a": 5, "cnn": {"max_epochs": 6, "samples_per_epoch": 1500},
         "cnn_predict_repeats": 1}
#: The full replication: the paper's 16 + 1 scans on a 256 px detector, the CNN trained in full.
FULL = {"detector_px": 256, "n_session_a": 16, "cnn": {}, "cnn_predict_repeats": 3}
DEFAULT_SCAN_SHAPE = (40, 40)
#: The held-out scans: the last session-A scan (data set 1; scan_A_15 in the full set) and this one (data set 2).
TEST_OTHER_SESSION = "scan_B_00"

#: The paper's Table 1 (Matinyan et al. 2023): seconds per 1600 frames and weighted metrics
#: on data set 1 (same session) and data set 2 (another session).
PAPER_TABLE1 = {
    "fcnn": {"features_s": 97.0, "predict_s": 0.017,
             "set1": {"precision": 0.89, "recall": 0.89, "accuracy": 0.89, "f1": 0.88},
             "set2": {"precision": 0.72, "recall": 0.79, "accuracy": 0.79, "f1": 0.711}},
    "svm": {"features_s": 97.0, "predict_s": 9.92,
            "set1": {"precision": 0.84, "recall": 0.85, "accuracy": 0.85, "f1": 0.82},
            "set2": {"precision": 0.62, "recall": 0.76, "accuracy": 0.76, "f1": 0.68}},
    "cnn": {"features_s": 3.24, "predict_s": 1.06,
            "set1": {"precision": 0.77, "recall": 0.79, "accuracy": 0.79, "f1": 0.71},
            "set2": {"precision": 0.84, "recall": 0.81, "accuracy": 0.81, "f1": 0.73}},
}


def ensure_dataset(cache: Path, scan_shape, detector_px: int, seed: int, progress=None, log=None,
                   n_session_a: int = 16) -> dict:
    """The demo set in ``cache``: reused when its dataset.json matches and every file is there,
    otherwise simulated (about a minute on 2 cores at 256 px)."""
    from ..simulate import demo_dataset, load_dataset

    log = log or (lambda msg: None)
    try:
        ds = load_dataset(cache)
        same = (list(ds["scan_shape"]) == list(scan_shape) and int(ds["detector_px"]) == int(detector_px)
                and int(ds["seed"]) == int(seed) and len(ds["scans"]) == n_session_a + 1)
        if same and all(Path(e[k]).exists() for e in ds["scans"] for k in ("scan", "truth", "flatfield")):
            log(f"reusing the simulated demo set in {cache}")
            return ds
    except (FileNotFoundError, ValueError, KeyError):
        pass
    log(f"simulating the demo set ({n_session_a} scans of session A, 1 of session B) into {cache}")
    demo_dataset(cache, scan_shape=tuple(scan_shape), detector_px=int(detector_px), seed=int(seed), progress=progress,
                 n_session_a=n_session_a)
    return load_dataset(cache)


def earlier_outputs(out_dir) -> list[Path]:
    """The files an earlier demo run wrote into ``out_dir``, by the names the demo gives them (its
    report, model files and figures, of any model kind); never another file."""
    out_dir = Path(out_dir)
    figures = [f"{k}_scan_*_{what}.png" for k in MODEL_KINDS for what in ("confusion", "maps")]
    figures += [f"picture_scan_*_{k}.png" for k in MODEL_KINDS] + ["fig6_all_models.png"]
    found = [out_dir / name for name in ("report.json", "report.md")]
    found += [out_dir / "models" / f"{k}.sedmodel" for k in MODEL_KINDS]
    found += [f for pattern in figures for f in (out_dir / "figures").glob(pattern)]
    return sorted(f for f in found if f.is_file())


def _remove_earlier_outputs(out_dir: Path, log) -> None:
    """Remove an earlier demo run's outputs from ``out_dir``, so the folder describes this run
    alone (a run with fewer models left the other models' files beside the new report)."""
    earlier = earlier_outputs(out_dir)
    if earlier:
        log(f"removing the {len(earlier)} files of an earlier demo run in {out_dir} (report, models, figures)")
    for f in earlier:
        f.unlink()


def _predict_seconds(model, X, repeats: int = 3) -> float:
    """Median wall time (s) of ``predict_proba`` on X after one warm-up call."""
    model.predict_proba(X)
    return float(np.median(timeit.repeat(lambda: model.predict_proba(X), repeat=repeats, number=1)))


def run_demo(out_dir, *, scan_shape=DEFAULT_SCAN_SHAPE, detector_px: int | None = None, models=("fcnn", "svm", "cnn"),
             seed: int = 0, full: bool = False, n_session_a: int | None = None, cnn_params: dict | None = None,
             cache_dir=None, log: Callable | None = print, frames_progress: Callable | None = None,
             epoch_progress: Callable | None = None, cancel: Callable | None = None) -> dict:
    """Run the paper's experiment and write the report into ``out_dir``; returns the report dict.

    full: the full replication (:data:`FULL`) instead of the quick demo (:data:`QUICK`);
    detector_px, n_session_a (session-A scans, the last one held out) and cnn_params (CNN
    estimator settings) override the chosen preset.
    cache_dir: where the simulated set lives (default ``out_dir/cache/demo_<sy>x<sx>_<px>px[_<n>scans]_seed<seed>``).
    frames_progress(i, n, done, total): simulation and preprocessing progress in frames (i = step);
    epoch_progress(kind, epoch, logs): training progress. cancel() -> True stops.
    """
    from ..io import open_scan
    from ..models.inference import predict_scan
    from ..models.persistence import save_model
    from ..models.training import train
    from ..processing import load_flatfield
    from .evaluate import plot_scan

    t_start = time.perf_counter()
    log = log or (lambda msg: None)
    models = [m.lower() for m in models]
    bad = [m for m in models if m not in MODEL_KINDS]
    if bad or not models:
        raise ValueError(f"unknown model(s) {', '.join(bad) or '(none)'}; choose from {', '.join(MODEL_KINDS)}")
    out_dir = Path(out_dir)
    figures = out_dir / "figures"
    _remove_earlier_outputs(out_dir, log)
    preset = FULL if full else QUICK
    detector_px = int(detector_px if detector_px is not None else preset["detector_px"])
    n_a = int(n_session_a if n_session_a is not None else preset["n_session_a"])
    cnn_params = dict(preset["cnn"] if cnn_params is None else cnn_params)
    sy, sx = (int(v) for v in scan_shape)
    n_scans = "" if n_a == 16 else f"_{n_a + 1}scans"  # the full set keeps its earlier cache name
    cache = Path(cache_dir) if cache_dir else out_dir / "cache" / f"demo_{sy}x{sx}_{detector_px}px{n_scans}_seed{seed}"
    classes = ClassTable.default()

    # 1. the data set
    t0 = time.perf_counter()
    done = 0

    def sim_progress(k):
        nonlocal done
        done += k
        if frames_progress is not None:
            frames_progress(0, 1, done, (n_a + 1) * sy * sx)

    ds = ensure_dataset(cache, (sy, sx), detector_px, seed, progress=sim_progress, log=log, n_session_a=n_a)
    t_dataset = time.perf_counter() - t0

    # 2. preprocessing: one pass per scan serves every model
    recipes = {k: default_recipe(k) for k in models}
    entries = ds["scans"]
    n_frames = sy * sx
    feats, truths, integrated, t_pre = [], [], [], []
    log(f"preprocessing {len(entries)} scans ({n_frames} frames of {detector_px}x{detector_px} px each)")
    for i, e in enumerate(entries):
        scan = open_scan(e["scan"])
        ff = load_flatfield(e["flatfield"])
        t = time.perf_counter()
        f, res = scan_features(scan, list(recipes.values()), name=e["name"], flatfield=ff, cancel=cancel,
                               progress=scan_report(frames_progress, i, len(entries)))
        t_pre.append(time.perf_counter() - t)
        feats.append(f)
        truths.append(np.load(e["truth"]))
        integrated.append(res.virtual["total"])
    names = [f.name for f in feats]
    test_ids = [names.index(f"scan_A_{n_a - 1:02d}"), names.index(TEST_OTHER_SESSION)]  # data sets 1 and 2
    preprocess_1600 = float(np.median(t_pre)) * 1600.0 / n_frames

    # 3. train, save, predict, evaluate
    figures.mkdir(parents=True, exist_ok=True)
    results, rows, maps, drawn = {}, [], {}, []  # drawn: the figures this run wrote
    for kind in models:
        log(f"training {kind.upper()} on the {len(names) - 2} training scans of session A")
        recipe = recipes[kind]
        progress = None if epoch_progress is None else (lambda k: lambda e, lg: epoch_progress(k, e, lg))(kind)
        t = time.perf_counter()
        model = train(feats, truths, kind=kind, recipe=recipe, holdout=test_ids, seed=seed,
                      params=cnn_params if kind == "cnn" and cnn_params else None,
                      preprocess=preprocess_params_for([recipe], feats[0].geometry, training=True).to_dict(),
                      progress=progress, cancel=cancel)
        t_train = time.perf_counter() - t
        path = save_model(model, out_dir / "models" / f"{kind}.sedmodel")
        t = time.perf_counter()
        X = feats[test_ids[0]].inputs(recipe)
        t_inputs = (time.perf_counter() - t) * 1600.0 / len(X)
        repeats = preset["cnn_predict_repeats"] if kind == "cnn" else 3
        t_predict = _predict_seconds(model, X, repeats) * 1600.0 / len(X)
        res_kind = {"model_file": str(path.relative_to(out_dir)), "train_s": round(t_train, 2),
                    "epochs": model.training["epochs"], "n_train_frames": model.training["n_train_frames"],
                    "n_train_inputs": model.training["n_train_inputs"],
                    "features_s_per_1600": round(preprocess_1600 + t_inputs, 4),
                    "inputs_s_per_1600": round(t_inputs, 4),
                    "predict_s_per_1600": round(t_predict, 5),
                    "validation": model.metrics.get("validation", {}).get("weighted")}
        for label, idx in (("set1", test_ids[0]), ("set2", test_ids[1])):
            pred = predict_scan(model, feats[idx])
            m = model.metrics["holdout"][names[idx]]
            res_kind[label] = {"scan": names[idx], "weighted": m["weighted"], "per_class": m["per_class"],
                               "confusion": m["confusion"], "confusion_normalised": m["confusion_normalised"]}
            maps[(kind, label)] = pred.class_map
            session = "same session" if label == "set1" else "other session"
            rows.append((f"{kind.upper()}, {names[idx]}\n({session})", integrated[idx], truths[idx], pred.class_map, m))
            drawn += plot_scan(figures, f"{kind}_{names[idx]}", kind, names[idx], m, truths[idx], pred.class_map,
                               integrated[idx], classes)
        results[kind] = res_kind
        log(f"  {kind.upper()}: weighted F1 {res_kind['set1']['weighted']['f1']:.3f} (same session), "
                  f"{res_kind['set2']['weighted']['f1']:.3f} (other session); trained in {t_train:.0f} s")

    # 4. figures and report
    from ..models.metrics import plot_fig6, plot_overlay

    drawn.append(figures / "fig6_all_models.png")
    plot_fig6(rows, drawn[-1], classes,
              title="Test scans: integrated image, true classes, predictions, differences, confusion matrix")
    best = max(models, key=lambda k: (results[k]["set2"]["weighted"]["f1"] + results[k]["set1"]["weighted"]["f1"]))
    for label, idx in (("set1", test_ids[0]), ("set2", test_ids[1])):
        drawn.append(figures / f"picture_{names[idx]}_{best}.png")
        plot_overlay(integrated[idx], maps[(best, label)], drawn[-1], classes,
                     title=f"{names[idx]}: integrated image and the {best.upper()} class map "
                           f"(weighted F1 {results[best][label]['weighted']['f1']:.3f})")
    report = {
        "settings": {"scan_shape": [sy, sx], "detector_px": int(detector_px), "seed": int(seed), "models": models,
                     "preset": "full" if full else "quick", "cnn_params": cnn_params,
                     "train_scans": [n for i, n in enumerate(names) if i not in test_ids],
                     "test_same_session": names[test_ids[0]], "test_other_session": names[test_ids[1]],
                     "cache": str(cache), "preprocess": res.params.to_dict()},
        "timings_s": {"dataset": round(t_dataset, 1), "preprocess_per_scan_median": round(float(np.median(t_pre)), 3),
                      "preprocess_per_1600_frames": round(preprocess_1600, 3),
                      "total": round(time.perf_counter() - t_start, 1)},
        "models": results,
        "best_model": best,
        "paper_table1": {k: PAPER_TABLE1[k] for k in models},
        "figures": sorted(str(Path(p).relative_to(out_dir)) for p in drawn),
    }
    write_text(out_dir / "report.json", json.dumps(report, indent=2))
    write_text(out_dir / "report.md", report_markdown(report))
    log(f"report: {out_dir / 'report.md'} ({report['timings_s']['total']:.0f} s in all)")
    return report


def _fmt_s(v) -> str:
    if v is None:
        return "NA"
    return f"{v:.3g} s" if v >= 0.001 else f"{v * 1e3:.2g} ms"


def table1_markdown(report: dict) -> str:
    """The paper's Table 1 with our numbers beside it (paper | ours for every model)."""
    models = report["settings"]["models"]
    res, paper = report["models"], report["paper_table1"]
    head = "| | " + " | ".join(f"{k.upper()} paper | {k.upper()} ours" for k in models) + " |"
    lines = [head, "|---" * (1 + 2 * len(models)) + "|"]
    # speed rows: (title, the paper's key, ours, the model inputs they apply to; None: all)
    for title, theirs, ours, inputs in (("1a RIA calculation", "features_s", "features_s_per_1600", "ria"),
                                        ("1b ROI selection and dimensionality match", "features_s",
                                         "features_s_per_1600", "crop"),
                                        ("2 Prediction", "predict_s", "predict_s_per_1600", None)):
        row = [f"{title} (1600 frames)"]
        for k in models:
            shown = inputs in (None, MODEL_KINDS[k])
            row += [_fmt_s(paper[k][theirs] if shown else None), _fmt_s(res[k][ours] if shown else None)]
        lines.append("| " + " | ".join(row) + " |")
    for label, name in (("set1", "data set 1 (same session)"), ("set2", "data set 2 (other session)")):
        for metric in ("precision", "recall", "accuracy", "f1"):
            row = [f"{metric.capitalize() if metric != 'f1' else 'F1 score'}, {name}"]
            for k in models:
                row += [f"{paper[k][label][metric]:.2f}", f"**{res[k][label]['weighted'][metric]:.3f}**"]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def report_markdown(report: dict) -> str:
    s = report["settings"]
    t = report["timings_s"]
    res = report["models"]
    lines = [
        "# napari-sedclassify demo: the paper's experiment on simulated scans",
        "",
        f"Data: {len(s['train_scans']) + 2} simulated scans of {s['scan_shape'][0]}x{s['scan_shape'][1]} points on a "
        f"{s['detector_px']}x{s['detector_px']} px detector: models train on the {len(s['train_scans'])} scans "
        f"{s['train_scans'][0]} ... {s['train_scans'][-1]} (session A) and are tested on {s['test_same_session']} "
        f"(session A, the paper's data set 1) and {s['test_other_session']} (session B: camera length, dose, "
        "descan and detector gain differ, the paper's data set 2).",
        "",
    ]
    if s.get("preset") == "quick":
        lines += [f"This is the quick demo (fewer and smaller scans than the paper's, the CNN trained briefly: "
                  f"{s.get('cnn_params')}); `sedclassify demo --full` runs the full replication (16 + 1 scans, "
                  "256 px detector, full CNN training).", ""]
    lines += [
        "## Table 1, the paper beside this run",
        "",
        "Speed rows are seconds per 1600 frames on this machine. Row 1 is the preprocessing pass (flat-field, "
        "per-frame centring, RIA, central crop and virtual images fused in one pass over the frames) plus "
        "turning its output into model inputs; row 2 is the model's `predict_proba` on those inputs "
        f"(median of 3 after a warm-up{'; the CNN: one call' if s.get('preset') == 'quick' else ''}). "
        "Metrics are weighted by class support; accuracy is the fraction "
        "of correctly classified points (the paper's weighted accuracy equals weighted recall).",
        "",
        table1_markdown(report),
        "",
        "## Per model",
        "",
        "| model | epochs | training frames (with augmentation) | training time | validation F1 | "
        "F1 same session | F1 other session | other - same |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, r in res.items():
        f1a, f1b = r["set1"]["weighted"]["f1"], r["set2"]["weighted"]["f1"]
        val = r["validation"]["f1"] if r.get("validation") else float("nan")
        lines.append(f"| {k.upper()} | {r['epochs']} | {r['n_train_frames']} ({r['n_train_inputs']}) | "
                     f"{r['train_s']:.0f} s | {val:.3f} | {f1a:.3f} | {f1b:.3f} | {100 * (f1b - f1a):+.1f} points |")
    lines += ["", "## Per class (F1 / Jaccard = the paper's TP/(TP+FP+FN))", ""]
    classes = list(next(iter(res.values()))["set1"]["per_class"])
    lines.append("| model, test scan | " + " | ".join(c.replace("_", " ") for c in classes) + " |")
    lines.append("|---" * (1 + len(classes)) + "|")
    for k, r in res.items():
        for label in ("set1", "set2"):
            pc = r[label]["per_class"]
            lines.append(f"| {k.upper()}, {r[label]['scan']} | " + " | ".join(
                f"{pc[c]['f1']:.3f} / {pc[c]['jaccard']:.3f} (n={pc[c]['support']})" for c in classes) + " |")
    lines += ["", "## Figures", ""]
    lines += [f"- [{f}]({f})" for f in report["figures"]]
    lines += ["", "![all models](figures/fig6_all_models.png)", ""]
    pics = [f for f in report["figures"] if f.startswith("figures/picture_")]
    lines += [f"![picture]({p})" for p in pics]
    lines += ["", f"Time: simulation or reuse of the data set {t['dataset']:.0f} s, preprocessing "
                  f"{t['preprocess_per_scan_median']:.2f} s per scan (median), all in all {t['total']:.0f} s.", ""]
    return "\n".join(lines)
