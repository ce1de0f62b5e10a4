"""Live mode: per-frame latency while a simulated Merlin detector writes a .mib file at a steady
rate (512x512 U16 frames), and whether classification keeps up.

For each rate: a background thread writes 1024 simulated frames (a 16x64 scan) frame by frame;
``watch`` follows the file and classifies each frame (flat-field, centre, RIA, FCNN). Reported:
latency per frame (from the moment its last byte is on disk to its class being known) after the
calibration (the first 48 frames set the plan), the calibration wait, the lag at the end (time
from the last frame written to the last frame classified), and as the baseline, measured in the
same process, the time to classify one frame already in memory.

Uses the data of bench_end_to_end.py (--workdir, made there when missing).

    python benchmarks/bench_live.py [--rates 100 250 500 1000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/sedclassify-bench-e2e")
    ap.add_argument("--rates", type=float, nargs="+", default=[100, 250, 500, 1000])
    args = ap.parse_args()
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_end_to_end import make_data

    from napari_sedclassify.io import open_scan
    from napari_sedclassify.models.persistence import load_model
    from napari_sedclassify.pipeline.acquisition import Acquisition
    from napari_sedclassify.pipeline.live import FrameClassifier, LiveClassMap, watch

    work = Path(args.workdir)
    data = make_data(work)
    model = load_model(data["model"])
    from napari_sedclassify.scan import Scan

    big = open_scan(work / "scan64.npy")
    scan = Scan(big.data[:16], big.geometry, source=big.source)
    frames = np.asarray(scan.frames()[:64])

    clf = FrameClassifier.calibrate(model, frames[:48], scan.geometry, flatfield=data["flat"],
                                    metadata={"counter_depth": 12})
    clf.classify(frames[:1], [0])
    t = []
    for k in range(64):
        t0 = time.perf_counter()
        clf.classify(frames[k:k + 1], [k])
        t.append(time.perf_counter() - t0)
    one_ms = 1e3 * float(np.median(t))
    print(f"baseline: classifying one frame in memory takes {one_ms:.2f} ms (median of 64) "
          f"= {1e3 / one_ms:.0f} frames/s one at a time")

    rows = []
    for rate in args.rates:
        target = work / f"live_{int(rate)}.mib"
        target.unlink(missing_ok=True)
        state = LiveClassMap(scan.scan_shape, model.classes.ids, [2], model.classes.names)
        writer = Acquisition(scan, target, rate_hz=rate, kind="mib", chunk_bytes=1 << 20)
        writer.start()
        res = watch(model, target, scan_shape=scan.scan_shape, flatfield=data["flat"], geometry=scan.geometry,
                    state=state, timeout_s=30)
        t_done = time.perf_counter()
        writer.join()
        lat = state.latency_stats()
        achieved = writer.written / (writer.finished_at - writer.first_written_at)
        rows.append({"rate_hz": rate, "written_hz": round(achieved), "status": res.status,
                     "median_ms": lat.get("median_ms"), "p95_ms": lat.get("p95_ms"), "max_ms": lat.get("max_ms"),
                     "calibration_wait_ms": lat.get("calibration_mean_ms"),
                     "lag_at_end_ms": round(1e3 * (t_done - writer.finished_at), 1)})
        target.unlink(missing_ok=True)
        target.with_suffix(".hdr").unlink(missing_ok=True)
    print(f"\n{'rate Hz':>8} {'written Hz':>10} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} "
          f"{'calib. wait ms':>15} {'lag at end ms':>14}")
    for r in rows:
        print(f"{r['rate_hz']:8.0f} {r['written_hz']:10d} {r['median_ms']:10.1f} {r['p95_ms']:8.1f} {r['max_ms']:8.1f} "
              f"{r['calibration_wait_ms']:15.0f} {r['lag_at_end_ms']:14.1f}")
    print("median latency / one-frame baseline: " + ", ".join(
        f"{r['rate_hz']:.0f} Hz {r['median_ms'] / one_ms:.1f}x" for r in rows))
    print(json.dumps({"one_frame_ms": one_ms, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
