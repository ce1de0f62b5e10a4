"""Opening a ~2 GB scan: time and extra memory of open_scan and of the napari reader, against a
plain numpy memory map (and napari's own add_image) measured in the same process.

Writes a 64x64 scan of 512x512 uint16 frames (2.1 GB) as .npy and as Merlin .mib (+ .hdr)
under /tmp, evicts them from the page cache before each open (posix_fadvise), measures, and
deletes them. The viewer part needs a display: run under ``xvfb-run -a`` on a headless machine.

    python benchmarks/bench_open.py [--scan 64] [--frame 512] [--no-viewer]
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

HEADER = 384


def rss_mb() -> tuple[float, float]:
    """(resident, anonymous) memory of this process in MB. File pages of memory maps count in
    the first (the kernel drops them when it needs to), not in the second."""
    gc.collect()
    info = psutil.Process().memory_info()
    return info.rss / 2**20, (info.rss - getattr(info, "shared", 0)) / 2**20


def timed(fn):
    """(result, seconds, extra resident MB, extra anonymous MB) of fn()."""
    (r0, a0), t0 = rss_mb(), time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    r1, a1 = rss_mb()
    return out, dt, r1 - r0, a1 - a0


def evict(path):
    """Drop a file from the page cache, so that opening it starts cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def mib_header(i: int, k: int) -> bytes:
    stamp = f"2024-01-01T00:00:{(i * 0.001) % 60:09.6f}000Z"
    text = (
        f"MQ1,{i + 1:06d},{HEADER:05d},01,{k:04d},{k:04d},U16,   1x1,01,2024-01-01 00:00:00.000000,"
        f"0.001000,0,0,0,MQ1A,{stamp},1000000ns,12,"
    )
    return text.encode().ljust(HEADER, b"\x00")


def write_scans(folder: Path, n_scan: int, k: int):
    """The same frames as .npy (sy, sx, k, k) and as .mib + .hdr (one trigger per scan row)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:k, :k]
    beam = 2000.0 * ((yy - k / 2) ** 2 + (xx - k / 2) ** 2 < (k / 32) ** 2) + 2.0
    pool = rng.poisson(beam, size=(16, k, k)).astype(np.uint16)  # 16 distinct frames, repeated
    npy = folder / "scan.npy"
    arr = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint16, shape=(n_scan, n_scan, k, k))
    for iy in range(n_scan):
        arr[iy] = pool[(iy + np.arange(n_scan)) % 16]
    arr.flush()
    del arr
    mib = folder / "scan.mib"
    with open(mib, "wb") as f:
        for i in range(n_scan * n_scan):
            f.write(mib_header(i, k))
            f.write(pool[(i // n_scan + i % n_scan) % 16].astype(">u2").tobytes())
    (folder / "scan.hdr").write_text(
        "HDR,\t\nFrames in Acquisition (Number):\t%d\nFrames per Trigger (Number):\t%d\nEnd\t" % (n_scan * n_scan, n_scan)
    )
    os.sync()  # nothing left to flush to disk while we measure
    return npy, mib


def bench_api(npy: Path, mib: Path):
    from napari_sedclassify.io import open_scan

    rows = []
    evict(npy)
    base, *baseline = timed(lambda: np.load(npy, mmap_mode="r"))
    rows.append(("npy: np.load(mmap_mode='r')  [baseline]", *baseline, None))
    evict(npy)
    scan, t, r, a = timed(lambda: open_scan(npy))
    rows.append(("npy: open_scan", t, r, a, t / baseline[0]))
    assert scan.scan_shape == base.shape[:2]
    k = base.shape[-1]
    frame_dtype = np.dtype([("h", f"V{HEADER}"), ("px", ">u2", (k, k))])
    evict(mib)
    _, *baseline = timed(lambda: np.memmap(mib, dtype=frame_dtype, mode="r")["px"])
    rows.append(("mib: np.memmap, structured dtype  [baseline]", *baseline, None))
    evict(mib)
    scan, t, r, a = timed(lambda: open_scan(mib))
    rows.append(("mib: open_scan (.hdr gives the scan shape)", t, r, a, t / baseline[0]))
    hdr = mib.with_suffix(".hdr")
    hdr.rename(mib.with_suffix(".off"))
    try:
        evict(mib)
        scan, t, r, a = timed(lambda: open_scan(mib))
        rows.append(("mib: open_scan (no .hdr: 1024 frame headers read)", t, r, a, t / baseline[0]))
    finally:
        mib.with_suffix(".off").rename(hdr)
    return rows, scan


def bench_viewer(path, scan_shape):
    """viewer.open through the plugin against viewer.add_image of the same placeholder image,
    in a fresh viewer; then the wait for the integrated image (peak extra anonymous memory)."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sedclassify._napari.reader import INTEGRATING

    viewer = napari.Viewer(show=False)
    viewer.add_image(np.zeros((8, 8), np.float32))  # warm up napari's layer machinery
    viewer.layers.clear()
    _, *baseline = timed(lambda: viewer.add_image(np.zeros(scan_shape, np.float32), contrast_limits=(0, 1)))
    viewer.layers.clear()
    evict(path)
    layers, t, r, a = timed(lambda: viewer.open(str(path), plugin="napari-sedclassify"))
    layer = layers[0]
    t0, anon0, peak = time.perf_counter(), rss_mb()[1] - a, 0.0
    while INTEGRATING in layer.metadata:
        QApplication.processEvents()
        peak = max(peak, rss_mb()[1] - anon0)
        time.sleep(0.05)
    t_image = time.perf_counter() - t0 + t
    viewer.close()
    return [
        ("napari: viewer.add_image(zeros of the scan shape)  [baseline]", *baseline, None, None),
        (f"{path.suffix[1:]}: viewer.open (layer added, image pending)", t, r, a, t / baseline[0], (t_image, peak)),
    ]


def _row(what, t, r, a, ratio, extra=""):
    ratio = f"{ratio:11.1f}" if ratio else f"{'':11}"
    print(f"{what:<64} {t:9.4f} {r:10.1f} {a:11.1f} {ratio}{extra}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", type=int, default=64, help="scan side (positions)")
    ap.add_argument("--frame", type=int, default=512, help="detector side (px)")
    ap.add_argument("--no-viewer", action="store_true", help="skip the napari part")
    args = ap.parse_args(argv)
    import dask.array  # noqa: F401  (imports are not part of opening a file)

    import napari_sedclassify.io.mib  # noqa: F401
    import napari_sedclassify.io.npy  # noqa: F401

    folder = Path(tempfile.mkdtemp(prefix="bench_open_", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        npy, mib = write_scans(folder, args.scan, args.frame)
        print(f"wrote {npy.stat().st_size / 1e9:.2f} GB .npy and {mib.stat().st_size / 1e9:.2f} GB .mib "
              f"in {time.perf_counter() - t0:.0f} s")
        rows, scan = bench_api(npy, mib)
        print(f"scan {scan.scan_shape} x {scan.detector_shape}, dask chunks {scan.data.chunksize}")
        print(f"{'what':<64} {'time (s)':>9} {'+RSS (MB)':>10} {'+anon (MB)':>11} {'x baseline':>11}")
        for row in rows:
            _row(*row)
        if not args.no_viewer:
            base = np.load(npy, mmap_mode="r")  # numpy baseline for the integrated image
            t0 = time.perf_counter()
            base.reshape(base.shape[0] * base.shape[1], -1).sum(axis=1, dtype=np.int64)
            t_sum = time.perf_counter() - t0
            del base
            print(f"{'numpy: sum of every frame of the .npy memmap':<64} {t_sum:9.4f}")
            for *row, image in bench_viewer(npy, scan.scan_shape) + bench_viewer(mib, scan.scan_shape):
                extra = ""
                if image:
                    extra = f"   image in {image[0]:.1f} s = {image[0] / t_sum:.1f}x numpy sum, peak +anon {image[1]:.0f} MB"
                _row(*row, extra)
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
        print(f"deleted {folder}")


if __name__ == "__main__":
    main()
