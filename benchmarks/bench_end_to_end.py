"""End-to-end throughput of a batch prediction (read, flat-field, centre, RIA, virtual images,
FCNN predict) on a 4096-frame scan of 512x512 uint16 frames (2.1 GB), in this process (threads),
on a dask LocalCluster of 1 worker process and of 2, with the peak memory of each worker.

The scan is made of simulated frames: a 16x16 simulated scan tiled 4x4 times into a 64x64 .npy
(throughput does not depend on which frames repeat). An FCNN is trained on two 8x8 scans of the
same session. Everything lives in --workdir (default /tmp/sedclassify-bench-e2e) and is reused;
the scan is read from the page cache (the first pass warms it). Cluster start-up is not counted.

Besides wall time, the CPU time of every process involved (this one and the workers) is measured:
frames per CPU-second is what one dedicated core delivers, a number that stays meaningful on a
machine shared with other work (wall-clock frames/s there depends on what else runs).

    python benchmarks/bench_end_to_end.py [--workdir DIR] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import psutil


def make_data(work: Path) -> dict:
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.train import train_model
    from napari_sedclassify.simulate import simulate_scan

    work.mkdir(parents=True, exist_ok=True)
    big = work / "scan64.npy"
    model = work / "fcnn.sedmodel"
    flat = work / "flatfield_A.npy"
    if not big.exists():
        t0 = time.perf_counter()
        base = simulate_scan(work / "base16.npy", scan_shape=(16, 16), detector_px=512, seed=1)
        frames = np.load(base.scan.source, mmap_mode="r")
        out = np.lib.format.open_memmap(work / "scan64.tmp.npy", mode="w+", dtype=np.uint16,
                                        shape=(64, 64, 512, 512))
        for by in range(4):
            for bx in range(4):
                out[16 * by:16 * (by + 1), 16 * bx:16 * (bx + 1)] = frames
        out.flush()
        del out
        meta = json.loads((work / "base16.json").read_text())
        (work / "scan64.json").write_text(json.dumps({"geometry": meta["geometry"]}))
        os.replace(work / "scan64.tmp.npy", big)
        print(f"made the 4096-frame scan in {time.perf_counter() - t0:.0f} s")
    if not model.exists():
        train = [simulate_scan(work / f"train{i}.npy", scan_shape=(8, 8), detector_px=512, seed=10 + i) for i in (0, 1)]
        m = train_model([t.scan.source for t in train], [t.truth for t in train], model="fcnn", flatfield=str(flat))
        save_model(m, model)
    return {"scan": str(big), "model": str(model), "flat": str(flat)}


class PeakMemory(threading.Thread):
    """Samples the resident and anonymous (resident minus file-backed) memory of processes."""

    def __init__(self, pids, interval=0.02):
        super().__init__(daemon=True)
        self.procs = [psutil.Process(p) for p in pids]
        self.interval = interval
        self.peak_rss = {p: 0 for p in pids}
        self.peak_anon = {p: 0 for p in pids}
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            for p in self.procs:
                try:
                    m = p.memory_info()
                except psutil.NoSuchProcess:
                    continue
                self.peak_rss[p.pid] = max(self.peak_rss[p.pid], m.rss)
                self.peak_anon[p.pid] = max(self.peak_anon[p.pid], m.rss - m.shared)
            time.sleep(self.interval)


def cpu_seconds(pids) -> float:
    total = 0.0
    for p in pids:
        t = psutil.Process(p).cpu_times()
        total += t.user + t.system
    return total


def run_once(data, out: Path, client=None, workers=None, pids=()):
    """(wall s, CPU s of this process and ``pids``) of one batch prediction of the scan."""
    from napari_sedclassify.pipeline.batch import batch_predict

    shutil.rmtree(out, ignore_errors=True)
    everyone = [os.getpid(), *pids]
    c0, t0 = cpu_seconds(everyone), time.perf_counter()
    batch_predict(data["model"], [data["scan"]], out, flatfield=data["flat"], client=client, workers=workers)
    return time.perf_counter() - t0, cpu_seconds(everyone) - c0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/sedclassify-bench-e2e")
    ap.add_argument("--repeat", type=int, default=2, help="runs per configuration (best is reported)")
    args = ap.parse_args()
    from napari_sedclassify.pipeline.batch import dask_client

    work = Path(args.workdir)
    data = make_data(work)
    n = 4096
    rows = {}
    base_cm = None
    # in-process threads (the single-process run): also warms the page cache and the kernels
    runs = [run_once(data, work / "out0", workers=0) for _ in range(args.repeat)]
    best, cpu = min(runs)
    rows["in-process threads"] = {"seconds": best, "frames_per_s": n / best, "frames_per_cpu_s": n / cpu}
    base_cm = np.load(work / "out0" / "scan64_classes.npy")
    for nw in (1, 2):
        with dask_client(workers=nw) as client:
            client.wait_for_workers(nw)
            run_once(data, work / f"warm{nw}", client=client)  # workers load the kernels
            pids = list(client.run(os.getpid).values())
            times = []
            for _ in range(args.repeat):
                mon = PeakMemory(pids)
                mon.start()
                times.append(run_once(data, work / f"out{nw}", client=client, pids=pids))
                mon.halt.set()
                mon.join()
            best, cpu = min(times)
            same = np.array_equal(np.load(work / f"out{nw}" / "scan64_classes.npy"), base_cm)
            rows[f"{nw} worker{'s' if nw > 1 else ''}"] = {
                "seconds": best, "frames_per_s": n / best, "frames_per_cpu_s": n / cpu,
                "identical_to_in_process": bool(same),
                "peak_rss_mb_per_worker": round(max(mon.peak_rss.values()) / 2**20),
                "peak_anonymous_mb_per_worker": round(max(mon.peak_anon.values()) / 2**20)}
    print(f"\nend-to-end batch prediction of {n} frames (512x512 uint16, {n * 512 * 512 * 2 / 1e9:.1f} GB), "
          f"{os.cpu_count()} cores")
    print(f"load average {os.getloadavg()[0]:.1f} (other processes compete for the cores)")
    print(f"{'run':<20} {'s':>7} {'frames/s':>9} {'frames/CPU-s':>13} {'peak RSS/worker MB':>19} "
          f"{'peak anon/worker MB':>20}")
    for name, r in rows.items():
        print(f"{name:<20} {r['seconds']:7.2f} {r['frames_per_s']:9.0f} {r['frames_per_cpu_s']:13.0f} "
              f"{r.get('peak_rss_mb_per_worker', ''):>19} {r.get('peak_anonymous_mb_per_worker', ''):>20}")
    ratio = rows["2 workers"]["frames_per_s"] / rows["1 worker"]["frames_per_s"]
    print(f"2 workers / 1 worker: {ratio:.2f}x; 2 workers / in-process threads: "
          f"{rows['2 workers']['frames_per_s'] / rows['in-process threads']['frames_per_s']:.2f}x")
    print("class maps identical to the in-process run:",
          all(r.get("identical_to_in_process", True) for r in rows.values()))
    print(json.dumps({"rows": rows, "ratio_2_over_1": ratio}, indent=2))


if __name__ == "__main__":
    main()
