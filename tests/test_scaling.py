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
    fit_parabola,
    fit_power_law,
    isoflop_sweep,
    load_shipped,
    predict_optimal,
    run_key,
    scaling_fit,
    size_config,
    t_975,
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
