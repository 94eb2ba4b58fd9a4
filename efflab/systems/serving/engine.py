"""A small serving engine: a request queue, a scheduler, a KV pool, and a clock.

One engine iteration: take the requests that have arrived into the queue; admit some (the
policy decides which); prefill each admitted request (its first token comes out of the
prefill); then one decode step for every running sequence at once (one token each). Finished
sequences leave; their blocks go back to the pool.

Two scheduling policies:

- ``static``: a batch is formed from the queue (up to ``max_batch``) only when the previous batch
  has finished, and runs until its longest request is done. Short requests wait for long ones;
  new arrivals wait for the whole batch.
- ``continuous`` (iteration-level, Orca / vLLM): requests join between any two decode steps as
  soon as a batch slot and cache room are free, and leave as soon as they are done.

When a paged pool runs out of blocks mid-generation, the most recently admitted sequence is
preempted: its blocks are freed and it goes back to the front of the queue, to be prefilled
again (prompt + what it generated so far) when room returns — vLLM's recompute preemption.

Time comes from a clock, never read directly: :class:`MeasuredClock` advances by the measured
wall time of each model call and jumps over idle gaps (open-loop traffic without sleeping);
:class:`CostModelClock` advances by a fixed cost model, so scheduling logic is tested exactly
and independently of the machine's speed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from efflab.core.model import GPT
from efflab.systems.serving.kv_pool import KVPool, OutOfBlocks, SeqSlot
from efflab.systems.serving.paged import paged_forward
from efflab.systems.serving.stream import Request

POLICIES = ("static", "continuous")


# ----------------------------------------------------------------------------- clocks

class MeasuredClock:
    """Virtual time that advances by the measured duration of each model call, and jumps to
    the next arrival when the server is idle (no sleeping)."""

    def __init__(self):
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def wait_until(self, t: float) -> None:
        self.t = max(self.t, t)

    def run(self, kind: str, fn: Callable[[], object], n_seqs: int, n_tokens: int):
        t0 = time.perf_counter()
        out = fn()
        self.t += time.perf_counter() - t0
        return out


class CostModelClock(MeasuredClock):
    """Virtual time from a cost model: a prefill costs ``prefill_base + prefill_per_token·n``,
    a decode step ``decode_base + decode_per_seq·B`` (seconds). Deterministic: for tests."""

    def __init__(self, prefill_base=0.01, prefill_per_token=0.0005, decode_base=0.01,
                 decode_per_seq=0.001):
        super().__init__()
        self.costs = (prefill_base, prefill_per_token, decode_base, decode_per_seq)

    def run(self, kind, fn, n_seqs, n_tokens):
        out = fn()
        pb, pt, db, ds = self.costs
        self.t += pb + pt * n_tokens if kind == "prefill" else db + ds * n_seqs
        return out


# ----------------------------------------------------------------------------- the engine

@dataclass
class _Running:
    req: Request
    slot: SeqSlot
    next_token: int  # sampled, not yet fed to the model


class Engine:
    """Serve a list of requests with ``policy`` over a ``pool``; greedy decoding.

    ``max_batch`` caps the sequences decoded together. ``pool`` decides how many fit in the KV
    memory: contiguous reserves ``max_len`` positions per sequence, paged only what it holds.
    """

    def __init__(self, model: GPT, pool: KVPool, policy: str = "continuous", max_batch: int = 8,
                 clock: MeasuredClock | None = None):
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r} is not allowed; policy must be one of {POLICIES}")
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise ValueError(f"max_batch={max_batch!r} is not allowed; must be an integer >= 1")
        self.model = model.eval()
        self.pool = pool
        self.policy = policy
        self.max_batch = max_batch
        self.clock = clock or MeasuredClock()
        self.device = next(model.parameters()).device
        self.log: list[dict] = []  # one row per iteration: time, batch, waste
        self.preemptions = 0

    # ------------------------------------------------------------------ helpers
    def _fits(self, req: Request) -> bool:
        need = len(req.prompt) + len(req.output) + 1  # the prefill plus room for one more token
        return self.pool.can_hold(need)

    def _prefill(self, req: Request, slot: SeqSlot) -> _Running:
        ids = req.prompt + req.output  # a preempted request recomputes what it generated
        x = torch.tensor([ids], device=self.device)  # (1, T)
        logits = self.clock.run("prefill", lambda: paged_forward(self.model, self.pool, [slot], x),
                                1, len(ids))
        tok = int(logits[0, -1].argmax())
        self._emit(req, tok)
        return _Running(req, slot, tok)

    def _emit(self, req: Request, tok: int) -> None:
        t = self.clock.now()
        req.output.append(tok)
        req.token_times.append(t)
        if req.first_token is None:
            req.first_token = t
        if len(req.output) >= req.max_new_tokens:
            req.finished = t

    def _preempt_for(self, running: list[_Running], waiting: deque) -> None:
        victim = running.pop()  # the most recently admitted
        self.pool.release(victim.slot)
        victim.req.preemptions += 1
        self.preemptions += 1
        waiting.appendleft(victim.req)

    # ------------------------------------------------------------------ the loop
    def run(self, requests: list[Request]) -> list[Request]:
        """Serve every request; fills in their outputs and timestamps and returns them."""
        for r in requests:
            need = len(r.prompt) + r.max_new_tokens
            if need > self.pool.max_len:
                raise ValueError(f"request {r.id}: prompt {len(r.prompt)} + {r.max_new_tokens} "
                                 f"new tokens exceeds max_len={self.pool.max_len}")
            if self.pool.blocks_for(need) > self.pool.n_blocks:
                raise ValueError(f"request {r.id} needs {self.pool.blocks_for(need)} blocks; "
                                 f"the pool has {self.pool.n_blocks}")
        pending = deque(sorted(requests, key=lambda r: r.arrival))
        waiting: deque[Request] = deque()
        running: list[_Running] = []
        clock = self.clock
        while pending or waiting or running:
            while pending and pending[0].arrival <= clock.now():
                waiting.append(pending.popleft())
            admit = self.policy == "continuous" or not running
            admitted = []
            while (admit and waiting and len(running) + len(admitted) < self.max_batch
                   and self._fits(waiting[0])):
                req = waiting.popleft()
                if req.admitted is None:
                    req.admitted = clock.now()
                slot = SeqSlot()  # reserved now, so the next admission sees what is left
                self.pool.reserve(slot, len(req.prompt) + len(req.output))
                admitted.append((req, slot))
            if not running and not admitted:
                if not pending:
                    if waiting:  # cannot happen: run() checked every request fits alone
                        raise RuntimeError("a waiting request can never fit the pool")
                    break
                clock.wait_until(pending[0].arrival)
                continue
            for req, slot in admitted:
                run = self._prefill(req, slot)
                if req.finished is None:
                    running.append(run)
                else:
                    self.pool.release(run.slot)
            active = [r for r in running if r.req.finished is None]
            if active:
                # room for one more position each; preempt the newest until everyone fits
                while True:
                    try:
                        for r in active:
                            self.pool.reserve(r.slot, r.slot.length + 1)
                        break
                    except OutOfBlocks:
                        self._preempt_for(running, waiting)
                        active = [r for r in running if r.req.finished is None]
                        if not active:
                            break
            if active:
                x = torch.tensor([[r.next_token] for r in active], device=self.device)  # (B, 1)
                slots = [r.slot for r in active]
                logits = clock.run("decode",
                                   lambda slots=slots, x=x: paged_forward(self.model, self.pool,
                                                                          slots, x),
                                   len(active), len(active))
                nxt = logits[:, -1].argmax(-1).tolist()
                for r, tok in zip(active, nxt):
                    r.next_token = tok
                    self._emit(r.req, tok)
            w = self.pool.waste(r.slot for r in running)
            self.log.append({"t": clock.now(), "batch": len(active), "running": len(running),
                             "waiting": len(waiting), **w})
            # leaving: continuous frees each sequence as it finishes; static the whole batch
            done = [r for r in running if r.req.finished is not None]
            if self.policy == "continuous" or len(done) == len(running):
                for r in done:
                    self.pool.release(r.slot)
                running = [r for r in running if r.req.finished is None]
        return requests


# ----------------------------------------------------------------------------- metrics

def _pct(a, q) -> float:
    return float(np.percentile(np.asarray(a, dtype=np.float64), q)) if len(a) else float("nan")


def summarize_run(requests: list[Request], log: list[dict] | None = None) -> dict:
    """TTFT and TPOT (p50, p99, in seconds), throughput (output tokens/s and requests/s over
    the span from first arrival to last finish), and — from the engine's log — the mean and
    peak wasted KV positions per sequence."""
    ttft = [r.ttft for r in requests]
    tpot = [r.tpot for r in requests if len(r.output) > 1]
    t0 = min(r.arrival for r in requests)
    span = max(r.finished for r in requests) - t0
    tokens = sum(len(r.output) for r in requests)
    out = {"n_requests": len(requests), "output_tokens": tokens, "span_s": span,
           "ttft_p50": _pct(ttft, 50), "ttft_p99": _pct(ttft, 99), "ttft_mean": float(np.mean(ttft)),
           "tpot_p50": _pct(tpot, 50), "tpot_p99": _pct(tpot, 99),
           "latency_p50": _pct([r.latency for r in requests], 50),
           "throughput_tok_s": tokens / span if span > 0 else float("nan"),
           "throughput_req_s": len(requests) / span if span > 0 else float("nan"),
           "preemptions": sum(r.preemptions for r in requests)}
    if log:
        busy = [row for row in log if row["sequences"]]
        per_seq = [row["wasted"] / row["sequences"] for row in busy]
        out.update(mean_batch=float(np.mean([row["batch"] for row in log])),
                   waste_per_seq_mean=float(np.mean(per_seq)) if per_seq else 0.0,
                   waste_per_seq_max=float(max(per_seq)) if per_seq else 0.0,
                   waste_bytes_mean=float(np.mean([row["wasted_bytes"] for row in busy]))
                   if busy else 0.0,
                   waste_fraction=float(np.sum([r["wasted"] for r in busy])
                                        / max(1, np.sum([r["reserved"] for r in busy]))))
    return out
