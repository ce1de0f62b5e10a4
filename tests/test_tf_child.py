"""The TensorFlow worker process starts safely from a script without a main guard: the child is
``python -m napari_sedclassify.models._tf_child``, which never imports (re-runs) the parent's
``__main__``, unlike multiprocessing's spawn."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

HELPER = '''
def job(x, progress=None, cancel=None):
    print("noise on stdout must not break the messages")
    progress(1, {"half": x / 2})
    return {"double": 2 * x}
'''

SCRIPT = '''
# no `if __name__ == "__main__":` guard, as in many napari scripts and notebooks
import helper
from napari_sedclassify.models.tf_process import run_in_process

print("SCRIPT RAN", flush=True)
seen = []
result = run_in_process(helper.job, 21, progress=lambda n, logs: seen.append((n, logs["half"])))
print("RESULT", result["double"], seen, flush=True)
'''


def test_unguarded_script_is_not_run_again_in_the_worker(tmp_path):
    (tmp_path / "helper.py").write_text(textwrap.dedent(HELPER))
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    done = subprocess.run([sys.executable, str(tmp_path / "script.py")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    everything = done.stdout + done.stderr
    assert everything.count("SCRIPT RAN") == 1, everything  # the child did not run the script again
    assert "RESULT 42 [(1, 10.5)]" in done.stdout
    assert "noise on stdout" in done.stderr  # the child's prints go to stderr, not into the message pipe


def _defined_in_main():
    pass


def test_functions_from_main_are_refused_with_a_reason(monkeypatch):
    from napari_sedclassify.models.tf_process import run_in_process

    monkeypatch.setattr(_defined_in_main, "__module__", "__main__")
    with pytest.raises(ValueError, match="defined in __main__"):
        run_in_process(_defined_in_main)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_child_runs_child_nice_below_the_main_thread_whichever_thread_starts_it(tmp_path, monkeypatch):
    """A training child started from a background job's thread (itself niced below the viewer)
    runs CHILD_NICE below the viewer's main thread, not that much below the job's thread."""
    import importlib
    import os
    import threading

    from napari_sedclassify.models.tf_process import run_in_process

    (tmp_path / "nicehelper.py").write_text("import os\n\ndef niceness(progress=None, cancel=None):\n"
                                             "    return os.nice(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    niceness = importlib.import_module("nicehelper").niceness
    main = os.nice(0)
    got = {}

    def job():
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), main + 5)  # a niced job thread
        got["child"] = run_in_process(niceness, child_nice=5)
        got["plain"] = run_in_process(niceness)

    thread = threading.Thread(target=job)
    thread.start()
    thread.join(120)
    assert got["child"] == min(19, main + 5)  # not main + 10
    assert got["plain"] == min(19, main + 5)  # no child_nice: the starting thread's, as any process


SPARE_HELPER = '''
import os
import sys


def state(progress=None, cancel=None):
    return {"pid": os.getpid(), "preloaded": "sklearn.svm" in sys.modules, "nice": os.nice(0), "cwd": os.getcwd()}
'''


def test_a_spare_child_imports_ahead_and_runs_the_next_job(tmp_path, monkeypatch):
    """prestart: a child that has imported scikit-learn's SVM before its job is given; the next
    run_in_process with the same warm modules runs in it (niced, in the caller's folder at the
    time of the job); with no spare, or another warm list, a fresh child runs the job."""
    import importlib
    import os

    from napari_sedclassify.models import tf_process

    (tmp_path / "sparehelper.py").write_text(SPARE_HELPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    state = importlib.import_module("sparehelper").state
    warm = ("sklearn.svm",)
    try:
        tf_process.prestart(warm, child_nice=3)
        spare = tf_process._spares[(warm, 3)]
        tf_process.prestart(warm, child_nice=3)  # one is waiting already: no second one
        assert tf_process._spares[(warm, 3)] is spare
        (tmp_path / "later").mkdir()
        monkeypatch.chdir(tmp_path / "later")
        got = tf_process.run_in_process(state, child_nice=3, warm=warm)
        assert got["pid"] == spare.pid and got["preloaded"]
        assert got["nice"] == os.nice(0) + 3 and got["cwd"] == str(tmp_path / "later")
        assert (warm, 3) not in tf_process._spares  # taken
        fresh = tf_process.run_in_process(state, child_nice=3, warm=warm)
        assert fresh["pid"] != spare.pid and not fresh["preloaded"]
        tf_process.prestart(warm, child_nice=3)
        other = tf_process.run_in_process(state, child_nice=3, warm=("json",))  # not the spare's modules
        assert not other["preloaded"] and (warm, 3) in tf_process._spares
        waiting = tf_process._spares[(warm, 3)]
    finally:
        tf_process.stop_spares()
    assert waiting.wait(timeout=30) is not None and not tf_process._spares  # closing stdin ended it


def test_a_dead_spare_is_replaced_by_a_fresh_child(tmp_path, monkeypatch):
    import importlib

    from napari_sedclassify.models import tf_process

    (tmp_path / "sparehelper2.py").write_text(SPARE_HELPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    state = importlib.import_module("sparehelper2").state
    try:
        tf_process.prestart(("sklearn.svm",))
        spare = tf_process._spares[(("sklearn.svm",), 0)]
        spare.kill()
        spare.wait(timeout=30)
        got = tf_process.run_in_process(state, warm=("sklearn.svm",))
        assert got["pid"] != spare.pid
    finally:
        tf_process.stop_spares()
