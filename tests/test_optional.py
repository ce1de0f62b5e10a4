"""Without TensorFlow (the ``cnn`` extra not installed): FCNN and SVM work fully, and choosing the
CNN (CLI, napari widgets, a CNN model file) says how to install it: one message with the pip
command, never a traceback. TensorFlow and Keras are blocked in a child interpreter with
``sys.modules[name] = None`` (what an environment without them looks like to ``import``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

from conftest import REPO

PIP = 'pip install "napari-sedclassify[cnn]"'

BLOCK = "import sys\nfor _m in ('tensorflow', 'keras'):\n    sys.modules[_m] = None\n"


def _python(code: str, tmp_path, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="Agg", QT_QPA_PLATFORM="offscreen")
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=timeout)


def _fake_cnn_model(path):
    """A model file that says it holds a CNN (its network is never reached without TensorFlow)."""
    from napari_sedclassify import Geometry
    from napari_sedclassify.classes import ClassTable
    from napari_sedclassify.models.features import FeatureRecipe
    from napari_sedclassify.models.persistence import FORMAT, FORMAT_VERSION

    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "cnn",
            "estimator": {"params": {}, "classes": [1, 2]}, "recipe": FeatureRecipe(kind="crop").to_dict(),
            "preprocess": {}, "classes": ClassTable.default().to_dict(),
            "geometry": Geometry(detector_shape=(64, 64)).to_dict()}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model.json", json.dumps(meta))
        zf.writestr("estimator.keras", b"not reached")
    return path


def test_the_block_hides_tensorflow(tmp_path):
    res = _python("""
        import importlib.util
        from napari_sedclassify.optional import cnn_available, cnn_message
        try:
            import tensorflow
        except ImportError:
            pass
        else:
            raise SystemExit('tensorflow imported')
        assert importlib.util.find_spec('keras') is None
        assert not cnn_available()
        print(cnn_message())
    """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert PIP in res.stdout and "tensorflow and keras not installed" in res.stdout


@pytest.mark.slow
def test_cli_without_tensorflow(tmp_path):
    """FCNN and SVM train and predict; --model cnn and a CNN model file give the pip command."""
    _fake_cnn_model(tmp_path / "cnn.sedmodel")
    res = _python("""
        import contextlib, io, json, pathlib
        import numpy as np
        from models_helpers import write_tiny_scans
        from napari_sedclassify.cli import main

        here = pathlib.Path('.')
        (s0, l0, flat), (s1, l1, _) = write_tiny_scans(here, [0, 1])

        def run(*argv):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main([str(a) for a in argv])
            return code, out.getvalue(), err.getvalue()

        report = {}
        for kind in ('fcnn', 'svm'):
            code, out, err = run('train', '--scans', s0, '--labels', l0, '--model', kind, '--out',
                                 f'{kind}.sedmodel', '--flatfield', flat, '--json', *(['--epochs', '30'] if kind == 'fcnn' else []))
            assert code == 0, err
            code, out, err = run('predict', f'{kind}.sedmodel', s1, '--out', f'pred_{kind}', '--flatfield', flat)
            assert code == 0, err
            cm = np.load(f'pred_{kind}/{pathlib.Path(s1).stem}_classes.npy')
            truth = np.load(l1)
            report[kind] = float(np.mean(cm[truth > 0] == truth[truth > 0]))
        report['train_cnn'] = run('train', '--scans', s0, '--labels', l0, '--model', 'cnn', '--out', 'c.sedmodel',
                                  '--flatfield', flat)
        report['predict_cnn'] = run('predict', 'cnn.sedmodel', s1, '--out', 'pred_cnn', '--flatfield', flat)
        report['demo_cnn'] = run('demo', '--out', 'demo', '--models', 'cnn')
        report['c_written'] = pathlib.Path('c.sedmodel').exists()
        import sys
        report['tf'] = [m for m in ('tensorflow', 'keras') if sys.modules.get(m) is not None]
        print(json.dumps(report))
    """, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["fcnn"] > 0.5 and report["svm"] > 0.5, report  # trained on one tiny scan: they work
    for key in ("train_cnn", "predict_cnn", "demo_cnn"):
        code, out, err = report[key]
        assert code == 2, (key, code, err)
        assert PIP in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (key, err)
    assert not report["c_written"] and report["tf"] == []


@pytest.mark.slow
def test_napari_widgets_without_tensorflow(tmp_path):
    """Training widget: choosing the CNN shows the pip command, Train gives it as an error
    notification; the Prediction and Live widgets refuse a CNN model file the same way."""
    model = _fake_cnn_model(tmp_path / "cnn.sedmodel")
    res = _python(f"""
        import json
        import numpy as np
        from qtpy.QtWidgets import QApplication
        app = QApplication.instance() or QApplication([])
        from napari.components import ViewerModel
        from napari.utils.notifications import notification_manager
        from napari_sedclassify import Geometry, Scan
        from napari_sedclassify._napari.layers import scan_layer_data
        from napari_sedclassify._napari.widgets.labeling import labels_layer_name
        from napari_sedclassify._napari.widgets.live import LiveWidget
        from napari_sedclassify._napari.widgets.prediction import PredictionWidget
        from napari_sedclassify._napari.widgets.training import TrainingWidget

        seen = []
        notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
        viewer = ViewerModel()
        scan = Scan(np.ones((4, 5, 64, 64), np.uint16), Geometry(detector_shape=(64, 64)), source='tiny')
        data, kwargs, _ = scan_layer_data(scan, np.ones((4, 5), np.float32), name='tiny')
        layer = viewer.add_image(data, **kwargs)
        labels = np.ones((4, 5), np.uint8)
        labels[:, :2] = 2
        viewer.add_labels(labels, name=labels_layer_name(layer))
        report = {{}}

        tr = TrainingWidget(viewer)
        tr._data.value = list(tr._data.choices)
        tr._model.value = 'cnn'
        report['hint'] = tr._metrics.value
        report['train_job'] = tr.run() is None
        report['train_note'] = list(seen)
        tr._model.value = 'fcnn'
        report['hint_after_fcnn'] = tr._metrics.value

        seen.clear()
        pr = PredictionWidget(viewer)
        pr._scan.value = layer
        pr._model_path.value = {str(model)!r}
        report['predict_job'] = pr.run() is None
        report['predict_note'] = list(seen)

        live = LiveWidget(viewer)
        live._model_path.value = {str(model)!r}
        live._input.value = 'frames'
        report['live_job'] = live.start() is None
        report['live_status'] = live._jobs.status.value
        import sys
        report['tf'] = [m for m in ('tensorflow', 'keras') if sys.modules.get(m) is not None]
        print(json.dumps(report))
    """, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert PIP in report["hint"], report
    assert report["hint_after_fcnn"] == ""
    assert report["train_job"] and any(PIP in m and m.startswith("Training:") for m in report["train_note"]), report
    assert report["predict_job"] and any(PIP in m and "cnn.sedmodel" in m for m in report["predict_note"]), report
    assert report["live_job"] and PIP in report["live_status"], report
    assert report["tf"] == []
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
