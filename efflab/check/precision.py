"""Checks for lesson 02 (precision): bytes per parameter by category, and bf16 rounding."""

from __future__ import annotations

import math
import random
import struct

from efflab.check.core import Verdict, exercise, number, probe_outputs, seed_of
from efflab.core.config import PRECISIONS
from efflab.techniques.precision import PrecisionConfig

CATEGORIES = ("parameters", "gradients", "optimizer")


def _reference_bytes(precision: str) -> dict[str, int]:
    """Bytes per parameter, per category, for a training step with AdamW under ``precision``."""
    w = PrecisionConfig(precision).param_bytes  # weights, and so their gradients and moments
    return {"parameters": w, "gradients": w, "optimizer": 2 * w}  # AdamW: two moments


@exercise("bytes_per_param", points=2, topic="precision")
def bytes_per_param(answer: dict):
    """``{precision: {"parameters": b, "gradients": b, "optimizer": b}}`` in bytes per parameter
    for fp32, bf16 (autocast), fp16 (autocast + loss scaling) and bf16-pure, training with AdamW."""
    if not isinstance(answer, dict):
        raise TypeError(f"expected a dict {{precision: {{category: bytes}}}}, got {type(answer).__name__}")
    out = {}
    for p, cats in answer.items():
        out[str(p)] = {str(c): number(v) for c, v in dict(cats).items()}
    return {"answer": out}


@bytes_per_param.judge_with
def _judge_bytes_per_param(ev: dict) -> Verdict:
    ans = ev["answer"]
    expected = "bytes per parameter for " + ", ".join(PRECISIONS)
    missing = [p for p in PRECISIONS if p not in ans]
    if missing:
        return Verdict(False, expected=expected, got=f"no entry for {', '.join(missing)}",
                       hint="give a dict for each of " + ", ".join(PRECISIONS))
    wrong = []
    for p in PRECISIONS:
        ref = _reference_bytes(p)
        for c in CATEGORIES:
            if c not in ans[p]:
                return Verdict(False, expected=expected, got=f"{p}: no {c!r}",
                               hint="each precision needs " + ", ".join(CATEGORIES))
            if ans[p][c] != ref[c]:
                wrong.append((p, c, ans[p][c], ref[c]))
    right = len(PRECISIONS) * len(CATEGORIES) - len(wrong)
    total = len(PRECISIONS) * len(CATEGORIES)
    if not wrong:
        return Verdict(True, expected=expected, got=f"all {total} entries right")
    p, c, got, want = wrong[0]
    if got == 8 * want:
        hint = "bytes, not bits"
    elif c == "optimizer" and got == want / 2:
        hint = "AdamW keeps two moments per parameter (m and v)"
    elif p in ("bf16", "fp16") and got < want:
        hint = ("autocast computes in 16 bits but keeps the weights — and so their gradients "
                "and optimizer state — in fp32")
    elif p == "bf16-pure" and got > want:
        hint = "bf16-pure stores the weights in 16 bits, and their gradients and moments follow"
    else:
        hint = "each category is stored in the weights' format"
    return Verdict(False, expected=expected,
                   got=f"{right} of {total} right; {p} {c}: {got:g} is wrong",
                   hint=hint, fraction=right / total if right >= total - 2 else 0.0)


# ----------------------------------------------------------------------------- bf16 rounding

PROBE_SEED = 2


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _round_bits(x: float, keep: int, mode: str = "even") -> float:
    """Round float32 ``x`` to ``keep`` stored mantissa bits (bf16: 7), as bit arithmetic."""
    u = struct.unpack("<I", struct.pack("<f", x))[0]
    drop = 23 - keep
    if mode == "truncate":
        u &= ~((1 << drop) - 1) & 0xFFFFFFFF
    elif mode == "half_up":  # ties away from zero
        u = (u + (1 << (drop - 1))) & ~((1 << drop) - 1) & 0xFFFFFFFF
    else:  # round to nearest, ties to even (IEEE default, what torch does)
        lsb = (u >> drop) & 1
        u = (u + (1 << (drop - 1)) - 1 + lsb) & ~((1 << drop) - 1) & 0xFFFFFFFF
    return struct.unpack("<f", struct.pack("<I", u))[0]


def bf16(x: float) -> float:
    """The reference: float32 ``x`` rounded to bfloat16 (7 stored mantissa bits, ties to even)."""
    return _round_bits(x, 7)


def bf16_probes(seed: int = PROBE_SEED) -> list[float]:
    """float32 values: ordinary ones, exact ties (which round to even) and near-ties."""
    rng = random.Random(seed)
    xs = [1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 3.14159265, 0.1, -2.7182818,
          1 + 2 ** -7, 257.0, 259.0, 1000.0, 65535.0, 1e-3]
    for _ in range(24):
        xs.append(rng.choice((-1, 1)) * rng.uniform(1, 2) * 2.0 ** rng.randint(-20, 20))
    for _ in range(6):  # ties: halfway between two bf16 neighbours
        m = rng.randint(128, 255)
        xs.append((m + 0.5) * 2.0 ** rng.randint(-10, 10))
    return [_f32(x) for x in xs]


@exercise("bf16_round", points=2, topic="precision", function=True)
def bf16_round(fn, seed: int = PROBE_SEED):
    """``fn(x: float) -> float``: ``x`` rounded to the nearest bfloat16 value (ties to even)."""
    outs = probe_outputs(lambda x: float(fn(x)), [{"x": x} for x in bf16_probes(seed)])
    return {"seed": int(seed), "outputs": outs}


@bf16_round.judge_with
def _judge_bf16_round(ev: dict) -> Verdict:
    return _judge_rounding(
        ev, bf16_probes, PROBE_SEED, bf16,
        expected="the nearest bf16 value for {n} numbers (ties to even)",
        slips=[(lambda x: _round_bits(x, 7, "truncate"), "that chops the extra bits: round to the "
                "nearest bf16 value instead"),
               (lambda x: _round_bits(x, 7, "half_up"), "exact ties (halfway between two bf16 "
                "values) go to the neighbour whose last stored bit is 0 (round half to even)"),
               (lambda x: _round_bits(x, 8), "bf16 stores 7 mantissa bits (8 significant with "
                "the implicit leading 1), not 8"),
               (lambda x: _round_bits(x, 6), "bf16 stores 7 mantissa bits, not 6"),
               (lambda x: _round_bits(x, 10), "that is fp16's 10 mantissa bits; bf16 keeps 7"),
               (lambda x: x, "the values came back unchanged: they must be rounded")],
        hint="bf16 keeps fp32's 8 exponent bits and 7 of its 23 mantissa bits: the spacing "
             "between neighbours near x is 2^(floor(log2|x|) - 7)")


def _judge_rounding(ev: dict, make_probes, default_seed: int, reference, *, expected: str,
                    slips: list, hint: str) -> Verdict:
    """The verdict on a learner's rounding function: every probe rounded exactly as
    ``reference`` rounds it; otherwise the first known slip (a function and its hint) that
    agrees on at least 90% of the probes names the mistake, else ``hint``."""
    xs = make_probes(seed_of(ev, default_seed))
    outs = ev["outputs"]
    if len(outs) != len(xs):
        raise ValueError(f"{len(outs)} outputs for {len(xs)} probes")
    expected = expected.format(n=len(xs))
    errors = [o["error"] for o in outs if "error" in o]
    if errors:
        return Verdict(False, expected=expected, got=f"your function raised {errors[0]}",
                       hint="it receives one Python float and returns one float")
    got = [number(o["out"]) for o in outs]
    bad = [i for i, (g, x) in enumerate(zip(got, xs)) if g != reference(x)]
    if not bad:
        return Verdict(True, expected=expected, got=f"all {len(xs)} exact")
    shown = f"{len(bad)} of {len(xs)} differ, e.g. {xs[bad[0]]!r} -> {got[bad[0]]!r}"
    for slip, slip_hint in slips:  # a known mistake agrees on (nearly) every probe
        values = [slip(x) for x in xs]
        agree = sum(g == v or (math.isnan(g) and math.isnan(v)) for g, v in zip(got, values))
        if agree >= 0.9 * len(xs):
            return Verdict(False, expected=expected, got=shown, hint=slip_hint)
    return Verdict(False, expected=expected, got=shown, hint=hint)


# ----------------------------------------------------------------------------- FP8 E4M3 rounding

E4M3_PROBE_SEED = 3
E4M3 = {"mant": 3, "emin": -6, "top": 448.0}  # 4 exponent bits (bias 7), 3 stored mantissa bits
E5M2 = {"mant": 2, "emin": -14, "top": 57344.0}


def round_to_format(x: float, mant: int, emin: int, top: float, mode: str = "even",
                    subnormals: bool = True) -> float:
    """``x`` rounded to a float format with ``mant`` stored mantissa bits, smallest normal
    exponent ``emin`` and largest value ``top`` (saturating, as torch's FP8 casts do).

    ``mode``: "even" (nearest, ties to even), "half_up" (ties away from zero) or "truncate";
    ``subnormals=False`` flushes everything below the smallest normal to zero."""
    if x == 0 or not math.isfinite(x):
        return x
    _, e = math.frexp(abs(x))  # |x| = m · 2^e, 0.5 <= m < 1: the leading bit is 2^(e-1)
    e = max(e - 1, emin)  # below the smallest normal the spacing stops shrinking (subnormals)
    step = 2.0 ** (e - mant)
    q = abs(x) / step
    if mode == "truncate":
        q = math.floor(q)
    elif mode == "half_up":
        q = math.floor(q + 0.5)
    else:
        q = round(q)  # Python rounds ties to even
    v = min(q * step, top)
    if not subnormals and v < 2.0 ** emin:
        v = 0.0
    return math.copysign(v, x)


def e4m3(x: float) -> float:
    """The reference: float32 ``x`` rounded to FP8 E4M3 (torch.float8_e4m3fn's cast)."""
    return round_to_format(x, **E4M3)


def e4m3_probes(seed: int = E4M3_PROBE_SEED) -> list[float]:
    """float32 values within ±448: ordinary ones, exact ties, subnormals (below 2^-6) and
    values near the largest finite E4M3 value."""
    rng = random.Random(seed)
    xs = [1.0, 1.0625, 1.1875, -1.0625, 3.14159265, 0.1, -2.7182818, 17.0, 300.0, 440.0,
          0.01, 0.003, 2.0 ** -9 * 3]
    for _ in range(24):
        xs.append(rng.choice((-1, 1)) * rng.uniform(1, 2) * 2.0 ** rng.randint(-6, 7))
    for _ in range(6):  # ties: halfway between two E4M3 neighbours
        m = rng.randint(8, 15)
        xs.append(rng.choice((-1, 1)) * (m + 0.5) * 2.0 ** rng.randint(-6, 4))
    for _ in range(5):  # subnormals
        xs.append(rng.choice((-1, 1)) * rng.uniform(0.05, 0.95) * 2.0 ** -6)
    return [_f32(x) for x in xs]


@exercise("fp8_e4m3_round", points=2, topic="precision", function=True)
def fp8_e4m3_round(fn, seed: int = E4M3_PROBE_SEED):
    """``fn(x: float) -> float``: ``x`` rounded to the nearest FP8 E4M3 value (ties to even,
    subnormals kept), for ``|x| <= 448``."""
    outs = probe_outputs(lambda x: float(fn(x)), [{"x": x} for x in e4m3_probes(seed)])
    return {"seed": int(seed), "outputs": outs}


@fp8_e4m3_round.judge_with
def _judge_fp8_e4m3_round(ev: dict) -> Verdict:
    return _judge_rounding(
        ev, e4m3_probes, E4M3_PROBE_SEED, e4m3,
        expected="the nearest E4M3 value for {n} numbers (ties to even, subnormals kept)",
        slips=[(lambda x: round_to_format(x, **E4M3, mode="truncate"), "that chops the extra "
                "bits: round to the nearest E4M3 value instead"),
               (lambda x: round_to_format(x, **E4M3, mode="half_up"), "exact ties (halfway "
                "between two E4M3 values) go to the neighbour whose last stored bit is 0 (round "
                "half to even)"),
               (lambda x: round_to_format(x, **E4M3, subnormals=False), "values below the "
                "smallest normal are not zero: the format keeps subnormals, evenly spaced down "
                "to zero"),
               (lambda x: round_to_format(x, **E5M2), "that is E5M2 (5 exponent bits, 2 mantissa "
                "bits); E4M3 trades one exponent bit for one more mantissa bit"),
               (lambda x: round_to_format(x, 4, -6, 480.0), "E4M3 stores 3 mantissa bits, not 4"),
               (lambda x: round_to_format(x, 2, -6, 448.0), "E4M3 stores 3 mantissa bits, not 2"),
               (lambda x: round_to_format(x, 3, -7, 240.0), "torch's float8_e4m3fn uses exponent "
                "bias 7 (the 'fn' variant: no infinities), so its smallest normal is 2^-6"),
               (lambda x: x, "the values came back unchanged: they must be rounded")],
        hint="E4M3 has 4 exponent bits and 3 mantissa bits: the spacing between neighbours "
             "depends on the power of two x falls in, and stops shrinking below the smallest "
             "normal")
