import pytest

from efflab.core.config import ConfigError, Knobs, get_preset
from efflab.measurement import measure
from efflab.measurement.training import train_curves
from efflab.studies.precision_formats import availability_table
from efflab.techniques.precision import PrecisionConfig, refusal


def fake_cal(bf16=1e9, fp16=1e9, fp32=100e9):
    return {"fingerprint": "test", "bandwidth_bytes_per_s": 10e9,
            "matmul": {"float32": {"flops_per_s": fp32, "sizes": [256]},
                       "bfloat16": {"flops_per_s": bf16, "sizes": [256]},
                       "float16": {"flops_per_s": fp16, "sizes": [256]}}}


def test_bad_precision_names_the_choices():
    with pytest.raises(ConfigError) as e:
        Knobs(precision="fp8")
    assert e.value.field == "precision" and "'bf16-pure'" in str(e.value)
    with pytest.raises(ConfigError):
        PrecisionConfig("int8")


def test_refusal_is_predicted_from_the_measured_peak():
    slow = refusal(PrecisionConfig("bf16"), flops_per_step=10e9, calibration=fake_cal(bf16=1e9))
    assert slow and "1.00 GFLOP/s" in slow and "10 s" in slow
    assert refusal(PrecisionConfig("bf16"), 10e9, fake_cal(bf16=400e9)) is None
    assert refusal(PrecisionConfig("fp32"), 10e9, fake_cal(bf16=1e9)) is None


def test_a_busy_machine_slows_fp32_but_never_refuses_it():
    """Calibrated under heavy load, fp32 measured at 2.9 GFLOP/s: a 2.9 GFLOP step is slow,
    not refused (the baseline has no faster path to offer); a format as slow as fp32 is not
    refused either, and one crawling at a tenth of it still is."""
    busy = fake_cal(bf16=2.5e9)
    busy["matmul"]["float32"]["flops_per_s"] = 2.9e9
    assert refusal(PrecisionConfig("fp32"), 2.9e9 * 5, busy) is None
    assert refusal(PrecisionConfig("bf16"), 2.9e9 * 5, busy) is None
    busy["matmul"]["bfloat16"]["flops_per_s"] = 0.29e9
    assert "refused" in refusal(PrecisionConfig("bf16"), 2.9e9 * 5, busy)


def test_a_catastrophically_slow_format_is_refused_before_work():
    rec = measure(Knobs(precision="fp16", batch_size=32), preset="cpu-small",
                  calibration=fake_cal(fp16=0.3e9))
    assert rec["status"] == "refused" and "float16" in rec["message"]
    assert "latency_ms" not in rec


def test_availability_table_matches_refusals():
    cfg = get_preset("cpu-small")
    t = availability_table(cfg, Knobs(batch_size=8), fake_cal(bf16=1e9, fp16=500e9))
    runs = dict(zip(t["precision"], t["runs here"]))
    assert runs == {"fp32": True, "bf16": False, "fp16": True, "bf16-pure": False}
    assert (t.loc[t["precision"] == "bf16-pure", "bytes per weight"] == 2).all()


def test_bf16_pure_stores_weights_in_two_bytes(quick_cal):
    cal = fake_cal(bf16=1e12, fp16=1e12, fp32=quick_cal["matmul"]["float32"]["flops_per_s"])
    rec = measure(Knobs(precision="bf16-pure", batch_size=2, seq_len=16, workload="eval"),
                  preset="cpu-tiny", target_s=0.02, calibration=cal)
    assert rec["status"] == "ok", rec.get("message")
    n = get_preset("cpu-tiny").n_params()
    assert rec["memory"]["by_category"]["parameters"] == 2 * n
    assert rec["model"]["dtype"] == "bfloat16"


def test_bf16_and_fp16_losses_track_fp32_over_the_first_steps():
    cal = fake_cal(bf16=1e12, fp16=1e12)  # never refuse: this test is about numerics
    df = train_curves({"fp32": Knobs(), "bf16": Knobs(precision="bf16"),
                       "fp16": Knobs(precision="fp16")},
                      preset="cpu-tiny", steps=25, batch_size=4, seq_len=32, warmup=5,
                      eval_every=0, calibration=cal, progress=False, store=False)
    loss = df.pivot(index="step", columns="variant", values="train_loss")
    assert loss["fp32"].iloc[-1] < loss["fp32"].iloc[0] - 1.0  # it is actually learning
    # stated tolerance: within 0.05 nats of fp32 at every one of the first 25 steps
    assert (loss["bf16"] - loss["fp32"]).abs().max() < 0.05
    assert (loss["fp16"] - loss["fp32"]).abs().max() < 0.05


def test_peak_ratio_verdict_reads_each_format_against_fp32():
    from efflab.studies.precision_formats import peak_ratio_verdict
    cfg, knobs = get_preset("cpu-small"), Knobs(batch_size=8)
    # a CPU without native bf16/fp16: 100× and 50× slower, refused
    slow = peak_ratio_verdict(availability_table(cfg, knobs, fake_cal(bf16=1e9, fp16=2e9)))
    assert "bf16 1.0 GFLOP/s, 100.0× slower" in slow and "fp16 2.0 GFLOP/s, 50.0× slower" in slow
    assert "Refused here: bf16, fp16, bf16-pure" in slow and "faster" not in slow
    # a GPU-like machine: 16-bit formats faster, nothing refused (not read as slower)
    fast = peak_ratio_verdict(availability_table(cfg, knobs, fake_cal(bf16=400e9, fp16=800e9)))
    assert "bf16 400.0 GFLOP/s, 4.0× faster" in fast and "fp16 800.0 GFLOP/s, 8.0× faster" in fast
    assert "Every format runs here" in fast and "slower" not in fast
    # bf16-pure computes in bf16: one entry per compute format, not per precision
    assert fast.count("bf16 400.0") == 1 and "bf16-pure 400" not in fast


def test_peak_ratio_verdict_needs_the_reference_row():
    from efflab.studies.precision_formats import peak_ratio_verdict
    table = availability_table(get_preset("cpu-small"), Knobs(batch_size=8), fake_cal())
    with pytest.raises(ValueError, match="fp64"):
        peak_ratio_verdict(table, reference="fp64")
