"""Start lesson 15's worker on N ranks under torchrun, from a notebook, a test or a script.

The same path as lesson 14's :func:`efflab.systems.distributed.launch` (a jobs file, a free
loopback port, gloo told to use ``lo``, ``cores // N`` threads per rank, the whole process
group killed on a timeout or an error), with lesson 15's worker program:

    python -m torch.distributed.run --nnodes=1 --nproc-per-node=N --rdzv-backend=c10d \\
        --rdzv-endpoint=127.0.0.1:<port> --max-restarts=0 \\
        -m efflab.systems.parallel.worker --jobs jobs.json --out <folder>
"""

from __future__ import annotations

from collections.abc import Callable

from efflab.core.config import ConfigError
from efflab.core.store import Store
from efflab.systems.distributed.launcher import LaunchResult, run_ranks
from efflab.systems.parallel.worker import PROGRESS_PREFIX, describe, settings


def print_progress(event: dict) -> None:
    print(describe(event), flush=True)


def launch_parallel(jobs: list[dict], nproc: int = 2, timeout_s: float = 300.0,
                    store: Store | None = None,
                    on_progress: Callable[[dict], None] | None = print_progress,
                    threads_per_rank: int | None = None, timing: bool = True) -> LaunchResult:
    """Run lesson 15's ``jobs`` (tp, pp, ring) on ``nproc`` gloo ranks; return every record.

    Refused (``RefusedError``) before anything starts when ranks × threads exceed the cores of
    a ``timing`` launch; ``LaunchError`` with the log's tail when a rank fails or time runs out.
    """
    if not (isinstance(nproc, int) and nproc >= 1):
        raise ConfigError("nproc", nproc, "an integer >= 1")
    if not isinstance(jobs, list) or not jobs:
        raise ConfigError("jobs", jobs, "a non-empty list of job dicts")
    for j in jobs:
        try:
            settings(j)
        except ValueError as e:
            raise ConfigError("jobs[]", j, str(e)) from None
    return run_ranks("efflab.systems.parallel.worker", jobs, nproc, "gloo", timeout_s, store,
                     on_progress, PROGRESS_PREFIX, threads_per_rank, timing)


__all__ = ["launch_parallel", "print_progress"]
