"""Checks for lesson 13 (scaling laws): the compute-optimal size and tokens for a budget 10x
larger, and the loss the fit predicts there — both from the learner's own fit."""

from __future__ import annotations

import math

from efflab.check.core import Verdict, close, exercise, miss_band, number


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
