"""LoRA: fine-tune a frozen model through small low-rank adapters (Hu et al., 2021).

One verb, as every technique here::

    apply_(model, LoRAConfig(r=8, lora_alpha=16))                      # qkv and MLP-up adapted
    apply_(model, LoRAConfig(r=8, target_modules=("c_attn", "c_proj", "c_fc")))  # every Linear
    merge_lora_(model)                                                 # fold them back in

A target Linear ``W`` (out × in) stays frozen; beside it sit ``A`` (r × in) and ``B`` (out × r),
and the layer computes ``W·x + (lora_alpha / r) · B·A·dropout(x)``. ``B`` starts at zero, so the
adapted model starts exactly where the frozen one was. Only ``A`` and ``B`` train, so gradients
and AdamW's two moments exist only for ``r·(in + out)`` numbers per adapted Linear instead of
``in·out``: the memory that shrinks is gradients and optimizer state, not the frozen weights.

The names follow Hugging Face PEFT's ``LoraConfig`` so a learner recognises them: ``r``,
``lora_alpha``, ``lora_dropout``, ``target_modules`` (matched as PEFT does: a module whose full
name equals a target or ends with ``"." + target``), ``bias="none"``, and adapters called
``lora_A`` / ``lora_B``, with PEFT's initialisation (``A`` Kaiming-uniform with a = √5, ``B``
zeros). PEFT itself is not used: it wraps Hugging Face ``transformers`` models and pulls in
``transformers``, ``accelerate`` and ``huggingface_hub`` for a technique that is forty lines on
efflab's own GPT, and a lesson that shows the forty lines teaches more than one that imports them.

The module names of efflab's GPT (GPT-2's, as PEFT's own gpt2 mapping uses): ``c_attn`` (the
fused qkv projection), ``attn.c_proj`` (attention output), ``c_fc`` (MLP up) and ``mlp.c_proj``
(MLP down); ``"c_proj"`` alone matches both. The default, ``("c_attn", "c_fc")``, adapts one
attention and one MLP Linear per block. Why not all four: an adapter on a d × d matrix trains
``2r/d`` of its size, so at cpu-small's d = 128 and r = 8 every Linear adapted trains 7.8% of the
model, while qkv + MLP-up trains 4.4% (:func:`lora_param_count` gives the count for any config).

QLoRA is the same adapters over a base stored in NF4: ``apply_(model, NF4Config())`` first,
then ``apply_(model, LoRAConfig(...))`` (:mod:`efflab.techniques.nf4`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflab.core.config import ConfigError, ModelConfig, check_choice, check_int, check_real
from efflab.techniques.registry import register
from efflab.techniques.surgery import swap_module

BLOCK_LINEARS = ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")  # per block, in module order
ALL_LINEARS = ("c_attn", "c_proj", "c_fc")  # "c_proj" matches both of a block's c_proj
BIASES = ("none",)


@dataclass(frozen=True)
class LoRAConfig:
    """Rank-``r`` adapters on the block Linears named by ``target_modules`` (PEFT's names).

    ``r``: the adapters' rank (>= 1). ``lora_alpha``: the scale numerator; the update is
    multiplied by ``lora_alpha / r``, so changing ``r`` does not change the step size much.
    ``lora_dropout``: dropout on the adapter's input in training, in [0, 1). ``target_modules``:
    names matched against the end of each block Linear's full name (``"c_attn"``, ``"c_fc"``,
    ``"c_proj"`` or the exact ``"attn.c_proj"`` / ``"mlp.c_proj"``). ``bias``: only ``"none"``
    (biases stay frozen, as PEFT's default). ``seed``: the adapters' initialisation.
    """

    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("c_attn", "c_fc")
    bias: str = "none"
    seed: int = 0

    def __post_init__(self):
        check_int("r", self.r, lo=1)
        check_real("lora_alpha", self.lora_alpha, lo=0, lo_open=True)
        check_real("lora_dropout", self.lora_dropout, 0, 1, hi_open=True)
        check_choice("bias", self.bias, BIASES)
        check_int("seed", self.seed, lo=0)
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ConfigError("target_modules", self.target_modules,
                              "a non-empty tuple of module names, e.g. ('c_attn', 'c_fc')")
        known = set(ALL_LINEARS) | set(BLOCK_LINEARS)
        for t in self.target_modules:
            if t not in known:
                raise ConfigError("target_modules", self.target_modules,
                                  "names from " + ", ".join(repr(k) for k in BLOCK_LINEARS)
                                  + " (or 'c_proj' for both)")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @property
    def scaling(self) -> float:
        """The factor on the adapter's output, ``lora_alpha / r``."""
        return self.lora_alpha / self.r

    def matches(self, name: str) -> bool:
        """Whether the module called ``name`` (``h.0.attn.c_attn``) is a target, as PEFT matches."""
        return any(name == t or name.endswith("." + t) for t in self.target_modules)


# ----------------------------------------------------------------------------- formulas

def target_shapes(cfg: ModelConfig, config: LoRAConfig) -> list[tuple[int, int]]:
    """(in, out) of every Linear ``config`` adapts in a model of shape ``cfg``."""
    C = cfg.n_embd
    qkv = C + 2 * (cfg.n_kv_head or cfg.n_head) * cfg.head_dim
    shapes = {"attn.c_attn": (C, qkv), "attn.c_proj": (C, C), "mlp.c_fc": (C, 4 * C),
              "mlp.c_proj": (4 * C, C)}
    return [s for _ in range(cfg.n_layer) for n, s in shapes.items() if config.matches(n)]


def lora_param_count(cfg: ModelConfig, config: LoRAConfig) -> int:
    """Trainable numbers under ``config``: ``Σ r·(in + out)`` over the adapted Linears."""
    return sum(config.r * (i + o) for i, o in target_shapes(cfg, config))


def training_state_bytes(n_params: int, n_trainable: int, bytes_per_el: int = 4,
                         frozen_bytes: int | None = None) -> dict:
    """Bytes of weights, gradients and AdamW state when ``n_trainable`` of ``n_params`` train.

    ``frozen_bytes``: the stored size of the frozen weights when a technique packs them (NF4);
    default ``(n_params - n_trainable) · bytes_per_el``. Gradients and the two moments exist
    only for what trains."""
    frozen = (n_params - n_trainable) * bytes_per_el if frozen_bytes is None else frozen_bytes
    return {"frozen": frozen, "adapters": n_trainable * bytes_per_el,
            "gradients": n_trainable * bytes_per_el, "optimizer": 2 * n_trainable * bytes_per_el}


# ----------------------------------------------------------------------------- the module

class LoRALinear(nn.Module):
    """A frozen ``base`` Linear plus ``(lora_alpha / r) · lora_B(lora_A(dropout(x)))``.

    ``base`` is an ``nn.Linear`` or anything with ``in_features``, ``out_features`` and a
    forward (an NF4 Linear, for QLoRA)."""

    def __init__(self, base: nn.Module, config: LoRAConfig, generator: torch.Generator):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.scaling = config.r, config.scaling
        dev = next(iter([*base.parameters(), *base.buffers()])).device
        self.lora_A = nn.Linear(self.in_features, self.r, bias=False, device=dev)
        self.lora_B = nn.Linear(self.r, self.out_features, bias=False, device=dev)
        # PEFT's init: A as nn.Linear's default (Kaiming-uniform, a = sqrt(5)), B zero
        bound = 1 / math.sqrt(self.in_features)  # kaiming_uniform_(a=sqrt(5)) on (r, in)
        with torch.no_grad():
            a = torch.rand(self.lora_A.weight.shape, generator=generator) * 2 * bound - bound
            self.lora_A.weight.copy_(a)
            self.lora_B.weight.zero_()
        self.lora_dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """``scaling · B·A`` (out × in): what merging adds to the base weight."""
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (B, T, out), frozen
        return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain Linear with ``W + scaling·B·A`` (a packed base is dequantized first)."""
        w = self.base.weight if isinstance(self.base, nn.Linear) else self.base.dequantize()
        bias = getattr(self.base, "bias", None)
        out = nn.Linear(self.in_features, self.out_features, bias=bias is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_(w.detach() + self.delta_weight().to(w.dtype))
            if bias is not None:
                out.bias.copy_(bias.detach())
        return out

    def extra_repr(self) -> str:
        return f"LoRA r={self.r}, scaling={self.scaling:g}"


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """(name, module) of every LoRA adapter in ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def trainable_parameters(model: nn.Module) -> int:
    """Numbers that receive gradients (``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora_(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` by the plain Linear it equals; return ``model``.

    After merging, inference costs what the original model cost: the adapters are gone."""
    for name, m in lora_layers(model):
        swap_module(model, name, m.merged())
    return model


def _targets(model: nn.Module, config: LoRAConfig) -> list[tuple[str, nn.Module]]:
    blocks = getattr(model, "h", None)
    if blocks is None:
        raise TypeError(f"expected an efflab GPT with blocks at .h, got {type(model).__name__}")
    out = []
    for name, m in blocks.named_modules():
        full = f"h.{name}"
        if isinstance(m, LoRALinear) or not config.matches(full):
            continue
        if hasattr(m, "in_features") and hasattr(m, "out_features"):
            out.append((full, m))
    return out


@register(LoRAConfig)
def _lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Freeze every parameter of ``model`` (as PEFT does) and put an adapter on each target."""
    targets = _targets(model, config)
    if not targets:
        raise ConfigError("target_modules", config.target_modules,
                          "names of Linears in this model's blocks (none matched)")
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(config.seed)
    for name, m in targets:
        swap_module(model, name, LoRALinear(m, config, g))
    return model


def lora_forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, A: torch.Tensor,
                 B: torch.Tensor, scaling: float) -> torch.Tensor:
    """The reference LoRA forward: ``x·Wᵀ + b + scaling · (x·Aᵀ)·Bᵀ`` (no dropout)."""
    return F.linear(x, w, bias) + scaling * F.linear(F.linear(x, A), B)


__all__ = ["LoRAConfig", "LoRALinear", "BLOCK_LINEARS", "target_shapes", "lora_param_count",
           "training_state_bytes", "lora_layers", "trainable_parameters", "merge_lora_",
           "lora_forward"]
