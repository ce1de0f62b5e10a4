"""Data reduction: size and speed of ``reduce_scan`` keeping the amorphous-ice frames of a
simulated 16x16 scan of 512x512 uint16 frames, for each compression, against writing the same
kept frames with ``np.save`` + fsync (uncompressed, the baseline) in the same process; and reading
them back through ``open_scan``. Times are the best of 3 (the machine may be shared).

Uses the data of bench_end_to_end.py (--workdir, made there when missing).

    python benchmarks/bench_reduce.py [--classes amorphous_ice]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/sedclassify-bench-e2e")
    ap.add_argument("--classes", nargs="+", default=["amorphous_ice"])
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_end_to_end import make_data

    from napari_sedclassify.io import open_scan
    from napari_sedclassify.pipeline.reduce import class_ids, kept_positions, reduce_scan

    work = Path(args.workdir)
    make_data(work)
    scan = open_scan(work / "base16.npy")
    truth = np.load(work / "base16_truth.npy")
    full = np.asarray(scan.data)  # warm the page cache
    keep = kept_positions(truth, class_ids(args.classes, _table()), scan.missing)
    kept = full[keep]
    base_s = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        with open(work / "baseline.npy", "wb") as f:
            np.save(f, kept)
            f.flush()
            os.fsync(f.fileno())
        base_s = min(base_s, time.perf_counter() - t0)
    (work / "baseline.npy").unlink()
    mb = kept.nbytes / 1e6
    rows = []
    for comp in ("none", "bslz4", "terse"):
        out = work / f"reduced_{comp}.h5"
        rep = min((reduce_scan(scan, truth, out, classes=args.classes, compression=comp, force=True)
                   for _ in range(3)), key=lambda r: r.seconds)  # best of 3
        t0 = time.perf_counter()
        back = np.asarray(open_scan(out).data)
        read_s = time.perf_counter() - t0
        exact = bool(np.array_equal(back[keep], kept))
        rows.append({"compression": comp, "kept": rep.n_kept, "frames": rep.n_frames,
                     "file_mb": round(rep.bytes_file / 1e6, 2), "size_ratio": round(rep.size_ratio, 2),
                     "compression_ratio": round(rep.compression_ratio, 2), "write_s": round(rep.seconds, 3),
                     "write_mb_s": round(rep.mb_per_s), "write_vs_np_save": round(base_s / rep.seconds, 2),
                     "read_mb_s": round(mb / read_s), "exact": exact})
        out.unlink()
    print(f"kept {rows[0]['kept']} of {rows[0]['frames']} frames ({', '.join(args.classes)}), {mb:.1f} MB "
          f"uncompressed of a {full.nbytes / 1e6:.1f} MB scan; np.save of them: {mb / base_s:.0f} MB/s")
    print(f"{'compression':<12} {'file MB':>8} {'size ratio':>10} {'compr. ratio':>12} {'write MB/s':>10} "
          f"{'x np.save':>9} {'read MB/s':>9} {'exact':>6}")
    for r in rows:
        print(f"{r['compression']:<12} {r['file_mb']:8.2f} {r['size_ratio']:10.1f} {r['compression_ratio']:12.2f} "
              f"{r['write_mb_s']:10d} {r['write_vs_np_save']:9.2f} {r['read_mb_s']:9d} {str(r['exact']):>6}")
    print(json.dumps(rows, indent=2))


def _table():
    from napari_sedclassify.classes import ClassTable

    return ClassTable.default()


if __name__ == "__main__":
    main()
