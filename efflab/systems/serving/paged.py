"""The GPT's forward pass over a batch of sequences of different lengths, keys in a KV pool.

``efflab.core.model.GPT.forward`` assumes every row of a batch sits at the same position with one
contiguous cache. A server's batch does not: each sequence has its own length and its own
blocks. This module reuses the model's own layers (embeddings, LayerNorms, projections, MLP)
and replaces only what must change: per-sequence positions, writing K/V into the pool, gathering
each sequence's blocks, and a mask that hides the positions a sequence does not hold.

The slow reference it is tested against is the model itself: each sequence run alone through
``GPT.forward`` gives the same logits (``tests/test_serving.py``). Attention here is always
PyTorch's SDPA, whatever attention technique the model carries.

Shapes: B sequences, T new tokens each, S the longest span (cached + new) in the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from efflab.core.model import GPT
from efflab.systems.serving.kv_pool import KVPool, SeqSlot


@torch.no_grad()
def paged_forward(model: GPT, pool: KVPool, slots: list[SeqSlot], ids: torch.Tensor) -> torch.Tensor:
    """ids (B, T): T new tokens for each of B sequences. Returns logits (B, T, V) and advances
    every slot's length by T. Room for the T new positions must already be reserved."""
    B, T = ids.shape
    cfg = model.cfg
    nh, nkv, hs = cfg.n_head, cfg.kv_heads, cfg.head_dim
    dev = ids.device
    lengths = torch.tensor([s.length for s in slots], device=dev)  # (B,)
    pos = lengths[:, None] + torch.arange(T, device=dev)  # (B, T) absolute positions
    if int(pos.max()) >= cfg.block_size:
        raise ValueError(f"position {int(pos.max())} exceeds block_size {cfg.block_size}")
    S = int(pos.max()) + 1
    # query (b, t) may see key j when j <= its own position: causal, and hides the padding
    mask = torch.arange(S, device=dev)[None, None, :] <= pos[:, :, None]  # (B, T, S)
    mask = mask[:, None]  # (B, 1, T, S): the same for every head
    x = model.wte(ids) + model.wpe(pos)  # (B, T, C)
    for layer, block in enumerate(model.h):
        attn = block.attn
        h = block.ln_1(x)
        q, k, v = attn.c_attn(h).split([cfg.n_embd, nkv * hs, nkv * hs], dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)
        pool.write(layer, slots, k, v)
        k, v = pool.gather(layer, slots, S)  # (B, nkv, S, hs)
        if nkv != nh:
            k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(nh // nkv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, cfg.n_embd)
        x = x + attn.c_proj(y)
        x = x + block.mlp(block.ln_2(x))
    for s in slots:
        s.length += T
    return model.lm_head(model.ln_f(x))  # (B, T, V)
