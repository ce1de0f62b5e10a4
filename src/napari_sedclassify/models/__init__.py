"""Classifiers (FCNN, SVM, CNN) with the scikit-learn estimator contract, metrics, model files.

``features`` (recipes, augmentation), ``fcnn``/``svm``/``cnn`` (the estimators), ``training``,
``inference``, ``metrics``, ``persistence`` (``.sedmodel`` files) and ``tf_process`` (jobs in a
child process). scikit-learn and TensorFlow are imported only by the submodules that need them.
"""

from __future__ import annotations

#: Model kinds and the feature kind each one eats.
MODEL_KINDS = {"fcnn": "ria", "svm": "ria", "cnn": "crop"}

__all__ = ["MODEL_KINDS", "check_kind", "make_estimator"]


def check_kind(kind: str) -> str:
    """``kind`` in lower case, checked: a ValueError for an unknown kind; for "cnn" without TensorFlow
    and Keras 3, :class:`~napari_sedclassify.optional.MissingOptionalDependency` (with the pip command)."""
    kind = kind.lower()
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    if kind == "cnn":
        from ..optional import require_cnn

        require_cnn()
    return kind


def make_estimator(kind: str, **params):
    """A fresh, unfitted estimator of ``kind`` ("fcnn", "svm" or "cnn") with ``params`` (see :func:`check_kind`)."""
    kind = check_kind(kind)
    if kind == "fcnn":
        from .fcnn import FCNNClassifier as cls
    elif kind == "svm":
        from .svm import SVMClassifier as cls
    else:
        from .cnn import CNNClassifier as cls
    return cls(**params)
