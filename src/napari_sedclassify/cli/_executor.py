"""Where a command's frame work runs: ``--scheduler`` / ``--workers``, shared by every command
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

from . import CLIError

#: Without --scheduler / --workers, a local cluster (one worker process per core) starts only for
#: at least this many frames in one command ...
AUTO_CLUSTER_FRAMES = 1_000_000
#: ... on a machine with at least this many cores (with few cores, threads here are as fast).
AUTO_CLUSTER_CORES = 8


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


@contextmanager
def executor(args, n_frames: int = 0):
    """The dask.distributed Client the options ask for (made the pipeline's default inside), or
    None: threads in this process. n_frames: the frames the command will process."""
    from ..pipeline.batch import dask_client, use_client

    with dask_client(getattr(args, "scheduler", None), cluster_workers(args, n_frames)) as client, use_client(client):
        yield client
