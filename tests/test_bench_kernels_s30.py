"""benchmarks/bench_kernels.py drives the kernels as the runner does (the correction's frame totals
handed to the processors that take them): run on a few frames, every step is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py"


def test_bench_kernels_times_every_step_on_a_few_frames(tmp_path):
    run = subprocess.run([sys.executable, str(BENCH), "--dir", str(tmp_path), "--frames", "12", "--repeats", "1",
                          "--json"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(run.stdout[run.stdout.index("{"):])
    assert set(results) == {"512x512", "192x192"}
    for px, r in results.items():
        steps = r["us_per_frame"]
        assert set(steps) == {"correction", "centring", "radial profile", "virtual detectors", "all steps"}, px
        assert all(0 < v < 1e5 for v in steps.values()), (px, steps)
        assert steps["all steps"] >= max(v for k, v in steps.items() if k != "all steps"), (px, steps)
        assert r["np_sum_us_per_frame"] > 0
