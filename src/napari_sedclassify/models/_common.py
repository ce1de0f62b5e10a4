"""Small helpers shared by the estimators (numpy only; scikit-learn is imported inside ``calibrated``)."""

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


class ProbaClassifier:
    """``predict_proba`` through the fitted ``pipeline_``; ``predict``: the most probable of ``classes_``."""

    def predict_proba(self, X):
        """Class probabilities (n, n_classes), columns in the order of ``classes_``."""
        return self.pipeline_.predict_proba(np.asarray(X, dtype=np.float32))

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def calibrated(estimator, X, y, method: str = "sigmoid"):
    """The fitted ``estimator``, frozen, calibrated on the held-out (X, y) by scikit-learn's
    CalibratedClassifierCV with one calibrator (ensemble=False: prediction stays one pass of the
    estimator), fitted on (X, y) in one piece: scikit-learn's default would split them in 5
    stratified folds, which only re-order the frozen estimator's outputs (the calibration is the
    same) and fail when a class has fewer than 5 frames there (a small scan). A class of the
    estimator missing from ``y`` is refused."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    y = np.asarray(y)
    if len(np.unique(y)) < len(estimator.classes_):
        raise ValueError(f"{len(estimator.classes_) - len(np.unique(y))} of the classes have no validation frame: the "
                         "probabilities are calibrated on frames held out from training, at least one of every class")
    whole = [(np.arange(0), np.arange(len(y)))]
    return CalibratedClassifierCV(FrozenEstimator(estimator), method=method, cv=whole, ensemble=False).fit(X, y)


def soft_vote(members, y):
    """One estimator whose probabilities are the mean of the fitted ``members``' (same kind, fitted
    on labels with the classes of ``y``): the first member, its ``pipeline_`` replaced by
    scikit-learn's soft VotingClassifier over every member's pipeline, each frozen (saved and loaded
    as scikit-learn types, like a single member's)."""
    from sklearn.ensemble import VotingClassifier
    from sklearn.frozen import FrozenEstimator

    first = members[0]
    y = np.asarray(y)
    vote = VotingClassifier([(f"member{i}", FrozenEstimator(m.pipeline_)) for i, m in enumerate(members)],
                            voting="soft")
    first.pipeline_ = vote.fit(np.zeros((len(y), 1), np.float32), y)  # frozen members: nothing is fitted again
    return first


def fit_epochs(run_epoch, max_epochs, patience, get_state, history: list, progress=None, cancel=None):
    """Train by ``run_epoch() -> logs`` (appended to ``history``) until ``max_epochs``, or ``patience``
    epochs without a better val_loss (loss without validation data); returns ``get_state()`` of the
    best epoch. progress(epoch, logs + max_epochs) after every epoch; cancel() as in check_cancel."""
    best, best_state, waited = np.inf, None, 0
    for epoch in range(1, int(max_epochs) + 1):
        check_cancel(cancel)
        logs = run_epoch()
        history.append(logs)
        if progress is not None:
            progress(epoch, {**logs, "max_epochs": int(max_epochs)})
        monitor = logs.get("val_loss", logs["loss"])
        if monitor < best - 1e-4:
            best, best_state, waited = monitor, get_state(), 0
        else:
            waited += 1
            if waited >= patience:
                break
    return best_state


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
