"""Checks for lesson 06 (mixture of experts): top-1 routing with capacity, and the balancing loss."""

from __future__ import annotations

import math

import torch

from efflab.check.core import Verdict, exercise, number, probe_outputs, probed
from efflab.techniques.moe import MoEConfig

PROBE_SEED = 6
# (tokens N, experts E, capacity factor, skew): skewed routers overflow some experts
CASES = ((16, 4, 1.0, 3.0), (24, 4, 1.25, 2.0), (10, 3, 1.0, 0.5), (30, 8, 1.5, 4.0),
         (7, 2, 1.0, 1.0))


def route_probes(seed: int = PROBE_SEED) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, e, cf, skew in CASES:
        logits = torch.randn(n, e, generator=g, dtype=torch.float64)  # (N, E)
        logits[:, 0] += skew  # expert 0 is popular: it overflows
        out.append({"probs": torch.softmax(logits, dim=-1).float(), "capacity_factor": cf})
    return out


def reference_route(probs: torch.Tensor, capacity_factor: float) -> list[int]:
    """Top-1 expert per token, -1 where the expert is full; earlier tokens have priority."""
    n, e = probs.shape
    slots = MoEConfig(experts=e, top_k=1, capacity=capacity_factor).slots(n)
    taken = [0] * e
    out = []
    for choice in probs.argmax(dim=-1).tolist():
        if taken[choice] < slots:
            taken[choice] += 1
            out.append(choice)
        else:
            out.append(-1)
    return out


@exercise("route", points=2, topic="moe", function=True)
def route(fn, seed: int = PROBE_SEED):
    """``fn(probs, capacity_factor) -> expert per token (-1 = dropped)``: top-1 routing where
    each expert takes at most ceil(capacity_factor · N / E) tokens, earlier tokens first."""
    outs = probe_outputs(lambda probs, capacity_factor: [
        int(v) for v in torch.as_tensor(fn(probs.clone(), capacity_factor)).reshape(-1).tolist()],
        route_probes(seed))
    return {"seed": int(seed), "outputs": outs}


def _variant(probs, cf, slots_fn, reverse=False):
    n, e = probs.shape
    slots = slots_fn(cf * n / e)
    taken, out = [0] * e, [None] * n
    order = range(n - 1, -1, -1) if reverse else range(n)
    choices = probs.argmax(dim=-1).tolist()
    for i in order:
        c = choices[i]
        if taken[c] < slots:
            taken[c] += 1
            out[i] = c
        else:
            out[i] = -1
    return out


@route.judge_with
def _judge_route(ev: dict) -> Verdict:
    probes, outs = probed(ev, route_probes, PROBE_SEED)
    expected = f"each token's expert (or -1 when dropped) for {len(probes)} routers"
    for p, o in zip(probes, outs):
        probs, cf = p["probs"], p["capacity_factor"]
        n, e = probs.shape
        case = f"N={n} tokens, E={e} experts, capacity factor {cf}"
        if "error" in o:
            return Verdict(False, expected=expected, got=f"{case}: your function raised {o['error']}",
                           hint="probs is (N, E); return N expert indices")
        got = [int(number(v)) for v in o["out"]]
        want = reference_route(probs, cf)
        if got == want:
            continue
        if len(got) != n:
            return Verdict(False, expected=expected, got=f"{case}: {len(got)} entries, not {n}",
                           hint="one entry per token")
        shown = f"{case}: {sum(a != b for a, b in zip(got, want))} of {n} tokens differ"
        variants = [
            (probs.argmax(dim=-1).tolist(), "no token was dropped: each expert has only "
             "ceil(capacity_factor · N / E) slots"),
            (_variant(probs, cf, math.floor), "round the slots up (ceil), not down"),
            (_variant(probs, cf, lambda x: math.ceil(x) - 1), "an expert takes tokens while it "
             "has used fewer than its slots: the last slot counts too"),
            (_variant(probs, cf, lambda x: math.ceil(x) + 1), "one slot too many per expert"),
            (_variant(probs, cf, math.ceil, reverse=True), "earlier tokens have priority: fill "
             "the slots in token order"),
            (probs.argmin(dim=-1).tolist(), "top-1 is the expert with the *largest* probability"),
        ]
        hint = next((h for v, h in variants if got == v and v != want),
                    "pick argmax per token, then keep at most `slots` tokens per expert in order")
        return Verdict(False, expected=expected, got=shown, hint=hint)
    return Verdict(True, expected=expected, got=f"all {len(probes)} routers exact")


def reference_balance_loss(probs: torch.Tensor) -> float:
    """Switch Transformer: E · Σ_i f_i · P_i, f_i = share of tokens whose top-1 is i (before
    capacity), P_i = mean router probability of expert i."""
    n, e = probs.shape
    probs = probs.double()
    f = torch.bincount(probs.argmax(dim=-1), minlength=e).double() / n  # (E,)
    P = probs.mean(dim=0)  # (E,)
    return float(e * (f * P).sum())


@exercise("balance_loss", points=1, topic="moe", function=True)
def balance_loss(fn, seed: int = PROBE_SEED):
    """``fn(probs) -> float``: the load-balancing loss E · Σ f_i · P_i of a top-1 router."""
    outs = probe_outputs(lambda probs, capacity_factor: float(fn(probs.clone())), route_probes(seed))
    return {"seed": int(seed), "outputs": outs}


@balance_loss.judge_with
def _judge_balance(ev: dict) -> Verdict:
    probes, outs = probed(ev, route_probes, PROBE_SEED)
    expected = f"E · Σ f_i·P_i for {len(probes)} routers, within 1e-4"
    for p, o in zip(probes, outs):
        probs = p["probs"]
        n, e = probs.shape
        case = f"N={n}, E={e}"
        if "error" in o:
            return Verdict(False, expected=expected, got=f"{case}: your function raised {o['error']}",
                           hint="probs is an (N, E) tensor; return one number")
        got, want = number(o["out"]), reference_balance_loss(probs)
        if abs(got - want) <= 1e-4 * max(1.0, abs(want)):
            continue
        d = probs.double()
        counts = torch.bincount(d.argmax(dim=-1), minlength=e).double()
        P = d.mean(dim=0)
        slips = [(want / e, "multiply by the number of experts E (so uniform routing gives 1)"),
                 (want * n, "f_i is the *fraction* of tokens sent to expert i, not the count"),
                 (float(e * (P * P).sum()), "f_i counts where tokens went (argmax), P_i is the "
                  "mean probability: they are different vectors"),
                 (float(e * (counts / n).pow(2).sum()), "P_i is the mean router probability "
                  "(it carries the gradient), not the token share again"),
                 (float((counts / n * P).sum() * e * e), "multiply by E once")]
        hint = next((h for v, h in slips if abs(got - v) <= 1e-4 * max(1.0, abs(v))
                     and abs(v - want) > 1e-6), "f_i = share of tokens whose top-1 is expert i; "
                    "P_i = mean over tokens of probs[:, i]")
        return Verdict(False, expected=expected, got=f"{case}: {got:.6g}, off by "
                       f"{abs(got - want):.3g}", hint=hint)
    return Verdict(True, expected=expected, got=f"all {len(probes)} within tolerance")
