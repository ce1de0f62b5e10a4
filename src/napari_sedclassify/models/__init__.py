"""Classifiers (FCNN, SVM, CNN) with the scikit-learn estimator contract, metrics, model files.

TensorFlow and scikit-learn are imported inside the functions that need them.
"""
