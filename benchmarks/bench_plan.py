"""Benchmark: the calibration plan a command builds before its first frame (``PreprocessPlan.build``).

On the 48-frame calibration sample of two scans of 512 x 512 frames: ``bench_preprocess``'s
realistic scan (uniform pixels, no bad pixel: the sample is centred once) and the simulator's
Medipix quad without its flat-field (hot and dead pixels, the wide cross: centred twice). Timed in
the same process, medians of --repeats:

- the whole plan;
- its bad-pixel search (``detect_bad_pixels``: per-pixel median and mean over the sample, 5 x 5
  median), the plan's largest part;
- the baseline: the same statistics the straightforward way, numpy's ``np.partition`` over the
  frames and scipy's ``median_filter`` (what the search computes, to the bit; tested).

Usage: python benchmarks/bench_plan.py [--repeats 9] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cli import median_time  # noqa: E402
from bench_preprocess import write_scan  # noqa: E402


def warm_median_time(fn, repeats: int) -> float:
    fn()  # the first call loads the kernels and starts the threads
    return median_time(fn, repeats)


def numpy_statistics(sample: np.ndarray):
    """The bad-pixel search's median over the frames and its 5 x 5 median, with numpy and scipy."""
    from scipy import ndimage

    filled = np.asarray(sample, np.float32)
    med = np.partition(filled, filled.shape[0] // 2, axis=0)[filled.shape[0] // 2]
    return med, ndimage.median_filter(med, size=5, mode="nearest"), filled.mean(axis=0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from napari_sedclassify.io import open_scan
    from napari_sedclassify.processing import PreprocessParams
    from napari_sedclassify.processing.flatfield import FlatField, detect_bad_pixels
    from napari_sedclassify.processing.plan import PreprocessPlan
    from napari_sedclassify.simulate import simulate_scan

    params = PreprocessParams()
    m = params.bad_pixel_sample
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scan.npy"
        write_scan(path, m)
        scans = {"uniform 512 x 512, no bad pixel": open_scan(path, scan_shape=(1, m)),
                 "Medipix quad 512 x 512, no flat-field": simulate_scan(None, scan_shape=(8, 8), detector_px=512,
                                                                        seed=2).scan}
        for name, scan in scans.items():
            sample = scan.read(np.arange(min(m, scan.n_frames)))
            plan = PreprocessPlan.build(params, scan.geometry, scan.metadata, sample)
            ff = FlatField.identity(sample.shape[1:]).with_saturation(plan.saturation_counts)
            t_plan = warm_median_time(lambda: PreprocessPlan.build(params, scan.geometry, scan.metadata, sample), args.repeats)
            t_bad = warm_median_time(lambda: detect_bad_pixels(sample, flatfield=ff), args.repeats)
            t_numpy = warm_median_time(lambda: numpy_statistics(sample), args.repeats)
            res[name] = {"frames": int(len(sample)), "bad_pixels": len(plan.bad_pixels),
                         "edge_pixel_width": plan.edge_pixel_width, "plan_ms": 1e3 * t_plan,
                         "bad_pixel_search_ms": 1e3 * t_bad, "numpy_scipy_statistics_ms": 1e3 * t_numpy,
                         "bad_pixel_search_vs_numpy": t_bad / t_numpy}
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for name, r in res.items():
            print(f"{name}: {r['frames']} frames, {r['bad_pixels']} bad pixels, edge width {r['edge_pixel_width']:g}")
            print(f"  plan {r['plan_ms']:.1f} ms; bad-pixel search {r['bad_pixel_search_ms']:.1f} ms; "
                  f"numpy + scipy statistics {r['numpy_scipy_statistics_ms']:.1f} ms "
                  f"(search / baseline {r['bad_pixel_search_vs_numpy']:.2f}x)")
    return res


if __name__ == "__main__":
    main()
