"""How `sedclassify preprocess` holds up with scan size and frame size, as a user runs it.

Two scans, each written once into --dir and reused (the frames are realistic: saturated direct
beam drifting with the scan, two diffuse rings, falling background, Poisson counts, 12-bit):

- large: --large-side^2 frames of 512x512 uint16 (default 128x128 = 16,384 frames, 8.6 GB: more
  than this machine's page cache keeps comfortably). Unique frames are expensive to simulate, so
  --unique distinct frames (default 1024) are written again with their beam shifted by whole
  pixels, the scan's descan;
- small: --small-side^2 frames of --small-px x --small-px (default 100x100 frames of 192x192,
  ARINA-like).

For each, in the same run: the `sedclassify preprocess` command (a subprocess, as a user runs it:
wall time from start to end, minus the bare interpreter start-up `python -c pass`; frames/s; its
peak resident memory from the kernel's accounting of the child) and the `np.sum` streaming limit
over the same file (a subprocess reading it once, after the command: what the disk and page
cache allow), printed as ratios. Each command time is the median of --repeats runs.

Then, once every command is timed (this process reads the files only after, so that no command
inherits their pages as its peak), the baselines on the same files: ``preprocess()`` in this
process, warm (the pass without the command's start-up: its steady state), a straightforward
numpy pipeline (per frame: centre of mass above half maximum, distances, two ``np.bincount``; on
--numpy-frames frames) and, where LiberTEM is installed (and not --no-libertem), LiberTEM's
one-pixel ring masks about a fixed centre (as many as the command's RIA bins) and its centre of
mass on 2 threads; the command's frames/s over each.

With --cores N [N ...]: the small scan's command again, pinned to the first N cores this process
may use (CPU affinity, as ``taskset`` pins it; the engine runs one thread per usable core): how the
command's speed grows with cores.

    python benchmarks/bench_scale.py [--large-side 128] [--small-side 100] [--skip-large]
                                     [--repeats 3] [--cores 1 2 4 8 16] [--no-libertem] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_cli import libertem_timings, median_time  # noqa: E402
from bench_preprocess import numpy_baseline, write_scan  # noqa: E402

SEDCLASSIFY = [sys.executable, "-m", "napari_sedclassify.cli"]


def frame_model(px: int, cy: float, cx: float, rng) -> np.ndarray:
    """One 12-bit frame of px x px: saturated beam (r = px/100 + 3), rings at 0.22 and 0.38 px."""
    yy, xx = np.indices((px, px), dtype=np.float32)
    r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    rb = px / 100 + 3
    lam = (6000.0 * np.clip(rb + 0.5 - r, 0, 1) + 300 * (1 + (r / 6) ** 2) ** -1.5
           + 3.0 * np.exp(-0.5 * ((r - 0.22 * px) / 12) ** 2) + 1.5 * np.exp(-0.5 * ((r - 0.38 * px) / 20) ** 2) + 0.05)
    return np.minimum(rng.poisson(lam), 4095).astype(np.uint16)


def write_small(path: Path, side: int, px: int) -> None:
    rng = np.random.default_rng(px)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(side * side, px, px))
    for i in range(side * side):
        iy, ix = divmod(i, side)
        arr[i] = frame_model(px, px / 2 - 0.5 + 6 * (iy / side - 0.5), px / 2 - 1 + 6 * (ix / side - 0.5), rng)
    arr.flush()
    del arr


def write_large(path: Path, side: int, unique: int, folder: Path) -> None:
    """side^2 frames of 512x512: ``unique`` simulated frames, repeated with the beam rolled by whole
    pixels along the scan (the descan), written row by row into a memory-mapped .npy."""
    seed_file = folder / f"unique{unique}.npy"
    if not seed_file.exists():
        write_scan(seed_file, unique, seed=7)
    seeds = np.load(seed_file, mmap_mode="r")
    n = side * side
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(n, 512, 512))
    for i in range(n):
        iy, ix = divmod(i, side)
        arr[i] = np.roll(seeds[i % unique], (iy * 8 // side - 4, ix * 8 // side - 4), axis=(0, 1))
        if i % 2048 == 2047:
            arr.flush()
    arr.flush()
    del arr


def ensure(path: Path, make) -> Path:
    if not path.exists():
        t0 = time.perf_counter()
        tmp = path.with_name(f".{path.stem}.tmp.npy")
        make(tmp)
        os.replace(tmp, path)
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def in_child(func, *args) -> None:
    """``func(*args)`` in a spawned child process (its memory is its own)."""
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(target=func, args=args)
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{func.__name__}{args}: exit code {proc.exitcode}")


def run_child(argv, cpus=None) -> tuple[float, float, float]:
    """Wall s, CPU s and peak RSS (MB) of one subprocess (pinned to ``cpus`` if given); the RSS
    from wait4's rusage."""
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pin)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed:\n{err[-3000:]}{out[-1000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def np_sum_child(path: Path) -> float:
    code = ("import sys, time, numpy as np\n"
            "a = np.load(sys.argv[1], mmap_mode='r'); t = time.perf_counter(); s = 0\n"
            "for i in range(0, a.shape[0], 64): s += int(a[i:i+64].sum(dtype=np.uint64))\n"
            "print(time.perf_counter() - t)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def measure(path: Path, n: int, out_dir: Path, repeats: int = 1, cpus=None) -> dict:
    startup = min(run_child([sys.executable, "-c", "pass"])[0] for _ in range(3))
    out = out_dir / f"{path.stem}_results.h5"
    shutil.rmtree(out, ignore_errors=True)
    out.unlink(missing_ok=True)
    run_child(SEDCLASSIFY + ["preprocess", str(path), "--out", str(out)])  # warms numba's cache and the page cache
    runs = []
    for _ in range(max(1, repeats)):
        out.unlink(missing_ok=True)
        runs.append(run_child(SEDCLASSIFY + ["preprocess", str(path), "--out", str(out)], cpus))
    wall, cpu, rss = sorted(runs)[len(runs) // 2]
    stream = np_sum_child(path)
    return {"frames": n, "file_gb": path.stat().st_size / 1e9, "startup_s": startup, "wall_s": wall, "cpu_s": cpu,
            "walls_s": [r[0] for r in runs], "cores": len(cpus) if cpus else None,
            "peak_rss_mb": rss, "frames_per_s": n / (wall - startup), "np_sum_s": stream,
            "np_sum_frames_per_s": n / stream, "vs_np_sum": stream / (wall - startup),
            "load_average": os.getloadavg()[0]}


def baselines(path: Path, scan_shape, repeats: int, numpy_frames: int, libertem: bool) -> dict:
    """The same file's frames in this process: ``preprocess()`` warm (median of ``repeats``), the numpy
    pipeline on its first ``numpy_frames`` frames, and LiberTEM's ring masks (one per RIA bin of
    the command) and centre of mass (see the module docstring)."""
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.preprocess import preprocess

    n = int(np.prod(scan_shape))
    scan = open_scan(path)
    first = preprocess(scan)
    t_api = median_time(lambda: preprocess(scan), repeats)
    nbins = int(first.radii_px.size)
    det = tuple(scan.detector_shape)
    k = min(numpy_frames, n)
    sub = scan.read(np.arange(k))  # the scan's own reader: the first k frames
    t_np = median_time(lambda: numpy_baseline(sub, np.ones(det, np.float32), nbins), max(1, repeats - 1))
    out = {"in_process": {"wall_s": t_api, "frames_per_s": n / t_api},
           "numpy_pipeline": {"frames": k, "wall_s": t_np, "frames_per_s": k / t_np}, "ria_bins": nbins}
    if libertem:
        px = det[1]
        lt = libertem_timings(path, scan_shape, max(1, repeats - 1), det_px=px, rings=nbins,
                              centre=(px / 2 - 0.5, px / 2 - 0.5))
        if lt is not None:
            out["libertem"] = lt
    return out


def columns(cells, text) -> str:
    """The baselines table's columns: text(cell) right-aligned, "-" where that baseline did not run."""
    return "".join(f"{text(c):>{w}}" if c else f"{'-':>{w}}" for c, w in zip(cells, (12, 9, 16, 14), strict=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/sedclassify-bench-scale")
    ap.add_argument("--large-side", type=int, default=128)
    ap.add_argument("--unique", type=int, default=1024)
    ap.add_argument("--small-side", type=int, default=100)
    ap.add_argument("--small-px", type=int, default=192)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each command (median reported)")
    ap.add_argument("--cores", type=int, nargs="*", default=[], metavar="N",
                    help="also run the small scan's command pinned to N cores, for each N")
    ap.add_argument("--numpy-frames", type=int, nargs=2, default=[1000, 128], metavar=("SMALL", "LARGE"),
                    help="frames of each scan for the numpy pipeline (default 1000 and 128)")
    ap.add_argument("--no-libertem", action="store_true", help="skip LiberTEM even where it is installed")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    results = {"cores": len(allowed) or os.cpu_count()}
    s, px = args.small_side, args.small_px
    # the scans are written in a child process: a process that touched the 8.6 GB file has that
    # resident size at the moment it starts a command, and Linux reports it as the command's peak
    small = ensure(folder / f"small{s}x{s}_{px}px.npy", lambda p: in_child(write_small, p, s, px))
    results["small"] = measure(small, s * s, folder, args.repeats)
    for k in args.cores:
        if not 1 <= k <= len(allowed):
            print(f"--cores {k}: this process may use {len(allowed)} cores; skipped", flush=True)
            continue
        results[f"small_{k}_cores"] = measure(small, s * s, folder, args.repeats, set(allowed[:k]))
    if not args.skip_large:
        side = args.large_side
        large = ensure(folder / f"large{side}x{side}.npy", lambda p: in_child(write_large, p, side, args.unique, folder))
        results["large"] = measure(large, side * side, folder, args.repeats)
    # the baselines, after every command (see the module docstring)
    results["small"]["baselines"] = baselines(small, (s, s), args.repeats, args.numpy_frames[0], not args.no_libertem)
    if not args.skip_large:
        results["large"]["baselines"] = baselines(large, (side, side), args.repeats, args.numpy_frames[1],
                                                  not args.no_libertem)
    print(f"{'scan':<34}{'frames':>8}{'GB':>7}{'wall s':>8}{'fr/s':>8}{'peak MB':>9}{'np.sum fr/s':>13}{'ratio':>7}")
    rows = [("small", f"{s}x{s} frames of {px}x{px}")]
    rows += [(f"small_{k}_cores", f"  the same on {k} core{'s' if k > 1 else ''}") for k in args.cores]
    rows += [("large", f"{args.large_side}x{args.large_side} of 512x512")]
    for key, label in rows:
        r = results.get(key)
        if r:
            print(f"{label:<34}{r['frames']:>8}{r['file_gb']:>7.2f}{r['wall_s']:>8.2f}{r['frames_per_s']:>8.0f}"
                  f"{r['peak_rss_mb']:>9.0f}{r['np_sum_frames_per_s']:>13.0f}{r['vs_np_sum']:>7.2f}")
    print(f"(python -c pass: {results['small']['startup_s']:.3f} s, subtracted; load average "
          f"{os.getloadavg()[0]:.1f}; ratio = command frames/s over np.sum frames/s)")
    print(f"\n{'scan':<34}{'command':>9}{'in process':>12}{'numpy':>9}{'LiberTEM rings':>16}{'LiberTEM CoM':>14}"
          "   frames/s; command over each")
    for key, label in (("small", f"{s}x{s} frames of {px}x{px}"), ("large", f"{args.large_side}x{args.large_side} of 512x512")):
        r = results.get(key)
        if not r:
            continue
        b = r["baselines"]
        lt = b.get("libertem", {})
        cmd = r["frames_per_s"]
        cells = [b["in_process"], b["numpy_pipeline"], lt.get("ring_masks"), lt.get("centre_of_mass")]
        print(f"{label:<34}{cmd:>9.0f}" + columns(cells, lambda c: f"{c['frames_per_s']:.0f}"))
        print(f"{'  command over it':<34}{'':>9}" + columns(cells, lambda c, cmd=cmd: f"{cmd / c['frames_per_s']:.2f}"))
    print(f"(numpy pipeline on {args.numpy_frames[0]} and {args.numpy_frames[1]} frames; LiberTEM: one-pixel rings, "
          "as many as the command's RIA bins, about a fixed centre, and the centre of mass, 2 threads)")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
