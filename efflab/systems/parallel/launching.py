"""Start lesson 15's worker on N ranks under torchrun, from a notebook, a test or a script.

The same path as lesson 14's :func:`efflab.systems.distributed.launch` (a jobs file, a free
loopback port, gloo told to use ``lo``, ``cores // N`` threads per rank, the whole process
group killed on a timeout or an error), with lesson 15's worker program:

    python -m torch.distributed.run --nnodes=1 --nproc-per-node=N --rdzv-backend=c10d \\
        --rdzv-endpoint=127.0.0.1:<port> --max-restarts=0 \\
        -m efflab.systems.parallel.worker --jobs jobs.json --out <folder>
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from efflab.core.config import ConfigError
from efflab.core.store import Store
from efflab.measurement.hardware import RefusedError
from efflab.systems.distributed.launcher import (
    LaunchError,
    LaunchResult,
    collect_records,
    free_port,
    launch_refusal,
    loopback_interface,
    run_streaming,
)
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
    cores = os.cpu_count() or 1
    threads = threads_per_rank or max(1, cores // nproc)
    why = launch_refusal(nproc, threads, cores, "gloo", timing)
    if why:
        raise RefusedError(why)
    run = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    folder = Path(tempfile.mkdtemp(prefix=f"efflab-parallel-{run}-"))
    (folder / "jobs.json").write_text(json.dumps(jobs))
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
                "MASTER_ADDR": "127.0.0.1"})
    lo = loopback_interface()
    if lo:
        env["GLOO_SOCKET_IFNAME"] = lo
    here = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
           f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--max-restarts=0",
           "-m", "efflab.systems.parallel.worker", "--jobs", str(folder / "jobs.json"),
           "--out", str(folder), "--timeout-s", str(max(30.0, timeout_s))]

    def on_line(line: str) -> None:
        if on_progress is not None and line.startswith(PROGRESS_PREFIX):
            try:
                on_progress(json.loads(line[len(PROGRESS_PREFIX):]))
            except (json.JSONDecodeError, KeyError, TypeError):
                pass

    t0 = time.perf_counter()
    status, tail = run_streaming(cmd, env, timeout_s, on_line)
    records = collect_records(folder, store, run)
    result = LaunchResult(records, cmd, status, time.perf_counter() - t0, run, tail)
    errors = [r for r in records if r["status"] == "error"]
    if status != 0 or errors:
        said = "; ".join(f"rank {r['rank']}: {r['message']}" for r in errors[:2])
        raise LaunchError(f"torchrun exited with status {status}{' — ' + said if said else ''}"
                          f"\nlog ({folder}):\n" + "\n".join(tail[-25:]))
    shutil.rmtree(folder, ignore_errors=True)
    return result


__all__ = ["launch_parallel", "print_progress"]
