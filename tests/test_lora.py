"""LoRA: PEFT's names, an adapted model that starts where the frozen one was, only the adapters
train, trainable counts and state bytes as the formulas say, merging gives the same outputs, and
QLoRA (NF4 base + adapters) trains."""

import pytest
import torch

from efflab.core.config import ConfigError, ModelConfig
from efflab.core.model import build_model
from efflab.core.weights import load_model
from efflab.techniques import LoRAConfig, NF4Config, apply_
from efflab.techniques.lora import (
    LoRALinear,
    lora_forward,
    lora_layers,
    lora_param_count,
    merge_lora_,
    trainable_parameters,
    training_state_bytes,
)

CFG = ModelConfig("t", n_layer=2, n_head=4, n_embd=32, block_size=16)
EVERY = ("c_attn", "c_proj", "c_fc")


def _x(seed=1, B=2, T=16):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def _perturb(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_layers(model):
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.05)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="r"):
        LoRAConfig(r=0)
    with pytest.raises(ConfigError, match="lora_dropout"):
        LoRAConfig(lora_dropout=1.0)
    with pytest.raises(ConfigError, match="target_modules"):
        LoRAConfig(target_modules=("q_proj",))  # a Llama name: not in this GPT
    with pytest.raises(ConfigError, match="target_modules"):
        LoRAConfig(target_modules="c_attn")  # a bare string is not a tuple of names
    assert LoRAConfig(r=4, lora_alpha=8).scaling == 2.0


def test_targets_match_as_peft_does():
    m = apply_(build_model(CFG, 0), LoRAConfig(target_modules=("c_proj",)))
    names = [n for n, _ in lora_layers(m)]
    assert names == ["h.0.attn.c_proj", "h.0.mlp.c_proj", "h.1.attn.c_proj", "h.1.mlp.c_proj"]
    m = apply_(build_model(CFG, 0), LoRAConfig(target_modules=("mlp.c_proj",)))
    assert [n for n, _ in lora_layers(m)] == ["h.0.mlp.c_proj", "h.1.mlp.c_proj"]


def test_starts_where_the_frozen_model_was_and_only_adapters_train():
    base = build_model(CFG, 0).eval()
    m = apply_(build_model(CFG, 0).eval(), LoRAConfig(r=4))
    x = _x()
    assert torch.equal(base(x)[0], m(x)[0])  # B = 0: the same function
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    _, loss = m(x, x)
    loss.backward()
    assert all(p.grad is None for n, p in m.named_parameters() if n not in trainable)


def test_trainable_count_is_the_formula():
    for r, targets in [(1, ("c_attn",)), (4, ("c_attn", "c_fc")), (8, EVERY)]:
        config = LoRAConfig(r=r, target_modules=targets)
        m = apply_(build_model(CFG, 0), config)
        assert trainable_parameters(m) == lora_param_count(CFG, config)
    # every Linear of a block at r: r·(C+3C) + r·2C + r·5C + r·5C = 16·r·C per block
    assert lora_param_count(CFG, LoRAConfig(r=2, target_modules=EVERY)) == 16 * 2 * 32 * 2


def test_r8_trains_at_most_5_percent_of_cpu_small():
    m = load_model("cpu-small", "auto")
    n = sum(p.numel() for p in m.parameters())
    apply_(m, LoRAConfig(r=8))
    assert trainable_parameters(m) / n <= 0.05
    # every Linear adapted: 2r/d of each square matrix at d = 128 is more than 5%
    assert lora_param_count(m.cfg, LoRAConfig(r=8, target_modules=EVERY)) / n > 0.05


def test_merged_equals_adapter_model():
    m = apply_(build_model(CFG, 0).eval(), LoRAConfig(r=4, target_modules=EVERY))
    _perturb(m)
    x = _x()
    for _, layer in lora_layers(m):  # one layer, fp32: merged W + s·BA equals W·x + s·B·A·x
        h = torch.randn(3, 5, layer.in_features, generator=torch.Generator().manual_seed(0))
        ref = lora_forward(h, layer.base.weight, layer.base.bias, layer.lora_A.weight,
                           layer.lora_B.weight, layer.scaling)
        assert torch.allclose(layer(h), ref, atol=1e-6, rtol=0)
        assert torch.allclose(layer.merged()(h), layer(h), atol=1e-6, rtol=0)
    m64 = m.double()
    with torch.no_grad():
        before = m64(x)[0]
        merge_lora_(m64)
        after = m64(x)[0]
    assert not lora_layers(m64)
    assert (after - before).abs().max().item() <= 1e-6 * before.abs().max().item()


def test_training_moves_only_adapters_and_state_is_the_formula():
    config = LoRAConfig(r=4)
    m = apply_(build_model(CFG, 0), config)
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for s in range(3):
        _, loss = m(_x(s), _x(s + 10))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(p, frozen[n]) for n, p in m.named_parameters() if n in frozen)
    n_all = sum(p.numel() for p in m.parameters())
    k = trainable_parameters(m)
    moments = sum(v.numel() * 4 for st in opt.state.values() for v in st.values() if v.numel() > 1)
    assert moments == training_state_bytes(n_all, k)["optimizer"]


def test_qlora_base_is_nf4_and_adapters_train():
    m = apply_(build_model(CFG, 0), NF4Config())
    apply_(m, LoRAConfig(r=4))
    assert all(type(layer.base).__name__ == "NF4Linear" for _, layer in lora_layers(m))
    assert isinstance(m.h[0].attn.c_attn, LoRALinear)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    x, y = _x(), _x(5)
    first = None
    for _ in range(5):
        _, loss = m(x, y)
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert m(x, y)[1].item() < first
    merged = merge_lora_(m)  # an NF4 base merges into a dequantized fp32 Linear
    assert isinstance(merged.h[0].attn.c_attn, torch.nn.Linear)


def test_memory_by_category_is_the_formula_for_full_lora_and_qlora():
    from efflab.studies.finetune_memory import memory_by_rank, memory_verdict

    df = memory_by_rank("cpu-tiny", ranks=(4, 8), batch_size=1, seq_len=8,
                        methods=("full", "lora", "qlora"))
    known = df[df.category != "activations"]
    assert len(known) == 3 * 5 and (known.measured == known.formula).all()
    grads = df[df.category == "gradients"].set_index(["method", "r"]).measured
    assert grads[("lora", 4)] < grads[("lora", 8)] < grads[("full", 0)]
    weights = df[df.category == "weights"].set_index(["method", "r"]).measured
    assert weights[("qlora", 8)] < weights[("full", 0)] < weights[("lora", 8)]  # adapters add
    assert "(within 10%)" in memory_verdict(df)


def test_dropout_acts_on_the_adapter_input_in_training_only():
    m = apply_(build_model(CFG, 0), LoRAConfig(r=4, lora_dropout=0.5))
    _perturb(m)
    x = _x()
    m.eval()
    a, b = m(x)[0], m(x)[0]
    assert torch.equal(a, b)  # no dropout in eval
    m.train()
    torch.manual_seed(0)
    c = m(x)[0]
    assert not torch.allclose(a, c)
    assert "LoRA r=4" in repr(m.h[0].attn.c_attn)
    plain = apply_(build_model(CFG, 0), LoRAConfig(r=4))  # lora_dropout=0: train == eval
    _perturb(plain)
    assert torch.equal(plain.train()(x)[0], plain.eval()(x)[0])
