"""Lesson 10/11 checks: the right answer passes; plausible slips are rejected with their hint."""

import pytest

from efflab.check.serving import policy_meets_ttft
from efflab.check.speculation import break_even_acceptance, kv_cache_bytes
from efflab.systems.speculative import break_even_alpha, expected_speedup


@pytest.fixture(autouse=True)
def _answers(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFLAB_ANSWERS", str(tmp_path / "answers.jsonl"))


KV = dict(n_layer=4, n_head=8, n_kv_head=2, n_embd=256, context=512, batch_size=4, bytes_per_el=2)


def test_kv_cache_bytes():
    truth = 2 * 4 * 2 * 32 * 2 * 512 * 4
    assert kv_cache_bytes(truth, **KV).passed
    fb = kv_cache_bytes(truth // 2, **KV)
    assert not fb.passed and "AND values" in fb.hint
    fb = kv_cache_bytes(truth * 4, **KV)  # every query head cached
    assert not fb.passed and "key/value heads" in fb.hint
    fb = kv_cache_bytes(truth * 8, **KV)
    assert not fb.passed and "bits" in fb.hint
    assert kv_cache_bytes(None, **KV).status == "unanswered"


def test_break_even_acceptance():
    k, c = 3, 0.4
    a = break_even_alpha(k, c)
    assert expected_speedup(a, k, c) == pytest.approx(1.0, abs=1e-6)
    assert break_even_acceptance(round(a, 3), k=k, cost_ratio=c).passed
    fb = break_even_acceptance(0.0, k=k, cost_ratio=c)  # ignoring the draft's cost
    assert not fb.passed and "costs c" in fb.hint
    # forgetting the bonus token: solve a + a² + a³ = k·c + 1 instead of the full equation
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid + mid**2 + mid**3 < k * c + 1 else (lo, mid)
    fb = break_even_acceptance(hi, k=k, cost_ratio=c)
    assert not fb.passed and "bonus" in fb.hint
    fb = break_even_acceptance(c, k=k, cost_ratio=c)
    assert not fb.passed
    assert not break_even_acceptance(1.7, k=k, cost_ratio=c).passed


ROWS = [  # static meets the target by its median but not its p99 at rate 2; continuous does
    {"policy": "static", "rate": 1.0, "ttft_p50": 0.02, "ttft_p99": 0.05, "throughput_tok_s": 30},
    {"policy": "static", "rate": 2.0, "ttft_p50": 0.05, "ttft_p99": 0.40, "throughput_tok_s": 55},
    {"policy": "continuous", "rate": 1.0, "ttft_p50": 0.01, "ttft_p99": 0.03,
     "throughput_tok_s": 30},
    {"policy": "continuous", "rate": 2.0, "ttft_p50": 0.02, "ttft_p99": 0.08,
     "throughput_tok_s": 60},
]


def test_policy_meets_ttft():
    given = dict(rows=ROWS, rate=2.1, ttft_p99_target_s=0.1)
    assert policy_meets_ttft("continuous", **given).passed
    fb = policy_meets_ttft("both", **given)  # judged by the median
    assert not fb.passed and "p50" in fb.hint
    fb = policy_meets_ttft("neither", **given)
    assert not fb.passed and fb.hint
    assert policy_meets_ttft("both", rows=ROWS, rate=1.0, ttft_p99_target_s=0.1).passed
    assert policy_meets_ttft("fastest", **given).status == "error"


# -- 10 · code: the KV cache's bytes as a function ------------------------------------------

def _kv(n_layer, n_head, n_kv_head, n_embd, context, batch_size, bytes_per_el):
    kv = n_head if n_kv_head is None else n_kv_head
    return 2 * n_layer * kv * (n_embd // n_head) * context * batch_size * bytes_per_el


def _kv_slip(**change):
    """The formula with one factor replaced: ``change[name](args) -> value``."""
    def fn(**a):
        f = {"kv": a["n_head"] if a["n_kv_head"] is None else a["n_kv_head"], "two": 2,
             "bytes": a["bytes_per_el"], "layers": a["n_layer"]}
        f.update({k: v(a) for k, v in change.items()})
        return (f["two"] * f["layers"] * f["kv"] * (a["n_embd"] // a["n_head"]) * a["context"]
                * a["batch_size"] * f["bytes"])
    return fn


def test_kv_bytes_accepts_the_formula_and_names_each_slip():
    from efflab import check

    assert check.kv_bytes(_kv)
    for fn, hint in [
            (_kv_slip(two=lambda v: 1), "AND values"),
            (_kv_slip(kv=lambda v: v["n_head"]), "key/value heads are cached"),
            (_kv_slip(layers=lambda v: 1), "every layer"),
            (_kv_slip(bytes=lambda v: 1), "bytes per number"),
            (lambda **p: _kv(**p) * 8, "bits")]:
        fb = check.kv_bytes(fn)
        assert not fb.passed and fb.status == "wrong" and hint in fb.hint, (hint, str(fb))
        assert "x the" not in fb.got and "too" in fb.got  # a band, never the ratio


def test_kv_bytes_without_none_for_multi_head_attention_is_told_what_none_means():
    from efflab import check

    fb = check.kv_bytes(lambda n_layer, n_head, n_kv_head, n_embd, context, batch_size,
                        bytes_per_el: 2 * n_layer * n_kv_head * (n_embd // n_head) * context
                        * batch_size * bytes_per_el)
    assert not fb.passed and "None" in fb.hint and "TypeError" in fb.got


def test_kv_bytes_hidden_seed_and_placeholder(tmp_path, monkeypatch):
    from efflab import check

    ev = check.REGISTRY["kv_bytes"].collect(_kv, seed=101)
    assert ev["seed"] == 101 and check.judge("kv_bytes", ev)
    assert not check.judge("kv_bytes", {**ev, "seed": 10})  # outputs of other probes fail

    def placeholder(**_):
        raise NotImplementedError("replace this with your answer")

    with pytest.raises(NotImplementedError):
        check.kv_bytes(placeholder)
    (entry,) = check.read_answers(tmp_path / "answers.jsonl")
    assert check.judge("kv_bytes", entry["evidence"]).status == "unanswered"


# -- 11 · code: the reserved but empty bytes of a KV cache ------------------------------------

def _waste(lengths, layout, block_size, max_len, bytes_per_position):
    per = (lambda n: max_len) if layout == "contiguous" else (lambda n: -(-n // block_size) * block_size)
    return sum(per(n) - n for n in lengths) * bytes_per_position


def test_the_waste_reference_is_what_the_serving_pool_counts():
    import torch

    from efflab.check.serving import reference_waste_bytes, waste_probes
    from efflab.core.config import ModelConfig
    from efflab.systems.serving import KVPool
    from efflab.systems.serving.kv_pool import SeqSlot

    for p in waste_probes()[:4]:
        cfg = ModelConfig("w", n_layer=1, n_head=1, n_embd=4, block_size=p["max_len"])
        pool = KVPool(cfg, p["max_len"] * len(p["lengths"]), layout=p["layout"],
                      block_size=p["block_size"], dtype=torch.float32)
        slots = []
        for n in p["lengths"]:
            s = SeqSlot()
            pool.reserve(s, n)
            s.length = n
            slots.append(s)
        wasted = pool.waste(slots)["wasted"]
        assert reference_waste_bytes(**{**p, "bytes_per_position": 1}) == wasted


def test_kv_waste_accepts_the_count_and_names_each_slip():
    from efflab import check

    assert check.kv_waste(_waste)
    for fn, hint in [
            (lambda bytes_per_position, **p: _waste(bytes_per_position=1, **p), "positions"),
            (lambda lengths, layout, block_size, **p: _waste(lengths, layout, block_size, **p)
             + (sum(block_size for n in lengths if n % block_size == 0) * p["bytes_per_position"]
                if layout == "paged" else 0), "fills its blocks exactly"),
            (lambda layout, **p: _waste(layout="paged", **p), "contiguous cache reserves"),
            (lambda layout, **p: _waste(layout="contiguous", **p), "as a sequence grows"),
            (lambda lengths, **p: _waste(lengths, **p) / len(lengths), "one sequence's share")]:
        fb = check.kv_waste(fn)
        assert not fb.passed and fb.status == "wrong" and hint in fb.hint, (hint, str(fb))
        assert "too" in fb.got or "zero" in fb.got


def test_kv_waste_hidden_seed_and_placeholder(tmp_path):
    from efflab import check

    ev = check.REGISTRY["kv_waste"].collect(_waste, seed=1111)
    assert ev["seed"] == 1111 and check.judge("kv_waste", ev)
    assert not check.judge("kv_waste", {**ev, "seed": 11})

    def placeholder(*_, **__):
        raise NotImplementedError("replace this with your answer")

    with pytest.raises(NotImplementedError):
        check.kv_waste(placeholder)
    (entry,) = check.read_answers(tmp_path / "answers.jsonl")
    assert check.judge("kv_waste", entry["evidence"]).status == "unanswered"
