"""Lesson 02's studies: the formats' numbers, fp16 underflow, a GradScaler run, master weights,
FP8 scaling and its emulated matmul, and the FP8 speed refusal."""

import pytest
import torch

from efflab.studies import precision_formats as pf


def test_format_table_is_read_from_finfo():
    t = pf.format_table().set_index("format")
    assert t.loc["fp16", "max"] == 65504 and t.loc["fp8 e4m3", "max"] == 448
    assert t.loc["fp8 e5m2", "max"] == 57344
    assert t.loc["fp16", "smallest subnormal"] == 2.0 ** -24
    assert t.loc["fp8 e4m3", "smallest subnormal"] == 2.0 ** -9
    assert t.loc["fp8 e5m2", "smallest subnormal"] == 2.0 ** -16
    assert t.loc["bf16", "smallest normal"] == t.loc["fp32", "smallest normal"]  # same range
    assert (t["exponent bits"] + t["mantissa bits"] + 1 == t["bits"]).all()
    assert t.loc["fp8 e4m3", "eps (spacing above 1)"] == 2.0 ** -3


def test_underflow_table_counts_flushes_subnormals_and_overflows():
    g = torch.tensor([1e-9, 1e-7, 3e-5, 1e-2, 1.0, 0.0])  # 5 nonzero
    t = pf.underflow_table(g, scales=(1.0, 2.0 ** 16)).set_index("scale")
    assert t.loc[1.0, "flushed to zero"] == pytest.approx(1 / 5)  # 1e-9 < 2^-25
    assert t.loc[1.0, "subnormal"] == pytest.approx(2 / 5)  # 1e-7 and 3e-5 < 2^-14
    assert t.loc[1.0, "overflowed to inf"] == 0
    assert t.loc[2.0 ** 16, "flushed to zero"] == 0
    assert t.loc[2.0 ** 16, "overflowed to inf"] == pytest.approx(1 / 5)  # 65536 > 65504
    assert "flush to zero" in pf.underflow_verdict(t.reset_index())


def test_a_real_models_gradients_lose_values_without_scaling_and_fewer_with():
    g = pf.model_gradients("cpu-tiny", batch_size=2, seq_len=16)
    t = pf.underflow_table(g, scales=(1.0, 2.0 ** 12)).set_index("scale")
    lost = t["flushed to zero"] + t["subnormal"]
    assert lost[2.0 ** 12] < lost[1.0]


def test_scaler_run_backs_off_on_overflow_and_grows_after_clean_steps():
    df = pf.scaler_run("cpu-tiny", steps=16, batch_size=2, seq_len=16, init_scale=2.0 ** 18,
                       growth_interval=3)
    s = df["scale"].tolist()
    assert df["skipped"].iloc[0] and s[1] == s[0] / 2  # overflow: skipped, scale halved
    assert any(b == 2 * a for a, b in zip(s, s[1:]))  # grew after growth_interval clean steps
    for a, b, skipped in zip(s, s[1:], df["skipped"]):
        assert (b < a) == bool(skipped)  # a backoff happens exactly on a skipped step
    assert "skipped" in pf.scaler_verdict(df)


def test_bf16_weights_lose_small_updates_that_fp32_masters_keep():
    w = torch.randn(64, 64)
    d = pf.master_weights_demo(w, steps=50, lr=1e-4)
    assert d["fp32 master kept"] > 0.999
    assert d["bf16 weights kept"] < d["fp32 master (bf16 copy) kept"]
    assert d["bf16 weights never moved"] > 0.3
    assert "master" in pf.master_verdict(d)


def test_fp8_scaling_and_cast():
    x = torch.tensor([0.5, -2.0, 1e-4])
    x8, s = pf.to_fp8(x)
    assert s == 448 / 2.0 and x8.dtype == torch.float8_e4m3fn
    assert float(x8.float().abs().max()) == 448  # amax lands on the format's max
    unscaled, one = pf.to_fp8(x, scale=1.0)
    assert one == 1.0 and float(unscaled.float()[2]) == 0.0  # 1e-4 < E4M3's smallest subnormal


def test_fp8_matmul_errors_order_as_the_formats_precision():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 96, generator=g), torch.randn(96, 32, generator=g)
    t = pf.fp8_matmul_table(a, b)
    err = {(r.operands.startswith("as"), r.format, r.scaling): r["relative error"]
           for _, r in t.iterrows()}
    scaled = "per-tensor amax"
    assert err[(True, "fp32", "none")] < err[(True, "bf16", "none")] < err[(True, "fp8 e4m3", scaled)]
    assert err[(True, "fp8 e4m3", scaled)] < err[(True, "fp8 e5m2", scaled)] < 0.1
    assert err[(False, "fp8 e4m3", "none")] > 0.5  # gradient-sized values flush without a scale
    assert err[(False, "fp8 e4m3", scaled)] == pytest.approx(err[(True, "fp8 e4m3", scaled)], rel=1e-3)
    assert "E4M3" in pf.fp8_verdict(t)


def test_layer_operands_are_the_mlp_matmul():
    x, w = pf.layer_operands("cpu-tiny", batch_size=1, seq_len=8)
    assert x.shape[1] == w.shape[0] and x.shape[0] == 8


@pytest.mark.parametrize("cal, cap, refused, word", [
    ({"device": "cpu", "env": {"cpu": "AMD EPYC"}}, None, True, "cpu"),
    ({"device": "cuda", "env": {"gpu": "Tesla T4"}}, (7, 5), True, "7.5"),
    ({"device": "cuda", "env": {"gpu": "NVIDIA A100"}}, (8, 0), True, "8.0"),
    ({"device": "cuda", "env": {"gpu": "NVIDIA H100"}}, (9, 0), False, ""),
    ({"device": "cuda", "env": {"gpu": "NVIDIA L4"}}, (8, 9), False, ""),
])
def test_fp8_speed_is_refused_without_fp8_units(cal, cap, refused, word):
    why = pf.fp8_speed_refusal(cal, cap)
    assert (why is not None) == refused
    if refused:
        assert word in why and "8.9" in why


def test_fp8_speed_summary_says_whether_fp8_was_faster():
    d = {"n": 4096, "bf16 s": 2e-3, "fp8 e4m3 s": 1e-3, "bf16 TFLOP/s": 69.0,
         "fp8 e4m3 TFLOP/s": 137.0, "fp8 relative error": 0.03}
    assert "2.00× (faster)" in pf.fp8_speed_summary(d)
    assert "not faster" in pf.fp8_speed_summary({**d, "fp8 e4m3 s": 3e-3})


@pytest.mark.skipif(not torch.cuda.is_available()
                    or torch.cuda.get_device_capability() < pf.FP8_MIN_CAPABILITY,
                    reason="needs a GPU with FP8 units")
def test_fp8_speed_on_a_gpu_with_fp8_units():
    d = pf.fp8_speed(n=2048, repeats=5)
    assert d["fp8 e4m3 TFLOP/s"] > 0 and d["fp8 relative error"] < 0.1
