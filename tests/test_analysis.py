import pandas as pd
import pytest

from efflab.core.config import get_preset
from efflab.measurement.memory import largest_batch, predict_memory
from efflab.measurement.roofline import bytes_moved, roofline
from efflab.studies.analysis import batching_table, calibration_table, saturation, technique_table
from efflab.ui.explanation import explain


def sweep_frame():
    rows = []
    for b, ms in [(1, 10.0), (2, 11.0), (4, 12.0), (8, 20.0), (16, 40.0)]:
        rows.append({"knobs.batch_size": b, "status": "ok", "message": None,
                     "latency_ms.median": ms, "latency_ms.p25": ms * 0.9,
                     "latency_ms.p75": ms * 1.1, "latency_ms.n": 5,
                     "throughput.tokens_per_step": b * 128,
                     "throughput.tokens_per_s": b * 128 / (ms / 1e3),
                     "theory.roofline.arithmetic_intensity": 10.0 * b,
                     "theory.roofline.machine_balance": 40.0,
                     "theory.roofline.bound": "compute" if b >= 4 else "memory",
                     "flops.mfu": 0.1 * b / 16, "memory.peak_bytes": b * 2**20})
    rows.append({"knobs.batch_size": 32, "status": "refused", "message": "over budget"})
    return pd.DataFrame(rows)


def test_batching_table_keeps_the_identity_and_gain():
    t = batching_table(sweep_frame())
    assert list(t["batch"]) == [1, 2, 4, 8, 16]  # the refused point is not a measured row
    assert t["B·T / latency"].tolist() == pytest.approx(t["tokens/s measured"].tolist(), rel=1e-3)
    assert t["gain vs smallest B"].iloc[0] == 1.0
    assert t["gain vs smallest B"].iloc[-1] == pytest.approx((16 / 40) / (1 / 10), rel=1e-3)


def test_saturation_finds_the_first_batch_near_the_best():
    s = saturation(sweep_frame(), fraction=0.9)
    # tokens/s: 12.8k, 23.3k, 42.7k, 51.2k, 51.2k -> 90% of 51.2k first reached at batch 8
    assert s["batch"] == 8 and "batch 8" in s["text"]


def test_calibration_table_balance():
    cal = {"bandwidth_bytes_per_s": 10e9,
           "matmul": {"float32": {"flops_per_s": 100e9, "sizes": [256, 512]}}}
    t = calibration_table(cal)
    assert t.loc[0, "balance FLOP/byte"] == 10.0 and t.loc[0, "peak GFLOP/s"] == 100.0


def test_largest_batch_is_the_edge_of_the_formula():
    cfg = get_preset("cpu-small")
    budget = 64 << 20
    b = largest_batch(cfg, "train", budget)
    assert b >= 1
    assert predict_memory(cfg, "train", b, 128)["peak_bytes"] <= 0.9 * budget
    assert predict_memory(cfg, "train", b + 1, 128)["peak_bytes"] > 0.9 * budget
    assert largest_batch("cpu-small", "train", 1 << 20) == 0  # not even batch 1 fits 1 MiB
    assert largest_batch("cpu-small", "decode", budget) > b  # decode keeps far less per sequence


def test_roofline_picks_the_binding_wall():
    cfg = get_preset("cpu-small")
    dec = bytes_moved(cfg, "decode", 1, 96, 32)
    assert dec >= 4 * cfg.n_params()  # at least every weight once
    r = roofline(flops=2 * cfg.n_params(), nbytes=dec, tokens=1, peak_flops=100e9, bandwidth=10e9)
    assert r["bound"] == "memory" and r["arithmetic_intensity"] < r["machine_balance"]
    r = roofline(flops=1e12, nbytes=1e6, tokens=1, peak_flops=100e9, bandwidth=10e9)
    assert r["bound"] == "compute" and r["step_ms_lower_bound"] == pytest.approx(10_000)


def test_explain_covers_each_metric(quick_cal):
    from efflab import Knobs, measure

    rec = measure(Knobs(batch_size=2, seq_len=16), preset="cpu-tiny", target_s=0.02,
                  calibration=quick_cal)
    text = explain(rec)
    for word in ("latency", "throughput", "MFU", "roofline", "peak memory", "bits per byte", "energy"):
        assert word in text
    assert f"n={rec['latency_ms']['n']}" in text
    refused = explain({**rec, "status": "refused", "message": "too big"})
    assert "refused" in refused and "too big" in refused


def test_technique_table_says_when_a_quality_difference_is_inside_the_noise():
    import numpy as np

    from efflab.core.records import records_frame

    rng = np.random.default_rng(0)
    base = rng.normal(1.13, 0.38, 256)

    def rec(mode, losses):
        return {"status": "ok", "knobs": {"quantization": mode},
                "latency_ms": {"median": 1.0, "p25": 0.9, "p75": 1.1, "n": 5},
                "throughput": {"tokens_per_s": 100.0}, "context": {"corpus": "c"},
                "quality": {"val_loss": float(np.mean(losses)), "bits_per_byte": 1.6,
                            "val_loss_ci95": 0.05, "seq_len": 128,
                            "window_losses": [float(v) for v in losses]}}

    df = records_frame([rec("none", base), rec("int8", base + rng.normal(0, 0.001, 256)),
                        rec("int4", base * 1.02)])
    t = technique_table(df, "quantization")
    assert list(t["quality vs first"].iloc[1:]) == ["inside noise", "worse"]
    assert t["Δ loss vs first %"].iloc[2] == pytest.approx(2.0, abs=0.1)
