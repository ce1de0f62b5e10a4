"""CNN on central crops (Keras 3 on TensorFlow): six 3x3 convolution layers in three pairs, each
pair followed by 2x2 max pooling and dropout, a small dense layer and softmax; Adam,
cross-entropy, early stopping on the validation loss (best weights kept).

No global state, so it runs the same in a child process (``tf_process``: the napari widgets
train and predict there). TensorFlow uses a GPU when one is visible. Importing this module
imports scikit-learn (TensorFlow only in ``fit`` and loading).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from ..errors import Cancelled
from ._common import ProbaClassifier, check_cancel, class_weights, fit_epochs, stratified_subsample
from ._tf_child import quiet_tensorflow_start


def import_keras():
    """Import Keras 3 with the TensorFlow backend, quietly (``_tf_child.quiet_tensorflow_start``)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "keras" in sys.modules:
        return sys.modules["keras"]
    with quiet_tensorflow_start():
        import keras

    return keras


def build_cnn(input_shape, n_classes: int, filters=(8, 16, 32), dropout=0.1, dense_units=32,
              mean=0.0, variance=1.0):
    """The network: input (h, w, 1), or (h, w, c) when ``input_shape`` has three entries,
    standardised by (mean, variance) (scalars; per channel when given as sequences), 3 x [conv,
    conv, pool, dropout], dense, softmax over ``n_classes``."""
    keras = import_keras()
    from keras import layers

    model = keras.Sequential(name="sedclassify_cnn")
    shape = tuple(int(v) for v in input_shape)
    model.add(keras.Input(shape=shape if len(shape) == 3 else shape + (1,)))
    if np.ndim(mean) or np.ndim(variance):
        model.add(layers.Normalization(axis=-1, mean=[float(v) for v in np.ravel(mean)],
                                       variance=[float(v) for v in np.ravel(variance)]))
    else:
        model.add(layers.Normalization(axis=None, mean=float(mean), variance=float(variance)))
    for f in filters:
        model.add(layers.Conv2D(int(f), 3, padding="same", activation="relu"))
        model.add(layers.Conv2D(int(f), 3, padding="same", activation="relu"))
        model.add(layers.MaxPooling2D(2))
        model.add(layers.Dropout(dropout))
    model.add(layers.Flatten())
    model.add(layers.Dense(int(dense_units), activation="relu"))
    model.add(layers.Dense(int(n_classes), activation="softmax"))
    return model


#: Bytes of inputs read at once by :func:`mean_var` (float64: twice that while summed).
STATS_BLOCK_BYTES = 8 * 2**20


def mean_var(X: np.ndarray, per_channel: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the images X (n, h, w, c), over all values or per channel (last axis):
    as ``X.mean()``, ``X.var()`` but two passes over blocks of ``STATS_BLOCK_BYTES`` with float64
    sums, so that no temporary as large as X is made (X may be a file-backed array)."""
    axes = (0, 1, 2) if per_channel else None
    step = max(1, STATS_BLOCK_BYTES // max(1, X[:1].nbytes))
    blocks = [slice(start, start + step) for start in range(0, len(X), step)]
    count = X.size // X.shape[-1] if per_channel else X.size
    mean = sum(X[b].sum(axis=axes, dtype=np.float64) for b in blocks) / count
    var = sum(_squared_deviations(X[b], mean, axes) for b in blocks) / count
    return mean, var


def _squared_deviations(block: np.ndarray, mean, axes):
    """The sum of (block - mean)² over ``axes``, in float64, through one temporary."""
    d = block.astype(np.float64)
    d -= mean
    return np.square(d, out=d).sum(axis=axes)


def averaged(members):
    """One CNNClassifier whose network averages the softmax outputs of the fitted ``members``: a
    Keras model of standard layers (each member a sub-model, then ``Average``), saved as one
    .keras file and loaded in safe mode like a single network."""
    keras = import_keras()
    first = members[0]
    inp = keras.Input(shape=first.model_.input_shape[1:])
    nets = [keras.Model(m.model_.inputs[0], m.model_.outputs[0], name=f"member{i}") for i, m in enumerate(members)]
    first.model_ = keras.Model(inp, keras.layers.Average()([net(inp) for net in nets]),
                               name="sedclassify_cnn_ensemble")
    return first


def _cancel_callback(cancel):
    keras = import_keras()

    class CancelWithinEpoch(keras.callbacks.Callback):
        cancelled = False

        def on_train_batch_end(self, batch, logs=None):
            if cancel is not None and cancel():
                self.cancelled = True
                self.model.stop_training = True

    return CancelWithinEpoch()


class CNNClassifier(ProbaClassifier, ClassifierMixin, BaseEstimator):
    """Convolutional network on 2D crops X (n, h, w) (or (n, h, w, 1)).

    filters: channels of the three conv pairs. dropout: rate after every pooling (at 0.25, with
    class weights, the network predicted very differently in training and in use).
    dense_units: width of the dense layer. learning_rate: Adam step. batch_size, max_epochs,
    patience: as :func:`~._common.fit_epochs`. samples_per_epoch: crops drawn per epoch (None = all).
    class_weight: "sqrt" (default; full "balanced" weights made training swing towards the rare
    classes), "balanced", a dict or None.
    """

    def __init__(self, filters=(8, 16, 32), dropout=0.1, dense_units=32, learning_rate=5e-4,
                 batch_size=128, max_epochs=30, patience=6, samples_per_epoch=8000, class_weight="sqrt",
                 random_state=0):
        self.filters = filters
        self.dropout = dropout
        self.dense_units = dense_units
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.samples_per_epoch = samples_per_epoch
        self.class_weight = class_weight
        self.random_state = random_state

    @staticmethod
    def _images(X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        return X[..., None] if X.ndim == 3 else X

    def fit(self, X, y, *, validation_data=None, progress=None, cancel=None):
        """Train on crops X (n, h, w), labels y (n,). validation_data: (X_val, y_val).

        Every epoch sees a fresh stratified draw of ``samples_per_epoch`` training crops, so it
        costs the same whatever the data set size. progress(epoch, logs) after every epoch;
        cancel() returning True stops within a batch with :class:`~napari_sedclassify.errors.Cancelled`.
        """
        keras = import_keras()
        check_cancel(cancel)
        keras.utils.set_random_seed(int(self.random_state))
        rng = np.random.default_rng(self.random_state)
        X = self._images(X)
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        yi = np.searchsorted(self.classes_, y)
        cw = class_weights(y, self.class_weight)
        if X.shape[-1] == 1:  # one channel: one scalar standardisation (as every earlier model)
            mean, var = mean_var(X)
            shape, mean, var = X.shape[1:3], float(mean), float(var) or 1.0
        else:  # scan-context channels: each channel its own
            mean, var = mean_var(X, per_channel=True)
            shape, var = X.shape[1:], np.where(var > 0, var, 1.0)
        model = build_cnn(shape, len(self.classes_), self.filters, self.dropout, self.dense_units,
                          mean=mean, variance=var)
        model.compile(optimizer=keras.optimizers.Adam(self.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        val = None
        if validation_data is not None:
            val = (self._images(validation_data[0]), np.searchsorted(self.classes_, np.asarray(validation_data[1])))
        stopper = _cancel_callback(cancel)
        weights = {i: cw[c] for i, c in enumerate(self.classes_.tolist())}

        def run_epoch():
            idx = (np.arange(len(y)) if self.samples_per_epoch is None
                   else stratified_subsample(y, int(self.samples_per_epoch), rng))
            h = model.fit(X[idx], yi[idx], epochs=1, batch_size=int(self.batch_size), class_weight=weights,
                          callbacks=[stopper], verbose=0, shuffle=True)
            if stopper.cancelled:
                raise Cancelled("training cancelled")
            logs = {k: float(v[-1]) for k, v in h.history.items()}
            if val is not None:
                val_loss, val_acc = model.evaluate(val[0], val[1], batch_size=512, verbose=0)
                logs.update(val_loss=float(val_loss), val_accuracy=float(val_acc))
            return logs

        self.history_ = []
        best_weights = fit_epochs(run_epoch, self.max_epochs, self.patience, model.get_weights, self.history_,
                                  progress, cancel)
        if best_weights is not None:
            model.set_weights(best_weights)
        self.model_ = model
        return self

    def predict_proba(self, X, batch_size: int = 512):
        """Class probabilities (n, n_classes), columns in the order of ``classes_``."""
        X = self._images(X)
        if len(X) == 0:
            return np.zeros((0, len(self.classes_)), dtype=np.float32)
        return np.asarray(self.model_.predict(X, batch_size=batch_size, verbose=0))
