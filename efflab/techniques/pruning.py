"""Pruning: remove weights the model can spare — as zeros, or for real.

One verb, as every technique here::

    apply_(model, PruningConfig("unstructured", sparsity=0.5))                 # global magnitude
    apply_(model, PruningConfig("unstructured", sparsity=0.5, scope="layer"))  # each layer alike
    apply_(model, PruningConfig("2:4"))                                        # semi-structured
    apply_(model, PruningConfig("structured", sparsity=0.5, heads=1))          # a smaller model

==================  ==========================================  ==============================
method              what goes                                   what it buys
==================  ==========================================  ==============================
``unstructured``    the smallest-|w| weights: of all block      nothing on dense hardware: the
                    Linears together (``scope="global"``, a     zeros are still stored and
                    layer may lose more than others) or each    multiplied. Quality vs
                    Linear to the same ``sparsity`` (``layer``)  sparsity is what it teaches.
``2:4``             in every 4 consecutive inputs of a row,     up to ~2x matmul speed on GPUs
                    the 2 smallest |w| (exactly 50%)            with sparse tensor cores (CC >=
                                                                8.0, fp16/bf16); on a CPU no
                                                                kernel: quality only, speed
                                                                refused with the reason
``structured``      whole MLP hidden channels (``sparsity`` =   a really smaller model: fewer
                    the fraction of the 4C channels removed,    rows and columns, fewer bytes
                    rounded to ``multiple_of``) and whole       and FLOPs, faster on any
                    attention heads (``heads`` per layer)       hardware
==================  ==========================================  ==============================

Only the Linears inside the transformer blocks are pruned; the token table (tied to the output
head) is left whole, as quantization leaves it. Importance is magnitude: ``|w|`` for single
weights; for a channel or head, the product of the L2 norms of the weights that write it and
the weights that read it (a channel with a small input or a small output contributes little).

Masked weights stay zero through fine-tuning (:func:`finetune`): each :class:`PrunedLinear`
keeps its mask and zeroes its weight's gradient where the mask is 0, and the mask is reapplied
after every step. Structured pruning needs no mask: the rows and columns are gone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from efflab.core.config import (
    PRUNING_SCOPES,
    PRUNINGS,
    ConfigError,
    ModelConfig,
    Pruning,
    PruningScope,
    check_choice,
    check_int,
    check_real,
)
from efflab.core.model import gelu_tanh
from efflab.techniques.registry import register
from efflab.techniques.surgery import block_linears, swap_module


@dataclass(frozen=True)
class PruningConfig:
    """How to prune the block Linears.

    ``method``: see the module table. ``sparsity``: for ``unstructured`` the fraction of block
    weights set to zero, in [0, 1); for ``structured`` the fraction of MLP hidden channels
    removed, in [0, 1) (rounded so that ``multiple_of`` divides the channels kept — a kernel- and
    quantization-friendly width); ignored by ``2:4`` (always 50%). ``scope``: ``global`` (one
    threshold for all block Linears) or ``layer`` (each Linear pruned to ``sparsity``).
    ``heads``: attention heads removed per layer (``structured`` only; at least one stays).
    """

    method: Pruning = "unstructured"
    sparsity: float = 0.5
    scope: PruningScope = "global"
    heads: int = 0
    multiple_of: int = 64

    def __post_init__(self):
        check_choice("method", self.method, PRUNINGS)
        check_choice("scope", self.scope, PRUNING_SCOPES)
        check_real("sparsity", self.sparsity, 0, 1, hi_open=True)
        check_int("heads", self.heads, lo=0)
        if self.heads and self.method != "structured":
            raise ConfigError("heads", self.heads,
                              f"0 with method={self.method!r} (only 'structured' removes heads)")
        check_int("multiple_of", self.multiple_of, lo=1)

    def check_fits(self, cfg: ModelConfig) -> None:
        """Raise ConfigError if this pruning cannot apply to a model of shape ``cfg``."""
        if self.method != "structured":
            return
        if self.heads >= cfg.n_head:
            raise ConfigError("heads", self.heads,
                              f"at most n_head - 1 = {cfg.n_head - 1} (a layer keeps one head)")
        if self.heads and getattr(cfg, "kv_heads", cfg.n_head) != cfg.n_head:
            raise ConfigError("heads", self.heads,
                              "0 for grouped-query attention (heads are pruned in MHA models)")
        kept = kept_channels(4 * cfg.n_embd, self.sparsity, self.multiple_of)
        if kept < 1:
            raise ConfigError("sparsity", self.sparsity,
                              f"small enough to keep >= {self.multiple_of} of the "
                              f"{4 * cfg.n_embd} MLP channels")


# ----------------------------------------------------------------------------- formulas

def kept_channels(hidden: int, sparsity: float, multiple_of: int = 1) -> int:
    """MLP channels kept when ``sparsity`` of ``hidden`` are removed: round(hidden·(1-s)) rounded
    to the nearest multiple of ``multiple_of`` (0 when nothing would be left)."""
    k = hidden * (1 - sparsity)
    return int(round(k / multiple_of)) * multiple_of if multiple_of > 1 else int(round(k))


def mlp_flops_per_token(n_embd: int, hidden: int) -> int:
    """Forward FLOPs of one MLP per token: up (C→H) and down (H→C) matmuls, 2 FLOPs a weight:
    4·C·H. Linear in H: removing a fraction s of the channels removes s of the FLOPs."""
    return 4 * n_embd * hidden


def attention_flops_per_token(n_embd: int, heads: int, head_dim: int, context: int) -> int:
    """Forward FLOPs of one attention layer per token with ``heads`` heads kept: the q/k/v and
    output projections (2·C·3·h·hs + 2·h·hs·C) plus scores and mixing over ``context`` keys
    (2·2·h·hs·context)."""
    inner = heads * head_dim
    return 2 * n_embd * 3 * inner + 2 * inner * n_embd + 4 * inner * context


# ----------------------------------------------------------------------------- masked layers

class PrunedLinear(nn.Linear):
    """A Linear whose pruned weights are held at zero: ``weight * mask`` is what it stores, and
    the gradient is masked too, so fine-tuning cannot revive a pruned weight."""

    def __init__(self, linear: nn.Linear, mask: torch.Tensor, how: str):
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.register_buffer("mask", mask.to(linear.weight.dtype))  # (N, K) 1 = kept
        self.how = how
        with torch.no_grad():
            self.weight.copy_(linear.weight * self.mask)
            if linear.bias is not None:
                self.bias.copy_(linear.bias)
        self.weight.register_hook(lambda g: g * self.mask)

    def enforce(self) -> None:
        """Zero the pruned weights again (after an optimizer step: weight decay and Adam's
        epsilon cannot move a zero with a zero gradient, but this makes it certain)."""
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def sparsity(self) -> float:
        return 1.0 - float(self.mask.mean())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pruned={self.how}, sparsity={self.sparsity():.0%}"


def magnitude_masks(weights: list[torch.Tensor], sparsity: float, scope: str) -> list[torch.Tensor]:
    """Keep-masks zeroing the ``sparsity`` fraction of smallest |w|: one threshold over all
    ``weights`` together (``global``) or one per tensor (``layer``). Ties at the threshold are
    broken by position, so exactly round(sparsity·n) weights go."""
    if scope == "layer":
        return [magnitude_masks([w], sparsity, "global")[0] for w in weights]
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights])  # (n,)
    drop = int(round(sparsity * flat.numel()))
    keep = torch.ones_like(flat, dtype=torch.bool)
    if drop:
        keep[torch.argsort(flat, stable=True)[:drop]] = False
    out, i = [], 0
    for w in weights:
        out.append(keep[i:i + w.numel()].view_as(w))
        i += w.numel()
    return out


def two_four_mask(w: torch.Tensor) -> torch.Tensor:
    """(N, K) keep-mask with, in every group of 4 consecutive inputs of a row, the 2 largest |w|
    kept: the 2:4 pattern sparse tensor cores accelerate. K must be a multiple of 4."""
    N, K = w.shape
    if K % 4:
        raise ConfigError("in_features", K, "a multiple of 4 for 2:4 sparsity")
    groups = w.detach().abs().reshape(N, K // 4, 4)  # (N, K/4, 4)
    top = groups.topk(2, dim=-1).indices  # (N, K/4, 2)
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(N, K)


# ----------------------------------------------------------------------------- structured

class PrunedAttention(nn.Module):
    """Causal self-attention with some heads removed: q/k/v/out projections of ``kept`` heads.

    Same computation as the model's attention restricted to the kept heads. With a KV cache,
    the kept heads use the first ``kept`` head slots of the cache's layer (the cache is sized
    for the full model; the slots of removed heads are allocated but never read or written).
    """

    def __init__(self, attn: nn.Module, keep: torch.Tensor, head_dim: int):
        super().__init__()
        self.layer = attn.layer
        self.n_head = int(keep.numel())  # heads kept
        self.head_dim = head_dim
        self.n_head_orig = attn.n_head
        C = attn.c_attn.in_features
        cols = (keep[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)  # kept q dims
        rows = torch.cat([cols, C + cols, 2 * C + cols])  # q, k, v rows of c_attn
        inner = self.n_head * head_dim
        dev, dt = attn.c_attn.weight.device, attn.c_attn.weight.dtype
        self.c_attn = nn.Linear(C, 3 * inner, device=dev, dtype=dt)
        self.c_proj = nn.Linear(inner, C, device=dev, dtype=dt)
        with torch.no_grad():
            self.c_attn.weight.copy_(attn.c_attn.weight[rows])
            self.c_attn.bias.copy_(attn.c_attn.bias[rows])
            self.c_proj.weight.copy_(attn.c_proj.weight[:, cols])
            self.c_proj.bias.copy_(attn.c_proj.bias)
        self.core = attn.core

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, self.head_dim
        q, k, v = self.c_attn(x).split(nh * hs, dim=2)  # 3 x (B, T, nh*hs)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)
        v = v.view(B, T, nh, hs).transpose(1, 2)
        if cache is not None:  # the kept heads live in the first nh slots of this layer
            end = cache.pos + T
            if end > cache.max_len:
                raise ValueError(f"KV cache holds {cache.max_len} positions; asked for {end}")
            cache.k[self.layer][:, :nh, cache.pos:end] = k
            cache.v[self.layer][:, :nh, cache.pos:end] = v
            k = cache.k[self.layer][:, :nh, :end]  # (B, nh, S, hs)
            v = cache.v[self.layer][:, :nh, :end]
        y = self.core(q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)
        return self.c_proj(y)  # (B, T, C)

    def extra_repr(self) -> str:
        return f"heads={self.n_head} of {self.n_head_orig} (structured pruning)"


class PrunedMLP(nn.Module):
    """The model's MLP with only ``kept`` hidden channels: up (C→kept), GELU, down (kept→C)."""

    def __init__(self, mlp: nn.Module, keep: torch.Tensor):
        super().__init__()
        C, H = mlp.c_fc.in_features, mlp.c_fc.out_features
        dev, dt = mlp.c_fc.weight.device, mlp.c_fc.weight.dtype
        self.hidden_orig = H
        self.c_fc = nn.Linear(C, keep.numel(), device=dev, dtype=dt)
        self.c_proj = nn.Linear(keep.numel(), C, device=dev, dtype=dt)
        with torch.no_grad():
            self.c_fc.weight.copy_(mlp.c_fc.weight[keep])
            self.c_fc.bias.copy_(mlp.c_fc.bias[keep])
            self.c_proj.weight.copy_(mlp.c_proj.weight[:, keep])
            self.c_proj.bias.copy_(mlp.c_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(gelu_tanh(self.c_fc(x)))  # (B, T, C)

    def extra_repr(self) -> str:
        return f"channels={self.c_fc.out_features} of {self.hidden_orig} (structured pruning)"


def channel_importance(mlp: nn.Module) -> torch.Tensor:
    """(H,) score of each MLP hidden channel: ‖row j of c_fc‖₂ · ‖column j of c_proj‖₂."""
    return mlp.c_fc.weight.detach().norm(dim=1) * mlp.c_proj.weight.detach().norm(dim=0)


def head_importance(attn: nn.Module, head_dim: int) -> torch.Tensor:
    """(nh,) score of each head: ‖its q, k, v rows of c_attn‖₂ · ‖its columns of c_proj‖₂."""
    C = attn.c_attn.in_features
    w = attn.c_attn.weight.detach()  # (3C, C)
    nh = C // head_dim
    qkv = torch.stack([w[i * C:(i + 1) * C].reshape(nh, head_dim * C) for i in range(3)], 1)
    proj = attn.c_proj.weight.detach().reshape(C, nh, head_dim).permute(1, 0, 2).reshape(nh, -1)
    return qkv.reshape(nh, -1).norm(dim=1) * proj.norm(dim=1)


def _structured(model: nn.Module, config: PruningConfig) -> None:
    cfg = model.cfg
    config.check_fits(cfg)
    H = 4 * cfg.n_embd
    k = kept_channels(H, config.sparsity, config.multiple_of)
    for block in model.h:
        if not (hasattr(block.mlp, "c_fc") and hasattr(block.mlp, "c_proj")):
            raise ConfigError("method", config.method,
                              "applied to dense MLPs (this block's MLP is "
                              f"{type(block.mlp).__name__})")
        if k < H:
            keep = channel_importance(block.mlp).topk(k).indices.sort().values
            block.mlp = PrunedMLP(block.mlp, keep)
        if config.heads:
            nh = cfg.n_head - config.heads
            keep_h = head_importance(block.attn, cfg.head_dim).topk(nh).indices.sort().values
            block.attn = PrunedAttention(block.attn, keep_h, cfg.head_dim)


# ----------------------------------------------------------------------------- the verb

@register(PruningConfig)
def _prune(model: nn.Module, config: PruningConfig) -> nn.Module:
    """Prune ``model`` in place as ``config`` says and return it (see the module table)."""
    if config.method == "none" or (config.method == "unstructured" and config.sparsity == 0):
        return model
    if config.method == "structured":
        _structured(model, config)
        return model
    layers = block_linears(model)
    if config.method == "2:4":
        masks = [two_four_mask(m.weight) for _, m in layers]
        how = "2:4"
    else:
        masks = magnitude_masks([m.weight for _, m in layers], config.sparsity, config.scope)
        how = f"magnitude-{config.scope}"
    for (name, m), mask in zip(layers, masks):
        if isinstance(m, PrunedLinear):  # pruning again: the old zeros stay zero
            mask = mask & m.mask.bool()
        swap_module(model, name, PrunedLinear(m, mask, how))
    return model


def enforce_masks(model: nn.Module) -> None:
    """Re-zero every pruned weight (call after an optimizer step)."""
    for m in model.modules():
        if isinstance(m, PrunedLinear):
            m.enforce()


def sparsity_report(model: nn.Module) -> dict:
    """Zero fraction of the block Linears' weights: overall and per layer (name -> fraction)."""
    per = {}
    zeros = total = 0
    for name, m in block_linears(model):
        z = int((m.weight == 0).sum())
        per[name] = z / m.weight.numel()
        zeros += z
        total += m.weight.numel()
    return {"sparsity": zeros / max(total, 1), "per_layer": per, "weights": total}


def dense_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer as stored (zeros count: a dense layout keeps them;
    masks are not counted — a deployment would drop them)."""
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    n += sum(b.numel() * b.element_size() for name, b in model.named_buffers()
             if not name.endswith(".mask"))
    return n


# ----------------------------------------------------------------------------- 2:4 on a GPU

def semi_structured_refusal(device) -> str | None:
    """Why 2:4 sparse *speed* cannot be measured on ``device``, or None when it can.

    PyTorch's semi-structured kernels (``torch.sparse.to_sparse_semi_structured``, CUTLASS or
    cuSPARSELt) run only on NVIDIA GPUs of compute capability 8.0 or later, in fp16/bf16. On
    a CPU the 2:4 pattern is stored densely — quality can be measured, speed cannot change.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return ("2:4 sparse matmuls need NVIDIA sparse tensor cores (compute capability >= 8.0; "
                f"torch.sparse.to_sparse_semi_structured); this run is on {dev.type}, where the "
                "pruned weights stay dense — quality is measured, speed is not")
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    major, minor = torch.cuda.get_device_capability(dev)
    if major < 8:
        return (f"this GPU has compute capability {major}.{minor}; 2:4 sparse tensor cores "
                "need 8.0 or later")
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return "this torch build has no torch.sparse.to_sparse_semi_structured"
    return None


def to_semi_structured_(model: nn.Module, dtype=torch.float16) -> nn.Module:
    """Store every 2:4-pruned Linear's weight in the compressed semi-structured layout, so its
    matmuls use the sparse tensor cores. GPU only: elsewhere raises RuntimeError with the reason
    from :func:`semi_structured_refusal`. The model is cast to ``dtype`` (fp16 or bf16)."""
    dev = next(model.parameters()).device
    why = semi_structured_refusal(dev)
    if why:
        raise RuntimeError(why)
    model.to(dtype)
    for name, m in block_linears(model):
        if isinstance(m, PrunedLinear) and m.how == "2:4":
            plain = nn.Linear(m.in_features, m.out_features, m.bias is not None,
                              device=dev, dtype=dtype)
            with torch.no_grad():
                plain.weight.copy_(m.weight)
                if m.bias is not None:
                    plain.bias.copy_(m.bias)
            plain.weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(plain.weight),
                                        requires_grad=False)
            swap_module(model, name, plain)
    return model


__all__ = ["PruningConfig", "PrunedLinear", "PrunedMLP", "PrunedAttention",
           "magnitude_masks", "two_four_mask", "kept_channels", "mlp_flops_per_token",
           "attention_flops_per_token", "channel_importance", "head_importance",
           "enforce_masks", "sparsity_report", "dense_bytes", "semi_structured_refusal",
           "to_semi_structured_"]
