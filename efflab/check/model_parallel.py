"""Checks for lesson 15 (model parallelism), each a learner function probed on unseen inputs:
a pipeline's bubble, the bytes a tensor-parallel rank holds, the all-reduces (and ring bytes) a
tensor-parallel step makes, and ring attention's block merge."""

from __future__ import annotations

import math
import random

import torch

from efflab.check.core import (
    Verdict,
    close,
    exercise,
    first_slip,
    judge_probed_numbers,
    miss_band,
    number,
    probe_outputs,
    probed,
)
from efflab.systems.parallel.pipeline import bubble_fraction
from efflab.systems.parallel.ring import merge
from efflab.systems.parallel.tensor import (
    tp_allreduces_per_step,
    tp_param_counts_of,
    tp_ring_bytes_sent,
)

BUBBLE_SEED = 12


def bubble_probes(seed: int = BUBBLE_SEED) -> list[dict]:
    """Seeded (stages, micro_batches) pairs, from a 2-stage toy to a 64-stage pipeline."""
    rng = random.Random(seed)
    pairs = [{"stages": 1, "micro_batches": rng.randint(1, 8)}]  # no pipeline: no bubble
    pairs += [{"stages": rng.choice((2, 3, 4, 8, 16, 64)), "micro_batches": rng.randint(1, 128)}
              for _ in range(7)]
    return pairs


def _bubble_slip_hint(got: float, p: int, m: int) -> str:
    want = bubble_fraction(p, m)
    return first_slip(got, [
            ((p - 1) / m, "divide by the whole step's length: the m micro-batches' work plus the "
             "fill and drain"),
            ((p - 1) / (m + p), "count the step's slots again: the pipeline fills in one slot "
             "fewer than it has stages"),
            (p / (m + p - 1), "a stage is idle while the others fill and drain: one stage fewer "
             "than the pipeline has"),
            (1 - want, "that is the busy share; the bubble is the idle one"),
            (want * 100, "give a fraction between 0 and 1, not a percentage")],
        "count the slots of a step: the m micro-batches each stage works on, and the ones "
        "it waits while the pipeline fills and drains", want=want, rel=1e-9, abs_=1e-12)


@exercise("pipeline_bubble", points=1, topic="model_parallel", function=True)
def pipeline_bubble(fn, seed: int = BUBBLE_SEED):
    """``fn(stages, micro_batches) -> fraction``: the share of a step each of ``stages`` equal
    pipeline stages sits idle over ``micro_batches`` micro-batches (GPipe or 1F1B alike)."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, bubble_probes(seed))}


@pipeline_bubble.judge_with
def _judge_bubble(ev: dict) -> Verdict:
    return judge_probed_numbers(
        ev, bubble_probes, BUBBLE_SEED,
        lambda stages, micro_batches: bubble_fraction(stages, micro_batches),
        expected="the idle share of a stage for unseen pipelines, as a fraction of the step",
        case=lambda i, p: f"stages={p['stages']}, micro_batches={p['micro_batches']}",
        takes="it takes stages and micro_batches",
        slip_hint=lambda got, p: _bubble_slip_hint(got, p["stages"], p["micro_batches"]),
        rel=1e-9)


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
    return first_slip(got, [
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
             "count it once")],
        "sort the parameters into those the split divides (every block's attention and "
        "MLP matrices, the biases of the split columns) and those each rank keeps whole",
        want=want, rel=1e-6)


@exercise("tp_rank_bytes", points=2, topic="model_parallel", function=True)
def tp_rank_bytes(fn, seed: int = TP_SEED):
    """``fn(n_layer, n_embd, vocab_size, block_size, tp) -> bytes`` of fp32 parameters one of
    ``tp`` Megatron-style tensor-parallel ranks holds (GPT-2 layout, tied token table)."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, tp_probes(seed))}


@tp_rank_bytes.judge_with
def _judge_tp_bytes(ev: dict) -> Verdict:
    return judge_probed_numbers(
        ev, tp_probes, TP_SEED, reference_tp_bytes,
        expected="the parameter bytes of one TP rank, for unseen model shapes and TP degrees",
        case=lambda i, p: ", ".join(f"{k}={v:,}" for k, v in p.items()),
        takes="it takes n_layer, n_embd, vocab_size, block_size, tp",
        slip_hint=_tp_slip_hint, unit="bytes", rel=1e-6)


COMM_SEED = 4


def comm_probes(seed: int = COMM_SEED) -> list[dict]:
    """Seeded TP runs: layers, batch, sequence, width and TP degree (t divides the width)."""
    rng = random.Random(seed)
    out = []
    for _ in range(8):
        t = rng.choice((2, 4, 8))
        out.append({"n_layer": rng.randint(1, 96), "batch": rng.choice((1, 4, 16)),
                    "seq": rng.choice((128, 1024, 4096)), "n_embd": t * rng.choice((64, 256, 1536)),
                    "tp": t})
    return out


def reference_tp_comm(n_layer, batch, seq, n_embd, tp) -> tuple[int, float]:
    """(all-reduces per training step, bytes one rank sends for them on a ring, fp32)."""
    calls = tp_allreduces_per_step(n_layer)["total"]
    return calls, tp_ring_bytes_sent(calls * batch * seq * n_embd, tp)


def _comm_slip_hint(calls: float, sent: float, p: dict) -> str:
    L, t = p["n_layer"], p["tp"]
    want_calls, want_sent = reference_tp_comm(**p)
    if calls != want_calls:
        return first_slip(calls, [(2 * L, "the backward needs them too: f's backward sums the input "
                             "gradients"),
                            (L, "a layer has two split blocks, attention and MLP, each summed "
                             "once per pass"),
                            (8 * L, "the column-split layer needs no all-reduce after it: only the "
                             "row-split one does (forward), and only the input before the "
                             "column split (backward)"),
                            (4, "that is one layer; count every layer")],
            "count the split blocks per layer, then the passes each one is summed in")
    values = want_calls * p["batch"] * p["seq"] * p["n_embd"]
    return first_slip(sent, [(values, "that counts values; give bytes (4 per fp32 value)"),
                        (4 * values, "a ring all-reduce does not send the whole tensor once: each "
                         "rank sends 2(t − 1)/t of it (a reduce-scatter, then an all-gather)"),
                        (4 * values * (t - 1) / t, "a ring all-reduce is two phases, "
                         "reduce-scatter and all-gather, each sending (t − 1)/t of the tensor"),
                        (want_sent / t, "each rank sends 2(t − 1)/t of the whole tensor, not of "
                         "its shard")],
        "each all-reduce sums B·T·C activations; a ring sends 2(t − 1)/t of them per rank",
        rel=1e-6)


@exercise("tp_step_comm", points=2, topic="model_parallel", function=True)
def tp_step_comm(fn, seed: int = COMM_SEED):
    """``fn(n_layer, batch, seq, n_embd, tp) -> (allreduces, bytes_sent)``: the all-reduces one
    Megatron-style tensor-parallel rank makes in a training step (forward and backward) and the
    bytes it sends for them on a ring (fp32 activations)."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, comm_probes(seed))}


@tp_step_comm.judge_with
def _judge_tp_step_comm(ev: dict) -> Verdict:
    probes, outs = probed(ev, comm_probes, COMM_SEED)
    expected = f"(all-reduces, bytes sent) of one TP rank's training step, {len(probes)} runs"
    for p, o in zip(probes, outs):
        case = ", ".join(f"{k}={v:,}" for k, v in p.items())
        if "error" in o:
            return Verdict(False, expected=expected, got=f"{case}: your function raised {o['error']}",
                           hint="it takes n_layer, batch, seq, n_embd, tp")
        got = o["out"]
        if not (isinstance(got, list) and len(got) == 2):
            return Verdict(False, expected=expected, got=f"{case}: not a pair",
                           hint="return (allreduces, bytes_sent)")
        calls, sent = number(got[0]), number(got[1])
        want_calls, want_sent = reference_tp_comm(**p)
        if calls == want_calls and close(sent, want_sent, rel=1e-6):
            continue
        what = (f"{calls:g} all-reduces ({miss_band(calls, want_calls)})" if calls != want_calls
                else f"{sent:,.0f} bytes sent ({miss_band(sent, want_sent)})")
        return Verdict(False, expected=expected, got=f"{case}: {what}",
                       hint=_comm_slip_hint(calls, sent, p))
    return Verdict(True, expected=expected, got=f"all {len(probes)} runs")


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


__all__ = ["pipeline_bubble", "tp_rank_bytes", "tp_step_comm", "ring_merge", "bubble_probes",
           "tp_probes", "reference_tp_bytes", "comm_probes", "reference_tp_comm", "merge_probes"]
