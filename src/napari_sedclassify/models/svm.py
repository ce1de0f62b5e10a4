"""SVM with an RBF kernel on RIA features (scikit-learn), probabilities by sigmoid calibration.

``SVC(probability=True)`` is deprecated in scikit-learn 1.9; probabilities come instead from
``CalibratedClassifierCV`` fitted on the validation split around the already trained SVC
(``FrozenEstimator``), or by 3-fold cross-validation when no validation data are given.
A kernel SVM costs O(n²) to train and its prediction grows with the support vectors, so at
most ``max_train_samples`` frames (stratified) are used: that keeps prediction of 1600 frames
well under 0.5 s. ``search=True`` runs ``RandomizedSearchCV`` over C and gamma first.
Importing this module imports scikit-learn.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ._common import check_cancel, class_weights, stratified_subsample


class SVMClassifier(ClassifierMixin, BaseEstimator):
    """RBF support vector machine on feature vectors (n, n_features).

    C, gamma: SVC settings (gamma "scale" = 1 / (n_features * var)).
    search: tune C and gamma with RandomizedSearchCV (n_iter draws, 3-fold, weighted F1) on at
    most search_samples frames. max_train_samples: frames used to fit (stratified subsample;
    None = all).
    class_weight: "balanced" (default), a {class: weight} dict or None.
    """

    def __init__(self, C=10.0, gamma="scale", search=False, n_iter=12, search_samples=3000,
                 max_train_samples=6000, class_weight="balanced", random_state=0):
        self.C = C
        self.gamma = gamma
        self.search = search
        self.n_iter = n_iter
        self.search_samples = search_samples
        self.max_train_samples = max_train_samples
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X, y, *, validation_data=None, progress=None, cancel=None):
        """Train on X (n, f), y (n,). validation_data (X_val, y_val) calibrates the probabilities.

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
        step = 0
        params = {"C": self.C, "gamma": self.gamma}
        check_cancel(cancel)
        if self.search:
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
            step += 1
            if progress is not None:
                progress(step, {"stage": "search", "max_epochs": steps, **self.search_results_})
            check_cancel(cancel)
        self.best_params_ = params
        idx = stratified_subsample(y, self.max_train_samples, rng)
        svc = SVC(kernel="rbf", C=params["C"], gamma=params["gamma"], class_weight=cw).fit(Xs[idx], y[idx])
        step += 1
        if progress is not None:
            progress(step, {"stage": "fit", "max_epochs": steps, "n_support": int(svc.n_support_.sum())})
        check_cancel(cancel)
        if validation_data is not None:
            # The SVC is frozen, so the folds only split the validation frames among the
            # calibrators; one calibrator (ensemble=False) keeps prediction to one SVC pass.
            Xv = scaler.transform(np.asarray(validation_data[0], dtype=np.float32))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
                calibrated = CalibratedClassifierCV(FrozenEstimator(svc), method="sigmoid", ensemble=False).fit(
                    Xv, validation_data[1])
        else:
            # class weights as sample weights: the calibrator's folds re-encode the labels, which a
            # class_weight dict keyed by class id would no longer match
            weights = None if cw is None else np.array([cw[c] for c in y[idx]], dtype=np.float64) \
                if isinstance(cw, dict) else None
            calibrated = CalibratedClassifierCV(
                SVC(kernel="rbf", C=params["C"], gamma=params["gamma"],
                    class_weight=cw if not isinstance(cw, dict) else None),
                method="sigmoid", cv=3, ensemble=False,
            ).fit(Xs[idx], y[idx], sample_weight=weights)
        self.pipeline_ = Pipeline([("scale", scaler), ("svm", calibrated)])
        logs = {"stage": "calibrate", "max_epochs": steps, "n_support": int(svc.n_support_.sum())}
        if validation_data is not None:
            logs["val_accuracy"] = float(np.mean(self.predict(validation_data[0]) == np.asarray(validation_data[1])))
        self.history_ = [logs]
        if progress is not None:
            progress(steps, logs)
        return self

    def predict_proba(self, X):
        """Class probabilities (n, n_classes), columns in the order of ``classes_``."""
        return self.pipeline_.predict_proba(np.asarray(X, dtype=np.float32))

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
