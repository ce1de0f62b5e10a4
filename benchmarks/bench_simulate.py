"""Time and peak memory of simulating a full 40x40 scan of 512x512 frames (839 MB on disk).

    .venv/bin/python benchmarks/bench_simulate.py [--out DIR] [--scan-shape 40 40] [--detector 512] [--json]

Measured in the same process, for ratios:
- streaming limit: writing the same bytes (one pre-made chunk repeated) through the same writer;
- naive numpy: per frame, np.interp of each material profile on an r-map about the frame centre and
  rng.poisson per pixel (no detector model), timed on 80 frames and scaled to the scan.
CPU seconds (process time) are reported beside wall time: on a shared machine they are the stable
measure of the work; the speed-up over naive numpy compares CPU seconds.
Peak memory: RSS above the baseline before the run (sampled every 5 ms by a thread) and the
tracemalloc peak of a second run (numpy reports its buffers to tracemalloc).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil

from napari_sedclassify.simulate import SimParams, simulate_scan
from napari_sedclassify.simulate.diffraction import profile_density
from napari_sedclassify.simulate.frames import true_geometry
from napari_sedclassify.simulate.params import session_params
from napari_sedclassify.simulate.simulation import _row_chunks
from napari_sedclassify.simulate.writer import NpyStreamWriter


class PeakRSS:
    """Highest resident set size (bytes) of this process while the block runs, sampled every 5 ms."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def streaming_limit(path: Path, scan_shape, n) -> float:
    """Seconds to write the scan's bytes through the same chunked writer (the I/O floor)."""
    sy, sx = scan_shape
    chunks = _row_chunks(sy, sx, n)
    rows = chunks[0][1] - chunks[0][0]
    block = np.random.default_rng(0).integers(0, 4096, size=(rows, sx, n, n), dtype=np.uint16)
    t = time.perf_counter()
    with NpyStreamWriter(path, (sy, sx, n, n), np.uint16) as w:
        for y0, y1 in chunks:
            w.write(block[: y1 - y0])
    return time.perf_counter() - t


def naive_seconds_per_frame(n, n_frames=80) -> float:
    """Per-frame seconds of a straightforward numpy simulator (np.interp per material, rng.poisson)."""
    sess = session_params("A")
    p = SimParams()
    lam_l_p = true_geometry(sess, n).lambda_L_over_p
    r_grid = np.arange(0, 2 * n, 0.25)
    q = r_grid / lam_l_p
    carbon = profile_density(q, p.carbon_peaks, p.carbon_background) / lam_l_p**2
    ice = profile_density(q, p.ice_peaks, p.ice_background) / lam_l_p**2
    rng = np.random.default_rng(0)
    yy, xx = np.indices((n, n))
    t = time.process_time()
    for i in range(n_frames):
        cy, cx = n / 2 + 0.1 * i, n / 2 - 0.07 * i
        r = np.hypot(yy - cy, xx - cx)
        lam = 4e4 * np.interp(r, r_grid, carbon) + 6e4 * np.interp(r, r_grid, ice)
        lam += 4e5 * np.exp(-0.5 * (r / 2.5) ** 2) / (2 * np.pi * 2.5**2)
        np.minimum(rng.poisson(lam), 4095).astype(np.uint16)
    return (time.process_time() - t) / n_frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for the scan (default: a temporary one)")
    ap.add_argument("--scan-shape", type=int, nargs=2, default=(40, 40))
    ap.add_argument("--detector", type=int, default=512)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    shape, n = tuple(args.scan_shape), args.detector
    n_frames = shape[0] * shape[1]
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        tmp = Path(tmp)
        with PeakRSS() as rss:
            t, c = time.perf_counter(), time.process_time()
            sim = simulate_scan(tmp / "scan.npy", scan_shape=shape, detector_px=n, seed=0)
            t_sim, c_sim = time.perf_counter() - t, time.process_time() - c
        size_mb = sim.path.stat().st_size / 2**20
        del sim
        tracemalloc.start()
        simulate_scan(tmp / "scan2.npy", scan_shape=shape, detector_px=n, seed=1)
        traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        (tmp / "scan2.npy").unlink()
        t_io = streaming_limit(tmp / "io.npy", shape, n)
    t_naive = naive_seconds_per_frame(n) * n_frames
    result = {
        "scan": f"{shape[0]}x{shape[1]} frames of {n}x{n} px",
        "file_MiB": round(size_mb, 1),
        "simulate_s": round(t_sim, 2),
        "simulate_cpu_s": round(c_sim, 2),
        "frames_per_s": round(n_frames / t_sim, 1),
        "MiB_per_s": round(size_mb / t_sim, 1),
        "peak_rss_delta_MiB": round(rss.delta_mb, 1),
        "tracemalloc_peak_MiB": round(traced_peak, 1),
        "streaming_limit_s": round(t_io, 2),
        "naive_numpy_cpu_s (extrapolated)": round(t_naive, 2),
        "ratio simulate / streaming limit": round(t_sim / t_io, 2),
        "speed-up over naive numpy (CPU s)": round(t_naive / c_sim, 2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:>32}: {v}")


if __name__ == "__main__":
    main()
