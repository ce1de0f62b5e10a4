"""Classifiers (FCNN, SVM, CNN) with the scikit-learn estimator contract, metrics, model files.

Light on purpose: scikit-learn and TensorFlow are imported only by the submodules that need
them (``fcnn``, ``svm``, ``cnn``, ``persistence``), and only when those are imported.

- ``features``: feature recipes (RIA on a q axis, crops), normalisation and augmentation.
- ``fcnn``, ``svm``, ``cnn``: the estimators; ``make_estimator(kind)`` builds one by name.
- ``training``: training from labeled scans (hold-out, validation split, class weights).
- ``metrics``: confusion matrix, precision/recall/F1/Jaccard, tables and plots.
- ``persistence``: one model file per model (``.sedmodel`` zip), loaded without code execution.
- ``tf_process``: run TensorFlow work in a child process (napari + OpenGL safety; the child,
  ``_tf_child``, never re-imports the caller's ``__main__``).
"""

from __future__ import annotations

#: Model kinds and the feature kind each one eats.
MODEL_KINDS = {"fcnn": "ria", "svm": "ria", "cnn": "crop"}

__all__ = ["MODEL_KINDS", "make_estimator"]


def make_estimator(kind: str, **params):
    """A fresh, unfitted estimator of ``kind`` ("fcnn", "svm" or "cnn") with ``params``.

    "cnn" raises :class:`napari_sedclassify.optional.MissingOptionalDependency` (an ImportError
    whose message gives the pip command) when TensorFlow or Keras 3 is not installed."""
    kind = kind.lower()
    if kind == "fcnn":
        from .fcnn import FCNNClassifier as cls
    elif kind == "svm":
        from .svm import SVMClassifier as cls
    elif kind == "cnn":
        from ..optional import require_cnn

        require_cnn()  # a clear message with the pip command when TensorFlow / Keras 3 are missing
        from .cnn import CNNClassifier as cls
    else:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    return cls(**params)
