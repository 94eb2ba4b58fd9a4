"""Checks for lesson 13 (scaling laws): the vertex of an IsoFLOP curve (code), the tokens per
parameter at the optimum of a fitted law (code), and the number-answer checks of the size and
tokens for a budget 10x larger and of the loss the fit predicts there (no longer in the lesson)."""

from __future__ import annotations

import math
import random

import numpy as np

from efflab.check.core import (
    Verdict,
    close,
    exercise,
    judge_probed_numbers,
    miss_band,
    number,
    probe_outputs,
    probed,
)


def _law(law: dict) -> tuple[float, float]:
    return number(law["prefactor"]), number(law["exponent"])


@exercise("compute_optimal", points=2, topic="scaling", answer=("n", "d"), measured=("n_law",))
def compute_optimal(answer, fit: dict, budget: float):
    """``answer = (N_opt, D_opt)`` for ``budget`` FLOPs from the learner's fit (its N_opt power
    law); D_opt = budget / (6 · N_opt)."""
    n, d = answer
    return {"n": number(n), "d": number(d), "budget": number(budget),
            "n_law": {"prefactor": number(fit["n_law"]["prefactor"]),
                      "exponent": number(fit["n_law"]["exponent"])},
            "largest": max(number(b) for b in fit["budgets"]["budget"])}


@compute_optimal.judge_with
def _judge_compute_optimal(ev: dict) -> Verdict:
    k, a = _law(ev["n_law"])
    c = number(ev["budget"])
    if c <= 0 or k <= 0:
        raise ValueError("budget and prefactor must be > 0")
    n_true = k * c ** a
    d_true = c / (6 * n_true)
    n, d = number(ev["n"]), number(ev["d"])
    expected = f"N_opt and D_opt at C = {c:.3g} from your fit, within 5%"
    got = f"N = {n:,.4g} ({miss_band(n, n_true)}), D = {d:,.4g} ({miss_band(d, d_true)})"
    n_ok, d_ok = close(n, n_true, rel=0.05), close(d, d_true, rel=0.05)
    if n_ok and d_ok:
        return Verdict(True, expected=expected, got=f"N = {n:,.4g}, D = {d:,.4g}")
    largest = number(ev["largest"])
    if close(n, k * largest ** a, rel=0.05):
        return Verdict(False, expected=expected, got=got,
                       hint="that is the optimum of your largest budget; evaluate the law at "
                            "the new budget")
    if close(n, math.sqrt(c / 120), rel=0.05) or close(n, k * c ** 0.5, rel=0.05):
        return Verdict(False, expected=expected, got=got,
                       hint="use the exponent and prefactor of YOUR fit, not Chinchilla's")
    if n_ok and close(d, c / n_true, rel=0.05):
        return Verdict(False, expected=expected, got=got,
                       hint="C = 6·N·D: each token costs 6 FLOPs per parameter")
    if n_ok and close(d, 20 * n_true, rel=0.05):
        return Verdict(False, expected=expected, got=got,
                       hint="20 tokens per parameter is Chinchilla's rule; your budget fixes D "
                            "once N is chosen: D = C / 6N")
    if n_ok:
        return Verdict(False, expected=expected, got=got,
                       hint="the size is right; the tokens follow from the budget: D = C / 6N")
    return Verdict(False, expected=expected, got=got,
                   hint="N_opt = prefactor · C^a with your fit's n_law")


@exercise("optimal_loss", points=1, topic="scaling", measured=("loss_law", "last"))
def optimal_loss(answer, fit: dict, budget: float):
    """The held-out loss (nats per byte) the fit's loss law L_opt = k · C^γ predicts at
    ``budget`` FLOPs."""
    return {"answer": number(answer), "budget": number(budget),
            "loss_law": {"prefactor": number(fit["loss_law"]["prefactor"]),
                         "exponent": number(fit["loss_law"]["exponent"])},
            "last": [number(v) for v in fit["budgets"]["loss_opt"]][-1],
            "largest": max(number(b) for b in fit["budgets"]["budget"])}


@optimal_loss.judge_with
def _judge_optimal_loss(ev: dict) -> Verdict:
    k, g = _law(ev["loss_law"])
    c = number(ev["budget"])
    truth = k * c ** g
    got = number(ev["answer"])
    expected = f"L_opt at C = {c:.3g} from your loss law, within 1%"
    shown = f"{got:.4f} nats ({miss_band(got, truth)})"
    if close(got, truth, rel=0.01):
        return Verdict(True, expected=expected, got=f"{got:.4f} nats")
    if close(got, number(ev["last"]), rel=0.005):
        return Verdict(False, expected=expected, got=shown,
                       hint="that is the loss at your largest budget; more compute lowers it")
    if close(got, k * number(ev["largest"]) ** g, rel=0.005):
        return Verdict(False, expected=expected, got=shown,
                       hint="evaluate the law at the new budget, not the largest one measured")
    if close(got, k * c ** abs(g), rel=0.01) or got > number(ev["last"]):
        return Verdict(False, expected=expected, got=shown,
                       hint="the exponent is negative: loss falls as compute grows")
    return Verdict(False, expected=expected, got=shown,
                   hint="L = prefactor · C^exponent with your fit's loss_law")


# -- the vertex of an IsoFLOP curve, as code ------------------------------------------------

VERTEX_PROBE_SEED = 13


def vertex_probes(seed: int = VERTEX_PROBE_SEED) -> list[dict]:
    """Seeded IsoFLOP curves: 4 to 8 sizes, log-spaced but not sorted, losses from a parabola in
    log N plus evaluation noise; the best measured size is not the vertex."""
    rng = random.Random(seed)
    out = []
    for _ in range(8):
        k = rng.randint(4, 8)
        lo = rng.uniform(3.0, 6.0)                       # log10 of the smallest size
        xs = [lo + i * rng.uniform(0.15, 0.35) for i in range(k)]
        x_opt = rng.uniform(xs[1], xs[-2])               # the true vertex, inside the sizes
        curv, floor = rng.uniform(0.3, 2.0), rng.uniform(1.5, 4.0)
        pts = [(round(10 ** x), floor + curv * (x - x_opt) ** 2 + rng.gauss(0, 0.004))
               for x in xs]
        rng.shuffle(pts)
        out.append({"n_params": [p[0] for p in pts], "losses": [p[1] for p in pts]})
    return out


def _parabola(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    c2, c1, c0 = np.polyfit(x, y, 2)
    return float(c2), float(c1), float(c0)


def reference_vertex(n_params: list, losses: list) -> float:
    """N at the vertex of the least-squares parabola of loss against log N (the lesson's own
    ``fit_parabola``: any log base gives the same vertex)."""
    from efflab.studies.scaling import fit_parabola

    return fit_parabola(np.log10(np.asarray(n_params, float)), np.asarray(losses, float))["n_opt"]


@exercise("isoflop_vertex", points=2, topic="scaling", function=True)
def isoflop_vertex(fn, seed: int = VERTEX_PROBE_SEED):
    """``fn(n_params, losses) -> N_opt``: the compute-optimal size one budget's IsoFLOP runs
    point to, from a parabola of loss against log N."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, vertex_probes(seed))}


def _vertex_slip_hint(got: float, p: dict) -> str:
    n, y = np.asarray(p["n_params"], float), np.asarray(p["losses"], float)
    x = np.log10(n)
    c2, c1, c0 = _parabola(x, y)
    xv = -c1 / (2 * c2)
    l2, l1, _ = _parabola(n, y)
    for value, hint in [
            (float(n[np.argmin(y)]), "that is the best size you measured; the parabola's vertex "
             "lies between the sizes"),
            (xv, "that is the vertex's log; give N itself, in parameters"),
            (float(np.log(10) * xv), "that is the vertex's log; give N itself, in parameters"),
            (c0 - c1 * c1 / (4 * c2), "that is the loss at the vertex; the question is the size"),
            (-l1 / (2 * l2), "fit the parabola against log N: sizes are spread by factors, "
             "not by steps")]:
        if math.isfinite(value) and close(got, value, rel=1e-4):
            return hint
    return "fit loss against log N by least squares with a quadratic, and find where it is lowest"


@isoflop_vertex.judge_with
def _judge_isoflop_vertex(ev: dict) -> Verdict:
    probes, outs = probed(ev, vertex_probes, VERTEX_PROBE_SEED)
    expected = f"the vertex N of {len(probes)} IsoFLOP curves, within 0.01%"
    for i, (p, o) in enumerate(zip(probes, outs)):
        case = f"curve {i + 1} ({len(p['n_params'])} sizes, {min(p['n_params']):,} to {max(p['n_params']):,})"
        if "error" in o:
            return Verdict(False, expected=expected, got=f"{case}: your function raised {o['error']}",
                           hint="it takes n_params and losses, two lists of the same length "
                                "(not sorted)")
        got, want = number(o["out"]), reference_vertex(**p)
        if close(got, want, rel=1e-4):
            continue
        return Verdict(False, expected=expected, got=f"{case}: N = {got:,.6g} ({miss_band(got, want)})",
                       hint=_vertex_slip_hint(got, p))
    return Verdict(True, expected=expected, got=f"all {len(probes)} within 0.01%")


# -- tokens per parameter at the optimum of a fitted law, as code ---------------------------

RATIO_PROBE_SEED = 1300


def ratio_probes(seed: int = RATIO_PROBE_SEED) -> list[dict]:
    """Seeded laws N_opt = prefactor · C^exponent (exponents from 0.35 to Kaplan-like 0.73)
    and budgets in FLOPs from a CPU's 1e10 to a cluster's 1e24, each law placing the optimum
    at 1 to 1,000 tokens per parameter there."""
    rng = random.Random(seed)
    out = []
    for _ in range(8):
        a = rng.uniform(0.35, 0.75)
        c = 10 ** rng.uniform(10, 24)
        n = math.sqrt(c / (6 * 10 ** rng.uniform(0, 3)))   # the optimum of that law at c
        out.append({"prefactor": n / c ** a, "exponent": a, "budget": c})
    return out


def reference_tokens_per_param(prefactor: float, exponent: float, budget: float) -> float:
    """D_opt / N_opt at ``budget``: the law gives N_opt, the budget spent exactly (C = 6·N·D)
    gives D_opt."""
    n = prefactor * budget ** exponent
    return budget / (6 * n) / n


@exercise("tokens_per_param", points=2, topic="scaling", function=True)
def tokens_per_param(fn, seed: int = RATIO_PROBE_SEED):
    """``fn(prefactor, exponent, budget) -> D_opt / N_opt``: the training tokens per parameter of
    the compute-optimal model at ``budget`` FLOPs under the fitted law N_opt = prefactor ·
    budget^exponent."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, ratio_probes(seed))}


def _ratio_slip_hint(got: float, p: dict) -> str:
    k, a, c = p["prefactor"], p["exponent"], p["budget"]
    n = k * c ** a
    d = c / (6 * n)
    for value, hint in [
            (d, "that is D_opt itself; the question is tokens per parameter"),
            (n / d, "upside down: tokens divided by parameters"),
            (c / n / n, "each token costs 6 FLOPs per parameter (forward and backward)"),
            (20.0, "20 is Chinchilla's rule; the law you are given sets the ratio"),
            (c ** (1 - 2 * a) / 6, "the prefactor belongs in N_opt (and so twice in the ratio)"),
            (c / (6 * k * c ** a), "that is D_opt; divide it by N_opt")]:
        if math.isfinite(value) and close(got, value, rel=1e-4):
            return hint
    return ("get the optimal size from the law at this budget, then the tokens the budget buys "
            "that size, then their ratio")


@tokens_per_param.judge_with
def _judge_tokens_per_param(ev: dict) -> Verdict:
    return judge_probed_numbers(
        ev, ratio_probes, RATIO_PROBE_SEED, reference_tokens_per_param,
        expected="tokens per parameter at the optimum of unseen laws and budgets, within 0.01%",
        case=lambda i, p: (f"law {i + 1} (exponent {p['exponent']:.3f}, C = "
                           f"{p['budget']:.2g} FLOPs)"),
        takes="it takes prefactor, exponent and budget, three floats",
        slip_hint=_ratio_slip_hint, rel=1e-4)


__all__ = ["compute_optimal", "optimal_loss", "isoflop_vertex", "tokens_per_param"]
