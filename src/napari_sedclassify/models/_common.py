"""Small helpers shared by the estimators (numpy only)."""

from __future__ import annotations

import numpy as np

from ..errors import Cancelled


def class_weights(y, class_weight) -> dict:
    """{class: weight}: "balanced" gives n / (k n_c), "sqrt" its square root (a milder boost of
    rare classes, steadier for networks trained by gradient steps), a dict is used as given,
    None gives 1."""
    classes, counts = np.unique(y, return_counts=True)
    if class_weight is None:
        return {c: 1.0 for c in classes.tolist()}
    if class_weight in ("balanced", "sqrt"):
        power = 1.0 if class_weight == "balanced" else 0.5
        return {c: (len(y) / (len(classes) * n)) ** power for c, n in zip(classes.tolist(), counts.tolist())}
    if isinstance(class_weight, dict):
        return {c: float(class_weight.get(c, 1.0)) for c in classes.tolist()}
    raise ValueError(f"class_weight must be 'balanced', 'sqrt', a dict or None, not {class_weight!r}")


def sample_weights(y, class_weight) -> np.ndarray:
    w = class_weights(y, class_weight)
    return np.array([w[c] for c in np.asarray(y).tolist()], dtype=np.float64)


def check_cancel(cancel) -> None:
    if cancel is not None and cancel():
        raise Cancelled("training cancelled")


def stratified_subsample(y, n_max: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``n_max`` samples keeping the class proportions (all when fewer or
    when n_max is None)."""
    y = np.asarray(y)
    if n_max is None or len(y) <= n_max:
        return np.arange(len(y))
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(1, int(round(n_max * len(idx) / len(y))))
        keep.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(keep))
