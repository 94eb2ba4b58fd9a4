"""Checks for lesson 00 (the tour): reading MFU and bits per byte from records."""

from __future__ import annotations

import math

from efflab.check.core import exercise, judge_number, number

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
        hint="achieved FLOP/s = FLOPs per step ÷ seconds per step; MFU = achieved ÷ peak")


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
        hint="one nat is 1/ln 2 ≈ 1.44 bits")
