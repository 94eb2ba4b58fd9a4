"""Efficiency techniques: each one module with a frozen, validated config and one verb.

| module          | config           | verb                 | what it changes                       |
|-----------------|------------------|----------------------|---------------------------------------|
| precision       | PrecisionConfig  | apply_precision      | the run's number format (+ bf16-pure weights) |
| attention       | AttentionConfig  | set_attention        | swaps every ``block.attn.core``       |
| checkpointing   | CheckpointConfig | apply_checkpointing  | wraps blocks (or MLPs) to recompute   |
| quantization    | QuantConfig      | quantize_            | replaces block Linears (inference)    |
| moe             | MoEConfig        | apply_moe            | replaces ``block.mlp`` by experts     |

Swapped modules say what they are in ``extra_repr``, so ``print(model)`` shows which techniques
are on. ``technique_configs(knobs, cfg)`` builds (and so validates) every config from the knobs
before any work; ``apply_techniques(model, knobs)`` applies them to a freshly built model in a
fixed order: experts first (they replace whole MLPs), then the attention core, quantization of
the remaining Linears, checkpointing wrappers, and last the weight format.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from efflab.core.config import Knobs, ModelConfig
from efflab.core.weights import load_model
from efflab.techniques import moe
from efflab.techniques.attention import AttentionConfig, set_attention
from efflab.techniques.checkpointing import CheckpointConfig, apply_checkpointing
from efflab.techniques.moe import MoEConfig, apply_moe
from efflab.techniques.precision import PrecisionConfig, apply_precision
from efflab.techniques.quantization import QuantConfig, check_fits, quantize_


@dataclass(frozen=True)
class TechniqueConfigs:
    precision: PrecisionConfig
    attention: AttentionConfig
    checkpointing: CheckpointConfig
    quantization: QuantConfig
    moe: MoEConfig


def technique_configs(knobs: Knobs, cfg: ModelConfig | None = None) -> TechniqueConfigs:
    """Every technique's config for these knobs; an impossible choice raises ConfigError here,
    before any work (with ``cfg``, also choices that do not fit the model's shape)."""

    quant = QuantConfig(knobs.quantization, knobs.group_size)
    if cfg is not None and knobs.quantization != "none":
        check_fits(cfg, quant)
    return TechniqueConfigs(
        precision=PrecisionConfig(knobs.precision),
        attention=AttentionConfig(knobs.attention),
        checkpointing=CheckpointConfig(knobs.checkpointing, knobs.checkpointing_every),
        quantization=quant,
        moe=MoEConfig(experts=knobs.moe_experts, top_k=knobs.moe_top_k,
                      capacity=knobs.moe_capacity, balance=knobs.moe_balance),
    )


def apply_techniques(model, knobs: Knobs, seed: int | None = None):
    """Transform ``model`` in place for ``knobs`` and return it."""

    cfgs = technique_configs(knobs, model.cfg)
    if cfgs.moe.experts:
        apply_moe(model, cfgs.moe, seed=knobs.seed if seed is None else seed)
    set_attention(model, cfgs.attention)
    if knobs.quantization != "none":
        quantize_(model, cfgs.quantization)
    apply_checkpointing(model, cfgs.checkpointing)
    apply_precision(model, cfgs.precision)
    return model


def build(preset: str = "cpu-small", knobs: Knobs | None = None, weights="auto",
          device: str = "cpu"):
    """The preset's model (shipped weights with ``weights="auto"``, else random) with the
    techniques of ``knobs`` applied — what ``measure`` runs, to print or inspect.
    Dense weights hold no experts, so a mixture-of-experts model starts random."""

    knobs = knobs or Knobs()
    if knobs.moe_experts:
        weights = None
    return apply_techniques(load_model(preset, weights, knobs.seed, device), knobs)


def auxiliary_loss(model) -> torch.Tensor | None:
    """Extra training losses the techniques ask for (MoE load balancing), or None."""

    if not moe.moe_layers(model):  # looks through checkpointing wrappers too
        return None
    return moe.auxiliary_loss(model)
