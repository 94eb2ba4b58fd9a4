"""Efficiency techniques: each one module with a frozen, validated ``<Technique>Config``, and one
verb for all of them, torchao's ``apply_(model, config)``: it finds the technique by the
config's type, transforms ``model`` in place and returns it.

| module          | config              | what ``apply_`` changes                              |
|-----------------|---------------------|------------------------------------------------------|
| precision       | PrecisionConfig     | the weights' format (bf16-pure); the run's format is autocast |
| attention       | AttentionConfig     | swaps every ``block.attn.core``                      |
| checkpointing   | CheckpointingConfig | wraps blocks (or MLPs) to recompute in backward      |
| quantization    | QuantizationConfig  | replaces block Linears (inference)                   |
| moe             | MoEConfig           | replaces ``block.mlp`` by experts (seeded by ``seed``) |
| compile         | CompileConfig       | ``torch.compile`` of the model, in place (``compile_optimizer`` for the optimizer) |
| pruning         | PruningConfig       | masks block Linears, or removes channels and heads   |
| lora            | LoRAConfig          | freezes the model, adds rank-r adapters to target Linears |
| nf4             | NF4Config           | stores block Linears in NF4, frozen (QLoRA's base)   |
| qat             | QATConfig           | block Linears compute with int4-rounded weights (STE); ``convert_qat_`` makes them real int4 |

``lowbit_optim`` is not a model transform: AdamW with 8- or 4-bit moments, for a run.

``surgery`` holds what the Linear-replacing techniques share (``block_linears``,
``swap_module``); ``registry`` holds ``apply_`` and the table of handlers each module registers.

Swapped modules say what they are in ``extra_repr``, so ``print(model)`` shows which techniques
are on. ``technique_configs(knobs, cfg)`` builds (and so validates) the configs of the knobs'
model transforms before any work; ``apply_techniques(model, knobs)`` applies them to a freshly
built model in a fixed order: experts first (they replace whole MLPs), then the attention core,
quantization of the remaining Linears, checkpointing wrappers, and last the weight format.
``compile`` is a run setting: ``measure`` applies it after the techniques.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from efflab.core.config import Knobs, ModelConfig
from efflab.core.weights import load_model
from efflab.techniques import moe
from efflab.techniques.attention import AttentionConfig
from efflab.techniques.checkpointing import CheckpointingConfig
from efflab.techniques.compile import CompileConfig
from efflab.techniques.lora import LoRAConfig
from efflab.techniques.moe import MoEConfig
from efflab.techniques.nf4 import NF4Config
from efflab.techniques.precision import PrecisionConfig
from efflab.techniques.pruning import PruningConfig
from efflab.techniques.qat import QATConfig
from efflab.techniques.quantization import QuantizationConfig, check_fits
from efflab.techniques.registry import apply_


@dataclass(frozen=True)
class TechniqueConfigs:
    """The knobs' model transforms, as configs; the field order is the order they apply in."""

    moe: MoEConfig
    attention: AttentionConfig
    quantization: QuantizationConfig
    checkpointing: CheckpointingConfig
    precision: PrecisionConfig

    def in_order(self) -> tuple:
        """The configs in the order :func:`apply_techniques` applies them."""
        return tuple(getattr(self, f) for f in self.__dataclass_fields__)


def technique_configs(knobs: Knobs, cfg: ModelConfig | None = None) -> TechniqueConfigs:
    """Every technique's config for these knobs; an impossible choice raises ConfigError here,
    before any work (with ``cfg``, also choices that do not fit the model's shape)."""

    quant = QuantizationConfig(knobs.quantization, knobs.group_size)
    if cfg is not None and knobs.quantization != "none":
        check_fits(cfg, quant)
    return TechniqueConfigs(
        moe=MoEConfig(experts=knobs.moe_experts, top_k=knobs.moe_top_k,
                      capacity=knobs.moe_capacity, balance=knobs.moe_balance, seed=knobs.seed),
        attention=AttentionConfig(knobs.attention),
        quantization=quant,
        checkpointing=CheckpointingConfig(knobs.checkpointing, knobs.checkpointing_every),
        precision=PrecisionConfig(knobs.precision),
    )


def apply_techniques(model, knobs: Knobs):
    """Transform ``model`` in place for ``knobs`` (each config of :func:`technique_configs`,
    in its fixed order) and return it."""

    for config in technique_configs(knobs, model.cfg).in_order():
        apply_(model, config)
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


__all__ = ["apply_", "PrecisionConfig", "AttentionConfig", "CheckpointingConfig",
           "QuantizationConfig", "MoEConfig", "CompileConfig", "PruningConfig", "LoRAConfig",
           "NF4Config", "QATConfig",
           "TechniqueConfigs", "technique_configs", "apply_techniques", "build", "auxiliary_loss"]
