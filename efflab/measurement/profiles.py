"""Machine profiles: calibrations (the shape :func:`efflab.calibrate` returns) of machines this
lab may run on, so that every verdict that depends on the hardware can be tested against each.

Two are measured (by ``efflab.calibrate()`` on 2-core cloud VMs, numbers copied here with the
date); the others are from public spec sheets, labelled ``"spec sheet, not measured"`` with the
source named. A spec sheet gives one memory bandwidth: it stands for both the read and the
copy bandwidth. A format a spec sheet gives no number for is left out of ``matmul`` (the T4 has
no bf16 tensor cores; Zen 4 has no fp16 arithmetic), never guessed. GPU fp32 is the CUDA-core
rate (PyTorch's default matmul does not use TF32), bf16/fp16 the dense tensor-core rate (the
datasheets' larger figures assume 2:4 sparsity).

:func:`batch1_step_regime` is the one verdict here: whether a batch-1 decode step is bound by
reading its weights or by the fixed cost of each step (what decides the cost of a speculative
draft, lesson 10).
"""

from __future__ import annotations

from efflab.measurement.hardware import CALIBRATION_SCHEMA

SPEC = "spec sheet, not measured"
MEASURED = "measured (efflab.calibrate)"


def _profile(name: str, device: str, matmul: dict, read_bw: float, copy_bw: float,
             source: str, origin: str, **extra) -> dict:
    return {"schema": CALIBRATION_SCHEMA, "device": device, "fingerprint": f"profile-{name}",
            "threads": extra.pop("threads", None),
            "matmul": {k: {"flops_per_s": float(v), "sizes": []} for k, v in matmul.items()},
            "bandwidth_bytes_per_s": float(copy_bw), "read_bandwidth_bytes_per_s": float(read_bw),
            "quick": False, "profile": name, "origin": origin, "source": source, **extra}


PROFILES: dict[str, dict] = {
    # the 2-core AMD EPYC VM the lessons were first written on (AVX2 path: bf16/fp16 ~1 GFLOP/s)
    "cpu-2core-avx2": _profile(
        "cpu-2core-avx2", "cpu",
        {"float32": 142.73e9, "bfloat16": 1.0939e9, "float16": 1.2010e9}, 27.18e9, 25.12e9,
        "efflab.calibrate() on a 2-core AMD EPYC VM, 2026-11-22T01:06 (stored in "
        "benchmarks/results/cpu_small_train_mfu.json)", MEASURED, threads=2),
    # the 2-core VM with AVX-512 BF16 of 2026-12-03 (measured while busy: load 4.85)
    "cpu-2core-avx512bf16": _profile(
        "cpu-2core-avx512bf16", "cpu",
        {"float32": 116.99e9, "bfloat16": 89.81e9, "float16": 62.25e9}, 3.471e9, 4.068e9,
        "efflab.calibrate() on a 2-core Xeon VM with avx512_bf16, 2026-12-03T13:21, load "
        "average 4.85 (its bandwidths are low for it)", MEASURED, threads=2),
    # AMD EPYC 9654 (Zen 4, 96 cores): AVX-512 on 2 x 256-bit FMA pipes = 32 fp32 FLOP/cycle,
    # VDPBF16PS twice that; 96 cores x 2.4 GHz base; 12 channels DDR5-4800
    "cpu-server-avx512bf16": _profile(
        "cpu-server-avx512bf16", "cpu",
        {"float32": 96 * 2.4e9 * 32, "bfloat16": 96 * 2.4e9 * 64}, 460.8e9, 460.8e9,
        "AMD EPYC 9654 product page (96 cores, 2.4 GHz base, 460.8 GB/s per socket); FLOP/s = "
        "cores x base clock x FLOP/cycle of Zen 4's AVX-512 (fp32 FMA) and AVX512_BF16", SPEC),
    "gpu-t4": _profile(
        "gpu-t4", "cuda", {"float32": 8.1e12, "float16": 65e12}, 320e9, 320e9,
        "NVIDIA T4 Tensor Core GPU datasheet: 8.1 TFLOPS FP32, 65 TFLOPS mixed FP16/FP32, "
        "320 GB/s GDDR6", SPEC),
    "gpu-a100": _profile(
        "gpu-a100", "cuda", {"float32": 19.5e12, "bfloat16": 312e12, "float16": 312e12},
        2039e9, 2039e9,
        "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM): 19.5 TFLOPS FP32, 312 TFLOPS "
        "BF16/FP16 tensor (dense), 2,039 GB/s HBM2e", SPEC),
    "gpu-h100": _profile(
        "gpu-h100", "cuda", {"float32": 67e12, "bfloat16": 989.5e12, "float16": 989.5e12},
        3.35e12, 3.35e12,
        "NVIDIA H100 Tensor Core GPU datasheet (SXM): 67 TFLOPS FP32, 1,979 TFLOPS BF16/FP16 "
        "tensor with sparsity (989.5 dense), 3.35 TB/s HBM3", SPEC),
}


def profile(name: str) -> dict:
    """A copy of one machine profile (a calibration dict with ``origin`` and ``source``)."""
    if name not in PROFILES:
        raise KeyError(f"no machine profile {name!r}; known: {', '.join(PROFILES)}")
    p = PROFILES[name]
    return {**p, "matmul": {k: dict(v) for k, v in p["matmul"].items()}}


def batch1_step_regime(calibration: dict, weight_bytes: float, step_s: float,
                       factor: float = 2.0) -> dict:
    """Is a batch-1 decode step of ``step_s`` seconds bound by reading its ``weight_bytes``?

    The bound is weight bytes ÷ the calibrated read bandwidth. Within ``factor`` of it the step
    is ``"weights"``-bound (a draft then costs about its share of the bytes); further above it,
    ``"overhead"``-bound: the fixed cost of each step (kernel launches, Python, small ops)
    dominates, and a smaller draft is not much cheaper than the target."""
    if weight_bytes <= 0 or step_s <= 0:
        raise ValueError(f"weight_bytes={weight_bytes!r}, step_s={step_s!r}: both must be > 0")
    bw = calibration.get("read_bandwidth_bytes_per_s") or calibration["bandwidth_bytes_per_s"]
    bound = weight_bytes / bw
    ratio = step_s / bound
    return {"bound_s": bound, "step_s": step_s, "ratio": ratio,
            "regime": "weights" if ratio <= factor else "overhead"}


__all__ = ["PROFILES", "SPEC", "MEASURED", "profile", "batch1_step_regime"]
