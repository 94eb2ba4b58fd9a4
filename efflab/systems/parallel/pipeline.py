"""Pipeline parallelism: the blocks split into p stages, a batch into m micro-batches.

What the reader learns: a stage can only work on a micro-batch once the stage before it has
sent the activations (forward) or the stage after it the gradients (backward), so the first
and last stages wait while the pipeline fills and drains. With equal work per stage that idle
share — the *bubble* — is (p − 1)/(m + p − 1) for both schedules below:

- GPipe: every micro-batch forward, then every one backward. Each stage keeps the activations
  of all m micro-batches at once.
- 1F1B: stage s runs p − s − 1 warm-up forwards, then alternates one forward and one backward,
  then drains the backwards. Same bubble, but at most p − s micro-batches in flight.

Stage 0 holds the embeddings, the last stage ln_f, the head and the loss; the token table is
tied to the head, so the first and last stages each hold a copy and sum its gradient after the
backward (as Megatron-LM does). Activations travel with ``isend``/``irecv`` (gloo on CPU).

Shapes: B micro-batch, T tokens, C = n_embd, V vocab, p stages, m micro-batches.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from efflab.core.model import GPT

SCHEDULES = ("gpipe", "1f1b")


def schedule(name: str, stage: int, p: int, m: int) -> list[tuple[str, int]]:
    """The (action, micro-batch) order stage ``stage`` of ``p`` runs: ("F", i) or ("B", i)."""
    if name == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
    if name == "1f1b":
        warm = min(p - stage - 1, m)
        acts = [("F", i) for i in range(warm)]
        f, b = warm, 0
        while b < m:
            if f < m:
                acts.append(("F", f))
                f += 1
            acts.append(("B", b))
            b += 1
        return acts
    raise ValueError(f"schedule={name!r} is not one of {', '.join(map(repr, SCHEDULES))}")


def bubble_fraction(p: int, m: int) -> float:
    """The idle share of each stage with equal work per stage: (p − 1)/(m + p − 1)."""
    return (p - 1) / (m + p - 1)


def peak_in_flight(name: str, stage: int, p: int, m: int) -> int:
    """Micro-batches whose activations a stage holds at once: m (GPipe), min(p − s, m) (1F1B)."""
    live = peak = 0
    for act, _ in schedule(name, stage, p, m):
        live += 1 if act == "F" else -1
        peak = max(peak, live)
    return peak


def simulate(name: str, p: int, m: int, t_f: float | Sequence[float] = 1.0,
             t_b: float | Sequence[float] = 2.0, t_msg: float = 0.0) -> list[list]:
    """The ideal timeline: each stage's busy spans [(action, micro, start, end)] when every
    forward takes ``t_f``, every backward ``t_b`` and each message between stages ``t_msg``
    (default free). ``t_f`` and ``t_b`` may be one number for every stage or one per stage
    (p numbers: unequal stages, such as the last one with the head and the loss). A forward
    waits for the previous stage's forward of the same micro-batch, a backward for the next
    stage's, plus the message."""
    t_f, t_b = _per_stage("t_f", t_f, p), _per_stage("t_b", t_b, p)
    acts = [schedule(name, s, p, m) for s in range(p)]
    done: dict[tuple[str, int, int], float] = {}
    spans: list[list] = [[] for _ in range(p)]
    nxt, free = [0] * p, [0.0] * p
    while any(nxt[s] < len(acts[s]) for s in range(p)):
        moved = False
        for s in range(p):
            if nxt[s] == len(acts[s]):
                continue
            act, i = acts[s][nxt[s]]
            dep = ("F", s - 1, i) if act == "F" else ("B", s + 1, i)
            if (act == "F" and s == 0) or (act == "B" and s == p - 1):
                dep = None
            if dep is not None and dep not in done:
                continue
            start = max(free[s], done[dep] + t_msg if dep else 0.0)
            free[s] = done[(act, s, i)] = start + (t_f[s] if act == "F" else t_b[s])
            spans[s].append((act, i, start, free[s]))
            nxt[s] += 1
            moved = True
        if not moved:
            raise RuntimeError(f"schedule {name!r} deadlocks at p={p}, m={m}")
    return spans


def _per_stage(name: str, t: float | Sequence[float], p: int) -> list[float]:
    """A duration for each of p stages: one number repeated, or p numbers as given."""
    if isinstance(t, (int, float)):
        return [float(t)] * p
    if len(t) != p:
        raise ValueError(f"{name} has {len(t)} durations; expected one number or p = {p}")
    return [float(x) for x in t]


def stage_layers(n_layer: int, p: int, stage: int) -> range:
    """The blocks of one stage: n_layer split as evenly as possible, earlier stages first."""
    base, extra = divmod(n_layer, p)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (1 if stage < extra else 0))


class Stage(nn.Module):
    """One stage of a GPT: its blocks, plus the embeddings (first) and head and loss (last)."""

    def __init__(self, model: GPT, stage: int, p: int):
        super().__init__()
        self.stage, self.p = stage, p
        self.first, self.last = stage == 0, stage == p - 1
        self.n_embd = model.cfg.n_embd
        self.blocks = nn.ModuleList(model.h[i] for i in stage_layers(model.cfg.n_layer, p, stage))
        if self.first:
            self.wte, self.wpe = model.wte, model.wpe
        if self.last:
            self.ln_f = model.ln_f
            self.head_w = model.wte.weight if self.first else nn.Parameter(
                model.wte.weight.detach().clone())  # the tied table's copy on the last stage

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None):
        if self.first:  # x: (B, T) token ids
            T = x.size(1)
            x = self.wte(x) + self.wpe(torch.arange(T, device=x.device))  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        if not self.last:
            return x
        logits = F.linear(self.ln_f(x), self.head_w)  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))

    def tied(self) -> torch.Tensor | None:
        """The tied table as this stage holds it (first or last stage), else None."""
        if self.first:
            return self.wte.weight
        return self.head_w if self.last else None


class SavedBytes:
    """Bytes autograd saves for backward, per micro-batch (parameters not counted), and the
    peak over the step of all micro-batches held at once."""

    def __init__(self, params):
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.live: dict[int, int] = {}
        self.peak = self.per_micro = 0

    def hooks(self, micro: int):
        seen = set()

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self.skip and ptr not in seen:
                seen.add(ptr)
                self.live[micro] = self.live.get(micro, 0) + t.untyped_storage().nbytes()
                self.peak = max(self.peak, sum(self.live.values()))
            return t

        return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)

    def release(self, micro: int) -> None:
        self.per_micro = max(self.per_micro, self.live.pop(micro, 0))


def run_step(stage: Stage, idx: torch.Tensor, targets: torch.Tensor, m: int, name: str,
             t0: float | None = None) -> dict:
    """One training step's forward and backward over ``m`` micro-batches on this stage.

    ``idx``, ``targets``: the whole (m·B, T) batch (every rank has it; only the first stage
    reads the ids, only the last the targets). Gradients accumulate in the stage's parameters
    (the loss of each micro-batch is divided by m, so they equal the full batch's). Returns the
    loss (last stage; None elsewhere), the busy spans [(action, micro, start_s, end_s)] relative
    to ``t0``, the CPU seconds this thread had during them (less than their wall seconds when
    the host took the core away), and the peak bytes of saved activations.
    """
    rank, p = stage.stage, stage.p
    micro_ids, micro_tg = idx.chunk(m), targets.chunk(m)
    B, T = micro_ids[0].shape
    C = stage.n_embd
    saved = SavedBytes(stage.parameters())
    inputs, outputs, sends, spans = {}, {}, [], []
    loss_sum, cpu_s = 0.0, 0.0
    t0 = time.perf_counter() if t0 is None else t0
    # receives are posted ahead of need, so a neighbour's message lands in its buffer as soon
    # as it is sent instead of waiting for this stage to finish a span and ask; at most as many
    # ahead as the schedule keeps in flight, so 1F1B holds no more buffers than micro-batches
    ahead = peak_in_flight(name, rank, p, m)
    acts_in = None if stage.first else _Inbox((B, T, C), rank - 1, m, ahead)
    grads_in = None if stage.last else _Inbox((B, T, C), rank + 1, m, ahead)
    for act, i in schedule(name, rank, p, m):
        if act == "F":
            if stage.first:
                x = micro_ids[i]
            else:
                x = acts_in.take(i)  # (B, T, C) from the previous stage
                x.requires_grad_(True)
            start, c0 = time.perf_counter(), time.thread_time()
            with saved.hooks(i):
                y = stage(x, micro_tg[i]) if stage.last else stage(x)
            if stage.last:
                y = y / m
                loss_sum += float(y.detach())
            spans.append(("F", i, start - t0, time.perf_counter() - t0))
            cpu_s += time.thread_time() - c0
            if not stage.last:
                out = y.detach().contiguous()
                sends.append((dist.isend(out, dst=rank + 1), out))  # keep it alive until sent
            inputs[i], outputs[i] = x, y
        else:
            y = outputs.pop(i)
            g = None if stage.last else grads_in.take(i)  # (B, T, C) from the next stage
            start, c0 = time.perf_counter(), time.thread_time()
            y.backward(g)
            saved.release(i)
            spans.append(("B", i, start - t0, time.perf_counter() - t0))
            cpu_s += time.thread_time() - c0
            x = inputs.pop(i)
            if not stage.first:
                gx = x.grad.contiguous()
                sends.append((dist.isend(gx, dst=rank - 1), gx))
    for work, _ in sends:
        work.wait()
    return {"loss": loss_sum if stage.last else None, "spans": spans, "busy_cpu_s": cpu_s,
            "saved_peak_bytes": saved.peak, "saved_bytes_per_micro": saved.per_micro}


class _Inbox:
    """The tensors one neighbour sends this stage, one per micro-batch in order 0..m-1, each
    received into its own buffer by an ``irecv`` posted up to ``ahead`` micro-batches early."""

    def __init__(self, shape: tuple[int, ...], src: int, m: int, ahead: int):
        self.shape, self.src, self.m, self.ahead = shape, src, m, max(1, ahead)
        self.posted: dict[int, tuple[torch.Tensor, object]] = {}
        self.next = 0
        self._post_until(self.ahead)

    def _post_until(self, end: int) -> None:
        while self.next < min(self.m, end):
            buf = torch.empty(self.shape)
            self.posted[self.next] = (buf, dist.irecv(buf, src=self.src))
            self.next += 1

    def take(self, i: int) -> torch.Tensor:
        """Micro-batch ``i``'s tensor, once it has arrived; the next receive is posted first."""
        buf, req = self.posted.pop(i)
        self._post_until(i + 1 + self.ahead)
        req.wait()
        return buf


def sum_tied_grad(stage: Stage, group) -> None:
    """The first and last stages add their tied-table gradients (``group``: those two ranks)."""
    w = stage.tied()
    if w is not None and stage.p > 1:
        dist.all_reduce(w.grad, group=group)


def idle_fraction(spans, start_s: float, end_s: float) -> float:
    """The share of [start_s, end_s] a stage spent outside its busy spans."""
    busy = sum(e - s for _, _, s, e in spans)
    return 1.0 - busy / (end_s - start_s)


__all__ = ["SCHEDULES", "schedule", "bubble_fraction", "peak_in_flight", "simulate", "stage_layers",
           "Stage", "SavedBytes", "run_step", "sum_tied_grad", "idle_fraction"]
