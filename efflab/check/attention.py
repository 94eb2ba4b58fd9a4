"""Checks for lesson 04 (fused attention): the online-softmax update."""

from __future__ import annotations

import math
import random

import torch

from efflab.check.core import Verdict, exercise, miss_band, number, probe_outputs, probed, seed_of

PROBE_SEED = 4
BLOCK = 7
DIM = 8
# (number of scores, scale, order): scores up to ~1000 overflow exp() even in float64
# (exp(710) = inf), so an update that never subtracts the running maximum fails; "rising"
# puts the maximum in the last block, so an update that never rescales fails.
TRIALS = ((23, 1.0, "random"), (30, 300.0, "random"), (28, 900.0, "rising"),
          (26, 800.0, "falling"), (9, 50.0, "random"))


def probes(seed: int = PROBE_SEED) -> list[tuple[list[float], list[list[float]]]]:
    """Seeded (scores, values) pairs, plain Python floats (the same on every machine)."""
    rng = random.Random(seed)
    out = []
    for n, scale, order in TRIALS:
        scores = [rng.gauss(0.0, 1.0) * scale for _ in range(n)]
        if order == "rising":
            scores.sort()
        elif order == "falling":
            scores.sort(reverse=True)
        values = [[rng.gauss(0.0, 1.0) for _ in range(DIM)] for _ in range(n)]
        out.append((scores, values))
    return out


def _floats(x) -> list[float]:
    return [float(v) for v in torch.as_tensor(x, dtype=torch.float64).reshape(-1).tolist()]


@exercise("online_softmax", points=2, topic="attention", function=True)
def online_softmax(update, seed: int = PROBE_SEED):
    """``update(m, l, acc, scores, v) -> (m, l, acc)``: one online-softmax step per key block.

    The check feeds seeded score/value blocks (float64) through the learner's function and
    keeps the running maximum after every block and the final ``l`` and ``acc``.
    """
    if not callable(update):
        raise TypeError(f"expected your update function, got {type(update).__name__}")
    trials = []
    for scores, values in probes(seed):
        s, v = torch.tensor(scores, dtype=torch.float64), torch.tensor(values, dtype=torch.float64)
        m = torch.tensor(float("-inf"), dtype=torch.float64)  # ()
        lsum = torch.tensor(0.0, dtype=torch.float64)  # ()
        acc = torch.zeros(DIM, dtype=torch.float64)  # (d,)
        ms = []
        try:
            for start in range(0, len(scores), BLOCK):
                out = update(m, lsum, acc, s[start:start + BLOCK], v[start:start + BLOCK])
                if out is None:
                    return {"unanswered": True}
                m, lsum, acc = out
                ms.append(_floats(m)[0])
        except NotImplementedError as e:  # the student version's placeholder
            return {"unanswered": True, "placeholder": str(e) or "not answered yet"}
        except Exception as e:  # the learner's code: keep the reason, never crash
            trials.append({"error": f"{type(e).__name__}: {e}"})
            continue
        trials.append({"m": ms, "l": _floats(lsum)[0], "acc": _floats(acc)})
    return {"seed": int(seed), "block": BLOCK, "trials": trials}


def _reference(scores, values):
    """Prefix maxima per block, the final normaliser and softmax(scores) · V, in math."""
    prefix, m = [], -math.inf
    for start in range(0, len(scores), BLOCK):
        m = max(m, max(scores[start:start + BLOCK]))
        prefix.append(m)
    w = [math.exp(x - m) for x in scores]
    lsum = sum(w)
    out = [sum(wi * row[j] for wi, row in zip(w, values)) / lsum for j in range(DIM)]
    return prefix, lsum, out


@online_softmax.judge_with
def _judge_online_softmax(ev: dict) -> Verdict:
    trials = ev["trials"]
    cases = probes(seed_of(ev, PROBE_SEED))  # the judge's own probes from the seed
    if len(trials) != len(cases):
        raise ValueError(f"{len(trials)} trials in the evidence, {len(cases)} expected")
    expected = f"acc / l = softmax · V and m = the running maximum, on {len(cases)} rows"
    found = []  # (priority, got, hint): the most basic mistake over all rows is reported
    for i, (tr, (scores, values)) in enumerate(zip(trials, cases)):
        where = f"row {i} ({len(scores)} scores up to {max(abs(x) for x in scores):.0f})"
        if "error" in tr:
            found.append((0, f"{where}: your update raised {tr['error']}",
                          "it receives m and l as 0-d tensors, acc as (d,), scores as (n,), "
                          "v as (n, d), and returns (m, l, acc)"))
            continue
        prefix, lsum, want = _reference(scores, values)
        ms = [number(x) for x in tr["m"]]
        got_l, acc = number(tr["l"]), [number(x) for x in tr["acc"]]
        if len(acc) != DIM or len(ms) != len(prefix):
            raise ValueError(f"{where}: acc has {len(acc)} entries, m has {len(ms)}")
        got = [a / got_l if got_l else math.nan for a in acc]
        if not all(math.isfinite(x) for x in got + [got_l]):
            found.append((1, f"{where}: acc / l is not finite (inf or nan)",
                          "exp() of a large score overflows: subtract the running maximum "
                          "(the largest score of every block so far, not only this block's) "
                          "before exponentiating"))
            continue
        err = max(abs(g - w) for g, w in zip(got, want))
        if err > 1e-9 * max(1.0, max(abs(w) for w in want)):
            found.append((2, f"{where}: acc / l differs from softmax · V by {err:.2e}",
                          "when the maximum grows, everything accumulated so far (l and acc) "
                          "must be rescaled by exp(m_old - m_new)"))
            continue
        bad_m = [k for k, (a, b) in enumerate(zip(ms, prefix)) if not math.isclose(a, b, rel_tol=1e-12)]
        if bad_m:
            k = bad_m[0]
            found.append((3, f"{where}: after block {k + 1}, m = {ms[k]:.6g} is not the largest "
                             "score seen so far (acc / l is right)",
                          "return the new running maximum as m: the larger of the old m and "
                          "this block's largest score"))
            continue
        if not math.isclose(got_l, lsum, rel_tol=1e-9):
            found.append((4, f"{where}: l = {got_l:.6g} is not the sum of exp(score - m)",
                          "l is the sum of exp(score - m) over every score so far, under the "
                          "current m"))
    if found:
        _, got, hint = min(found, key=lambda f: f[0])
        return Verdict(False, expected=expected, got=got, hint=hint)
    return Verdict(True, expected=expected,
                   got=f"all {len(cases)} rows match, in blocks of {BLOCK}, with scores up to "
                       f"{max(abs(x) for s, _ in cases for x in s):.0f}")


# ----------------------------------------------------------------------------- score memory

SCORE_SEED = 41


def score_probes(seed: int = SCORE_SEED) -> list[dict]:
    rng = random.Random(seed)
    return [{"B": rng.choice((1, 2, 8)), "h": rng.choice((1, 4, 12)),
             "T": rng.choice((128, 1000, 2048, 4096)), "bytes_per_value": rng.choice((4, 2))}
            for _ in range(8)]


@exercise("score_bytes", points=1, topic="attention", function=True)
def score_bytes(fn, seed: int = SCORE_SEED):
    """``fn(B, h, T, bytes_per_value) -> bytes`` of one (B, h, T, T) attention score matrix."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, score_probes(seed))}


@score_bytes.judge_with
def _judge_score_bytes(ev: dict) -> Verdict:
    probes, outs = probed(ev, score_probes, SCORE_SEED)
    expected = f"the bytes of one score matrix, for {len(probes)} shapes"
    errors = [(p, o["error"]) for p, o in zip(probes, outs) if "error" in o]
    if errors:
        return Verdict(False, expected=expected, got=f"{errors[0][0]}: your function raised "
                       f"{errors[0][1]}", hint="it takes B, h, T, bytes_per_value")
    got = [number(o["out"]) for o in outs]
    want = [p["B"] * p["h"] * p["T"] ** 2 * p["bytes_per_value"] for p in probes]
    bad = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    if not bad:
        return Verdict(True, expected=expected, got=f"all {len(probes)} exact")
    slips = [(lambda B, h, T, e: B * h * T * T, "that counts values; multiply by the bytes per value"),
             (lambda B, h, T, e: B * h * T * e, "every query row scores every key: the matrix is T × T"),
             (lambda B, h, T, e: B * T * T * e, "each head has its own score matrix"),
             (lambda B, h, T, e: h * T * T * e, "each sequence in the batch has its own score matrix"),
             (lambda B, h, T, e: B * h * T * T * e * 8, "bytes, not bits"),
             (lambda B, h, T, e: B * h * T * T * e / 2, "causal masking does not shrink the stored "
                                                        "matrix: naive attention stores all T × T scores")]
    hint = "one score per (sequence, head, query, key)"
    for f, slip_hint in slips:  # the mistake that explains every probe
        if all(g == f(p["B"], p["h"], p["T"], p["bytes_per_value"]) for g, p in zip(got, probes)):
            hint = slip_hint
            break
    p, i = probes[bad[0]], bad[0]
    return Verdict(False, expected=expected,
                   got=f"B={p['B']}, h={p['h']}, T={p['T']}, {p['bytes_per_value']} bytes per value: "
                       f"{got[i]:,.0f} bytes ({miss_band(got[i], want[i])}); "
                       f"{len(bad)} of {len(probes)} shapes wrong", hint=hint)
