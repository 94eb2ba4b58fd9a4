"""Checks of lessons 12 and 13: the right answer passes, plausible wrong ones get their hint."""

import math

import pandas as pd
import pytest
import torch.nn.functional as F

import efflab.check as check
from efflab.check import REGISTRY


@pytest.fixture(autouse=True)
def _answers(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFLAB_ANSWERS", str(tmp_path / "answers.jsonl"))


def _block_sparsity(n_embd, hidden, context, fraction):
    C, H, T = n_embd, hidden, context
    attention = 8 * C * C + 4 * C * T
    return 1 - (fraction * (attention + 4 * C * H) - attention) / (4 * C * H)


def test_block_flops_sparsity_right_passes_on_every_seed():
    for seed in (120, 1212, 7):
        fb = check.block_flops_sparsity(_block_sparsity, seed=seed)
        assert fb.passed and fb.points == fb.max_points, fb


def test_block_flops_sparsity_reference_is_the_library_block():
    from efflab.check.compression import reference_block_sparsity
    from efflab.techniques.pruning import (
        attention_flops_per_token,
        kept_channels,
        mlp_flops_per_token,
    )

    s = reference_block_sparsity(128, 512, 128, 0.75)
    kept = kept_channels(512, s)
    attn = attention_flops_per_token(128, 4, 32, 128)
    assert (attn + mlp_flops_per_token(128, kept)) / (attn + mlp_flops_per_token(128, 512)) == 0.75


def test_block_flops_sparsity_slips_fail_with_their_hint():
    mlp_only = check.block_flops_sparsity(lambda n_embd, hidden, context, fraction: 1 - fraction)
    assert not mlp_only and "whole block" in mlp_only.hint
    quad = check.block_flops_sparsity(lambda n_embd, hidden, context, fraction: 1 - fraction ** 0.5)
    assert not quad and "linear" in quad.hint

    def no_context(n_embd, hidden, context, fraction):
        return _block_sparsity(n_embd, hidden, 0, fraction)
    fb = check.block_flops_sparsity(no_context)
    assert not fb and "context's keys" in fb.hint

    def no_projections(n_embd, hidden, context, fraction):
        a, m = 4 * n_embd * context, 4 * n_embd * hidden
        return 1 - (fraction * (a + m) - a) / m
    fb = check.block_flops_sparsity(no_projections)
    assert not fb and "projections" in fb.hint

    def over_attention(n_embd, hidden, context, fraction):  # divides the cut by the wrong part
        a, m = 8 * n_embd ** 2 + 4 * n_embd * context, 4 * n_embd * hidden
        return (1 - fraction) * (a + m) / a
    fb = check.block_flops_sparsity(over_attention)
    assert not fb and "MLP's FLOPs" in fb.hint
    assert check.block_flops_sparsity(None).status == "unanswered"
    crash = check.block_flops_sparsity(lambda n_embd, hidden, context, fraction: 1 / 0)
    assert not crash and "fraction" in crash.hint


def test_block_flops_sparsity_feedback_never_states_the_sparsity():
    from efflab.check.compression import reference_block_sparsity, sparsity_probes
    fb = check.block_flops_sparsity(lambda n_embd, hidden, context, fraction: 0.5)
    want = reference_block_sparsity(**sparsity_probes()[0])
    text = f"{fb.expected} {fb.got} {fb.hint}"
    assert f"{want:.4g}" not in text and f"{want:.3g}" not in text


def _right(s, t, tau):
    ls, lt = F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1)
    return (lt.exp() * (lt - ls)).sum(-1).mean() * tau ** 2


def test_soft_target_loss_right_and_wrong():
    assert check.soft_target_loss(_right).passed
    no_t2 = check.soft_target_loss(lambda s, t, tau: _right(s, t, tau) / tau ** 2)
    assert not no_t2.passed and "τ²" in no_t2.hint
    reverse = check.soft_target_loss(lambda s, t, tau: _right(t, s, tau))
    assert not reverse.passed and "not symmetric" in reverse.hint
    no_temp = check.soft_target_loss(lambda s, t, tau: _right(s, t, 1.0) * tau ** 2)
    assert not no_temp.passed and "temperature" in no_temp.hint
    ce = check.soft_target_loss(lambda s, t, tau: -(F.softmax(t / tau, -1)
                                                    * F.log_softmax(s / tau, -1)).sum(-1).mean() * tau ** 2)
    assert not ce.passed and "entropy" in ce.hint
    boom = check.soft_target_loss(lambda s, t, tau: 1 / 0)
    assert not boom.passed and "ZeroDivisionError" in boom.got


def _fit():
    return {"n_law": {"prefactor": 0.02, "exponent": 0.6, "n": 3},
            "loss_law": {"prefactor": 40.0, "exponent": -0.12, "n": 3},
            "budgets": pd.DataFrame({"budget": [1e10, 1e11, 1e12],
                                     "loss_opt": [40 * c ** -0.12 for c in (1e10, 1e11, 1e12)]})}


def test_compute_optimal_right_and_wrong():
    fit, c = _fit(), 1e13
    n = 0.02 * c ** 0.6
    assert check.compute_optimal((n, c / (6 * n)), fit=fit, budget=c).passed
    no6 = check.compute_optimal((n, c / n), fit=fit, budget=c)
    assert not no6.passed and "6·N·D" in no6.hint
    rule = check.compute_optimal((n, 20 * n), fit=fit, budget=c)
    assert not rule.passed and "20 tokens" in rule.hint
    chin = check.compute_optimal(((c / 120) ** 0.5, 20 * (c / 120) ** 0.5), fit=fit, budget=c)
    assert not chin.passed and "YOUR fit" in chin.hint
    old = 0.02 * 1e12 ** 0.6
    stale = check.compute_optimal((old, 1e12 / (6 * old)), fit=fit, budget=c)
    assert not stale.passed and "largest budget" in stale.hint


def test_optimal_loss_right_and_wrong():
    fit, c = _fit(), 1e13
    assert check.optimal_loss(40 * c ** -0.12, fit=fit, budget=c).passed
    last = check.optimal_loss(40 * 1e12 ** -0.12, fit=fit, budget=c)
    assert not last.passed and "largest budget" in last.hint
    sign = check.optimal_loss(40 * c ** 0.12, fit=fit, budget=c)
    assert not sign.passed and "negative" in sign.hint


def test_judges_rerun_from_logged_evidence():
    fb = check.soft_target_loss(_right)
    from efflab.check import judge, latest_answers

    ev = latest_answers()["soft_target_loss"]
    assert judge("soft_target_loss", ev).passed == fb.passed
    assert {"block_flops_sparsity", "soft_target_loss", "compute_optimal", "optimal_loss"} <= set(REGISTRY)


# -- 13 · code: the vertex of an IsoFLOP curve ----------------------------------------------

def _vertex(n_params, losses):
    import numpy as np

    c2, c1, _ = np.polyfit(np.log(np.asarray(n_params, float)), losses, 2)  # any log base
    return float(np.exp(-c1 / (2 * c2)))


def test_isoflop_vertex_accepts_any_log_base_and_names_each_slip():
    import numpy as np

    assert check.isoflop_vertex(_vertex)
    for fn, hint in [
            (lambda n_params, losses: n_params[int(np.argmin(losses))], "best size you measured"),
            (lambda n_params, losses: math.log10(_vertex(n_params, losses)), "vertex's log"),
            (lambda n_params, losses: (lambda c: -c[1] / (2 * c[0]))(
                np.polyfit(np.asarray(n_params, float), losses, 2)), "against log N")]:
        fb = check.isoflop_vertex(fn)
        assert not fb.passed and fb.status == "wrong" and hint in fb.hint, (hint, str(fb))
        assert "too" in fb.got or "within 10%" in fb.got


def test_isoflop_vertex_reference_is_the_lessons_fit_on_the_shipped_sweep():
    from efflab.check.scaling import reference_vertex
    from efflab.studies.scaling import load_shipped, scaling_fit

    shipped = load_shipped()
    fit = scaling_fit(shipped, n_boot=20)
    for budget, runs in shipped.groupby("budget"):
        want = fit["budgets"].set_index("budget").loc[budget, "n_opt"]
        assert reference_vertex(runs["n_params"].tolist(), runs["val_loss"].tolist()) == \
            pytest.approx(want, rel=1e-9)
        assert _vertex(runs["n_params"].tolist(), runs["val_loss"].tolist()) == \
            pytest.approx(want, rel=1e-6)


def test_isoflop_vertex_hidden_seed_and_placeholder(tmp_path):
    ev = REGISTRY["isoflop_vertex"].collect(_vertex, seed=1313)
    assert ev["seed"] == 1313 and check.judge("isoflop_vertex", ev)
    assert not check.judge("isoflop_vertex", {**ev, "seed": 13})

    def placeholder(n_params, losses):
        raise NotImplementedError("replace this with your answer")

    with pytest.raises(NotImplementedError):
        check.isoflop_vertex(placeholder)
    (entry,) = check.read_answers(tmp_path / "answers.jsonl")
    assert check.judge("isoflop_vertex", entry["evidence"]).status == "unanswered"


# -- 13 · code: tokens per parameter at the optimum of a law ---------------------------------

def _ratio(prefactor, exponent, budget):
    n = prefactor * budget ** exponent
    return budget / (6 * n) / n


def test_tokens_per_param_right_passes_on_every_seed():
    for seed in (1300, 1313, 5):
        fb = check.tokens_per_param(_ratio, seed=seed)
        assert fb.passed and fb.points == fb.max_points, fb


def test_tokens_per_param_reference_agrees_with_the_compute_optimal_judge():
    from efflab.check.scaling import reference_tokens_per_param
    n = 0.02 * 1e13 ** 0.6
    d = 1e13 / (6 * n)
    fit = {"n_law": {"prefactor": 0.02, "exponent": 0.6},
           "budgets": pd.DataFrame({"budget": [1e10, 1e12]})}
    assert check.compute_optimal((n, d), fit=fit, budget=1e13).passed
    assert math.isclose(reference_tokens_per_param(0.02, 0.6, 1e13), d / n)


@pytest.mark.parametrize("fn, hint", [
    (lambda prefactor, exponent, budget: budget / (6 * prefactor * budget ** exponent), "D_opt"),
    (lambda prefactor, exponent, budget: 1 / _ratio(prefactor, exponent, budget), "upside down"),
    (lambda prefactor, exponent, budget: 6 * _ratio(prefactor, exponent, budget), "6 FLOPs"),
    (lambda prefactor, exponent, budget: 20.0, "Chinchilla"),
    (lambda prefactor, exponent, budget: budget ** (1 - 2 * exponent) / 6, "prefactor"),
])
def test_tokens_per_param_rejects_slips_with_their_hint(fn, hint):
    fb = check.tokens_per_param(fn)
    assert not fb.passed and hint in fb.hint, fb


def test_tokens_per_param_feedback_never_states_the_ratio():
    from efflab.check.scaling import ratio_probes, reference_tokens_per_param
    fb = check.tokens_per_param(lambda prefactor, exponent, budget: 1.0)
    want = reference_tokens_per_param(**ratio_probes()[0])
    text = f"{fb.expected} {fb.got} {fb.hint}"
    assert f"{want:.3g}" not in text and f"{want:.4g}" not in text
    assert check.tokens_per_param(None).status == "unanswered"
