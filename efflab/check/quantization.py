"""Checks for lesson 05 (quantization): group-wise quantize/dequantize, and the decode bound."""

from __future__ import annotations

import math

import torch

from efflab.check.core import (
    Verdict,
    exercise,
    judge_number,
    number,
    probe_outputs,
    probed,
)
from efflab.techniques.quantization import sqnr_db

PROBE_SEED = 5
# (bits, group_size, rows, cols): each group of a row gets its own magnitude (a factor up to
# 100 apart), so one scale per row instead of per group loses many dB
CASES = ((8, 32, 4, 96), (4, 32, 4, 96), (4, 64, 3, 128))
SQNR_SLACK_DB = 1.0


def quant_probes(seed: int = PROBE_SEED) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for bits, G, n, k in CASES:
        w = torch.randn(n, k, generator=g, dtype=torch.float64)  # (n, k)
        mag = 10 ** (-2 * torch.rand(n, k // G, 1, generator=g, dtype=torch.float64))  # (n, k/G, 1)
        w = (w.view(n, k // G, G) * mag).view(n, k)
        w = w.float()  # the learner gets float32, as model weights are
        out.append({"w": w, "bits": bits, "group_size": G})
    return out


def reference_quantize(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Symmetric round-to-nearest, one scale per group: the quality floor an answer must reach."""
    n, k = w.shape
    qmax = 2 ** (bits - 1) - 1
    wg = w.double().view(n, k // group_size, group_size)  # (n, k/G, G)
    scale = (wg.abs().amax(dim=-1, keepdim=True) / qmax).clamp(min=1e-30)  # (n, k/G, 1)
    return ((wg / scale).round().clamp(-qmax, qmax) * scale).view(n, k)


def _levels(values: list[float]) -> tuple[int, float]:
    """How many grid points a group spans (max - min) / step + 1, and the worst off-grid error
    in steps. The step is the smallest gap between distinct values."""
    vs = sorted(set(values))
    if len(vs) == 1:
        return 1, 0.0
    step = min(b - a for a, b in zip(vs, vs[1:]))
    off = max(abs((v - vs[0]) / step - round((v - vs[0]) / step)) for v in vs)
    return round((vs[-1] - vs[0]) / step) + 1, off


@exercise("group_quantize", points=2, topic="quantization", function=True)
def group_quantize(fn, seed: int = PROBE_SEED):
    """``fn(w, bits, group_size) -> w_hat``: quantize each group of ``group_size`` consecutive
    inputs of a row to ``bits``-bit codes with its own scale, and dequantize back (same shape)."""
    probes = quant_probes(seed)
    outs = probe_outputs(lambda **p: torch.as_tensor(fn(p["w"].clone(), p["bits"], p["group_size"]))
                         .double().tolist(), probes)
    return {"seed": int(seed), "outputs": outs}


@group_quantize.judge_with
def _judge_group_quantize(ev: dict) -> Verdict:
    probes, outs = probed(ev, quant_probes, PROBE_SEED)
    expected = (f"≤ 2^bits levels per group and an SQNR within {SQNR_SLACK_DB:g} dB of "
                "round-to-nearest with one scale per group")
    for p, o in zip(probes, outs):
        w, bits, G = p["w"], p["bits"], p["group_size"]
        case = f"{bits}-bit, groups of {G}, w {tuple(w.shape)}"
        if "error" in o:
            return Verdict(False, expected=expected, got=f"{case}: your function raised {o['error']}",
                           hint="it takes w (rows, cols) float32, bits and group_size, and returns "
                                "a tensor of w's shape")
        got = torch.tensor(o["out"], dtype=torch.float64)
        if tuple(got.shape) != tuple(w.shape):
            return Verdict(False, expected=expected,
                           got=f"{case}: shape {tuple(got.shape)}, not {tuple(w.shape)}",
                           hint="return the dequantized weights, same shape as w")
        if not torch.isfinite(got).all():
            return Verdict(False, expected=expected, got=f"{case}: inf or nan in the output",
                           hint="guard the scale of an all-zero group")
        floor = sqnr_db(w, reference_quantize(w, bits, G)) - SQNR_SLACK_DB
        db = sqnr_db(w, got)
        if math.isinf(db):
            return Verdict(False, expected=expected, got=f"{case}: returned w unchanged",
                           hint="round each value to one of the group's 2^bits levels")
        groups = got.view(w.shape[0], -1, G).reshape(-1, G).tolist()
        worst, off = max(_levels(gr) for gr in groups)
        if off > 0.05:  # float32 rounding of code × scale + zero stays far below this
            return Verdict(False, expected=expected,
                           got=f"{case}: the values of a group are not on one evenly spaced grid",
                           hint="dequantize as code × scale (+ zero): one scale per group")
        if worst > 2 ** bits:
            return Verdict(False, expected=expected,
                           got=f"{case}: a group spans {worst} levels, more than 2^{bits} = {2 ** bits}",
                           hint=f"{bits} bits give 2^{bits} codes: clamp the codes to that range")
        if db < floor:
            rows = [_levels(r) for r in got.tolist()]  # a whole row on one grid: one scale
            one_per_row = all(n <= 2 ** bits and o <= 0.05 for n, o in rows)
            hint = ("one scale per group of group_size consecutive inputs, not one per row"
                    if one_per_row else
                    "round to the nearest code (not down), and set each group's scale from its "
                    "own largest |value|")
            return Verdict(False, expected=expected,
                           got=f"{case}: SQNR {db:.1f} dB, below the {floor:.1f} dB it must reach",
                           hint=hint)
    return Verdict(True, expected=expected,
                   got=f"all {len(probes)} cases on grids of ≤ 2^bits levels at full quality")


@exercise("decode_bound", points=1, topic="quantization",
          measured=("read_bandwidth", "copy_bandwidth"))
def decode_bound(answer, bytes_per_token: int, calibration: dict):
    """The bandwidth bound on decode tokens/s at batch 1: read bandwidth ÷ bytes read per token."""
    bw = calibration.get("read_bandwidth_bytes_per_s", calibration["bandwidth_bytes_per_s"])
    return {"answer": number(answer), "bytes_per_token": number(bytes_per_token),
            "read_bandwidth": number(bw), "copy_bandwidth": number(calibration["bandwidth_bytes_per_s"])}


@decode_bound.judge_with
def _judge_decode_bound(ev: dict) -> Verdict:
    nbytes, bw = number(ev["bytes_per_token"]), number(ev["read_bandwidth"])
    if nbytes <= 0 or bw <= 0:
        raise ValueError("bytes per token and bandwidth must be positive")
    truth = bw / nbytes
    return judge_number(
        number(ev["answer"]), truth, rel=0.02, unit="tokens/s",
        expected="the largest tokens/s the read bandwidth allows, within 2%",
        slips=[(truth / 8, "bytes, not bits: the bandwidth is in bytes per second"),
               (truth * 8, "bytes, not bits: the bandwidth is in bytes per second"),
               (1e3 / truth, "that is milliseconds per token; the bound asks for tokens per second"),
               (1 / truth, "that is seconds per token; the bound asks for tokens per second"),
               (truth * 1e6, "bytes per token, not MB"), (truth / 1e6, "bytes per token, not MB"),
               (number(ev["copy_bandwidth"]) / nbytes,
                "decode reads weights: use the read bandwidth, not the copy bandwidth")],
        hint="every weight byte is read once per token: tokens/s ≤ bytes/s ÷ bytes per token")
