"""Tensor parallelism, Megatron-style: each block's matrices split over t ranks.

What the reader learns: an MLP ``x -> gelu(x A) B`` splits with no communication in the
middle if A is split by columns (each rank computes its slice of the hidden layer, the GELU is
elementwise) and B by rows (each rank's slice of the hidden layer times its rows of B gives a
*partial* sum of the output); one all-reduce adds the partial sums. Attention splits the same
way, by heads: q, k, v columns for this rank's heads, c_proj rows for the same heads.

Two autograd functions carry the whole scheme (Megatron-LM's f and g):

    f = CopyToTP:     forward identity,   backward all-reduce   (before the column split)
    g = ReduceFromTP: forward all-reduce, backward identity     (after the row split)

so each TP block (an attention or an MLP) costs one all-reduce forward and one backward, each
of B·T·C values; a transformer layer (two blocks) four per training step. Weights that are
not split (LayerNorms, embeddings, c_proj's bias) get the same gradient on every rank, since
f's backward already summed the contributions of every shard.

Shapes: B batch, T tokens, C = n_embd, nh heads, hs = C // nh, t ranks, nh_r = nh / t heads
and H_r = 4C / t hidden units on each rank.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from efflab.core.config import ModelConfig
from efflab.core.model import GPT, gelu_tanh


class CommLog:
    """Counts the all-reduces a rank makes, the values they carry (forward and backward) and
    the wall seconds it spent in them (waiting for the other ranks included)."""

    def __init__(self):
        self.calls = {"forward": 0, "backward": 0}
        self.values = {"forward": 0, "backward": 0}
        self.seconds = 0.0

    def add(self, phase: str, t: torch.Tensor, seconds: float = 0.0) -> None:
        self.calls[phase] += 1
        self.values[phase] += t.numel()
        self.seconds += seconds

    def reset(self) -> None:
        self.__init__()


def _all_reduce(t: torch.Tensor, log: CommLog | None, phase: str, group=None) -> torch.Tensor:
    t = t.contiguous().clone()
    t0 = time.perf_counter()
    dist.all_reduce(t, group=group)
    if log is not None:
        log.add(phase, t, time.perf_counter() - t0)
    return t


class CopyToTP(torch.autograd.Function):
    """f: identity forward; backward sums the input gradient over the TP ranks."""

    @staticmethod
    def forward(ctx, x, log, group):
        ctx.log, ctx.group = log, group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.log, "backward", ctx.group), None, None


class ReduceFromTP(torch.autograd.Function):
    """g: forward sums the partial outputs over the TP ranks; identity backward."""

    @staticmethod
    def forward(ctx, x, log, group):
        return _all_reduce(x, log, "forward", group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def column_parallel_linear(x: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor | None) -> torch.Tensor:
    """This rank's output columns: x (..., C_in) @ W_r^T + b_r, W_r = (C_out / t, C_in)."""
    return F.linear(x, weight, bias)


def _rows(t: torch.Tensor, parts: list[tuple[int, int]]) -> torch.Tensor:
    """The rows [a, b) of every (a, b) in ``parts``, stacked (a copy: a shard owns its slice)."""
    return torch.cat([t[a:b] for a, b in parts], dim=0).clone()


def mlp_shards(fc_w, fc_b, proj_w, proj_b, rank: int, world: int) -> dict:
    """This rank's slices of an MLP's tensors (weights, or their gradients), as copies:
    c_fc's rows [a, b) (its output units) and c_proj's columns [a, b) (the same units)."""
    H = fc_w.size(0)
    a, b = rank * H // world, (rank + 1) * H // world
    return {"fc_w": fc_w.detach()[a:b].clone(),  # (H_r, C)
            "fc_b": fc_b.detach()[a:b].clone(),  # (H_r,)
            "proj_w": proj_w.detach()[:, a:b].clone(),  # (C, H_r)
            "proj_b": proj_b.detach().clone()}  # (C,) replicated: added once, after the sum


def attention_shards(qkv_w, qkv_b, proj_w, proj_b, rank: int, world: int) -> dict:
    """This rank's heads: their q, k and v rows of c_attn, their columns of c_proj."""
    C = proj_w.size(0)
    width = C // world  # nh / t heads of hs columns each
    a, b = rank * width, (rank + 1) * width
    parts = [(a, b), (C + a, C + b), (2 * C + a, 2 * C + b)]  # q, k, v
    return {"qkv_w": _rows(qkv_w.detach(), parts),  # (3·C/t, C)
            "qkv_b": _rows(qkv_b.detach(), parts),  # (3·C/t,)
            "proj_w": proj_w.detach()[:, a:b].clone(),  # (C, C/t)
            "proj_b": proj_b.detach().clone()}  # (C,) replicated


class TPMLP(nn.Module):
    """The MLP with c_fc split by columns (output units) and c_proj by rows (input units)."""

    def __init__(self, mlp: nn.Module, rank: int, world: int, log: CommLog | None = None,
                 group=None):
        super().__init__()
        H = mlp.c_fc.out_features
        if H % world:
            raise ValueError(f"MLP hidden size {H} is not divisible by {world} TP ranks")
        shards = mlp_shards(mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias,
                            rank, world)
        for name, t in shards.items():
            setattr(self, name, nn.Parameter(t))
        self.rank, self.world, self.log, self.group = rank, world, log, group

    def forward(self, x):  # x: (B, T, C), the same on every rank
        x = CopyToTP.apply(x, self.log, self.group)
        h = gelu_tanh(column_parallel_linear(x, self.fc_w, self.fc_b))  # (B, T, H_r)
        partial = F.linear(h, self.proj_w)  # (B, T, C): this rank's share of the sum
        return ReduceFromTP.apply(partial, self.log, self.group) + self.proj_b

    def extra_repr(self) -> str:
        return f"tensor-parallel MLP, rank {self.rank} of {self.world}"


class TPAttention(nn.Module):
    """Causal self-attention over this rank's nh / t heads; c_proj split by rows to match."""

    def __init__(self, attn: nn.Module, rank: int, world: int, log: CommLog | None = None,
                 group=None):
        super().__init__()
        nh, C = attn.n_head, attn.c_proj.in_features
        if attn.n_kv_head != nh:
            raise ValueError("tensor parallelism here splits multi-head attention only "
                             f"(n_kv_head={attn.n_kv_head}, n_head={nh})")
        if nh % world:
            raise ValueError(f"{nh} heads do not split over {world} TP ranks")
        hs, nh_r = C // nh, nh // world
        shards = attention_shards(attn.c_attn.weight, attn.c_attn.bias, attn.c_proj.weight,
                                  attn.c_proj.bias, rank, world)
        for name, t in shards.items():
            setattr(self, name, nn.Parameter(t))
        self.nh_r, self.hs = nh_r, hs
        self.rank, self.world, self.log, self.group = rank, world, log, group

    def forward(self, x, cache=None):  # x: (B, T, C)
        if cache is not None:
            raise ValueError("the tensor-parallel attention has no KV cache")
        B, T, _ = x.shape
        x = CopyToTP.apply(x, self.log, self.group)
        qkv = column_parallel_linear(x, self.qkv_w, self.qkv_b)  # (B, T, 3·nh_r·hs)
        q, k, v = (z.view(B, T, self.nh_r, self.hs).transpose(1, 2)
                   for z in qkv.split(self.nh_r * self.hs, dim=2))  # 3 x (B, nh_r, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh_r, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.nh_r * self.hs)  # (B, T, C/t)
        partial = F.linear(y, self.proj_w)  # (B, T, C)
        return ReduceFromTP.apply(partial, self.log, self.group) + self.proj_b

    def extra_repr(self) -> str:
        return f"tensor-parallel attention, {self.nh_r} heads on rank {self.rank} of {self.world}"


def shard_(model: GPT, rank: int, world: int, log: CommLog | None = None, group=None) -> GPT:
    """Replace every block's attention and MLP by this rank's tensor-parallel shard, in place.

    Build the same GPT (same config, same seed) on every rank first: each rank keeps its slice
    of the full model's weights, so the sharded model computes what the full one does.
    """
    for block in model.h:
        block.attn = TPAttention(block.attn, rank, world, log, group)
        block.mlp = TPMLP(block.mlp, rank, world, log, group)
    return model


def tp_param_counts(cfg: ModelConfig, t: int) -> dict:
    """Parameters one TP rank holds: the split ones (÷ t) and the replicated ones.

    Split per layer: c_attn 3C² + 3C, attention c_proj C², c_fc 4C² + 4C, MLP c_proj 4C²
    (12C² + 7C). Replicated per layer: two LayerNorms (4C) and the two c_proj biases (2C);
    once: the tied token table V·C, the positions block_size·C and ln_f (2C).
    """
    return tp_param_counts_of(cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.block_size, t)


def tp_param_counts_of(n_layer: int, n_embd: int, vocab_size: int, block_size: int,
                       t: int) -> dict:
    """:func:`tp_param_counts` from the shapes alone (C = n_embd must divide by t)."""
    C, L = n_embd, n_layer
    split = L * (12 * C * C + 7 * C)
    replicated = L * 6 * C + vocab_size * C + block_size * C + 2 * C
    return {"split": split // t, "replicated": replicated, "total": split // t + replicated,
            "full": split + replicated}


def tp_bytes_per_rank(cfg: ModelConfig, t: int, bytes_per_value: int = 4) -> int:
    """Parameter bytes one of t TP ranks holds (fp32 by default)."""
    return tp_param_counts(cfg, t)["total"] * bytes_per_value


def tp_allreduces_per_step(n_layer: int) -> dict:
    """All-reduces per training step: one forward and one backward per TP block, two blocks
    (attention, MLP) per layer."""
    return {"forward": 2 * n_layer, "backward": 2 * n_layer, "total": 4 * n_layer}


def tp_comm_values(cfg: ModelConfig, batch: int, seq: int) -> dict:
    """Values all-reduced per training step (each all-reduce carries B·T·C activations)."""
    per = batch * seq * cfg.n_embd
    n = tp_allreduces_per_step(cfg.n_layer)
    return {k: v * per for k, v in n.items()}


def tp_ring_bytes_sent(values: int, t: int, bytes_per_value: int = 4) -> float:
    """Bytes each rank sends for all-reduces of ``values`` values on a ring: 2(t−1)/t each."""
    return 2 * (t - 1) / t * values * bytes_per_value


def own_param_count(model: nn.Module) -> int:
    """Parameters this rank's module holds (a tied table counted once)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["CommLog", "CopyToTP", "ReduceFromTP", "column_parallel_linear", "TPMLP",
           "TPAttention", "mlp_shards", "attention_shards", "shard_", "tp_param_counts",
           "tp_param_counts_of", "tp_bytes_per_rank",
           "tp_allreduces_per_step", "tp_comm_values", "tp_ring_bytes_sent", "own_param_count"]
