"""Checks for lesson 09 (fusion): the bytes a fused bias+GELU saves, and the row reduction of a
fused softmax / cross-entropy (running maximum and running sum, one block at a time)."""

from __future__ import annotations

import math
import random

from efflab.check.core import (
    EvidenceError,
    Verdict,
    exercise,
    judge_number,
    number,
    probe_outputs,
    seed_of,
)
from efflab.techniques.compile import elementwise_chain_bytes, fused_bytes_saved

PROBE_SEED = 9
BLOCK = 5


@exercise("gelu_bias_bytes", points=1, topic="fusion")
def gelu_bias_bytes(answer, *, numel: int, bytes_per_el: int = 4):
    """``answer``: bytes saved when ``y = gelu(x + b)`` over ``numel`` values runs as one fused
    kernel instead of two (add, then GELU). The bias is small: ignore its reads."""
    return {"answer": number(answer), "numel": int(numel), "bytes_per_el": int(bytes_per_el)}


@gelu_bias_bytes.judge_with
def _judge_gelu(ev: dict) -> Verdict:
    n, e = int(ev["numel"]), int(ev["bytes_per_el"])
    truth = fused_bytes_saved(n, 2, e)
    return judge_number(
        number(ev["answer"]), truth, rel=1e-9, unit="bytes",
        expected=f"bytes saved by fusing add + GELU over {n:,} values of {e} bytes",
        slips=[(truth / e, "that counts values; multiply by the bytes per value"),
               (elementwise_chain_bytes(n, 2, e), "that is all the eager traffic; subtract what "
                                                   "the fused kernel still moves"),
               (n * e, "the intermediate x + b is both written and read back"),
               (elementwise_chain_bytes(n, 2, e, fused=True), "that is what the fused kernel "
                                                               "moves, not what it saves")],
        hint="eager: each operator reads its input and writes its output; fused: the input is "
             "read once and the result written once")


def row_probes(seed: int = PROBE_SEED) -> list[list[float]]:
    """Seeded rows (plain floats); large ones overflow exp() without the running maximum, and
    a rising row puts the maximum in the last block (no rescaling: wrong sum)."""
    rng = random.Random(seed)
    rows = []
    for n, scale, order in ((13, 1.0, "random"), (17, 400.0, "rising"), (11, 900.0, "random"),
                            (6, 3.0, "falling"), (20, 50.0, "rising")):
        r = [rng.gauss(0.0, 1.0) * scale for _ in range(n)]
        if order != "random":
            r.sort(reverse=order == "falling")
        rows.append(r)
    return rows


# a kernel keeps m and l in float32: its max is the row's max rounded to float32 (relative
# error under 6e-8) and its running sum carries float32 rounding over every block's rescale
M_REL_TOL, L_REL_TOL = 1e-6, 1e-4


def _same_max(m: float, want: float) -> bool:
    return math.isclose(m, want, rel_tol=M_REL_TOL, abs_tol=1e-6)


def reference_row(row: list[float]) -> tuple[float, float]:
    """(max, Σ exp(x - max)) of a row: what the running reduction must end with."""
    m = max(row)
    return m, sum(math.exp(x - m) for x in row)


@exercise("softmax_row_reduction", points=2, topic="fusion", function=True)
def softmax_row_reduction(update, seed: int = PROBE_SEED):
    """``update(m, l, block) -> (m, l)``: fold one block (a list of floats) into the running
    maximum ``m`` and running sum ``l = Σ exp(x - m)``, starting from m = -inf, l = 0."""
    if not callable(update):
        raise TypeError(f"expected your update function, got {type(update).__name__}")
    outs = []
    for row in row_probes(seed):
        def fold(row=row):
            m, lsum = float("-inf"), 0.0
            for start in range(0, len(row), BLOCK):
                m, lsum = update(m, lsum, row[start:start + BLOCK])
            return [m, lsum]
        outs.append(probe_outputs(lambda f=fold: f(), [{}])[0])
    return {"seed": seed, "outputs": outs}


@softmax_row_reduction.judge_with
def _judge_rows(ev: dict) -> Verdict:
    rows = row_probes(seed_of(ev, PROBE_SEED))
    outs = ev["outputs"]
    if len(outs) != len(rows):
        raise EvidenceError(f"{len(outs)} outputs for {len(rows)} rows")
    expected = f"the running (max, sum of exp) of {len(rows)} rows, in blocks of {BLOCK}"
    for i, (row, o) in enumerate(zip(rows, outs)):
        if "error" in o:
            hint = ("exp of a large score overflows: subtract the running maximum before exp"
                    if "Overflow" in o["error"] else "update(m, l, block) returns the pair (m, l)")
            return Verdict(False, expected=expected, got=f"row {i}: your update raised "
                           f"{o['error']}", hint=hint)
        out = o["out"]
        if not isinstance(out, list) or len(out) != 2:
            return Verdict(False, expected=expected, got=f"row {i}: {out!r}",
                           hint="return the pair (m, l)")
        m, lsum = number(out[0]), number(out[1])
        wm, wl = reference_row(row)
        if _same_max(m, wm) and math.isclose(lsum, wl, rel_tol=L_REL_TOL):
            continue
        try:
            plain = math.fsum(math.exp(x) for x in row)  # a sum that forgot the maximum
        except OverflowError:
            plain = float("inf")
        if not math.isfinite(lsum) or not math.isfinite(m):
            hint = "exp of a large score overflows: subtract the running maximum before exp"
        elif math.isfinite(plain) and math.isclose(lsum, plain, rel_tol=L_REL_TOL):
            hint = ("l is the sum of exp(x - m), taken against the running maximum m — not of "
                    "exp(x): that overflows for large scores")
        elif not _same_max(m, wm):
            hint = "m must be the largest value seen so far, over all blocks"
        else:
            hint = ("when a block raises the maximum, the sum so far was taken against the old "
                    "one: multiply it by exp(m_old - m_new)")
        return Verdict(False, expected=expected,
                       got=f"row {i} ({len(row)} values): logsumexp off by "
                           f"{abs((m + math.log(lsum) if lsum > 0 else float('nan')) - (wm + math.log(wl))):.3g}"
                       if lsum > 0 and math.isfinite(lsum) else f"row {i}: l = {lsum}", hint=hint)
    return Verdict(True, expected=expected, got=f"all {len(rows)} rows exact")
