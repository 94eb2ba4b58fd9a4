"""Every verdict that depends on the hardware, fed each machine profile: the right verdict for
that machine, and an honest learner's answer computed from that profile passes the check.

Expected ridges and bounds below are worked out by hand from the profiles' numbers (see
efflab/measurement/profiles.py for their sources), not from the code under test."""

from __future__ import annotations

import pytest

from efflab import check
from efflab.core.config import get_preset
from efflab.measurement.profiles import PROFILES, SPEC, batch1_step_regime, profile
from efflab.measurement.profiling import roof_bound
from efflab.measurement.roofline import decode_bound_tokens_per_s
from efflab.systems.speculative import break_even_alpha
from efflab.techniques.precision import PrecisionConfig, refusal
from efflab.ui.charts.roofline import compute_roof, roofs_from_calibration

NAMES = sorted(PROFILES)
GPUS = [n for n in NAMES if n.startswith("gpu-")]
# fp32 peak ÷ read bandwidth, FLOP/byte (worked out by hand)
RIDGE_FP32 = {"cpu-2core-avx2": 5.251, "cpu-2core-avx512bf16": 33.70,
              "cpu-server-avx512bf16": 16.0, "gpu-t4": 25.31, "gpu-a100": 9.564,
              "gpu-h100": 20.0}
RIDGE_BF16 = {"cpu-2core-avx2": 0.04025, "cpu-2core-avx512bf16": 25.87,
              "cpu-server-avx512bf16": 32.0, "gpu-a100": 153.0, "gpu-h100": 295.4}
# operators of a step, FLOP/byte: a layernorm, one head's T x T scores, a 1024^3 fp32 matmul
INTENSITIES = {"layernorm": 0.5, "attention scores": 12.0, "mlp matmul": 170.7}
# which roof bounds the attention scores (I = 12) under the fp32 roof, per machine
SCORES_FP32 = {"cpu-2core-avx2": "compute", "cpu-2core-avx512bf16": "memory",
               "cpu-server-avx512bf16": "memory", "gpu-t4": "memory", "gpu-a100": "compute",
               "gpu-h100": "memory"}
BF16_REFUSED = {"cpu-2core-avx2"}  # the only machine whose bf16 crawls beside fp32


def test_profiles_are_labelled_and_calibration_shaped():
    for name in NAMES:
        p = profile(name)
        assert p["origin"] in (SPEC, "measured (efflab.calibrate)") and p["source"]
        assert p["matmul"]["float32"]["flops_per_s"] > 0
        assert p["read_bandwidth_bytes_per_s"] > 0 and p["bandwidth_bytes_per_s"] > 0
    assert all(profile(n)["origin"] == SPEC for n in GPUS)
    with pytest.raises(KeyError, match="no machine profile"):
        profile("tpu")


@pytest.mark.parametrize("name", NAMES)
def test_the_roofline_uses_the_steps_own_format(name):
    p = profile(name)
    roofs = roofs_from_calibration(p)
    fp32 = compute_roof(roofs, "float32")
    assert fp32["flops_per_s"] == p["matmul"]["float32"]["flops_per_s"]
    assert fp32["flops_per_s"] / p["read_bandwidth_bytes_per_s"] == pytest.approx(
        RIDGE_FP32[name], rel=0.005)
    if name in RIDGE_BF16:
        bf16 = compute_roof(roofs, "bfloat16")["flops_per_s"]
        assert bf16 / p["read_bandwidth_bytes_per_s"] == pytest.approx(RIDGE_BF16[name], rel=0.005)
    # every matmul of this size sits right of the fp32 ridge, every layernorm left of it
    peak, bw = fp32["flops_per_s"], p["read_bandwidth_bytes_per_s"]
    assert roof_bound(INTENSITIES["mlp matmul"], peak, bw)["bound"] == "compute"
    assert roof_bound(INTENSITIES["layernorm"], peak, bw)["bound"] == "memory"
    assert roof_bound(INTENSITIES["attention scores"], peak, bw)["bound"] == SCORES_FP32[name]


@pytest.mark.parametrize("name", GPUS)
def test_the_fp32_roof_is_drawn_on_a_gpu(name):
    roofs = roofs_from_calibration(profile(name))
    assert "float32" in {r["format"] for r in roofs["compute"]}


@pytest.mark.parametrize("name", NAMES)
def test_precision_refusal_follows_the_machine(name):
    p = profile(name)
    step = 1e11  # FLOPs: at ~1 GFLOP/s this step takes ~90 s, far past the 1 s limit
    assert refusal(PrecisionConfig("fp32"), step, p) is None  # fp32 is never refused
    if "bfloat16" in p["matmul"]:
        why = refusal(PrecisionConfig("bf16"), step, p)
        assert (why is not None) == (name in BF16_REFUSED), why
        if why:
            assert "GFLOP/s" in why and "refused" in why


@pytest.mark.parametrize("name", NAMES)
def test_decode_bound_and_its_check(name):
    p = profile(name)
    nbytes = get_preset("gpu-gpt2").n_params() * 2  # bf16 weights read once per token
    truth = decode_bound_tokens_per_s(p["read_bandwidth_bytes_per_s"], nbytes)
    assert truth == pytest.approx(p["read_bandwidth_bytes_per_s"] / nbytes)
    assert check.decode_bound(truth, bytes_per_token=nbytes, calibration=p)
    assert not check.decode_bound(truth * 8, bytes_per_token=nbytes, calibration=p)  # bits
    assert not check.decode_bound(1 / truth, bytes_per_token=nbytes, calibration=p)  # s/token


def test_decode_bounds_rank_the_machines():
    nbytes = get_preset("gpu-gpt2").n_params() * 2
    rate = {n: decode_bound_tokens_per_s(profile(n)["read_bandwidth_bytes_per_s"], nbytes)
            for n in NAMES}
    assert rate["gpu-h100"] > rate["gpu-a100"] > rate["cpu-server-avx512bf16"] > rate["gpu-t4"]
    assert rate["gpu-t4"] > rate["cpu-2core-avx2"] > rate["cpu-2core-avx512bf16"]


@pytest.mark.parametrize("name", NAMES)
def test_which_roof_check(name):
    p = profile(name)
    peak, bw = p["matmul"]["float32"]["flops_per_s"], p["read_bandwidth_bytes_per_s"]
    honest = {k: roof_bound(i, peak, bw)["bound"] for k, i in INTENSITIES.items()}
    given = {"intensities": INTENSITIES, "peak_flops": peak, "bandwidth": bw}
    assert check.which_roof(honest, **given)
    flipped = {k: {"memory": "compute", "compute": "memory"}[v] for k, v in honest.items()}
    assert not check.which_roof(flipped, **given)
    fastest = max(v["flops_per_s"] for v in p["matmul"].values())
    against_fastest = {k: roof_bound(i, fastest, bw)["bound"] for k, i in INTENSITIES.items()}
    if against_fastest != honest:  # the tensor-core roof moves verdicts on the GPUs
        assert name in GPUS
        assert not check.which_roof(against_fastest, **given)
    if name in ("gpu-h100", "gpu-t4"):
        assert against_fastest != honest


@pytest.mark.parametrize("name", [n for n in NAMES if "bfloat16" in PROFILES[n]["matmul"]])
def test_mfu_check_of_a_bf16_step(name):
    p = profile(name)
    peak = p["matmul"]["bfloat16"]["flops_per_s"]
    flops = 1e12
    latency_s = flops / (0.4 * peak)  # a step at 40% of the bf16 peak
    record = {"flops": {"per_step": flops, "peak_per_s": peak, "estimate_6n": 0.8 * flops},
              "latency_ms": {"median": latency_s * 1e3}, "knobs": {"precision": "bf16"}}
    assert check.mfu(0.4, record=record, calibration=p)
    assert not check.mfu(40.0, record=record, calibration=p)  # a percentage
    fp32_mfu = flops / latency_s / p["matmul"]["float32"]["flops_per_s"]
    if abs(fp32_mfu - 0.4) > 0.02 * 0.4:  # the fp32 peak differs from the bf16 one here
        assert not check.mfu(fp32_mfu, record=record, calibration=p)


@pytest.mark.parametrize("name", NAMES)
def test_speculation_regime_and_break_even(name):
    p = profile(name)
    bw = p["read_bandwidth_bytes_per_s"]
    target = get_preset("gpu-gpt2").n_params() * 2
    draft = get_preset("cpu-small").n_params() * 2
    # a step at 1.2x its weight-reading bound is weights-bound: the draft costs its share of bytes
    at_bound = batch1_step_regime(p, target, 1.2 * target / bw)
    assert at_bound["regime"] == "weights" and at_bound["ratio"] == pytest.approx(1.2)
    # a step 50x its bound (fixed costs per step) is overhead-bound
    assert batch1_step_regime(p, draft, 50 * draft / bw)["regime"] == "overhead"
    c = draft / target  # the cost ratio where both steps only read their weights
    honest = break_even_alpha(3, c, 1.0)
    assert honest < 0.1  # a draft ~1% of the target's bytes pays at almost any acceptance
    assert check.break_even_acceptance(honest, k=3, cost_ratio=c)
    assert not check.break_even_acceptance(c, k=3, cost_ratio=c)
    # overhead-bound: a draft step costs about a target step; only near-perfect acceptance pays
    assert break_even_alpha(3, 0.9, 1.0) > 0.9


def test_regime_rejects_nonsense():
    with pytest.raises(ValueError):
        batch1_step_regime(profile("gpu-h100"), 0, 1e-3)
