"""Checks for lesson 15 (model parallelism): a pipeline's bubble, the bytes a tensor-parallel
rank holds, the all-reduces a tensor-parallel step makes, and ring attention's block merge."""

from __future__ import annotations

import math
import random

import torch

from efflab.check.core import (
    Verdict,
    close,
    exercise,
    judge_number,
    miss_band,
    number,
    probe_outputs,
    probed,
)
from efflab.systems.parallel.pipeline import SCHEDULES, bubble_fraction
from efflab.systems.parallel.ring import merge
from efflab.systems.parallel.tensor import tp_allreduces_per_step, tp_param_counts_of


@exercise("pipeline_bubble", points=1, topic="model_parallel")
def pipeline_bubble(answer, *, stages, micro_batches, schedule="1f1b"):
    """The share of a step each stage idles (0..1) with ``stages`` equal stages and
    ``micro_batches`` micro-batches under ``schedule``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: one of {SCHEDULES}")
    return {"answer": number(answer), "stages": int(stages),
            "micro_batches": int(micro_batches), "schedule": str(schedule)}


@pipeline_bubble.judge_with
def _judge_bubble(ev: dict) -> Verdict:
    p, m = int(ev["stages"]), int(ev["micro_batches"])
    if p < 1 or m < 1:
        raise ValueError("stages and micro_batches must be >= 1")
    truth = bubble_fraction(p, m)
    return judge_number(
        number(ev["answer"]), truth, rel=0.01, abs_=1e-9,
        expected=f"the idle share of each stage, p = {p} stages, m = {m} micro-batches, "
                 f"{ev['schedule']} (a fraction of the step's time)",
        slips=[((p - 1) / m, "divide by the whole step's length: the m micro-batches' work plus "
                "the fill and drain"),
               ((p - 1) / (m + p), "count the step's slots again: the pipeline fills in one slot "
                "fewer than it has stages"),
               (p / (m + p - 1), "a stage is idle while the others fill and drain: one stage "
                "fewer than the pipeline has"),
               (1 - truth, "that is the busy share; the bubble is the idle one"),
               (truth * 100, "give a fraction between 0 and 1, not a percentage")],
        hint="count the slots of a step: the m micro-batches each stage works on, and the ones "
             "it waits while the pipeline fills and drains")


TP_SEED = 21


def tp_probes(seed: int = TP_SEED) -> list[dict]:
    """Seeded GPT shapes and TP degrees (t divides the heads), from tiny to GPT-3-sized."""
    rng = random.Random(seed)
    out = []
    for _ in range(8):
        heads = rng.choice((4, 8, 12, 16, 32, 96))
        t = rng.choice([d for d in (1, 2, 4, 8) if heads % d == 0 and d > 1] or [1])
        out.append({"n_layer": rng.randint(1, 96), "n_embd": heads * rng.choice((16, 32, 64, 128)),
                    "vocab_size": rng.choice((256, 32000, 50257)),
                    "block_size": rng.choice((64, 1024, 2048)), "tp": t})
    return out


def reference_tp_bytes(n_layer, n_embd, vocab_size, block_size, tp) -> int:
    """fp32 parameter bytes one of ``tp`` tensor-parallel ranks of this GPT holds."""
    return 4 * tp_param_counts_of(n_layer, n_embd, vocab_size, block_size, tp)["total"]


def _tp_slip_hint(got: float, p: dict) -> str:
    L, C, t = p["n_layer"], p["n_embd"], p["tp"]
    counts = tp_param_counts_of(p["n_layer"], p["n_embd"], p["vocab_size"], p["block_size"], t)
    want = 4 * counts["total"]
    for value, hint in [
            (4 * counts["full"] / t, "not everything is split: the embeddings, LayerNorms and the "
             "biases added after the all-reduce stay whole on every rank"),
            (4 * counts["full"], "the block matrices are split over the ranks"),
            (want / 4, "that counts values; give bytes (4 per fp32 value)"),
            (want - 4 * L * 2 * C * (t - 1) / t, "the row-split layers' biases are added after "
             "the all-reduce, once: every rank keeps them whole"),
            (want + 4 * L * (4 * C * C + 3 * C) * (t - 1) / t, "only the MLP? attention splits "
             "too, by heads (its q, k, v and output projection)"),
            (want - 4 * p["vocab_size"] * C, "the token table is tied to the head, but it is "
             "still there, once, whole on every rank"),
            (want + 4 * p["vocab_size"] * C, "the head shares the token table (weight tying): "
             "count it once")]:
        if value != want and close(got, value, rel=1e-6):
            return hint
    return ("sort the parameters into those the split divides (every block's attention and "
            "MLP matrices, the biases of the split columns) and those each rank keeps whole")


@exercise("tp_rank_bytes", points=2, topic="model_parallel", function=True)
def tp_rank_bytes(fn, seed: int = TP_SEED):
    """``fn(n_layer, n_embd, vocab_size, block_size, tp) -> bytes`` of fp32 parameters one of
    ``tp`` Megatron-style tensor-parallel ranks holds (GPT-2 layout, tied token table)."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, tp_probes(seed))}


@tp_rank_bytes.judge_with
def _judge_tp_bytes(ev: dict) -> Verdict:
    probes, outs = probed(ev, tp_probes, TP_SEED)
    expected = f"the parameter bytes of one TP rank, {len(probes)} model shapes and TP degrees"
    for p, o in zip(probes, outs):
        case = ", ".join(f"{k}={v:,}" for k, v in p.items())
        if "error" in o:
            return Verdict(False, expected=expected, got=f"{case}: your function raised {o['error']}",
                           hint="it takes n_layer, n_embd, vocab_size, block_size, tp")
        got, want = number(o["out"]), reference_tp_bytes(**p)
        if close(got, want, rel=1e-6):
            continue
        return Verdict(False, expected=expected,
                       got=f"{case}: {got:,.0f} bytes ({miss_band(got, want)})",
                       hint=_tp_slip_hint(got, p))
    return Verdict(True, expected=expected, got=f"all {len(probes)} within a millionth")


@exercise("tp_allreduces", points=1, topic="model_parallel")
def tp_allreduces(answer, *, n_layer):
    """All-reduces one tensor-parallel rank makes in a training step (forward and backward)
    of a GPT with ``n_layer`` transformer layers, Megatron-style."""
    return {"answer": number(answer), "n_layer": int(n_layer)}


@tp_allreduces.judge_with
def _judge_tp_allreduces(ev: dict) -> Verdict:
    L = int(ev["n_layer"])
    if L < 1:
        raise ValueError("n_layer must be >= 1")
    truth = tp_allreduces_per_step(L)["total"]
    return judge_number(
        number(ev["answer"]), truth, rel=0, abs_=0.5,
        expected=f"all-reduces per training step, {L} layers, forward and backward",
        slips=[(2 * L, "the backward needs them too: f's backward sums the input gradients"),
               (L, "a layer has two split blocks, attention and MLP, each summed once per pass"),
               (8 * L, "the column-split layer needs no all-reduce after it: only the row-split "
                "one does (forward), and only the input before the column split (backward)"),
               (4, "that is one layer; count every layer"),
               (6 * L, "count again: one per block forward, one per block backward")],
        hint="count the split blocks per layer, then the passes each one is summed in")


# ------------------------------------------------------------------------ the ring block merge

MERGE_SEED = 15
SHAPES = ((2, 3, 5, 4), (1, 1, 7, 8), (3, 2, 4, 6), (1, 4, 6, 2), (2, 2, 3, 5))
# how far apart the two blocks' log-sum-exps sit: at 800, exp() of either overflows float64
OFFSETS = (0.0, 5.0, 300.0, 800.0, -700.0)


def merge_probes(seed: int = MERGE_SEED) -> list[dict]:
    """Seeded float64 partial results: out (B, nh, Tq, hs) and lse (B, nh, Tq, 1), two blocks."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape, off in zip(SHAPES, OFFSETS):
        lse_shape = (*shape[:-1], 1)
        out.append({"out_a": torch.randn(shape, generator=g, dtype=torch.float64),
                    "lse_a": torch.randn(lse_shape, generator=g, dtype=torch.float64) * 3 + off,
                    "out_b": torch.randn(shape, generator=g, dtype=torch.float64),
                    "lse_b": torch.randn(lse_shape, generator=g, dtype=torch.float64) * 3})
    return out


@exercise("ring_merge", points=2, topic="model_parallel", function=True)
def ring_merge(fn, seed: int = MERGE_SEED):
    """``fn(out_a, lse_a, out_b, lse_b) -> (out, lse)``: attention over two disjoint key
    blocks from each block's normalised output and log-sum-exp."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, merge_probes(seed))}


def _flatten(v) -> list[float]:
    if isinstance(v, list):
        return [x for item in v for x in _flatten(item)]
    return [number(v)]


@ring_merge.judge_with
def _judge_ring_merge(ev: dict) -> Verdict:
    probes, outs = probed(ev, merge_probes, MERGE_SEED)
    expected = f"the merged (out, lse) of {len(probes)} block pairs, lse up to 800 apart"
    for i, (p, o) in enumerate(zip(probes, outs)):
        where = f"pair {i} ({tuple(p['out_a'].shape)}, lse_a − lse_b ≈ {OFFSETS[i]:.0f})"
        if "error" in o:
            return Verdict(False, expected=expected, got=f"{where}: your function raised "
                           f"{o['error']}", hint="it takes out (B, nh, Tq, hs) and lse "
                           "(B, nh, Tq, 1) tensors of two blocks and returns (out, lse)")
        want_out, want_lse = merge(p["out_a"], p["lse_a"], p["out_b"], p["lse_b"])
        try:
            got = o["out"]
            if not (isinstance(got, list) and len(got) == 2):
                raise ValueError
            g_out = torch.tensor(_flatten(got[0]), dtype=torch.float64)
            g_lse = torch.tensor(_flatten(got[1]), dtype=torch.float64)
        except (ValueError, TypeError):
            return Verdict(False, expected=expected, got=f"{where}: not a pair of tensors",
                           hint="return (out, lse), out shaped like out_a, lse like lse_a")
        if g_out.numel() != want_out.numel() or g_lse.numel() != want_lse.numel():
            return Verdict(False, expected=expected, got=f"{where}: shapes differ",
                           hint="out keeps out_a's shape, lse keeps lse_a's")
        if not (torch.isfinite(g_out).all() and torch.isfinite(g_lse).all()):
            return Verdict(False, expected=expected, got=f"{where}: inf or nan",
                           hint="exp() of a large log-sum-exp overflows: weigh each block "
                                "by exp of its lse minus the merged one, never exp(lse) itself")
        err_lse = float((g_lse - want_lse.reshape(-1)).abs().max())
        if err_lse > 1e-9 * max(1.0, float(want_lse.abs().max())):
            lse_max = torch.maximum(p["lse_a"], p["lse_b"]).reshape(-1)
            hint = ("the merged lse is the log of the two blocks' summed exponentials, not the "
                    "larger one" if torch.allclose(g_lse, lse_max) else
                    "the merged lse is log(e^lse_a + e^lse_b), computed without overflow")
            return Verdict(False, expected=expected,
                           got=f"{where}: lse off ({miss_band(float(g_lse[0]), float(want_lse.reshape(-1)[0]))})",
                           hint=hint)
        err = float((g_out - want_out.reshape(-1)).abs().max())
        if not math.isfinite(err) or err > 1e-9:
            return Verdict(False, expected=expected, got=f"{where}: out differs by {err:.1e}",
                           hint="each block's out is already normalised by its own sum: weigh "
                                "it by its share of the merged sum, exp(lse_block − lse)")
    return Verdict(True, expected=expected, got=f"all {len(probes)} pairs match")


__all__ = ["pipeline_bubble", "tp_rank_bytes", "tp_allreduces", "ring_merge", "merge_probes",
           "tp_probes", "reference_tp_bytes"]
