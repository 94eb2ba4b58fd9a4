"""Context (sequence) parallelism: ring attention.

What the reader learns: attention needs every key for every query, but not all at once. Each
of N ranks holds a slice of T/N positions (its queries, keys and values); the K/V slices travel
round the ring, one hop per step, and each rank folds every block it receives into its partial
result. A block's result is kept as (out, lse) — the softmax-weighted values of that block and
the log-sum-exp of its scores — and two partial results merge exactly:

    lse = log(e^lse_a + e^lse_b)
    out = e^(lse_a − lse) · out_a + e^(lse_b − lse) · out_b

(the online softmax of lesson 04, written for whole blocks). No rank ever holds more than a
(T/N) × (T/N) block of scores per head: B·nh·(T/N)² values instead of B·nh·T².

The causal mask: the block from the rank's own slice is masked on its diagonal, blocks from
earlier slices are seen whole, later ones are skipped (still passed on round the ring).
The ring hop is an autograd function (forward: send to the next rank, receive from the
previous; backward: the reverse), so gradients travel back round the ring by themselves; this
backward keeps every received block for simplicity, where a production ring recomputes them.

Shapes: B batch, nh heads, T sequence, Tc = T / N tokens per rank, hs head size.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from efflab.core.model import GPT


def _hop(x: torch.Tensor, to: int, frm: int, group=None) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x, to, group), dist.P2POp(dist.irecv, out, frm, group)]
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    return out


class RingShift(torch.autograd.Function):
    """Forward: send x to rank r+1, return what rank r−1 sent. Backward: the opposite way."""

    @staticmethod
    def forward(ctx, x, rank, world, log, group):
        ctx.rank, ctx.world, ctx.group = rank, world, group
        if log is not None:
            log["sent_values"] += x.numel()
        return _hop(x, (rank + 1) % world, (rank - 1) % world, group)

    @staticmethod
    def backward(ctx, grad):
        r, n = ctx.rank, ctx.world
        return _hop(grad, (r - 1) % n, (r + 1) % n, ctx.group), None, None, None, None


def block_attention(q, k, v, causal: bool):
    """(out, lse) of one block: out (B, nh, Tq, hs) = softmax(s) v, lse (B, nh, Tq, 1)."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, Tq, Tk) scores
    if causal:
        Tq, Tk = s.shape[-2:]
        keep = torch.ones(Tq, Tk, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1, keepdim=True)  # (B, nh, Tq, 1)
    return torch.exp(s - lse) @ v, lse, s.numel()


def merge(out_a, lse_a, out_b, lse_b):
    """Two partial attention results over disjoint key sets -> the result over both."""
    lse = torch.logaddexp(lse_a, lse_b)  # (B, nh, Tq, 1)
    return torch.exp(lse_a - lse) * out_a + torch.exp(lse_b - lse) * out_b, lse


def ring_attention(q, k, v, rank: int, world: int, log: dict | None = None, group=None):
    """Causal attention of this rank's queries over every rank's keys: q, k, v (B, nh, Tc, hs),
    rank r holding positions [r·Tc, (r+1)·Tc). Returns (B, nh, Tc, hs)."""
    hs = k.size(-1)
    out, lse, n = block_attention(q, k, v, causal=True)  # step 0: this rank's own block
    peak = n
    kv = torch.cat([k, v], dim=-1)  # (B, nh, Tc, 2·hs): one message per hop
    for step in range(1, world):
        kv = RingShift.apply(kv, rank, world, log, group)
        src = (rank - step) % world  # whose slice arrived
        if src < rank:  # an earlier slice: every key visible; later slices are masked out
            o, s_lse, n = block_attention(q, kv[..., :hs], kv[..., hs:], causal=False)
            out, lse = merge(out, lse, o, s_lse)
            peak = max(peak, n)
        else:  # the backward hop is a send/receive pair every rank must join, so a block
            out = out + 0.0 * kv.sum()  # this rank masks out joins the graph with weight 0
    if log is not None:
        log["score_values_peak"] = max(log.get("score_values_peak", 0), peak)
    return out


class RingCore(nn.Module):
    """The attention core (``block.attn.core``) replaced by ring attention over the ranks."""

    def __init__(self, rank: int, world: int, log: dict | None = None, group=None):
        super().__init__()
        self.rank, self.world, self.log, self.group = rank, world, log, group

    def forward(self, q, k, v):  # (B, nh, Tc, hs) each, this rank's slice
        return ring_attention(q, k, v, self.rank, self.world, self.log, self.group)

    def extra_repr(self) -> str:
        return f"ring attention, rank {self.rank} of {self.world}"


def new_log() -> dict:
    """What a ring records: values sent round the ring, the largest score block held."""
    return {"sent_values": 0, "score_values_peak": 0}


def ring_(model: GPT, rank: int, world: int, log: dict | None = None, group=None) -> GPT:
    """Swap every block's attention core for ring attention, in place."""
    if model.cfg.kv_heads != model.cfg.n_head:
        raise ValueError("ring attention here needs multi-head attention (n_kv_head = n_head)")
    for block in model.h:
        block.attn.core = RingCore(rank, world, log, group)
    return model


def context_loss(model: GPT, idx: torch.Tensor, targets: torch.Tensor, rank: int,
                 world: int) -> torch.Tensor:
    """This rank's share of the mean cross-entropy over the whole (B, T) batch: its slice of
    T/N positions through the (ring-attention) model, summed, divided by B·T. The ranks' shares
    add up to the full loss; their gradients add up to the full gradient."""
    B, T = idx.shape
    if T % world:
        raise ValueError(f"sequence length {T} does not split over {world} ranks")
    Tc = T // world
    a = rank * Tc
    ids, tg = idx[:, a:a + Tc], targets[:, a:a + Tc]  # (B, Tc)
    x = model.wte(ids) + model.wpe(torch.arange(a, a + Tc, device=idx.device))  # (B, Tc, C)
    for block in model.h:
        x = block(x)
    logits = model.lm_head(model.ln_f(x))  # (B, Tc, V)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), tg.reshape(-1),
                           reduction="sum") / (B * T)


def score_bytes_per_rank(batch: int, n_head: int, seq: int, world: int,
                         bytes_per_value: int = 4) -> int:
    """The largest block of scores one rank holds: B·nh·(T/N)² values."""
    return batch * n_head * (seq // world) ** 2 * bytes_per_value


def ring_sent_values(batch: int, n_head: int, seq: int, head_dim: int, world: int,
                     n_layer: int = 1) -> int:
    """Values one rank sends in a forward: N − 1 hops of its K and V blocks per layer."""
    return n_layer * (world - 1) * 2 * batch * n_head * (seq // world) * head_dim


__all__ = ["RingShift", "block_attention", "merge", "ring_attention", "RingCore", "new_log",
           "ring_", "context_loss", "score_bytes_per_rank", "ring_sent_values"]
