"""FCNN on RIA features: one hidden layer (30 units, the paper's size), cross-entropy.

Backend: scikit-learn's ``MLPClassifier`` trained one epoch at a time with Adam (per-epoch
progress, cancellation, early stopping); ``solver="lbfgs"`` trains in one call (closest to the
paper's full-batch training). Importing this module imports scikit-learn.
"""

from __future__ import annotations

import copy

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ._common import ProbaClassifier, calibrated, check_cancel, fit_epochs, sample_weights


def _log_loss(proba, y, classes) -> float:
    idx = np.searchsorted(classes, y)
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), idx], 1e-12, 1.0))))


def _temperature_scaled(mlp, Xv, yv):
    """The trained network with its outputs temperature-scaled on (Xv, yv) (prediction stays one
    pass). With two classes scikit-learn would read the probability of the second class as a
    logit, so a sigmoid on it (Platt scaling) is fitted instead."""
    if len(mlp.classes_) == 2:
        return calibrated(mlp, Xv, yv)
    # scikit-learn 1.9 label-encodes the targets for temperature scaling only when they are
    # strings (integer ids 1..k would index its loss out of range): zero-padded strings sort
    # like the integers, so the columns stay in the order of ``classes_``
    names = np.char.zfill(np.asarray(yv).astype(np.int64).astype(str), 9)
    return calibrated(mlp, Xv, names, "temperature")


#: Least validation frames of every class for the temperature to be fitted.
MIN_CALIBRATION_FRAMES = 2


class FCNNClassifier(ProbaClassifier, ClassifierMixin, BaseEstimator):
    """Fully connected network on feature vectors (n, n_features).

    hidden_units: width of the single hidden layer. solver: "adam" (epochs with early stopping)
    or "lbfgs" (one full-batch fit). learning_rate, alpha (L2), batch_size: Adam settings.
    max_epochs, patience: epochs at most, and without a better validation loss before stopping.
    class_weight: "balanced" (default), a {class: weight} dict or None.
    calibration: "temperature" (default): one factor on the logits fitted on the validation data
        (the predicted class never changes), so that 0.9 means right about 9 times in 10; None:
        the raw softmax.
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
        Xv = yv = None
        if validation_data is not None:
            Xv, yv = scaler.transform(np.asarray(validation_data[0], dtype=np.float32)), np.asarray(validation_data[1])

        def epoch_logs(max_epochs):
            logs = {"loss": float(mlp.loss_), "max_epochs": max_epochs}
            if Xv is not None:
                pv = mlp.predict_proba(Xv)
                logs.update(val_loss=_log_loss(pv, yv, mlp.classes_),
                            val_accuracy=float(np.mean(mlp.classes_[pv.argmax(1)] == yv)))
            return logs

        def run_epoch():
            mlp.partial_fit(Xs, y, classes=self.classes_, sample_weight=sw)
            return epoch_logs(int(self.max_epochs))

        self.history_ = []
        check_cancel(cancel)
        if self.solver == "lbfgs":
            import warnings

            from sklearn.exceptions import ConvergenceWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                mlp.fit(Xs, y, sample_weight=sw)
            self.history_.append(epoch_logs(1))
            if progress is not None:
                progress(1, self.history_[-1])
        else:
            from threadpoolctl import threadpool_limits

            # mini-batches of 200 x 96 are far too small for a multi-threaded BLAS: its threads only
            # spin and wait (20 epochs took 14 s with 2 threads on a busy 2-core machine, 4 s with 1)
            with threadpool_limits(1, user_api="blas"):
                best = fit_epochs(run_epoch, self.max_epochs, self.patience,
                                  lambda: copy.deepcopy((mlp.coefs_, mlp.intercepts_)), self.history_, progress, cancel)
            if best is not None:
                mlp.coefs_, mlp.intercepts_ = best
        if self.calibration not in (None, "none", "temperature"):
            raise ValueError(f"calibration must be 'temperature' or None, not {self.calibration!r}")
        counts = np.unique(yv, return_counts=True)[1] if yv is not None else np.zeros(0)
        # one temperature fitted on the validation frames: every class of the network needs 2 of
        # them there (a class missing from the validation frames, or seen once: raw softmax)
        if (self.calibration == "temperature" and len(counts) == len(mlp.classes_) > 1
                and counts.min() >= MIN_CALIBRATION_FRAMES):
            mlp = _temperature_scaled(mlp, Xv, yv)
            beta = getattr(mlp.calibrated_classifiers_[0].calibrators[0], "beta_", None)
            if beta is not None:
                self.history_[-1]["temperature"] = float(1.0 / beta)
        elif self.calibration == "temperature" and self.history_:
            self.history_[-1]["temperature"] = None  # too few validation frames per class to calibrate
        self.pipeline_ = Pipeline([("scale", scaler), ("mlp", mlp)])
        return self
