"""Speed as the user sees it: ``sedclassify preprocess`` and ``sedclassify predict`` (FCNN) timed as
commands, from start to end, on a scan of 512x512 uint16 frames (default 40x40 = 1600 frames,
839 MB, the paper's unit of work), beside the same work in numpy and the ``np.sum`` streaming
limit, all timed in this run.

The scan is the realistic one of ``bench_preprocess.py`` (saturated direct beam drifting +-10 px
with the scan, two diffuse rings, falling background, Poisson counts) written as an (N, 512, 512)
``.npy`` into --dir (default /tmp/sedclassify-bench-cli) and reused; the FCNN is trained once on
it with quadrant labels (its accuracy does not matter here, its cost does). Everything is read
from the page cache: the first, untimed run of each command warms it (and numba's disk cache).

Measured, each the median of --repeats runs:

- ``python -c pass``: the bare interpreter start-up, subtracted as the issue asks;
- ``sedclassify preprocess SCAN``, ``sedclassify predict MODEL SCAN`` (subprocesses): wall time,
  CPU time (user + sys of the child), frames/s = frames / (wall - start-up);
- ``sedclassify predict`` with the same model in a file without its arrays (``estimator.npz``),
  as written before them: applied through scikit-learn and skops (the baseline of the arrays);
- in this process: ``preprocess()`` once warm (what the command costs without start-up), the numpy
  pipeline (per frame: gain, thresholded centre of mass, distances, two ``np.bincount``; on
  --baseline-frames frames) and one ``np.sum`` pass over the memory map;
- where LiberTEM is installed: its 181 one-pixel ring masks about a fixed centre and its centre
  of mass on the same file, 2 threads (first run apart, then steady state);
- with --sizes: the preprocess command on scans of other sizes, and a straight-line fit
  wall = fixed + per-frame x frames (how the cost grows with the scan);
- with --cluster: the preprocess command with ``--workers 2`` (a local dask.distributed cluster,
  the earlier default);
- with --quad: the preprocess command on the simulator's 40x40 scan of a Medipix3 quad (512 x 512
  with wide chip-edge pixels under the beam, hot and dead pixels, its flood flat-field; written
  once by ``simulate_scan`` into --dir), where the beam's centre is found by the wide-pixel
  symmetry search.

    python benchmarks/bench_cli.py [--side 40] [--repeats 3] [--sizes 20 40 64] [--cluster] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_preprocess import DET, flatfield, numpy_baseline, stream_sum, write_scan  # noqa: E402

SEDCLASSIFY = [sys.executable, "-m", "napari_sedclassify.cli"]


def scan_file(folder: Path, side: int) -> Path:
    path = folder / f"scan{side}x{side}.npy"
    if not path.exists():
        t0 = time.perf_counter()
        tmp = folder / f".scan{side}.tmp.npy"
        write_scan(tmp, side * side, seed=side)
        os.replace(tmp, path)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def quad_scan(folder: Path) -> Path:
    """The simulator's 40x40 scan of 512x512 frames on a Medipix3 quad (metadata and its flood
    flat-field ``flatfield_A.npy`` beside it), written once."""
    from napari_sedclassify.simulate import simulate_scan

    path = folder / "quad40x40_512.npy"
    if not path.exists():
        t0 = time.perf_counter()
        simulate_scan(path, scan_shape=(40, 40), detector_px=DET, seed=14)
        print(f"simulated {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def model_file(folder: Path, scan: Path, side: int) -> Path:
    path = folder / f"fcnn{side}.sedmodel"
    if not path.exists():
        from napari_sedclassify.io import open_scan
        from napari_sedclassify.models.persistence import save_model
        from napari_sedclassify.pipeline.train import train_model

        labels = np.ones((side, side), np.uint8)
        h = side // 2
        labels[:h, h:], labels[h:, :h], labels[h:, h:] = 2, 3, 4
        save_model(train_model([open_scan(scan)], [labels], model="fcnn", params={"max_epochs": 10}), path)
    return path


def without_arrays(model: Path) -> Path:
    """A copy of the model file without its arrays: applied through scikit-learn and skops."""
    import zipfile

    path = model.with_name(model.stem + "_skops_only.sedmodel")
    with zipfile.ZipFile(model) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        meta = json.loads(zin.read("model.json"))
        meta["estimator"].pop("arrays", None)
        zout.writestr("model.json", json.dumps(meta))
        zout.writestr("estimator.skops", zin.read("estimator.skops"))
    return path


def run_command(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + sys of the child) of one subprocess run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def timed_command(argv, repeats: int) -> dict:
    runs = [run_command(argv) for _ in range(repeats)]
    walls = [w for w, _ in runs]
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(c for _, c in runs), "walls": walls}


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def libertem_timings(scan: Path, nav_shape, repeats: int, det_px: int = DET, rings: int = 181,
                     centre=(255.5, 254.0)) -> dict | None:
    """LiberTEM's UDFs on the same file, where LiberTEM is installed: ``rings`` one-pixel ring masks
    about a FIXED ``centre`` (its radial profile; sparse masks) and the centre of mass, on a
    2-thread context. The first run of each (mask building, numba compilation) is reported
    apart; steady state is the median of the next runs. Results under "ring_masks" and
    "centre_of_mass"."""
    try:
        import libertem
        import libertem.api as lt
        import libertem.masks as masks
        from libertem.udf.com import CoMUDF
        from libertem.udf.masks import ApplyMasksUDF
    except ImportError:
        return None
    n = int(np.prod(nav_shape))
    t0 = time.perf_counter()
    ctx = lt.Context.make_with("threads", cpus=2)
    out = {"version": libertem.__version__, "context_start_s": time.perf_counter() - t0, "rings": rings}
    try:
        ds = ctx.load("npy", path=str(scan), nav_shape=tuple(nav_shape))
        cy, cx = centre
        factories = [(lambda r=r: masks.ring(centerX=cx, centerY=cy, imageSizeX=det_px, imageSizeY=det_px,
                                             radius=r + 1, radius_inner=r)) for r in range(rings)]
        udfs = {"ring_masks": ApplyMasksUDF(mask_factories=factories, mask_count=rings, mask_dtype=np.float32,
                                            use_sparse=True),
                "centre_of_mass": CoMUDF.with_params(cy=cy, cx=cx, r=det_px * 30.0 / 512)}
        for name, udf in udfs.items():
            t0 = time.perf_counter()
            ctx.run_udf(dataset=ds, udf=udf)
            first = time.perf_counter() - t0
            t = median_time(lambda: ctx.run_udf(dataset=ds, udf=udf), repeats)
            out[name] = {"first_run_s": first, "wall_s": t, "frames_per_s": n / t}
    finally:
        ctx.close()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=40, help="scan side: side x side frames of 512x512 (default 40)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="*", default=[], metavar="SIDE",
                    help="also time the preprocess command on these scan sides (growth with scan size)")
    ap.add_argument("--cluster", action="store_true", help="also time preprocess --workers 2 (a local cluster)")
    ap.add_argument("--quad", action="store_true",
                    help="also time preprocess on a simulated 40x40 Medipix3 quad scan with its flat-field")
    ap.add_argument("--baseline-frames", type=int, default=256, help="frames for the numpy pipeline")
    ap.add_argument("--no-libertem", action="store_true", help="skip LiberTEM even where it is installed")
    ap.add_argument("--dir", default="/tmp/sedclassify-bench-cli", help="work folder (kept and reused)")
    ap.add_argument("--clean", action="store_true", help="delete the work folder at the end")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    side, n = args.side, args.side * args.side
    scan = scan_file(work, side)
    model = model_file(work, scan, side)
    out_h5, out_pred = work / "out.h5", work / "pred"
    pre = SEDCLASSIFY + ["preprocess", str(scan), "--out", str(out_h5), "--force"]
    pred = SEDCLASSIFY + ["predict", str(model), str(scan), "--out", str(out_pred), "--force"]
    pred_skops = SEDCLASSIFY + ["predict", str(without_arrays(model)), str(scan), "--out", str(out_pred), "--force"]
    load = os.getloadavg()

    # warm-up: page cache, numba's disk cache, .pyc files
    run_command(pre)
    run_command(pred)
    run_command(pred_skops)
    bare = timed_command([sys.executable, "-c", "pass"], max(5, args.repeats))
    res = {"frames": n, "frame_shape": [DET, DET], "scan_mb": round(scan.stat().st_size / 1e6), "cores": os.cpu_count(),
           "python_startup_s": bare["wall_s"]}
    for name, cmd in (("preprocess", pre), ("predict", pred), ("predict_without_arrays", pred_skops)):
        t = timed_command(cmd, args.repeats)
        net = t["wall_s"] - bare["wall_s"]
        res[name] = {**t, "frames_per_s": n / net, "frames_per_cpu_s": n / t["cpu_s"]}

    # in this process: the same work without start-up, numpy, np.sum
    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.preprocess import preprocess

    s = open_scan(scan)
    preprocess(s)
    t_api = median_time(lambda: preprocess(s), args.repeats)
    res["preprocess_in_process"] = {"wall_s": t_api, "frames_per_s": n / t_api}
    frames = np.load(scan, mmap_mode="r")
    t_sum = median_time(lambda: stream_sum(frames), args.repeats)
    res["np_sum"] = {"wall_s": t_sum, "frames_per_s": n / t_sum}
    k = min(args.baseline_frames, n)
    corr = flatfield().correction()
    sub = np.asarray(frames[:k])
    t_np = median_time(lambda: numpy_baseline(sub, corr, 363), max(1, args.repeats - 1))
    res["numpy_pipeline"] = {"frames": k, "wall_s": t_np, "frames_per_s": k / t_np}

    lt = None if args.no_libertem else libertem_timings(scan, (side, side), max(1, args.repeats - 1))
    if lt is not None:
        res["libertem"] = lt

    if args.cluster:
        t = timed_command(pre + ["--workers", "2"], 1)
        res["preprocess_cluster_2_workers"] = {**t, "frames_per_s": n / (t["wall_s"] - bare["wall_s"])}

    if args.quad:
        path = quad_scan(work)
        cmd = SEDCLASSIFY + ["preprocess", str(path), "--flatfield", str(work / "flatfield_A.npy"),
                             "--out", str(out_h5), "--force"]
        run_command(cmd)
        t = timed_command(cmd, args.repeats)
        res["preprocess_quad"] = {**t, "frames_per_s": 1600 / (t["wall_s"] - bare["wall_s"])}

    if args.sizes:
        growth = []
        for sd in sorted(set(args.sizes) | {side}):
            path = scan_file(work, sd)
            cmd = SEDCLASSIFY + ["preprocess", str(path), "--out", str(out_h5), "--force"]
            run_command(cmd)
            t = timed_command(cmd, args.repeats)
            growth.append({"side": sd, "frames": sd * sd, "wall_s": t["wall_s"], "cpu_s": t["cpu_s"],
                           "frames_per_s": sd * sd / (t["wall_s"] - bare["wall_s"])})
        x = np.array([g["frames"] for g in growth], float)
        y = np.array([g["wall_s"] for g in growth])
        per_frame, fixed = np.polyfit(x, y, 1) if len(growth) > 1 else (np.nan, np.nan)
        res["growth"] = {"runs": growth, "fixed_s": float(fixed), "per_frame_ms": float(per_frame * 1e3)}

    res["load_average"] = [load, os.getloadavg()]
    p, q = res["preprocess"], res["predict"]
    res["ratios"] = {
        "preprocess_cmd_vs_numpy": p["frames_per_s"] / res["numpy_pipeline"]["frames_per_s"],
        "predict_cmd_vs_numpy": q["frames_per_s"] / res["numpy_pipeline"]["frames_per_s"],
        "preprocess_cmd_vs_np_sum": p["frames_per_s"] / res["np_sum"]["frames_per_s"],
        "predict_cmd_vs_np_sum": q["frames_per_s"] / res["np_sum"]["frames_per_s"],
        "predict_cmd_vs_without_arrays": q["frames_per_s"] / res["predict_without_arrays"]["frames_per_s"],
        "preprocess_cmd_vs_in_process": p["frames_per_s"] / res["preprocess_in_process"]["frames_per_s"],
    }
    if lt is not None:
        res["ratios"]["preprocess_cmd_vs_libertem_rings"] = p["frames_per_s"] / lt["ring_masks"]["frames_per_s"]
        res["ratios"]["preprocess_in_process_vs_libertem_rings"] = (
            res["preprocess_in_process"]["frames_per_s"] / lt["ring_masks"]["frames_per_s"])
    if lt is not None:  # flat aliases for the table
        res["libertem_rings"], res["libertem_com"] = lt["ring_masks"], lt["centre_of_mass"]
    if args.clean:
        shutil.rmtree(work)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{n} frames of {DET}x{DET} uint16 ({res['scan_mb']} MB), {os.cpu_count()} cores, load average "
              f"{load[0]:.1f} -> {res['load_average'][1][0]:.1f}; python -c pass: {bare['wall_s']:.3f} s")
        print(f"{'what':<44}{'wall s':>9}{'CPU s':>9}{'frames/s':>10}")
        for key, label in (("preprocess", "sedclassify preprocess (minus start-up)"),
                           ("predict", "sedclassify predict, FCNN (minus start-up)"),
                           ("predict_without_arrays", "  the same, file without arrays (skops)"),
                           ("preprocess_cluster_2_workers", "sedclassify preprocess --workers 2"),
                           ("preprocess_quad", "preprocess, simulated quad + flat-field"),
                           ("preprocess_in_process", "preprocess() in this process, warm"),
                           ("numpy_pipeline", f"numpy pipeline ({k} frames)"),
                           ("libertem_rings", "LiberTEM: 181 ring masks, fixed centre"),
                           ("libertem_com", "LiberTEM: centre of mass"),
                           ("np_sum", "np.sum streaming limit")):
            if key in res:
                r = res[key]
                cpu = f"{r['cpu_s']:9.2f}" if "cpu_s" in r else " " * 9
                print(f"{label:<44}{r['wall_s']:9.2f}{cpu}{r['frames_per_s']:10.0f}")
        for key, v in res["ratios"].items():
            print(f"  {key}: {v:.2f}")
        if "growth" in res:
            g = res["growth"]
            for r in g["runs"]:
                print(f"  preprocess {r['side']}x{r['side']}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU, "
                      f"{r['frames_per_s']:.0f} frames/s")
            print(f"  fit: {g['fixed_s']:.2f} s + {g['per_frame_ms']:.3f} ms per frame")
    return res


if __name__ == "__main__":
    main()
