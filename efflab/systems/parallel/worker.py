"""The program every rank runs for lesson 15 (``-m efflab.systems.parallel.worker``).

Started by :func:`efflab.systems.parallel.launching.launch_parallel` under torchrun, like lesson
14's worker: it joins the process group, runs each job on every rank and appends one record per
job to ``DIR/rank<r>.jsonl``. A job is ``{"task": "tp" | "pp" | "ring", ...}`` with the fields
of :data:`DEFAULTS`. Every job also trains the unsplit model in the same process, on the same
batches from the same seed, and records both loss curves and the largest gradient difference
of the first step: the evidence that the split model computes what the whole one does.

Each rank keeps freed memory for reuse (:func:`~efflab.measurement.allocator.keep_freed_memory`,
recorded as ``env["allocator"]``): otherwise a GPipe stage, which holds more memory at once than
a 1F1B one, pays page faults that 1F1B does not, and the timeline counts them as bubble.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from efflab.core.config import ModelConfig, get_preset
from efflab.core.model import build_model
from efflab.measurement.allocator import keep_freed_memory
from efflab.measurement.hardware import environment
from efflab.systems.distributed.comm import allreduce_sweep, fit_alpha_beta
from efflab.systems.distributed.records import finish_record, new_record
from efflab.systems.distributed.worker import PROGRESS_PREFIX, emit
from efflab.systems.parallel import pipeline, ring, tensor

TASKS = ("tp", "pp", "ring")
# n_layer: None builds the preset as it is; a number, the preset with that many blocks (a
# deeper model, whose last stage's head and loss are a smaller share of the stage)
DEFAULTS = {"preset": "cpu-tiny", "n_layer": None, "batch": 4, "seq": 32, "steps": 3, "seed": 0,
            "lr": 1e-3, "micro_batches": 4, "schedule": "gpipe", "fit_target_s": 0.05}
MAX_LAYERS = 64


def settings(job: dict) -> dict:
    """The job's fields over :data:`DEFAULTS`, checked (ValueError naming the field)."""
    extra = set(job) - set(DEFAULTS) - {"task"}
    if job.get("task") not in TASKS:
        raise ValueError(f"task={job.get('task')!r} is not one of {', '.join(map(repr, TASKS))}")
    if extra:
        raise ValueError(f"unknown job fields {sorted(extra)}; known: {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **job}
    if not (isinstance(s["fit_target_s"], (int, float)) and 0 < s["fit_target_s"] <= 5):
        raise ValueError(f"fit_target_s={s['fit_target_s']!r}: expected seconds in (0, 5]")
    for name in ("batch", "seq", "steps", "micro_batches"):
        if isinstance(s[name], bool) or not isinstance(s[name], int) or s[name] < 1:
            raise ValueError(f"{name}={s[name]!r}: expected an integer >= 1")
    if s["schedule"] not in pipeline.SCHEDULES:
        raise ValueError(f"schedule={s['schedule']!r} is not one of {pipeline.SCHEDULES}")
    n = s["n_layer"]
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_LAYERS):
        raise ValueError(f"n_layer={n!r}: expected None (the preset's) or an integer in "
                         f"1..{MAX_LAYERS}")
    cfg = job_config(s)
    if s["seq"] > cfg.block_size:
        raise ValueError(f"seq={s['seq']} exceeds {cfg.name}'s block_size {cfg.block_size}")
    return s


def job_config(s: dict) -> ModelConfig:
    """The model a job's settings build: the preset, with ``n_layer`` blocks where given."""
    cfg = get_preset(s["preset"])
    n = s.get("n_layer")
    return cfg if n is None else replace(cfg, name=f"{cfg.name} with {n} blocks", n_layer=n)


def batches(cfg, s: dict, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` seeded (ids, targets) pairs of (batch, seq): the same on every rank."""
    g = torch.Generator().manual_seed(s["seed"] + 1)
    out = []
    for _ in range(s["steps"]):
        xy = torch.randint(0, cfg.vocab_size, (batch, s["seq"] + 1), generator=g)
        out.append((xy[:, :-1], xy[:, 1:]))
    return out


def reference(cfg, s: dict, data) -> tuple[list[float], dict]:
    """The unsplit model's losses over the steps, and its first step's gradients by name."""
    model = build_model(cfg, s["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=s["lr"])
    losses, grads = [], {}
    for i, (x, y) in enumerate(data):
        _, loss = model(x, y)
        loss.backward()
        losses.append(float(loss.detach()))
        if i == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, grads


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def tp_grad_error(model, ref_grads: dict, rank: int, world: int) -> float:
    """The largest |gradient − the unsplit model's| over this rank's parameters (each shard
    against the same slice of the full gradient)."""
    worst = 0.0
    for name, p in model.named_parameters():
        if ".attn." not in name and ".mlp." not in name:
            worst = max(worst, _diff(p.grad, ref_grads[name]))
    for i, block in enumerate(model.h):
        g = {k: ref_grads[f"h.{i}.mlp.{k}"] for k in ("c_fc.weight", "c_fc.bias", "c_proj.weight",
                                                    "c_proj.bias")}
        want = tensor.mlp_shards(*g.values(), rank, world)
        worst = max([worst] + [_diff(getattr(block.mlp, k).grad, v) for k, v in want.items()])
        g = [ref_grads[f"h.{i}.attn.{k}"] for k in ("c_attn.weight", "c_attn.bias",
                                                     "c_proj.weight", "c_proj.bias")]
        want = tensor.attention_shards(*g, rank, world)
        worst = max([worst] + [_diff(getattr(block.attn, k).grad, v) for k, v in want.items()])
    return worst


def run_tp(s: dict, rank: int, world: int) -> dict:
    cfg = job_config(s)
    data = batches(cfg, s, s["batch"])
    ref_losses, ref_grads = reference(cfg, s, data)
    log = tensor.CommLog()
    model = tensor.shard_(build_model(cfg, s["seed"]), rank, world, log)
    opt = torch.optim.AdamW(model.parameters(), lr=s["lr"])
    losses, seconds, comm_s, grad_err, comm = [], [], [], None, None
    for i, (x, y) in enumerate(data):
        log.reset()
        dist.barrier()
        t0 = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        seconds.append(time.perf_counter() - t0)
        comm_s.append(log.seconds)
        losses.append(float(loss.detach()))
        if i == 0:
            grad_err = tp_grad_error(model, ref_grads, rank, world)
            comm = {"calls": dict(log.calls), "values": dict(log.values)}
        opt.step()
        opt.zero_grad(set_to_none=True)
    # lesson 14's α–β model, fitted here on this launch's ranks, around the TP message size
    per_call = 4 * comm["values"]["forward"] // max(1, comm["calls"]["forward"])
    sizes = sorted({4, 64, 1024} | {int(per_call * f) // 4 * 4 for f in (0.25, 0.5, 1, 2, 4)})
    rows = allreduce_sweep(sizes, min_repeats=5, max_repeats=40, target_s=s["fit_target_s"])
    p25 = [float(np.percentile(r["samples_s"], 25)) for r in rows]
    fit = fit_alpha_beta([r["bytes"] for r in rows], p25, world)
    return {"losses": losses, "reference_losses": ref_losses, "grad_max_abs_diff": grad_err,
            "params": tensor.own_param_count(model), "comm": comm, "step_seconds": seconds,
            "allreduce_seconds": comm_s, "allreduce_bytes": per_call,
            "fit": {"alpha_s": fit.alpha_s, "bandwidth": fit.bandwidth, "world_size": world,
                    "sizes": sizes, "p25_s": p25}}


def run_pp(s: dict, rank: int, world: int) -> dict:
    cfg, m = job_config(s), s["micro_batches"]
    data = batches(cfg, s, s["batch"] * m)
    last = rank == world - 1
    ref_losses, ref_grads = reference(cfg, s, data) if last or rank == 0 else (None, {})
    model = build_model(cfg, s["seed"])
    stage = pipeline.Stage(model, rank, world)
    # the first and last stages' group for the tied table (every rank takes part in making it)
    tied_group = dist.new_group([0, world - 1]) if world > 1 else None
    mine = {id(p) for p in stage.parameters()}
    opt = torch.optim.AdamW(stage.parameters(), lr=s["lr"])
    losses, steps, grad_err = [], [], None
    for i, (x, y) in enumerate(data):
        dist.barrier()
        t0 = time.perf_counter()
        out = pipeline.run_step(stage, x, y, m, s["schedule"], t0)
        pipeline.sum_tied_grad(stage, tied_group)
        every = [None] * world
        dist.all_gather_object(every, out["spans"])
        start = min(sp[2] for spans in every for sp in spans)
        end = max(sp[3] for spans in every for sp in spans)
        steps.append({"spans": out["spans"], "window_s": [start, end],
                      "idle_fraction": pipeline.idle_fraction(out["spans"], start, end),
                      "busy_cpu_s": out["busy_cpu_s"],
                      "saved_peak_bytes": out["saved_peak_bytes"],
                      "saved_bytes_per_micro": out["saved_bytes_per_micro"]})
        if last:
            losses.append(out["loss"])
        if i == 0:
            worst = 0.0
            for name, p in model.named_parameters():
                if id(p) in mine:
                    worst = max(worst, _diff(p.grad, ref_grads[name]))
            if last and world > 1:
                worst = max(worst, _diff(stage.head_w.grad, ref_grads["wte.weight"]))
            grad_err = worst
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"stage": rank, "layers": list(pipeline.stage_layers(cfg.n_layer, world, rank)),
            "losses": losses or None, "reference_losses": ref_losses if last else None,
            "grad_max_abs_diff": grad_err, "steps": steps,
            "bubble_formula": pipeline.bubble_fraction(world, m),
            "peak_in_flight": pipeline.peak_in_flight(s["schedule"], rank, world, m)}


def run_ring(s: dict, rank: int, world: int) -> dict:
    cfg = job_config(s)
    data = batches(cfg, s, s["batch"])
    ref_losses, ref_grads = reference(cfg, s, data)
    log = ring.new_log()
    model = ring.ring_(build_model(cfg, s["seed"]), rank, world, log)
    opt = torch.optim.AdamW(model.parameters(), lr=s["lr"])
    losses, grad_err, sent = [], None, None
    for i, (x, y) in enumerate(data):
        share = ring.context_loss(model, x, y, rank, world)
        share.backward()
        if i == 0:
            sent = log["sent_values"]
        for p in model.parameters():  # each rank holds the gradient of its tokens' share
            dist.all_reduce(p.grad)
        loss = share.detach().clone()
        dist.all_reduce(loss)
        losses.append(float(loss))
        if i == 0:
            grad_err = max(_diff(p.grad, ref_grads[n]) for n, p in model.named_parameters())
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"losses": losses, "reference_losses": ref_losses, "grad_max_abs_diff": grad_err,
            "score_values_peak": log["score_values_peak"], "sent_values_forward": sent}


RUNNERS = {"tp": run_tp, "pp": run_pp, "ring": run_ring}


def describe(event: dict) -> str:
    """One short line per progress event."""
    if event.get("event") == "joined":
        return f"{event['world_size']} ranks joined ({event['backend']})"
    if event.get("event") == "error":
        return f"rank {event['rank']}: {event['message']}"
    return f"{event.get('task')} job {event.get('job')} done in {event.get('seconds', 0):.1f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout-s", type=float, default=300.0)
    args = ap.parse_args(argv)
    if "RANK" not in os.environ:
        print("start this under torchrun (see efflab.systems.parallel.launching)", file=sys.stderr)
        return 2
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    jobs = json.loads(Path(args.jobs).read_text())
    out = Path(args.out) / f"rank{rank}.jsonl"
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout_s))
    emit({"event": "joined", "world_size": world, "backend": "gloo"}, rank)
    env, status = {**environment("cpu"), "allocator": keep_freed_memory()}, 0
    try:
        for i, job in enumerate(jobs):
            rec = new_record(job.get("task"), rank=rank, world_size=world, backend="gloo",
                             device="cpu", threads=torch.get_num_threads(),
                             preset=job.get("preset"), env=env, job=i)
            t0 = time.perf_counter()
            try:
                s = settings(job)
                rec.update(status="ok", message=None, knobs=s,
                           result=RUNNERS[s["task"]](s, rank, world))
            except Exception as e:  # recorded, then every rank stops
                rec.update(status="error", knobs=job, message=f"{type(e).__name__}: {e}",
                           traceback=traceback.format_exc())
            rec = finish_record(rec, time.perf_counter() - t0)
            with out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            if rec["status"] == "error":
                emit({"event": "error", "job": i, "message": rec["message"]}, rank, always=True)
                print(rec["traceback"], file=sys.stderr, flush=True)
                status = 1
                break
            emit({"task": job.get("task"), "job": i, "seconds": rec["seconds"]}, rank)
    finally:
        if status == 0:
            dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["TASKS", "DEFAULTS", "PROGRESS_PREFIX", "settings", "job_config", "batches", "reference",
           "tp_grad_error", "run_tp", "run_pp", "run_ring", "describe", "main"]
