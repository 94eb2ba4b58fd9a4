"""The verdicts lessons 02, 05 and 07 print instead of asserting results: each branch, on
synthetic frames shaped like a sweep's (the numbers are in the sentence, the words follow them)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from efflab.studies.compare import frontier_verdict, precision_takeaways
from efflab.studies.quantization import quality_verdicts, speed_verdict, sqnr_verdict


def _windows(base, shift, noise, n=64, seed=0):
    rng = np.random.default_rng(seed)
    w = base + rng.normal(0, 0.3, n)
    return list(w), list(w + shift + rng.normal(0, noise, n))


def _row(scheme, *, lat, p25, p75, loss_windows, peak_mib=4.0, bound=None, batch=1):
    w = np.asarray(loss_windows)
    return {"status": "ok", "message": None, "knobs.quantization": scheme, "knobs.batch_size": batch,
            "latency_ms.median": lat, "latency_ms.p25": p25, "latency_ms.p75": p75,
            "latency_ms.unit": "token", "throughput.tokens_per_s": 1000.0 / lat,
            "theory.roofline.tokens_per_s_upper_bound": bound,
            "quality.val_loss": float(w.mean()), "quality.val_loss_ci95": 0.05,
            "quality.bits_per_byte": float(w.mean()) / np.log(2), "quality.window_losses": list(w),
            "quality.seq_len": 128, "context.corpus": "abc",
            "ms per request token": lat, "peak MiB": peak_mib, "config": f"quantization={scheme}"}


def _frame(shift, lat8, p8, bound8=None, bound0=None, lat0=2.0):
    a, b = _windows(1.2, shift, 1e-4 if shift == 0 else 0.002)
    return pd.DataFrame([
        _row("none", lat=lat0, p25=lat0 * 0.95, p75=lat0 * 1.05, loss_windows=a, peak_mib=4.0,
             bound=bound0),
        _row("int8-weight", lat=lat8, p25=p8[0], p75=p8[1], loss_windows=b, peak_mib=1.5,
             bound=bound8)])


# ---- lesson 05: SQNR against the rule of thumb --------------------------------------------------

def test_sqnr_verdict_says_better_or_worse_than_the_rule_with_the_numbers():
    rows = ([{"scheme": "int8-weight", "sqnr_db": v} for v in (40.0, 41.0, 42.0)]
            + [{"scheme": "int4-weight", "sqnr_db": v} for v in (20.0, 21.0, 22.0)])
    v = sqnr_verdict(rows)
    assert "41.0 dB" in v and "21.0 dB" in v and "20.0 dB" in v and "24.1 dB" in v
    assert "better than the rule" in v and "4.1 dB" in v
    worse = [dict(r, sqnr_db=r["sqnr_db"] - 10) if r["scheme"] == "int4-weight" else r for r in rows]
    v = sqnr_verdict(worse)
    assert "worse than the rule" in v and "5.9 dB" in v
    with pytest.raises(ValueError):
        sqnr_verdict(rows[:3])


# ---- lesson 05: quality, paired ------------------------------------------------------------------

def test_quality_verdicts_separate_a_real_cost_from_noise():
    costly = quality_verdicts(_frame(0.02, 2.0, (1.9, 2.1)))
    assert len(costly) == 1 and costly[0].startswith("int8-weight: +0.0")
    assert "measurably worse" in costly[0] and "paired" in costly[0]
    free = quality_verdicts(_frame(0.0, 2.0, (1.9, 2.1)))
    assert "inside the noise" in free[0]
    better = quality_verdicts(_frame(-0.02, 2.0, (1.9, 2.1)))
    assert "measurably better" in better[0]


def test_quality_verdicts_say_how_many_windows_both_were_scored_on():
    df = _frame(0.02, 2.0, (1.9, 2.1)).assign(**{"quality.windows": 64})
    assert "bits/byte against fp32 on 64 held-out windows; loss" in quality_verdicts(df)[0]
    df.loc[1, "quality.windows"] = 512  # not the same windows: no count claimed for both
    assert "held-out windows" not in quality_verdicts(df)[0]
    assert "held-out windows" not in quality_verdicts(_frame(0.02, 2.0, (1.9, 2.1)))[0]


def test_quality_verdicts_name_a_scheme_that_did_not_run():
    df = _frame(0.0, 2.0, (1.9, 2.1))
    df.loc[1, "status"], df.loc[1, "message"] = "refused", "needs int8 units"
    assert quality_verdicts(df) == ["int8-weight: did not run (needs int8 units)"]
    assert "no successful" in quality_verdicts(df.iloc[1:])[0]


# ---- lesson 05: speed against the bound ---------------------------------------------------------

@pytest.mark.parametrize("lat8, spread, word", [
    (1.0, (0.95, 1.05), "faster"),
    (4.0, (3.8, 4.2), "slower"),
    (2.05, (1.8, 2.3), "no measurable difference"),
])
def test_speed_verdict_follows_the_spread(lat8, spread, word):
    v = speed_verdict(_frame(0.0, lat8, spread, bound8=2000.0, bound0=600.0), "cpu-x")
    assert f"runs at {2.0 / lat8:.2f}× fp32's speed" in v and word in v
    assert "its bound allows 3.33×" in v
    if word != "faster":
        assert ": faster" not in v


@pytest.mark.parametrize("bound0, words", [
    (300.0, "above its DRAM bound"), (800.0, "near its bound"), (5000.0, "well below its bound")])
def test_speed_verdict_places_fp32_against_its_bound(bound0, words):
    v = speed_verdict(_frame(0.0, 2.0, (1.9, 2.1), bound0=bound0), "cpu-x")
    assert "fp32 decodes 500 tokens/s" in v and words in v
    assert f"{500 / bound0:.0%} of its bandwidth bound" in v


def test_speed_verdict_without_bound_or_reference():
    v = speed_verdict(_frame(0.0, 2.0, (1.9, 2.1)), "cpu-x")
    assert "bound" not in v.split(".")[0] and "no measurable difference" in v
    assert "no successful" in speed_verdict(_frame(0.0, 2.0, (1.9, 2.1)).iloc[1:], "cpu-x")


# ---- lesson 07: the frontier's own int8 point -----------------------------------------------------

def test_frontier_verdict_reads_quality_latency_and_memory_from_the_grid():
    v = frontier_verdict(_frame(0.0, 4.0, (3.8, 4.2)))
    assert "inside the noise" in v and "latency 2.00×" in v and "slower" in v
    assert "peak memory 0.38×" in v and "4.000 against 2.000 ms" in v
    v = frontier_verdict(_frame(0.02, 1.0, (0.95, 1.05)))
    assert "measurably worse" in v and "latency 0.50×" in v and "faster" in v
    v = frontier_verdict(_frame(0.0, 2.02, (1.8, 2.2)))
    assert "no measurable difference" in v
    assert "No successful `int8-dynamic`" in frontier_verdict(_frame(0.0, 2.0, (1.9, 2.1)),
                                                              "int8-dynamic")


# ---- lesson 02: the take-aways --------------------------------------------------------------------

def test_precision_takeaways_compute_every_line():
    formats = pd.DataFrame([
        {"status": "ok", "message": None, "knobs.precision": "fp32", "latency_ms.median": 10.0},
        {"status": "ok", "message": None, "knobs.precision": "bf16", "latency_ms.median": 4.0},
        {"status": "refused", "message": "fp16 matmul 1 GFLOP/s", "knobs.precision": "fp16",
         "latency_ms.median": None}])
    small = pd.DataFrame([
        {"status": "ok", "knobs.precision": "fp32", "memory.by_category.parameters": 400,
         "memory.by_category.optimizer": 800, "memory.by_category.activations": 100},
        {"status": "ok", "knobs.precision": "bf16-pure", "memory.by_category.parameters": 200,
         "memory.by_category.optimizer": 400, "memory.by_category.activations": 50}])
    curves = pd.DataFrame([{"status": "ok", "step": s, "variant": v, "train_loss": loss}
                           for s in range(3)
                           for v, loss in (("fp32", 3.0 - s), ("bf16", 3.01 - s), ("bf16-pure", 3.2 - s))])
    lines = precision_takeaways(formats, small, curves)
    assert "bf16: step time 0.40× fp32's on this machine" in lines
    assert any(line.startswith("fp16: refused") and "1 GFLOP/s" in line for line in lines)
    assert "bf16-pure: bytes against fp32 — parameters 0.50×, optimizer 0.50×, activations 0.50×" in lines
    gaps = [line for line in lines if "training loss at most" in line]
    assert len(gaps) == 2 and any("bf16-pure" in g and "0.2000" in g for g in gaps)
    assert any(g.startswith("bf16:") and "0.0100" in g for g in gaps)
