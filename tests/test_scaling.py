"""IsoFLOP sweep: every run spends its budget, the fits recover known laws, the sweep resumes
from its store, and the shipped sweep loads."""

import math

import numpy as np
import pandas as pd
import pytest

from efflab.core.config import ConfigError
from efflab.core.model import build_model
from efflab.measurement.flops import compute_params, estimate_6n, matmul_weights
from efflab.studies.scaling import (
    PUBLISHED,
    ScalingSpec,
    chinchilla_optimum,
    export_runs,
    extrapolation_verdict,
    fit_parabola,
    fit_power_law,
    interval_verdict,
    isoflop_sweep,
    load_shipped,
    nearest_shape,
    predict_optimal,
    run_key,
    scaling_fit,
    size_config,
    t_975,
    train_at_prediction,
)


def test_compute_params_counts_blocks_and_head_and_matmul_weights_only_matrices():
    cfg = size_config(2, 32)
    assert compute_params(cfg) == cfg.n_params(include_embeddings=False) + 256 * 32
    assert estimate_6n(cfg, 10) == 60 * compute_params(cfg)
    assert estimate_6n(cfg, 10, train=False) == 20 * compute_params(cfg)
    model = build_model(cfg, 0)
    blocks = sum(p.numel() for p in model.parameters() if p.dim() == 2) - model.wpe.weight.numel()
    assert matmul_weights(cfg) == blocks  # every Linear weight and the (tied) head, nothing else
    assert compute_params(cfg) - matmul_weights(cfg) == sum(  # the biases and norms
        p.numel() for n, p in model.named_parameters() if p.dim() == 1)


def test_plan_spends_each_budget_within_half_a_step():
    spec = ScalingSpec()
    plan = spec.plan()
    assert [r["budget"] for r in plan] == sorted(r["budget"] for r in plan)
    for r in plan:
        step_flops = 6 * r["n_params"] * spec.batch_size * spec.seq_len
        assert abs(r["flops"] - r["budget"]) <= step_flops / 2 + 1
        assert spec.min_tokens_per_param <= r["budget"] / (6 * r["n_params"] ** 2) <= spec.max_tokens_per_param
    per_budget = pd.DataFrame(plan).groupby("budget").size()
    assert (per_budget >= 3).all()  # a parabola needs three sizes


def test_spec_validates():
    with pytest.raises(ConfigError, match="budgets"):
        ScalingSpec(budgets=())
    with pytest.raises(ConfigError, match="sizes"):
        ScalingSpec(sizes=((1,),))
    with pytest.raises(ConfigError, match="lr"):
        ScalingSpec(lr=0)


def test_run_key_depends_on_budget_shape_and_recipe():
    spec = ScalingSpec()
    r = spec.plan()[0]
    assert run_key(r, spec) == run_key(dict(r), ScalingSpec())
    assert run_key(r, spec) != run_key(r, ScalingSpec(lr=1e-3))
    assert run_key(r, spec) != run_key({**r, "budget": r["budget"] * 2}, spec)


def test_parabola_finds_the_vertex_and_flags_outside_and_concave():
    x = np.array([3.0, 3.5, 4.0, 4.5, 5.0])
    fit = fit_parabola(x, 0.5 * (x - 4.2) ** 2 + 2.0)
    assert fit["log_n_opt"] == pytest.approx(4.2) and fit["loss_opt"] == pytest.approx(2.0)
    assert fit["inside"] and fit["curved"]
    assert not fit_parabola(x, 0.5 * (x - 5.6) ** 2)["inside"]
    assert not fit_parabola(x, -(x - 4) ** 2)["curved"]


def test_power_law_recovers_exponent_and_interval_width_is_honest():
    c = np.array([1e10, 3e10, 1e11, 3e11])
    fit = fit_power_law(c, 0.1 * c ** 0.5)
    assert fit["exponent"] == pytest.approx(0.5) and fit["prefactor"] == pytest.approx(0.1)
    two = fit_power_law(c[:2], 0.1 * c[:2] ** 0.5)
    assert math.isinf(two["ci_ols"][1])
    assert t_975(1) == pytest.approx(12.706) and t_975(30) == pytest.approx(2.04, abs=0.01)


def _synthetic(a=0.5, noise=0.01, seed=0):
    """Runs whose losses are parabolas in log N around N_opt = 0.05 · C^a, with batch noise."""
    rng = np.random.default_rng(seed)
    rows = []
    shared = rng.normal(0, noise, 32)  # the same windows for every run: correlated noise
    for c in (1e10, 1e11, 1e12):
        n_opt = 0.05 * c ** a
        for f in (1 / 8, 1 / 3, 1, 3, 8):
            n = n_opt * f
            loss = 3.0 - 0.1 * math.log10(c) + 0.3 * math.log10(f) ** 2
            batches = loss + shared + rng.normal(0, noise / 5, 32)
            rows.append({"budget": c, "n_params": n, "val_loss": float(batches.mean()),
                         "batch_losses": batches.tolist()})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("a", [0.5, 0.73])
def test_scaling_fit_recovers_the_exponent_with_an_interval(a):
    fit = scaling_fit(_synthetic(a), n_boot=200)
    assert fit["a"] == pytest.approx(a, abs=0.02)
    assert fit["a_ci"][0] <= fit["a"] <= fit["a_ci"][1]
    assert fit["b"] == pytest.approx(1 - fit["a"])
    assert fit["all_inside"]
    p = predict_optimal(fit, 1e13)
    assert p["d_opt"] == pytest.approx(1e13 / (6 * p["n_opt"]))
    assert p["n_opt"] == pytest.approx(0.05 * 1e13 ** a, rel=0.1)


def test_published_exponents_and_the_rule_of_thumb():
    assert PUBLISHED["Chinchilla"]["a"] + PUBLISHED["Chinchilla"]["b"] == pytest.approx(1)
    n, d = chinchilla_optimum(1.2e11)
    assert n == pytest.approx(1e9 ** 0.5 * 1) and d == pytest.approx(20 * n)


def test_sweep_resumes_from_its_store_and_exports(tmp_path):
    spec = ScalingSpec(budgets=(3e8,), sizes=((1, 8), (1, 12), (1, 16)), eval_batches=2,
                       eval_batch_size=2, max_tokens_per_param=5000, min_tokens_per_param=0.5)
    first = isoflop_sweep(spec, store=tmp_path / "s.sqlite", progress=False)
    assert len(first) == 3 and not first["reused"].any()
    again = isoflop_sweep(spec, store=tmp_path / "s.sqlite", progress=False)
    assert again["reused"].all()
    assert again["val_loss"].tolist() == first["val_loss"].tolist()
    path = export_runs(first, tmp_path / "iso.json", note="test")
    back = load_shipped(path)
    assert back["val_loss"].tolist() == pytest.approx(first["val_loss"].tolist())
    assert back.attrs["note"] == "test"


def test_cli_runs_resumes_and_rejects_bad_budgets(tmp_path, capsys):
    from efflab.cli import main

    store = str(tmp_path / "cli.sqlite")
    assert main(["scaling", "--budgets", "3e8", "--store", store, "--threads", "1"]) == 0
    first = capsys.readouterr().out
    assert "2 runs" in first and "L1-d8" in first and "reused" not in first
    assert main(["scaling", "--budgets", "3e8", "--store", store]) == 0
    assert first.count("C=3e+08") == capsys.readouterr().out.count("reused")
    assert main(["scaling", "--budgets", "lots"]) == 2
    assert "--budgets" in capsys.readouterr().err


def test_fit_leaves_out_budgets_with_too_few_sizes():
    df = _synthetic()
    partial = pd.concat([df, df[df["budget"] == 1e12].head(2).assign(budget=1e13)])
    fit = scaling_fit(partial, n_boot=20)
    assert fit["skipped_budgets"] == [1e13] and len(fit["budgets"]) == 3
    with pytest.raises(ValueError, match=">= 3 sizes"):
        scaling_fit(df[df["budget"] == 1e10], n_boot=5)


# ----------------------------------------------------------------------------- the check by training

def test_prediction_carries_its_bootstrap_interval_and_none_without_resamples():
    fit = scaling_fit(_synthetic(0.5), n_boot=100)
    assert fit["bootstrap_laws"].shape == (fit["bootstrap"], 4)
    p = predict_optimal(fit, 1e13)
    assert p["n_opt_lo"] < p["n_opt"] < p["n_opt_hi"]
    assert p["loss_lo"] < p["loss"] < p["loss_hi"]
    wider = predict_optimal(fit, 1e15)  # further from the data: a wider interval (in log)
    assert wider["loss_hi"] / wider["loss_lo"] > p["loss_hi"] / p["loss_lo"]
    assert wider["n_opt_hi"] / wider["n_opt_lo"] > p["n_opt_hi"] / p["n_opt_lo"]
    bare = predict_optimal({k: v for k, v in fit.items() if k != "bootstrap_laws"}, 1e13)
    assert math.isnan(bare["loss_lo"]) and bare["loss"] == p["loss"]


def test_interval_verdict_says_what_two_and_three_budgets_show():
    three = scaling_fit(_synthetic(0.5), n_boot=50)
    text = interval_verdict(three)
    assert text.startswith("From 3 budgets") and "regression interval over 3 budgets" in text
    assert f"[{three['a_ci'][0]:.2f}, {three['a_ci'][1]:.2f}]" in text and "evaluation" in text
    df = _synthetic(0.5)
    two = interval_verdict(scaling_fit(df[df["budget"] < 5e11], n_boot=50))
    assert "no interval at all" in two and "bootstrap 95% interval" in two
    none = interval_verdict({**three, "bootstrap": 0, "bootstrap_dropped": 50})
    assert "**no interval**" in none  # every resample lost a minimum: not a narrow interval


def _pred(loss=2.20, lo=2.13, hi=2.26, budget=3e11):
    return {"budget": budget, "loss": loss, "loss_lo": lo, "loss_hi": hi}


def test_extrapolation_verdict_inside_outside_and_interpolation():
    right = extrapolation_verdict(2.21, 0.04, _pred(), 3e10, guess=2.5)
    assert "10x beyond" in right and "**inside**" in right and "+0.010" in right
    assert "further than the fit" in right
    above = extrapolation_verdict(2.40, 0.04, _pred(), 3e10)  # the law too optimistic
    assert "**outside**" in above and "by 0.140" in above and "above it" in above
    assert "does not reach" in above
    below = extrapolation_verdict(2.05, 0.04, _pred(), 3e10, guess=2.06)
    assert "**outside**" in below and "below it" in below and "closer than the fit" in below
    inside_fit = extrapolation_verdict(2.21, 0.04, _pred(budget=1e10), 3e10)
    assert "interpolation" in inside_fit and "extrapolation" not in inside_fit
    bare = extrapolation_verdict(2.21, 0.04, _pred(lo=float("nan"), hi=float("nan")), 3e10)
    assert "no bootstrap interval" in bare


def test_the_shipped_sweeps_two_smallest_budgets_predict_its_largest():
    """Another machine's honest numbers: fit the stored sweep's two smallest budgets, predict
    its largest (3.3x beyond), and judge the stored run of the shape the fit picks."""
    shipped = load_shipped()
    budgets = sorted(shipped["budget"].unique())
    fit = scaling_fit(shipped[shipped["budget"] < budgets[-1]].reset_index(drop=True), n_boot=100)
    want = predict_optimal(fit, budgets[-1])
    name = size_config(*nearest_shape(want["n_opt"])).name
    run = shipped[(shipped["budget"] == budgets[-1]) & (shipped["name"] == name)].iloc[0]
    text = extrapolation_verdict(run["val_loss"], run["val_se"], want, budgets[1])
    assert f"{budgets[-1] / budgets[1]:.3g}x beyond" in text
    assert f"measured {run['val_loss']:.3f}" in text and f"predicted {want['loss']:.3f}" in text
    assert ("**inside**" in text) == (want["loss_lo"] <= run["val_loss"] <= want["loss_hi"])


def test_train_at_prediction_trains_the_nearest_shape_once(tmp_path):
    spec = ScalingSpec(budgets=(3e8,), sizes=((1, 8), (1, 12), (1, 16)), eval_batches=2,
                       eval_batch_size=2)
    fit = scaling_fit(_synthetic(0.5), n_boot=20)
    budget = 2e8
    want, got = train_at_prediction(fit, budget, spec, tmp_path / "s.sqlite")
    assert (got["n_layer"], got["n_embd"]) == nearest_shape(want["n_opt"], spec.sizes)
    n = got["n_params"]
    assert got["steps"] == round(budget / (6 * n * spec.batch_size * spec.seq_len))
    assert math.isfinite(got["val_loss"]) and not got["reused"]
    _, again = train_at_prediction(fit, budget, spec, tmp_path / "s.sqlite")
    assert again["reused"] and again["val_loss"] == got["val_loss"]
