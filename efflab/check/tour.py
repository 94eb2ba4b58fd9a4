"""Checks for lesson 00 (the tour): MFU from a record and the machine's calibration (code), bits
per byte from a model's raw logits (code), and the number-answer versions of both (no longer in
the lesson)."""

from __future__ import annotations

import copy
import math
import random

import torch

from efflab.check.core import (
    Verdict,
    exercise,
    first_slip,
    judge_number,
    judge_probed_numbers,
    number,
    probe_outputs,
)

LN2 = math.log(2)


@exercise("mfu", points=1, topic="tour", measured=("latency_ms", "peak_per_s", "fp32_peak_per_s"))
def mfu(answer, record: dict, calibration: dict):
    """MFU of a measured step: its counted FLOPs per second ÷ the peak of its own number format."""
    fl = record["flops"]
    return {"answer": number(answer), "flops_per_step": number(fl["per_step"]),
            "latency_ms": number(record["latency_ms"]["median"]),
            "peak_per_s": number(fl["peak_per_s"]),
            "fp32_peak_per_s": number(calibration["matmul"]["float32"]["flops_per_s"]),
            "estimate_6n": number(fl.get("estimate_6n", math.nan)),
            "precision": str(record["knobs"]["precision"])}


@mfu.judge_with
def _judge_mfu(ev):
    flops, s = number(ev["flops_per_step"]), number(ev["latency_ms"]) / 1e3
    peak = number(ev["peak_per_s"])
    truth = flops / s / peak
    return judge_number(
        number(ev["answer"]), truth, rel=0.02,
        expected=f"the MFU of this {ev['precision']} step, a fraction between 0 and 1, within 2%",
        slips=[(truth * 100, "MFU is a fraction (0.25), not a percentage (25)"),
               (truth / 1e3, "latency_ms is in milliseconds: convert to seconds"),
               (truth * 1e3, "latency_ms is in milliseconds: convert to seconds"),
               (number(ev["estimate_6n"]) / s / peak,
                "use the FLOPs the counter measured (flops.per_step), not the 6·N estimate"),
               (flops / s / number(ev["fp32_peak_per_s"]),
                "compare with the peak of the run's own number format (flops.peak_per_s)"),
               (peak * s / flops, "upside down: achieved FLOP/s ÷ peak FLOP/s")],
        hint="MFU sets the FLOP rate this step achieved beside the peak this machine can reach "
             "in the step's own number format")


@exercise("bits_per_byte", points=1, topic="tour")
def bits_per_byte(answer, val_loss: float):
    """Bits per byte from a held-out cross-entropy loss (in nats, per byte)."""
    return {"answer": number(answer), "val_loss": number(val_loss)}


@bits_per_byte.judge_with
def _judge_bits_per_byte(ev):
    loss = number(ev["val_loss"])
    if not loss > 0:
        raise ValueError(f"val_loss must be positive, got {loss}")
    truth = loss / LN2
    return judge_number(
        number(ev["answer"]), truth, rel=0.005, expected="bits per byte within 0.5%",
        slips=[(loss, "the loss is in nats (natural log); a bit is log base 2"),
               (loss * LN2, "to turn nats into bits, divide by ln 2 (there are more bits than nats)"),
               (loss / math.log(10), "that is base 10 (digits); bits are base 2"),
               (loss / LN2 * 8, "the loss is already per byte: no factor 8")],
        hint="nats and bits measure the same surprise with logarithms of different bases; "
             "convert from one base to the other")


# -- bits per byte from a model's raw output, as code ---------------------------------------

BPB_PROBE_SEED = 0


def bpb_probes(seed: int = BPB_PROBE_SEED) -> list[dict]:
    """Seeded logits over the 256 byte values and the bytes that followed: several shapes,
    confident and unsure models, and logits shifted far from zero (the same distribution: a
    shift cancels in softmax, but exp() of them overflows)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(6):
        B, T = (1, 2, 3, 4, 2, 1)[i], (5, 16, 7, 32, 9, 64)[i]
        logits = torch.randn(B, T, 256, generator=g) * (0.5, 2.0, 4.0, 1.0, 8.0, 3.0)[i]
        if i in (2, 4):
            logits = logits + 120.0
        targets = torch.randint(0, 256, (B, T), generator=g)
        out.append({"logits": logits, "targets": targets})
    return out


def reference_bpb(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cross-entropy of the targets under the logits, in bits (float64)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return float(-logp.gather(-1, targets.unsqueeze(-1)).mean() / LN2)


@exercise("bits_per_byte_of", points=2, topic="tour", function=True)
def bits_per_byte_of(fn, seed: int = BPB_PROBE_SEED):
    """``fn(logits, targets) -> bits per byte``: logits (B, T, 256), the byte that came next
    at each position (B, T)."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, bpb_probes(seed))}


def _bpb_slip_hint(got: float, p: dict) -> str:
    if not math.isfinite(got):
        return ("exp() of large logits overflows; work with log-probabilities, which stay "
                "finite (the largest logit can be taken out first)")
    want = reference_bpb(**p)
    lg, t = p["logits"].double(), p["targets"]
    raw = float(-lg.gather(-1, t.unsqueeze(-1)).mean() / LN2)
    return first_slip(got, [
            (want * LN2, "that is in nats; a bit is a base-2 logarithm"),
            (want * LN2 / math.log(10), "that is base 10; bits are base 2"),
            (want * t.numel(), "per byte: average over every position, do not sum"),
            (want * t.shape[-1], "per byte: average over every position, do not sum"),
            (raw, "turn the logits into log-probabilities first (they are not normalised)"),
            (-want, "cross-entropy is minus the log-probability of the byte that came")],
        "bits per byte is the average, over every position, of how surprised the model is "
        "by the byte that came next, in bits", rel=1e-4)


@bits_per_byte_of.judge_with
def _judge_bpb_of(ev: dict) -> Verdict:
    return judge_probed_numbers(
        ev, bpb_probes, BPB_PROBE_SEED, reference_bpb,
        expected="bits per byte of unseen batches of logits, within 0.01%",
        case=lambda i, p: f"batch {i + 1} (B={p['logits'].shape[0]}, T={p['logits'].shape[1]})",
        takes="it takes logits (B, T, 256) and targets (B, T), torch tensors",
        slip_hint=_bpb_slip_hint, unit="bits per byte", rel=1e-4)


# -- MFU from a record and the machine's calibration, as code -------------------------------

MFU_PROBE_SEED = 4
_PRECISION_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16",
                    "bf16-pure": "bfloat16"}


def mfu_probes(seed: int = MFU_PROBE_SEED) -> list[dict]:
    """Seeded records of training steps shaped as ``efflab.measure`` writes them, less the MFU
    and the peak it already holds, beside calibrations of other machines: a slow laptop, this
    kind of CPU, a GPU-like one whose bf16 peak is 15x its fp32 peak. Formats vary; the first
    probe is fp32, the second bf16."""
    rng = random.Random(seed)
    machines = [(2.5e9, 0.9, 1.1), (60e9, 1.8, 2.9), (60e12, 15.0, 15.5)]
    out = []
    for i in range(8):
        fp32, r_bf16, r_fp16 = machines[i % 3]
        cal = {"matmul": {"float32": {"flops_per_s": fp32 * rng.uniform(0.8, 1.2)},
                          "bfloat16": {"flops_per_s": fp32 * r_bf16 * rng.uniform(0.8, 1.2)},
                          "float16": {"flops_per_s": fp32 * r_fp16 * rng.uniform(0.8, 1.2)}},
               "bandwidth_bytes_per_s": fp32 / rng.uniform(5, 50)}
        precision = ("fp32", "bf16")[i] if i < 2 else rng.choice(list(_PRECISION_DTYPE))
        dtype = _PRECISION_DTYPE[precision]
        per_step = rng.uniform(1e9, 5e11) * (1e3 if i % 3 == 2 else 1)
        s = per_step / (cal["matmul"][dtype]["flops_per_s"] * rng.uniform(0.05, 0.6))
        med = s * 1e3
        record = {"workload": "train",
                  "knobs": {"precision": precision, "batch_size": rng.choice((1, 4, 8, 16)),
                            "workload": "train"},
                  "model": {"compute_dtype": dtype},
                  "latency_ms": {"median": med, "p25": med * rng.uniform(0.85, 0.98),
                                 "p75": med * rng.uniform(1.02, 1.2),
                                 "mean": med * rng.uniform(1.05, 1.3), "n": rng.randint(5, 40)},
                  "flops": {"per_step": per_step,
                            "estimate_6n": per_step * rng.uniform(0.7, 0.9)}}
        out.append({"record": record, "calibration": cal})
    return out


def reference_mfu(record: dict, calibration: dict) -> float:
    """Counted FLOPs per second of the median step ÷ the calibrated peak of the step's own
    compute format."""
    dtype = _PRECISION_DTYPE[record["knobs"]["precision"]]
    step_s = record["latency_ms"]["median"] / 1e3
    return record["flops"]["per_step"] / step_s / calibration["matmul"][dtype]["flops_per_s"]


@exercise("mfu_of", points=2, topic="tour", function=True)
def mfu_of(fn, seed: int = MFU_PROBE_SEED):
    """``fn(record, calibration) -> MFU``: a training step's record (as ``efflab.measure``
    writes it, less its own MFU and peak) and the calibration of the machine it ran on."""
    return {"seed": int(seed), "outputs": probe_outputs(
        lambda record, calibration: fn(copy.deepcopy(record), copy.deepcopy(calibration)),
        mfu_probes(seed))}


def _mfu_slip_hint(got: float, p: dict) -> str:
    rec, cal = p["record"], p["calibration"]
    want = reference_mfu(rec, cal)
    fl, lat = rec["flops"], rec["latency_ms"]
    fp32 = cal["matmul"]["float32"]["flops_per_s"]
    return first_slip(got, [
            (want * 100, "MFU is a fraction (0.25), not a percentage (25)"),
            (want / 1e3, "the latency is in milliseconds: convert it to seconds"),
            (want * 1e3, "the latency is in milliseconds: convert it to seconds"),
            (want * fl["estimate_6n"] / fl["per_step"],
             "use the FLOPs the counter measured, not the 6·N estimate"),
            (want * cal["matmul"][_PRECISION_DTYPE[rec["knobs"]["precision"]]]["flops_per_s"] / fp32,
             "compare with the peak of the step's own number format (its precision knob)"),
            (want * lat["median"] / lat["mean"], "the record's latency is its median step"),
            (1 / want if want else None, "upside down: achieved FLOP/s ÷ peak FLOP/s")],
        "MFU sets the FLOP rate this step achieved beside the peak its machine reaches in "
        "the step's own number format", want=want, rel=1e-4)


@mfu_of.judge_with
def _judge_mfu_of(ev: dict) -> Verdict:
    return judge_probed_numbers(
        ev, mfu_probes, MFU_PROBE_SEED, reference_mfu,
        expected="the MFU of unseen records on other machines and formats, within 0.01%",
        case=lambda i, p: (f"record {i + 1} ({p['record']['knobs']['precision']}, fp32 peak "
                           f"{p['calibration']['matmul']['float32']['flops_per_s']:.2g} FLOP/s)"),
        takes="it takes a record and a calibration, two dicts (look inside them)",
        slip_hint=_mfu_slip_hint, rel=1e-4)
