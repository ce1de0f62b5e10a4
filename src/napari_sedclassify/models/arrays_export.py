"""Reading a fitted estimator into plain arrays, once, when its model file is written (see
``arrays``, which applies them with numpy).

:func:`to_arrays` reads a scikit-learn pipeline: ``Pipeline``; ``StandardScaler``;
``MLPClassifier``; ``SVC`` with an RBF kernel; ``CalibratedClassifierCV`` with sigmoid or
temperature calibration; a soft ``VotingClassifier``; ``FrozenEstimator`` around any of them.
:func:`keras_to_arrays` reads the CNN: ``Normalization``, ``Conv2D`` with "same" padding,
``MaxPooling2D``, ``Dropout``, ``Flatten``, ``Dense``, and an ensemble's ``Average`` of member
networks. Anything else raises :class:`~.arrays.UnsupportedEstimator` (the model file then keeps
its own library's form only). Neither imports scikit-learn or Keras: they read fitted objects.
"""

from __future__ import annotations

import numpy as np

from .arrays import UnsupportedEstimator


def _name(obj) -> str:
    return type(obj).__name__


class _Arrays:
    """Named arrays collected while reading a pipeline."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, value) -> str:
        key = f"a{len(self.arrays)}"
        self.arrays[key] = np.array(value, copy=True)
        return key


def to_arrays(estimator) -> tuple[dict, dict[str, np.ndarray]]:
    """(description, arrays) of a fitted scikit-learn classifier pipeline; raises
    :class:`UnsupportedEstimator` for parts it cannot read."""
    store = _Arrays()
    return _read(estimator, store), store.arrays


def keras_to_arrays(model) -> tuple[dict, dict[str, np.ndarray]]:
    """(description, arrays) of a Keras network built by ``cnn.build_cnn`` (or ``cnn.averaged``);
    raises :class:`UnsupportedEstimator` for layers it cannot apply."""
    store = _Arrays()
    return _read_keras(model, store), store.arrays


def _weights(layer, store: _Arrays) -> list[str]:
    return [store.add(np.asarray(w)) for w in layer.get_weights()]


def _read_keras(model, store: _Arrays) -> dict:
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    if layers and type(layers[-1]).__name__ == "Average":
        members = layers[:-1]
        if not members or not all(hasattr(m, "layers") for m in members):
            raise UnsupportedEstimator("an Average of layers other than member networks")
        return {"type": "average", "members": [_read_keras(m, store) for m in members]}
    steps = []
    for layer in layers:
        kind = type(layer).__name__
        config = layer.get_config()
        if kind == "Normalization":
            mean, var = (np.asarray(layer.mean, np.float32), np.asarray(layer.variance, np.float32))
            steps.append({"type": "normalize", "mean": store.add(mean), "variance": store.add(var)})
        elif kind == "Conv2D":
            if (config["padding"] != "same" or tuple(config["strides"]) != (1, 1)
                    or tuple(config["dilation_rate"]) != (1, 1) or config.get("groups", 1) != 1
                    or config["data_format"] != "channels_last" or not config["use_bias"]):
                raise UnsupportedEstimator(f"Conv2D({config})")
            kernel, bias = _weights(layer, store)
            steps.append({"type": "conv2d", "kernel": kernel, "bias": bias, "activation": config["activation"]})
        elif kind == "MaxPooling2D":
            if (tuple(config["pool_size"]) != tuple(config["strides"]) or config["padding"] != "valid"
                    or config["data_format"] != "channels_last"):
                raise UnsupportedEstimator(f"MaxPooling2D({config})")
            steps.append({"type": "maxpool", "size": list(config["pool_size"])})
        elif kind == "Dropout":
            continue  # inactive when applying the network
        elif kind == "Flatten":
            steps.append({"type": "flatten"})
        elif kind == "Dense":
            if not config["use_bias"]:
                raise UnsupportedEstimator(f"Dense({config})")
            kernel, bias = _weights(layer, store)
            steps.append({"type": "dense", "kernel": kernel, "bias": bias, "activation": config["activation"]})
        else:
            raise UnsupportedEstimator(f"Keras layer {kind}")
    return {"type": "network", "steps": steps}


def _read(est, store: _Arrays) -> dict:
    kind = _name(est)
    if kind == "FrozenEstimator":
        return _read(est.estimator, store)
    if kind == "Pipeline":
        return {"type": "pipeline", "steps": [_read(step, store) for _, step in est.steps]}
    if kind == "StandardScaler":
        return {"type": "scale",
                "mean": None if est.mean_ is None else store.add(est.mean_),
                "scale": None if est.scale_ is None else store.add(est.scale_)}
    if kind == "MLPClassifier":
        return {"type": "mlp", "classes": est.classes_.tolist(), "activation": est.activation,
                "out_activation": est.out_activation_, "n_outputs": int(est.n_outputs_),
                "coefs": [store.add(c) for c in est.coefs_], "intercepts": [store.add(b) for b in est.intercepts_]}
    if kind == "SVC":
        if est.kernel != "rbf" or est.decision_function_shape != "ovr" or est.break_ties:
            raise UnsupportedEstimator(f"SVC(kernel={est.kernel!r}, decision_function_shape="
                                       f"{est.decision_function_shape!r}, break_ties={est.break_ties})")
        return {"type": "svc", "classes": est.classes_.tolist(), "gamma": store.add(est._gamma),
                "support_vectors": store.add(est.support_vectors_), "n_support": est._n_support.tolist(),
                "dual_coef": store.add(est._dual_coef_), "intercept": store.add(est._intercept_)}
    if kind == "CalibratedClassifierCV":
        members = []
        for member in est.calibrated_classifiers_:
            if member.method == "sigmoid":
                calibrators = [{"a": store.add(c.a_), "b": store.add(c.b_)} for c in member.calibrators]
            elif member.method == "temperature":
                calibrators = [{"beta": store.add(c.beta_)} for c in member.calibrators]
            else:
                raise UnsupportedEstimator(f"CalibratedClassifierCV(method={member.method!r})")
            inner = member.estimator
            classes = np.asarray(member.classes)
            members.append({"estimator": _read(inner, store), "method": member.method, "calibrators": calibrators,
                            "pos_class_indices": np.searchsorted(classes, inner.classes_).tolist()})
        return {"type": "calibrated", "classes": est.classes_.tolist(), "members": members}
    if kind == "VotingClassifier":
        if est.voting != "soft":
            raise UnsupportedEstimator(f"VotingClassifier(voting={est.voting!r})")
        weights = est._weights_not_none
        return {"type": "vote", "classes": est.classes_.tolist(), "weights": None if weights is None else list(weights),
                "members": [_read(member, store) for member in est.estimators_]}
    raise UnsupportedEstimator(kind)


def probe_crops(description: dict, arrays: dict, input_shape, n: int = 64, seed: int = 0) -> np.ndarray:
    """Crops (n, *input_shape) spread like the training crops (the network's normalization), on
    which a CNN's arrays are checked against Keras."""
    node = description
    while node["type"] == "average":
        node = node["members"][0]
    norm = next((step for step in node["steps"] if step["type"] == "normalize"), None)
    mean = arrays[norm["mean"]] if norm else np.float32(0)
    std = np.sqrt(arrays[norm["variance"]]) if norm else np.float32(1)
    rng = np.random.default_rng(seed)
    crops = rng.normal(0.0, 1.0, (n, *input_shape)).astype(np.float32)
    shaped = crops if crops.ndim == 4 else crops[..., None]
    return (mean + std * shaped).reshape(crops.shape).astype(np.float32)


def probe_inputs(description: dict, arrays: dict, n: int = 256, seed: int = 0) -> np.ndarray:
    """Feature vectors spread like the training data (from the first scaler's mean and scale):
    the inputs on which the arrays are checked against scikit-learn."""
    node = description
    while node["type"] in ("pipeline", "vote", "calibrated"):
        node = {"pipeline": lambda d: d["steps"][0], "vote": lambda d: d["members"][0],
                "calibrated": lambda d: d["members"][0]["estimator"]}[node["type"]](node)
    if node["type"] != "scale" or node["mean"] is None:
        raise UnsupportedEstimator("no scaler to draw probe inputs from")
    mean = arrays[node["mean"]]
    scale = arrays[node["scale"]] if node["scale"] is not None else np.ones_like(mean)
    rng = np.random.default_rng(seed)
    return (mean + scale * rng.normal(0.0, 1.5, (n, len(mean)))).astype(np.float32)
