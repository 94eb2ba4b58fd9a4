"""The one technique verb: ``apply_(model, config)`` dispatches on the config's type."""

import dataclasses

import pytest
import torch

from efflab.core.config import ConfigError, Knobs, get_preset
from efflab.core.model import build_model
from efflab.techniques import (
    AttentionConfig,
    CheckpointingConfig,
    CompileConfig,
    LoRAConfig,
    MoEConfig,
    NF4Config,
    PrecisionConfig,
    PruningConfig,
    QATConfig,
    QuantizationConfig,
    apply_,
    apply_techniques,
    technique_configs,
)
from efflab.techniques.registry import registered
from efflab.techniques.surgery import block_linears, swap_module

TINY = get_preset("cpu-tiny")
CONFIGS = [PrecisionConfig, AttentionConfig, CheckpointingConfig, QuantizationConfig, MoEConfig,
           CompileConfig, PruningConfig, LoRAConfig, NF4Config, QATConfig]


def test_every_technique_config_has_a_handler():
    assert set(registered()) == set(CONFIGS)
    assert all(c.__name__.endswith("Config") for c in registered())


@pytest.mark.parametrize("config, changed", [
    (AttentionConfig("naive"), "NaiveCore"),
    (CheckpointingConfig("blocks"), "CheckpointedBlock"),
    (QuantizationConfig("int8-weight"), "Int8WeightOnlyLinear"),
    (MoEConfig(experts=2), "MoEMLP"),
    (PruningConfig("2:4"), "PrunedLinear"),
], ids=lambda v: type(v).__name__ if dataclasses.is_dataclass(v) else v)
def test_apply_dispatches_by_type_in_place(config, changed):
    model = build_model(TINY, seed=0)
    assert changed not in str(model)
    assert apply_(model, config) is model  # in place, returned so calls chain
    assert changed in str(model)  # the swapped module says what it is in print(model)


def test_apply_precision_casts_only_for_bf16_pure():
    model = apply_(build_model(TINY), PrecisionConfig("bf16"))
    assert next(model.parameters()).dtype == torch.float32
    model = apply_(model, PrecisionConfig("bf16-pure"))
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("bad", ["naive", None, Knobs(), object()])
def test_apply_refuses_an_unknown_config_type_naming_it(bad):
    with pytest.raises(TypeError) as e:
        apply_(build_model(TINY), bad)
    msg = str(e.value)
    assert type(bad).__name__ in msg and "AttentionConfig" in msg and "PruningConfig" in msg


def test_a_subclass_is_not_mistaken_for_its_technique():
    @dataclasses.dataclass(frozen=True)
    class MyAttention(AttentionConfig):
        pass

    with pytest.raises(TypeError, match="MyAttention"):
        apply_(build_model(TINY), MyAttention("naive"))


def test_moe_seed_is_a_field_of_the_config():
    a = apply_(build_model(TINY), MoEConfig(experts=2, seed=1))
    b = apply_(build_model(TINY), MoEConfig(experts=2, seed=1))
    c = apply_(build_model(TINY), MoEConfig(experts=2, seed=2))
    wa, wb, wc = (m.h[0].mlp.router.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert technique_configs(Knobs(seed=7, moe_experts=2)).moe.seed == 7
    with pytest.raises(ConfigError, match="seed"):
        MoEConfig(seed=-1)


def test_apply_techniques_is_apply_of_each_config_in_order():
    knobs = Knobs(workload="eval", attention="naive", quantization="int8-weight",
                  checkpointing="selective", moe_experts=2, seed=3)
    by_knobs = apply_techniques(build_model(TINY, seed=0), knobs)
    by_hand = build_model(TINY, seed=0)
    for config in technique_configs(knobs, TINY).in_order():
        apply_(by_hand, config)
    assert str(by_knobs) == str(by_hand)
    x = torch.randint(0, 256, (1, 16))
    assert torch.equal(by_knobs.eval()(x)[0], by_hand.eval()(x)[0])
    order = [type(c).__name__ for c in technique_configs(knobs).in_order()]
    assert order == ["MoEConfig", "AttentionConfig", "QuantizationConfig", "CheckpointingConfig",
                     "PrecisionConfig"]


def test_block_linears_lists_the_blocks_linears_and_not_the_head():
    model = build_model(TINY)
    names = [n for n, _ in block_linears(model)]
    assert len(names) == 4 * TINY.n_layer and "lm_head" not in " ".join(names)
    assert names[:4] == ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_fc", "h.0.mlp.c_proj"]
    new = torch.nn.Linear(TINY.n_embd, 4 * TINY.n_embd)
    swap_module(model, "h.1.mlp.c_fc", new)
    assert model.h[1].mlp.c_fc is new
    with pytest.raises(TypeError, match="blocks at .h"):
        block_linears(torch.nn.Linear(2, 2))
