"""Mixture of experts: the invariants that say the fast dispatch is right.

A one-expert top-1 MoE is the dense MLP; the sorted/grouped dispatch equals a naive per-token
loop (the slow reference); capacity drops are counted and contribute exactly zero; the
balancing loss is 1·weight when balanced and ~E·weight when collapsed; and a short training run
learns, with the balancing loss keeping the experts' load more even than without it.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from efflab.core.config import ConfigError, get_preset
from efflab.core.data import random_batch
from efflab.core.model import MLP, build_model
from efflab.measurement.workloads import eval_loss
from efflab.techniques import apply_
from efflab.techniques.checkpointing import CheckpointingConfig
from efflab.techniques.moe import (
    MoEConfig,
    MoEMLP,
    auxiliary_loss,
    count_params,
    dropped_tokens,
    expert_load,
    moe_layers,
)

TINY = get_preset("cpu-tiny")
C = TINY.n_embd


def one_expert_copy_of(mlp: MLP) -> MoEMLP:
    """An MoEMLP with one expert holding the dense MLP's weights (nothing can be dropped)."""
    moe = MoEMLP(mlp.c_fc.in_features,
                 MoEConfig(experts=1, top_k=1, capacity=1.0,
                           expert_hidden=mlp.c_fc.out_features))
    with torch.no_grad():
        for name in ("c_fc", "c_proj"):
            getattr(moe.experts[0], name).weight.copy_(getattr(mlp, name).weight)
            getattr(moe.experts[0], name).bias.copy_(getattr(mlp, name).bias)
    return moe


def reference_moe(moe: MoEMLP, x: torch.Tensor) -> torch.Tensor:
    """The slow reference: route and dispatch one token at a time, in token order."""
    xf = x.reshape(-1, moe.n_embd)  # (N, C)
    N, k = xf.size(0), moe.top_k
    capacity = moe.config.slots(N)
    taken = [0] * moe.n_experts
    out = torch.zeros_like(xf)
    for n in range(N):
        probs = F.softmax(moe.router(xf[n]).float(), dim=-1)  # (E,)
        p, e = probs.topk(k)
        gates = p if k == 1 else p / p.sum()
        for gate, expert in zip(gates.tolist(), e.tolist()):
            if taken[expert] < capacity:
                taken[expert] += 1
                out[n] += gate * moe.experts[expert](xf[n])
    return out.view(x.shape)


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("field,value", [
    ("experts", -1), ("experts", 2.0), ("top_k", 0), ("capacity", 0),
    ("capacity", float("nan")), ("balance", -0.1), ("every", 0),
    ("expert_hidden", 0),
])
def test_bad_settings_raise_config_error_naming_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        MoEConfig(**{"experts": 4, field: value})
    assert err.value.field == field and field in str(err.value)


def test_top_k_above_experts_names_both_fields():
    with pytest.raises(ConfigError) as err:
        MoEConfig(experts=2, top_k=3)
    assert "top_k" in str(err.value) and "experts" in str(err.value)
    MoEConfig(experts=0, top_k=3)  # off: top_k is not checked against 0 experts
    assert hash(MoEConfig(experts=4)) == hash(MoEConfig(experts=4))  # frozen, hashable


def test_capacity_and_default_hidden():
    cfg = MoEConfig(experts=4, top_k=2, capacity=1.25)
    assert cfg.slots(100) == math.ceil(1.25 * 100 * 2 / 4) == 63
    assert cfg.hidden(64) == 128 and MoEConfig(experts=4).hidden(64) == 256
    assert MoEConfig(experts=4, expert_hidden=32).hidden(64) == 32
    assert MoEConfig(experts=4, every=3).moe_layers(7) == [0, 3, 6]
    assert MoEConfig().moe_layers(7) == []


# ----------------------------------------------------------------------------- invariants

def test_one_expert_top1_equals_the_dense_mlp():
    torch.manual_seed(0)
    dense = MLP(TINY)
    moe = one_expert_copy_of(dense)
    x = torch.randn(3, 17, C)
    assert torch.allclose(moe(x), dense(x), atol=1e-6, rtol=1e-5)
    assert moe.last_dropped == 0 and moe.last_load.tolist() == [3 * 17]


def test_one_expert_gpt_equals_the_dense_gpt():
    dense = build_model(TINY, seed=3).eval()
    moe = copy.deepcopy(dense)
    for block in moe.h:
        block.mlp = one_expert_copy_of(block.mlp)
    assert count_params(moe)["total"] == dense.num_params() + TINY.n_layer * C  # + routers
    x = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        ld, loss_d = dense(x, x)
        lm, loss_m = moe(x, x)
    assert torch.allclose(lm, ld, atol=1e-5, rtol=1e-5)
    assert abs(loss_m.item() - loss_d.item()) < 1e-5


@pytest.mark.parametrize("top_k,capacity", [(1, 1.25), (1, 0.3), (2, 1.0), (2, 0.4)])
def test_grouped_dispatch_equals_the_per_token_reference(top_k, capacity):
    torch.manual_seed(1)
    moe = MoEMLP(C, MoEConfig(experts=4, top_k=top_k, capacity=capacity))
    moe.reset_parameters(n_layer=2)
    with torch.no_grad():
        moe.router.weight.mul_(20)  # sharper, uneven routing so that capacity bites
    x = torch.randn(2, 24, C)
    with torch.no_grad():
        assert torch.allclose(moe(x), reference_moe(moe, x), atol=1e-6)


def test_dropped_tokens_are_counted_and_get_exactly_zero_from_the_layer():
    torch.manual_seed(2)
    moe = MoEMLP(C, MoEConfig(experts=4, top_k=1, capacity=0.5))
    moe.reset_parameters(n_layer=2)
    x = torch.randn(4, 16, C)  # N = 64 tokens, capacity = ceil(0.5 · 64 / 4) = 8
    with torch.no_grad():
        y = moe(x).reshape(-1, C)
        expert = moe.router(x.reshape(-1, C)).argmax(-1)  # (N,) each token's choice
    load = moe.last_load
    assert moe.last_capacity == 8
    assert load.sum().item() == 64  # counted before capacity: every token, once
    assert moe.last_dropped == sum(max(0, n - 8) for n in load.tolist()) == 64 - 8 * 4
    # token order decides: an expert keeps its first 8 tokens, the rest get exactly zero
    zero_rows = (y == 0).all(dim=1)
    for e in range(4):
        mine = (expert == e).nonzero().flatten()
        assert not zero_rows[mine[:8]].any()
        assert zero_rows[mine[8:]].all()
    assert zero_rows.sum().item() == moe.last_dropped


def test_top2_load_counts_every_assignment_before_capacity():
    torch.manual_seed(3)
    moe = MoEMLP(C, MoEConfig(experts=4, top_k=2, capacity=0.5))
    x = torch.randn(2, 30, C)
    moe(x)
    cap = moe.last_capacity  # ceil(0.5 · 60 · 2 / 4) = 15
    assert cap == 15
    assert moe.last_load.sum().item() == 60 * 2
    assert moe.last_dropped == sum(max(0, n - cap) for n in moe.last_load.tolist())


def test_gradients_reach_the_router_and_every_expert():
    for balance in (0.01, 0.0):  # top-1 gates are raw probabilities: the router learns
        torch.manual_seed(4)  # from the task loss even without the balancing loss
        moe = MoEMLP(C, MoEConfig(experts=4, balance=balance,
                                  capacity=4.0))
        x = torch.randn(2, 32, C)
        (moe(x).pow(2).sum() + moe.aux_loss).backward()
        assert moe.router.weight.grad.abs().sum() > 0
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for e in moe.experts for p in e.parameters())


def test_balancing_loss_is_one_times_weight_when_uniform_and_larger_when_collapsed():
    E, w = 4, 0.05
    moe = MoEMLP(8, MoEConfig(experts=E, balance=w, capacity=4.0))
    # uniform: token n points at expert n % E, and the router is the identity on those axes,
    # so every expert gets N/E tokens and, by symmetry, the same mean probability 1/E
    x = 3.0 * torch.eye(8)[torch.arange(32) % E]  # (32, 8)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(8)[:E])
    moe(x)
    assert moe.last_load.tolist() == [8, 8, 8, 8]
    assert moe.aux_loss.item() == pytest.approx(1.0 * w, rel=1e-5)
    assert moe.aux_loss.requires_grad
    # collapsed: every token sends almost all its probability to expert 0
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 10.0
    moe(torch.ones(32, 8))
    assert moe.last_load.tolist() == [32, 0, 0, 0]
    assert moe.aux_loss.item() > (E - 0.01) * w
    # no weight: a constant zero
    off = MoEMLP(8, MoEConfig(experts=E, balance=0.0))
    off(x)
    assert off.aux_loss.item() == 0.0 and off.aux_loss.dim() == 0


# ----------------------------------------------------------------------------- the verb

def test_apply_moe_replaces_chosen_blocks_and_changes_the_state_dict():
    model = build_model(get_preset("cpu-small"))
    dense_state = build_model(get_preset("cpu-small")).state_dict()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    apply_(model, MoEConfig(experts=4, every=2, seed=5))
    assert torch.equal(torch.rand(1), before)  # the global RNG is untouched
    kinds = [type(b.mlp).__name__ for b in model.h]
    assert kinds == ["MoEMLP", "MLP", "MoEMLP", "MLP"]
    assert "experts=4, top_k=1" in repr(model.h[0].mlp) and "hidden=512" in repr(model)
    assert "h.0.mlp.experts.3.c_fc.weight" in model.state_dict()
    with pytest.raises(RuntimeError):  # a dense checkpoint does not load into an MoE model
        model.load_state_dict(dense_state)
    again = apply_(build_model(get_preset("cpu-small")), MoEConfig(experts=4, every=2, seed=5))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    with pytest.raises(ValueError, match="already"):
        apply_(model, MoEConfig(experts=2))
    assert apply_(model, MoEConfig()) is model  # experts=0: nothing changes


def test_active_parameters_of_top1_equal_the_dense_model_plus_routers():
    dense = build_model(TINY)
    moe = apply_(build_model(TINY), MoEConfig(experts=4, top_k=1))
    n = count_params(moe)
    assert n["active"] == dense.num_params() + TINY.n_layer * C * 4  # routers: C·E, no bias
    assert n["total"] == n["active"] + TINY.n_layer * 3 * (2 * C * 4 * C + 4 * C + C)
    top2 = count_params(apply_(build_model(TINY), MoEConfig(experts=4, top_k=2)))
    # two half-width experts: the same weights, one extra c_proj bias (C) per layer
    assert top2["active"] == dense.num_params() + TINY.n_layer * (C * 4 + C)
    assert count_params(dense) == {"total": dense.num_params(), "active": dense.num_params()}


def test_helpers_on_a_dense_model_and_under_checkpointing():
    dense = build_model(TINY)
    aux = auxiliary_loss(dense)
    assert aux.dim() == 0 and aux.item() == 0.0
    assert expert_load(dense) == [] and dropped_tokens(dense) == []
    model = apply_(build_model(TINY), MoEConfig(experts=4))
    x = torch.randint(0, 256, (2, 32))
    _, loss = model(x, x)
    (loss + auxiliary_loss(model)).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    load = expert_load(model)
    assert [sum(layer) for layer in load] == [64, 64]
    for mode in ("selective", "blocks"):  # wrappers hide nothing and change no gradient
        other = copy.deepcopy(model)  # deepcopy works after a forward (aux_loss is detached)
        other.zero_grad(set_to_none=True)
        apply_(other, CheckpointingConfig(mode))
        assert len(moe_layers(other)) == 2
        _, loss = other(x, x)
        (loss + auxiliary_loss(other)).backward()
        assert expert_load(other) == load
        for n, p in other.named_parameters():
            assert torch.allclose(p.grad, grads[n], atol=1e-6), n


def test_generation_and_bf16_autocast_run():
    model = apply_(build_model(TINY), MoEConfig(experts=4, top_k=2)).eval()
    out = model.generate(torch.tensor([[1, 2, 3]]), 5)
    assert out.shape == (1, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(torch.randint(0, 256, (2, 16)))
    assert torch.isfinite(logits.float()).all()


# ----------------------------------------------------------------------------- training

def _train(corpus, balance: float, steps: int = 40, seed: int = 0) -> dict:
    """cpu-tiny with MoE (E=4, top-1), batch 8, seq 32; the router at 10x the learning rate."""
    config = MoEConfig(experts=4, balance=balance, seed=seed)
    model = apply_(build_model(TINY, seed=seed), config)
    router = [p for n, p in model.named_parameters() if ".router." in n]
    rest = [p for n, p in model.named_parameters() if ".router." not in n]
    opt = torch.optim.AdamW([{"params": rest, "lr": 3e-3}, {"params": router, "lr": 3e-2}],
                            weight_decay=0.0)
    before = eval_loss(model, corpus, seq_len=32, batch_size=8, n_batches=4)["val_loss"]
    g = torch.Generator().manual_seed(seed)
    load = torch.zeros(TINY.n_layer, 4)
    for step in range(steps):
        x, y = random_batch(corpus.train, 8, 32, g)
        _, loss = model(x, y)
        (loss + auxiliary_loss(model)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= steps - 10:  # the load over the last 10 steps
            load += torch.tensor(expert_load(model), dtype=torch.float)
    after = eval_loss(model, corpus, seq_len=32, batch_size=8, n_batches=4)["val_loss"]
    share = load / load.sum(dim=1, keepdim=True)  # (layers, E)
    skew = (share.max(dim=1).values * 4).mean().item()  # 1 = even, 4 = all on one expert
    return {"before": before, "after": after, "skew": skew}


@pytest.fixture(scope="module")
def runs(corpus):
    return {"balanced": _train(corpus, balance=0.1), "free": _train(corpus, 0.0)}


def test_a_short_moe_training_run_reduces_the_loss(runs):
    r = runs["balanced"]
    assert r["after"] < r["before"] - 1.0, r


def test_the_balancing_loss_keeps_the_load_more_even(runs):
    # measured over seeds 0-5: free 2.9-3.9, balanced 1.2-1.7 (max share x E)
    assert runs["free"]["skew"] > 1.3 * runs["balanced"]["skew"], runs
