"""Where a frame's time goes: each step of the runner's pass, per frame, one thread.

For 512 x 512 frames (the realistic scan of ``bench_preprocess.py``) and 192 x 192 frames (that of
``bench_scale.py``), written once into --dir: the plan is built from the calibration sample as
``preprocess()`` builds it, then the runner's steps are timed batch by batch on --frames frames
held in memory, as ``FrameRunner.run_chunk`` calls them: flat-field correction, centring, radial
profile, virtual detectors. Each step is the best of --repeats passes (other jobs share these
cores), in µs per frame and as a multiple of one ``np.sum`` pass over the same frames in this
process (the cheapest thing that reads every pixel once).

    python benchmarks/bench_kernels.py [--frames 1000] [--repeats 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_preprocess import write_scan  # noqa: E402
from bench_scale import ensure, write_small  # noqa: E402


def steps_per_frame(path: Path, n: int, repeats: int) -> dict:
    from napari_sedclassify.geometry import Geometry
    from napari_sedclassify.processing import PreprocessParams, PreprocessPlan
    from napari_sedclassify.processing.kernels import correct_frames
    from napari_sedclassify.processing.runner import batch_frames

    frames = np.array(np.load(path, mmap_mode="r")[:n])  # in memory: the steps, not the reading
    n = len(frames)
    params = PreprocessParams()
    plan = PreprocessPlan.build(params, Geometry(detector_shape=frames.shape[1:]), {},
                                frames[: params.bad_pixel_sample], None)
    ff = plan.corrections(None)
    finder, procs = plan.centre_finder(), plan.processors()
    args, mask = ff.kernel_args(), ff.mask
    batch = batch_frames(frames.shape[1:])
    buf = np.empty((batch,) + frames.shape[1:], np.float32)
    sums_buf = np.empty(batch)  # the frames' totals, which the correction adds up as it goes
    best = {}
    for _ in range(repeats):
        spent = {}
        for s in range(0, n, batch):
            f = buf[: min(n, s + batch) - s]
            totals = sums_buf[: len(f)]
            t = time.perf_counter()
            correct_frames(frames[s: s + len(f)], *args, f, totals)
            t1 = time.perf_counter()
            centres = finder.process_chunk(f, None, mask)["centre"]
            spent["correction"] = spent.get("correction", 0.0) + t1 - t
            spent["centring"] = spent.get("centring", 0.0) + time.perf_counter() - t1
            for p in procs:
                t = time.perf_counter()
                p.process_chunk(f, centres, mask, totals=totals) if p.takes_totals else p.process_chunk(f, centres, mask)
                name = {"RadialProfile": "radial profile", "VirtualDetectors": "virtual detectors"}.get(
                    type(p).__name__, type(p).__name__)
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
        for k, v in spent.items():
            best[k] = min(best.get(k, np.inf), v)
    sums = []
    for _ in range(repeats):
        t = time.perf_counter()
        for s in range(0, n, batch):
            frames[s: s + batch].sum(dtype=np.uint64)
        sums.append(time.perf_counter() - t)
    us = {k: v / n * 1e6 for k, v in best.items()}
    us["all steps"] = sum(us.values())
    return {"frames": n, "batch": batch, "us_per_frame": us, "np_sum_us_per_frame": min(sums) / n * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/sedclassify-bench-kernels")
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    n = args.frames
    side = int(np.ceil(np.sqrt(n)))
    scans = {
        "512x512": ensure(folder / f"frames{n}_512px.npy", lambda p: write_scan(p, n, seed=3)),
        "192x192": ensure(folder / f"frames{side * side}_192px.npy", lambda p: write_small(p, side, 192)),
    }
    results = {name: steps_per_frame(path, n, args.repeats) for name, path in scans.items()}
    steps = list(next(iter(results.values()))["us_per_frame"])
    print(f"µs per frame, one thread, best of {args.repeats} passes over {n} frames in memory "
          "(x: multiples of one np.sum pass over the same frames)")
    print(f"{'step':<20}" + "".join(f"{name:>22}" for name in results))
    for step in steps:
        cells = []
        for r in results.values():
            v = r["us_per_frame"][step]
            cells.append(f"{v:10.1f} ({v / r['np_sum_us_per_frame']:5.1f}x)")
        print(f"{step:<20}" + "".join(f"{c:>22}" for c in cells))
    print(f"{'np.sum':<20}" + "".join(f"{r['np_sum_us_per_frame']:>14.1f}        " for r in results.values()))
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
