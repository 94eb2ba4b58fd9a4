"""The serving engine: batched paged attention equals the model, every policy and cache layout
produces each request's own greedy output, scheduling logic checked on a cost-model clock
(never the machine's speed), paged waste stays under one block per sequence."""

import numpy as np
import pytest
import torch

from efflab.core.config import ModelConfig
from efflab.core.model import build_model
from efflab.systems.serving.engine import CostModelClock, Engine, summarize_run
from efflab.systems.serving.kv_pool import KVPool, OutOfBlocks, SeqSlot
from efflab.systems.serving.paged import paged_forward
from efflab.systems.serving.stream import Request, poisson_stream

CFG = ModelConfig("serve-test", n_layer=2, n_head=4, n_embd=32, block_size=64)
GQA = ModelConfig("serve-test-gqa", n_layer=2, n_head=4, n_embd=32, block_size=64, n_kv_head=2)


@pytest.fixture(scope="module")
def model():
    m = build_model(CFG, seed=3).eval()
    with torch.no_grad():
        m.wte.weight.mul_(10)  # decisive argmaxes: greedy outputs differ between prompts
    return m


def _greedy(model, prompt, n):
    out = model.generate(torch.tensor([prompt]), n, temperature=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("cfg", [CFG, GQA], ids=["mha", "gqa"])
@pytest.mark.parametrize("layout", ["paged", "contiguous"])
def test_paged_forward_equals_the_model(cfg, layout):
    model = build_model(cfg, seed=1).eval()
    pool = KVPool(cfg, capacity_tokens=4 * 64, layout=layout, block_size=4)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (3, 9, 14)]
    slots = [SeqSlot() for _ in seqs]
    for s, ids in zip(slots, seqs):  # prefill one by one
        pool.reserve(s, len(ids) + 1)
        pre = paged_forward(model, pool, [s], torch.tensor([ids]))
        ref, _ = model(torch.tensor([ids]))
        torch.testing.assert_close(pre, ref, rtol=1e-5, atol=1e-5)
    nxt = [7, 8, 9]
    logits = paged_forward(model, pool, slots, torch.tensor(nxt)[:, None])  # (3, 1, V) batched
    for i, ids in enumerate(seqs):
        ref, _ = model(torch.tensor([ids + [nxt[i]]]))
        torch.testing.assert_close(logits[i, 0], ref[0, -1], rtol=1e-5, atol=1e-5)
    assert [s.length for s in slots] == [4, 10, 15]


def test_pool_blocks_and_waste():
    pool = KVPool(CFG, capacity_tokens=64, layout="paged", block_size=16)
    s = SeqSlot()
    pool.reserve(s, 17)
    assert len(s.blocks) == 2 and len(pool.free) == 2
    s.length = 17
    assert pool.waste([s])["wasted"] == 15  # 32 reserved, 17 used
    with pytest.raises(OutOfBlocks):
        pool.reserve(SeqSlot(), 64)
    pool.release(s)
    assert len(pool.free) == 4
    c = KVPool(CFG, capacity_tokens=128, layout="contiguous", max_len=64)
    t = SeqSlot()
    c.reserve(t, 5)
    t.length = 5
    assert c.n_blocks == 2 and c.waste([t])["wasted"] == 59
    assert c.waste([t])["wasted_bytes"] == 59 * CFG.kv_cache_bytes(1, 1)
    with pytest.raises(ValueError, match="layout"):
        KVPool(CFG, 64, layout="ring")


def test_stream_is_seeded_poisson():
    a = poisson_stream(5.0, 400, seed=1)
    b = poisson_stream(5.0, 400, seed=1)
    assert [r.arrival for r in a] == [r.arrival for r in b]
    assert [r.prompt for r in a] == [r.prompt for r in b]
    gaps = np.diff([r.arrival for r in a])
    assert np.mean(gaps) == pytest.approx(1 / 5.0, rel=0.15)
    assert np.std(gaps) == pytest.approx(1 / 5.0, rel=0.2)  # exponential: sd = mean
    assert all(8 <= len(r.prompt) <= 32 and 8 <= r.max_new_tokens <= 48 for r in a)
    with pytest.raises(ValueError, match="rate"):
        poisson_stream(0, 3)


def _stream(rate, n=10, seed=0):
    return poisson_stream(rate, n, seed=seed, prompt_len=(3, 12), output_len=(2, 14))


@pytest.mark.parametrize("policy", ["static", "continuous"])
@pytest.mark.parametrize("layout", ["paged", "contiguous"])
def test_every_policy_and_layout_gives_each_request_its_own_greedy_output(model, policy, layout):
    reqs = _stream(rate=50.0)
    pool = KVPool(CFG, capacity_tokens=6 * 32, layout=layout, block_size=4, max_len=32)
    eng = Engine(model, pool, policy, max_batch=4, clock=CostModelClock())
    done = eng.run(reqs)
    for r in done:
        assert r.output == _greedy(model, r.prompt, r.max_new_tokens), (policy, layout, r.id)
        assert r.arrival <= r.admitted <= r.first_token <= r.finished
        assert len(r.token_times) == r.max_new_tokens
    assert len(pool.free) == pool.n_blocks  # every block came back
    if layout == "paged":  # under one block of waste per sequence, at every iteration
        assert all(row["wasted"] <= row["sequences"] * (pool.block_size - 1) for row in eng.log)


def test_preemption_recomputes_and_keeps_outputs(model):
    reqs = _stream(rate=200.0, n=8)
    pool = KVPool(CFG, capacity_tokens=40, layout="paged", block_size=4, max_len=32)
    eng = Engine(model, pool, "continuous", max_batch=8, clock=CostModelClock())
    eng.run(reqs)
    assert eng.preemptions > 0  # the pool is too small for every request at once
    for r in reqs:
        assert r.output == _greedy(model, r.prompt, r.max_new_tokens)


def test_static_batches_do_not_overlap_and_continuous_does(model):
    reqs_s, reqs_c = _stream(rate=100.0, n=12), _stream(rate=100.0, n=12)
    def mk():
        return KVPool(CFG, capacity_tokens=8 * 32, layout="paged", block_size=4, max_len=32)

    Engine(model, mk(), "static", max_batch=4, clock=CostModelClock()).run(reqs_s)
    Engine(model, mk(), "continuous", max_batch=4, clock=CostModelClock()).run(reqs_c)
    batches = {}
    for r in reqs_s:
        batches.setdefault(r.admitted, []).append(r)
    starts = sorted(batches)
    for a, b in zip(starts, starts[1:]):  # a static batch starts after the previous one ends
        assert b >= max(r.finished for r in batches[a])
    assert all(len(v) <= 4 for v in batches.values())
    # continuous admits someone while others are still running
    assert any(any(o.admitted < r.admitted < o.finished for o in reqs_c) for r in reqs_c)


def test_continuous_beats_static_under_load_on_the_cost_clock(model):
    """Deterministic clock: the scheduling effect alone, independent of this machine."""
    out = {}
    for policy in ("static", "continuous"):
        reqs = _stream(rate=100.0, n=16, seed=2)
        pool = KVPool(CFG, capacity_tokens=8 * 32, layout="paged", block_size=4, max_len=32)
        eng = Engine(model, pool, policy, max_batch=4, clock=CostModelClock())
        eng.run(reqs)
        out[policy] = summarize_run(reqs, eng.log)
    assert out["continuous"]["ttft_p99"] < out["static"]["ttft_p99"]
    assert out["continuous"]["throughput_tok_s"] > out["static"]["throughput_tok_s"]


def test_summary_metrics_by_hand():
    a = Request(0, 0.0, [1], 3, output=[1, 2, 3], first_token=1.0, finished=3.0)
    b = Request(1, 1.0, [1], 1, output=[4], first_token=1.5, finished=1.5)
    m = summarize_run([a, b])
    assert m["ttft_p50"] == pytest.approx(0.75)  # ttfts 1.0 and 0.5
    assert m["tpot_p50"] == pytest.approx(1.0)  # (3 - 1) / 2; b has one token: no tpot
    assert m["throughput_tok_s"] == pytest.approx(4 / 3.0)


def test_engine_refuses_what_can_never_fit(model):
    pool = KVPool(CFG, capacity_tokens=64, layout="contiguous", max_len=16)
    with pytest.raises(ValueError, match="max_len"):
        Engine(model, pool).run([Request(0, 0.0, [1] * 10, 10)])
    with pytest.raises(ValueError, match="policy"):
        Engine(model, pool, policy="fifo")
