"""Grouped-query / multi-query attention (ModelConfig.n_kv_head) and the KV cache's formulas."""

from dataclasses import replace

import pytest
import torch

from efflab.core.config import PRESETS, ConfigError, ModelConfig
from efflab.core.model import KVCache, build_model
from efflab.studies.kv_cache import cache_size_rows, new_token_flops

BASE = ModelConfig("kv-test", n_layer=2, n_head=4, n_embd=32, block_size=32)


def test_n_kv_head_is_validated_and_defaults_to_multi_head():
    assert all(c.n_kv_head is None and c.kv_heads == c.n_head for c in PRESETS.values())
    assert replace(BASE, n_kv_head=4) == BASE  # spelling MHA out is the same config
    with pytest.raises(ConfigError, match="divisor of n_head=4"):
        replace(BASE, n_kv_head=3)
    with pytest.raises(ConfigError, match="n_kv_head"):
        replace(BASE, n_kv_head=8)


@pytest.mark.parametrize("n_kv", [1, 2, 4])
def test_param_count_and_cache_bytes_match_the_formulas(n_kv):
    cfg = replace(BASE, n_kv_head=n_kv)
    m = build_model(cfg)
    assert m.num_params() == cfg.n_params()
    cache = KVCache(cfg, 3, 17, "cpu", torch.float32)
    assert cache.nbytes() == cfg.kv_cache_bytes(3, 17, 4) == 2 * 2 * n_kv * 8 * 4 * 17 * 3
    rows = cache_size_rows({"x": cfg}, [5, 9], batch_size=2)
    assert all(r["measured_bytes"] == r["formula_bytes"] for r in rows)


def test_gqa_equals_mha_with_shared_key_value_heads():
    """A GQA model is an MHA model whose query heads in a group read the same K and V: copy its
    k/v weights into every head of the group and the logits agree."""
    gqa = build_model(replace(BASE, n_kv_head=2), seed=1).eval()
    mha = build_model(BASE, seed=2).eval()
    sd = gqa.state_dict()
    C, hs, nkv, g = 32, 8, 2, 2
    for name, t in sd.items():
        if name.endswith("attn.c_attn.weight") or name.endswith("attn.c_attn.bias"):
            q, k, v = t.split([C, nkv * hs, nkv * hs], dim=0)
            def expand(w):  # (nkv·hs, ...) -> (C, ...): each kv head repeated g times
                return w.view(nkv, hs, *w.shape[1:]).repeat_interleave(g, 0).reshape(C, *w.shape[1:])

            sd[name] = torch.cat([q, expand(k), expand(v)], dim=0)
    mha.load_state_dict(sd)
    x = torch.randint(0, 256, (2, 11))
    torch.testing.assert_close(mha(x)[0], gqa(x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_kv", [1, 2])
def test_cached_decoding_equals_the_full_forward(n_kv):
    m = build_model(replace(BASE, n_kv_head=n_kv), seed=0).eval()
    x = torch.randint(0, 256, (2, 12))
    full, _ = m(x)
    cache = KVCache(m.cfg, 2, 12, "cpu", torch.float32)
    m(x[:, :7], cache=cache)
    steps = [m(x[:, i:i + 1], cache=cache)[0] for i in range(7, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 7:], rtol=1e-5, atol=1e-5)


def test_recomputing_costs_more_and_more():
    cfg = PRESETS["cpu-small"]
    r = [new_token_flops(cfg, c, False) / new_token_flops(cfg, c, True) for c in (8, 32, 120)]
    assert 1 < r[0] < r[1] < r[2]
    assert new_token_flops(cfg, 0, False) == new_token_flops(cfg, 0, True)  # nothing to reuse
