"""The engine uses the cores it is given, not every core of the machine: a job pinned by
``taskset`` or a batch scheduler (CPU affinity), or held to a container's CPU quota, runs that many
threads (``processing/cores.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from napari_sedclassify.processing.cores import quota_cores, usable_cores

# a child pinned to the given cores runs 16 chunks through FrameRunner.run with no workers given
# and reports usable_cores() and the threads that processed the chunks
CHILD = r"""
import json, os, sys, threading
import numpy as np
os.sched_setaffinity(0, {cpus})
from napari_sedclassify.processing import FrameProcessor, FrameRunner, Output
from napari_sedclassify.processing.cores import usable_cores

seen = set()

class Threads(FrameProcessor):
    needs_centres = False
    def outputs(self):
        return {{"total": Output((), "float64", np.nan)}}
    def process_chunk(self, frames, centres, mask):
        seen.add(threading.get_ident())
        total = frames.sum(axis=(1, 2), dtype=np.float64)
        threading.Event().wait(0.02)  # long enough for every pool thread to take a chunk
        return {{"total": total}}

frames = np.arange(16 * 4 * 8 * 8, dtype=np.float32).reshape(64, 8, 8)
out = FrameRunner([Threads()]).run(frames, chunk_frames=4)
assert np.array_equal(out["total"], frames.sum(axis=(1, 2), dtype=np.float64))
print(json.dumps([usable_cores(), len(seen)]))
"""


def _pinned(cpus: set[int]) -> list[int]:
    proc = subprocess.run([sys.executable, "-c", CHILD.format(cpus=sorted(cpus))], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_a_process_pinned_to_one_core_runs_one_thread():
    allowed = sorted(os.sched_getaffinity(0))
    assert _pinned({allowed[0]}) == [1, 1]  # os.cpu_count() would say every core of the machine
    if len(allowed) >= 2:
        cores, threads = _pinned(set(allowed[:2]))
        assert cores == 2 and threads == 2


def test_usable_cores_is_within_the_affinity():
    assert 1 <= usable_cores() <= (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                    else os.cpu_count())


@pytest.mark.parametrize("cpu_max, v1, cores", [
    ("max 100000\n", (None, None), None),          # cgroup v2, no quota
    ("200000 100000\n", (None, None), 2),         # docker --cpus 2
    ("150000 100000\n", (None, None), 2),         # --cpus 1.5: two threads, rounded up
    ("50000 100000\n", (None, None), 1),          # half a core: still one thread
    ("200000\n", (None, None), 2),                # period left out: the kernel's 100 ms
    (None, ("-1\n", "100000\n"), None),            # cgroup v1, no quota
    (None, ("400000\n", "100000\n"), 4),           # cgroup v1, 4 cores
    ("garbage", (None, None), None),
    (None, (None, None), None),
])
def test_quota_cores_reads_cgroup_v1_and_v2(cpu_max, v1, cores):
    assert quota_cores(cpu_max, v1) == cores
