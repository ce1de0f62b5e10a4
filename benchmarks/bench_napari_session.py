"""The napari session as a microscopist lives it (issue 14): does the viewer ever stall?

Drives the REAL widgets of the Workflow in a real napari viewer (``napari.Viewer(show=True)``;
run it under Xvfb) on a simulated 40x40 scan of 512x512 frames (``simulate_scan``, cached in
--dir), through the steps a user takes: open the scan (File > Open's route, the plugin's reader
and its background integration), flat-field, centring (+ RIAs; the RIA step then reuses them),
loading the class map with the Labels widget (the simulation's truth, the session's first Labels layer),
training an FCNN and an SVM, predicting.

Measured in this run:

- the event loop's responsiveness: a 10 ms QTimer on the UI thread; a "gap" is the time between
  two of its ticks; per step the longest gap and the 95th percentile, beside the same timer on
  the idle viewer (the baseline, measured first);
- each step's wall time, from the button press (the widget's ``run``) to the job's end and its
  result shown;
- follow the cursor: real mouse-move events posted to the canvas (napari's vispy canvas, so
  napari's own move handling counts too) over the integrated image, one move to the next scan
  point every --move-ms (a hover along rows and a zig-zag, then random jumps across the scan);
  per move the time from the event to the diffraction view painting that point's frame.

    xvfb-run -a python benchmarks/bench_napari_session.py [--side 40] [--det 512] [--json FILE]

Nothing here asserts a speed: it prints a table (and, with --json, the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

PLUGIN = "napari-sedclassify"
TRACE = False
SETTLE_S = 1.5


def scan_file(folder: Path, side: int, det: int, seed: int = 14) -> Path:
    from napari_sedclassify.simulate import simulate_scan

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sim{side}x{side}_{det}.npy"
    if not path.exists():
        t0 = time.perf_counter()
        simulate_scan(path, scan_shape=(side, side), detector_px=det, seed=seed)
        print(f"simulated {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def warm_page_cache(path: Path) -> float:
    """Read ``path`` once (untimed for the steps), as the command benchmarks' untimed first run
    does: this host reclaims page cache a file has not used for a minute (docs/performance.md,
    session 34), and an "open" of a file half on disk timed the disk. Returns the seconds it took."""
    t0 = time.perf_counter()
    buf = bytearray(16 * 2**20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t0


class GapMonitor:
    """A 10 ms QTimer on the UI thread; records the time between its ticks."""

    def __init__(self, interval_ms: int = 10):
        from qtpy.QtCore import Qt, QTimer

        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.ticks = []

    def _tick(self):
        self.ticks.append(time.perf_counter())

    def trace_stalls(self, over_ms: float = 80.0):
        """Debugging aid (--trace-stalls): a thread samples the UI thread's stack every 5 ms while
        no tick came for 30 ms; a stall over ``over_ms`` prints where its samples were (the
        functions on the sampled stacks, by how many samples they were on)."""
        import bisect
        import collections
        import threading

        main = threading.main_thread().ident

        def report(length_ms, samples):
            counts = collections.Counter()
            for stack in samples:
                counts.update(set(stack))
            lines = [f"{n:4d} {where}" for where, n in counts.most_common(400) if n >= max(2, len(samples) // 5)]
            print(f"--- UI thread busy {length_ms:.0f} ms, {len(samples)} samples:", flush=True)
            print("\n".join(lines[-45:]), flush=True)

        def watch():
            samples, stall_start = [], None
            while True:
                time.sleep(0.005)
                try:
                    if not self.timer.isActive() or not self.ticks:
                        continue
                except RuntimeError:  # the timer is gone with the step
                    return
                now, last = time.perf_counter(), self.ticks[-1]
                if (now - last) * 1e3 > 30:
                    if stall_start != last:
                        stall_start, samples = last, []
                    frames = sys._current_frames()
                    stack = []
                    frame = frames.get(main)
                    while frame is not None:
                        code = frame.f_code
                        stack.append(f"{Path(code.co_filename).parent.name}/{Path(code.co_filename).name}:{code.co_name}")
                        frame = frame.f_back
                    if len(stack) <= 6:  # the UI thread is in Qt's own code (or waits for the GIL)
                        for ident, other in frames.items():
                            if ident not in (main, threading.get_ident()) and other is not None:
                                code = other.f_code
                                stack.append(f"[other thread] {Path(code.co_filename).name}:{code.co_name}:{other.f_lineno}")
                    samples.append(stack)
                elif stall_start is not None:
                    ticks = self.ticks
                    after = ticks[min(bisect.bisect_right(ticks, stall_start), len(ticks) - 1)]
                    length = (after - stall_start) * 1e3
                    if length > over_ms and samples:
                        report(length, samples)
                    stall_start, samples = None, []

        threading.Thread(target=watch, daemon=True).start()
        self._trace_collections()

    @staticmethod
    def _trace_collections(over_ms: float = 20.0):
        """With --trace-stalls: print every collection of the cyclic garbage collector that held
        the interpreter longer than ``over_ms`` (a stall no stack sample explains)."""
        import gc

        if any(getattr(c, "bench_trace", False) for c in gc.callbacks):
            return
        started = {}

        def callback(phase, info):
            if phase == "start":
                started["t"] = time.perf_counter()
            elif "t" in started:
                ms = (time.perf_counter() - started.pop("t")) * 1e3
                if ms > over_ms:
                    print(f"--- garbage collection, generation {info['generation']}: {ms:.0f} ms "
                          f"({info['collected']} collected)", flush=True)

        callback.bench_trace = True
        gc.callbacks.append(callback)

    def start(self):
        self.ticks = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> np.ndarray:
        self.timer.stop()
        self.ticks.append(time.perf_counter())
        return np.diff(np.asarray(self.ticks)) * 1e3  # ms


def spin(until, timeout_s: float = 600.0, poll_ms: int = 5):
    """Run the Qt event loop until ``until()`` is true (checked every poll_ms); returns seconds."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    t0 = time.perf_counter()
    check = QTimer()
    check.setInterval(poll_ms)

    def poll():
        if until() or time.perf_counter() - t0 > timeout_s:
            loop.quit()

    check.timeout.connect(poll)
    check.start()
    loop.exec()
    check.stop()
    if not until():
        raise TimeoutError(f"gave up after {timeout_s:.0f} s")
    return time.perf_counter() - t0


def measured(name, action, done, results, timeout_s=900.0):
    """Start ``action()`` from inside the event loop, spin until ``done()``, record gaps and time."""
    from qtpy.QtCore import QTimer

    monitor = GapMonitor()
    if TRACE:
        monitor.trace_stalls()
    started = {}

    def go():
        started["t"] = time.perf_counter()
        started["out"] = action()

    profile = None
    if os.environ.get("BENCH_PROFILE") and name.startswith(os.environ["BENCH_PROFILE"]):
        import cProfile  # the UI thread's own work during the step (debugging aid)

        profile = cProfile.Profile()
        profile.enable()
    monitor.start()
    QTimer.singleShot(0, go)
    spin(lambda: "out" in started and done(started["out"]), timeout_s)
    wall = time.perf_counter() - started["t"]
    # what the step shows after its job ends (layers added a turn at a time, figures drawn in a
    # thread) is part of the step: its gaps count until SETTLE_S after the end
    settle_end = time.perf_counter() + SETTLE_S
    spin(lambda: time.perf_counter() > settle_end, SETTLE_S + 5)
    gaps = monitor.stop()
    if profile is not None:
        import pstats

        profile.disable()
        pstats.Stats(profile).sort_stats("cumulative").print_stats(70)
    results.append(row(name, gaps, wall))
    print(format_row(results[-1]), flush=True)
    return started.get("out")


def row(name, gaps, wall=None, extra=None):
    return {"step": name, "wall_s": wall, "max_gap_ms": float(gaps.max()) if gaps.size else 0.0,
            "p95_gap_ms": float(np.percentile(gaps, 95)) if gaps.size else 0.0,
            "over_100ms": int((gaps > 100).sum()), "ticks": int(gaps.size), **(extra or {})}


def format_row(r):
    wall = f"{r['wall_s']:8.2f}" if r.get("wall_s") is not None else "       -"
    return f"{r['step']:<34} {wall} {r['max_gap_ms']:9.1f} {r['p95_gap_ms']:8.1f} {r['over_100ms']:6d}"


def job_done(job):
    if job is None:
        raise RuntimeError("the widget refused to start the job")
    if job.done and job.outcome != "done":
        raise RuntimeError(f"{job.description}: {job.outcome}: {job.error}")
    return job.done


# --- follow the cursor -----------------------------------------------------------------------------

class PaintWatch:
    """Time at which the diffraction view last painted, and the title it painted."""

    def __init__(self, widget):
        from qtpy.QtCore import QEvent, QObject

        watch = self

        class Filter(QObject):
            def eventFilter(self, obj, event):
                if event.type() == QEvent.Type.Paint:
                    watch.painted.append((time.perf_counter(), obj.title))
                return False

        self.painted = []
        self.filter = Filter()
        widget.installEventFilter(self.filter)


def canvas_position(viewer, layer, iy, ix):
    """Canvas pixel (x, y) of scan point (iy, ix) of ``layer`` (2D view)."""
    world = np.asarray(layer.data_to_world((iy, ix)))[-2:]
    canvas = viewer.window._qt_viewer.canvas
    h, w = canvas.native.height(), canvas.native.width()
    centre = np.asarray(viewer.scene.camera.center)[-2:]
    zoom = viewer.scene.camera.zoom
    y, x = (world - centre) * zoom + np.array([h / 2, w / 2])
    back = canvas._map_canvas2world((x, y), canvas.view)[-2:]  # check the mapping with napari's own
    if np.abs(np.asarray(back) - world).max() > 0.51 * float(np.min(layer.scale[-2:])):
        raise RuntimeError(f"canvas mapping is off: {back} vs {world}")
    return x, y


def post_move(viewer, x, y):
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    native = viewer.window._qt_viewer.canvas.native
    local = QPointF(x, y)
    event = QMouseEvent(QEvent.Type.MouseMove, local, QPointF(native.mapToGlobal(local.toPoint())),
                        Qt.MouseButton.NoButton, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    QApplication.postEvent(native, event)


def hover(viewer, view, layer, path, move_ms, label, results, timeout_s=2.0):
    """Post a mouse move to each scan point of ``path``, ``move_ms`` apart (or as soon as the point
    is drawn, if later: a hand resting on each point); per move the time until it is painted."""
    watch = PaintWatch(view.frame_view)
    monitor = GapMonitor()
    latencies, missed = [], 0
    monitor.start()
    t_start = time.perf_counter()
    for iy, ix in path:
        x, y = canvas_position(viewer, layer, iy, ix)
        title = f"{layer.name} ({iy}, {ix})"
        t0 = time.perf_counter()
        n0 = len(watch.painted)
        post_move(viewer, x, y)
        try:
            spin(lambda: any(t == title for _, t in watch.painted[n0:]), timeout_s, poll_ms=1)
            latencies.append((next(tp for tp, t in watch.painted[n0:] if t == title) - t0) * 1e3)
        except TimeoutError:
            missed += 1
        left = move_ms / 1e3 - (time.perf_counter() - t0)
        if left > 0:
            spin(lambda: time.perf_counter() - t0 >= move_ms / 1e3, 5.0, poll_ms=1)
    wall = time.perf_counter() - t_start
    gaps = monitor.stop()
    lat = np.asarray(latencies)
    extra = {"moves": len(path), "missed": missed,
             "move_median_ms": float(np.median(lat)) if lat.size else None,
             "move_p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
             "move_max_ms": float(lat.max()) if lat.size else None}
    results.append(row(label, gaps, wall, extra))
    print(format_row(results[-1]) + f"   per move: median {extra['move_median_ms']:.1f} ms, p95 "
          f"{extra['move_p95_ms']:.1f} ms, max {extra['move_max_ms']:.1f} ms ({missed} not drawn)", flush=True)


def hover_paths(side, rng):
    rows = [(r, c) for r in (side // 2, side // 2 + 1) for c in (range(side) if r % 2 == 0 else range(side - 1, -1, -1))]
    zigzag = [(r, c) for c in range(5, 25) for r in ((10, 11) if c % 2 else (11, 10))]
    jumps = [tuple(int(v) for v in rng.integers(0, side, 2)) for _ in range(40)]
    return rows, zigzag, jumps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=40)
    parser.add_argument("--det", type=int, default=512)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/sedclassify-bench-napari"))
    parser.add_argument("--move-ms", type=float, default=50.0, help="time between mouse moves")
    parser.add_argument("--fcnn-epochs", type=int, default=200)
    parser.add_argument("--skip-svm", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--trace-stalls", action="store_true", help="print the UI thread's stack in stalls")
    parser.add_argument("--steps", default="all", help="'all', or 'open,prep' (stop after preprocessing)")
    parser.add_argument("--cold", action="store_true",
                        help="do not read the scan file into the page cache before the steps (what the host has "
                             "of it then decides how long the opening takes)")
    args = parser.parse_args(argv)
    global TRACE
    TRACE = args.trace_stalls
    os.environ.setdefault("MPLBACKEND", "Agg")

    path = scan_file(args.dir, args.side, args.det)
    if not args.cold:
        print(f"read {path.name} into the page cache in {warm_page_cache(path):.2f} s (untimed; --cold to skip)",
              flush=True)
    import napari
    from napari.settings import get_settings

    from napari_sedclassify._napari.layers import SCAN_KEY
    from napari_sedclassify._napari.reader import INTEGRATING

    from napari.utils.notifications import notification_manager

    notification_manager.notification_ready.connect(lambda n: print(f"  [napari] {n.message}", flush=True))
    get_settings().application.save_window_geometry = False
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 1000)
    _, wf = viewer.window.add_plugin_dock_widget(PLUGIN, "Workflow (all steps)")
    spin(lambda: False if time.sleep(0) else True)  # one turn of the loop
    results = []
    print(f"{'step':<34} {'wall s':>8} {'max gap':>9} {'p95 gap':>8} {'>100ms':>6}   (gaps in ms)", flush=True)

    # baseline: the idle viewer with the Workflow docked
    monitor = GapMonitor()
    if TRACE:
        monitor.trace_stalls()
    monitor.start()
    spin(lambda: time.perf_counter() - monitor.ticks[0] > 5.0, 10)
    results.append(row("baseline (idle viewer)", monitor.stop(), 5.0))
    print(format_row(results[-1]), flush=True)
    # the floor of any UI change: one label in a dock updated every 100 ms (the window composite)
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QLabel

    label = QLabel("0")
    dock = viewer.window.add_dock_widget(label, name="bench label", area="left")
    ticker = QTimer()
    ticker.setInterval(100)
    ticker.timeout.connect(lambda: label.setText(str(int(label.text()) + 1)))
    ticker.start()
    monitor = GapMonitor()
    monitor.start()
    spin(lambda: time.perf_counter() - monitor.ticks[0] > 3.0, 10)
    results.append(row("floor: a dock label, 10 updates/s", monitor.stop(), 3.0))
    ticker.stop()
    viewer.window.remove_dock_widget(dock)
    print(format_row(results[-1]), flush=True)

    def scan_layer():
        return next((ly for ly in viewer.layers if SCAN_KEY in ly.metadata), None)

    measured("open (reader + integrated image)", lambda: wf.open_scan(str(path)),
             lambda _out: scan_layer() is not None and INTEGRATING not in scan_layer().metadata, results)
    layer = scan_layer()
    for w in (wf.flatfield, wf.centring, wf.ria, wf.prediction):
        w._scan.value = layer
    wf.show_step(1)
    measured("flat-field (scan's own)", lambda: wf.flatfield.run(use_beside=True), job_done, results)
    wf.show_step(2)
    measured("centring + RIAs (preprocess)", wf.centring.run, job_done, results)
    wf.show_step(3)
    measured("RIA step (reuses the pass)", wf.ria.run, lambda out: out is not None and (
        not hasattr(out, "done") or job_done(out)), results)

    if args.steps in ("prep", "open,prep"):
        viewer.close()
        return 0
    # the class map as a user loads one (the session's first Labels layer)
    wf.show_step(5)
    wf.labeling._scan.value = layer
    wf.labeling._load_path.value = str(path).replace(".npy", "_truth.npy")
    labels = measured("load labels (class map file)", wf.labeling.load_labels, lambda out: out is not None,
                      results)
    labels.visible = False
    viewer.layers.selection.active = layer
    wf.show_step(6)
    wf.training._refresh_data()
    wf.training._model.value = "fcnn"
    wf.training._epochs.value = args.fcnn_epochs
    measured("train FCNN", wf.training.run, job_done, results)
    fcnn_path = wf.training.result["path"]
    if not args.skip_svm:
        wf.training._model.value = "svm"
        measured("train SVM", wf.training.run, job_done, results)
    wf.show_step(7)
    wf.prediction.use_model(fcnn_path)
    measured("predict (FCNN)", wf.prediction.run, job_done, results)

    # follow the cursor over the integrated image
    viewer.layers.selection.active = layer
    view = wf.diffraction
    spin(lambda: False if time.sleep(0.2) else True)
    rows, zigzag, jumps = hover_paths(args.side, np.random.default_rng(0))
    hover(viewer, view, layer, rows, args.move_ms, "hover: along two rows", results)
    hover(viewer, view, layer, zigzag, args.move_ms, "hover: zig-zag over 2 rows", results)
    hover(viewer, view, layer, jumps, args.move_ms, "hover: random jumps", results)

    # the floor of adding a layer: napari's own add_image / add_labels of plain arrays of the scan's
    # shape, nothing of this plugin involved (what any napari plugin's "open" or "show a result"
    # costs on this desktop: controls, visual, first paint); measured last, so that the scan's
    # open above was the session's first image layer, as for a user
    floor_layers = []

    def add_plain(kind):
        data = np.random.default_rng(0).random((args.side, args.side)).astype(np.float32)
        if kind == "labels":
            floor_layers.append(viewer.add_labels((data * 4).astype(np.uint8), name="floor labels"))
        else:
            floor_layers.append(viewer.add_image(data, name="floor image"))
        return True

    for kind, nth in (("image", "one"), ("image", "another"), ("labels", "one"), ("labels", "another")):
        measured(f"floor: napari add_{kind}, {nth} ({args.side}x{args.side})", lambda: add_plain(kind),
                 lambda _out: True, results)

    base = results[0]
    print()
    print("| step | wall (s) | longest gap (ms) | p95 gap (ms) | gaps > 100 ms | longest / idle | per move median / p95 / max (ms) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        ratio = r["max_gap_ms"] / max(base["max_gap_ms"], 1e-9)
        moves = (f"{r['move_median_ms']:.1f} / {r['move_p95_ms']:.1f} / {r['move_max_ms']:.1f}"
                 if r.get("move_median_ms") is not None else "")
        wall = f"{r['wall_s']:.2f}" if r.get("wall_s") is not None else ""
        print(f"| {r['step']} | {wall} | {r['max_gap_ms']:.0f} | {r['p95_gap_ms']:.1f} | {r['over_100ms']} | "
              f"{ratio:.1f}x | {moves} |")
    if args.json:
        args.json.write_text(json.dumps({"scan": str(path), "side": args.side, "det": args.det,
                                         "results": results}, indent=1))
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
