"""Checks for lesson 08 (inside a step): place an operator on the roofline from its shapes, and
say which roof bounds it on this machine."""

from __future__ import annotations

import random

from efflab.check.core import (
    Verdict,
    exercise,
    number,
    probe_outputs,
    probed,
)
from efflab.measurement.profiling import matmul_cost, roof_bound

PROBE_SEED = 8
BOUNDS = ("memory", "compute")


def matmul_probes(seed: int = PROBE_SEED) -> list[dict]:
    """Seeded matmul shapes, from a matrix-vector product (decoding) to square, fp32 and bf16."""
    rng = random.Random(seed)
    out = [{"m": 1, "k": 512, "n": 2048, "bytes_per_el": 4}]
    for i in range(7):
        out.append({"m": rng.choice((1, 16, 128, 1024, 2048)), "k": rng.choice((64, 128, 512)),
                    "n": rng.choice((128, 384, 512, 2048)), "bytes_per_el": (4, 2)[i % 2]})
    return out


@exercise("matmul_roofline", points=2, topic="inside_step", function=True)
def matmul_roofline(fn, seed: int = PROBE_SEED):
    """``fn(m, k, n, bytes_per_el) -> (flops, bytes)`` of an (m×k)·(k×n) product: FLOPs, and
    the bytes it must move (A and B read once, C written once)."""
    return {"seed": seed, "outputs": probe_outputs(fn, matmul_probes(seed))}


@matmul_roofline.judge_with
def _judge_matmul(ev: dict) -> Verdict:
    probes, outs = probed(ev, matmul_probes, PROBE_SEED)
    expected = f"(FLOPs, bytes) of {len(probes)} matmuls, matrix-vector to square"
    for p, o in zip(probes, outs):
        shape = f"m={p['m']}, k={p['k']}, n={p['n']}, {p['bytes_per_el']} bytes per value"
        if "error" in o:
            return Verdict(False, expected=expected, got=f"{shape}: your function raised "
                           f"{o['error']}", hint="it takes m, k, n, bytes_per_el")
        out = o["out"]
        if not isinstance(out, list) or len(out) != 2:
            return Verdict(False, expected=expected, got=f"{shape}: {out!r}",
                           hint="return a pair (flops, bytes)")
        f, b = number(out[0]), number(out[1])
        wf, wb = matmul_cost(p["m"], p["k"], p["n"], bytes_per_el=p["bytes_per_el"])
        if f == wf and b == wb:
            continue
        m, k, n, e = p["m"], p["k"], p["n"], p["bytes_per_el"]
        if f != wf:
            hint = ("each of the m·n outputs is a dot product of length k: one multiply and one "
                    "add per term" if f * 2 == wf else "count multiply-adds over every output")
        elif b * e == wb:
            hint = "that counts values; multiply by the bytes per value"
        elif b == (m * k + k * n) * e:
            hint = "the output C is written to memory too"
        else:
            hint = "read A (m×k) and B (k×n) once, write C (m×n) once"
        return Verdict(False, expected=expected, got=f"{shape}: ({f:,.0f}, {b:,.0f}) "
                       f"— FLOPs {'right' if f == wf else 'off'}, bytes "
                       f"{'right' if b == wb else 'off'}", hint=hint)
    return Verdict(True, expected=expected, got=f"all {len(probes)} exact")


@exercise("which_roof", points=1, topic="inside_step", measured=("peak_flops", "bandwidth"))
def which_roof(answer: dict, *, intensities: dict, peak_flops: float, bandwidth: float):
    """``answer``: {operator: "memory" or "compute"} for each operator in ``intensities``
    ({operator: FLOPs per byte}), on a machine of ``peak_flops`` and ``bandwidth``."""
    if not isinstance(answer, dict):
        raise TypeError(f"expected a dict {{operator: 'memory' or 'compute'}}, got "
                        f"{type(answer).__name__}")
    return {"answer": {str(k): str(v).strip().lower() for k, v in answer.items()},
            "intensities": {str(k): float(v) for k, v in intensities.items()},
            "peak_flops": float(peak_flops), "bandwidth": float(bandwidth)}


@which_roof.judge_with
def _judge_roof(ev: dict) -> Verdict:
    ints, ans = ev["intensities"], ev["answer"]
    peak, bw = number(ev["peak_flops"]), number(ev["bandwidth"])
    ridge = peak / bw
    expected = f"the bounding roof of each of {len(ints)} operators"
    missing = [k for k in ints if k not in ans]
    if missing:
        return Verdict(False, expected=expected, got=f"no answer for {', '.join(missing)}",
                       hint="give one of 'memory' or 'compute' for every operator")
    wrong = [k for k, i in ints.items() if ans[k] != roof_bound(i, peak, bw)["bound"]]
    if not wrong:
        return Verdict(True, expected=expected, got=f"all {len(ints)} right")
    bad = [k for k in wrong if ans[k] not in BOUNDS]
    if bad:
        return Verdict(False, expected=expected, got=f"{ans[bad[0]]!r} for {bad[0]}",
                       hint="each answer is 'memory' or 'compute'")
    flipped = len(wrong) == len(ints)
    hint = ("every answer is reversed: low intensity means few FLOPs per byte, so the bytes "
            "take longer than the FLOPs" if flipped else
            f"compare each operator's intensity with this machine's balance, peak ÷ bandwidth "
            f"= {ridge:.3g} FLOP/byte")
    return Verdict(False, expected=expected, got=f"{len(wrong)} of {len(ints)} wrong",
                   hint=hint, fraction=(len(ints) - len(wrong)) / len(ints))
