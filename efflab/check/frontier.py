"""Checks for lesson 07 (Pareto): the frontier of a record table, and per-request latency."""

from __future__ import annotations

import random

from efflab.check.core import (
    Verdict,
    exercise,
    judge_number,
    number,
    probe_outputs,
    probed,
)

PROBE_SEED = 7


def pareto_probes(seed: int = PROBE_SEED) -> list[dict]:
    """Point clouds with ties in cost and in quality (but no exact duplicates)."""
    rng = random.Random(seed)
    out = []
    for n in (6, 12, 20, 9):
        pts: set[tuple[float, float]] = set()
        while len(pts) < n:
            pts.add((rng.choice(range(1, 9)) * 0.5, round(rng.uniform(1.5, 3.0), 1)))
        pts_l = list(pts)
        rng.shuffle(pts_l)
        out.append({"costs": [c for c, _ in pts_l], "qualities": [q for _, q in pts_l]})
    return out


def reference_front(costs: list[float], qualities: list[float]) -> list[int]:
    """Indices no other point dominates (lower is better on both), in the input order."""
    n = len(costs)
    return [i for i in range(n) if not any(
        costs[j] <= costs[i] and qualities[j] <= qualities[i]
        and (costs[j] < costs[i] or qualities[j] < qualities[i]) for j in range(n))]


@exercise("pareto", points=2, topic="pareto", function=True)
def pareto(fn, seed: int = PROBE_SEED):
    """``fn(costs, qualities) -> indices`` of the points on the frontier (lower is better on
    both: no other point is at least as good on both and strictly better on one)."""
    outs = probe_outputs(lambda costs, qualities: sorted(int(i) for i in fn(list(costs), list(qualities))),
                         pareto_probes(seed))
    return {"seed": int(seed), "outputs": outs}


def _sweep_front(costs, qualities, strict=True):
    order = sorted(range(len(costs)), key=lambda i: (costs[i], qualities[i]))
    keep, best = [], float("inf")
    for i in order:
        if qualities[i] < best or (not strict and qualities[i] <= best):
            keep.append(i)
            best = min(best, qualities[i])
    return sorted(keep)


@pareto.judge_with
def _judge_pareto(ev: dict) -> Verdict:
    probes, outs = probed(ev, pareto_probes, PROBE_SEED)
    expected = f"the non-dominated points of {len(probes)} point clouds"
    for k, (p, o) in enumerate(zip(probes, outs)):
        c, q = p["costs"], p["qualities"]
        case = f"cloud {k} ({len(c)} points)"
        if "error" in o:
            return Verdict(False, expected=expected, got=f"{case}: your function raised {o['error']}",
                           hint="it takes two lists of equal length; return a list of indices")
        got = sorted(int(number(i)) for i in o["out"])
        want = reference_front(c, q)
        if got == want:
            continue
        extra, missing = sorted(set(got) - set(want)), sorted(set(want) - set(got))
        shown = f"{case}: {len(extra)} dominated point(s) kept, {len(missing)} frontier point(s) missed"
        n = len(c)
        variants = [
            (_sweep_front(c, q, strict=False), "a point with the same quality as a cheaper one "
             "is dominated: keep only strict improvements"),
            (reference_front(c, [-x for x in q]), "lower is better on both axes (bits per byte, "
             "like cost)"),
            (sorted(range(n), key=lambda i: c[i])[:len(want)], "the cheapest points are not the "
             "frontier: a point is out as soon as one other point beats it on both"),
            (list(range(n)), "you returned every point"),
        ]
        hint = next((h for v, h in variants if sorted(v) == got and sorted(v) != want),
                    "keep point i unless some j has cost_j ≤ cost_i and quality_j ≤ quality_i, "
                    "one of them strictly")
        return Verdict(False, expected=expected, got=shown, hint=hint)
    return Verdict(True, expected=expected, got=f"all {len(probes)} frontiers exact")


def _field(record, *path):
    """``record[a][b]`` of a record dict, or ``record["a.b"]`` of a results-table row."""
    flat = ".".join(path)
    if hasattr(record, "index") and flat in record.index:  # a pandas row
        return record[flat]
    value = record
    for key in path:
        value = value[key]
    return value


@exercise("request_latency", points=1, topic="pareto", measured=("latency_ms", "tokens_per_s"))
def request_latency(answer, record):
    """Milliseconds one user waits per generated token in a batched decode measurement
    (``record``: a record dict or a row of a sweep's table)."""
    if _field(record, "workload") != "decode":
        raise ValueError(f"expected a decode record, got workload={_field(record, 'workload')!r}")
    return {"answer": number(answer), "latency_ms": number(_field(record, "latency_ms", "median")),
            "batch_size": int(_field(record, "knobs", "batch_size")),
            "tokens_per_s": number(_field(record, "throughput", "tokens_per_s"))}


@request_latency.judge_with
def _judge_request_latency(ev: dict) -> Verdict:
    step_ms, b = number(ev["latency_ms"]), int(ev["batch_size"])
    tps = number(ev["tokens_per_s"])
    truth = step_ms  # one decode step gives each of the B users their next token
    return judge_number(
        number(ev["answer"]), truth, rel=0.02, unit="ms",
        expected=f"ms per token as one of the {b} users sees it, within 2%",
        slips=[(1e3 / tps, f"1000 / throughput shares a step among the {b} users; each user waits "
                           "a whole step for each of their tokens"),
               (step_ms / b, f"each user waits a whole step for each token, not 1/{b} of it"),
               (step_ms * b, "every user gets a token from every step"),
               (step_ms / 1e3, "answer in milliseconds")],
        hint="how long does one decode step take, and how many of its tokens are yours?")
