"""Checks for lesson 01 (batching): throughput from a measured latency, where it saturates, and
the largest batch a memory budget holds (code)."""

from __future__ import annotations

import math
import random

from efflab.check.core import (
    Verdict,
    close,
    exercise,
    first_slip,
    miss_band,
    number,
    probe_outputs,
    probed,
)


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


# -- the largest batch a memory budget holds, as code ---------------------------------------

FIT_PROBE_SEED = 1


def fit_probes(seed: int = FIT_PROBE_SEED) -> list[dict]:
    """Seeded budgets: fixed bytes (weights, optimizer state), bytes per sequence, a budget and
    its headroom; some land exactly on a batch's edge, some leave room for none."""
    rng = random.Random(seed)
    out = []
    for i in range(10):
        per_seq = rng.choice((3, 5, 7, 11)) * 2 ** rng.randint(16, 24)
        fixed = rng.randint(1, 400) * 2**20
        headroom = rng.choice((1.0, 0.875, 0.75, 0.5))  # exact in binary: the edge is exact too
        b = rng.randint(1, 300)
        budget = int((fixed + b * per_seq) / headroom)
        if i % 3 == 0:        # exactly on the edge: batch b fills the usable budget to the byte
            headroom = (1.0, 0.5)[i % 2]
            budget = int((fixed + b * per_seq) / headroom)
        elif i == 4:          # the fixed part alone overflows: nothing fits
            budget = int(fixed / headroom) - 1
        else:
            budget += rng.randint(1, per_seq - 1)
        out.append({"fixed_bytes": fixed, "bytes_per_sequence": per_seq,
                    "budget_bytes": budget, "headroom": headroom})
    return out


def reference_fit(fixed_bytes: float, bytes_per_sequence: float, budget_bytes: float,
                  headroom: float) -> int:
    """The largest B ≥ 0 with fixed + B · per sequence ≤ headroom · budget (0 when none fits)."""
    usable = headroom * budget_bytes
    if fixed_bytes > usable:
        return 0
    b = int((usable - fixed_bytes) // bytes_per_sequence)
    while fixed_bytes + (b + 1) * bytes_per_sequence <= usable:
        b += 1
    while b > 0 and fixed_bytes + b * bytes_per_sequence > usable:
        b -= 1
    return b


@exercise("largest_fitting_batch", points=2, topic="batching", function=True)
def largest_fitting_batch(fn, seed: int = FIT_PROBE_SEED):
    """``fn(fixed_bytes, bytes_per_sequence, budget_bytes, headroom) -> B``: the largest batch
    whose memory stays within ``headroom`` × the budget (0 if none does)."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, fit_probes(seed))}


def _fit_slip_hint(got: float, p: dict) -> str:
    f, s, m, h = p["fixed_bytes"], p["bytes_per_sequence"], p["budget_bytes"], p["headroom"]
    want = reference_fit(**p)
    usable = h * m
    if got < 0:
        return "when even the fixed part does not fit, no batch does: 0"
    return first_slip(got, [
            (want + 1, "a batch fits only if its memory stays within the usable budget: round down"),
            (want - 1, "a batch that fills the usable budget exactly still fits"),
            (reference_fit(f, s, m, 1.0), "keep the headroom: only that fraction of the budget "
             "may be planned"),
            (reference_fit(0, s, m, h), "the weights and optimizer state take their share of "
             "the budget before the first sequence"),
            ((usable - f) / s, "a batch is a whole number of sequences")],
        "memory is a fixed part plus a part that grows by the same amount per sequence; "
        "find the last batch that stays within the usable budget", want=want)


@largest_fitting_batch.judge_with
def _judge_fit(ev: dict) -> Verdict:
    probes, outs = probed(ev, fit_probes, FIT_PROBE_SEED)
    expected = f"the largest batch that fits, for {len(probes)} budgets"
    for p, o in zip(probes, outs):
        case = (f"fixed {p['fixed_bytes']:,} B, {p['bytes_per_sequence']:,} B per sequence, "
                f"budget {p['budget_bytes']:,} B, headroom {p['headroom']}")
        if "error" in o:
            return Verdict(False, expected=expected, got=f"{case}: your function raised {o['error']}",
                           hint="it takes fixed_bytes, bytes_per_sequence, budget_bytes, headroom")
        got, want = number(o["out"]), reference_fit(**p)
        if got == want:
            continue
        side = "too large" if got > want else "too small"
        return Verdict(False, expected=expected, got=f"{case}: batch {got:g} ({side})",
                       hint=_fit_slip_hint(got, p))
    return Verdict(True, expected=expected, got=f"all {len(probes)} exact")
