"""The two-try attack, over the whole registry: answer a number, read the reply, answer again
with any number computed from the first reply's text (a number in it, its inverse, the first
answer times or divided by it). No single-number exercise may pass that way: its feedback says
which way the answer misses in coarse bands, and its hint names the idea, not the value."""

import math
import re

import pandas as pd
import pytest

from efflab import check
from efflab.check.core import Verdict, judge_number

# Givens for every exercise whose answer is one number (the shapes of the lessons' own calls).
_CAL = {"matmul": {"float32": {"flops_per_s": 100e9}}, "bandwidth_bytes_per_s": 10e9,
        "read_bandwidth_bytes_per_s": 16e9}
_TRAIN = {"flops": {"per_step": 3e9, "peak_per_s": 400e9, "estimate_6n": 2.4e9},
          "latency_ms": {"median": 25.0}, "knobs": {"precision": "bf16", "batch_size": 4},
          "workload": "train", "throughput": {"tokens_per_s": 512 / 0.025}}
_DECODE = {"workload": "decode", "latency_ms": {"median": 8.0}, "knobs": {"batch_size": 4},
           "throughput": {"tokens_per_s": 4 / 0.008}}
_FIT = {"n_law": {"prefactor": 0.02, "exponent": 0.6, "n": 3},
        "loss_law": {"prefactor": 40.0, "exponent": -0.12, "n": 3},
        "budgets": pd.DataFrame({"budget": [1e10, 1e11, 1e12],
                                 "loss_opt": [40 * c ** -0.12 for c in (1e10, 1e11, 1e12)]})}


def _throughput_sweep():
    return pd.DataFrame([{"knobs.batch_size": b, "status": "ok", "latency_ms.median": ms,
                          "throughput.tokens_per_step": b * 128}
                         for b, ms in [(1, 10.0), (2, 11.0), (4, 12.0), (8, 20.0)]])


def _sat_sweep():
    rows = [{"knobs.batch_size": b, "status": "ok", "throughput.tokens_per_s": t}
            for b, t in [(1, 100.0), (2, 180.0), (4, 300.0), (8, 330.0), (16, 335.0), (32, 320.0)]]
    return pd.DataFrame(rows)


def _ck_sweep():
    return pd.DataFrame([{"knobs.checkpointing": m, "status": "ok", "latency_ms.median": ms}
                         for m, ms in [("none", 40.0), ("selective", 43.0), ("blocks", 41.2)]])


GIVENS = {
    "mfu": dict(record=_TRAIN, calibration=_CAL),
    "bits_per_byte": dict(val_loss=1.129),
    "throughput": dict(df=_throughput_sweep(), batch_size=4),
    "saturation": dict(df=_sat_sweep()),
    "recompute_overhead": dict(df=_ck_sweep()),
    "decode_bound": dict(bytes_per_token=2_000_000, calibration=_CAL),
    "request_latency": dict(record=_DECODE),
    "gelu_bias_bytes": dict(numel=16 * 128 * 512),
    "kv_cache_bytes": dict(n_layer=4, n_head=8, n_kv_head=2, n_embd=256, context=512,
                           batch_size=4, bytes_per_el=2),
    "break_even_acceptance": dict(k=3, cost_ratio=0.4),
    "optimal_loss": dict(fit=_FIT, budget=1e13),
    "step_time_8": dict(compute_per_sample_s=0.02, global_batch=16,
                        bucket_bytes=[1 << 20, 1 << 20, 1_300_000], alpha_s=5e-4, bandwidth=4e8),
    "zero1_bytes": dict(n_params=85_000_000, world_size=8),
    # lesson 16
    "lora_trainable": dict(n_layer=4, n_embd=128, n_head=4, r=8,
                           target_modules=("c_attn", "c_proj")),
    "adam8bit_bytes": dict(numels=[49152, 384, 16384, 128, 65536, 512, 128, 100 * 256 + 5]),
}
# answered with something other than one number: a choice, a dict, a pair
NOT_ONE_NUMBER = {"policy_meets_ttft", "which_roof", "bytes_per_param", "alpha_beta",
                  "compute_optimal"}

FIRST_TRIES = (1.0, 0.37, 1234.0)
_NUM = re.compile(r"\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?", re.IGNORECASE)


def _numbers(text: str) -> list[float]:
    out = []
    for tok in _NUM.findall(text):
        try:
            out.append(float(tok.replace(",", "")))
        except ValueError:
            continue
    return out


def _second_tries(first: float, text: str) -> set[float]:
    tries = set()
    for r in _numbers(text):
        tries |= {r, first * r, -r}
        if r:
            tries |= {1 / r, first / r}
        if r < 100:  # "20%", "1.78x": a percentage or a factor read off the reply
            tries |= {first * (1 + r / 100), first * (1 - r / 100), first / (1 + r / 100)}
    return {t for t in tries if math.isfinite(t)}


def _leaks(judge, first_tries=FIRST_TRIES) -> list[tuple[float, float, str]]:
    """(first, second, first reply) for every second try that passes after a failed first."""
    leaks = []
    for first in first_tries:
        v = judge(first)
        if v.passed:
            continue
        text = f"{v.expected} {v.got} {v.hint}"
        leaks += [(first, s, text) for s in sorted(_second_tries(first, text)) if judge(s).passed]
    return leaks


def _single_number_exercises():
    return sorted(n for n, ex in check.REGISTRY.items()
                  if not ex.function and ex.answer_keys == ("answer",) and n not in NOT_ONE_NUMBER)


def test_every_single_number_exercise_is_attacked():
    """A new single-number exercise must join the attack (or say why its answer is not one)."""
    missing = set(_single_number_exercises()) - set(GIVENS)
    assert not missing, f"add givens for {sorted(missing)} to GIVENS (or to NOT_ONE_NUMBER)"


@pytest.mark.parametrize("name", [n for n in _single_number_exercises() if n in GIVENS])
def test_no_single_number_exercise_passes_on_a_number_read_from_its_first_reply(name):
    ex = check.REGISTRY[name]
    base = ex.collect(1.0, **GIVENS[name])
    assert "answer" in base and "collect_error" not in base, base

    def judge(x):
        fb = check.judge(name, {**base, "answer": x})
        assert fb.status in ("correct", "wrong"), fb
        return fb

    leaks = _leaks(judge)
    assert not leaks, "\n".join(f"{a} -> {b} passes after: {t}" for a, b, t in leaks[:5])


def test_the_attack_catches_a_reply_that_gives_the_ratio():
    """The attack can fail: feedback that prints the factor off (the old "1.78x too low") leaks."""
    truth = 1780.0

    def leaky(x):
        v = judge_number(x, truth, expected="the value")
        return Verdict(v.passed, v.expected, f"{x:g} ({truth / x:.3g}x too low)", v.hint)

    assert _leaks(leaky)
    assert not _leaks(lambda x: judge_number(x, truth, expected="the value"))
