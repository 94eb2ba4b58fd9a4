"""Pruning: masks are exact, structured pruning equals the dense model restricted to what it
keeps, fine-tuning never revives a pruned weight, and 2:4 speed is refused off NVIDIA GPUs."""

import pytest
import torch

from efflab.core.config import ConfigError, ModelConfig
from efflab.core.model import KVCache, build_model
from efflab.studies.compression import finetune
from efflab.techniques import apply_
from efflab.techniques.pruning import (
    PrunedAttention,
    PrunedLinear,
    PrunedMLP,
    PruningConfig,
    channel_importance,
    dense_bytes,
    kept_channels,
    magnitude_masks,
    mlp_flops_per_token,
    semi_structured_refusal,
    sparsity_report,
    to_semi_structured_,
    two_four_mask,
)
from efflab.techniques.surgery import block_linears

CFG = ModelConfig("t", n_layer=2, n_head=4, n_embd=32, block_size=16)


def _model(seed=0):
    return build_model(CFG, seed).eval()


def _x(seed=1, B=2, T=16):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="sparsity"):
        PruningConfig("unstructured", sparsity=1.0)
    with pytest.raises(ConfigError, match="method"):
        PruningConfig("random")
    with pytest.raises(ConfigError, match="heads"):
        PruningConfig("unstructured", heads=1)
    with pytest.raises(ConfigError, match="n_head - 1 = 3"):
        apply_(_model(), PruningConfig("structured", sparsity=0.0, heads=4))


def test_global_magnitude_removes_exactly_the_smallest():
    ws = [torch.randn(8, 8, generator=torch.Generator().manual_seed(i)) * (i + 1) for i in range(3)]
    masks = magnitude_masks(ws, 0.5, "global")
    kept = torch.cat([w[m].abs() for w, m in zip(ws, masks)])
    dropped = torch.cat([w[~m].abs() for w, m in zip(ws, masks)])
    assert dropped.numel() == 96 and kept.min() >= dropped.max()
    # global: the small-scale tensor loses more than the large one; per layer: each loses half
    assert (~masks[0]).float().mean() > (~masks[2]).float().mean()
    for m in magnitude_masks(ws, 0.5, "layer"):
        assert (~m).float().mean() == 0.5


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_pruning_hits_the_sparsity(scope):
    m = apply_(_model(), PruningConfig("unstructured", sparsity=0.7, scope=scope))
    rep = sparsity_report(m)
    assert rep["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert all(isinstance(mod, PrunedLinear) for _, mod in block_linears(m))
    assert "magnitude-" + scope in repr(m)
    if scope == "layer":
        assert all(v == pytest.approx(0.7, abs=2e-3) for v in rep["per_layer"].values())


def test_zero_sparsity_leaves_the_output_unchanged_and_high_sparsity_changes_it():
    x = _x()
    ref, _ = _model()(x)
    same, _ = apply_(_model(), PruningConfig("unstructured", sparsity=0.0))(x)
    assert torch.equal(ref, same)
    far, _ = apply_(_model(), PruningConfig("unstructured", sparsity=0.9))(x)
    assert not torch.allclose(ref, far, atol=1e-3)


def test_two_four_mask_keeps_two_largest_of_every_four():
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    m = two_four_mask(w)
    g, mg = w.abs().reshape(6, 4, 4), m.reshape(6, 4, 4)
    assert (mg.sum(-1) == 2).all()
    assert (g[mg].reshape(6, 4, 2).min(-1).values >= g[~mg].reshape(6, 4, 2).max(-1).values).all()
    model = apply_(_model(), PruningConfig("2:4"))
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.5)


def test_structured_mlp_equals_dense_with_those_channels_zeroed():
    """The invariant: a structurally pruned model computes exactly what the dense model
    computes with the removed channels' weights zeroed."""
    x = _x()
    cfgp = PruningConfig("structured", sparsity=0.5, multiple_of=16)
    small = apply_(_model(), cfgp)
    dense = _model()
    with torch.no_grad():
        for blk in dense.h:
            keep = channel_importance(blk.mlp).topk(64).indices
            drop = torch.ones(128, dtype=torch.bool)
            drop[keep] = False
            blk.mlp.c_fc.weight[drop] = 0
            blk.mlp.c_fc.bias[drop] = 0
            blk.mlp.c_proj.weight[:, drop] = 0
    a, _ = small(x)
    b, _ = dense(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert isinstance(small.h[0].mlp, PrunedMLP) and small.h[0].mlp.c_fc.out_features == 64
    assert dense_bytes(small) < dense_bytes(_model())


def test_head_pruning_equals_dense_with_those_heads_zeroed_and_works_with_the_kv_cache():
    x = _x(T=12)
    small = apply_(_model(), PruningConfig("structured", sparsity=0.0, heads=1))
    assert isinstance(small.h[0].attn, PrunedAttention) and small.h[0].attn.n_head == 3
    # zero the dropped head's output columns in the dense model: its contribution vanishes
    dense = _model()
    hs = CFG.head_dim
    with torch.no_grad():
        for blk, sblk in zip(dense.h, small.h):
            kept = set()
            for h in range(4):  # which original head each kept head came from
                cols = blk.attn.c_attn.weight[h * hs:(h + 1) * hs]
                for j in range(3):
                    if torch.equal(cols, sblk.attn.c_attn.weight[j * hs:(j + 1) * hs]):
                        kept.add(h)
            (dropped,) = set(range(4)) - kept
            blk.attn.c_proj.weight[:, dropped * hs:(dropped + 1) * hs] = 0
    a, _ = small(x)
    b, _ = dense(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # decoding with a cache gives the same logits as one full forward
    cache = KVCache(CFG, 2, 12, "cpu", torch.float32)
    with torch.no_grad():
        first, _ = small(x[:, :8], cache=cache)
        steps = [small(x[:, t:t + 1], cache=cache)[0] for t in range(8, 12)]
    torch.testing.assert_close(torch.cat([first] + steps, 1), a, atol=1e-5, rtol=1e-5)


def test_kept_channels_and_mlp_flops():
    assert kept_channels(512, 0.5, 64) == 256
    assert kept_channels(512, 0.3, 64) == 384  # 358.4 rounds to the nearest multiple of 64
    assert mlp_flops_per_token(128, 256) * 2 == mlp_flops_per_token(128, 512)


def test_finetune_never_revives_pruned_weights_and_lowers_the_loss(corpus):
    m = apply_(_model(), PruningConfig("unstructured", sparsity=0.6))
    before = {n: (mod.weight == 0).clone() for n, mod in block_linears(m)}
    rows = finetune(m, corpus, steps=15, batch_size=4, lr=3e-3)
    for n, mod in block_linears(m):
        assert (mod.weight[before[n]] == 0).all(), n
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_two_four_speed_is_refused_on_cpu_with_the_reason():
    why = semi_structured_refusal("cpu")
    assert why and "compute capability" in why
    with pytest.raises(RuntimeError, match="sparse tensor cores"):
        to_semi_structured_(apply_(_model(), PruningConfig("2:4")))


@pytest.mark.gpu
def test_two_four_on_gpu_matches_the_masked_dense_model():
    if semi_structured_refusal("cuda"):
        pytest.skip(semi_structured_refusal("cuda"))
    cfg = ModelConfig("g", n_layer=1, n_head=2, n_embd=128, block_size=64)
    m = apply_(build_model(cfg, 0, "cuda").half().eval(), PruningConfig("2:4"))
    x = torch.randint(0, 256, (4, 64), device="cuda")
    ref, _ = m(x)
    fast, _ = to_semi_structured_(m)(x)
    torch.testing.assert_close(fast.float(), ref.float(), atol=5e-2, rtol=5e-2)
