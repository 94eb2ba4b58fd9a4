"""Checks for lesson 03 (activation checkpointing): what a step keeps, and what recomputing costs."""

from __future__ import annotations

import random
from types import SimpleNamespace

from efflab.check.core import (
    Verdict,
    close,
    exercise,
    judge_number,
    judge_probed_numbers,
    miss_band,
    number,
    probe_outputs,
)
from efflab.core.config import CHECKPOINTINGS as MODES
from efflab.techniques.checkpointing import CheckpointingConfig, activation_breakdown

PROBE_SEED = 3


def kept_probes(seed: int = PROBE_SEED) -> list[dict]:
    """Seeded shapes, every mode, fp32 and 16-bit activations."""
    rng = random.Random(seed)
    out = []
    for i in range(9):
        out.append({"B": rng.choice((1, 2, 4, 8, 16)), "T": rng.choice((32, 64, 128, 256)),
                    "C": rng.choice((64, 128, 256)), "n_layer": rng.choice((2, 4, 6, 12)),
                    "mode": MODES[i % 3], "bytes_per_value": (4, 2)[i // 6]})
    return out


def reference_kept_bytes(B: int, T: int, C: int, n_layer: int, mode: str,
                         bytes_per_value: int = 4) -> int:
    """What the blocks keep from forward to backward (the technique's own ``saved`` term)."""
    cfg = SimpleNamespace(n_embd=C, n_layer=n_layer, vocab_size=256)
    return activation_breakdown(cfg, B, T, CheckpointingConfig(mode), bytes_per_value)["saved"]


@exercise("kept_activations", points=2, topic="checkpointing", function=True)
def kept_activations(fn, seed: int = PROBE_SEED):
    """``fn(B, T, C, n_layer, mode, bytes_per_value) -> bytes`` the blocks keep for backward."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, kept_probes(seed))}


def _kept_slip_hint(got: float, p: dict) -> str:
    want = reference_kept_bytes(**p)
    per_layer = got / (p["B"] * p["T"] * p["C"] * p["bytes_per_value"] * p["n_layer"])
    if got * p["bytes_per_value"] == want:
        return "that counts values; multiply by the bytes per value"
    if p["mode"] == "none":
        return ("a plain block keeps every tensor its backward will read: count them in the "
                "lesson's table, minding which are as wide as the MLP's hidden layer and that "
                "attention keeps q, k and v apart")
    if p["mode"] == "blocks" and abs(per_layer - 17) < 1e-9:
        return "a checkpointed block keeps only its input; the rest is rebuilt in backward"
    if p["mode"] == "blocks":
        return ("a checkpointed block keeps one tensor, its input (the size of the residual "
                "stream); the rest is rebuilt in backward")
    return "selective recomputes only the MLP's two 4C-wide hidden tensors (GELU's input and output)"


@kept_activations.judge_with
def _judge_kept(ev: dict) -> Verdict:
    return judge_probed_numbers(
        ev, kept_probes, PROBE_SEED, reference_kept_bytes,
        expected=f"bytes kept for backward, for unseen shapes in modes {', '.join(MODES)}",
        case=lambda i, p: (f"B={p['B']}, T={p['T']}, C={p['C']}, n_layer={p['n_layer']}, "
                           f"mode={p['mode']!r}, {p['bytes_per_value']} bytes per value"),
        takes="it takes B, T, C, n_layer, mode, bytes_per_value",
        slip_hint=_kept_slip_hint, unit="bytes")


def _latency(df, mode: str) -> float:
    rows = df[(df["knobs.checkpointing"] == mode) & (df["status"] == "ok")]
    if rows.empty:
        raise ValueError(f"no successful measurement with checkpointing={mode!r} in the sweep")
    return number(rows.iloc[0]["latency_ms.median"])


@exercise("recompute_overhead", points=1, topic="checkpointing",
          measured=("latency_ms", "latency_ms_none"))
def recompute_overhead(answer, df, mode: str = "blocks"):
    """Extra step time of ``mode`` over no checkpointing, as a fraction, from your own sweep."""
    return {"answer": number(answer), "mode": str(mode), "latency_ms": _latency(df, mode),
            "latency_ms_none": _latency(df, "none")}


@recompute_overhead.judge_with
def _judge_overhead(ev: dict) -> Verdict:
    with_ck, plain = number(ev["latency_ms"]), number(ev["latency_ms_none"])
    if with_ck <= 0 or plain <= 0:
        raise ValueError("latencies must be positive")
    truth = with_ck / plain - 1
    got = number(ev["answer"])
    expected = (f"{ev['mode']}'s extra step time as a fraction of the plain step's (0.25 = 25% "
                "slower), from your sweep's medians")
    slips = [(truth * 100, "as a fraction (0.25), not a percentage (25)"),
             (truth + 1, "that is the ratio of the two times; the extra is the ratio minus 1"),
             (plain / with_ck - 1, "upside down: the extra time is relative to the plain step"),
             (1 - plain / with_ck, "the extra time is relative to the step *without* "
              "checkpointing, not the slower one")]
    # The slip "extra ÷ the time with checkpointing" lies only (overhead)² away from the truth,
    # inside any fixed tolerance when the overhead is small: an answer nearer a slip than the
    # truth is that slip, whatever the overhead's size. At a small overhead the percentage and
    # the ratio lie close together too: the nearest slip names the mistake.
    near = [(abs(got - value), slip_hint) for value, slip_hint in slips
            if value != truth and abs(got - value) < abs(got - truth) and close(got, value, rel=0.02)]
    if near:
        return Verdict(False, expected=expected, got=f"{got:,.6g} ({miss_band(got, truth)})",
                       hint=min(near)[1])
    return judge_number(
        got, truth, rel=0.02, expected=expected, slips=slips,
        hint="the overhead is how much longer a step with checkpointing takes, relative to "
             "the plain step, both read from your own sweep")
