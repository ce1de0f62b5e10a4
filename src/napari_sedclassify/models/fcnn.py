"""FCNN on RIA features: one hidden layer (30 units, the paper's size), cross-entropy.

Backend: scikit-learn's ``MLPClassifier`` trained one epoch at a time with Adam
(``partial_fit``), which gives per-epoch progress, cancellation and early stopping on the
validation loss, predicts 1600 frames in about a millisecond and saves through skops without
any code execution. ``solver="lbfgs"`` trains in one call instead (closest to the paper's
conjugate-gradient full-batch training). Importing this module imports scikit-learn.
"""

from __future__ import annotations

import copy

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ._common import check_cancel, sample_weights


def _log_loss(proba, y, classes) -> float:
    idx = np.searchsorted(classes, y)
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), idx], 1e-12, 1.0))))


def _temperature_scaled(mlp, Xv, yv):
    """The trained network with its outputs temperature-scaled on (Xv, yv) (scikit-learn's
    CalibratedClassifierCV around the frozen network: prediction stays one pass). With two
    classes scikit-learn would read the probability of the second class as a logit, so a sigmoid
    on it (Platt scaling) is fitted instead."""
    import warnings

    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        if len(mlp.classes_) == 2:
            return CalibratedClassifierCV(FrozenEstimator(mlp), method="sigmoid", ensemble=False).fit(Xv, yv)
        # scikit-learn 1.9 label-encodes the targets for temperature scaling only when they are
        # strings (integer ids 1..k would index its loss out of range): zero-padded strings sort
        # like the integers, so the columns stay in the order of ``classes_``
        names = np.char.zfill(np.asarray(yv).astype(np.int64).astype(str), 9)
        return CalibratedClassifierCV(FrozenEstimator(mlp), method="temperature", ensemble=False).fit(Xv, names)


class FCNNClassifier(ClassifierMixin, BaseEstimator):
    """Fully connected network on feature vectors (n, n_features).

    hidden_units: width of the single hidden layer. solver: "adam" (epochs with early stopping)
    or "lbfgs" (one full-batch fit). learning_rate, alpha (L2), batch_size: Adam settings.
    max_epochs, patience: epochs at most, and without a better validation loss before stopping.
    class_weight: "balanced" (default), a {class: weight} dict or None.
    calibration: "temperature" (default): the softmax outputs are calibrated on the validation
        data by temperature scaling (one factor on the logits, fitted by log loss; the predicted
        class never changes), so that a probability of 0.9 means right about 9 times in 10 on
        such data; None: the raw softmax.
    """

    def __init__(self, hidden_units=30, solver="adam", learning_rate=1e-3, alpha=1e-4, batch_size=200,
                 max_epochs=200, patience=10, class_weight="balanced", random_state=0, calibration="temperature"):
        self.hidden_units = hidden_units
        self.solver = solver
        self.learning_rate = learning_rate
        self.alpha = alpha
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.class_weight = class_weight
        self.random_state = random_state
        self.calibration = calibration

    def fit(self, X, y, *, validation_data=None, progress=None, cancel=None):
        """Train on X (n, f), y (n,). validation_data: (X_val, y_val) for early stopping.

        progress(epoch, logs) is called after every epoch with loss, val_loss, val_accuracy and
        max_epochs; cancel() returning True stops with :class:`~napari_sedclassify.errors.Cancelled`.
        """
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        scaler = StandardScaler().fit(X)
        Xs = scaler.transform(X)
        sw = sample_weights(y, self.class_weight)
        mlp = MLPClassifier(
            hidden_layer_sizes=(int(self.hidden_units),), solver=self.solver, alpha=self.alpha,
            batch_size=min(int(self.batch_size), len(X)), learning_rate_init=self.learning_rate,
            max_iter=int(self.max_epochs), random_state=self.random_state,
        )
        if validation_data is not None:
            Xv, yv = scaler.transform(np.asarray(validation_data[0], dtype=np.float32)), np.asarray(validation_data[1])
        self.history_ = []
        check_cancel(cancel)
        if self.solver == "lbfgs":
            import warnings

            from sklearn.exceptions import ConvergenceWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                mlp.fit(Xs, y, sample_weight=sw)
            logs = {"loss": float(mlp.loss_), "max_epochs": 1}
            if validation_data is not None:
                pv = mlp.predict_proba(Xv)
                logs.update(val_loss=_log_loss(pv, yv, mlp.classes_),
                            val_accuracy=float(np.mean(mlp.classes_[pv.argmax(1)] == yv)))
            self.history_.append(logs)
            if progress is not None:
                progress(1, logs)
        else:
            from threadpoolctl import threadpool_limits

            # mini-batches of 200 x 96 are far too small for a multi-threaded BLAS: its threads only
            # spin and wait (20 epochs took 14 s with 2 threads on a busy 2-core machine, 4 s with 1)
            with threadpool_limits(1, user_api="blas"):
                self._fit_epochs(mlp, Xs, y, sw, Xv if validation_data is not None else None,
                                 yv if validation_data is not None else None, progress, cancel)
        self.pipeline_ = Pipeline([("scale", scaler), ("mlp", mlp)])
        if self.calibration not in (None, "none", "temperature"):
            raise ValueError(f"calibration must be 'temperature' or None, not {self.calibration!r}")
        counts = np.unique(yv, return_counts=True)[1] if validation_data is not None else np.zeros(0)
        # the calibrator splits the validation frames in 5 stratified folds: every class of the
        # network needs 5 of them there (a class missing from the validation frames: raw softmax)
        if (self.calibration == "temperature" and len(counts) == len(mlp.classes_) > 1
                and counts.min() >= 5):
            calibrated = _temperature_scaled(mlp, Xv, yv)
            self.pipeline_ = Pipeline([("scale", scaler), ("mlp", calibrated)])
            beta = getattr(calibrated.calibrated_classifiers_[0].calibrators[0], "beta_", None)
            if beta is not None:
                self.history_[-1]["temperature"] = float(1.0 / beta)
        elif self.calibration == "temperature" and self.history_:
            self.history_[-1]["temperature"] = None  # too few validation frames per class to calibrate
        self.n_epochs_ = len(self.history_)
        return self

    def _fit_epochs(self, mlp, X, y, sw, Xv, yv, progress, cancel):
        best, best_state, waited = np.inf, None, 0
        for epoch in range(1, int(self.max_epochs) + 1):
            check_cancel(cancel)
            mlp.partial_fit(X, y, classes=self.classes_, sample_weight=sw)
            logs = {"loss": float(mlp.loss_), "max_epochs": int(self.max_epochs)}
            monitor = logs["loss"]
            if Xv is not None:
                pv = mlp.predict_proba(Xv)
                logs["val_loss"] = monitor = _log_loss(pv, yv, mlp.classes_)
                logs["val_accuracy"] = float(np.mean(mlp.classes_[pv.argmax(1)] == yv))
            self.history_.append(logs)
            if progress is not None:
                progress(epoch, logs)
            if monitor < best - 1e-4:
                best, waited = monitor, 0
                best_state = (copy.deepcopy(mlp.coefs_), copy.deepcopy(mlp.intercepts_))
            else:
                waited += 1
                if waited >= self.patience:
                    break
        if best_state is not None:
            mlp.coefs_, mlp.intercepts_ = best_state

    def predict_proba(self, X):
        """Class probabilities (n, n_classes), columns in the order of ``classes_``."""
        return self.pipeline_.predict_proba(np.asarray(X, dtype=np.float32))

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
