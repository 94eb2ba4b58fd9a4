"""Lesson 10/11 checks: the right answer passes; plausible slips are rejected with their hint."""

import pytest

from efflab.check.serving import paged_waste, policy_meets_ttft
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


def test_paged_waste():
    assert paged_waste(8 * 15 * 1024, block_size=16, n_sequences=8, bytes_per_position=1024).passed
    fb = paged_waste(8 * 16 * 1024, block_size=16, n_sequences=8, bytes_per_position=1024)
    assert not fb.passed and "at least one position" in fb.hint
    fb = paged_waste(15 * 1024, block_size=16, n_sequences=8, bytes_per_position=1024)
    assert not fb.passed and "own partly filled" in fb.hint
    fb = paged_waste(8 * 15, block_size=16, n_sequences=8, bytes_per_position=1024)
    assert not fb.passed and "bytes per position" in fb.hint


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
