"""Training and prediction work behind the napari widgets, TensorFlow-safe.

Importing TensorFlow in a process whose napari canvas draws with Mesa's software OpenGL
(Xvfb, VNC, many remote desktops) segfaults (notes: napari-headless.md). So the widgets
preprocess scans in their own process (no TensorFlow needed), and anything that imports
TensorFlow (CNN training, loading a CNN model file, CNN prediction) runs in a spawned child
through :func:`napari_sedclassify.models.tf_process.run_in_process`. Training of every model
kind runs there too (``run(..., child=True)``): scikit-learn's FCNN and SVM hold the interpreter
lock for long stretches, which froze the viewer's event loop for 0.5-1.4 s at a time when they
trained in a thread of napari (benchmarks/bench_napari_session.py). FCNN and SVM prediction
(milliseconds) stay in the widget's worker thread. The functions here that run in the child
import no napari, Qt or magicgui; arguments and results are arrays, paths and small dicts.
"""

from __future__ import annotations

import numpy as np

#: Model kinds whose estimator imports TensorFlow.
TF_KINDS = ("cnn",)
#: Niceness added to the child processes the viewer starts: the viewer keeps the CPU to draw
#: (5: about a third of the parent's share of a busy core, so training still progresses while the
#: canvas redraws continuously).
CHILD_NICE = 5
#: What a child imports ahead of its job when started as a spare (``tf_process.prestart``): training
#: and saving an FCNN or SVM (scikit-learn, skops), and for a CNN also Keras and TensorFlow.
SKLEARN_WARM = ("napari_sedclassify.models.training", "napari_sedclassify.models.fcnn",
                "napari_sedclassify.models.svm", "skops.io")
TF_WARM = SKLEARN_WARM + ("napari_sedclassify.models.cnn", "keras")


def warm_modules(model_kind: str) -> tuple:
    return TF_WARM if model_kind in TF_KINDS else SKLEARN_WARM


def prepare(model_kind: str) -> None:
    """Start the child the next job of ``model_kind`` will run in, now (e.g. while the scans are
    preprocessed): it imports scikit-learn, or TensorFlow, meanwhile, at a lower CPU priority."""
    from ..models.tf_process import prestart

    prestart(warm_modules(model_kind), CHILD_NICE)



def train_features_to_file(scan_features, class_maps, out, *, progress=None, cancel=None, **kwargs) -> dict:
    """Train on preprocessed ScanFeatures (see ``models.training.train`` for kwargs), save the
    model to ``out``; returns {"path", "kind", "training", "metrics"}."""
    from ..models.persistence import save_model
    from ..models.training import train

    model = train(scan_features, class_maps, progress=progress, cancel=cancel, **kwargs)
    path = save_model(model, out)
    return {"path": str(path), "kind": model.kind, "training": model.training, "metrics": model.metrics}


def predict_features(model_path, scan_features, *, progress=None, cancel=None) -> dict:
    """Classify the frames of one scan's ScanFeatures with the model file ``model_path``;
    returns {"class_map", "probabilities", "class_ids"}. progress(done, {"total": total}): recorded
    frames classified, after each block (the ``progress(n, logs)`` that crosses from a spawned
    child, :func:`run`); cancel() is checked between blocks."""
    from ..models.inference import predict_scan
    from ..models.persistence import load_model

    model = load_model(model_path)
    frames = None if progress is None else (lambda done, total: progress(done, {"total": total}))
    pred = predict_scan(model, scan_features, cancel=cancel, progress=frames)
    return {"class_map": pred.class_map, "probabilities": pred.probabilities, "class_ids": list(pred.class_ids)}


def watch_in_child(model_path, source_path, scan_shape=None, *, progress=None, cancel=None, **kwargs) -> dict:
    """``pipeline.live.watch`` of a model file on a live source, meant for the spawned child
    (TensorFlow models: the Live widget must not load them in napari's process). Every change of
    the child's running state goes to the parent as a ``progress(n, message)`` call that
    :func:`live_relay` applies to the parent's LiveClassMap; kwargs go to ``watch``. Returns
    {"status", "files", "plan", "seconds", "warnings"} (the parent rebuilds its LiveResult around
    its state)."""
    import time

    from ..models.persistence import load_model
    from ..pipeline.live import LiveClassMap, open_source, watch

    sent = [0]

    def send(**message):
        if progress is not None:
            sent[0] += 1
            progress(sent[0], message)

    class Forwarded(LiveClassMap):
        def update(self, index, class_ids, probabilities, latencies_s):
            super().update(index, class_ids, probabilities, latencies_s)
            send(event="update", index=np.asarray(index), class_ids=np.asarray(class_ids),
                 probabilities=np.asarray(probabilities), latencies=np.asarray(latencies_s))

        def set_status(self, status, message=""):
            super().set_status(status, message)
            send(event="status", status=status, message=str(message))

        def mark_calibrated(self):
            super().mark_calibrated()
            send(event="calibrated")

        def warn(self, text):
            super().warn(text)
            send(event="warn", text=str(text))

    model = load_model(model_path)
    stopped = cancel if cancel is not None else (lambda: False)
    src = open_source(source_path, scan_shape)
    while not src.ready():
        if stopped():
            return {"status": "stopped", "files": {}, "plan": {}, "seconds": 0.0}
        time.sleep(0.01)
    keep = kwargs.pop("keep", ())
    from ..pipeline.reduce import class_ids as ids_of

    state = Forwarded(src.scan_shape, model.classes.ids, ids_of(keep, model.classes) if keep else [],
                      model.classes.names)
    result = watch(model, src, keep=keep, state=state, cancel=cancel, **kwargs)
    return {"status": result.status, "files": result.files, "plan": result.plan, "seconds": result.seconds,
            "warnings": list(result.warnings)}


def live_relay(state):
    """A ``progress`` callback that applies :func:`watch_in_child`'s messages to ``state`` (a
    LiveClassMap of the same scan shape and classes, in the parent)."""

    def relay(_n, message):
        event = message.get("event")
        if event == "update":
            state.update(message["index"], message["class_ids"], message["probabilities"], message["latencies"])
        elif event == "status":
            state.set_status(message["status"], message.get("message", ""))
        elif event == "calibrated":
            state.mark_calibrated()
        elif event == "warn":
            state.warn(message["text"])

    return relay


def run(model_kind: str, func, /, *args, progress=None, cancel=None, child: bool | None = None, **kwargs):
    """``func(*args, progress=, cancel=, **kwargs)``: in a spawned child (at a lower CPU priority)
    when ``child`` (training; applying a model file that needs TensorFlow), or when ``child`` is
    None for TensorFlow model kinds; else right here (the caller's worker thread). Progress and
    cancel cross the process boundary either way. The child is the spare :func:`prepare` started
    when there is one; afterwards a spare is started for the next job, unless this one was cancelled."""
    if model_kind in TF_KINDS if child is None else child:
        from ..models.tf_process import run_in_process

        if model_kind in TF_KINDS:
            from ..optional import require_cnn

            require_cnn()  # the pip command, not a traceback from the child
        try:
            return run_in_process(func, *args, progress=progress, cancel=cancel, child_nice=CHILD_NICE,
                                  warm=warm_modules(model_kind), **kwargs)
        finally:
            if cancel is None or not cancel():  # cancelled (e.g. its viewer closed): no spare for a next job
                prepare(model_kind)
    return func(*args, progress=progress, cancel=cancel, **kwargs)


def model_card(path):
    """A model file's description as a SedModel without its estimator (reads model.json only,
    so no TensorFlow is imported): kind, recipe, preprocessing, classes, geometry, metrics."""
    from ..models.persistence import model_from_metadata, read_metadata

    return model_from_metadata(read_metadata(path), path)


def features_for(layer_result, scan, name, flatfield, params, progress=None, cancel=None):
    """ScanFeatures of ``scan`` for ``params``: from ``layer_result`` (the PreprocessResult the
    scan's session offers for them, ``ScanSession.result_for``: made with these parameters, or
    with a radial profile reaching farther over the same bins), or, when None, from a new
    preprocessing pass. Returns (features, result)."""
    from ..models.training import ScanFeatures
    from ..pipeline.preprocess import preprocess

    result = layer_result
    if result is None:
        result = preprocess(scan, params, flatfield, progress=progress, cancel=cancel)
    feats = ScanFeatures.from_preprocess(result, scan.geometry, name,
                                         crop_radius_px=result.resolved.get("crop_half_px"))
    return feats, result


def confidence_map(probabilities) -> np.ndarray:
    """Probability of the predicted class per point (NaN where not classified)."""
    p = np.asarray(probabilities, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        out = np.nanmax(np.where(np.isfinite(p), p, -np.inf), axis=-1)
    out[~np.isfinite(out)] = np.nan
    return out
