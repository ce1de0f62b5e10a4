"""A trained model (FCNN, SVM, CNN) as plain arrays, applied with numpy alone.

Applying a model needs neither scikit-learn, skops nor TensorFlow: importing them costs a
command 2-3 s (skops lists every scikit-learn estimator when imported) or 5-10 s, more than
preprocessing and classifying a 40 x 40 scan. ``arrays_export`` reads a fitted estimator once,
when its model file is written, into a JSON description and named arrays; :class:`ArrayPipeline`
computes the same probabilities from them: the scaler, the MLP's forward pass, libsvm's
one-vs-one decision values in scikit-learn's one-vs-rest shape, sigmoid and temperature
calibration as scikit-learn applies them, soft voting; the CNN's normalization, "same"
convolutions, max pooling, dense layers and an ensemble's average. ``persistence.save_model``
checks that they agree with the estimator's own probabilities on probe inputs before writing
them, so a library whose internals change cannot write wrong arrays.
"""

from __future__ import annotations

import io

import numpy as np

#: Largest difference allowed between these probabilities and scikit-learn's on the probe inputs.
AGREEMENT_ATOL = 1e-5
#: The same for a network against Keras (float32 sums of thousands of products, in another order).
NETWORK_AGREEMENT_ATOL = 1e-4


class UnsupportedEstimator(TypeError):
    """A part of an estimator that cannot be read into arrays, or applied from them."""


def _expit(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _softmax_rows(x):
    x = x - x.max(axis=1)[:, None]
    np.exp(x, out=x)
    x /= x.sum(axis=1)[:, None]
    return x


_HIDDEN = {"relu": lambda a: np.maximum(a, 0, out=a), "tanh": lambda a: np.tanh(a, out=a),
           "logistic": _expit, "identity": lambda a: a}


def _ovr_decision(predictions, confidences, n_classes):
    """One-vs-rest decision values from one-vs-one ones: votes plus a confidence in (-1/3, 1/3)."""
    n = predictions.shape[0]
    votes = np.zeros((n, n_classes))
    confidence = np.zeros((n, n_classes))
    k = 0
    for i in range(n_classes):
        for j in range(i + 1, n_classes):
            confidence[:, i] -= confidences[:, k]
            confidence[:, j] += confidences[:, k]
            votes[predictions[:, k] == 0, i] += 1
            votes[predictions[:, k] == 1, j] += 1
            k += 1
    return votes + confidence / (3 * (np.abs(confidence) + 1))


def _logits(values):
    """Temperature scaling's logits: log-probabilities for probabilities, (-x, x) for one column."""
    if values.ndim == 1 or values.shape[1] == 1:
        x = values.reshape(-1)
        return np.stack([-x, x], axis=1)
    probabilities = (np.all((values >= 0) & (values <= 1))
                     and np.all(np.isclose(values.sum(axis=1), np.asarray(1.0, dtype=values.dtype))))
    return np.log(values + 1e-12) if probabilities else values


def _conv2d_same(a, kernel):
    """Keras' Conv2D with "same" padding, stride 1, channels last: a (n, h, w, cin), kernel
    (kh, kw, cin, cout) -> (n, h, w, cout); one product per kernel offset."""
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = a.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    padded = np.pad(a, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
    if cin == 1:  # the input crops: every offset's pixel side by side, one product
        cols = np.empty((n, h, w, kh * kw), np.float32)
        for i in range(kh):
            for j in range(kw):
                cols[..., i * kw + j] = padded[:, i:i + h, j:j + w, 0]
        return (cols.reshape(-1, kh * kw) @ kernel.reshape(kh * kw, cout)).reshape(n, h, w, cout)
    # the kernel's columns side by side: one product per kernel row, (n h w, kw cin) @ (kw cin, cout)
    cols = np.concatenate([padded[:, :, j:j + w, :] for j in range(kw)], axis=-1)
    out = np.zeros((n * h * w, cout), np.float32)
    for i in range(kh):
        out += np.ascontiguousarray(cols[:, i:i + h]).reshape(-1, kw * cin) @ kernel[i].reshape(kw * cin, cout)
    return out.reshape(n, h, w, cout)


def _activation(a, name: str):
    if name == "relu":
        return np.maximum(a, 0, out=a)
    if name == "softmax":
        return _softmax_rows(a)
    if name == "linear":
        return a
    raise UnsupportedEstimator(f"activation {name!r}")


#: The steps :class:`ArrayPipeline` applies and the fields of each that name arrays.
_NODE_ARRAYS = {"pipeline": (), "scale": ("mean", "scale"), "mlp": ("coefs", "intercepts"),
                "svc": ("gamma", "support_vectors", "dual_coef", "intercept"), "calibrated": (), "vote": (),
                "network": (), "average": (), "normalize": ("mean", "variance"), "conv2d": ("kernel", "bias"),
                "maxpool": (), "flatten": (), "dense": ("kernel", "bias")}


class ArrayPipeline:
    """The probabilities of a pipeline read by :func:`to_arrays`, by numpy."""

    def __init__(self, description: dict, arrays: dict[str, np.ndarray]):
        self.description = description
        self.arrays = arrays
        self._check(description)

    def _check(self, node) -> None:
        """Raise :class:`UnsupportedEstimator` for a description this class cannot apply: an
        unknown step, an array it names (a calibrator's too) that is missing or not numeric,
        arrays that do not fit together."""
        if not isinstance(node, dict) or node.get("type") not in _NODE_ARRAYS:
            raise UnsupportedEstimator(f"unknown step {node!r:.80}")
        names = [name for key in _NODE_ARRAYS[node["type"]]
                 for name in (node[key] if isinstance(node[key], list) else [node[key]])]
        members = node.get("members", [])
        if node["type"] == "calibrated":
            names += [name for member in members for cal in member["calibrators"] for name in cal.values()]
            members = [member["estimator"] for member in members]
        for name in names:
            if name is not None and (name not in self.arrays or self.arrays[name].dtype.kind not in "fiu"):
                raise UnsupportedEstimator(f"{node['type']} names an array {name!r} that the file does not hold")
        for child in node.get("steps", []) + members:
            self._check(child)
        self._check_shapes(node)

    def _check_shapes(self, node) -> None:
        """Raise :class:`UnsupportedEstimator` when the arrays of one step do not fit together."""
        a = self.arrays
        kind = node["type"]
        if kind == "scale" and node["mean"] is not None and node["scale"] is not None:
            ok = a[node["mean"]].shape == a[node["scale"]].shape and a[node["mean"]].ndim == 1
        elif kind == "mlp":
            w = [a[k] for k in node["coefs"]]
            b = [a[k] for k in node["intercepts"]]
            ok = (len(w) == len(b) > 0 and all(x.ndim == 2 for x in w)
                  and all(y.shape == (x.shape[1],) for x, y in zip(w, b))
                  and all(x.shape[1] == y.shape[0] for x, y in zip(w, w[1:]))
                  and w[-1].shape[1] == (1 if node["n_outputs"] == 1 else len(node["classes"])))
        elif kind == "svc":
            k, sv, dual = len(node["classes"]), a[node["support_vectors"]], a[node["dual_coef"]]
            ok = (sv.ndim == 2 and dual.shape == (k - 1, sv.shape[0]) and sum(node["n_support"]) == sv.shape[0]
                  and len(node["n_support"]) == k and a[node["intercept"]].shape == (k * (k - 1) // 2,)
                  and a[node["gamma"]].size == 1)
        elif kind == "network":
            ok = self._network_shapes_fit(node)
        else:
            ok = True
        if not ok:
            raise UnsupportedEstimator(f"the arrays of the {kind} step do not fit together")

    def _network_shapes_fit(self, node) -> bool:
        """The channels, and the dense layers' widths, follow from layer to layer (the input's own
        size is only known when crops come)."""
        a, channels, width = self.arrays, None, None
        for step in node["steps"]:
            if step["type"] == "conv2d":
                k, b = a[step["kernel"]], a[step["bias"]]
                if k.ndim != 4 or b.shape != (k.shape[3],) or (channels is not None and k.shape[2] != channels):
                    return False
                channels = k.shape[3]
            elif step["type"] == "dense":
                k, b = a[step["kernel"]], a[step["bias"]]
                if k.ndim != 2 or b.shape != (k.shape[1],) or (width is not None and k.shape[0] != width):
                    return False
                width = k.shape[1]
            elif step["type"] == "maxpool" and (len(step["size"]) != 2 or min(step["size"]) < 1):
                return False
        return True

    def predict_proba(self, X) -> np.ndarray:
        return self._proba(self.description, np.asarray(X))

    # -- the steps -------------------------------------------------------------------------
    def _a(self, key):
        return self.arrays[key]

    def _transform(self, node, X):
        if node["type"] != "scale":
            raise UnsupportedEstimator(f"{node['type']} as a transform")
        X = np.array(X, copy=True)
        if node["mean"] is not None:
            X -= self._a(node["mean"])
        if node["scale"] is not None:
            X /= self._a(node["scale"])
        return X

    def _proba(self, node, X):
        kind = node["type"]
        if kind == "pipeline":
            for step in node["steps"][:-1]:
                X = self._transform(step, X)
            return self._proba(node["steps"][-1], X)
        if kind == "mlp":
            out = self._mlp(node, X)
            if node["n_outputs"] == 1:
                out = out.ravel()
                return np.vstack([1 - out, out]).T
            return out
        if kind == "calibrated":
            return self._calibrated(node, X)
        if kind == "vote":
            probas = np.asarray([self._proba(member, X) for member in node["members"]])
            return np.average(probas, axis=0, weights=node["weights"])
        if kind == "network":
            return self._network(node, X)
        if kind == "average":
            return np.mean([self._proba(member, X) for member in node["members"]], axis=0)
        raise UnsupportedEstimator(f"{kind} has no probabilities")

    #: Crops per batch through a network (bounds the memory of the convolutions' products).
    NETWORK_BATCH = 128

    def _network(self, node, X):
        X = np.asarray(X, np.float32)
        if X.ndim == 3:
            X = X[..., None]
        out = [self._network_batch(node, X[i:i + self.NETWORK_BATCH]) for i in range(0, len(X), self.NETWORK_BATCH)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def _network_batch(self, node, a):
        for step in node["steps"]:
            kind = step["type"]
            if kind == "normalize":
                a = (a - self._a(step["mean"])) / np.maximum(np.sqrt(self._a(step["variance"])), np.float32(1e-7))
            elif kind == "conv2d":
                a = _activation(_conv2d_same(a, self._a(step["kernel"])) + self._a(step["bias"]), step["activation"])
            elif kind == "maxpool":
                py, px = step["size"]
                h, w = a.shape[1] // py * py, a.shape[2] // px * px
                pooled = a[:, 0:h:py, 0:w:px]
                for i in range(py):
                    for j in range(px):
                        if i or j:
                            pooled = np.maximum(pooled, a[:, i:h:py, j:w:px])
                a = pooled
            elif kind == "flatten":
                a = a.reshape(len(a), -1)
            elif kind == "dense":
                a = _activation(a @ self._a(step["kernel"]) + self._a(step["bias"]), step["activation"])
        return a

    def _response(self, node, X):
        """What scikit-learn's calibration reads, and whether it is probabilities: the decision
        function where there is one, else the probabilities (of the second class only, for two)."""
        if node["type"] == "pipeline":
            for step in node["steps"][:-1]:
                X = self._transform(step, X)
            return self._response(node["steps"][-1], X)
        if node["type"] == "svc":
            return self._svc_decision(node, X), False
        proba = self._proba(node, X)
        return (proba[:, 1] if len(node["classes"]) == 2 else proba), True

    def _mlp(self, node, X):
        hidden = _HIDDEN[node["activation"]]
        coefs, intercepts = node["coefs"], node["intercepts"]
        a = X
        for i, (w, b) in enumerate(zip(coefs, intercepts)):
            a = a @ self._a(w)
            a += self._a(b)
            if i != len(coefs) - 1:
                a = hidden(a)
        if node["out_activation"] == "softmax":
            return _softmax_rows(a)
        if node["out_activation"] == "logistic":
            return _expit(a)
        if node["out_activation"] == "identity":
            return a
        raise UnsupportedEstimator(f"MLP output {node['out_activation']!r}")

    def _svc_decision(self, node, X):
        X = np.asarray(X, dtype=np.float64)
        sv = self._a(node["support_vectors"])
        gamma = float(self._a(node["gamma"]))
        sq = (X * X).sum(axis=1)[:, None] + (sv * sv).sum(axis=1)[None, :] - 2.0 * (X @ sv.T)
        K = np.exp(-gamma * sq)
        dual, intercept = self._a(node["dual_coef"]), self._a(node["intercept"])
        n_support = node["n_support"]
        start = np.concatenate([[0], np.cumsum(n_support)])
        n_classes = len(node["classes"])
        dec = np.empty((len(X), n_classes * (n_classes - 1) // 2))
        p = 0
        for i in range(n_classes):
            for j in range(i + 1, n_classes):
                si, sj = slice(start[i], start[i + 1]), slice(start[j], start[j + 1])
                dec[:, p] = K[:, si] @ dual[j - 1, si] + K[:, sj] @ dual[i, sj] + intercept[p]
                p += 1
        if n_classes == 2:
            return -dec.ravel()
        return _ovr_decision(dec < 0, -dec, n_classes)

    def _calibrated(self, node, X):
        n_classes = len(node["classes"])
        mean = np.zeros((len(X), n_classes))
        for member in node["members"]:
            pred, is_proba = self._response(member["estimator"], X)
            if pred.ndim == 1:
                pred = pred.reshape(-1, 1)
            if member["method"] == "sigmoid":
                proba = np.zeros((len(X), n_classes))
                for idx, column, cal in zip(member["pos_class_indices"], pred.T, member["calibrators"]):
                    idx = idx + 1 if n_classes == 2 else idx
                    proba[:, idx] = _expit(-(self._a(cal["a"]) * column + self._a(cal["b"])))
                if n_classes == 2:
                    proba[:, 0] = 1.0 - proba[:, 1]
                else:
                    total = proba.sum(axis=1)[:, None]
                    proba = np.divide(proba, total, out=np.full_like(proba, 1 / n_classes), where=total != 0)
            else:
                if n_classes == 2 and pred.shape[1] == 1 and is_proba:
                    pred = np.concatenate([1 - pred, pred], axis=1)
                proba = _softmax_rows(self._a(member["calibrators"][0]["beta"]) * _logits(pred))
            proba[(proba > 1.0) & (proba <= 1.0 + 1e-5)] = 1.0
            mean += proba
        return mean / len(node["members"])


def to_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The arrays as one ``.npz`` (no pickled objects)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def from_bytes(data: bytes) -> dict[str, np.ndarray]:
    """Arrays written by :func:`to_bytes`, read without unpickling anything."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


class ArrayClassifier:
    """The estimator of a loaded model file: ``predict_proba``/``predict`` by numpy from the
    file's arrays, with no scikit-learn or TensorFlow imported. ``get_params()`` gives the training
    settings; ``native_bytes`` keeps the file's own-library form (skops or Keras) as read, so that
    saving the model again writes it unchanged."""

    def __init__(self, kind: str, params: dict, classes, pipeline: ArrayPipeline, native_bytes: bytes):
        self.kind = kind
        self.params = dict(params)
        self.classes_ = np.asarray(classes)
        self.pipeline = pipeline
        self.native_bytes = native_bytes

    def get_params(self, deep: bool = True) -> dict:
        return dict(self.params)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n, n_classes), columns in the order of ``classes_``."""
        return self.pipeline.predict_proba(np.asarray(X, dtype=np.float32))

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
