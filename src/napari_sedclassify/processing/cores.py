"""How many cores this process may use: those its CPU affinity allows (``taskset``, a batch
scheduler's allocation, a container's cpuset), within its cgroup's CPU quota (``docker --cpus``,
Kubernetes limits), not every core of the machine (``os.cpu_count()``). On a shared node, one
thread per machine core would crowd the cores the job was given.

joblib's ``cpu_count`` does the same but costs a command 0.15-0.2 s to import.
"""

from __future__ import annotations

import math
import os

#: cgroup v2's quota file, then cgroup v1's pair.
CGROUP_V2 = "/sys/fs/cgroup/cpu.max"
CGROUP_V1 = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def quota_cores(cpu_max: str | None = None, v1: tuple[str | None, str | None] = (None, None)) -> int | None:
    """Cores the cgroup's CPU quota allows, rounded up, or None without a quota. cpu_max: the
    text of cgroup v2's ``cpu.max`` ("max 100000" or "200000 100000"); v1: the texts of
    ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (quota -1: none)."""
    try:
        if cpu_max is not None:
            quota, _, period = cpu_max.strip().partition(" ")
            if quota == "max":
                return None
            q, p = int(quota), int(period or 100000)
        elif v1[0] is not None and v1[1] is not None:
            q, p = int(v1[0]), int(v1[1])
        else:
            return None
    except ValueError:
        return None
    return max(1, math.ceil(q / p)) if q > 0 and p > 0 else None


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def usable_cores() -> int:
    """Cores this process may use (at least 1): its CPU affinity, capped by its cgroup's quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = quota_cores(_read(CGROUP_V2), (_read(CGROUP_V1[0]), _read(CGROUP_V1[1])))
    return max(1, min(cores, quota) if quota else cores)
