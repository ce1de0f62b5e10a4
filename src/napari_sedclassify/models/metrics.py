"""Evaluation of class maps: confusion matrix, precision, recall, F1, accuracy, Jaccard.

The paper (its section 2.6) calls TP / (TP + FP + FN) the per-class "accuracy"; that is the
Jaccard index (intersection over union), reported here as ``jaccard``. ``accuracy`` here is
the usual fraction of correctly classified points (equal to the support-weighted recall, which
is what the paper's Table 1 shows as weighted accuracy).

Points labeled 0 (unlabeled) or predicted 0 (missing frame, not classified) are left out and
counted in ``n_excluded``. The metrics are a JSON-ready dict. numpy only; matplotlib is
imported by the plotting functions.
"""

from __future__ import annotations

import numpy as np

from ..classes import ClassTable
from ._atomic import atomic_path

_METRICS = ("precision", "recall", "f1", "jaccard")


def confusion_matrix(y_true, y_pred, labels) -> np.ndarray:
    """Counts (k, k): rows are true classes, columns predicted classes, in ``labels`` order."""
    labels = np.asarray(labels)
    index = {int(c): i for i, c in enumerate(labels.tolist())}
    k = len(labels)
    t = np.array([index.get(int(v), -1) for v in np.asarray(y_true).ravel()])
    p = np.array([index.get(int(v), -1) for v in np.asarray(y_pred).ravel()])
    ok = (t >= 0) & (p >= 0)
    return np.bincount(t[ok] * k + p[ok], minlength=k * k).reshape(k, k)


def _ratio(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def evaluate(y_true, y_pred, classes: ClassTable | None = None) -> dict:
    """Metrics of predicted against true class ids (any matching shapes, e.g. two class maps).

    Returns a JSON-ready dict: ``classes`` (ids and names), ``n`` (points compared),
    ``n_excluded``, ``confusion`` (counts) and ``confusion_normalised`` (rows sum to 1),
    ``per_class`` {name: precision, recall, f1, jaccard, support}, ``weighted`` (averages
    weighted by support, plus ``accuracy``), ``macro`` and ``accuracy``.
    """
    classes = classes or ClassTable.default()
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"true and predicted labels differ in size: {y_true.size} vs {y_pred.size}")
    keep = (y_true > 0) & (y_pred > 0)
    ids = classes.ids
    cm = confusion_matrix(y_true[keep], y_pred[keep], ids)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    jaccard = _ratio(tp, support + predicted - tp)
    n = int(cm.sum())
    per = {"precision": precision, "recall": recall, "f1": f1, "jaccard": jaccard}
    names = [classes.names[i] for i in ids]
    weighted = {m: float(np.sum(per[m] * support) / n) if n else 0.0 for m in _METRICS}
    present = support > 0
    macro = {m: float(per[m][present].mean()) if present.any() else 0.0 for m in _METRICS}
    accuracy = float(tp.sum() / n) if n else 0.0
    weighted["accuracy"] = accuracy
    return {
        "classes": [{"id": int(i), "name": nm} for i, nm in zip(ids, names)],
        "n": n,
        "n_excluded": int((~keep).sum()),
        "confusion": cm.tolist(),
        "confusion_normalised": _ratio(cm, support[:, None]).round(4).tolist(),
        "per_class": {
            nm: {**{m: float(per[m][j]) for m in _METRICS}, "support": int(support[j])} for j, nm in enumerate(names)
        },
        "weighted": weighted,
        "macro": macro,
        "accuracy": accuracy,
    }


def format_table(metrics: dict, title: str | None = None) -> str:
    """The metrics as a plain-text table, then the confusion matrix (rows true, columns predicted)."""
    names = [c["name"] for c in metrics["classes"]]
    w = max(12, max(len(n) for n in names) + 2)
    lines = [title] if title else []
    head = f"{'class':<{w}}{'precision':>10}{'recall':>8}{'F1':>8}{'Jaccard':>9}{'support':>9}"
    lines += [head, "-" * len(head)]
    for nm in names:
        m = metrics["per_class"][nm]
        lines.append(f"{nm:<{w}}{m['precision']:>10.3f}{m['recall']:>8.3f}{m['f1']:>8.3f}{m['jaccard']:>9.3f}"
                     f"{m['support']:>9d}")
    wt = metrics["weighted"]
    lines.append(f"{'weighted':<{w}}{wt['precision']:>10.3f}{wt['recall']:>8.3f}{wt['f1']:>8.3f}"
                 f"{wt['jaccard']:>9.3f}{metrics['n']:>9d}")
    lines.append(f"accuracy {metrics['accuracy']:.3f} on {metrics['n']} points"
                 + (f" ({metrics['n_excluded']} unlabeled or unclassified left out)" if metrics["n_excluded"] else ""))
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    cw = max(8, max(len(n) for n in names) + 1)
    lines.append(" " * w + "".join(f"{nm[:cw - 1]:>{cw}}" for nm in names))
    for nm, row in zip(names, metrics["confusion"]):
        lines.append(f"{nm:<{w}}" + "".join(f"{v:>{cw}d}" for v in row))
    return "\n".join(lines)


# ---- plots ----------------------------------------------------------------------------------


def _figure(*args, **kwargs):
    """A pyplot-free Figure (no GUI backend, safe in threads and without a display)."""
    from matplotlib.figure import Figure

    return Figure(*args, **kwargs)


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def class_colormap(classes: ClassTable):
    """A matplotlib ListedColormap and norm for class ids 0..max (0 transparent)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap, to_rgba

    top = max(classes.ids)
    colours = [to_rgba(classes.colours.get(i, "#00000000")) if i else (0, 0, 0, 0) for i in range(top + 1)]
    return ListedColormap(colours), BoundaryNorm(np.arange(top + 2) - 0.5, top + 1)


def plot_confusion(metrics: dict, path, title: str = "") -> None:
    """Confusion matrix: colour = fraction of each true class, text = count and fraction."""
    names = [c["name"].replace("_", " ") for c in metrics["classes"]]
    counts = np.asarray(metrics["confusion"])
    norm = np.asarray(metrics["confusion_normalised"])
    fig = _figure(figsize=(4.6, 4.0))
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{counts[i, j]}\n{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"weighted F1 {metrics['weighted']['f1']:.3f}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)


def plot_maps(true_map, pred_map, path, classes: ClassTable | None = None, integrated=None, title: str = "") -> None:
    """The paper's Fig. 6 layout: integrated image, true classes, predictions, differences (red)."""
    from matplotlib.patches import Patch

    classes = classes or ClassTable.default()
    cmap, norm = class_colormap(classes)
    true_map, pred_map = np.asarray(true_map), np.asarray(pred_map)
    wrong = (true_map > 0) & (pred_map > 0) & (true_map != pred_map)
    diff = np.zeros(true_map.shape + (4,))
    diff[(true_map > 0) & ~wrong] = (0.85, 0.85, 0.85, 1)
    diff[wrong] = (0.85, 0.1, 0.1, 1)
    panels = ([("integrated image", integrated)] if integrated is not None else []) + [
        ("true classes", true_map), ("predicted", pred_map),
        (f"differences ({int(wrong.sum())} of {int(((true_map > 0) & (pred_map > 0)).sum())})", diff)]
    fig = _figure(figsize=(3.0 * len(panels), 3.4))
    for k, (name, img) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        if name == "integrated image":
            ax.imshow(img, cmap="gray")
        elif img.ndim == 3:
            ax.imshow(img)
        else:
            ax.imshow(img, cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(color=classes.colours[i], label=classes.names[i].replace("_", " ")) for i in classes.ids]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(bottom=0.12)
    _save(fig, path)


def plot_overlay(integrated, class_map, path, classes: ClassTable | None = None, title: str = "",
                 alpha: float = 0.45) -> None:
    """The integrated image of a scan with its class map laid over it, and a legend."""
    from matplotlib.patches import Patch

    classes = classes or ClassTable.default()
    cmap, norm = class_colormap(classes)
    fig = _figure(figsize=(8.0, 4.2))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.imshow(integrated, cmap="gray")
    ax1.set_title("integrated image", fontsize=9)
    ax2.imshow(integrated, cmap="gray")
    ax2.imshow(np.asarray(class_map), cmap=cmap, norm=norm, alpha=alpha, interpolation="nearest")
    ax2.set_title("predicted classes", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(color=classes.colours[i], label=classes.names[i].replace("_", " ")) for i in classes.ids]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(bottom=0.12)
    _save(fig, path)


def plot_fig6(rows, path, classes: ClassTable | None = None, title: str = "") -> None:
    """The paper's Fig. 6 for several models and test scans: one row per (label, integrated
    image, true map, predicted map, metrics) with the integrated image, true classes,
    predictions, differences (red) and the row-normalised confusion matrix."""
    from matplotlib.patches import Patch

    classes = classes or ClassTable.default()
    cmap, norm = class_colormap(classes)
    names = [classes.names[i].replace("_", " ") for i in classes.ids]
    fig = _figure(figsize=(14.0, 2.9 * len(rows)))
    for r, (label, integrated, true_map, pred_map, metrics) in enumerate(rows):
        true_map, pred_map = np.asarray(true_map), np.asarray(pred_map)
        wrong = (true_map > 0) & (pred_map > 0) & (true_map != pred_map)
        diff = np.ones(true_map.shape + (4,))
        diff[wrong] = (0.85, 0.1, 0.1, 1)
        cm = np.asarray(metrics["confusion_normalised"])
        panels = [("integrated image", integrated, {"cmap": "gray"}),
                  ("true classes", true_map, {"cmap": cmap, "norm": norm, "interpolation": "nearest"}),
                  ("predicted", pred_map, {"cmap": cmap, "norm": norm, "interpolation": "nearest"}),
                  (f"differences: {int(wrong.sum())}", diff, {}),
                  (f"weighted F1 {metrics['weighted']['f1']:.3f}", cm, {"cmap": "Blues", "vmin": 0, "vmax": 1})]
        for c, (name, img, kw) in enumerate(panels):
            ax = fig.add_subplot(len(rows), 5, 5 * r + c + 1)
            ax.imshow(img, **kw)
            ax.set_title(name, fontsize=9)
            if c == 4:
                for i in range(len(names)):
                    for j in range(len(names)):
                        ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if cm[i, j] > 0.5 else "black")
                ax.set_xticks(range(len(names)), [n[:6] for n in names], fontsize=7)
                ax.set_yticks(range(len(names)), [n[:6] for n in names], fontsize=7)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=10)
    handles = [Patch(color=classes.colours[i], label=classes.names[i].replace("_", " ")) for i in classes.ids]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    height = 2.9 * len(rows)
    fig.subplots_adjust(bottom=0.5 / height + 0.02, top=1 - 0.85 / height, hspace=0.3)
    _save(fig, path)
