"""Checks for lesson 09 (fusion): the bytes a fused bias+GELU saves, and the bytes a chain of
elementwise operators moves eager and fused (code)."""

from __future__ import annotations

import math
import random

from efflab.check.core import (
    Verdict,
    exercise,
    first_slip,
    judge_number,
    judge_probed_numbers,
    number,
    probe_outputs,
)
from efflab.techniques.compile import elementwise_chain_bytes, fused_bytes_saved


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


# -- the bytes a chain of elementwise operators moves, eager and fused, as code ---------------

CHAIN_PROBE_SEED = 90


def chain_probes(seed: int = CHAIN_PROBE_SEED) -> list[dict]:
    """Seeded chains: ``arities[i]`` is how many full-size tensors operator i reads (1: a unary
    operator of the previous result, such as GELU; 2: a binary one with a second full-size
    operand, such as a residual add; 3: a fused multiply-add of two more). Chains alternate
    eager and fused, in fp32, bf16 and fp64; the first two are unary, of three operators."""
    rng = random.Random(seed)
    out = []
    for i in range(10):
        k = 3 if i < 2 else rng.randint(1, 6)
        arities = [1] * k if i < 2 else [rng.choice((1, 1, 2, 2, 3)) for _ in range(k)]
        if i >= 2 and all(a == 1 for a in arities):
            arities[rng.randrange(k)] = 2
        numel = rng.choice((4096, 3 * 1024, 16 * 128 * 512, 1000, 7 * 12 * 64))
        bpe = 4 if i < 2 else rng.choice((4, 2, 8))  # the unary ones first, each slip apart
        out.append({"numel": numel, "arities": arities, "bytes_per_el": bpe, "fused": i % 2 == 1})
    return out


def reference_chain_bytes(numel: int, arities: list[int], bytes_per_el: int, fused: bool) -> int:
    """Memory traffic of the chain. Eager: operator i reads its ``arities[i]`` inputs and writes
    its output. Fused: every tensor from outside the chain (the first input and each extra
    operand) is read once, the result written once; intermediates never reach memory."""
    if fused:
        values = (1 + sum(a - 1 for a in arities) + 1) * numel
    else:
        values = sum(a + 1 for a in arities) * numel
    return values * bytes_per_el


@exercise("chain_bytes", points=2, topic="fusion", function=True)
def chain_bytes(fn, seed: int = CHAIN_PROBE_SEED):
    """``fn(numel, arities, bytes_per_el, fused) -> bytes``: the memory traffic of a chain of
    elementwise operators over tensors of ``numel`` values, operator i reading ``arities[i]``
    full-size tensors (the previous result and any others), run eagerly or as one fused kernel."""
    return {"seed": int(seed), "outputs": probe_outputs(
        lambda **p: fn(**{**p, "arities": list(p["arities"])}), chain_probes(seed))}


def _chain_slip_hint(got: float, p: dict) -> str:
    n, ar, e, fused = p["numel"], p["arities"], p["bytes_per_el"], p["fused"]
    want = reference_chain_bytes(**p)
    unary = elementwise_chain_bytes(n, len(ar), e, fused=fused)
    return first_slip(got, [
            (want / e, "that counts values; multiply by the bytes per value"),
            (unary, "an operator with a second full-size operand reads it too (eager and fused)"),
            (reference_chain_bytes(n, ar, e, not fused),
             "that is the other way of running the chain: read `fused`"),
            (want - n * e, "count the write of each output as well as the reads"),
            (want - (len(ar) * n * e if not fused else n * e),
             "count the write of each output as well as the reads"),
            (2 * n * e if fused else math.nan,
             "fused, the extra operands still come from memory once each")],
        "count, for each tensor, how often it crosses between memory and the processor: "
        "eagerly every operator goes through memory; fused, only what enters and leaves the chain",
        want=want, rel=1e-9)


@chain_bytes.judge_with
def _judge_chain(ev: dict) -> Verdict:
    return judge_probed_numbers(
        ev, chain_probes, CHAIN_PROBE_SEED, reference_chain_bytes,
        expected="the bytes of unseen elementwise chains, eager and fused, exact",
        case=lambda i, p: (f"chain {i + 1} (arities {p['arities']}, {p['numel']:,} values of "
                           f"{p['bytes_per_el']} B, {'fused' if p['fused'] else 'eager'})"),
        takes="it takes numel (int), arities (list of ints), bytes_per_el (int), fused (bool)",
        slip_hint=_chain_slip_hint, unit="bytes")
