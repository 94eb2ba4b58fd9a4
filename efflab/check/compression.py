"""Checks for lesson 12 (compression): the structured MLP sparsity that leaves a whole block a
share of its FLOPs (code), and the soft-target loss of distillation at a temperature (code)."""

from __future__ import annotations

import math
import random

import torch

from efflab.check.core import (
    Verdict,
    exercise,
    first_slip,
    judge_probed_numbers,
    miss_band,
    number,
    probe_outputs,
    probed,
)
from efflab.studies.distill import soft_target_loss as reference_soft_target_loss
from efflab.techniques.pruning import attention_flops_per_token, mlp_flops_per_token

PROBE_SEED = 12
TEMPERATURES = (1.0, 2.0, 4.0, 0.5)


# -- the structured sparsity that leaves a block a fraction of its FLOPs, as code ------------

SPARSITY_PROBE_SEED = 120


def sparsity_probes(seed: int = SPARSITY_PROBE_SEED) -> list[dict]:
    """Seeded block shapes (width C, MLP hidden channels H, context T) and a target share of
    the block's forward FLOPs per token, always above what attention alone costs (so a
    sparsity in [0, 1) reaches it). cpu-small's shape (128, 512, 128) is not among them."""
    rng = random.Random(seed)
    out = []
    for _ in range(8):
        c = rng.choice((64, 96, 192, 256, 384, 768))
        h = c * rng.choice((4, 4, 2, 8, 3))
        t = rng.choice((64, 256, 512, 1024, 2048))
        floor = _attention(c, t) / (_attention(c, t) + mlp_flops_per_token(c, h))
        f = round(floor + (1 - floor) * rng.uniform(0.15, 0.85), 3)
        out.append({"n_embd": c, "hidden": h, "context": t, "fraction": f})
    return out


def _attention(c: int, t: int) -> int:
    """Every head kept (heads · head size = C): projections and scores over T keys."""
    return attention_flops_per_token(c, 1, c, t)


def reference_block_sparsity(n_embd: int, hidden: int, context: int, fraction: float) -> float:
    """The sparsity s of the MLP's channels with attention(C, T) + 4·C·H·(1 − s) = fraction ·
    (attention(C, T) + 4·C·H): only the MLP shrinks, so its share carries the whole cut."""
    attn, mlp = _attention(n_embd, context), mlp_flops_per_token(n_embd, hidden)
    return 1 - (fraction * (attn + mlp) - attn) / mlp


@exercise("block_flops_sparsity", points=2, topic="compression", function=True)
def block_flops_sparsity(fn, seed: int = SPARSITY_PROBE_SEED):
    """``fn(n_embd, hidden, context, fraction) -> sparsity``: the fraction of the MLP's hidden
    channels structured pruning must remove so that one transformer block (attention with every
    head kept, over ``context`` keys, and the MLP) keeps ``fraction`` of its forward FLOPs per
    token."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, sparsity_probes(seed))}


def _sparsity_slip_hint(got: float, p: dict) -> str:
    c, h, t, f = p["n_embd"], p["hidden"], p["context"], p["fraction"]
    mlp = mlp_flops_per_token(c, h)

    def solve(attn):
        return 1 - (f * (attn + mlp) - attn) / mlp

    return first_slip(got, [
            (1 - f, "that leaves the MLP the fraction; the question is the whole block, whose "
                    "attention is not pruned"),
            (1 - math.sqrt(f), "the MLP's FLOPs are linear in its hidden channels: both matmuls "
                               "shrink along the same axis"),
            (solve(8 * c * c), "attention also scores and mixes every one of the context's keys"),
            (solve(4 * c * t), "attention also runs its four C×C projections (q, k, v and out)"),
            (solve(2 * c * t + 8 * c * c), "scores and mixing are two matmuls over the context, "
                                           "2 FLOPs a multiply-add each"),
            ((1 - f) * (_attention(c, t) + mlp) / _attention(c, t),
             "the channels removed are the MLP's: divide the FLOPs to cut by the MLP's FLOPs")],
        "write the block's FLOPs per token as attention's plus the MLP's, the MLP's as a "
        "function of the channels kept, and solve for the share of channels removed", rel=1e-6)


@block_flops_sparsity.judge_with
def _judge_block_sparsity(ev: dict) -> Verdict:
    return judge_probed_numbers(
        ev, sparsity_probes, SPARSITY_PROBE_SEED, reference_block_sparsity,
        expected="the MLP sparsity that leaves unseen blocks their target share of FLOPs, "
                 "within 0.01%",
        case=lambda i, p: (f"block {i + 1} (C={p['n_embd']}, H={p['hidden']}, T={p['context']}, "
                           f"{p['fraction']:.1%} of the FLOPs)"),
        takes="it takes n_embd, hidden, context (ints) and fraction (a float in (0, 1))",
        slip_hint=_sparsity_slip_hint, rel=1e-4)


def soft_probes(seed: int = PROBE_SEED) -> list[dict]:
    """Seeded student/teacher logits (B, T, V) and temperatures."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, tau in enumerate(TEMPERATURES):
        shape = (2, 3 + i, 11 + 5 * i)
        s = torch.randn(*shape, generator=g) * (1 + i)
        t = torch.randn(*shape, generator=g) * 2
        out.append({"student_logits": s, "teacher_logits": t, "temperature": tau})
    return out


@exercise("soft_target_loss", points=2, topic="compression", function=True)
def soft_target_loss(fn, seed: int = PROBE_SEED):
    """``fn(student_logits, teacher_logits, temperature) -> loss``: τ² · KL(p_t ‖ p_s) with
    p = softmax(logits / τ) over the last axis, averaged over every position."""
    outs = probe_outputs(lambda student_logits, teacher_logits, temperature: float(
        torch.as_tensor(fn(student_logits.clone(), teacher_logits.clone(), temperature))),
        soft_probes(seed))
    return {"seed": int(seed), "outputs": outs}


def _kl(s, t, tau, reverse=False, scale=True):
    ls = torch.log_softmax(s.double() / tau, -1)
    lt = torch.log_softmax(t.double() / tau, -1)
    a, b = (ls, lt) if reverse else (lt, ls)
    kl = (a.exp() * (a - b)).sum(-1).mean()
    return float(kl * (tau ** 2 if scale else 1))


@soft_target_loss.judge_with
def _judge_soft(ev: dict) -> Verdict:
    probes, outs = probed(ev, soft_probes, PROBE_SEED)
    expected = f"τ²·KL(teacher ‖ student) at τ in {list(TEMPERATURES)}, within 0.1%"
    for p, o in zip(probes, outs):
        s, t, tau = p["student_logits"], p["teacher_logits"], p["temperature"]
        case = f"τ = {tau}, logits {tuple(s.shape)}"
        if "error" in o:
            return Verdict(False, expected=expected, got=f"{case}: your function raised {o['error']}",
                           hint="the arguments are (B, T, V) tensors and a float")
        got = number(o["out"])
        truth = float(reference_soft_target_loss(s, t, tau))
        if math.isfinite(got) and abs(got - truth) <= 1e-3 * abs(truth) + 1e-6:
            continue
        ce = float(-(torch.softmax(t.double() / tau, -1)
                     * torch.log_softmax(s.double() / tau, -1)).sum(-1).mean() * tau ** 2)
        slips = [
            (_kl(s, t, tau, scale=False), "multiply by τ²: the soft gradients shrink as 1/τ², "
                                          "the factor keeps them the size of the hard loss's"),
            (_kl(s, t, tau, reverse=True), "the KL divergence is not symmetric: the teacher's "
                                           "distribution is the target, KL(p_t ‖ p_s)"),
            (_kl(s, t, 1.0), "divide both logits by the temperature before the softmax"),
            (_kl(s, t, 1.0) * tau ** 2, "divide both logits by the temperature before the softmax"),
            (ce, "that is the soft cross-entropy; KL subtracts the teacher's own entropy "
                 "(it is 0 when the student matches the teacher)"),
            (float(_kl(s, t, tau) * s.shape[1] * s.shape[0]),
             "average over every position (batch and time), do not sum"),
        ]
        for value, hint in slips:
            if math.isfinite(got) and abs(got - value) <= 1e-3 * abs(value) + 1e-6:
                return Verdict(False, expected=expected,
                               got=f"{case}: {got:.6g} ({miss_band(got, truth)})", hint=hint)
        return Verdict(False, expected=expected, got=f"{case}: {got:.6g} ({miss_band(got, truth)})",
                       hint="softmax over the last axis of logits/τ for both; Σ p_t·(log p_t − "
                            "log p_s) per position; mean over positions; × τ²")
    return Verdict(True, expected=expected, got=f"all {len(probes)} probes within 0.1%")
