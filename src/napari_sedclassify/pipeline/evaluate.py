"""Evaluate a trained model on labeled scans: per-scan and pooled metrics, tables, JSON and
plots (confusion matrices and the paper's Fig. 6 maps: integrated image, true classes,
predictions, differences)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .predict import ScanPrediction, as_model, check_scans, predict_scan
from .scans import flatfields_for, is_path, load_labels, open_scans, scan_report


@dataclass
class Evaluation:
    """model: the SedModel. per_scan: {scan name: metrics}. pooled: metrics over all scans.
    predictions / truths: per scan, in order."""

    model: object
    per_scan: dict
    pooled: dict
    predictions: list = field(default_factory=list)
    truths: list = field(default_factory=list)

    def to_dict(self) -> dict:
        m = self.model
        return {
            "model": {"path": m.source, "kind": m.kind},
            "scans": {p.name: {"source": p.source, "metrics": self.per_scan[p.name], "timings": p.timings,
                               **({"warnings": list(p.warnings)} if p.warnings else {})}
                      for p in self.predictions},
            "pooled": self.pooled,
            **({"warnings": self.warnings} if self.warnings else {}),
        }

    @property
    def warnings(self) -> list[str]:
        """The model's (classes it was trained on few frames of: its F1 for them means little),
        then every scan's prediction warnings, in order."""
        from ..models.training import model_file_warnings

        return model_file_warnings(self.model) + [w for p in self.predictions for w in p.warnings]

    def table(self) -> str:
        from ..models.metrics import format_table

        parts = [format_table(self.per_scan[p.name], f"== {p.name}") for p in self.predictions]
        if len(self.predictions) > 1:
            parts.append(format_table(self.pooled, "== all scans"))
        return "\n\n".join(parts)

    def plot(self, out_dir) -> list[str]:
        """Confusion matrix and maps per scan (and pooled confusion) as PNGs in ``out_dir``."""
        from ..models.metrics import plot_confusion

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for p, truth in zip(self.predictions, self.truths):
            written += plot_scan(out_dir, p.name, self.model.kind, p.name, self.per_scan[p.name], truth, p.class_map,
                                 p.integrated, self.model.classes)
        if len(self.predictions) > 1:
            plot_confusion(self.pooled, out_dir / "all_confusion.png",
                           title=f"{self.model.kind.upper()}, all scans: weighted F1 {self.pooled['weighted']['f1']:.3f}")
            written.append(str(out_dir / "all_confusion.png"))
        return written


def plot_scan(out_dir, stem, kind, name, metrics, truth, class_map, integrated, classes) -> list[str]:
    """``<stem>_confusion.png`` and ``<stem>_maps.png`` (the paper's Fig. 6 maps) of model ``kind`` on
    scan ``name`` in ``out_dir``; returns their paths."""
    from ..models.metrics import plot_confusion, plot_maps

    title = f"{kind.upper()} on {name}: weighted F1 {metrics['weighted']['f1']:.3f}"
    files = [Path(out_dir) / f"{stem}_confusion.png", Path(out_dir) / f"{stem}_maps.png"]
    plot_confusion(metrics, files[0], title=title)
    plot_maps(truth, class_map, files[1], classes, integrated=integrated, title=title)
    return [str(f) for f in files]


def checked_truth(truth, source, index: int, scan, classes) -> np.ndarray:
    """The labels of scan ``index`` (from ``source``: a path or an array), refused with the file and
    the problem when they are not on the scan grid or hold ids the model's class table lacks (their
    points would fall out of the confusion matrix while still counting in the scores)."""
    what = str(source) if is_path(source) else f"labels {index + 1}"
    truth = np.asarray(truth)
    if truth.shape != tuple(scan.scan_shape):
        raise ValueError(f"{what}: labels shape {truth.shape} does not match the scan shape {tuple(scan.scan_shape)}")
    unknown = sorted(set(np.unique(truth).tolist()) - set(classes.ids) - {0})
    if unknown:
        raise ValueError(f"{what}: unknown class ids {unknown} (known: 0 = unlabeled, "
                         + ", ".join(f"{i} = {classes.names[i]}" for i in classes.ids) + ")")
    return truth


def evaluate_model(model, scans, labels, *, flatfield=None, progress: Callable | None = None,
                   scan_progress: Callable | None = None, classify_progress: Callable | None = None,
                   cancel: Callable | None = None) -> Evaluation:
    """Predict ``scans`` (paths or Scans) with ``model`` (SedModel or path) and compare with
    ``labels`` (paths or arrays on the scan grids, 0 = unlabeled). progress(i, logs) after each
    scan; scan_progress(i, n, done, total) while scan i of n is preprocessed, then
    classify_progress(i, n, done, total) while the model classifies its recorded frames."""
    from ..models.metrics import evaluate

    model = as_model(model)
    scans = open_scans(scans)
    truths = [checked_truth(t, lab, i, scan, model.classes)
              for i, (t, lab, scan) in enumerate(zip(load_labels(labels, scans), labels, scans))]
    check_scans(model, scans)  # every scan before the first is preprocessed
    ffs = flatfields_for(flatfield, len(scans))
    preds: list[ScanPrediction] = []
    per_scan = {}
    for i, (scan, truth, ff) in enumerate(zip(scans, truths, ffs)):
        p = predict_scan(model, scan, flatfield=ff, progress=scan_report(scan_progress, i, len(scans)),
                         classify_progress=scan_report(classify_progress, i, len(scans)), cancel=cancel)
        if p.name in per_scan:
            p.name = f"{p.name}_{i + 1}"
        preds.append(p)
        per_scan[p.name] = evaluate(truth, p.class_map, model.classes)
        if progress is not None:
            progress(i + 1, {"scan": p.name, "f1_weighted": per_scan[p.name]["weighted"]["f1"],
                             "max_epochs": len(scans)})
    pooled = evaluate(np.concatenate([t.ravel() for t in truths]),
                      np.concatenate([p.class_map.ravel() for p in preds]), model.classes)
    return Evaluation(model=model, per_scan=per_scan, pooled=pooled, predictions=preds, truths=truths)
