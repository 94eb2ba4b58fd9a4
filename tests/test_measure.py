import json

import pytest

from efflab.core.config import ConfigError, Knobs, get_preset
from efflab.measurement import SCHEMA, measure
from efflab.measurement.energy import EnergyMeter
from efflab.measurement.memory import CATEGORIES, predict_memory
from efflab.measurement.timing import summarize

REQUIRED = {
    "latency_ms": {"median", "p25", "p75", "n"},
    "throughput": {"tokens_per_s"},
    "memory": {"peak_bytes", "by_category"},
    "flops": {"per_step", "achieved_per_s", "peak_per_s", "mfu"},
    "quality": {"val_loss", "bits_per_byte"},
    "energy": {"joules", "source"},
    "env": {"cpu", "threads", "gpu", "torch", "triton", "python", "efflab"},
    "model": {"preset", "n_params"},
}


def tiny(workload="train", **kw):
    return Knobs(workload=workload, batch_size=kw.pop("batch_size", 2), seq_len=32, **kw)


@pytest.fixture(scope="module")
def train_record(quick_cal):
    return measure(tiny(), preset="cpu-tiny", target_s=0.05, calibration=quick_cal)


def test_record_has_every_promised_key_and_is_json(train_record):
    rec = train_record
    assert rec["schema"] == SCHEMA and rec["status"] == "ok", rec.get("message")
    for key, sub in REQUIRED.items():
        assert sub <= set(rec[key]), key
    assert set(rec["memory"]["by_category"]) == set(CATEGORIES)
    assert json.loads(json.dumps(rec)) == rec


def test_spread_is_ordered_and_counted(train_record):
    lat = train_record["latency_ms"]
    assert lat["min"] <= lat["p25"] <= lat["median"] <= lat["p75"] <= lat["max"]
    assert lat["n"] >= 5


def test_memory_categories_add_up_to_the_peak(train_record):
    mem = train_record["memory"]
    assert sum(mem["by_category"].values()) == mem["peak_bytes"]
    for cat, b in mem["by_category"].items():  # no category is bigger at the peak than its max
        assert 0 <= b <= mem["max_by_category"][cat]
    assert mem["max_by_category"]["gradients"] == 4 * train_record["model"]["n_params"]


def test_fp32_parameter_bytes_are_four_per_parameter(train_record):
    n = get_preset("cpu-tiny").n_params()
    assert train_record["model"]["n_params"] == n
    assert train_record["memory"]["by_category"]["parameters"] == 4 * n
    assert train_record["memory"]["by_category"]["optimizer"] == 8 * n  # AdamW: two moments


def test_measured_memory_tracks_the_formula(quick_cal):
    for B in (2, 8):
        rec = measure(tiny(batch_size=B), preset="cpu-tiny", target_s=0.02, calibration=quick_cal,
                      quality=False)
        pred = predict_memory(get_preset("cpu-tiny"), "train", B, 32)
        assert rec["memory"]["peak_bytes"] == pytest.approx(pred["peak_bytes"], rel=0.25)


def test_activations_grow_linearly_with_batch(quick_cal):
    acts = {}
    for B in (2, 4, 8):
        rec = measure(tiny(batch_size=B), preset="cpu-tiny", target_s=0.02, calibration=quick_cal,
                      quality=False)
        acts[B] = rec["memory"]["max_by_category"]["activations"]
    assert acts[4] == pytest.approx(2 * acts[2], rel=0.05)
    assert acts[8] == pytest.approx(4 * acts[2], rel=0.05)


def test_inference_keeps_no_gradients_or_optimizer_and_decode_has_a_cache(quick_cal):
    ev = measure(tiny("eval"), preset="cpu-tiny", target_s=0.02, calibration=quick_cal)
    dec = measure(tiny("decode", gen_tokens=8), preset="cpu-tiny", target_s=0.02,
                  calibration=quick_cal)
    for rec in (ev, dec):
        cats = rec["memory"]["by_category"]
        assert cats["gradients"] == cats["optimizer"] == cats["activations"] == 0
    cfg = get_preset("cpu-tiny")
    expect_cache = 2 * cfg.n_layer * 2 * (32 + 8) * cfg.n_embd * 4  # K and V, fp32
    assert dec["memory"]["by_category"]["kv_cache"] == expect_cache
    assert dec["latency_ms"]["unit"] == "token" and dec["throughput"]["tokens_per_step"] == 2


def test_flops_agree_with_the_6n_estimate_plus_attention(train_record):
    fl = train_record["flops"]
    assert fl["attention_source"] in ("counter", "formula")
    assert fl["per_step"] == fl["counted"] + fl["attention_added"]
    # matmul FLOPs counted by PyTorch should be close to 6·N·tokens (embedding lookups are free)
    assert fl["counted"] == pytest.approx(fl["estimate_6n"], rel=0.15)
    assert fl["mfu"] == pytest.approx(fl["achieved_per_s"] / fl["peak_per_s"])


def test_throughput_is_tokens_over_latency(train_record):
    rec = train_record
    tps = rec["throughput"]["tokens_per_step"] / (rec["latency_ms"]["median"] / 1e3)
    assert rec["throughput"]["tokens_per_s"] == pytest.approx(tps)
    assert rec["throughput"]["tokens_per_step"] == 2 * 32


def test_over_budget_is_refused_before_any_work(quick_cal):
    rec = measure(tiny(batch_size=64), preset="cpu-tiny", budget_bytes=1 << 20,
                  calibration=quick_cal)
    assert rec["status"] == "refused" and "budget" in rec["message"]
    assert "latency_ms" not in rec


def test_gpu_preset_refused_on_cpu(quick_cal):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    rec = measure(Knobs(), preset="gpu-gpt2", calibration=quick_cal)
    assert rec["status"] == "refused" and "needs a GPU" in rec["message"]


def test_bad_weights_are_refused_before_work(quick_cal, tmp_path):
    from efflab.core.weights import WeightsError

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="broken.safetensors"):
        measure(tiny(), preset="cpu-tiny", weights=bad, calibration=quick_cal)


def test_failure_is_recorded_not_raised(quick_cal, monkeypatch):
    import importlib

    core = importlib.import_module("efflab.measurement.core")

    def broken(*args, **kwargs):
        raise RuntimeError("the workload broke")

    monkeypatch.setattr(core, "prepare", broken)
    rec = measure(tiny(), preset="cpu-tiny", calibration=quick_cal)
    assert rec["status"] == "error" and "the workload broke" in rec["message"]
    assert "Traceback" in rec["traceback"]


def test_invalid_knobs_raise_before_work():
    with pytest.raises(ConfigError, match="seq_len"):
        measure(Knobs(seq_len=4096), preset="cpu-tiny")
    with pytest.raises(ConfigError, match="knobs"):
        measure({"batch_size": 2}, preset="cpu-tiny")


def test_energy_is_never_invented():
    e = EnergyMeter("cpu")
    e.start()
    out = e.stop()
    assert out["source"] in ("unavailable", "rapl", "nvml")
    if out["source"] == "unavailable":
        assert out["joules"] is None
    else:
        assert out["joules"] >= 0


def test_summarize_orders_percentiles():
    s = summarize([0.003, 0.001, 0.002, 0.010])
    assert s["n"] == 4 and s["min"] == 1.0 and s["max"] == 10.0
    assert s["p25"] <= s["median"] <= s["p75"]


def test_quick_calibration_is_positive(quick_cal):
    assert quick_cal["matmul"]["float32"]["flops_per_s"] > 1e8
    assert quick_cal["bandwidth_bytes_per_s"] > 1e8


def test_a_cpu_allocation_failure_is_recorded_as_oom(quick_cal, monkeypatch):
    import importlib

    core = importlib.import_module("efflab.measurement.core")

    def starved(*args, **kwargs):  # what torch's CPU allocator raises when memory runs out
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 33554432 bytes.")

    monkeypatch.setattr(core, "prepare", starved)
    rec = measure(tiny(), preset="cpu-tiny", calibration=quick_cal)
    assert rec["status"] == "oom" and "can't allocate memory" in rec["message"]
