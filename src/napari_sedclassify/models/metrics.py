"""Evaluation of class maps (numbers from ``sklearn.metrics``), tables and figures.

The paper's per-class "accuracy" TP / (TP + FP + FN) (its section 2.6) is the Jaccard index,
``jaccard`` here; ``accuracy`` is the fraction of correctly classified points (the
support-weighted recall, the paper's Table 1 weighted accuracy). Points labeled 0 (unlabeled),
predicted 0 (not classified), or either with an id outside the class table are left out and
counted in ``n_excluded``, so that every number describes the points of the confusion matrix.
scikit-learn and matplotlib are imported inside the functions.
"""

from __future__ import annotations

import numpy as np

from ..classes import ClassTable
from ..io.atomic import atomic_path

_METRICS = ("precision", "recall", "f1", "jaccard")


def confusion_matrix(y_true, y_pred, labels) -> np.ndarray:
    """Counts (k, k): rows are true classes, columns predicted classes, in ``labels`` order; points
    whose true or predicted value is not in ``labels`` are left out."""
    from sklearn import metrics as skm

    labels = np.asarray(labels)
    t, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    ok = np.isin(t, labels) & np.isin(p, labels)
    if not ok.any():  # scikit-learn refuses a matrix without any true label
        return np.zeros((len(labels), len(labels)), dtype=np.int64)
    return skm.confusion_matrix(t[ok], p[ok], labels=labels)


def evaluate(y_true, y_pred, classes: ClassTable | None = None) -> dict:
    """Metrics of predicted against true class ids (any matching shapes, e.g. two class maps).

    Returns a JSON-ready dict: ``classes`` (ids and names), ``n`` (points compared),
    ``n_excluded``, ``confusion`` (counts) and ``confusion_normalised`` (rows sum to 1),
    ``per_class`` {name: precision, recall, f1, jaccard, support}, ``weighted`` (averages
    weighted by support, plus ``accuracy``), ``macro`` (over the classes present) and ``accuracy``.
    """
    from sklearn import metrics as skm

    classes = classes or ClassTable.default()
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"true and predicted labels differ in size: {y_true.size} vs {y_pred.size}")
    ids = list(classes.ids)
    keep = np.isin(y_true, ids) & np.isin(y_pred, ids)
    t, p = y_true[keep], y_pred[keep]
    cm = confusion_matrix(t, p, ids)
    support = cm.sum(axis=1)
    n = int(cm.sum())
    per, accuracy = dict.fromkeys(_METRICS, np.zeros(len(ids))), 0.0
    if n:  # scikit-learn refuses empty inputs
        prf = skm.precision_recall_fscore_support(t, p, labels=ids, average=None, zero_division=0)[:3]
        per = dict(zip(_METRICS, (*prf, skm.jaccard_score(t, p, labels=ids, average=None, zero_division=0))))
        accuracy = float(skm.accuracy_score(t, p))
    names = [classes.names[i] for i in ids]
    weighted = {m: float(np.sum(per[m] * support) / n) if n else 0.0 for m in _METRICS}
    present = support > 0
    macro = {m: float(per[m][present].mean()) if present.any() else 0.0 for m in _METRICS}
    weighted["accuracy"] = accuracy
    return {
        "classes": [{"id": int(i), "name": nm} for i, nm in zip(ids, names)],
        "n": n,
        "n_excluded": int((~keep).sum()),
        "confusion": cm.tolist(),
        "confusion_normalised": np.divide(cm, support[:, None], out=np.zeros(cm.shape),
                                          where=support[:, None] > 0).tolist(),
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
    rows = [(nm, metrics["per_class"][nm], metrics["per_class"][nm]["support"]) for nm in names]
    for nm, m, n in rows + [("weighted", metrics["weighted"], metrics["n"])]:
        lines.append(f"{nm:<{w}}{m['precision']:>10.3f}{m['recall']:>8.3f}{m['f1']:>8.3f}{m['jaccard']:>9.3f}{n:>9d}")
    lines.append(f"accuracy {metrics['accuracy']:.3f} on {metrics['n']} points"
                 + (f" ({metrics['n_excluded']} unlabeled, unclassified or of an unknown class left out)"
                    if metrics["n_excluded"] else ""))
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


def _legend_and_save(fig, path, classes: ClassTable, title: str, fontsize: int = 8, **adjust) -> None:
    """The class colours as a legend under the panels and the title above them; then
    ``fig.subplots_adjust(**adjust)`` and save."""
    from matplotlib.patches import Patch

    handles = [Patch(color=classes.colours[i], label=classes.names[i].replace("_", " ")) for i in classes.ids]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=fontsize, frameon=False)
    if title:
        fig.suptitle(title, fontsize=fontsize + 2)
    fig.subplots_adjust(**adjust)
    _save(fig, path)


def class_colormap(classes: ClassTable):
    """A matplotlib ListedColormap and norm for class ids 0..max (0 transparent)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap, to_rgba

    top = max(classes.ids)
    colours = [to_rgba(classes.colours.get(i, "#00000000")) if i else (0, 0, 0, 0) for i in range(top + 1)]
    return ListedColormap(colours), BoundaryNorm(np.arange(top + 2) - 0.5, top + 1)


def plot_confusion(metrics: dict, path, title: str = "") -> None:
    """Confusion matrix (scikit-learn's ConfusionMatrixDisplay): colour = fraction of each true
    class, text = count and fraction."""
    from sklearn.metrics import ConfusionMatrixDisplay

    names = [c["name"].replace("_", " ") for c in metrics["classes"]]
    counts = np.asarray(metrics["confusion"])
    norm = np.asarray(metrics["confusion_normalised"])
    fig = _figure(figsize=(4.6, 4.0))
    ax = fig.add_subplot()
    disp = ConfusionMatrixDisplay(norm, display_labels=names)
    disp.plot(ax=ax, cmap="Blues", colorbar=True, xticks_rotation=30, values_format=".2f",
              im_kw={"vmin": 0, "vmax": 1}, text_kw={"fontsize": 8})
    for (i, j), text in np.ndenumerate(disp.text_):
        text.set_text(f"{counts[i, j]}\n{norm[i, j]:.2f}")
        text.set_color("white" if norm[i, j] > 0.5 else "black")  # on the fixed 0..1 colour scale
    ax.tick_params(labelsize=8)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title or f"weighted F1 {metrics['weighted']['f1']:.3f}", fontsize=9)
    _save(fig, path)


def plot_maps(true_map, pred_map, path, classes: ClassTable | None = None, integrated=None, title: str = "") -> None:
    """The paper's Fig. 6 layout: integrated image, true classes, predictions, differences (red)."""
    classes = classes or ClassTable.default()
    cmap, norm = class_colormap(classes)
    true_map, pred_map = np.asarray(true_map), np.asarray(pred_map)
    wrong = (true_map > 0) & (pred_map > 0) & (true_map != pred_map)
    diff = np.zeros(true_map.shape + (4,))
    diff[(true_map > 0) & ~wrong] = (0.85, 0.85, 0.85, 1)
    diff[wrong] = (0.85, 0.1, 0.1, 1)
    class_kw = {"cmap": cmap, "norm": norm, "interpolation": "nearest"}
    panels = ([("integrated image", integrated, {"cmap": "gray"})] if integrated is not None else []) + [
        ("true classes", true_map, class_kw), ("predicted", pred_map, class_kw),
        (f"differences ({int(wrong.sum())} of {int(((true_map > 0) & (pred_map > 0)).sum())})", diff, {})]
    fig = _figure(figsize=(3.0 * len(panels), 3.4))
    for k, (name, img, kw) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.imshow(img, **kw)
        ax.set_title(name, fontsize=9)
        ax.set(xticks=[], yticks=[])
    _legend_and_save(fig, path, classes, title, bottom=0.12)


def plot_overlay(integrated, class_map, path, classes: ClassTable | None = None, title: str = "",
                 alpha: float = 0.45) -> None:
    """The integrated image of a scan beside it with its class map laid over it, a legend and a
    title, as a PNG drawn with Pillow: one scan point is a block of whole screen pixels, and
    ``sedclassify predict`` does not import matplotlib for it (about 1 s of its start-up)."""
    from PIL import Image, ImageColor, ImageDraw, ImageFont

    classes = classes or ClassTable.default()
    img = np.asarray(integrated, dtype=np.float64)
    cmap = np.asarray(class_map)
    finite = img[np.isfinite(img)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    grey = np.clip((np.nan_to_num(img, nan=lo) - lo) / (hi - lo if hi > lo else 1.0), 0, 1)[..., None] * np.ones(3)
    over = grey.copy()
    for i in classes.ids:
        rgba = ImageColor.getrgb(classes.colours.get(i, "#000000"))
        colour = np.asarray(rgba[:3], dtype=np.float64) / 255.0
        where = cmap == i
        over[where] = (1 - alpha) * grey[where] + alpha * colour
    scale = max(1, 360 // max(img.shape))  # whole screen pixels per scan point
    font = _font(ImageFont, 13)
    small = _font(ImageFont, 12)
    h, w = img.shape[0] * scale, img.shape[1] * scale
    pad, head = 12, 44 if title else 24
    legend = [(classes.names[i].replace("_", " "), ImageColor.getrgb(classes.colours.get(i, "#000000"))[:3])
              for i in classes.ids]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wide = max(3 * pad + 2 * w, 2 * pad + int(measure.textlength(title, font=font)),
               pad + sum(35 + int(measure.textlength(name, font=small)) for name, _ in legend))
    canvas = Image.new("RGB", (wide, head + h + 40), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 6), title, fill="black", font=font)
    for k, (name, panel) in enumerate((("integrated image", grey), ("predicted classes", over))):
        x0 = pad + k * (w + pad)
        tile = Image.fromarray(np.round(255 * panel).astype(np.uint8), "RGB").resize((w, h), Image.NEAREST)
        canvas.paste(tile, (x0, head))
        draw.text((x0, head - 17), name, fill="black", font=small)
    x, y = pad, head + h + 12
    for name, colour in legend:
        draw.rectangle((x, y + 2, x + 12, y + 14), fill=colour)
        draw.text((x + 17, y), name, fill="black", font=small)
        x += 17 + int(draw.textlength(name, font=small)) + 18
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def _font(image_font, size: int):
    """Pillow's own scalable font (Pillow >= 10.1), else its small bitmap font."""
    try:
        return image_font.load_default(size=size)
    except (TypeError, OSError):
        return image_font.load_default()


def plot_fig6(rows, path, classes: ClassTable | None = None, title: str = "") -> None:
    """The paper's Fig. 6 for several models and test scans: one row per (label, integrated
    image, true map, predicted map, metrics) with the integrated image, true classes,
    predictions, differences (red) and the row-normalised confusion matrix."""
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
        class_kw = {"cmap": cmap, "norm": norm, "interpolation": "nearest"}
        panels = [("integrated image", integrated, {"cmap": "gray"}), ("true classes", true_map, class_kw),
                  ("predicted", pred_map, class_kw),
                  (f"differences: {int(wrong.sum())}", diff, {}),
                  (f"weighted F1 {metrics['weighted']['f1']:.3f}", cm, {"cmap": "Blues", "vmin": 0, "vmax": 1})]
        for c, (name, img, kw) in enumerate(panels):
            ax = fig.add_subplot(len(rows), 5, 5 * r + c + 1)
            ax.imshow(img, **kw)
            ax.set_title(name, fontsize=9)
            if c == 4:
                for (i, j), v in np.ndenumerate(cm):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v > 0.5 else "black")
                ax.set_xticks(range(len(names)), [n[:6] for n in names], fontsize=7)
                ax.set_yticks(range(len(names)), [n[:6] for n in names], fontsize=7)
            else:
                ax.set(xticks=[], yticks=[])
            if c == 0:
                ax.set_ylabel(label, fontsize=10)
    height = 2.9 * len(rows)
    _legend_and_save(fig, path, classes, title, 9, bottom=0.5 / height + 0.02, top=1 - 0.85 / height, hspace=0.3)


def reliability(y_true, probabilities, class_ids, n_bins: int = 10) -> dict:
    """How well the top-class probabilities are calibrated.

    y_true: true class ids (any shape, 0 = unlabeled, left out); probabilities: (..., k) for
    ``class_ids`` (NaN rows left out). ``bins``: count, mean confidence and accuracy per bin of
    top-class probability; ``ece``: their count-weighted mean |accuracy - confidence|, ``mce``:
    its largest bin value. ``curve``: per threshold t, the fraction of frames kept (top probability
    >= t), their accuracy and amorphous-ice (class 2) precision and recall (``--uncertain-below t``).
    """
    y = np.asarray(y_true).ravel()
    p = np.asarray(probabilities, dtype=np.float64).reshape(y.size, -1)
    ok = (y > 0) & np.isfinite(p).all(axis=1)
    y, p = y[ok], p[ok]
    ids = np.asarray(class_ids)
    pred = ids[np.argmax(p, axis=1)] if len(p) else np.zeros(0, dtype=ids.dtype)
    conf = p.max(axis=1) if len(p) else np.zeros(0)
    right = pred == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        sel = which == b
        n = int(sel.sum())
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": n,
                     "confidence": float(conf[sel].mean()) if n else None,
                     "accuracy": float(right[sel].mean()) if n else None})
    gaps = [(b["count"], abs(b["accuracy"] - b["confidence"])) for b in bins if b["count"]]
    total = sum(c for c, _ in gaps)
    curve = []
    for t in (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        keep = conf >= t
        row = {"threshold": t, "kept": float(keep.mean()) if len(keep) else 0.0,
               "accuracy": float(right[keep].mean()) if keep.any() else None}
        if 2 in ids:
            sel = keep & (pred == 2)
            row["amorphous_ice_precision"] = float((y[sel] == 2).mean()) if sel.any() else None
            row["amorphous_ice_recall"] = float(((pred == 2) & keep & (y == 2)).sum() / max((y == 2).sum(), 1))
        curve.append(row)
    return {"n": int(len(y)), "bins": bins, "ece": float(sum(c * g for c, g in gaps) / total) if total else None,
            "mce": float(max(g for _, g in gaps)) if gaps else None, "curve": curve}


def plot_reliability(curves: dict, path, title: str = "", min_count: int = 5) -> None:
    """Reliability diagram: accuracy against confidence per bin (of ``min_count`` frames or more) for
    each {label: reliability()}, with the frame counts per bin beside it."""
    fig = _figure(figsize=(8.4, 4.0))
    ax, axh = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    for label, r in curves.items():
        pts = [(b["confidence"], b["accuracy"]) for b in r["bins"] if b["count"] >= max(min_count, 1)]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker="o", ms=4, label=f"{label} (ECE {r['ece']:.3f})")
        centres = [(b["low"] + b["high"]) / 2 for b in r["bins"]]
        axh.plot(centres, [max(b["count"], 0.5) for b in r["bins"]], marker=".", label=label)
    ax.set(xlabel="confidence (probability of the predicted class)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="upper left")
    axh.set(yscale="log", xlabel="confidence", ylabel="frames per bin", xlim=(0, 1))
    for a in (ax, axh):
        a.tick_params(labelsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
