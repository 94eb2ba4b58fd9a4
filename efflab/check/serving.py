"""Checks for lesson 11 (serving): the most KV memory a paged cache can waste, and which
scheduling policy meets a p99 time-to-first-token target at a given load (from your own runs)."""

from __future__ import annotations

import math
import random

from efflab.check.core import (
    Verdict,
    exercise,
    first_slip,
    judge_probed_numbers,
    number,
    probe_outputs,
)

POLICY_ANSWERS = ("static", "continuous", "both", "neither")


def _row_at(rows: list[dict], policy: str, rate: float) -> dict | None:
    mine = [r for r in rows if r["policy"] == policy]
    if not mine:
        return None
    return min(mine, key=lambda r: abs(math.log(number(r["rate"]) / rate)))


def policy_verdict(rows: list[dict], rate: float, target_s: float, metric: str = "ttft_p99") -> str:
    """Which policies' measured ``metric`` at the load nearest ``rate`` is within ``target_s``."""
    ok = []
    for policy in ("static", "continuous"):
        r = _row_at(rows, policy, rate)
        if r is not None and number(r[metric]) <= target_s:
            ok.append(policy)
    return {0: "neither", 2: "both"}.get(len(ok), ok[0] if ok else "neither")


# the rate and target come from measured capacity; p99 queueing delays near overload vary by
# several times between two honest runs, so they are compared within 10x
@exercise("policy_meets_ttft", points=2, topic="serving",
          measured=("rows", "rate", "target_s"), measured_factor=10.0)
def policy_meets_ttft(answer, *, rows, rate, ttft_p99_target_s):
    """Which policy ("static", "continuous", "both" or "neither") keeps p99 time to first
    token within ``ttft_p99_target_s`` at the offered ``rate`` (requests/s), judged on
    ``rows``, your own load sweep (policy, rate, ttft_p50, ttft_p99, throughput_tok_s)."""
    a = str(answer).strip().lower()
    if a not in POLICY_ANSWERS:
        raise ValueError(f"answer with one of {POLICY_ANSWERS}, not {answer!r}")
    keep = ("policy", "rate", "ttft_p50", "ttft_p99", "throughput_tok_s")
    return {"answer": a, "rate": number(rate), "target_s": number(ttft_p99_target_s),
            "rows": [{k: (r[k] if k == "policy" else number(r[k])) for k in keep} for r in rows]}


@policy_meets_ttft.judge_with
def _judge_policy(ev: dict) -> Verdict:
    rows, rate, target = ev["rows"], number(ev["rate"]), number(ev["target_s"])
    truth = policy_verdict(rows, rate, target)
    by_p50 = policy_verdict(rows, rate, target, "ttft_p50")
    got = ev["answer"]
    expected = (f"the policies whose measured p99 TTFT at about {rate:g} req/s is at most "
                f"{target * 1e3:g} ms")
    if got == truth:
        return Verdict(True, expected=expected, got=got)
    if got == by_p50 and by_p50 != truth:
        hint = "that holds for the median (p50); the target is on p99 — the slowest 1%"
    elif truth in ("both", "neither"):
        hint = "read both policies' p99 at that load; compare each with the target"
    else:
        hint = ("throughput is not the criterion: compare each policy's p99 TTFT at that "
                "offered load with the target")
    return Verdict(False, expected=expected, got=got, hint=hint)


WASTE_PROBE_SEED = 11


def waste_probes(seed: int = WASTE_PROBE_SEED) -> list[dict]:
    """Seeded running batches, both layouts: sequence lengths (some an exact number of blocks),
    block sizes, the longest a sequence may become, bytes per position."""
    rng = random.Random(seed)
    out = []
    for i in range(8):
        bs = rng.choice((4, 8, 16, 32))
        max_len = bs * rng.choice((4, 8, 16))
        lengths = [rng.randint(1, max_len) for _ in range(rng.randint(2, 12))]
        lengths[0] = bs * rng.randint(1, max_len // bs)  # a full last block: nothing empty
        rng.shuffle(lengths)
        out.append({"lengths": lengths, "layout": ("paged", "contiguous")[i % 2],
                    "block_size": bs, "max_len": max_len,
                    "bytes_per_position": rng.choice((256, 1024, 6144, 49152))})
    return out


def reference_waste_bytes(lengths: list[int], layout: str, block_size: int, max_len: int,
                          bytes_per_position: int) -> int:
    """Reserved but empty bytes, as ``serving.KVPool`` reserves: a contiguous sequence holds
    ``max_len`` positions from admission, a paged one whole blocks of ``block_size``."""
    if layout == "contiguous":
        reserved = max_len * len(lengths)
    else:
        reserved = sum(-(-n // block_size) * block_size for n in lengths)
    return (reserved - sum(lengths)) * bytes_per_position


@exercise("kv_waste", points=2, topic="serving", function=True)
def kv_waste(fn, seed: int = WASTE_PROBE_SEED):
    """``fn(lengths, layout, block_size, max_len, bytes_per_position) -> bytes`` a KV cache
    holds reserved but empty for running sequences of these lengths."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, waste_probes(seed))}


def _waste_slip_hint(got: float, p: dict) -> str:
    n, bs, m, b = p["lengths"], p["block_size"], p["max_len"], p["bytes_per_position"]
    want = reference_waste_bytes(**p)
    paged = p["layout"] == "paged"
    slips = [(want / b, "that counts positions; multiply by the bytes per position")]
    if paged:
        slips += [(sum((x // bs + 1) * bs - x for x in n) * b,
                   "a sequence whose length fills its blocks exactly has no empty position"),
                  (sum(x // bs * bs - x for x in n) * b,
                   "a sequence holds whole blocks: one more as soon as a block overflows"),
                  (reference_waste_bytes(n, "contiguous", bs, m, b),
                   "a paged cache takes blocks as a sequence grows, not its longest length at once")]
    else:
        slips += [(reference_waste_bytes(n, "paged", bs, m, b),
                   "a contiguous cache reserves the longest a sequence may become, from admission"),
                  (len(n) * (bs - 1) * b, "that is a paged cache's worst case; this one is "
                   "contiguous")]
    slips.append((want / len(n), "that is one sequence's share; the question asks for all of them"))
    return first_slip(got, slips, "count what each sequence has reserved, minus what it has filled",
                      want=want, rel=1e-9)


@kv_waste.judge_with
def _judge_kv_waste(ev: dict) -> Verdict:
    return judge_probed_numbers(
        ev, waste_probes, WASTE_PROBE_SEED, reference_waste_bytes,
        expected="the reserved but empty bytes of unseen running batches, paged and contiguous",
        case=lambda i, p: (f"{p['layout']}, {len(p['lengths'])} sequences, "
                           f"block_size={p['block_size']}, max_len={p['max_len']}, "
                           f"{p['bytes_per_position']} bytes per position"),
        takes="it takes lengths, layout, block_size, max_len, bytes_per_position",
        slip_hint=_waste_slip_hint, unit="bytes")


__all__ = ["policy_meets_ttft", "policy_verdict", "kv_waste"]
