"""What this machine's cores give when they work together: how loops bound by arithmetic and
loops that stream memory scale from one thread to all of them, each against its own one-thread
run in the same process.

The engine's threads run compiled kernels that release the GIL; whether two threads do twice
the work depends on what the kernels wait for. Two loops (numba, nogil), each run on one thread,
then on --threads threads at once (each its own data):

- arithmetic: twelve independent multiply-add chains in registers (what a core computes);
- streaming: a vectorised float32 sum over arrays of each size in --sizes MB (per thread): from
  the core's caches (0.5 MB) to memory (256 MB), in GB/s summed over the threads.

On the project machine (2 vCPUs, AMD EPYC) the arithmetic and the streaming from the caches scaled
1.9-2x, the streaming from memory anywhere from 1x to 2x from run to run: docs/performance.md,
session 28.

    python benchmarks/bench_machine.py [--threads 2] [--sizes 0.5 4 8 16 64 256] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np


def kernels():
    import numba

    @numba.njit(nogil=True, fastmath=True)
    def arithmetic(n):
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = s10 = s11 = 1.0
        a = 1.0000001
        c = 1e-9
        for _ in range(n):  # twelve chains that do not wait for each other
            s0, s1, s2, s3, s4, s5 = s0 * a + c, s1 * a + c, s2 * a + c, s3 * a + c, s4 * a + c, s5 * a + c
            s6, s7, s8, s9, s10, s11 = s6 * a + c, s7 * a + c, s8 * a + c, s9 * a + c, s10 * a + c, s11 * a + c
        return s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7 + s8 + s9 + s10 + s11

    @numba.njit(nogil=True, fastmath=True)
    def stream(a, reps):
        s = np.float32(0)
        for _ in range(reps):
            for i in range(a.size):
                s += a[i]
        return s

    return arithmetic, stream


def together(fn, args_per_thread) -> float:
    """Seconds for every thread to run fn(*args) once, started together."""
    threads = [threading.Thread(target=fn, args=args) for args in args_per_thread]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def best_of(k: int, measure) -> float:
    return min(measure() for _ in range(k))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count())
    ap.add_argument("--sizes", type=float, nargs="*", default=[0.5, 4, 8, 16, 64, 256], metavar="MB")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs of each")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    k = max(2, args.threads)
    arithmetic, stream = kernels()
    arithmetic(1)
    stream(np.ones(16, np.float32), 1)

    n = 200_000_000
    one = best_of(args.repeats, lambda: together(arithmetic, [(n,)]))
    many = best_of(args.repeats, lambda: together(arithmetic, [(n,)] * k))
    res = {"threads": k, "arithmetic": {"one_thread_s": one, "all_threads_s": many, "scaling": k * one / many}}
    res["streaming"] = []
    for mb in args.sizes:
        arrays = [np.ones(int(mb * 2**20 / 4), np.float32) for _ in range(k)]
        reps = max(1, int(2048 / mb))
        gb = mb * reps / 1024
        t1 = best_of(args.repeats, lambda: together(stream, [(arrays[0], reps)]))
        tk = best_of(args.repeats, lambda: together(stream, [(a, reps) for a in arrays]))
        res["streaming"].append({"mb_per_thread": mb, "one_thread_gb_s": gb / t1, "all_threads_gb_s": k * gb / tk,
                                 "scaling": k * t1 / tk})
        arrays.clear()  # freed before the next size
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        a = res["arithmetic"]
        print(f"{k} threads; best of {args.repeats}")
        print(f"arithmetic (12 independent multiply-add chains): one thread {a['one_thread_s']:.3f} s, "
              f"{k} at once {a['all_threads_s']:.3f} s: x{a['scaling']:.2f}")
        print(f"{'streaming sum, MB per thread':<30}{'1 thread GB/s':>15}{f'{k} threads GB/s':>17}{'scaling':>9}")
        for r in res["streaming"]:
            print(f"{r['mb_per_thread']:<30g}{r['one_thread_gb_s']:>15.1f}{r['all_threads_gb_s']:>17.1f}"
                  f"{r['scaling']:>9.2f}")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
