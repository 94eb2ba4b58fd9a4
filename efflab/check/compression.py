"""Checks for lesson 12 (compression): the structured sparsity that halves the MLP's FLOPs, and
the soft-target loss of distillation at a temperature."""

from __future__ import annotations

import math

import torch

from efflab.check.core import (
    Verdict,
    exercise,
    judge_number,
    miss_band,
    number,
    probe_outputs,
    probed,
)
from efflab.studies.distill import soft_target_loss as reference_soft_target_loss
from efflab.techniques.pruning import kept_channels, mlp_flops_per_token

PROBE_SEED = 12
TEMPERATURES = (1.0, 2.0, 4.0, 0.5)


@exercise("mlp_flops_sparsity", points=1, topic="compression")
def mlp_flops_sparsity(answer, n_embd: int = 128, hidden: int = 512, fraction: float = 0.5):
    """The structured-pruning ``sparsity`` (fraction of the MLP's hidden channels removed) that
    leaves the MLP ``fraction`` of its forward FLOPs per token."""
    return {"answer": number(answer), "n_embd": int(n_embd), "hidden": int(hidden),
            "fraction": float(fraction)}


@mlp_flops_sparsity.judge_with
def _judge_mlp(ev: dict) -> Verdict:
    C, H, f = int(ev["n_embd"]), int(ev["hidden"]), number(ev["fraction"])
    if C < 1 or H < 1 or not 0 < f < 1:
        raise ValueError(f"impossible shape or fraction: C={C}, H={H}, fraction={f}")
    got = number(ev["answer"])
    # FLOPs are 4·C·H: linear in the channels kept, so keeping f of them leaves f of the FLOPs
    truth = 1 - f
    expected = f"the fraction of the {H} MLP channels to remove so {f:.0%} of the FLOPs remain"
    if math.isfinite(got) and 0 <= got < 1:
        kept = kept_channels(H, got)
        left = mlp_flops_per_token(C, kept) / mlp_flops_per_token(C, H)
        if abs(left - f) <= 0.01:
            return Verdict(True, expected=expected, got=f"{got:g}: {kept} channels, {left:.0%} "
                                                        "of the FLOPs")
    block_share = (2 * C * H * (1 - f)) / (4 * C * C + 2 * C * H)
    slips = [
        (1 - math.sqrt(f), "the MLP's FLOPs are linear in its hidden channels (4·C·H), not "
                           "quadratic: both matmuls shrink along the same axis"),
        (block_share, "that is the share of the block's weights removed; the question asks "
                      "for the fraction of the MLP's channels"),
        (1 - f / 2, "removing a channel removes its row of c_fc AND its column of c_proj at "
                    "once — count FLOPs per channel, not per matrix"),
    ]
    return judge_number(got, truth, expected=expected, slips=slips, rel=0.02,
                        hint="write the MLP's FLOPs per token as a function of its hidden "
                             "width H and solve FLOPs(H·(1−s)) = fraction · FLOPs(H)")


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
