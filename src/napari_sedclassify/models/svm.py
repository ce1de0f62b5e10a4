"""SVM with an RBF kernel on RIA features (scikit-learn), probabilities by sigmoid calibration.

``SVC(probability=True)`` is deprecated in scikit-learn 1.9: the trained SVC is calibrated on the
validation split instead, in one piece (3-fold cross-validation without one, fewer folds for a class
of 2 frames). Training costs O(n²) and prediction grows with the support vectors, so at most
``max_train_samples`` frames are used (1600 frames predicted well under 0.5 s). Importing this
module imports scikit-learn.
"""

from __future__ import annotations

import itertools

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ._common import ProbaClassifier, calibrated, check_cancel, class_weights, sample_weights, stratified_subsample


def _calibration_folds(y) -> int:
    """Folds of the cross-validated calibration: 3, fewer when a class has fewer frames (each fold
    needs one of every class); a class of one frame is refused."""
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"class {classes[np.argmin(counts)]} has 1 training frame: the SVM calibrates its "
                         "probabilities by cross-validation, which needs at least 2 frames of every class")
    return int(min(3, counts.min()))


class SVMClassifier(ProbaClassifier, ClassifierMixin, BaseEstimator):
    """RBF support vector machine on feature vectors (n, n_features).

    C, gamma: SVC settings (gamma "scale" = 1 / (n_features * var)).
    search: tune C and gamma with RandomizedSearchCV (n_iter draws, 3-fold, weighted F1) on at
    most search_samples frames; "groups": a grid of C (``search_C``), gamma (``search_gamma``,
    factors on 1 / n_features) and class weights (``search_class_weight``; None: ``class_weight``)
    scored leaving out one of the ``groups`` given to :meth:`fit` at a time (e.g. the training
    sessions), keeping the setting whose worst left-out group scores best.
    max_train_samples: frames used to fit (stratified subsample; None = all).
    class_weight: "balanced" (default), a {class: weight} dict or None.
    """

    def __init__(self, C=10.0, gamma="scale", search=False, n_iter=12, search_samples=3000,
                 max_train_samples=6000, class_weight="balanced", random_state=0,
                 search_C=(1.0, 3.0, 10.0, 30.0), search_gamma=(0.3, 1.0, 3.0), search_class_weight=None):
        self.C = C
        self.gamma = gamma
        self.search = search
        self.n_iter = n_iter
        self.search_samples = search_samples
        self.max_train_samples = max_train_samples
        self.class_weight = class_weight
        self.random_state = random_state
        self.search_C = search_C
        self.search_gamma = search_gamma
        self.search_class_weight = search_class_weight

    def fit(self, X, y, *, validation_data=None, progress=None, cancel=None, groups=None):
        """Train on X (n, f), y (n,). validation_data (X_val, y_val) calibrates the probabilities.
        groups (n,): the group of every frame, used by ``search="groups"`` (ignored otherwise).

        progress(step, logs) is called after the search (if any) and after fitting; cancel()
        returning True between steps stops with :class:`~napari_sedclassify.errors.Cancelled`.
        """
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y)
        rng = np.random.default_rng(self.random_state)
        self.classes_ = np.unique(y)
        scaler = StandardScaler().fit(X)
        Xs = scaler.transform(X)
        cw = class_weights(y, self.class_weight)
        steps = 2 + bool(self.search)
        params = {"C": self.C, "gamma": self.gamma}
        check_cancel(cancel)
        if self.search == "groups":
            if groups is None or len(np.unique(groups)) < 2:
                raise ValueError('search="groups" needs the group of every training frame, at least two groups')
            params = self._group_search(Xs, y, np.asarray(groups), rng, cancel)
            cw = class_weights(y, params.pop("class_weight"))
        elif self.search:
            from scipy.stats import loguniform
            from sklearn.model_selection import RandomizedSearchCV

            idx = stratified_subsample(y, self.search_samples, rng)
            search = RandomizedSearchCV(
                SVC(kernel="rbf", class_weight=cw),
                {"C": loguniform(0.1, 1000.0), "gamma": loguniform(1e-3 / X.shape[1], 10.0 / X.shape[1])},
                n_iter=self.n_iter, cv=3, scoring="f1_weighted", random_state=self.random_state, n_jobs=1,
            ).fit(Xs[idx], y[idx])
            params = dict(search.best_params_)
            self.search_results_ = {"best_params": {k: float(v) for k, v in params.items()},
                                    "best_f1_weighted": float(search.best_score_)}
        if self.search:
            if progress is not None:
                progress(1, {"stage": "search", "max_epochs": steps, **self.search_results_})
            check_cancel(cancel)
        self.best_params_ = params
        idx = stratified_subsample(y, self.max_train_samples, rng)
        svc = SVC(kernel="rbf", C=params["C"], gamma=params["gamma"], class_weight=cw).fit(Xs[idx], y[idx])
        if progress is not None:
            progress(steps - 1, {"stage": "fit", "max_epochs": steps, "n_support": int(svc.n_support_.sum())})
        check_cancel(cancel)
        if validation_data is not None:
            calibrated_svm = calibrated(svc, scaler.transform(np.asarray(validation_data[0], dtype=np.float32)),
                                            np.asarray(validation_data[1]))
        else:
            # calibration by cross-validation (3 folds, fewer for a class of 2) with the class weights as
            # sample weights: the calibrator's folds re-encode the labels, which a class_weight dict keyed
            # by class id would no longer match
            calibrated_svm = CalibratedClassifierCV(
                SVC(kernel="rbf", C=params["C"], gamma=params["gamma"]), method="sigmoid",
                cv=_calibration_folds(y[idx]), ensemble=False,
            ).fit(Xs[idx], y[idx], sample_weight=sample_weights(y[idx], cw))
        self.pipeline_ = Pipeline([("scale", scaler), ("svm", calibrated_svm)])
        logs = {"stage": "calibrate", "max_epochs": steps, "n_support": int(svc.n_support_.sum())}
        if validation_data is not None:
            logs["val_accuracy"] = float(np.mean(self.predict(validation_data[0]) == np.asarray(validation_data[1])))
        self.history_ = [logs]
        if progress is not None:
            progress(steps, logs)
        return self

    def _group_search(self, Xs, y, groups, rng, cancel) -> dict:
        """C, gamma (and class_weight) whose worst left-out group scores best (weighted F1), ties by
        the mean."""
        from sklearn.metrics import f1_score

        idx = stratified_subsample(y, self.search_samples, rng)
        Xg, yg, gg = Xs[idx], y[idx], groups[idx]
        weightings = [self.class_weight] if self.search_class_weight is None else list(self.search_class_weight)
        rows = []
        for weighting, C, gf in itertools.product(weightings, self.search_C, self.search_gamma):
            gamma = float(gf) / Xs.shape[1]
            scores = []
            for g in np.unique(gg):
                check_cancel(cancel)
                tr, te = gg != g, gg == g
                svc = SVC(kernel="rbf", C=float(C), gamma=gamma,
                          class_weight=class_weights(yg[tr], weighting)).fit(Xg[tr], yg[tr])
                scores.append(f1_score(yg[te], svc.predict(Xg[te]), average="weighted"))
            rows.append({"C": float(C), "gamma": gamma, "class_weight": weighting,
                         "worst": float(np.min(scores)), "mean": float(np.mean(scores))})
        best = max(rows, key=lambda r: (round(r["worst"], 3), r["mean"]))
        chosen = {"C": best["C"], "gamma": best["gamma"], "class_weight": best["class_weight"]}
        self.search_results_ = {"best_params": chosen, "best_worst_group_f1": best["worst"],
                                "best_mean_group_f1": best["mean"], "grid": rows}
        return dict(chosen)
