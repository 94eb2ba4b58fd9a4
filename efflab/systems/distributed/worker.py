"""The program every rank runs under ``torchrun``: a list of jobs, one record per job per rank.

    torchrun --standalone --nproc-per-node=2 -m efflab.systems.distributed.worker --jobs jobs.json --out DIR

(``efflab.systems.distributed.launch`` writes the jobs file, picks a free loopback port, starts this,
streams its progress and collects the records.) ``torchrun`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address for each process; this program joins the process
group (gloo on CPU, NCCL when every local rank has its own GPU), runs each job in order on every
rank and appends each job's record to ``DIR/rank<r>.jsonl`` the moment it is done.

A job is a dict with a ``task``:

- ``{"task": "allreduce", "sizes": [...], "min_repeats": 5, "max_repeats": 50, "target_s": 0.2}``
- ``{"task": "ddp", "config": {DataParallelConfig fields}}``
- ``{"task": "sharding", "config": {ShardingConfig fields}}``

Progress goes to stdout as lines ``EFFLAB {json}`` (rank 0 only, errors from any rank); a job
that raises leaves an ``error`` record with its traceback and the program exits with status 1,
so torchrun stops the other ranks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from efflab.measurement.hardware import environment
from efflab.systems.distributed.comm import allreduce_sweep
from efflab.systems.distributed.ddp import DataParallelConfig, train_data_parallel
from efflab.systems.distributed.records import finish_record, new_record
from efflab.systems.distributed.zero import ShardingConfig, sharded_state

PROGRESS_PREFIX = "EFFLAB "
TASKS = ("allreduce", "ddp", "sharding")


def emit(event: dict, rank: int, always: bool = False) -> None:
    """One progress line for the launcher (rank 0's, or any rank's when ``always``)."""
    if rank == 0 or always:
        print(PROGRESS_PREFIX + json.dumps({"rank": rank, **event}), flush=True)


def pick_backend(requested: str, local_world_size: int) -> str:
    """'auto': NCCL when every local rank can have its own GPU, else gloo."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_world_size:
        return "nccl"
    return "gloo"


def describe(event: dict) -> str:
    """One short human line for a progress event (what a launch prints as it goes)."""
    if event.get("event") == "joined":
        return f"{event['world_size']} ranks joined ({event['backend']})"
    if event.get("event") == "error":
        return f"rank {event['rank']}: {event['message']}"
    if event.get("task") == "allreduce":
        return (f"all-reduce round {event['round']} over {event['sizes']} sizes: median so far "
                f"{event['first_bytes']:,} B {event['first_ms']:.3f} ms … "
                f"{event['last_bytes']:,} B {event['last_ms']:.3f} ms")
    if event.get("task") == "ddp":
        who = ("1 process" if event.get("world_size") == 1
               else f"ddp bucket {event['bucket_cap_mb']} MiB")
        return f"{who}: step {event['done']}/{event['of']} loss {event['loss']:.4f}"
    if event.get("task") == "sharding":
        return f"sharding: {event['done']} layouts counted"
    return json.dumps(event)


def run_job(job: dict, rank: int, world: int, backend: str, device: str,
            on_event=None) -> tuple[dict, dict]:
    """Run one job on this rank: (the knobs it was given, its result). Progress events go to
    ``on_event`` (default: ``EFFLAB {json}`` lines on rank 0's stdout, for the launcher)."""
    if on_event is None:
        def on_event(ev):
            emit(ev, rank)
    task = job.get("task")
    if task == "allreduce":
        sizes = [int(s) for s in job["sizes"]]
        knobs = {"sizes": sizes, "min_repeats": job.get("min_repeats", 5),
                 "max_repeats": job.get("max_repeats", 50), "target_s": job.get("target_s", 0.2)}
        def on_round(rounds, rows):
            if rounds & (rounds - 1):  # report rounds 1, 2, 4, 8, ... only
                return
            medians = [sorted(r["samples_s"])[len(r["samples_s"]) // 2] * 1e3 for r in rows]
            on_event({"task": task, "round": rounds, "sizes": len(rows),
                      "first_bytes": rows[0]["bytes"], "first_ms": medians[0],
                      "last_bytes": rows[-1]["bytes"], "last_ms": medians[-1]})

        rows = allreduce_sweep(sizes, knobs["min_repeats"], knobs["max_repeats"],
                               knobs["target_s"], device=device, on_round=on_round)
        return knobs, {"sizes": rows}
    if task == "ddp":
        cfg = DataParallelConfig.from_dict(job.get("config", {}))
        every = max(1, cfg.steps // 4)

        def on_step(i, loss):
            if i % every == 0 or i == cfg.steps:
                on_event({"task": task, "done": i, "of": cfg.steps, "loss": loss,
                          "bucket_cap_mb": cfg.bucket_cap_mb, "world_size": world})

        return cfg.to_dict(), train_data_parallel(cfg, rank, world, device, on_step)
    if task == "sharding":
        cfg = ShardingConfig.from_dict(job.get("config", {}))
        rows = sharded_state(cfg, rank, world, backend, device)
        on_event({"task": task, "done": len(rows), "of": len(rows)})
        return cfg.to_dict(), {"shardings": rows}
    raise ValueError(f"job task={task!r} is not one of {', '.join(map(repr, TASKS))}")


def execute(job: dict, index: int, rank: int, world: int, backend: str, device: str,
            env: dict, on_event=None) -> dict:
    """Run one job on this rank and return its record (status "error" with the traceback when
    it raised: the caller decides whether to stop)."""
    rec = new_record(job.get("task"), rank=rank, world_size=world, backend=backend,
                     device=device, threads=torch.get_num_threads(),
                     preset=job.get("config", {}).get("preset"), env=env, job=index)
    t0 = time.perf_counter()
    try:
        knobs, result = run_job(job, rank, world, backend, device, on_event)
        rec.update(status="ok", message=None, knobs=knobs, result=result)
    except Exception as e:  # recorded: a wrong setting or a failed collective says why
        rec.update(status="error", knobs=job, message=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc())
    return finish_record(rec, time.perf_counter() - t0)


def run_local(job: dict, device: str = "cpu", threads: int | None = None,
              progress: bool = True) -> dict:
    """Run a ``ddp`` job alone in *this* process (world size 1, no process group, ``threads``
    torch threads — default: as many as now): the single-process reference a data-parallel run
    is compared with, as the same kind of record. ``progress`` prints a line now and then."""
    if job.get("task") != "ddp":
        raise ValueError(f"only a 'ddp' job runs in one process; task={job.get('task')!r} needs "
                         "a process group (use launch)")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        show = (lambda ev: print(describe(ev), flush=True)) if progress else (lambda ev: None)
        return execute(job, 0, 0, 1, "none", device, environment(device), show)
    finally:
        torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", required=True, help="a JSON file: a list of jobs")
    ap.add_argument("--out", required=True, help="a folder for rank<r>.jsonl")
    ap.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"])
    ap.add_argument("--timeout-s", type=float, default=300.0,
                    help="how long a collective may wait for the other ranks")
    args = ap.parse_args(argv)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        print("efflab.systems.distributed.worker must be started by torchrun (RANK and WORLD_SIZE are "
              "not set): torchrun --standalone --nproc-per-node=2 -m efflab.systems.distributed.worker "
              "--jobs JOBS.json --out DIR", file=sys.stderr)
        return 2
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    backend = pick_backend(args.backend, local_world)
    device = f"cuda:{local_rank}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    jobs = json.loads(Path(args.jobs).read_text())
    out = Path(args.out) / f"rank{rank}.jsonl"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.timeout_s))
    emit({"event": "joined", "world_size": world, "backend": backend}, rank)
    env = environment(device)
    status = 0
    try:
        for i, job in enumerate(jobs):
            rec = execute(job, i, rank, world, backend, device, env)
            rec["local_rank"] = local_rank
            with out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            if rec["status"] == "error":  # stop: the other ranks would wait for this one
                emit({"event": "error", "job": i, "message": rec["message"]}, rank, always=True)
                print(rec["traceback"], file=sys.stderr, flush=True)
                status = 1
                break
    finally:
        if status == 0:
            dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
