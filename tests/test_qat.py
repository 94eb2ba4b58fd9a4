"""Quantization-aware training: fake int4 in forward, straight-through gradients, real int4 after."""

import pytest
import torch
import torch.nn.functional as F

from efflab.core.config import ConfigError, get_preset
from efflab.core.model import build_model
from efflab.techniques import QATConfig, QuantizationConfig, apply_
from efflab.techniques.qat import FakeQuantLinear, convert_qat_, fake_quantize_int4, qat_layers
from efflab.techniques.quantization import dequantize_int4, quantize_int4_groupwise

TINY = get_preset("cpu-tiny")


def test_config_is_checked():
    assert QATConfig().target() == QuantizationConfig("int4-weight", 64)
    with pytest.raises(ConfigError, match="bits"):
        QATConfig(bits=3)
    with pytest.raises(ConfigError, match="group_size"):
        QATConfig(group_size=48)


def test_fake_quant_is_the_int4_grid():
    w = torch.randn(32, 128)
    q = fake_quantize_int4(w, 64)
    assert torch.equal(q, dequantize_int4(*quantize_int4_groupwise(w, 64)))
    assert not torch.equal(q, w)
    per_group = q.view(32, 2, 64)
    assert all(len(torch.unique(g)) <= 16 for g in per_group.flatten(0, 1))  # 16 levels a group


def test_forward_uses_rounded_weights_and_backward_passes_straight_through():
    lin = torch.nn.Linear(128, 16)
    fq = FakeQuantLinear(lin, QATConfig(group_size=32))
    x = torch.randn(4, 128)
    q = fake_quantize_int4(lin.weight, 32)
    assert torch.allclose(fq(x), F.linear(x, q, lin.bias))
    fq(x).pow(2).sum().backward()
    # STE: W's gradient is the gradient a plain Linear with weight Q(W) would give its weight
    qw = q.clone().requires_grad_(True)
    F.linear(x, qw, lin.bias.detach()).pow(2).sum().backward()
    assert torch.allclose(lin.weight.grad, qw.grad)
    assert lin.weight.grad.abs().sum() > 0


def test_apply_swaps_block_linears_sharing_their_parameters():
    model = build_model(TINY, seed=0)
    before = {n: p for n, p in model.named_parameters()}
    apply_(model, QATConfig(group_size=32))
    assert len(qat_layers(model)) == 4 * TINY.n_layer and "fake int4" in str(model)
    after = dict(model.named_parameters())
    assert after["h.0.mlp.c_fc.weight"] is before["h.0.mlp.c_fc.weight"]
    assert all(p.requires_grad for p in model.parameters())


def test_convert_gives_real_int4_matching_the_fake_forward():
    torch.manual_seed(0)
    model = build_model(TINY, seed=0).eval()
    apply_(model, QATConfig(group_size=32))
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        fake = model(x)[0]
    convert_qat_(model)
    assert not qat_layers(model) and "Int4WeightOnlyLinear" in str(model)
    with torch.no_grad():
        real = model(x)[0]
    # the same grid; the int4 kernel may compute in bf16, so equal to bf16 rounding
    assert (real - fake).abs().max() <= 0.05 * fake.abs().max()
    ptq = apply_(build_model(TINY, seed=0).eval(), QuantizationConfig("int4-weight", 32))
    with torch.no_grad():
        assert torch.allclose(ptq(x)[0], real)  # untrained QAT + convert = plain int4 PTQ


def test_training_through_fake_quant_lowers_the_int4_loss():
    torch.manual_seed(0)
    model = build_model(TINY, seed=0)
    apply_(model, QATConfig(group_size=32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 256, (4, 32))
    y = torch.roll(x, -1, dims=1)
    first = None
    for _ in range(15):
        _, loss = model(x, y)
        first = first if first is not None else float(loss.detach())
        loss.backward()
        opt.step()
        opt.zero_grad()
    convert_qat_(model)
    with torch.no_grad():
        _, after = model(x, y)
    assert float(after) < first - 0.1


def test_recovered_share_is_the_paired_ratio_with_an_interval():
    from efflab.studies.qat_recovery import recovered_share

    g = torch.Generator().manual_seed(0)
    control = (1 + 0.1 * torch.rand(200, generator=g)).tolist()
    ptq = [c + 0.02 for c in control]
    noise = (0.004 * torch.randn(200, generator=g)).tolist()
    qat = [c + 0.005 + e for c, e in zip(control, noise)]
    r = recovered_share(control, ptq, qat)
    lo, hi = r["ci95"]
    assert lo < r["share"] < hi and lo < 0.75 < hi and hi - lo < 0.2
    assert r["int4_loss"] == pytest.approx(0.02)
    assert recovered_share(control, ptq, ptq)["share"] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        recovered_share(control, ptq, qat[:10])


def test_qat_recovery_scores_every_variant_on_the_same_windows():
    from efflab.studies.qat_recovery import VARIANTS, qat_recovery

    r = qat_recovery("cpu-small", steps=2, batch_size=2, seq_len=32, windows=8)
    assert list(r["table"]["variant"]) == list(VARIANTS)
    assert r["table"]["vs_control"].str.contains("paired").sum() == len(VARIANTS) - 1
    assert "recovered" in r["verdict"] or "nothing measurable" in r["verdict"]
