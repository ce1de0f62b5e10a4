"""Benchmark: flat-field + per-frame centring + RIA of 512x512 uint16 frames from a memory map.

Writes a realistic scan (saturated direct beam that moves with the scan, diffuse rings, falling
background, Poisson counts; 4096 frames = 2 GiB by default) to a .npy in a temporary folder,
warms the page cache, then measures in the same process:

- streaming limit: one ``np.sum`` pass over the same frames (the fastest anything can read them);
- the engine (FrameRunner: flat-field, CentreFinder, RadialProfile) on 1 and on all cores;
- the full ``preprocess()`` pipeline (adds bad-pixel detection, BF/ADF virtual images, descan);
- a straightforward numpy implementation (per frame: gain, threshold centre of mass, distances
  computed per frame, ``np.bincount`` for sums and counts) on a subset of frames;
- pyFAI ``integrate1d`` with a FIXED centre (one reused integrator, csr, no pixel splitting) on
  a subset;
- peak memory of ``preprocess()`` on the whole scan, in a fresh process.

Each timing is repeated and the median reported; ratios are printed. Usage:
    python benchmarks/bench_preprocess.py [--frames 4096] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DET = 512


def write_scan(path: Path, n: int, seed: int = 0) -> None:
    """n frames (n, 512, 512) uint16: saturated beam (r = 5 px) drifting +-10 px, rings, Poisson."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(n, DET, DET))
    yy, xx = np.indices((DET, DET), dtype=np.float32)
    for i in range(n):
        iy, ix = divmod(i, side)
        cy = 255.5 + 20 * (iy / side - 0.5) + rng.normal(0, 0.2)
        cx = 254.0 + 20 * (ix / side - 0.5) + rng.normal(0, 0.2)
        r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        lam = (6000.0 * np.clip(5.5 - r, 0, 1) + 300 * (1 + (r / 6) ** 2) ** -1.5
               + 3.0 * np.exp(-0.5 * ((r - 111) / 12) ** 2) + 1.5 * np.exp(-0.5 * ((r - 196) / 20) ** 2)
               + 0.05)
        arr[i] = np.minimum(rng.poisson(lam), 4095)
    arr.flush()
    del arr


def flatfield(seed: int = 1):
    from napari_sedclassify.processing import FlatField

    rng = np.random.default_rng(seed)
    gain = rng.normal(1.0, 0.05, (DET, DET))
    mask = rng.random((DET, DET)) < 5e-4
    return FlatField.from_response(np.where(mask, 0.0, gain))


def timed(fn, repeats: int) -> tuple[float, list]:
    """Median wall-clock seconds of fn() over repeats, and all of them."""
    return timed_cpu(fn, repeats)[:2]


def timed_cpu(fn, repeats: int) -> tuple[float, list, float]:
    """Median wall-clock seconds, all of them, and the median CPU seconds of this process (all
    threads): on a shared machine, CPU time says what the work costs whatever else runs."""
    times, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(times), times, statistics.median(cpu)


def stream_sum(frames) -> float:
    s = 0
    for i in range(0, frames.shape[0], 64):
        s += int(frames[i:i + 64].sum(dtype=np.uint64))
    return s


def numpy_baseline(frames, corr, nbins: int):
    """The straightforward way: per frame, gain-correct, centre of mass above half maximum,
    distances from that centre, np.bincount of values and of pixels."""
    valid = np.isfinite(corr)
    yy, xx = np.indices(corr.shape)
    out = np.empty((frames.shape[0], nbins), np.float32)
    for i in range(frames.shape[0]):
        f = frames[i].astype(np.float32) * np.where(valid, corr, 0)
        hot = f > 0.5 * f.max()
        cy, cx = yy[hot].mean(), xx[hot].mean()
        r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        k = r.astype(np.int64)
        use = valid & (k < nbins)
        s = np.bincount(k[use], f[use], nbins)
        c = np.bincount(k[use], minlength=nbins)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i] = s / c
    return out


def pyfai_fixed(frames, mask, nbins: int):
    """pyFAI's fastest 1-px integration with a fixed centre: one integrator, its csr engine
    built once and reused (the masked call re-checks the mask every frame, so the faster of
    masked and unmasked is reported)."""
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    p = 55e-6
    ai = AzimuthalIntegrator(dist=0.1, poni1=256.0 * p, poni2=254.5 * p,
                             detector=Detector(p, p, max_shape=(DET, DET)))
    best = np.inf
    for m in (mask.astype(np.int8), None):
        kw = dict(unit="r_mm", radial_range=(0, nbins * p * 1e3), method=("no", "csr", "cython"),
                  correctSolidAngle=False, mask=m)
        ai.integrate1d(frames[0], nbins, **kw)  # builds the csr engine once
        t0 = time.perf_counter()
        for i in range(frames.shape[0]):
            ai.integrate1d(frames[i], nbins, **kw)
        best = min(best, time.perf_counter() - t0)
    return best


def pcc_timings(nbins: int = 363) -> dict:
    """PCC on RIA-sized features: build (standardise once) and one row, for 40x40 and 256x256
    scans; baseline: the row taken from np.corrcoef of the whole 40x40 scan."""
    from napari_sedclassify.processing import PCC

    rng = np.random.default_rng(2)
    out = {}
    for side in (40, 256):
        f = rng.normal(size=(side, side, nbins)).astype(np.float32)
        t0 = time.perf_counter()
        pcc = PCC(f)
        t1 = time.perf_counter()
        rows, _ = timed(lambda: pcc.row((side // 2, side // 3)), 5)
        out[f"{side}x{side}"] = {"build_s": t1 - t0, "row_ms": rows * 1e3}
    f = rng.normal(size=(1600, nbins))
    out["40x40_corrcoef_row_ms"] = timed(lambda: np.corrcoef(f)[820], 3)[0] * 1e3
    return out


PEAK_CHILD = """
import json, resource, sys, threading, time, tracemalloc
import numpy as np
from napari_sedclassify.io import open_scan
from napari_sedclassify.pipeline.preprocess import preprocess
sys.path.insert(0, {bench_dir!r})
from bench_preprocess import flatfield

def status():
    d = {{}}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("RssAnon", "RssFile"):
            d[k] = int(v.split()[0]) / 1024
    return d

peak = {{"RssAnon": 0.0, "RssFile": 0.0}}
done = threading.Event()
def sample():
    while not done.is_set():
        for k, v in status().items():
            peak[k] = max(peak[k], v)
        time.sleep(0.02)
scan = open_scan({path!r}, scan_shape=(1, {n}))
ff = flatfield()
base = status()["RssAnon"]
threading.Thread(target=sample, daemon=True).start()
tracemalloc.start()
t0 = time.perf_counter()
res = preprocess(scan, None, ff)
dt = time.perf_counter() - t0
done.set()
cur, npeak = tracemalloc.get_traced_memory()
print(json.dumps({{"seconds": dt, "numpy_peak_mib": npeak / 2**20, "anon_before_mib": base,
                   "anon_peak_mib": peak["RssAnon"], "file_pages_peak_mib": peak["RssFile"],
                   "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-frames", type=int, default=256, help="frames for the numpy and pyFAI baselines")
    ap.add_argument("--dir", default=None, help="folder for the temporary scan (default: system temp)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.preprocess import preprocess
    from napari_sedclassify.processing import CentreFinder, FrameRunner, RadialProfile

    nbins = 363  # half the 512 x 512 diagonal: the default RIA
    results = {"frames": args.frames, "cpus": os.cpu_count(), "repeats": args.repeats,
               "load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bench_scan.npy"
        t0 = time.perf_counter()
        write_scan(path, args.frames)
        results["write_s"] = time.perf_counter() - t0
        frames = np.load(path, mmap_mode="r")
        stream_sum(frames)  # warm the page cache
        ff = flatfield()
        corr = ff.correction()

        t_sum, _, c_sum = timed_cpu(lambda: stream_sum(frames), args.repeats)
        results["stream_sum_fps"] = args.frames / t_sum
        results["stream_sum_frames_per_cpu_s"] = args.frames / c_sum

        scan = open_scan(path, scan_shape=(1, args.frames))
        eng = {}
        for workers in (1, os.cpu_count() or 1):
            runner = FrameRunner([RadialProfile(nbins)], ff, CentreFinder(5.0))
            runner.run(frames[:64], workers=workers)  # compile and load the kernels
            t, ts, c = timed_cpu(lambda: runner.run(scan, workers=workers), args.repeats)
            eng[workers] = args.frames / t
            results[f"engine_fps_{workers}_workers"] = args.frames / t
            results[f"engine_runs_s_{workers}_workers"] = ts
            results[f"engine_frames_per_cpu_s_{workers}_workers"] = args.frames / c
        engine_fps = eng[max(eng)]
        t, _, c = timed_cpu(lambda: preprocess(scan, None, ff), args.repeats)
        results["preprocess_fps"] = args.frames / t
        results["preprocess_frames_per_cpu_s"] = args.frames / c

        nb = min(args.baseline_frames, args.frames)
        sub = np.asarray(frames[:nb])
        t, _, c = timed_cpu(lambda: numpy_baseline(sub, corr, nbins), 1)
        results["numpy_baseline_fps"] = nb / t
        results["numpy_baseline_frames_per_cpu_s"] = nb / c
        try:
            results["pyfai_fixed_centre_fps"] = nb / pyfai_fixed(sub, ff.mask, nbins)
        except ImportError:
            results["pyfai_fixed_centre_fps"] = None

        results["pcc"] = pcc_timings(nbins)
        child = PEAK_CHILD.format(bench_dir=str(Path(__file__).resolve().parent), path=str(path), n=args.frames)
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
        results["peak_memory"] = json.loads(out.stdout.strip().splitlines()[-1])
        del frames, scan
    results["load_avg_end"] = os.getloadavg()
    w = max(eng)
    results["ratios"] = {
        "engine_vs_numpy_cpu": results[f"engine_frames_per_cpu_s_{w}_workers"]
        / results["numpy_baseline_frames_per_cpu_s"],
        "engine_vs_numpy": engine_fps / results["numpy_baseline_fps"],
        "engine_vs_pyfai_fixed": (engine_fps / results["pyfai_fixed_centre_fps"]
                                  if results["pyfai_fixed_centre_fps"] else None),
        "engine_vs_stream_sum": engine_fps / results["stream_sum_fps"],
        "engine_scaling": eng[max(eng)] / eng[1],
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        r = results
        print(f"{args.frames} frames 512x512 uint16 from a memory-mapped .npy (page cache warm), "
              f"{r['cpus']} cores, load average {r['load_avg_start'][0]:.1f} -> {r['load_avg_end'][0]:.1f}")
        print("                                      frames/s  frames per CPU-second")
        print(f"  streaming limit (np.sum)          {r['stream_sum_fps']:9.0f} {r['stream_sum_frames_per_cpu_s']:9.0f}")
        for w in sorted(eng):
            print(f"  engine, {w} worker(s)              {eng[w]:9.0f} "
                  f"{r[f'engine_frames_per_cpu_s_{w}_workers']:9.0f}")
        print(f"  preprocess() pipeline             {r['preprocess_fps']:9.0f} {r['preprocess_frames_per_cpu_s']:9.0f}")
        print(f"  numpy baseline (per-frame bincount){r['numpy_baseline_fps']:8.0f} "
              f"{r['numpy_baseline_frames_per_cpu_s']:9.0f}")
        if r["pyfai_fixed_centre_fps"]:
            print(f"  pyFAI integrate1d, fixed centre   {r['pyfai_fixed_centre_fps']:9.0f} frames/s")
        q = r["ratios"]
        print(f"  ratios: engine/numpy {q['engine_vs_numpy']:.1f}x (per CPU-second {q['engine_vs_numpy_cpu']:.1f}x), "
              f"engine/pyFAI(fixed) "
              f"{q['engine_vs_pyfai_fixed'] or float('nan'):.1f}x, engine/np.sum {q['engine_vs_stream_sum']:.2f}, "
              f"scaling {q['engine_scaling']:.2f}x")
        pc = r["pcc"]
        print(f"  PCC row: 40x40 {pc['40x40']['row_ms']:.2f} ms (+{pc['40x40']['build_s'] * 1e3:.0f} ms once; "
              f"np.corrcoef row {pc['40x40_corrcoef_row_ms']:.0f} ms), 256x256 {pc['256x256']['row_ms']:.1f} ms "
              f"(+{pc['256x256']['build_s']:.2f} s once)")
        pm = r["peak_memory"]
        print(f"  preprocess() of all {args.frames} frames in a fresh process: {pm['seconds']:.1f} s, "
              f"anonymous memory {pm['anon_before_mib']:.0f} -> peak {pm['anon_peak_mib']:.0f} MiB, "
              f"numpy peak {pm['numpy_peak_mib']:.0f} MiB (file pages of the memory map, which the "
              f"kernel can drop: peak {pm['file_pages_peak_mib']:.0f} MiB)")
    return results


if __name__ == "__main__":
    main()
