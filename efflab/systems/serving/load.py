"""Serving at rising load: the capacity this machine has, a sweep of offered loads per policy,
the knee where queueing takes over, and the same load on a paged vs a contiguous cache.

Loads are fractions of a capacity *measured here* (a decode step's time at full batch), never
a fixed request rate that only fits one computer.
"""

from __future__ import annotations

import numpy as np
import torch

from efflab.core.model import GPT
from efflab.measurement.timing import summarize, time_steps
from efflab.systems.serving.engine import Engine, MeasuredClock, summarize_run
from efflab.systems.serving.kv_pool import KVPool, SeqSlot
from efflab.systems.serving.paged import paged_forward
from efflab.systems.serving.stream import poisson_stream


@torch.no_grad()
def decode_step_ms(model: GPT, batch_size: int, context: int = 32, target_s: float = 0.3) -> dict:
    """One batched decode step through the engine's own path (median, p25, p75, n in ms)."""
    cfg = model.cfg
    pool = KVPool(cfg, capacity_tokens=batch_size * cfg.block_size, layout="paged",
                  block_size=16)
    slots = [SeqSlot() for _ in range(batch_size)]
    for s in slots:
        pool.reserve(s, context + 1)
        paged_forward(model, pool, [s], torch.zeros(1, context, dtype=torch.long))
    x = torch.zeros(batch_size, 1, dtype=torch.long)

    def step():
        for s in slots:
            s.length = context
        paged_forward(model, pool, slots, x)

    return summarize(time_steps(step, target_s=target_s))


def capacity(model: GPT, max_batch: int, mean_output: float, context: int = 32,
             target_s: float = 0.3) -> dict:
    """Requests/s the engine can serve at most, from a measured decode step at full batch:
    max_batch sequences each need ``mean_output`` steps, so ≈ max_batch / (mean_output · t)."""
    one = decode_step_ms(model, 1, context, target_s)
    full = decode_step_ms(model, max_batch, context, target_s)
    req_s = max_batch / (mean_output * full["median"] / 1e3)
    return {"step_ms_b1": one, "step_ms_full": full, "max_batch": max_batch,
            "capacity_req_s": req_s, "capacity_tok_s": req_s * mean_output}


def serve_once(model: GPT, policy: str, rate: float, n_requests: int, *, max_batch: int = 8,
               layout: str = "paged", block_size: int = 16, kv_capacity_tokens: int | None = None,
               max_len: int | None = None, seed: int = 0, prompt_len=(8, 32),
               output_len=(8, 48), tokens=None, clock=None) -> dict:
    """One stream at ``rate`` served by one configuration; the run's summary row."""
    cfg = model.cfg
    max_len = max_len or cfg.block_size
    cap = kv_capacity_tokens or max_batch * max_len
    pool = KVPool(cfg, cap, layout=layout, block_size=block_size, max_len=max_len)
    reqs = poisson_stream(rate, n_requests, seed=seed, prompt_len=prompt_len,
                          output_len=output_len, tokens=tokens)
    eng = Engine(model, pool, policy, max_batch=max_batch, clock=clock or MeasuredClock())
    eng.run(reqs)
    row = {"policy": policy, "layout": layout, "rate": rate, "max_batch": max_batch,
           "block_size": pool.block_size, "kv_capacity_tokens": pool.capacity_tokens,
           "kv_capacity_bytes": pool.nbytes(), **summarize_run(reqs, eng.log)}
    return row


def load_sweep(model: GPT, rates, n_requests: int, policies=("static", "continuous"),
               on_row=None, **kwargs) -> list[dict]:
    """``serve_once`` for every policy at every rate, on the same seeded streams."""
    rows = []
    for rate in rates:
        for policy in policies:
            row = serve_once(model, policy, rate, n_requests, **kwargs)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def knee(rows: list[dict], policy: str, factor: float = 4.0, metric: str = "ttft_p99") -> dict:
    """The lowest offered rate at which ``policy``'s ``metric`` reaches ``factor`` × its value
    at the lowest rate (its unloaded value); None if it never does in the sweep."""
    mine = sorted((r for r in rows if r["policy"] == policy), key=lambda r: r["rate"])
    if not mine:
        return {"policy": policy, "rate": None}
    base = mine[0][metric]
    for r in mine:
        if r[metric] >= factor * base:
            return {"policy": policy, "rate": r["rate"], "unloaded": base, "value": r[metric]}
    return {"policy": policy, "rate": None, "unloaded": base, "value": mine[-1][metric]}


def compare_at_knee(rows: list[dict], factor: float = 4.0) -> dict:
    """Static's knee (p99 TTFT = factor × unloaded) and, at that load, continuous against it:
    throughput ratio and p99 TTFT; plus the highest load at which continuous still keeps its
    p99 TTFT at or under static's value at the knee (the load it sustains for that latency)."""
    k = knee(rows, "static", factor)
    out = {"factor": factor, "static_knee_rate": k["rate"]}
    if k["rate"] is None:
        out["note"] = f"static's p99 TTFT never reached {factor}x its unloaded value in this sweep"
        return out
    at = {r["policy"]: r for r in rows if r["rate"] == k["rate"]}
    s, c = at["static"], at.get("continuous")
    out.update(static_ttft_p99=s["ttft_p99"], static_throughput=s["throughput_tok_s"])
    if c is not None:
        out.update(continuous_ttft_p99=c["ttft_p99"],
                   continuous_throughput=c["throughput_tok_s"],
                   throughput_ratio_same_load=c["throughput_tok_s"] / s["throughput_tok_s"])
        ok = [r for r in rows if r["policy"] == "continuous" and r["ttft_p99"] <= s["ttft_p99"]]
        if ok:
            best = max(ok, key=lambda r: r["throughput_tok_s"])
            out.update(continuous_best_rate=best["rate"],
                       continuous_best_throughput=best["throughput_tok_s"],
                       sustained_throughput_ratio=best["throughput_tok_s"] / s["throughput_tok_s"])
    return out


def p_spread(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(a)), "p25": float(np.percentile(a, 25)),
            "p75": float(np.percentile(a, 75)), "n": int(a.size)}
