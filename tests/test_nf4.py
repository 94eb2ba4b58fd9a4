"""NF4: the 16 levels from their definition, block-wise codes that round to the nearest level,
double-quantized scales, bytes exactly as the formula, SQNR beside int4's, and the verb."""

import math

import pytest
import torch

from efflab.core.config import ConfigError, ModelConfig
from efflab.core.model import build_model
from efflab.techniques import NF4Config, apply_
from efflab.techniques.nf4 import (
    NF4_TABLE,
    NF4Linear,
    dequantize_nf4,
    dynamic_map,
    nf4_bytes,
    nf4_layers,
    nf4_levels,
    nf4_roundtrip,
    pack_nibbles,
    quantize_nf4,
    unpack_nibbles,
)
from efflab.techniques.quantization import dequantize_int4, quantize_int4_groupwise, sqnr_db

CFG = ModelConfig("t", n_layer=2, n_head=4, n_embd=64, block_size=16)


def _w(shape=(384, 128), seed=0, std=0.02):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std


def test_levels_are_normal_quantiles_and_match_bitsandbytes():
    lv = nf4_levels()
    assert lv.numel() == 16 and lv[0] == -1 and lv[-1] == 1 and (lv == 0).sum() == 1
    assert torch.all(lv[1:] > lv[:-1])
    assert (lv[lv > 0].numel(), lv[lv < 0].numel()) == (8, 7)  # asymmetric: an exact zero
    assert torch.allclose(lv, torch.tensor(NF4_TABLE), atol=1e-6, rtol=0)


def test_dynamic_map_shapes():
    for signed, lo in ((True, -0.993), (False, 0.0)):  # bitsandbytes': +1 but no -1
        d = dynamic_map(signed)
        assert d.numel() == 256 and abs(d.min().item() - lo) < 1e-3 and d.max().item() == 1.0
        assert torch.all(d[1:] >= d[:-1])
    assert dynamic_map(True, 3, 4).numel() == 16


def test_pack_roundtrip():
    c = torch.randint(0, 16, (64,), dtype=torch.uint8)
    assert torch.equal(unpack_nibbles(pack_nibbles(c)), c)


def test_codes_are_the_nearest_level_of_each_block():
    w = _w((4, 128))
    cfg = NF4Config(double_quant=False)
    q = quantize_nf4(w, cfg)
    blocks = w.reshape(-1, 64)
    absmax = blocks.abs().amax(1)
    assert torch.equal(q["absmax"], absmax)
    # brute force: the index of the closest level to w/absmax
    want = (blocks[..., None] / absmax[:, None, None] - nf4_levels()).abs().argmin(-1)
    assert torch.equal(unpack_nibbles(q["codes"]).reshape(-1, 64).long(), want)
    back = dequantize_nf4(q, w.shape, cfg)
    assert torch.allclose(back.reshape(-1, 64).abs().amax(1), absmax)  # ±1 is a level


@pytest.mark.parametrize("shape", [(384, 128), (128, 128), (512, 128), (64, 64 * 300)])
def test_bytes_are_exactly_half_a_byte_per_weight_plus_scales(shape):
    w = _w(shape)
    n = w.numel()
    for cfg in (NF4Config(), NF4Config(double_quant=False), NF4Config(block_size=128)):
        stored = sum(t.numel() * t.element_size() for t in quantize_nf4(w, cfg).values())
        assert stored == nf4_bytes(n, cfg)
    blocks = n // 64
    assert nf4_bytes(n) == n // 2 + blocks + 4 * math.ceil(blocks / 256) + 4
    assert nf4_bytes(n, NF4Config(double_quant=False)) == n // 2 + 4 * blocks


def test_double_quantization_costs_little_quality_and_saves_bits():
    w = _w()
    single = sqnr_db(w, nf4_roundtrip(w, NF4Config(double_quant=False)))
    double = sqnr_db(w, nf4_roundtrip(w))
    assert double > single - 0.1
    bits = 8 * nf4_bytes(w.numel()) / w.numel()
    assert 4.12 < bits < 4.14  # QLoRA's 4.127 bits per weight


def test_sqnr_near_int4_and_far_above_a_coarse_grid():
    w = _w((512, 128), seed=4)
    nf4 = sqnr_db(w, nf4_roundtrip(w))
    codes, sz = quantize_int4_groupwise(w, 64)
    int4 = sqnr_db(w, dequantize_int4(codes, sz))
    assert nf4 > 18 and abs(nf4 - int4) < 2.0  # same 16 levels' worth, a normal fit vs min-max


def test_verb_replaces_block_linears_and_is_frozen():
    m = build_model(CFG, 0).eval()
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    ref = m(x)[0]
    apply_(m, NF4Config())
    layers = nf4_layers(m)
    assert len(layers) == 4 * CFG.n_layer
    assert all(not p.requires_grad for _, layer in layers for p in layer.parameters())
    out = m(x)[0]
    assert sqnr_db(ref, out) > 10  # a 4-bit model, still the same model
    layer = layers[0][1]
    assert isinstance(layer, NF4Linear) and "NF4" in repr(layer)
    assert layer.weight_bytes() == nf4_bytes(layer.in_features * layer.out_features)


def test_config_errors():
    with pytest.raises(ConfigError, match="block_size"):
        NF4Config(block_size=48)
    with pytest.raises(ConfigError, match="double_quant"):
        NF4Config(double_quant=1)
    with pytest.raises(ValueError, match="block_size"):
        quantize_nf4(torch.zeros(100))
