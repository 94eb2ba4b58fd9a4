"""Checks for lesson 01 (batching): throughput from a measured latency."""

from __future__ import annotations

import math

from efflab.check.core import Verdict, close, exercise, miss_band, number


def _row(df, batch_size: int):
    """The successful measurement at ``batch_size`` in a sweep DataFrame (or a record dict)."""
    if isinstance(df, dict):  # one record
        return {"latency_ms": number(df["latency_ms"]["median"]),
                "tokens_per_step": number(df["throughput"]["tokens_per_step"])}
    rows = df[(df["knobs.batch_size"] == batch_size) & (df["status"] == "ok")]
    if rows.empty:
        raise ValueError(f"no successful measurement at batch_size={batch_size} in the sweep "
                         f"(batches measured: {sorted(set(df['knobs.batch_size']))})")
    r = rows.iloc[0]
    return {"latency_ms": number(r["latency_ms.median"]),
            "tokens_per_step": number(r["throughput.tokens_per_step"])}


@exercise("throughput", points=1, topic="batching", measured=("latency_ms",))
def throughput(answer, df, batch_size: int):
    """Tokens per second of the ``batch_size`` point of a sweep, from its median latency."""
    return {"answer": number(answer), "batch_size": int(batch_size), **_row(df, batch_size)}


@throughput.judge_with
def _judge_throughput(ev: dict) -> Verdict:
    b, ms, tokens = int(ev["batch_size"]), number(ev["latency_ms"]), number(ev["tokens_per_step"])
    if b < 1 or ms <= 0 or tokens < b:
        raise ValueError(f"impossible measurement: batch {b}, {ms} ms, {tokens} tokens")
    truth = tokens / (ms / 1e3)
    got = number(ev["answer"])
    expected = f"tokens/s of batch {b} within 2%"
    got_text = f"{got:,.6g} tokens/s" if math.isfinite(got) else str(got)
    if close(got, truth, rel=0.02):
        return Verdict(True, expected=expected, got=got_text + " (within 2%)")
    t = tokens / b  # sequence length
    slips = [
        (truth / 1e3, "latency_ms is in milliseconds: convert it to seconds first"),
        (truth * 1e3, "latency_ms is in milliseconds: convert it to seconds first"),
        (truth / t, "count tokens, not sequences: every sequence in the batch holds T tokens"),
        (truth / b, "a step processes all B sequences of the batch at once"),
        (1 / truth, "that is seconds per token; throughput is tokens per second"),
    ]
    for value, hint in slips:
        if close(got, value, rel=0.02):
            return Verdict(False, expected=expected, got=f"{got_text} ({miss_band(got, truth)})",
                           hint=hint)
    return Verdict(False, expected=expected, got=f"{got_text} ({miss_band(got, truth)})",
                   hint="tokens per step ÷ the step's latency in seconds; tokens per step = B·T")


@exercise("saturation", points=1, topic="batching", measured=("points",))
def saturation(answer, df, fraction: float = 0.9):
    """The smallest measured batch whose throughput reaches ``fraction`` of the best one."""
    ok = df[df["status"] == "ok"].sort_values("knobs.batch_size")
    points = [[int(b), number(t)] for b, t in zip(ok["knobs.batch_size"],
                                                   ok["throughput.tokens_per_s"])]
    if not points:
        raise ValueError("the sweep has no successful measurement")
    return {"answer": int(number(answer)) if number(answer).is_integer() else number(answer),
            "points": points, "fraction": float(fraction)}


@saturation.judge_with
def _judge_saturation(ev: dict) -> Verdict:
    pts = sorted((int(b), number(t)) for b, t in ev["points"])
    frac = number(ev["fraction"])
    if not pts or not 0 < frac <= 1:
        raise ValueError("no points, or a fraction outside (0, 1]")
    best_b, best = max(pts, key=lambda p: p[1])
    truth = next(b for b, t in pts if t >= frac * best)
    got = number(ev["answer"])
    expected = f"the first batch reaching {frac:.0%} of the best measured tokens/s"
    batches = [b for b, _ in pts]
    if got == truth:
        return Verdict(True, expected=expected, got=f"batch {int(got)}")
    if got not in batches:
        return Verdict(False, expected=expected, got=f"{got:g}, not a measured batch",
                       hint="answer with one of the batch sizes your sweep measured")
    if got == best_b:
        hint = (f"batch {int(got)} has the highest throughput; the question is where the curve "
                f"first comes within {frac:.0%} of it")
    elif got < truth:
        hint = f"at that batch throughput is still below {frac:.0%} of the best"
    else:
        hint = f"a smaller measured batch already comes within {frac:.0%} of the best"
    return Verdict(False, expected=expected, got=f"batch {int(got)}", hint=hint)
