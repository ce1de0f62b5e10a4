"""Where a command's frame work runs: ``--scheduler`` / ``--workers`` (and ``--worker-wait``), shared by every command
that processes frames (preprocess, train, evaluate, predict, reduce).

Default: threads in this process. The compiled kernels release the GIL, so the threads use every
core, with no cluster to start (1-3 s) or close (~1 s); on one machine a local dask.distributed
cluster is no faster (docs/performance.md). A cluster runs the work when asked for
(``--scheduler ADDRESS``: a running one; ``--workers N``: a local one of N processes) or, without
either option, when the work is large enough to repay its start-up on a machine with many cores
(:data:`AUTO_CLUSTER_FRAMES`, :data:`AUTO_CLUSTER_CORES`).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from . import CLIError

#: Without --scheduler / --workers, a local cluster (one worker process per core) starts only for
#: at least this many frames in one command ...
AUTO_CLUSTER_FRAMES = 1_000_000
#: ... on a machine with at least this many cores (with few cores, threads here are as fast).
AUTO_CLUSTER_CORES = 8
#: --worker-wait's default as its help states it: processing.runner.WORKERLESS_S (not imported to
#: build the parser: it imports numpy; a test keeps the two equal).
WORKERLESS_DEFAULT_S = 60.0


def add_executor_options(p) -> None:
    """Add --scheduler and --workers to the subcommand parser ``p``."""
    g = p.add_argument_group("where the work runs (default: threads in this process, no cluster)")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on this running dask.distributed scheduler (e.g. tcp://host:8786); scan files "
                        "must be readable under the same paths on its workers")
    g.add_argument("--workers", type=int, metavar="N",
                   help="start a local dask.distributed cluster of N worker processes (0 = none: threads here, "
                        f"the default unless a command has {AUTO_CLUSTER_FRAMES:,} frames or more on "
                        f"{AUTO_CLUSTER_CORES}+ cores)")
    g.add_argument("--worker-wait", type=_seconds, default=None, metavar="S",
                   help="seconds to wait for workers while the cluster has none before stopping with an error "
                        f"(default {WORKERLESS_DEFAULT_S:g}; an autoscaling cluster, dask-jobqueue or Kubernetes, that "
                        "starts empty may need minutes, e.g. --worker-wait 600; inf: without end)")


def _seconds(text: str) -> float:
    """--worker-wait's value: a positive number of seconds (argparse names the option when not)."""
    import argparse

    from ..processing.runner import check_worker_wait

    try:
        return check_worker_wait(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a positive number of seconds, got {text!r}") from None


def cluster_workers(args, n_frames: int = 0) -> int:
    """Worker processes of the local cluster to start (0: none)."""
    workers = getattr(args, "workers", None)
    if workers is not None:
        if workers < 0:
            raise CLIError(f"--workers must be at least 0, got {workers}")
        return int(workers)
    from ..processing.cores import usable_cores

    cores = usable_cores()
    big = getattr(args, "scheduler", None) is None and n_frames >= AUTO_CLUSTER_FRAMES and cores >= AUTO_CLUSTER_CORES
    return cores if big else 0


def cluster_path(path, args) -> Path:
    """``path`` (a scan file) as the work should open it: from the root with ``--scheduler`` (a
    running cluster's workers read it from working folders of their own), else as given."""
    return Path(path).absolute() if getattr(args, "scheduler", None) is not None else Path(path)


@contextmanager
def executor(args, n_frames: int = 0, files=None):
    """The dask.distributed Client the options ask for (made the pipeline's default inside), or
    None: threads in this process. n_frames: the frames the command will process. files: the scan
    files its workers will read (default: the command's SCAN or --scans), checked readable there
    before any work."""
    from ..pipeline.batch import check_workers_read, dask_client, use_client

    with dask_client(getattr(args, "scheduler", None), cluster_workers(args, n_frames),
                     worker_wait_s=getattr(args, "worker_wait", None)) as client, use_client(client):
        if client is not None:
            check_workers_read(client, _scan_files(args) if files is None else files)
        yield client


def _scan_files(args) -> list:
    """The command's SCAN or --scans, as its work opens them (``cluster_path``)."""
    one = getattr(args, "scan", None)
    given = [one] if isinstance(one, str) else list(getattr(args, "scans", None) or [])
    return [str(cluster_path(p, args)) for p in given]
